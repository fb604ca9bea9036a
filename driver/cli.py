"""Command line: `cloudbucket-csi mount | serve | demo`. Parsing and dispatch only."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from driver import __version__

if TYPE_CHECKING:
    from driver.metrics import MetricsServer
    from driver.options import MountOptions

READY_FD_ENV = "CLOUDBUCKET_READY_FD"
CREDENTIALS_FILE_ENV = "CLOUDBUCKET_CREDENTIALS_FILE"


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudbucket-csi", allow_abbrev=False,
                                     description="Mount cloud buckets as FUSE filesystems; "
                                     "the Kubernetes CSI driver cloudbucket.csi.io.")
    parser.add_argument("--version", action="version", version=f"cloudbucket-csi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    mount = commands.add_parser("mount", allow_abbrev=False,
                                help="mount a bucket at a directory (like mount-s3)")
    mount.add_argument("bucket")
    mount.add_argument("mountpoint")
    add_option_arguments(mount)
    mount.add_argument("--foreground", "-f", action="store_true",
                       help="stay in the foreground")
    mount.add_argument("--debug", action="store_true", help="debug logging")
    mount.add_argument("--log-file", help="where the background server logs (default: none)")
    mount.add_argument("--credentials-file", default=os.environ.get(CREDENTIALS_FILE_ENV),
                       help="0600 JSON credentials file written by the node plugin")
    mount.add_argument("--metrics-address", metavar="HOST:PORT",
                       help="serve Prometheus /metrics for this mount on HOST:PORT "
                       "(or unix:PATH for a UNIX socket)")

    serve = commands.add_parser("serve", allow_abbrev=False, help="run the CSI gRPC server")
    serve.add_argument("--mode", choices=("node", "controller", "all"), default="all")
    serve.add_argument("--endpoint", default="unix:///csi/csi.sock")
    serve.add_argument("--node-id", default=os.environ.get("NODE_ID", ""))
    serve.add_argument("--state-dir", default="/var/lib/cloudbucket-csi")
    serve.add_argument("--log-level", default=os.environ.get("CLOUDBUCKET_LOG_LEVEL", "info"))
    serve.add_argument("--metrics-address", metavar="HOST:PORT",
                       help="serve Prometheus /metrics on HOST:PORT (the node plugin adds "
                       "every live mount's metrics, labelled by volume and pod)")

    demo = commands.add_parser("demo", help="mount a seeded local SeaweedFS bucket and use it")
    demo.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    return parser


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """Every mount option as --name (switches take an optional value: --read-only=false)."""
    from driver.options import OPTION_SPECS

    for spec in OPTION_SPECS.values():
        if spec.flag:
            parser.add_argument(f"--{spec.name}", nargs="?", const=True, default=None,
                                metavar="BOOL", help=spec.help)
        else:
            parser.add_argument(f"--{spec.name}", default=None, help=spec.help)


def options_from_namespace(namespace: argparse.Namespace) -> MountOptions:
    from driver.options import OPTION_SPECS, parse_option_values

    values = {
        spec.name: getattr(namespace, spec.attr)
        for spec in OPTION_SPECS.values()
        if getattr(namespace, spec.attr, None) is not None
    }
    return parse_option_values(values)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from driver import log

    try:
        if args.command == "mount":
            log.configure("debug" if args.debug else "info")
            return _mount(args)
        if args.command == "serve":
            log.configure(args.log_level)
            from driver.server import run_server

            return run_server(args)
        if args.command == "demo":
            log.configure("warning")
            from driver.demo import run_demo

            return run_demo()
    except CliError as exc:
        print(f"cloudbucket-csi: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)  # pragma: no cover


def _check_mountpoint(path: str) -> None:
    try:
        if not Path(path).is_dir():
            raise CliError(f"mountpoint {path} is not a directory")
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise CliError(f"mountpoint {path} is a dead mount (transport endpoint is not "
                           "connected): unmount it first") from None
        raise CliError(f"mountpoint {path}: {exc.strerror}") from None
    if os.path.ismount(path):
        raise CliError(f"mountpoint {path} is busy: something is already mounted there")


def _mount(args: argparse.Namespace) -> int:
    from driver.options import OptionError, validate_bucket

    try:
        options = options_from_namespace(args)
        validate_bucket(args.bucket)
    except OptionError as exc:
        raise CliError(f"invalid option --{exc}") from None
    if args.metrics_address and not args.metrics_address.startswith("unix:"):
        from driver.metrics import parse_address

        try:
            parse_address(args.metrics_address)
        except ValueError as exc:
            raise CliError(f"invalid option --metrics-address: {exc}") from None
    _check_mountpoint(args.mountpoint)
    if not args.foreground:
        return _spawn_background(args)
    return _serve_mount(args, options)


def _spawn_background(args: argparse.Namespace) -> int:
    """Re-run ourselves in the foreground in a new session; wait until it says ready."""
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "driver", "mount", *_reconstruct(args), "--foreground"]
    env = {**os.environ, READY_FD_ENV: str(write_fd)}
    log_target = open(args.log_file, "ab") if args.log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        child = subprocess.Popen(argv, env=env, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                 stdout=log_target, stderr=log_target, start_new_session=True)
    finally:
        os.close(write_fd)
        if log_target is not subprocess.DEVNULL:
            log_target.close()
    with os.fdopen(read_fd, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if message == "ready":
        return 0
    child.wait()
    raise CliError(message or f"mount server exited with status {child.returncode}")


def _reconstruct(args: argparse.Namespace) -> list[str]:
    argv = [args.bucket, args.mountpoint, *options_from_namespace(args).to_args()]
    if args.debug:
        argv.append("--debug")
    if args.log_file:
        argv.append(f"--log-file={args.log_file}")
    if args.credentials_file:
        argv.append(f"--credentials-file={args.credentials_file}")
    if args.metrics_address:
        argv.append(f"--metrics-address={args.metrics_address}")
    return argv


def _serve_mount(args: argparse.Namespace, options: object) -> int:
    from driver.connect import open_store
    from driver.credentials.source import Credentials, CredentialsError
    from driver.fs.mount import serve
    from driver.options import MountOptions
    from driver.store import StoreError

    assert isinstance(options, MountOptions)
    ready_fd = int(os.environ.pop(READY_FD_ENV, "-1"))

    def ready(error: str | None) -> None:
        nonlocal ready_fd
        if ready_fd >= 0:
            os.write(ready_fd, b"ready" if error is None else error.encode())
            os.close(ready_fd)
            ready_fd = -1
        elif error is not None:
            print(f"cloudbucket-csi: error: {error}", file=sys.stderr)

    credentials = Credentials()
    if args.credentials_file:
        try:
            credentials = Credentials.from_json(Path(args.credentials_file).read_text())
        except (OSError, ValueError, TypeError) as exc:
            ready(f"cannot read credentials file {args.credentials_file}: "
                  f"{type(exc).__name__}")
            return 1
    try:
        store = open_store(args.bucket, options, credentials, args.credentials_file)
        store.check_bucket()
    except (StoreError, CredentialsError) as exc:
        ready(describe_store_error(exc, args.bucket, options.endpoint_url))
        return 1
    if args.metrics_address:
        try:
            metrics_server = _serve_metrics(args.metrics_address)
        except OSError as exc:
            ready(f"cannot serve metrics on {args.metrics_address}: {exc.strerror or exc}")
            return 1
    fsname = f"cloudbucket:{args.bucket}/{options.prefix}"
    try:
        status = serve(store, options, args.mountpoint, fsname, ready)
    finally:
        if args.metrics_address:
            metrics_server.close()
    if ready_fd >= 0:
        ready("mount server stopped before the mount was live")
    return status


def _serve_metrics(address: str) -> MetricsServer:
    from driver import metrics

    if address.startswith("unix:"):
        return metrics.serve_metrics_unix(address.removeprefix("unix:"))
    return metrics.serve_metrics_tcp(*metrics.parse_address(address))


def describe_store_error(exc: Exception, bucket: str, endpoint: str | None) -> str:
    """One line that says what is wrong with a bucket/credentials/endpoint combination."""
    from driver.store import AccessDenied, BucketNotFound, EndpointUnreachable

    if isinstance(exc, BucketNotFound):
        return f"bucket {bucket} does not exist"
    if isinstance(exc, AccessDenied):
        return f"access to bucket {bucket} denied: check the credentials ({exc})"
    if isinstance(exc, EndpointUnreachable):
        return f"cannot reach the endpoint {endpoint or 'of the store'}: {exc}"
    return f"cannot use bucket {bucket}: {exc}"
