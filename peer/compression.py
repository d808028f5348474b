"""Whether the sender compresses chunks: measured, not guessed (docs/protocol.md §5.2).

zstd level 1 costs the sender about 2 ms and the receiver about 1 ms of CPU per MB. On a slow
link that is nothing and saves link time; on a fast one (a LAN, or both ends on a busy
machine) it can be what limits the transfer. So, once the transfer runs faster than
`TRIAL_MIN_RATE`, the sender measures the payload rate (original bytes fed per second; the
lanes' backpressure makes that the rate at which they arrive) with compression on, then
with it off, keeps the faster setting, and measures again every `RETRY_SECONDS`. Below that
rate the link is what limits the transfer, so each measurement there also picks the zstd
level: `SLOW_LEVEL` (level 3: about 9 % smaller on CT than level 1, at about 190 MB/s of
one core, several times any such link) until a measurement is at or above `TRIAL_MIN_RATE`
again, when `FAST_LEVEL` (level 1, about 740 MB/s) returns.

Pure: the caller passes the clock and the byte count; no I/O.
"""

from __future__ import annotations

import enum

__all__ = [
    "FAST_LEVEL",
    "OFF_RATIO",
    "RETRY_SECONDS",
    "SLOW_LEVEL",
    "TRIAL_MIN_RATE",
    "WARMUP_SECONDS",
    "WINDOW_SECONDS",
    "CompressionChoice",
]

TRIAL_MIN_RATE = 25e6  # payload bytes/s below which compression always pays (stays on)
WINDOW_SECONDS = 1.0  # one measurement
WARMUP_SECONDS = 1.0  # the transfer's start is not measured (TCP slow start, first files)
OFF_RATIO = 1.1  # sending uncompressed must be this much faster to be kept
RETRY_SECONDS = 20.0  # a decision is measured again after this long
FAST_LEVEL = 1  # zstd level at the start and while the payload moves at TRIAL_MIN_RATE or more
SLOW_LEVEL = 3  # ... and below it (the link limits the transfer: a smaller ratio pays)


class _Phase(enum.Enum):
    IDLE = "idle"  # decided; waiting for the next measurement
    BASE = "base"  # measuring the current setting
    TRIAL = "trial"  # measuring the other setting


class CompressionChoice:
    """The sender's compression setting, from measured payload rates.

    Call :meth:`update` after each chunk fed; it returns the new setting when it changes.
    """

    def __init__(self, now: float) -> None:
        self.on = True
        self.level = FAST_LEVEL  # the zstd level while on: read it after each update
        self.trials = 0  # measurements of the other setting (for logs and tests)
        self._phase = _Phase.IDLE
        self._next = now + WARMUP_SECONDS
        self._window: tuple[float, int] = (now, 0)
        self._base_rate = 0.0
        self._moves = 0

    def update(self, now: float, fed: int, moves: int = 0) -> bool | None:
        """``fed``: payload bytes fed so far; ``moves``: lane moves so far (a move makes
        the window in progress meaningless). Returns the new setting, or None."""
        if moves != self._moves:
            self._moves = moves
            return self._restart(now, fed)
        if self._phase is _Phase.IDLE:
            if now >= self._next:
                self._phase = _Phase.BASE
                self._window = (now, fed)
            return None
        t0, b0 = self._window
        if now - t0 < WINDOW_SECONDS:
            return None
        rate = (fed - b0) / (now - t0)
        if self._phase is _Phase.BASE:
            if self.on:
                self.level = SLOW_LEVEL if rate < TRIAL_MIN_RATE else FAST_LEVEL
            if self.on and rate < TRIAL_MIN_RATE:
                self._decided(now)
                return None
            self._base_rate = rate
            self._phase = _Phase.TRIAL
            self._window = (now, fed)
            self.trials += 1
            return self._set(not self.on)
        # the trial's setting is kept when it is faster; uncompressed must win clearly
        keep = (
            rate >= self._base_rate * OFF_RATIO
            if not self.on
            else rate * OFF_RATIO >= self._base_rate
        )
        self._decided(now)
        return None if keep else self._set(not self.on)

    def _restart(self, now: float, fed: int) -> bool | None:
        if self._phase is _Phase.TRIAL:
            self._phase = _Phase.BASE
            self._window = (now, fed)
            return self._set(not self.on)  # back to the setting that was measured
        if self._phase is _Phase.BASE:
            self._window = (now, fed)
        return None

    def _decided(self, now: float) -> None:
        self._phase = _Phase.IDLE
        self._next = now + RETRY_SECONDS

    def _set(self, on: bool) -> bool:
        self.on = on
        return on
