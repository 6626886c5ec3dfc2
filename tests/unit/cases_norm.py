"""OpCase rows for the norm op family (see _gradcheck.py); gathered by test_engine_ops.py."""
from __future__ import annotations

from ._gradcheck import OpCase

#: one row per op variant
OP_CASES: list = []
#: gradient-rule names (keys of GRADIENTS) these rows cover
RULES: set = set()
