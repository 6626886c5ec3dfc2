"""Value checks shared by the engine's spec and config validation."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from raven_hpc.errors import ModelError

__all__ = ["check_real", "is_int"]


def is_int(v: Any) -> bool:
    """Whether ``v`` is a Python or NumPy integer (booleans are not)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_real(where: str, key: str, value: Any, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number in the given range.

    Otherwise :class:`~raven_hpc.errors.ModelError`
    ``"{where}: {key} must be a number in [low, high), got ..."``.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    v = float(value) if ok else math.nan
    if ok and math.isfinite(v):
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    else:
        ok = False
    if not ok:
        if math.isfinite(low) and math.isfinite(high):
            rng = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif math.isfinite(low):
            rng = f"{'>' if low_open else '>='} {low:g}"
        elif math.isfinite(high):
            rng = f"{'<' if high_open else '<='} {high:g}"
        else:
            rng = "(finite)"
        raise ModelError(f"{where}: {key} must be a number {rng}, got {value!r}")
    return v
