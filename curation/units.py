"""Units, in one place: the lengths people type (`4096`, `32k`, `1m`, `1.5k`) and the numbers we
print (GiB and other byte sizes, percents, durations, with `-` for a value that is not known).

Pure functions with no dependencies: stage specs (`curation.stages`), evaluation lengths, the
planner's table, inspect's tables and progress lines all read and write numbers through here, so
`32k` means 32,768 everywhere and an unknown value prints the same way in every table.
"""

from __future__ import annotations

from datetime import datetime, timezone
from fractions import Fraction

GiB = 1024**3
MISSING = "-"  # what a table prints for a value it does not have

# Binary multiples, as context lengths are quoted (32k = 32,768 tokens).
_SCALES = {"k": 1024, "m": 1024**2}
COUNT_FORM = "a whole number such as 4096, 32k (x1024), 1m (x1024^2) or 1.5k"


def parse_count(text: str | int, minimum: int = 0) -> int:
    """`4096`, `32k` (x1024), `1m` (x1024^2), `1.5k` (= 1536: a fraction is fine when the result is
    whole); an int passes through. ValueError, on one line, for anything else or below `minimum`."""
    if isinstance(text, bool):  # bool is an int subclass, never a length
        raise ValueError(f"bad count {text!r}: expected {COUNT_FORM}")
    if isinstance(text, int):
        value = Fraction(text)
    else:
        spelled = str(text).strip().lower()
        scale = _SCALES.get(spelled[-1:], 1)
        number = spelled[:-1] if scale > 1 else spelled
        try:  # Fraction, not float: 1.1k is refused for not being whole, not rounded
            if "/" in number:  # Fraction would also read "1/2": not a length anyone types
                raise ValueError(number)
            value = Fraction(number) * scale
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"bad count {text!r}: expected {COUNT_FORM}") from None
    if value.denominator != 1:
        raise ValueError(f"bad count {text!r}: {float(value):g} is not a whole number")
    if value < minimum:
        raise ValueError(f"bad count {text!r}: must be at least {minimum}")
    return int(value)


def number(x: float | None, spec: str = ".3f") -> str:
    """`x` in a format spec (`.3f`, `,.0f`, `.3g`), or `-` when it is not known."""
    return MISSING if x is None else format(x, spec)


def percent(share: float | None, digits: int = 1) -> str:
    """A share in [0, 1] as a percent: 0.1234 -> `12.3%`; `-` when not known."""
    return MISSING if share is None else f"{100 * share:.{digits}f}%"


def gib(n: float | None) -> str:
    """Bytes in GiB with two decimals and thousands separators (`1,234.50`); `-` when not known.
    GiB, not GB: TPU HBM is stated in GiB."""
    return number(None if n is None else n / GiB, ",.2f")


def byte_size(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1, with one decimal
    (`1.5 GiB`, `640.0 KiB`, `12 bytes`): for messages about sizes that span many magnitudes."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n, step = n / 1024, step + 1
    return f"{n:,.0f} bytes" if step == 0 else f"{n:,.1f} {units[step]}"


def duration(seconds: float) -> str:
    """A short human duration in whole seconds: 45s, 12m05s, 3h07m (negative counts as 0)."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def utc_time_ns(ns: int) -> str:
    """A moment given in nanoseconds since the epoch, as ISO 8601 UTC with every digit kept
    (`2026-12-01T19:30:01.123456789Z`): two saves of a file a microsecond apart still differ."""
    seconds, fraction = divmod(int(ns), 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, tz=timezone.utc):%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


__all__ = ["COUNT_FORM", "GiB", "MISSING", "byte_size", "duration", "gib", "number", "parse_count", "percent",
           "utc_time_ns"]
