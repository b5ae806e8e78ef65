"""How tuner writes a value for people: in tables, progress lines, reports and messages."""

from __future__ import annotations

from typing import Any


def short(value: Any, digits: int = 4) -> str:
    """``value`` as a person reads it: None as ``-``; a float to ``digits`` significant digits, or in
    full where it is a whole number of 10,000 or more (a parameter count, not ``1.235e+05``); anything
    else as ``str`` does."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 1e4 else f"{value:.{digits}g}"
    return str(value)
