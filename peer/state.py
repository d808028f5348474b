"""The sender's local state: its relay drops (owner tokens, resume data) and the
append-only disclosure log of everything it sent.

Lives in ``Settings.home`` (``$SCANBEAM_HOME``, else ``$XDG_DATA_HOME/scanbeam``, else
``~/.local/share/scanbeam``); folder 0700, files 0600. Owner tokens and link secrets are
kept here (never printed, never logged) so that the sender can manage and resume its drops.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peer.errors import LocalFileError

__all__ = [
    "Disclosure",
    "DropRecord",
    "LocalState",
    "digest_of",
    "study_uids",
]

LOG_FIELDS = (
    "time",
    "how",
    "to",
    "outcome",
    "files",
    "bytes",
    "study_uids",
    "sha256_list_digest",
    "expires",
    "server",
    "deidentified",
)


def digest_of(digests: Sequence[str]) -> str:
    """SHA-256 over the files' SHA-256 hex digests in manifest order, one per line."""
    return hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()


def study_uids(summary: Mapping[str, Any]) -> list[str]:
    studies = summary.get("studies")
    if not isinstance(studies, list):
        return []
    return [str(s.get("study_uid")) for s in studies if isinstance(s, dict) and s.get("study_uid")]


@dataclass(frozen=True, slots=True)
class Disclosure:
    """One line of the disclosure log: what was sent, to whom, how, and how it ended."""

    time: float
    how: str  # "direct", "turn" or "relay"
    to: str  # "code <nameplate>" or "link <drop id>"
    outcome: str  # "delivered", "uploaded", "failed: <code>", "declined"
    files: int
    bytes: int
    study_uids: list[str]
    sha256_list_digest: str
    expires: float | None = None
    server: str = ""
    deidentified: str = ""  # the de-identification profile and table edition, if any


@dataclass(slots=True)
class DropRecord:
    """A relay drop as the sender remembers it (secrets included: file mode 0600)."""

    id: str
    server: str
    owner_token: str  # base64url
    link_secret: str  # base64url, to rebuild the stream when resuming an upload
    password: dict[str, Any] | None  # {"salt", "ops", "mem", "key"} (key: derived, hex)
    created: float
    expires: float
    max_downloads: int
    files: int
    bytes: int
    sources: list[str]
    manifest: str  # hex of the encoded manifest (exact bytes, for resume)
    uploaded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def link(self) -> str:
        return f"{self.server.rstrip('/')}/d/{self.id}#{self.link_secret}"


class LocalState:
    def __init__(self, home: Path) -> None:
        self.home = home

    def _ensure(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.home / "drops").mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LocalFileError(
                str(exc),
                user_message=f"Cannot write ScanBeam's local state in {str(self.home)!r}: "
                f"{exc.strerror or exc}.",
            ) from None

    # de-identification

    def deid_salt(self) -> bytes:
        """The sender's secret de-identification salt (32 random bytes, file mode 0600),
        created on first use: the same salt maps the same UIDs and dates the same way on
        every send, and nobody without it can recompute or reverse the mapping."""
        self._ensure()
        path = self.home / "deid-salt"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise LocalFileError(
                str(exc), user_message=f"Cannot create the de-identification salt: {exc}."
            ) from None
        else:
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            salt = path.read_bytes()
        except OSError as exc:
            raise LocalFileError(
                str(exc), user_message=f"Cannot read the de-identification salt: {exc}."
            ) from None
        if len(salt) < 32:
            raise LocalFileError(
                "short salt",
                user_message=f"The de-identification salt {str(path)!r} is damaged; "
                "move it away to create a new one (UIDs will then map differently).",
            )
        return salt

    # disclosure log

    @property
    def log_path(self) -> Path:
        return self.home / "disclosures.jsonl"

    def record(self, entry: Disclosure) -> None:
        """Append one entry (O_APPEND, fsync): the log is never rewritten."""
        self._ensure()
        line = (json.dumps(asdict(entry), separators=(",", ":")) + "\n").encode()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def disclosures(self) -> list[dict[str, Any]]:
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    @staticmethod
    def as_csv(rows: Iterable[Mapping[str, Any]]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(LOG_FIELDS)
        for r in rows:
            w.writerow(
                [
                    _iso(r.get("time")),
                    r.get("how", ""),
                    r.get("to", ""),
                    r.get("outcome", ""),
                    r.get("files", ""),
                    r.get("bytes", ""),
                    " ".join(r.get("study_uids") or []),
                    r.get("sha256_list_digest", ""),
                    _iso(r.get("expires")),
                    r.get("server", ""),
                    r.get("deidentified", ""),
                ]
            )
        return buf.getvalue()

    # drops

    def _drop_path(self, drop_id: str) -> Path:
        if not drop_id.replace("-", "").replace("_", "").isalnum() or len(drop_id) > 64:
            raise LocalFileError("bad id", user_message=f"{drop_id!r} is not a drop id.")
        return self.home / "drops" / f"{drop_id}.json"

    def save_drop(self, drop: DropRecord) -> None:
        self._ensure()
        path = self._drop_path(drop.id)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(drop), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load_drop(self, drop_id: str) -> DropRecord | None:
        try:
            doc = json.loads(self._drop_path(drop_id).read_text())
            return DropRecord(**doc)
        except (OSError, ValueError, TypeError):
            return None

    def drops(self) -> list[DropRecord]:
        folder = self.home / "drops"
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.json")):
            d = self.load_drop(p.stem)
            if d is not None:
                out.append(d)
        return sorted(out, key=lambda d: d.created)

    # download claims (the receiver side): reused when a download resumes

    def save_claim(self, drop_id: str, claim: str) -> None:
        self._ensure()
        path = self.home / "claims"
        path.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(
            path / self._drop_path(drop_id).name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        with os.fdopen(fd, "w") as fh:
            fh.write(claim)

    def load_claim(self, drop_id: str) -> str | None:
        try:
            return (
                self.home / "claims" / self._drop_path(drop_id).name
            ).read_text().strip() or None
        except OSError:
            return None

    def forget_claim(self, drop_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.home / "claims" / self._drop_path(drop_id).name).unlink()

    def forget_drop(self, drop_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._drop_path(drop_id).unlink()


def _iso(t: object) -> str:
    if not isinstance(t, int | float):
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
