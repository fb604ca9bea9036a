"""Command line: `cloudbucket-csi mount | serve | supervisor | demo`. Parsing and dispatch.

`mount` is the standalone filesystem (like mountpoint-s3's `mount-s3`): it parses its flags
once into `MountOptions`, then serves in this process (`--foreground`) or in a forked child
in a new session, returning only once the child reported the mount live. A failure is one
line on stderr and an exit status chosen by the failure's kind (`EXIT_STATUS`), never by
its wording.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from driver import __version__

if TYPE_CHECKING:
    from driver.failures import Failure, FailureKind
    from driver.metrics import MetricsServer
    from driver.options import MountOptions

CREDENTIALS_FILE_ENV = "CLOUDBUCKET_CREDENTIALS_FILE"


def exit_status(kind: FailureKind) -> int:
    """The one table from failure kinds to `mount`'s exit statuses (README: Exit status)."""
    from driver.failures import FailureKind

    return {
        FailureKind.INVALID_OPTION: 2,
        FailureKind.ACCESS_DENIED: 3,
        FailureKind.BUCKET_NOT_FOUND: 4,
        FailureKind.UNREACHABLE: 5,
        FailureKind.BUSY: 6,
        FailureKind.TIMEOUT: 7,
    }.get(kind, 1)


class CliError(Exception):
    """A user-facing failure: printed as one line; the exit status comes from its kind."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _error(kind_name: str, message: str) -> CliError:
    from driver.failures import Failure, FailureKind

    return CliError(Failure(FailureKind(kind_name), message))


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
    mount.add_argument("--debug", "-d", action="store_true", help="debug logging")
    mount.add_argument("--log-file", help="where the background server logs (default: none)")
    # mount-s3's logging flags, with their meaning here:
    mount.add_argument("--log-directory", "-l", metavar="DIR",
                       help="write the log to a new file in DIR (like mount-s3)")
    mount.add_argument("--no-log", action="store_true", help="no logging at all")
    mount.add_argument("--debug-crt", action="store_true",
                       help="accepted for mount-s3 compatibility; no effect (no AWS CRT here)")
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

    supervisor = commands.add_parser(
        "supervisor", allow_abbrev=False,
        help="run the mount supervisor as a daemon (the chart's mounter container)")
    supervisor.add_argument("--socket", required=True, help="unix socket to listen on (0600)")
    supervisor.add_argument("--state-dir", required=True, help="records, credentials, logs")
    supervisor.add_argument("--allowed-root", default=None,
                            help="only targets below this directory are mounted")
    supervisor.add_argument("--log-level",
                            default=os.environ.get("CLOUDBUCKET_LOG_LEVEL", "info"))

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
            # --no-log: a level above every level, so nothing is logged at all
            log.configure(100 if args.no_log else "debug" if args.debug else "info")
            return _mount(args)
        if args.command == "serve":
            log.configure(args.log_level)
            from driver.server import ServeError, run_server

            try:
                return run_server(args)
            except ServeError as exc:
                raise _error("invalid_option", str(exc)) from None
        if args.command == "supervisor":
            log.configure(args.log_level)
            from driver.mounts.supervisor import run_daemon

            return run_daemon(args.socket, Path(args.state_dir),
                              Path(args.allowed_root) if args.allowed_root else None)
        if args.command == "demo":
            log.configure("warning")
            from driver.demo import run_demo

            return run_demo()
    except CliError as exc:
        print(f"cloudbucket-csi: error: {exc}", file=sys.stderr)
        return exit_status(exc.failure.kind)
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)  # pragma: no cover


def _check_mountpoint(path: str) -> None:
    try:
        if not Path(path).is_dir():
            raise _error("invalid_option", f"mountpoint {path} is not a directory")
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise _error("busy", f"mountpoint {path} is a dead mount (transport endpoint is "
                         "not connected): unmount it first") from None
        raise _error("invalid_option", f"mountpoint {path}: {exc.strerror}") from None
    if os.path.ismount(path):
        raise _error("busy", f"mountpoint {path} is busy: something is already mounted there")


def _logging_flags(args: argparse.Namespace) -> None:
    """mount-s3's --log-directory/--no-log/--debug-crt, turned into our --log-file."""
    if args.no_log:
        for name in ("debug", "debug_crt", "log_directory", "log_file"):
            if getattr(args, name):
                raise _error("invalid_option", "--no-log cannot be combined with "
                             f"--{name.replace('_', '-')}")
        return
    if args.debug_crt:
        print("cloudbucket-csi: --debug-crt has no effect: this client does not use the AWS "
              "Common Runtime", file=sys.stderr)
        args.debug_crt = False
    if args.log_directory:
        if args.log_file:
            raise _error("invalid_option", "--log-directory cannot be combined with --log-file")
        directory = Path(args.log_directory)
        if not directory.is_dir():
            raise _error("invalid_option", f"--log-directory {directory} is not a directory")
        stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
        args.log_file = str(directory / f"cloudbucket-{stamp}-{os.getpid()}.log")
        args.log_directory = None


def _mount(args: argparse.Namespace) -> int:
    from driver.options import OptionError, validate_bucket

    _logging_flags(args)
    try:
        options = options_from_namespace(args)
        validate_bucket(args.bucket)
    except OptionError as exc:
        raise _error("invalid_option", f"invalid option --{exc}") from None
    if args.metrics_address and not args.metrics_address.startswith("unix:"):
        from driver.metrics import parse_address

        try:
            parse_address(args.metrics_address)
        except ValueError as exc:
            raise _error("invalid_option", f"invalid option --metrics-address: {exc}") \
                from None
    if options.max_cache_size is not None and options.cache is None:
        raise _error("invalid_option", "invalid option --max-cache-size: needs --cache DIR")
    if options.cache is not None:  # absolute: the server outlives this command's cwd
        options = dataclasses.replace(options, cache=os.path.abspath(options.cache))
    _check_mountpoint(args.mountpoint)
    if args.foreground:
        return _serve(args, options, _print_failure)
    return _serve_in_background(args, options)


def _print_failure(failure: Failure | None) -> None:
    if failure is not None:
        print(f"cloudbucket-csi: error: {failure.message}", file=sys.stderr)


def _serve_in_background(args: argparse.Namespace, options: MountOptions) -> int:
    """Fork a server in a new session; return once it says the mount is live."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server: its own session, outliving this command
        status = 1
        try:
            os.close(read_fd)
            os.setsid()
            _redirect_output(args.log_file)
            from driver.failures import pipe_reporter

            status = _serve(args, options, pipe_reporter(write_fd))
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    from driver.failures import parse_report

    failure = parse_report(data)
    if failure is None:
        return 0
    os.waitpid(pid, 0)
    raise CliError(failure)


def _redirect_output(log_file: str | None) -> None:
    target = os.open(log_file or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    os.close(null)


def _serve(args: argparse.Namespace, options: MountOptions,
           report: Callable[[Failure | None], None]) -> int:
    from driver import fuseserver

    fsname = f"cloudbucket:{args.bucket}/{options.prefix}"
    address: str | None = args.metrics_address
    if address and address.startswith("unix:"):  # as the supervisor's servers do
        return fuseserver.run(args.bucket, options, args.mountpoint, fsname,
                              args.credentials_file, report,
                              metrics_socket=address.removeprefix("unix:"))
    metrics_server = None
    if address:
        from driver.failures import Failure, FailureKind

        try:
            metrics_server = _serve_metrics_tcp(address)
        except OSError as exc:
            report(Failure(FailureKind.INVALID_OPTION,
                           f"cannot serve metrics on {address}: {exc.strerror or exc}"))
            return 1
    try:
        return fuseserver.run(args.bucket, options, args.mountpoint, fsname,
                              args.credentials_file, report)
    finally:
        if metrics_server is not None:
            metrics_server.close()


def _serve_metrics_tcp(address: str) -> MetricsServer:
    from driver import metrics

    return metrics.serve_metrics_tcp(*metrics.parse_address(address))
