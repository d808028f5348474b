"""Pieces shared by the sender and receiver machines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from peer.errors import BeamError, RemoteError, RemoteProtocolError, error_for_code

__all__ = ["Failed", "json_body", "remote_error"]


@dataclass(frozen=True, slots=True)
class Failed:
    """The transfer failed; ``error.user_message`` says why."""

    error: BeamError


def json_body(body: bytes) -> dict[str, Any]:
    """Parse a JSON control body from the peer."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise RemoteProtocolError("control record is not JSON") from None
    if not isinstance(doc, dict):
        raise RemoteProtocolError("control record is not an object")
    return doc


def remote_error(body: bytes) -> BeamError:
    """Turn the peer's ERROR record into a local error naming what the peer reported."""
    try:
        code = json_body(body).get("code")
    except RemoteProtocolError:
        code = None
    cls = error_for_code(code) if isinstance(code, str) else BeamError
    if cls is BeamError:
        return RemoteError(f"peer error {code!r}")
    reason = cls.default_message.rstrip(".")
    return RemoteError(f"peer error {code!r}", user_message=f"The other side stopped: {reason}.")
