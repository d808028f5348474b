"""Errors of ScanBeam's peer side.

``str(exc)`` is developer detail; ``exc.user_message`` is the one line a user sees;
``exc.code`` is the stable wire/JSON error code; ``exc.exit_code`` is the CLI exit status
(see README "Exit codes")::

    BeamError                         internal         1
    ├── LocalProtocolError            internal         1   (a bug on our side)
    ├── RemoteProtocolError           protocol         8   (the peer broke the protocol)
    │   ├── IntegrityError            integrity        5
    │   ├── UnsafeManifestError       unsafe-manifest  8
    │   └── VersionError              version          8
    ├── PairingError                  pairing          3
    │   ├── WrongCodeError            wrong-code       3
    │   └── UnknownCodeError          unknown-code     3
    ├── ConnectionFailed              connection       4
    │   ├── ServerUnreachable         unreachable      4
    │   ├── PeerGone                  peer-gone        4
    │   ├── NoPathError               no-path          4
    │   ├── NoReceiver                no-receiver      4
    │   └── TransferTimeout           timeout          4
    ├── DeclinedError                 declined         6
    ├── CancelledByUser               cancelled        6
    ├── RemoteError                   remote           9   (the peer reported a failure)
    ├── PacsError                     pacs            10   (the PACS rejected us or instances)
    └── LocalFileError                local-file       7
        ├── SourceError               source           7
        ├── DestinationExists         exists           7
        └── DiskFull                  disk-full        7
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BeamError",
    "CancelledByUser",
    "ConnectionFailed",
    "DeclinedError",
    "DestinationExists",
    "DiskFull",
    "IntegrityError",
    "LocalFileError",
    "LocalProtocolError",
    "NoPathError",
    "NoReceiver",
    "PacsError",
    "PairingError",
    "PeerGone",
    "RemoteError",
    "RemoteProtocolError",
    "ServerUnreachable",
    "SourceError",
    "TransferTimeout",
    "UnknownCodeError",
    "UnsafeManifestError",
    "VersionError",
    "WrongCodeError",
    "error_for_code",
]


class BeamError(Exception):
    """Root of ScanBeam errors. ``user_message`` may be overridden per instance."""

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1
    default_message: ClassVar[str] = "The transfer failed because of an internal error."

    def __init__(self, detail: str = "", *, user_message: str | None = None) -> None:
        super().__init__(detail or self.default_message)
        self.user_message: str = user_message or self.default_message


class LocalProtocolError(BeamError):
    """Our own code misused the protocol machine (a bug)."""


class RemoteProtocolError(BeamError):
    code = "protocol"
    exit_code = 8
    default_message = "The other side sent invalid data; the transfer was stopped."


class IntegrityError(RemoteProtocolError):
    code = "integrity"
    exit_code = 5
    default_message = "Data failed its integrity check; the damaged file was not saved as complete."


class UnsafeManifestError(RemoteProtocolError):
    code = "unsafe-manifest"
    default_message = "The offered file list is unsafe and was refused."


class VersionError(RemoteProtocolError):
    code = "version"
    default_message = "The other side runs an incompatible ScanBeam version."


class PairingError(BeamError):
    code = "pairing"
    exit_code = 3
    default_message = "Pairing with the other side failed."


class WrongCodeError(PairingError):
    code = "wrong-code"
    default_message = (
        "The code was wrong: the two sides did not type the same code. "
        "The code is now used up; start a new send for a fresh code."
    )


class UnknownCodeError(PairingError):
    code = "unknown-code"
    default_message = "This code is unknown, expired or already used. Ask the sender for a new one."


class ConnectionFailed(BeamError):
    code = "connection"
    exit_code = 4
    default_message = "The connection failed."


class ServerUnreachable(ConnectionFailed):
    code = "unreachable"
    default_message = "Cannot reach the ScanBeam server."

    @classmethod
    def at(cls, server: str, detail: str = "") -> ServerUnreachable:
        """The error for a server URL the user can check (signaling and relay alike)."""
        return cls(
            detail or server,
            user_message=f"Cannot reach the ScanBeam server at {server}. "
            "Check --server or SCANBEAM_SERVER.",
        )


class PeerGone(ConnectionFailed):
    code = "peer-gone"
    default_message = (
        "The other side disconnected. Verified data was kept; run the same command again to resume."
    )


class NoPathError(ConnectionFailed):
    code = "no-path"
    default_message = "No direct connection could be made between the two sides."


class NoReceiver(ConnectionFailed):
    code = "no-receiver"
    default_message = "Nobody used the code in time."


class TransferTimeout(ConnectionFailed):
    code = "timeout"
    default_message = "The other side stopped responding."


class DeclinedError(BeamError):
    code = "declined"
    exit_code = 6
    default_message = "The receiver declined the transfer."


class CancelledByUser(BeamError):
    code = "cancelled"
    exit_code = 6
    default_message = "Cancelled. Verified data was kept for a resume."


class RemoteError(BeamError):
    code = "remote"
    exit_code = 9
    default_message = "The other side reported an error and stopped."


class PacsError(BeamError):
    """The PACS rejected the association or did not store every instance (PACS bridge)."""

    code = "pacs"
    exit_code = 10
    default_message = "The PACS did not store every instance."


class LocalFileError(BeamError):
    code = "local-file"
    exit_code = 7
    default_message = "A local file could not be read or written."


class SourceError(LocalFileError):
    code = "source"
    default_message = "A file to send could not be read."


class DestinationExists(LocalFileError):
    code = "exists"
    default_message = "A file with the same name already exists in the destination folder."


class DiskFull(LocalFileError):
    code = "disk-full"
    default_message = "Not enough free disk space in the destination folder."


_BY_CODE: dict[str, type[BeamError]] = {}


def _register(cls: type[BeamError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(BeamError)


def error_for_code(code: str) -> type[BeamError]:
    """Return the error class for a wire error code (``BeamError`` when unknown)."""
    return _BY_CODE.get(code, BeamError)
