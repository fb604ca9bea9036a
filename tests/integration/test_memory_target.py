"""--memory-target is a bound on the FUSE server's memory, with readers and writers at once.

The server's RSS (psutil, sampled while the clients run) must stay below its idle RSS plus
the target plus the fixed overhead the README states (OVERHEAD_MIB: buffers of requests
in flight and allocator slack). Readers share the budget and writers wait for it, so every
read is byte-exact and every write completes. The assertions are on memory, never on time.
"""

from __future__ import annotations

import hashlib
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil

MiB = 1024 * 1024
TARGET_MIB = 32
OVERHEAD_MIB = 48  # the fixed overhead above the target that README "Reliability" states


class _Sampler:
    """Samples a process's RSS in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)
            self.samples += 1

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_readers_and_writers_stay_within_the_memory_target(s3, bucket, mount):
    rng = random.Random(7)
    sources = {f"r{index}.bin": rng.randbytes(24 * MiB + index) for index in range(4)}
    for key, data in sources.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    mnt = mount(bucket, f"--memory-target={TARGET_MIB}", "--read-part-size=8MiB",
                "--write-part-size=5MiB")
    (mnt / "warm.txt").write_bytes(b"w")  # load the write path's code before the baseline
    assert (mnt / "warm.txt").read_bytes() == b"w"
    idle = psutil.Process(mnt.pid).memory_info().rss
    payloads = {f"w{index}.bin": rng.randbytes(20 * MiB + index) for index in range(3)}

    def read(key: str) -> str:
        with open(mnt / key, "rb") as handle:
            digest = hashlib.sha256()
            while chunk := handle.read(MiB):
                digest.update(chunk)
        return digest.hexdigest()

    def write(key: str) -> None:
        data = payloads[key]
        with open(mnt / key, "wb") as out:
            for offset in range(0, len(data), 256 * 1024):
                out.write(data[offset:offset + 256 * 1024])

    with _Sampler(mnt.pid) as sampler, ThreadPoolExecutor(7) as pool:
        reads = {key: pool.submit(read, key) for key in sources}
        writes = [pool.submit(write, key) for key in payloads]
        for future in writes:
            future.result()
        digests = {key: future.result() for key, future in reads.items()}
    for key, data in sources.items():
        assert digests[key] == hashlib.sha256(data).hexdigest()
    for key, data in payloads.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert sampler.samples > 0
    grown = (sampler.peak - idle) / MiB
    print(f"idle RSS {idle / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB, "
          f"grown {grown:.0f} MiB for a {TARGET_MIB} MiB target")
    assert grown <= TARGET_MIB + OVERHEAD_MIB
