"""The download's completion call survives a lost answer (retry semantics)."""

from __future__ import annotations

from typing import Any

import pytest

from peer import relay_session
from relay.client import RelayError


class FlakyCompletion:
    """Stands in for RelayClient.complete: fails with the given codes, then succeeds."""

    def __init__(self, *codes: str) -> None:
        self.codes = list(codes)
        self.calls = 0

    async def complete(self, drop_id: str, auth: bytes, claim: str) -> Any:
        self.calls += 1
        if self.codes:
            raise RelayError(self.codes.pop(0), 0, "injected")
        return None


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    async def instant(_: float) -> None:
        return None

    monkeypatch.setattr("peer.relay_session.asyncio.sleep", instant)


async def test_retries_after_a_dropped_connection() -> None:
    client = FlakyCompletion("unreachable", "unreachable")
    await relay_session._complete(client, "x" * 22, b"a", "c")  # type: ignore[arg-type]
    assert client.calls == 3


async def test_a_lost_answer_counts_as_done() -> None:
    client = FlakyCompletion("unreachable", "claim")
    await relay_session._complete(client, "x" * 22, b"a", "c")  # type: ignore[arg-type]
    assert client.calls == 2


async def test_other_errors_and_exhausted_retries_raise() -> None:
    with pytest.raises(RelayError) as info:
        await relay_session._complete(FlakyCompletion("claim"), "x" * 22, b"a", "c")  # type: ignore[arg-type]
    assert info.value.code == "claim"
    client = FlakyCompletion(*["unreachable"] * 10)
    with pytest.raises(RelayError):
        await relay_session._complete(client, "x" * 22, b"a", "c")  # type: ignore[arg-type]
    assert client.calls == relay_session.DOWNLOAD_RETRIES + 1
