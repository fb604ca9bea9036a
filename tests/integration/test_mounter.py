"""Mount survival at process level: FUSE servers owned by the mounter outlive the node plugin.

The chart runs the node plugin and the mounter as separate DaemonSets; here each is a
process, and the node plugin gets a PID namespace of its own (`unshare --pid`), as a
container has: killing the namespace's first process makes the kernel kill every process in
it, which is what a container restart or upgrade does. A node plugin asks the mounter for a
real FUSE mount of a SeaweedFS bucket, then its "container" is killed; the mount must keep
serving reads and writes, and a fresh node plugin must find and unmount it. The control case
shows the failure this design exists to avoid: a FUSE server started from inside the node
plugin's own container dies with it. The mounter process can also crash and be restarted:
it adopts the live mounts.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from driver.credentials.source import Credentials
from driver.devservers import SeaweedS3, wait_until
from driver.mounts import mountinfo
from driver.mounts.mounter import MounterClient, MounterError, zombie_children
from tests.helpers import server_pid

pytestmark = [pytest.mark.fuse, pytest.mark.root]

# The "node plugin": asks the mounter for one mount, says so, then idles until killed.
NODE_PLUGIN = """
import json, sys
from driver.mounts.mounter import MounterClient
request = json.loads(sys.stdin.readline())
MounterClient(request["socket"]).mount(request["bucket"], request["target"], request["flags"],
                                       request["credentials"])
print("mounted", flush=True)
sys.stdin.read()
"""


class MounterProcess:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = str(root / "run" / "mounter.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MounterProcess:
        # No store credentials in its environment: mounts must use the ones sent per request.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS")
               and not k.startswith("AWS_SECRET")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driver.mounts.mounter", f"--socket={self.socket}",
             f"--state-dir={self.root / 'state'}", f"--allowed-root={self.root / 'kubelet'}"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.root / "mounter.log", "ab"))  # noqa: SIM115
        wait_until(self._answers, 30, "mounter socket")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "mounter exited"
        try:
            return MounterClient(self.socket, timeout=5).ping() == self.proc.pid
        except MounterError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[MounterProcess]:
    (tmp_path / "kubelet" / "pods").mkdir(parents=True)
    process = MounterProcess(tmp_path).start()
    yield process
    for entry in mountinfo.read():
        if entry.target.startswith(str(tmp_path)):
            mountinfo.unmount(entry.target)
    process.stop()


def static_credentials(seaweed: SeaweedS3) -> str:
    env = seaweed.credential_env()
    return Credentials(kind="static", access_key_id=env["AWS_ACCESS_KEY_ID"],
                       secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).to_json()


# The control case: a node plugin that runs the FUSE server itself (in its own session, as a
# plain `cloudbucket-csi mount` does), so it survives the plugin *process* but not its container.
NODE_PLUGIN_DIRECT = """
import json, os, subprocess, sys
request = json.loads(sys.stdin.readline())
subprocess.run([sys.executable, "-m", "driver", "mount", request["bucket"], request["target"],
                *request["flags"]], check=True, env={**os.environ, **request["env"]})
print("mounted", flush=True)
sys.stdin.read()
"""


class NodePluginContainer:
    """A node-plugin process in its own PID namespace: the stand-in for its container."""

    def __init__(self, script: str, request: dict[str, object]) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        assert line == "mounted", self.proc.stderr.read() if self.proc.stderr else line
        # The namespace's PID 1 is unshare's only child.
        self.init = psutil.Process(self.proc.pid).children()[0]

    def processes(self) -> set[int]:
        return {self.init.pid} | {p.pid for p in self.init.children(recursive=True)}

    def kill(self) -> None:
        """Kill the namespace's PID 1: the kernel then kills everything inside it."""
        members = self.processes()
        self.init.kill()
        self.proc.wait(30)
        wait_until(lambda: not any(_running(pid) for pid in members), 30, "namespace gone")


def _serves(target: Path) -> bool:
    """True when the FUSE server answers a request (a listing is never served from cache)."""
    try:
        os.listdir(target)
        return True
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return False
        raise


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_control_fuse_server_inside_the_plugin_container_dies_with_it(
        seaweed: SeaweedS3, s3, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello\n")
    target = tmp_path / "mnt"
    target.mkdir()
    plugin = NodePluginContainer(NODE_PLUGIN_DIRECT, {
        "bucket": bucket, "target": str(target), "env": seaweed.credential_env(),
        "flags": [f"--endpoint-url={seaweed.endpoint}"]})
    try:
        assert (target / "hello.txt").read_bytes() == b"hello\n"
        fuse_server = server_pid(target)
        assert fuse_server in plugin.processes()
        plugin.kill()
        assert not _running(fuse_server)
        assert not _serves(target)  # "Transport endpoint is not connected"
    finally:
        mountinfo.unmount(str(target))


def test_mount_outlives_node_plugin_and_mounter_restarts(
        mounter: MounterProcess, seaweed: SeaweedS3, s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from the bucket\n")
    target = mounter.root / "kubelet" / "pods" / "uid1" / "volumes" / "mount"
    target.mkdir(parents=True)
    credentials = static_credentials(seaweed)
    plugin = NodePluginContainer(NODE_PLUGIN, {
        "socket": mounter.socket, "bucket": bucket, "target": str(target),
        "credentials": credentials,
        "flags": [f"--endpoint-url={seaweed.endpoint}", "--allow-delete"]})
    fuse_server = server_pid(target)
    assert (target / "hello.txt").read_bytes() == b"hello from the bucket\n"
    assert fuse_server not in plugin.processes()

    # A container restart of the node plugin: every process in it is SIGKILLed.
    plugin.kill()
    assert _serves(target)
    # An object created after the kill is found and read: the server itself answers.
    s3.put_object(Bucket=bucket, Key="new.txt", Body=b"created after the restart\n")
    assert (target / "new.txt").read_bytes() == b"created after the restart\n"
    (target / "written-after.txt").write_bytes(b"still serving\n")
    assert s3.get_object(Bucket=bucket, Key="written-after.txt")["Body"].read() == \
        b"still serving\n"
    assert psutil.pid_exists(fuse_server)

    # Secrets reached the server through a 0600 file, never through argv.
    secret = json.loads(credentials)["secret_access_key"]
    assert all(secret not in arg for arg in psutil.Process(fuse_server).cmdline())
    files = list((mounter.root / "state" / "credentials").iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600

    # The mounter process can crash and come back: the mount stays, and it is adopted.
    mounter.kill()
    assert _serves(target) and (target / "hello.txt").read_bytes() == b"hello from the bucket\n"
    mounter.start()

    # A new node plugin (here: this test process) sees the mount and takes it down.
    client = MounterClient(mounter.socket)
    assert [m["target"] for m in client.list()] == [str(target)]
    assert client.unmount(str(target)) is True
    assert mountinfo.find(str(target)) is None
    wait_until(lambda: not psutil.pid_exists(fuse_server)
               or psutil.Process(fuse_server).status() == psutil.STATUS_ZOMBIE,
               30, "FUSE server exit")
    assert list((mounter.root / "state" / "credentials").iterdir()) == []
    assert client.unmount(str(target)) is False  # idempotent


def test_mount_is_idempotent_and_errors_are_one_line(
        mounter: MounterProcess, seaweed: SeaweedS3, bucket: str) -> None:
    client = MounterClient(mounter.socket)
    target = mounter.root / "kubelet" / "pods" / "uid2" / "mount"
    target.mkdir(parents=True)
    flags = [f"--endpoint-url={seaweed.endpoint}", "--read-only"]
    client.mount(bucket, str(target), flags, static_credentials(seaweed))
    first = server_pid(target)
    client.mount(bucket, str(target), flags, static_credentials(seaweed))
    assert server_pid(target) == first  # a repeat returns the existing mount
    # The mounter is a subreaper: the FUSE server is its child, and is reaped when it exits.
    assert mounter.proc is not None and psutil.Process(first).ppid() == mounter.proc.pid
    assert client.unmount(str(target))
    wait_until(lambda: not psutil.pid_exists(first), 30, "FUSE server reaped by the mounter")

    # The store's refusal comes back as the CLI's one line, with nothing left mounted.
    bad = Credentials(kind="static", access_key_id="wrong", secret_access_key="wrong-secret")
    with pytest.raises(MounterError, match="denied") as refused:
        client.mount(bucket, str(target), flags, bad.to_json())
    assert "wrong-secret" not in str(refused.value)
    assert mountinfo.find(str(target)) is None
    assert list((mounter.root / "state" / "credentials").iterdir()) == []


@pytest.mark.parametrize(("target", "flags", "message"), [
    ("/etc", [], "outside"),
    ("relative/path", [], "absolute"),
    ("{root}/kubelet/../escape", [], "outside"),
    ("{root}/kubelet/pods/x", ["--foreground"], "set by the mounter"),
    ("{root}/kubelet/pods/x", ["--credentials-file=/etc/shadow"], "set by the mounter"),
    ("{root}/kubelet/pods/x", ["--no-such-option"], "no-such-option"),
    ("{root}/kubelet/pods/x", ["--metadata-ttl=soon"], "metadata-ttl"),
])
def test_mounter_refuses_bad_requests(mounter: MounterProcess, target: str, flags: list[str],
                                      message: str) -> None:
    client = MounterClient(mounter.socket)
    with pytest.raises(MounterError, match=message):
        client.mount("some-bucket", target.format(root=mounter.root), flags, None)
    assert client.list() == []


def test_unknown_op_and_unreachable_socket(mounter: MounterProcess, tmp_path: Path) -> None:
    with pytest.raises(MounterError, match="unknown op"):
        MounterClient(mounter.socket).call({"op": "format-disk"})
    with pytest.raises(MounterError, match="not reachable"):
        MounterClient(str(tmp_path / "nothing.sock")).ping()
    assert os.stat(mounter.socket).st_mode & 0o777 == 0o600


def test_zombie_children_lists_only_exited_children() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_until(lambda: exited.pid in zombie_children(), 30, "child exit")
        assert running.pid not in zombie_children()
    finally:
        running.kill()
        running.wait()
        exited.wait()
    assert exited.pid not in zombie_children()
