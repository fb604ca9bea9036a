"""Write a one-layer image as a docker-archive tarball (the `docker save` format).

`ctr images import` reads it, so the local cluster gets the pause, sidecar and test
images without a registry or a daemon: `python3 docker_archive.py OUT.tar NAME:TAG
--entrypoint /pause --file /pause=PATH [--symlink /bin/sh=busybox] ...`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path


def layer_tar(files: dict[str, Path], links: dict[str, str] | None = None) -> bytes:
    """An uncompressed layer: each file (mode 0755, root-owned) at its path, and symlinks."""
    links = links or {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for dest in sorted({*files, *links}):
            parts = dest.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            if dest in links and dest not in files:  # a file wins over a same-named link
                info = tarfile.TarInfo(dest.strip("/"))
                info.type, info.linkname = tarfile.SYMTYPE, links[dest]
                tar.addfile(info)
                continue
            data = files[dest].read_bytes()
            info = tarfile.TarInfo(dest.strip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(out: Path, name: str, files: dict[str, Path], entrypoint: list[str],
                  links: dict[str, str] | None = None) -> None:
    layer = layer_tar(files, links)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "cloudbucket-csi e2e docker_archive.py"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name],
                            "Layers": ["layer/layer.tar"]}]).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for member, data in ((config_name, config), ("layer/layer.tar", layer),
                             ("manifest.json", manifest)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("name", help="image reference, e.g. cloudbucket-e2e.local/pause:3.10")
    parser.add_argument("--entrypoint", required=True, nargs="+")
    parser.add_argument("--file", action="append", default=[], help="DEST=SRC")
    parser.add_argument("--symlink", action="append", default=[], help="DEST=TARGET")
    args = parser.parse_args()
    files = {dest: Path(src) for dest, src in (f.split("=", 1) for f in args.file)}
    links = dict(f.split("=", 1) for f in args.symlink)
    write_archive(args.out, args.name, files, args.entrypoint, links)


if __name__ == "__main__":
    main()
