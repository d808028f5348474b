"""The sender's compression choice (peer/compression.py, docs/protocol.md §5.2) with a
scripted clock: it measures both settings only on a fast transfer and keeps the faster."""

from __future__ import annotations

from peer import compression
from peer.compression import CompressionChoice


def drive(
    choice: CompressionChoice,
    rates: dict[bool, float],
    seconds: float,
    t: float = 0.0,
    fed: int = 0,
    moves: int = 0,
) -> tuple[float, int, list[bool]]:
    """Feed 64 KiB chunks for ``seconds``, at the rate of the current setting."""
    changes: list[bool] = []
    end = t + seconds
    while t < end:
        fed += 65536
        t += 65536 / rates[choice.on]
        change = choice.update(t, fed, moves)
        if change is not None:
            changes.append(change)
    return t, fed, changes


def test_a_slow_transfer_always_compresses() -> None:
    choice = CompressionChoice(0.0)
    _, _, changes = drive(choice, {True: 12e6, False: 15e6}, 60.0)
    assert changes == [] and choice.on and choice.trials == 0


def test_a_slow_transfer_compresses_harder_until_it_is_fast_again() -> None:
    choice = CompressionChoice(0.0)
    assert choice.level == compression.FAST_LEVEL  # until the first measurement
    t, fed, _ = drive(choice, {True: 12e6, False: 15e6}, 3.0)
    assert choice.level == compression.SLOW_LEVEL == 3 and choice.on
    # the link gets faster: the next measurement goes back to the fast level
    t, fed, _ = drive(choice, {True: 80e6, False: 70e6}, compression.RETRY_SECONDS + 2.0, t, fed)
    assert choice.level == compression.FAST_LEVEL == 1 and choice.on


def test_a_fast_transfer_stops_compressing_when_that_is_faster() -> None:
    choice = CompressionChoice(0.0)
    rates = {True: 80e6, False: 110e6}
    t, fed, changes = drive(choice, rates, 5.0)
    assert changes == [False] and not choice.on  # warm-up, base, trial: kept off
    # measured again later: compressing is still slower, so it goes back off
    t, fed, changes = drive(choice, rates, compression.RETRY_SECONDS + 3.0, t, fed)
    assert changes == [True, False] and not choice.on
    assert choice.trials == 2


def test_compression_is_kept_when_it_pays_or_when_off_is_barely_faster() -> None:
    for off_rate in (60e6, 85e6):  # slower; faster by less than OFF_RATIO
        choice = CompressionChoice(0.0)
        _, _, changes = drive(choice, {True: 80e6, False: off_rate}, 5.0)
        assert changes == [False, True] and choice.on


def test_a_lane_move_during_a_trial_restores_the_measured_setting() -> None:
    choice = CompressionChoice(0.0)
    rates = {True: 80e6, False: 110e6}
    t, fed, changes = drive(choice, rates, 2.5)
    assert changes == [False]  # the trial of "off" runs
    t, fed, changes = drive(choice, rates, 0.1, t, fed, moves=1)
    assert changes[0] is True  # the move: back to compressing, measured afresh
    t, fed, changes = drive(choice, rates, 3.0, t, fed, moves=1)
    assert changes == [False] and not choice.on
