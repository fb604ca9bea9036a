"""Smoke test of the built image (`make image-smoke`, after `make image`; not in `make test`).

In a container of the image, as the chart runs the mounter (root, /dev/fuse, no
--privileged): start the supervisor, ask it over its socket for a mount of a real SeaweedFS
bucket served on the host's loopback, read an object, write one, unmount. Exit status 0 only
if the bytes went both ways.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from driver.devservers import SeaweedS3

IMAGE = os.environ.get("IMAGE", "cloudbucket-csi:0.1.0")
DOCKER = ["docker", "-H", f"unix://{os.getcwd()}/.cache/docker.sock"]

SCRIPT = """set -e
mkdir -p /var/lib/kubelet/pods/p/volumes/mnt
cloudbucket-csi supervisor --socket=/var/lib/cloudbucket-csi/supervisor.sock \
  --state-dir=/var/lib/cloudbucket-csi/supervisor --allowed-root=/var/lib/kubelet 2>/tmp/m.log &
python3 - <<'PY'
import os, time
from driver.credentials.source import Credentials
from driver.failures import FailureError
from driver.mounts.protocol import MountRequest
from driver.mounts.supervisor import SupervisorClient
from driver.options import MountOptions
client = SupervisorClient("/var/lib/cloudbucket-csi/supervisor.sock")
for _ in range(100):
    try:
        client.ping(); break
    except FailureError:
        time.sleep(0.1)
creds = Credentials(kind="static", access_key_id=os.environ.pop("KEY"),
                    secret_access_key=os.environ.pop("SECRET"))
target = "/var/lib/kubelet/pods/p/volumes/mnt"
client.mount(MountRequest(volume_id="smoke", target=target, bucket=os.environ["BUCKET"],
                          options=MountOptions(endpoint_url=os.environ["ENDPOINT"]),
                          credentials=creds))
print(open(target + "/hello.txt").read(), end="")
with open(target + "/from-container.txt", "w") as f:
    f.write("written in the container\\n")
print("mounts:", client.list())
client.unmount(target)
print("unmounted:", True)
PY
"""


def main() -> int:
    with SeaweedS3() as server:
        s3 = server.client()
        bucket = f"smoke-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from the bucket\n")
        env = server.credential_env()
        result = subprocess.run(
            [*DOCKER, "run", "--rm", "--network", "host", "--user", "0",
             "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--device", "/dev/fuse",
             "-e", "KEY", "-e", "SECRET", "-e", f"BUCKET={bucket}",
             "-e", f"ENDPOINT={server.endpoint}", IMAGE, "sh", "-c", SCRIPT],
            env={**os.environ, "KEY": env["AWS_ACCESS_KEY_ID"],
                 "SECRET": env["AWS_SECRET_ACCESS_KEY"]},
            capture_output=True, text=True, timeout=300, check=False)
        print(result.stdout, end="")
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return 1
        written = s3.get_object(Bucket=bucket, Key="from-container.txt")["Body"].read()
        ok = written == b"written in the container\n" and "hello from the bucket" in result.stdout
        print("image smoke:", "passed" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
