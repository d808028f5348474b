"""File I/O: collecting what to send, reading it, and receiving safely.

Receiving rules (docs/threat-model.md): names were checked by the manifest parser; data
is written under ``DEST/.scanbeam-partial/<key>/`` with index names (``f000017``), never
under a peer-chosen name, mode 0600; a file is linked to its final name only after its
SHA-256 matched and only if nothing exists there (``os.link`` never overwrites); no
existing path component may be a symlink. Verified prefixes stay in the staging folder
for a resume (``state.json`` counts the chunks that were fsynced).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peer.errors import (
    BeamError,
    DestinationExists,
    DiskFull,
    LocalFileError,
    SourceError,
    UnsafeManifestError,
)
from peer.proto.keys import kdf
from peer.proto.manifest import Manifest, check_path

__all__ = [
    "Checkpoints",
    "Destination",
    "FileTransform",
    "Layout",
    "SourceFile",
    "SourceReader",
    "collect_sources",
]

STAGING = ".scanbeam-partial"
CHECKPOINT_BYTES = 16 * 1024 * 1024
MAX_PENDING = 256  # verified files awaiting one batched fsync
FREE_MARGIN = 16 * 1024 * 1024
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass(frozen=True, slots=True)
class Layout:
    """A file sent as a transform of its source (e.g. a de-identified DICOM file): new
    ``head`` bytes, then ``raw_len`` bytes of the source from ``raw_start`` (the pixel
    data, never loaded whole), then new ``tail`` bytes."""

    head: bytes
    raw_start: int
    raw_len: int
    tail: bytes

    @property
    def size(self) -> int:
        return len(self.head) + self.raw_len + len(self.tail)

    def read(self, fd: int, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the transformed file from ``offset``."""
        out: list[bytes] = []
        end = min(offset + length, self.size)
        h, r = len(self.head), len(self.head) + self.raw_len
        if offset < h:
            out.append(self.head[offset : min(end, h)])
        if offset < r and end > h:
            start = max(offset, h) - h
            want = min(end, r) - h - start
            data = os.pread(fd, want, self.raw_start + start)
            out.append(data)
            if len(data) < want:
                return b"".join(out)
        if end > r:
            out.append(self.tail[max(offset, r) - r : end - r])
        return b"".join(out)


class FileTransform(Protocol):
    def layout(self, path: Path) -> Layout:
        """The transformed file's layout, the same every time for the same source.

        Raises:
            BeamError: the source cannot be transformed (any more).
        """


@dataclass(frozen=True, slots=True)
class SourceFile:
    rel: str
    path: Path
    size: int
    mtime_ns: int
    # sent as a transform of ``path`` (size is the transformed size; source_size the
    # size of ``path``, checked with mtime_ns for changes)
    transform: FileTransform | None = None
    source_size: int = -1
    # the mtime put in the manifest instead of the real one (a de-identified copy must not
    # reveal when the original was written); None: the real one
    sent_mtime_ns: int | None = None

    @property
    def manifest_mtime_ns(self) -> int:
        return self.mtime_ns if self.sent_mtime_ns is None else self.sent_mtime_ns


def collect_sources(paths: Sequence[Path]) -> list[SourceFile]:
    """Expand files and folders into the list to send, relative paths kept.

    A folder ``STUDY/`` is sent as ``STUDY/...``. Symlinks and special files inside folders
    are skipped (never followed); files are sorted for a stable order.

    Raises:
        SourceError: a path is missing or unreadable, or two names would collide.
    """
    out: list[SourceFile] = []
    for p in paths:
        try:
            st = p.stat()
        except OSError as exc:
            raise SourceError(
                str(exc), user_message=f"Cannot read {str(p)!r}: {exc.strerror or exc}."
            ) from None
        name = p.resolve().name if p.name in ("", ".", "..") else p.name
        if stat.S_ISDIR(st.st_mode):
            _walk(p, name, out)
        elif stat.S_ISREG(st.st_mode):
            out.append(SourceFile(name, p, st.st_size, st.st_mtime_ns))
        else:
            raise SourceError(f"{p} is not a file", user_message=f"{str(p)!r} is not a file.")
    seen: set[str] = set()
    for f in out:
        try:
            check_path(f.rel)
        except UnsafeManifestError as exc:
            raise SourceError(
                str(exc), user_message=f"Cannot send {f.rel!r}: its name is not portable."
            ) from None
        key = f.rel.casefold()
        if key in seen:
            raise SourceError(
                f"duplicate {f.rel}", user_message=f"Two files would both be named {f.rel!r}."
            )
        seen.add(key)
    return out


def _walk(root: Path, rel: str, out: list[SourceFile]) -> None:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise SourceError(
            str(exc), user_message=f"Cannot read folder {str(root)!r}: {exc.strerror or exc}."
        ) from None
    for e in entries:
        if e.is_symlink():
            continue
        if e.is_dir(follow_symlinks=False):
            _walk(Path(e.path), f"{rel}/{e.name}", out)
        elif e.is_file(follow_symlinks=False):
            st = e.stat(follow_symlinks=False)
            out.append(SourceFile(f"{rel}/{e.name}", Path(e.path), st.st_size, st.st_mtime_ns))


class SourceReader:
    """Reads chunks of the source files, one open file at a time, in large blocks."""

    def __init__(self, files: Sequence[SourceFile], block: int = 1 << 20) -> None:
        self._files = files
        self._block = block
        self._ix = -1
        self._fd = -1
        self._buf = b""
        self._buf_off = 0
        self._layout: Layout | None = None

    def read(self, file_ix: int, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes at ``offset``; SourceError if the file changed."""
        if file_ix != self._ix:
            self._open(file_ix)
        end = self._buf_off + len(self._buf)
        if not (self._buf_off <= offset and offset + length <= end):
            want = max(length, self._block)
            try:
                if self._layout is not None:
                    self._buf = self._layout.read(self._fd, offset, want)
                else:
                    self._buf = os.pread(self._fd, want, offset)
            except OSError as exc:
                raise self._error(f"cannot be read ({exc.strerror})") from None
            self._buf_off = offset
            if len(self._buf) < length:
                raise self._error("became shorter while sending")
        start = offset - self._buf_off
        return self._buf[start : start + length]

    def cached(self, file_ix: int, offset: int, length: int) -> bytes | None:
        """The bytes if they are in the current read-ahead block (no I/O), else None."""
        if file_ix != self._ix or not (
            self._buf_off <= offset and offset + length <= self._buf_off + len(self._buf)
        ):
            return None
        start = offset - self._buf_off
        return self._buf[start : start + length]

    def check_unchanged(self, file_ix: int) -> None:
        f = self._files[file_ix]
        try:
            st = f.path.stat()
        except OSError as exc:
            raise self._error(f"vanished ({exc.strerror})", file_ix) from None
        size = f.source_size if f.transform is not None else f.size
        if st.st_size != size or st.st_mtime_ns != f.mtime_ns:
            raise self._error("changed while it was being sent", file_ix)

    def _open(self, file_ix: int) -> None:
        self.close()
        self._ix = file_ix
        try:
            self._fd = os.open(self._files[file_ix].path, os.O_RDONLY)
        except OSError as exc:
            raise self._error(f"cannot be opened ({exc.strerror})") from None
        self._buf, self._buf_off = b"", 0
        f = self._files[file_ix]
        if f.transform is not None:
            try:
                self._layout = f.transform.layout(f.path)
            except BeamError as exc:
                raise self._error(f"cannot be transformed any more ({exc.user_message})") from None
            if self._layout.size != f.size:
                raise self._error("changed while it was being sent")

    def _error(self, what: str, file_ix: int | None = None) -> SourceError:
        rel = self._files[self._ix if file_ix is None else file_ix].rel
        return SourceError(f"{rel} {what}", user_message=f"The file {rel!r} {what}.")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._ix = -1
        self._layout = None


def _identity(manifest: Manifest) -> str:
    doc = json.dumps(
        [manifest.chunk_size, [[f.path, f.size, f.mtime_ns] for f in manifest.files]],
        separators=(",", ":"),
    ).encode()
    return kdf(hashlib.sha256(doc).digest(), "scanbeam v1 resume key", 16).hex()


def _disk_error(exc: OSError, where: str) -> BeamError:
    if exc.errno in _DISK_ERRNOS:
        return DiskFull(
            str(exc),
            user_message=f"The disk is full while writing to {where}. "
            "Verified data was kept; free some space and run the same command again.",
        )
    return LocalFileError(str(exc), user_message=f"Cannot write to {where}: {exc.strerror or exc}.")


class Destination:
    """Where one offered transfer is written. Use from one task; blocking calls are short."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest
        self.key = _identity(manifest)
        self.staging = root / STAGING / self.key
        self._state: dict[str, Any] = {"v": 1, "chunks": {}, "placed": []}
        self._fd = -1
        self._fd_ix = -1
        self._unsynced = 0
        self._written: dict[int, int] = {}
        self._pending: dict[int, int] = {}  # verified files not yet fsynced: index -> fd
        self._staging_made = False

    # before accepting

    def preflight(self) -> tuple[list[int], list[Any], int]:
        """Check the destination and load resume state.

        Returns:
            (chunks held per file, sha256 state per file, bytes held).

        Raises:
            DestinationExists, DiskFull, LocalFileError.
        """
        created = self._check_root()  # a folder made just now holds nothing to check
        self._load_state()
        placed = set(self._state["placed"])
        cs = self.manifest.chunk_size
        resume: list[int] = []
        hashes: list[Any] = []
        checked: set[str] = set()
        fresh = not os.path.isdir(self.staging)  # nothing staged: no file to look at there
        root = str(self.root)
        for i, f in enumerate([] if created else self.manifest.files):
            self._check_parents(f.path, checked)
            final = os.path.join(root, *f.path.split("/"))
            if i in placed and os.path.isfile(final) and not os.path.islink(final):
                k, h = self._rehash(Path(final), f.n_chunks(cs), f.size)
            else:
                if os.path.lexists(final):
                    raise DestinationExists(
                        final,
                        user_message=f"{f.path!r} already exists in {str(self.root)!r}; "
                        "nothing was overwritten. Choose another folder with -o.",
                    )
                placed.discard(i)
                k, h = (0, hashlib.sha256()) if fresh else self._resume_staged(i)
            resume.append(k)
            hashes.append(h)
        if created:
            resume = [0] * len(self.manifest.files)
            hashes = [hashlib.sha256() for _ in self.manifest.files]
        self._state["placed"] = sorted(placed)
        held = sum(min(f.size, k * cs) for k, f in zip(resume, self.manifest.files, strict=True))
        need = self.manifest.total_bytes - held + FREE_MARGIN
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise DiskFull(
                f"free {free} need {need}",
                user_message=f"Not enough free space in {str(self.root)!r}: "
                f"{_mb(need)} needed, {_mb(free)} free.",
            )
        return resume, hashes, held

    def _check_root(self) -> bool:
        """Make the folder if needed (True when this call made it) and check it."""
        created = False
        try:
            try:
                self.root.mkdir(parents=True)
                created = True
            except FileExistsError:
                pass
            st = os.lstat(self.root)
        except OSError as exc:
            raise _disk_error(exc, str(self.root)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise LocalFileError(
                f"{self.root} not a folder", user_message=f"{str(self.root)!r} is not a folder."
            )
        top = self.root / STAGING
        if os.path.lexists(top) and (os.path.islink(top) or not top.is_dir()):
            raise LocalFileError(
                "staging is not a folder", user_message=f"{str(top)!r} is not a plain folder."
            )
        return created

    def _check_parents(self, rel: str, checked: set[str]) -> None:
        """Every existing folder on the way to ``rel`` must be a plain folder (no link)."""
        parts = rel.split("/")[:-1]
        for n in range(1, len(parts) + 1):
            sub = "/".join(parts[:n])
            if sub in checked:
                continue
            path = self.root.joinpath(*parts[:n])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return  # nothing below exists yet
            except OSError as exc:
                raise _disk_error(exc, str(self.root)) from None
            if not stat.S_ISDIR(st.st_mode):
                raise LocalFileError(
                    f"{path} is not a plain folder",
                    user_message=f"{str(path)!r} exists and is not a plain folder; "
                    "nothing was written there.",
                )
            checked.add(sub)

    def _final(self, i: int) -> Path:
        return self.root.joinpath(*self.manifest.files[i].path.split("/"))

    def _staged(self, i: int) -> Path:
        return self.staging / f"f{i:07d}"

    def _load_state(self) -> None:
        try:
            doc = json.loads((self.staging / "state.json").read_text())
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("v") == 1:
            chunks = doc.get("chunks")
            placed = doc.get("placed")
            if isinstance(chunks, dict) and isinstance(placed, list):
                self._state = {
                    "v": 1,
                    "chunks": {str(k): v for k, v in chunks.items() if isinstance(v, int)},
                    "placed": [p for p in placed if isinstance(p, int)],
                }

    def _resume_staged(self, i: int) -> tuple[int, Any]:
        f = self.manifest.files[i]
        cs = self.manifest.chunk_size
        k = int(self._state["chunks"].get(str(i), 0))
        path = self._staged(i)
        try:
            size = os.lstat(path).st_size if os.path.isfile(path) else -1
        except OSError:
            size = -1
        k = max(0, min(k, f.n_chunks(cs)))
        held = min(f.size, k * cs)
        if size < held or k == 0:
            self._state["chunks"][str(i)] = 0
            return 0, hashlib.sha256()
        return self._rehash(path, k, held)

    def _rehash(self, path: Path, k: int, length: int) -> tuple[int, Any]:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            remaining = length
            while remaining:
                block = fh.read(min(remaining, 1 << 20))
                if not block:
                    return 0, hashlib.sha256()
                h.update(block)
                remaining -= len(block)
        return k, h

    # while receiving

    def write(self, file_ix: int, offset: int, data: bytes) -> None:
        """Write one authenticated chunk to the staged file."""
        if file_ix != self._fd_ix:
            self._open_staged(file_ix, offset)
        try:
            os.pwrite(self._fd, data, offset)
        except OSError as exc:
            raise _disk_error(exc, str(self.root)) from None
        self._written[file_ix] = self._written.get(file_ix, 0) + 1
        self._unsynced += len(data)

    def needs_checkpoint(self) -> bool:
        return self._unsynced >= CHECKPOINT_BYTES or len(self._pending) >= MAX_PENDING

    def checkpoint(self) -> None:
        """fsync what was written and record it in state.json (blocking: run in a thread)."""
        job = self.begin_checkpoint()
        if job is not None:
            job()

    def begin_checkpoint(self) -> Callable[[], None] | None:
        """Take what was written so far for a checkpoint, and return the blocking part
        (fsync, then state.json) to run in another thread while writing goes on; None when
        nothing was written since the last one. The next checkpoint begins only after
        this one's job returned: the job alone updates the resume state meanwhile.

        Raises:
            DiskFull, LocalFileError.
        """
        if not self._pending and (self._fd < 0 or not self._written.get(self._fd_ix)):
            return None  # nothing written since the last checkpoint
        try:  # a duplicate: writing may close its own descriptor while the job runs
            current = os.dup(self._fd) if self._fd >= 0 else -1
        except OSError as exc:
            raise _disk_error(exc, str(self.root)) from None
        cs = self.manifest.chunk_size
        done, self._pending = self._pending, {}
        counts = {ix: self.manifest.files[ix].n_chunks(cs) for ix in done}
        if self._fd_ix >= 0:
            ix = self._fd_ix
            counts[ix] = int(self._state["chunks"].get(str(ix), 0)) + self._written.pop(ix, 0)
            self._written[ix] = 0
        self._unsynced = 0
        fds = [*done.values(), current] if current >= 0 else list(done.values())
        return functools.partial(self._finish_checkpoint, fds, counts)

    def _finish_checkpoint(self, fds: list[int], counts: dict[int, int]) -> None:
        try:
            for fd in fds:
                os.fsync(fd)
        except OSError as exc:
            raise _disk_error(exc, str(self.root)) from None
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._state["chunks"].update({str(ix): n for ix, n in counts.items()})
        try:
            self._save_state()
        except OSError as exc:
            raise _disk_error(exc, str(self.root)) from None

    def _open_staged(self, file_ix: int, offset: int) -> None:
        self._close_fd()
        try:
            if not self._staging_made:
                self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._staging_made = True
            self._fd = os.open(
                self._staged(file_ix), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600
            )
            os.ftruncate(self._fd, offset)
        except OSError as exc:
            raise _disk_error(exc, str(self.root)) from None
        self._fd_ix = file_ix
        self._written[file_ix] = 0

    def file_verified(self, file_ix: int) -> None:
        """The file's SHA-256 matched. It becomes durable at the next checkpoint (fsync is
        batched: one per file would make thousands of small files slow)."""
        if file_ix in self._state["placed"]:
            return
        if file_ix != self._fd_ix:  # wholly resumed, or empty and never opened
            self._open_staged(file_ix, self.manifest.files[file_ix].size)
        self._pending[file_ix] = self._fd
        self._written.pop(file_ix, None)
        self._fd, self._fd_ix = -1, -1

    def place_all(self) -> list[Path]:
        """Link every verified file to its final name, never overwriting anything.

        Folders are created and opened one level at a time relative to the previous one
        with O_NOFOLLOW, so a symlink planted anywhere on the way is never followed.
        """
        self.checkpoint()
        self._close_fd()
        placed = set(self._state["placed"])
        out = []
        for i in range(len(self.manifest.files)):
            final = self._final(i)
            out.append(final)
            if i in placed:
                continue
            parts = self.manifest.files[i].path.split("/")
            dir_fd = self._open_parents(parts[:-1])
            try:
                os.link(self._staged(i), parts[-1], dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                raise DestinationExists(
                    str(final),
                    user_message=f"{self.manifest.files[i].path!r} appeared in the destination "
                    "while receiving; nothing was overwritten and the verified copy was kept.",
                ) from None
            except OSError as exc:
                raise _disk_error(exc, str(self.root)) from None
            finally:
                os.close(dir_fd)
            placed.add(i)
            self._state["placed"] = sorted(placed)
            with contextlib.suppress(OSError):
                os.unlink(self._staged(i))
        self._save_state()
        shutil.rmtree(self.staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / STAGING).rmdir()  # only when no other transfer is staged there
        return out

    def _open_parents(self, parts: list[str]) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise _disk_error(exc, str(self.root)) from None
        cur = self.root
        for part in parts:
            cur = cur / part
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LocalFileError(
                        f"{cur} is not a plain folder",
                        user_message=f"{str(cur)!r} exists and is not a plain folder; "
                        "nothing was written there.",
                    ) from None
                raise _disk_error(exc, str(self.root)) from None
            os.close(fd)
            fd = nxt
        return fd

    def save(self) -> None:
        """Persist the resume state after a failure (best effort)."""
        with contextlib.suppress(BeamError, OSError):
            self.checkpoint()
        self._close_fd()
        for fd in self._pending.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pending.clear()

    def _save_state(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.staging / "state.json.tmp"
        tmp.write_text(json.dumps(self._state))
        os.replace(tmp, self.staging / "state.json")

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        self._fd_ix = -1


class Checkpoints:
    """Checkpoints of one destination, each fsync'd in a worker thread while the next
    chunks are written, so a slow disk does not stop the receive loop. One runs at a
    time; a failure is raised by the next :meth:`maybe` or by :meth:`drain`. Drain before
    any other blocking call of the destination (``place_all``, ``save``)."""

    def __init__(self, dest: Destination) -> None:
        self.dest = dest
        self._job: asyncio.Future[None] | None = None

    async def maybe(self) -> None:
        """Begin a checkpoint when enough was written since the last one."""
        if not self.dest.needs_checkpoint():
            return
        await self.drain()
        job = self.dest.begin_checkpoint()
        if job is not None:
            self._job = asyncio.get_running_loop().run_in_executor(None, job)

    async def drain(self) -> None:
        """Wait for the checkpoint in progress, if any (even when cancelled meanwhile:
        the destination is never used by two threads at once)."""
        job, self._job = self._job, None
        if job is None:
            return
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await job
            raise

    async def save(self) -> None:
        """Persist the resume state after a failure (best effort; see Destination.save)."""
        with contextlib.suppress(BeamError):
            await self.drain()
        await asyncio.get_running_loop().run_in_executor(None, self.dest.save)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
