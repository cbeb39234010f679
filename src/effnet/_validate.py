"""Argument checks at the public boundary: one clear message naming the argument.

Each check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for one out
of range, with the argument's name, the value given and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

__all__ = ["check_int", "check_float"]


def check_int(name: str, value: Any, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``.

    ``bool`` is refused (``True`` is not a count) and so are floats, even integral ones.

    Raises:
        TypeError: not an integer.
        ValueError: out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            allowed = f">= {minimum}" + (" (0 does not mean 'default')" if minimum == 1 else "")
        elif minimum is None:
            allowed = f"<= {maximum}"
        else:
            allowed = f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_float(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` in the interval ``low .. high``.

    Args:
        name: the argument's name, for the message.
        value: any real number (``bool`` is refused).
        low, high: bounds (None: unbounded on that side).
        low_open, high_open: exclude the bound itself.

    Raises:
        TypeError: not a real number.
        ValueError: NaN, infinite, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = ("(" if low_open or low is None else "[") + f"{left}, {right}" + (")" if high_open or high is None else "]")
        raise ValueError(f"{name} must be in {interval}, got {value:g}")
    return value
