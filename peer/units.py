"""Human-readable sizes, rates and durations for the CLI and the TUI.

Sizes use decimal (SI) units, as disks and network rates are sold: 1 kB = 1000 B.
"""

from __future__ import annotations

import math

__all__ = ["human_bytes", "human_duration", "human_rate"]

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def human_bytes(n: int) -> str:
    """Format a byte count with one decimal, e.g. ``"110.3 MB"``.

    Args:
        n: Number of bytes; negative values keep their sign.

    Returns:
        ``"999 B"`` below 1 kB, otherwise one decimal and the largest unit that keeps
        the number under 1000 (``"1.0 MB"``, not ``"1000.0 kB"``).
    """
    sign = "-" if n < 0 else ""
    n = abs(int(n))
    if n < 1000:
        return f"{sign}{n} B"
    value = float(n)
    for unit in _UNITS[1:]:
        value /= 1000.0
        if round(value, 1) < 1000.0 or unit == _UNITS[-1]:
            return f"{sign}{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(bytes_per_s: float) -> str:
    """Format a transfer rate, e.g. ``"12.3 MB/s"``.

    Args:
        bytes_per_s: Bytes per second. Negative values count as 0; NaN and infinity
            give ``"-- B/s"``.

    Returns:
        The rate in decimal units.
    """
    if not math.isfinite(bytes_per_s):
        return "-- B/s"
    return f"{human_bytes(round(max(bytes_per_s, 0.0)))}/s"


def human_duration(seconds: float) -> str:
    """Format a duration as ``"m:ss"`` under an hour, else ``"h:mm:ss"``.

    Args:
        seconds: Duration, rounded to the nearest second. Negative values count as 0;
            NaN and infinity give ``"--:--"``.

    Returns:
        For example ``"4:05"`` or ``"1:02:03"``.
    """
    if not math.isfinite(seconds):
        return "--:--"
    total = round(max(seconds, 0.0))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"
