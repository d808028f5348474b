"""Whether the sender compresses chunks: measured, not guessed (docs/protocol.md §5.2).

zstd level 1 costs the sender about 2 ms and the receiver about 1 ms of CPU per MB. On a slow
link that is nothing and saves link time; on a fast one (a LAN, or both ends on a busy
machine) it can be what limits the transfer. So, once the transfer runs faster than
`TRIAL_MIN_RATE`, the sender measures the payload rate (original bytes fed per second; the
lanes' backpressure makes that the rate at which they arrive) with compression on, then
with it off, keeps the faster setting, and measures again every `RETRY_SECONDS`.

Pure: the caller passes the clock and the byte count; no I/O.
"""

from __future__ import annotations

import enum

__all__ = [
    "OFF_RATIO",
    "RETRY_SECONDS",
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
