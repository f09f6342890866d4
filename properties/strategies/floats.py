"""Floats and float64 tensors whose every value hypothesis draws, so that a failure shrinks to a readable tensor.

Floats for the float64 rounding laws (makemore/test_layers.py): the model fl(a ∘ b) = (a ∘ b)(1 + δ) assumes no
underflow, so a drawn magnitude is 0 or at least 1e-100, and products and squares of a few such values stay normal.
Hypothesis still shrinks towards 0 and small integers.
"""

import math

import torch
from hypothesis import strategies as st

from properties.strategies.values import F64

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


def tensors(shape, elements=finite):
    """A float64 tensor of `shape` whose every value hypothesis draws (so a failure shrinks to a readable tensor)."""
    size = math.prod(shape)
    return st.lists(elements, min_size=size, max_size=size).map(lambda v: torch.tensor(v, dtype=F64).reshape(shape))


UNDERFLOW_FLOOR = 1e-100


def floats_without_underflow(lo: float, hi: float):
    """Floats in [lo, hi] (lo ≤ 0 ≤ hi; ±0 included) whose magnitude is 0 or ≥ UNDERFLOW_FLOOR."""
    return st.floats(lo, hi, allow_subnormal=False).map(lambda v: 0.0 if abs(v) < UNDERFLOW_FLOOR else v)
