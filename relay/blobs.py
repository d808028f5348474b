"""Relay blobs: opaque ciphertext, appended in order and read by byte range.

:class:`LocalBlobStore` keeps one file per drop under ``data_dir/blobs`` (folders 0700, files
0600). A file's name derives from the drop id only: the 16 id bytes in hex (case-safe on
case-insensitive file systems), in a folder named by the first two hex digits. Memory per
request is constant: bodies are written and read in blocks of :data:`BLOCK` bytes, on worker
threads so the event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from pathlib import Path
from typing import Final, Protocol, TypeVar

from relay.store import valid_id

_T = TypeVar("_T")

__all__ = [
    "BLOCK",
    "BlobNotFound",
    "BlobStore",
    "LocalBlobStore",
    "NoSpace",
    "OffsetMismatch",
    "SourceError",
    "TooMuchData",
]

BLOCK: Final = 1 << 20
"""Bytes per disk write and per block read."""


class BlobNotFound(LookupError):
    """The drop has no blob."""


class OffsetMismatch(Exception):
    """An append did not start at the blob's length."""

    def __init__(self, length: int) -> None:
        super().__init__(f"the blob holds {length} bytes")
        self.length = length


class TooMuchData(Exception):
    """The source held more than ``limit`` bytes; the first ``limit`` were kept."""

    def __init__(self, length: int) -> None:
        super().__init__(f"limit reached at {length} bytes")
        self.length = length


class NoSpace(Exception):
    """Writing more would leave less than ``min_free`` bytes free; what came before is kept."""

    def __init__(self, length: int) -> None:
        super().__init__(f"not enough free space at {length} bytes")
        self.length = length


class SourceError(Exception):
    """The source iterator failed (the client went away); what arrived before is kept.
    ``__cause__`` is the source's exception."""

    def __init__(self, length: int) -> None:
        super().__init__(f"source failed at {length} bytes")
        self.length = length


class BlobStore(Protocol):
    """Where blobs live. Ids are valid drop ids (``ValueError`` otherwise)."""

    async def create(self, drop_id: str) -> None:
        """Create an empty blob (``FileExistsError`` if there is one)."""
        ...

    async def length(self, drop_id: str) -> int:
        """Bytes stored (``BlobNotFound``)."""
        ...

    async def append(
        self,
        drop_id: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        *,
        limit: int,
        min_free: int = 0,
    ) -> int:
        """Append ``chunks`` at ``offset`` (which must be the length); return the new length.

        Every byte taken from ``chunks`` before a failure is kept.

        Raises:
            OffsetMismatch: ``offset`` is not the current length (nothing written).
            TooMuchData: ``chunks`` held more than ``limit`` bytes.
            NoSpace: the disk would keep less than ``min_free`` bytes free.
            SourceError: ``chunks`` raised.
            BlobNotFound: no blob.
        """
        ...

    def read(self, drop_id: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Bytes ``[start, end)`` in blocks (``BlobNotFound`` at the first iteration).
        Close the iterator (``aclose``) when stopping early."""
        ...

    async def delete(self, drop_id: str) -> bool:
        """Remove the blob; False if there was none."""
        ...

    async def ids(self) -> list[str]:
        """Ids of every blob present."""
        ...


class LocalBlobStore:
    """:class:`BlobStore` in a local folder (created 0700 if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    def path(self, drop_id: str) -> Path:
        """The file of ``drop_id``'s blob.

        Raises:
            ValueError: not a drop id.
        """
        if not valid_id(drop_id):
            raise ValueError("not a drop id")
        name = base64.urlsafe_b64decode(drop_id + "==").hex()
        return self.root / name[:2] / name

    async def create(self, drop_id: str) -> None:
        await asyncio.to_thread(self._create, self.path(drop_id))

    @staticmethod
    def _create(path: Path) -> None:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))

    async def length(self, drop_id: str) -> int:
        path = self.path(drop_id)
        try:
            return (await asyncio.to_thread(os.stat, path)).st_size
        except FileNotFoundError:
            raise BlobNotFound(drop_id) from None

    async def append(
        self,
        drop_id: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        *,
        limit: int,
        min_free: int = 0,
    ) -> int:
        path = self.path(drop_id)
        try:
            fd = await _open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise BlobNotFound(drop_id) from None
        try:
            length = (await _settled(os.fstat, fd)).st_size
            if length != offset:
                raise OffsetMismatch(length)
            buffer = bytearray()
            taken = 0
            iterator = aiter(chunks)
            while True:
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    length = await self._flush(fd, buffer, length, min_free)
                    raise SourceError(length) from exc
                if taken + len(chunk) > limit:
                    buffer += chunk[: limit - taken]
                    length = await self._flush(fd, buffer, length, min_free)
                    raise TooMuchData(length)
                taken += len(chunk)
                buffer += chunk
                if len(buffer) >= BLOCK:
                    length = await self._flush(fd, buffer, length, min_free)
            return await self._flush(fd, buffer, length, min_free)
        finally:
            os.close(fd)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _flush(self, fd: int, buffer: bytearray, length: int, min_free: int) -> int:
        """Write ``buffer`` (then empty it); return the new length."""
        if buffer:
            await _settled(self._write, fd, buffer, length, min_free)
            length += len(buffer)
            buffer.clear()
        return length

    def _write(self, fd: int, data: bytearray, length: int, min_free: int) -> None:
        if min_free and shutil.disk_usage(self.root).free - len(data) < min_free:
            raise NoSpace(length)
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            view.release()

    async def read(self, drop_id: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        path = self.path(drop_id)
        try:
            fd = await _open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise BlobNotFound(drop_id) from None
        try:
            position = start
            while position < end:
                block = await _settled(os.pread, fd, min(BLOCK, end - position), position)
                if not block:
                    raise BlobNotFound(drop_id)  # truncated under us: deleted and recreated?
                position += len(block)
                yield block
        finally:
            os.close(fd)

    async def delete(self, drop_id: str) -> bool:
        path = self.path(drop_id)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True

    async def ids(self) -> list[str]:
        return await asyncio.to_thread(self._ids)

    def _ids(self) -> list[str]:
        found: list[str] = []
        for folder in self.root.iterdir():
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for entry in folder.iterdir():
                try:
                    raw = bytes.fromhex(entry.name)
                except ValueError:
                    continue
                if len(raw) == 16 and entry.name == raw.hex() and entry.name[:2] == folder.name:
                    found.append(base64.urlsafe_b64encode(raw).decode().rstrip("="))
        return found


async def _settled(fn: Callable[..., _T], *args: object) -> _T:
    """Run ``fn`` on a worker thread. If the caller is cancelled, wait for the thread before
    letting the cancellation through: the caller closes the file descriptor ``fn`` uses, and a
    descriptor closed under a running thread may be reused by another file meanwhile."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what matters now
        raise


async def _open(path: Path, flags: int) -> int:
    """``os.open`` on a worker thread; a descriptor opened for a cancelled caller is closed."""
    task = asyncio.ensure_future(asyncio.to_thread(os.open, path, flags))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is None:
            os.close(task.result())
        raise
