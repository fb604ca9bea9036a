"""The zygote: a warm, single-threaded process that forks one FUSE server per mount.

Why: a fresh interpreter per mount spends ~0.5 s importing boto3, trio, pyfuse3 and
google-cloud-storage and holds ~46 MiB of private memory. The zygote imports them once,
loads botocore's S3 model, then `gc.freeze()`s, so forked servers start in milliseconds and
share those pages copy-on-write. It never starts a thread or a trio loop itself: forking a
threaded process is unsafe, so everything that runs threads happens in the children.

Protocol (over the socketpair the supervisor started it with): the supervisor sends a
`ServerRequest` as JSON with four descriptors beside it (SCM_RIGHTS): the mounted
/dev/fuse, the write end of the readiness pipe, the log file, and the server's own
directory (credentials file, metrics socket), which the server reaches through
/proc/self/fd/N, so no directory above it need be open to its UID. The zygote double-forks
(so the server is re-parented to the supervisor, a child subreaper, which then learns of
its exit at once and with its status), replies `{"pid": N}`, and closes its copies of the
descriptors. In the server, before anything touches the network: a new session, stdout and
stderr to the log, the mount's own UID/GID, every capability gone, no_new_privs.

The zygote exits when the supervisor is gone (EOF on its socket); servers keep serving.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
import traceback
from typing import Any

from driver.mounts import privileges
from driver.mounts.protocol import CREDENTIALS_FILE, MAX_MESSAGE, METRICS_SOCKET, ServerRequest

SERVER_CRASHED = 70  # EX_SOFTWARE: an unexpected exception in the server's main


def preload() -> None:
    """Import and warm what every server needs, then freeze it out of the GC's sight."""
    import boto3
    import botocore.session  # noqa: F401
    import google.cloud.storage  # noqa: F401
    import pyfuse3  # noqa: F401
    import trio  # noqa: F401

    import driver.fs.mount  # noqa: F401
    import driver.fuseserver  # noqa: F401
    import driver.store.gcs  # noqa: F401
    import driver.store.s3  # noqa: F401
    from driver.credentials import aws

    # One client makes botocore load and cache the S3 model and endpoint rules (shared
    # loader: see credentials/aws.py); no request is sent.
    aws.warm_up()
    del boto3
    gc.collect()
    gc.freeze()


def _serve(request: ServerRequest, fuse_fd: int, report_fd: int, log_fd: int,
           dir_fd: int) -> int:
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    privileges.become(request.uid, request.gid)
    from driver import fuseserver
    from driver.failures import pipe_reporter

    fsname = f"cloudbucket:{request.bucket}/{request.options.prefix}"
    own_dir = f"/proc/self/fd/{dir_fd}"
    return fuseserver.run(request.bucket, request.options, f"/dev/fd/{fuse_fd}", fsname,
                          f"{own_dir}/{CREDENTIALS_FILE}", pipe_reporter(report_fd),
                          metrics_socket=f"{own_dir}/{METRICS_SOCKET}")


def spawn(control: socket.socket, request: ServerRequest, fds: list[int]) -> int:
    """Double-fork a server for `request`; return its PID (a child of our parent now)."""
    fuse_fd, report_fd, log_fd, dir_fd = fds
    pid_read, pid_write = os.pipe()
    middle = os.fork()
    if middle == 0:  # the intermediate: start a session, fork the server, leave
        status = SERVER_CRASHED
        try:
            os.close(pid_read)
            control.close()
            os.setsid()
            server = os.fork()
            if server:
                os.write(pid_write, str(server).encode())
                os._exit(0)
            os.close(pid_write)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            status = _serve(request, fuse_fd, report_fd, log_fd, dir_fd)
        except BaseException:  # noqa: BLE001 - the server's last word goes to its log
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    os.close(pid_write)
    try:
        data = b""
        while chunk := os.read(pid_read, 64):
            data += chunk
    finally:
        os.close(pid_read)
        os.waitpid(middle, 0)
    if not data:
        raise RuntimeError("the server could not be forked")
    return int(data)


def serve_forever(control: socket.socket) -> None:
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, 4)
        except (ConnectionError, OSError):
            return
        if not data:
            for fd in fds:
                os.close(fd)
            return
        reply: dict[str, Any]
        try:
            if len(fds) != 4:
                raise ValueError(f"expected 4 descriptors, got {len(fds)}")
            request = ServerRequest.from_dict(json.loads(data))
            reply = {"pid": spawn(control, request, fds)}
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, typed
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        control.sendall(json.dumps(reply).encode() + b"\n")


def main() -> int:
    # No PR_SET_PDEATHSIG: it fires when the *thread* that started us ends. We exit at EOF
    # on the control socket instead, which comes when the supervisor process is gone.
    control = socket.socket(fileno=int(sys.argv[1]))
    from driver import log

    log.configure(os.environ.get("CLOUDBUCKET_LOG_LEVEL", "info"))
    preload()
    control.sendall(b'{"ready": true}\n')
    serve_forever(control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
