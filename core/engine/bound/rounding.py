"""The rounding model of the certified bound: unit roundoffs (with torch's float32 precision settings), γ(k),
underflow, and the counts of roundings the derivations use (docs/design.md, "The certified bound").

Floating point follows the standard model fl(a ∘ b) = (a ∘ b)(1 + δ), |δ| ≤ u. A term that passes through k
roundings is off by at most γ(k)·|term|.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.types import Device

from core.engine.kinds import KINDS, ConvKind


def ieee_unit_roundoff(dtype: torch.dtype) -> float:
    """u = ε/2 of `dtype` under IEEE round to nearest: 2⁻²⁴ for float32, 2⁻⁵³ for float64."""
    return torch.finfo(dtype).eps / 2


U64 = ieee_unit_roundoff(torch.float64)  # float64, in which folds are computed
U32 = ieee_unit_roundoff(torch.float32)  # float32 whatever torch's matmul settings
ETA64 = 2.0**-1074  # the smallest float64 subnormal: the most a float64 product or quotient loses to underflow
TINY64 = torch.finfo(torch.float64).tiny  # added once to a bound: covers underflow in the bound's own evaluation
BN_ROUNDINGS = 8  # roundings on any term of an eval BatchNorm
BOUND_C = BN_ROUNDINGS + 1  # c of γ(n + c): the BN's roundings plus one for the Linear's bias
FOLD_ROUNDINGS = 6  # float64 roundings on any term of a folded weight or bias (plus n for t·W)
SAFETY = 1 + 2.0**-30  # the bound is itself evaluated in float64: this covers its own rounding


def rounding_bound(k: float, u: float) -> float:
    """γ(k) = k·u / (1 − k·u): |Π(1 + δ_i)^(±1) − 1| ≤ γ(k) for k roundings |δ_i| ≤ u (Higham, Lemma 3.1)."""
    return k * u / (1 - k * u) if k * u < 1 else math.inf


TF32, BF16, FULL = "tf32", "bf16", "ieee"  # the formats a float32 product may run in; FULL: float32's own
REDUCED = {TF32: 2.0**-10, BF16: 2.0**-7}  # 2u of TF32 and of bfloat16
LEGACY_MATMUL = {"high": TF32, "medium": BF16}  # torch.set_float32_matmul_precision's names


def _setting(read: Callable[[], str]) -> str:
    """A float32 precision setting read by `read`, or FULL where torch refuses to read it: a process that sets
    both torch's legacy flags (allow_tf32, set_float32_matmul_precision) and the per-backend fp32_precision gets
    a RuntimeError from the legacy getters, and the per-backend settings then say what runs."""
    try:
        return read()
    except RuntimeError:
        return FULL


def _fp32_precision(backend: str, op: str) -> str:
    """torch.backends.<backend>.<op>.fp32_precision where this torch has it (FULL otherwise)."""
    return getattr(getattr(getattr(torch.backends, backend, None), op, None), "fp32_precision", FULL)


def _allows_tf32(flag: Callable[[], bool]) -> str:
    """TF32 where a legacy allow_tf32 flag is set (and torch lets it be read), else FULL."""
    return _setting(lambda: TF32 if flag() else FULL)


def unit_roundoff(dtype: torch.dtype, device: Device = None, conv: bool = False) -> float:
    """u of `dtype`; float32 matmuls (or convolutions, with `conv`) that any of torch's settings allows to run in
    TF32 or bfloat16 get 2u of the narrowest such format.

    Twice the narrower format's u makes each counted rounding cover two, which pays for the rounding of both
    operands of every product (TF32: u = 2^-11, bfloat16: u = 2^-8). The settings read: on the CPU, oneDNN's
    fp32_precision for the op and (matmuls) torch.get_float32_matmul_precision(); on CUDA, cuDNN's (convolutions,
    which run in TF32 while torch.backends.cudnn.allow_tf32 is True, the default) or cuBLAS's (matmuls:
    allow_tf32 and the float32 matmul precision).
    """
    u = ieee_unit_roundoff(dtype)
    if dtype != torch.float32:
        return u
    cuda = device is not None and torch.device(device).type == "cuda"
    if conv:
        settings = [_fp32_precision("cudnn" if cuda else "mkldnn", "conv")]
        if cuda:
            settings.append(_allows_tf32(lambda: torch.backends.cudnn.allow_tf32))
    else:
        settings = [_fp32_precision("cuda" if cuda else "mkldnn", "matmul"),
                    _setting(lambda: LEGACY_MATMUL.get(torch.get_float32_matmul_precision(), FULL))]
        if cuda:
            settings.append(_allows_tf32(lambda: torch.backends.cuda.matmul.allow_tf32))
    return max([u] + [REDUCED[s] for s in settings if s in REDUCED])


def underflow(dtype: torch.dtype) -> float:
    """η: the smallest subnormal of dtype, a bound on the absolute error of a product or quotient that underflows.

    With gradual underflow fl(a·b) = a·b(1 + δ) + η', |δ| ≤ u, |η'| ≤ η; sums of floats that underflow are
    exact. (Flush-to-zero, torch.set_flush_denormal(True), breaks this model: error_bound assumes it is off.)
    """
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps


def convolves(layer: nn.Module) -> bool:
    """Whether torch's float32 convolution setting governs the layer's products (else its matmul setting)."""
    return isinstance(KINDS.get(type(layer)), ConvKind)
