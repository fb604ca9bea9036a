"""Upload's parts: exact sizes, immutable bytes, never copied, several in flight."""

from __future__ import annotations

import random
import threading
from functools import partial

import trio

from driver.fs.threads import run_sync
from driver.fs.upload import Upload
from driver.store.base import UploadOptions, payload_size
from tests.memstore import MemoryStore

MiB = 1024 * 1024


class RecordingStore(MemoryStore):
    """Keeps the objects upload_part was given; optionally holds parts until released."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.given: list[tuple[int, object]] = []  # (part number, data), in call order
        self.hold = threading.Event()
        if not hold:
            self.hold.set()
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def upload_part(self, key, upload_id, number, data, options):  # type: ignore[override]
        with self._lock:
            self.given.append((number, data))
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.hold.wait(10)
            return super().upload_part(key, upload_id, number, data, options)
        finally:
            with self._lock:
                self.running -= 1


def _upload(store: MemoryStore, nursery: trio.Nursery, part_size: int,
            inflight: int = 4) -> Upload:
    limiter = trio.CapacityLimiter(16)

    async def call(fn, *args):
        return await run_sync(partial(fn, *args), limiter)

    upload = Upload(store, "f", UploadOptions(), run_sync=call, part_size=part_size,
                    max_inflight=inflight)
    upload.attach(nursery)
    return upload


def test_parts_are_exact_immutable_and_the_writes_are_never_copied() -> None:
    store = RecordingStore()
    part = 5 * MiB
    writes = [random.Random(i).randbytes(n) for i, n in
              enumerate([part, 300_000, part - 300_000 + 7, 2 * part + 11, 5])]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upload = _upload(store, nursery, part)
            offset = 0
            for data in writes:
                await upload.write(offset, data)
                offset += len(data)
            await upload.commit()

    trio.run(main)
    whole = b"".join(writes)
    assert store.objects["f"] == whole
    given = [data for _, data in sorted(store.given, key=lambda item: item[0])]  # parallel
    assert [payload_size(data) for data in given] == [part] * 4 + [len(whole) - 4 * part]
    assert b"".join(b"".join(data) for data in given) == whole
    pieces = [piece for data in given for piece in data]
    # Each piece is (a view of) one of the writes as pyfuse3 gave it: immutable, uncopied.
    assert all(any((piece.obj if isinstance(piece, memoryview) else piece) is write
                   for write in writes) for piece in pieces)
    assert all(isinstance(piece, bytes) or piece.readonly for piece in pieces)


def test_parts_are_uploaded_in_parallel() -> None:
    store = RecordingStore(hold=True)
    part = 5 * MiB
    data = random.Random(3).randbytes(6 * part)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upload = _upload(store, nursery, part, inflight=3)

            async def writer() -> None:
                for offset in range(0, len(data), MiB):
                    await upload.write(offset, data[offset:offset + MiB])
                await upload.commit()

            nursery.start_soon(writer)
            with trio.fail_after(10):  # until three parts are being uploaded at once
                while store.running < 3:
                    await trio.sleep(0.01)
            store.hold.set()

    trio.run(main)
    assert store.objects["f"] == data
    assert store.peak == 3  # max_inflight, never more
