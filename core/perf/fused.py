"""FusedMLP: a folded Linear/activation net as ONE Triton kernel, and the bound that certifies its outputs.

`FusedMLP(folded, precision)` packs the weights once and then runs the whole eval forward pass in a
single launch (`core/perf/fused_kernel.py`): embedding gather, every Linear with its bias, every
activation, the activations staying on chip; one store of the logits. `precision` picks the dots:

    "fp32"  tl.dot(input_precision="ieee"): FMA, each fma.rn.f32 one IEEE rounding
    "tf32"  tl.dot(input_precision="tf32"): tensor cores read the fp32 operands as TF32
    "bf16"  operands cast to bfloat16 (weights once when packing, activations in the kernel)

Every dot accumulates in fp32 onto an accumulator that starts at the bias; activations run in fp32.

The certificate. u = 2⁻²⁴, γ(k, U) = kU/(1 − kU), unfolded a net whose BatchNorms all fold:

    |unfolded(X) − FusedMLP(fold(unfolded), p)(X)| ≤ error_bound(unfolded, X) + E_p(X)        (1)

`core.engine.bound.error_bound` bounds |unfolded(X) − folded(X)| for `folded` evaluated eagerly in float32
on the CPU: the evaluation its chain of single folds uses (the same layers on the same inputs give
the same bits). E_p = `evaluation_bound(folded, X, p)` bounds |folded(X) − FusedMLP(folded, p)(X)|,
two evaluations of one net, by carrying a bound D on the difference of the two sides' activations
through the layers, from D = 0 at the input (both read the same embedding rows or inputs, exactly):

    Linear, fan-in n:  D' = (1 + ρ_p(n))·D|W| + (γ(n + 1, u) + ρ_p(n))·(|x̂||W| + |b|)            (2)
    activation:        core.engine.bound's rule for one layer shared by two evaluations (`propagate`)

x̂ is the eager side's input to the layer. Proof of (2): the eager side computes
ŷ_j = Σ_i x̂_i W_ij (1 + φ_ij) + b_j (1 + φ_j) with |φ| ≤ γ(n + 1, u) (error_bound's model: n + 1
roundings per term in any summation order), the fused side y_j = Σ_i x_i W_ij (1 + θ_ij) + b_j (1 + θ_j)
with |θ| ≤ ρ_p(n) and x = x̂ + e, |e| ≤ D; so y − ŷ = Σ e_i W_ij (1 + θ_ij) + Σ x̂_i W_ij (θ_ij − φ_ij)
+ b_j (θ_j − φ_j), and |·| ≤ (2). With ρ = γ(n + 1, u), (2) is core.engine.bound's own rule for a Linear.

ρ_p(n), the fused side's per-term factor (`linear_factor`):

  fp32: ρ = γ(n + 1, u), exactly error_bound's model. Each fma.rn.f32 rounds once; a term x_i W_ij
    enters the accumulator in one fma and passes at most n of them, the bias at most n, in whatever
    order Triton (or the interpreter's BLAS) sums: n + 1 roundings per term (Higham, Lemma 3.1).
    Padded k add fma(0, 0, acc) = acc exactly. The table first layer of a CharMLP (below) computes
    T_p = C·W1[p] in float64 and rounds it once to fp32: a term gets (1 + θ₆₄)(1 + δ) with
    |θ₆₄| ≤ γ₆₄(E) ≤ u (E = 1: the float64 product is exact, θ₆₄ = 0), then the CTX additions of
    b + T_0[x_0] + ... + T_{CTX−1}[x_{CTX−1}]: at most CTX + 2 ≤ n + 1 roundings for E ≥ 2, CTX + 1 = n + 1
    for E = 1 (n = CTX·E). Not tf32x3: its products alone are off by up to about 3·2⁻²² = 12u (the dropped
    lo·lo product and the rounding of each lo part), past the γ(2, u) ≈ 2u that the model grants a
    Linear of fan-in 1, and its three passes go through tensor-core accumulation (below), so it would
    need a ρ of its own; FMA keeps "fp32" inside error_bound's model.

  tf32, bf16: ρ = (1 + U)²·exp(3(K + 1)·2⁻²³) − 1, U = 2u_f, u_f = 2⁻¹¹ (TF32) or 2⁻⁸ (bf16): the
    format's unit roundoff, doubled as `core.engine.bound.unit_roundoff` does; K = padded(n). A term meets two
    operand conversions, each with relative error below U (round to nearest: ≤ u_f; dropping the low
    bits, what tensor cores may do with fp32 registers: < 2u_f): factor (1 + U)². The product of two
    converted operands is exact in fp32 (11 + 11 and 8 + 8 significant bits ≤ 24). The fp32
    accumulation: a tensor-core step adds g products to the accumulator; even with the aligned,
    truncating adders measured by Fasi, Higham, Mikaitis and Pranesh (2021), each of the g + 1
    inputs, aligned to the largest, loses less than one ulp of it, and the result loses less than one
    ulp of itself: the step is off by less than (g + 2)·2⁻²³·Σ|inputs|, which is a relative
    perturbation below (g + 2)·2⁻²³ of each input (the accumulator's perturbation falls on every term
    in it). A term, and the bias the accumulator starts at, passes ⌈K/g⌉ steps: Σ(g + 2)·2⁻²³ ≤
    (K/g + 1)(g + 2)·2⁻²³ ≤ 3(K + 1)·2⁻²³ for any grouping 1 ≤ g ≤ K, and Π(1 ± η_s) lies within
    exp(Σ η_s) − 1 of 1. The accumulation is charged at fp32's ulp, not at U: charging all n + 1
    roundings at U, as `unit_roundoff` does for cuBLAS, gives γ(101, 2⁻⁷) ≈ 3.7 for bf16 at n = 100, a
    bound larger than the logits. The table layer (fp32 sums, no conversions) is within
    γ(n + 1, u) ≤ ρ; so is the interpreter's emulation (converted operands, an IEEE fp32 dot).

  Activations: tanh is libdevice's __nv_tanhf (≤ 2 ulp, CUDA Math API); sigmoid is
  div_rn(1, 1 + __nv_expf(−x)): expf within 2 ulp (≤ 4u relative) moves 1 + e by ≤ 4u relatively,
  then one rounded addition and one rounded division: within γ(6, u) < 8u. Both lie within the 4 ulp
  (8u) error_bound assumes, in every precision. libdevice is linked without flush-to-zero
  (enable_reflect_ftz=False); like error_bound, the argument assumes no underflow.

The interpreter (TRITON_INTERPRET=1, CPU) runs the same kernel source with numpy: fp32 dots are
IEEE (≤ n + 1 roundings per term), but it ignores input_precision (a "tf32" dot is fp32) and its
fp32 → bf16 cast truncates. So under the interpreter the kernel converts both operands explicitly
(EMULATE: TF32 by dropping 13 mantissa bits, bf16 by the interpreter's truncating cast) and takes an
fp32 dot: the conversions at the model's limit, fp32 accumulation. It does NOT check the tensor-core
accumulation, the GPU branches of the dot, libdevice (the interpreter uses float64 tanh and sigmoid
rounded once, within 1 ulp) or code generation; tests compile the GPU kernel for sm_90a without a
device, and `python -m core.perf.gpu_check` measures and certifies on a GPU.

Character ids are checked on the host before each launch, as the eager CharMLP's embedding checks
them: an id outside [0, vocab) raises UnsupportedInput naming it and its row. On CUDA that check is one
min/max over the ids read back to the host, a sync before the launch; it is skipped while a CUDA graph
is captured, so replays of a captured FusedMLP are unchecked, and there an id out of range gives a NaN
row (the kernel never reads outside the table). Launches are otherwise CUDA-graph friendly: the output is
allocated the same way every call or passed as `out=`; `core.perf.chain.capture(fn, example)` records one
launch and replays it. docs/fused.md has the launch configurations and their reasoning.

Triton releases. The kernels are compiled for sm_90a and checked on Triton 3.6 and 3.8 (SUPPORTED_TRITON); another
release is refused (FusedUnavailable naming those two). On either, every precision, both input modes and the
float input compile at the block sizes and warp counts of COMPILED_BLOCK_M and COMPILED_WARPS; other overrides are
refused before anything is compiled. A failure of Triton to compile or launch the kernel at a call becomes a
FusedUnavailable naming the Triton release, the configuration, the configurations to try instead and the fallback.
"""

import copy
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.bound.propagation import error_bound
from core.engine.bound.rounding import SAFETY, U32, rounding_bound, underflow, unit_roundoff
from core.engine.bound.rules import propagate
from core.engine.fold import fold
from core.engine.kinds import hooked
from core.errors import BnfoldError, UnsupportedInput, UnsupportedModel
from core.makemore.layers import Linear, ReLU, Sigmoid, Tanh
from core.makemore.model import CharMLP
from core.perf.chain import Forward, FrozenChain, capture, linear_terms

try:
    import triton
except ImportError:  # the CPU-only torch builds ship without Triton
    triton = None

PRECISIONS = ("fp32", "tf32", "bf16")
FORMAT_U = {"tf32": 2.0**-11, "bf16": 2.0**-8}  # unit roundoff of the tensor-core operand formats
OPERAND_ROUNDINGS = 2  # conversions of the two operands of each product (tf32, bf16)
ULP32 = 2.0**-23  # an fp32 ulp relative to the leading bit: what one aligned, truncating add can lose
ACCUMULATION_ULPS = 3  # ⌈K/g⌉ steps of (g + 2) ulp, g products per step: at most 3(K + 1) ulp per term
ACTIVATION_CODES: dict[type[nn.Module], int] = {  # activation type -> its code in fused_kernel
    Tanh: 1, nn.Tanh: 1, ReLU: 2, nn.ReLU: 2, Sigmoid: 3, nn.Sigmoid: 3}
MAX_LINEARS = 4
MAX_WIDTH = 128  # padded widths above this do not fit one program's registers and shared memory
MIN_DOT = 16  # tl.dot needs every block dimension ≥ 16
FALLBACK = ("use core.perf.chain.FrozenChain(folded) (the minimal eager chain) or call the folded module itself")
# Triton releases (major.minor) whose kernels are compiled for sm_90a and checked (docs/fused.md, "Triton releases"):
# 3.6 (torch 2.11's; it installs beside torch 2.13 too) and 3.8 (torch 2.14's).
SUPPORTED_TRITON = ("3.6", "3.8")
# Every precision, both input modes and the float input compile on each supported Triton at these block sizes and
# warp counts (docs/fused.md); larger blocks overflow shared memory on some (256 rows of tf32: 240 KiB on Triton 3.6).
COMPILED_BLOCK_M = (16, 32, 64, 128)
COMPILED_WARPS = (4, 8)


@dataclass(frozen=True)
class LaunchConfig:
    """How one precision launches: the first layer's input mode, rows per block, warps, programs per SM."""

    input_mode: str  # "table" (CharMLP: b1 + Σ_p T_p[x_p]) or "gather" (C[x] into a dot); floats: always "float"
    block_m: int
    num_warps: int
    programs_per_sm: int = 1
    num_stages: int = 1  # no software pipelining: its buffers would overflow shared memory (docs/fused.md)


# Chosen from ptxas on sm_90a for E02 (docs/fused.md): the largest spill-free tiles.
LARGE = {"fp32": LaunchConfig("table", 32, 8), "tf32": LaunchConfig("gather", 128, 8),
         "bf16": LaunchConfig("gather", 128, 8)}
SMALL = {"fp32": LaunchConfig("table", 16, 4), "tf32": LaunchConfig("gather", 16, 4),
         "bf16": LaunchConfig("gather", 16, 4)}
SMALL_ROWS = 64  # batches up to this many rows take the SMALL configuration (latency over throughput)
INTERPRETER_PROGRAMS = 2  # under the interpreter: few programs, so the persistent loop runs more than once


class FusedUnavailable(BnfoldError, RuntimeError):
    """FusedMLP cannot run here: no Triton, a Triton release it is not checked on, neither CUDA nor the Triton
    interpreter, or Triton failed to compile or launch the kernel (the message names the fallback)."""


def interpreting() -> bool:
    """TRITON_INTERPRET is set (as Triton reads it): kernels run on the CPU through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_release() -> str:
    """The installed Triton's major.minor release ("3.8" for 3.8.0 or 3.8.0+git1234)."""
    return ".".join(str(getattr(triton, "__version__", "unknown")).split("+")[0].split(".")[:2])


def triton_support() -> str | None:
    """None when Triton is installed in a release FusedMLP is checked on; otherwise why not and what to use instead."""
    if triton is None:
        return f"FusedMLP needs Triton, which this torch build lacks (CPU-only builds ship without it): {FALLBACK}"
    if triton_release() not in SUPPORTED_TRITON:
        return (f"FusedMLP's kernels are compiled and checked on Triton {' and '.join(SUPPORTED_TRITON)} only; this is "
                f"Triton {triton.__version__}: install Triton 3.8 (it comes with torch 2.14) or 3.6 (with "
                f"torch 2.11), or {FALLBACK}")
    return None


def _numpy_release_text() -> str:
    try:
        import numpy
    except ImportError:
        return "none"
    return str(numpy.__version__)


def _numpy_release() -> tuple[int, ...]:
    """NumPy's (major, minor), or () without NumPy."""
    parts = _numpy_release_text().split(".")[:2]
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def availability() -> str | None:
    """None when FusedMLP can run here; otherwise why not and what to use instead."""
    reason = triton_support()
    if reason is not None:
        return reason
    if interpreting() and triton_release() == "3.6" and _numpy_release() >= (2, 4):
        return (f"Triton 3.6's interpreter fails on NumPy 2.4 and later (it converts one-element arrays to Python "
                f"ints), and this is NumPy {_numpy_release_text()}: install numpy<2.4 or Triton 3.8 for the "
                f"interpreter, or {FALLBACK}")
    if not interpreting() and not torch.cuda.is_available():
        return (f"FusedMLP needs a CUDA device (or TRITON_INTERPRET=1 for Triton's slow CPU interpreter, "
                f"for tests): {FALLBACK}")
    return None


def padded(width: int) -> int:
    """The power of two ≥ max(width, 16) that a tl.dot block dimension needs."""
    return max(MIN_DOT, 1 << (width - 1).bit_length())


# The folded net as Linear/activation pairs.

@dataclass(frozen=True)
class LinearActivation:
    """One Linear (W as (fan_in, fan_out), float32; b, zeros without a bias) and the activation after it."""

    W: torch.Tensor
    b: torch.Tensor
    activation: int  # 0 none, else fused_kernel's code
    linear: nn.Module  # the layer itself, for the eager side of evaluation_bound
    after: nn.Module | None


def _linear_activations(layers: Iterable[nn.Module]) -> list[LinearActivation]:
    """The Linear/activation pairs of a folded net, or UnsupportedModel naming the first layer that is neither."""
    pairs: list[LinearActivation] = []
    for i, layer in enumerate(layers):
        if hooked(layer):
            raise UnsupportedModel(f"layer {i} ({type(layer).__name__}) has a hook registered, which the kernel would "
                                   f"not run: remove it, or {FALLBACK}")
        code = ACTIVATION_CODES.get(type(layer))
        if isinstance(layer, (Linear, nn.Linear)) and type(layer) in (Linear, nn.Linear):
            pairs.append(LinearActivation(*linear_terms(layer), activation=0, linear=layer, after=None))
        elif code is not None and pairs and pairs[-1].after is None:
            pairs[-1] = replace(pairs[-1], activation=code, after=layer)
        else:
            what = "a second activation" if code is not None and pairs else type(layer).__name__
            if code is None and isinstance(layer, (Linear, nn.Linear)):
                what += f", a subclass of {type(layer).__mro__[1].__name__} whose forward may differ"
            raise UnsupportedModel(f"FusedMLP takes Linear layers, each followed by at most one Tanh/ReLU/Sigmoid; "
                                   f"layer {i} is {what}: fold the BatchNorms first (core.engine.fold.fold), "
                                   f"or {FALLBACK}")
    if not pairs:
        raise UnsupportedModel(f"FusedMLP needs at least one Linear layer, this net has none: {FALLBACK}")
    return pairs


def _net(folded: nn.Module) -> tuple[torch.Tensor | None, int | None, list[LinearActivation]]:
    """(C or None, context length or None, Linear/activation pairs) of a folded CharMLP or nn.Sequential."""
    if hooked(folded) or type(folded) in (CharMLP, nn.Sequential) and hooked(getattr(folded, "layers", folded)):
        raise UnsupportedModel(f"the {type(folded).__name__} has a hook registered, which the kernel would not run: "
                               f"remove it, or {FALLBACK}")
    if type(folded) is CharMLP:
        return folded.C.detach(), folded.context_length, _linear_activations(folded.layers)
    if type(folded) is nn.Sequential:
        return None, None, _linear_activations(folded)
    raise UnsupportedModel(f"FusedMLP takes a folded CharMLP or torch.nn.Sequential (exactly those types), not a "
                           f"{type(folded).__name__}: "
                           f"{FALLBACK}")


# The bound.

def linear_factor(n: int, precision: str) -> float:
    """ρ_p(n): each term of a fused Linear with fan-in n is off by a factor within ρ of 1 (module docstring).

    fp32: γ(n + 1, u), u = 2⁻²⁴. tf32, bf16: (1 + U)²·exp(3(K + 1)·2⁻²³) − 1, U = 2u_f, K = padded(n):
    two operand conversions, then tensor-core fp32 accumulation.
    """
    if precision == "fp32":
        return rounding_bound(n + 1, U32)
    U = 2 * FORMAT_U[precision]
    accumulation = math.exp(ACCUMULATION_ULPS * (padded(n) + 1) * ULP32)
    return (1 + U) ** OPERAND_ROUNDINGS * accumulation - 1


def linear_step(D: torch.Tensor, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, rho_ref: float, rho: float,
                eta: float) -> torch.Tensor:
    """(2): D' = (1 + ρ)·D|W| + (ρ_ref + ρ)·(|x̂||W| + |b|) + 4nη, all float64; x̂ = x the eager side's input.

    4nη pays for underflow as core.engine.bound's affine rule does: a product that underflows loses up to η = the
    smallest float32 subnormal (bfloat16 and TF32 share float32's exponent range)."""
    both = rho_ref + rho
    return ((1 + rho) * D + both * x.abs()) @ W.abs() + 4 * W.shape[0] * eta + both * b.abs()


def _check_launch_overrides(overrides: dict[str, Any]) -> None:
    """UnsupportedModel for a block_m or num_warps outside what every supported Triton compiles (COMPILED_BLOCK_M,
    COMPILED_WARPS): refused before anything is compiled or launched."""
    for name, value, compiled in (("block_m", overrides["block_m"], COMPILED_BLOCK_M),
                                  ("num_warps", overrides["num_warps"], COMPILED_WARPS)):
        if value is not None and value not in compiled:
            version = "no Triton" if triton is None else f"Triton {triton.__version__}"
            raise UnsupportedModel(f"FusedMLP's kernels compile on Triton {' and '.join(SUPPORTED_TRITON)} with "
                                   f"{name} in {compiled}; got {name}={value!r} (here: {version}): take one of "
                                   f"those, or leave {name} None for the default configuration")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UnsupportedModel(f"FusedMLP has no precision {precision!r}: precision must be one of {PRECISIONS}")


M = TypeVar("M", bound=nn.Module)


def _cpu(model: M) -> M:
    on_cpu = all(t.device.type == "cpu" for t in model.state_dict().values())
    return model if on_cpu else copy.deepcopy(model).cpu()


@torch.no_grad()
def evaluation_bound(folded: nn.Module, X: torch.Tensor, precision: str) -> torch.Tensor:
    """E_p: |folded(X) − FusedMLP(folded, precision)(X)| ≤ E_p elementwise, folded eager in float32 on the CPU.

    Float64, CPU, the shape of the logits. Carries (2) and core.engine.bound's activation rule from D = 0.
    """
    _check_precision(precision)
    folded = _cpu(folded)
    X = X.cpu()
    C, _, pairs = _net(folded)
    x = F.embedding(X, C).view(X.shape[0], -1) if C is not None else X
    D = torch.zeros(x.shape, dtype=torch.float64)
    u_ref = unit_roundoff(x.dtype, x.device)
    for k, pair in enumerate(pairs):
        n = pair.W.shape[0]
        rho_ref, rho = rounding_bound(n + 1, u_ref), linear_factor(n, precision)
        D = linear_step(D, x.double(), pair.W.double(), pair.b.double(), rho_ref, rho, underflow(x.dtype))
        x = pair.linear(x)
        if pair.after is not None:
            D = propagate(pair.after, x, D, f"the activation after Linear {k}")
            x = pair.after(x)
    return D * SAFETY


@torch.no_grad()
def fused_error_bound(model: nn.Module, X: torch.Tensor, precision: str) -> torch.Tensor:
    """(1): |model(X) − FusedMLP(fold(model)[0], precision)(X)| ≤ error_bound(model, X) + E_p, float64 on the CPU.

    `model` is the unfolded net (eval mode) whose BatchNorms all fold; both terms are taken on the CPU.
    """
    model, X = _cpu(model), X.cpu()
    return error_bound(model, X) + evaluation_bound(fold(model)[0], X, precision)


# The kernel's host side.

class FusedMLP:
    """X -> logits for a folded net in one Triton launch; a CharMLP takes int ids (B, context_length) in
    [0, vocab) (UnsupportedInput for another id; on CUDA the check is a host sync: module docstring),
    an nn.Sequential float32 rows (B, fan_in). Certified by `fused_error_bound` (module docstring).

    Weights are packed once: frozen like core.perf.chain.FrozenChain, so later changes to the model
    are not seen. `programs`, `block_m`, `num_warps`, `input_mode` override the launch configuration
    (LARGE, or SMALL for batches ≤ SMALL_ROWS); `input_mode` "table" or "gather" (CharMLP only), `block_m`
    one of COMPILED_BLOCK_M, `num_warps` one of COMPILED_WARPS (UnsupportedModel otherwise, before any launch).
    FusedUnavailable on a Triton release outside SUPPORTED_TRITON, and when Triton fails to compile or launch
    the kernel at a call (the message names the configuration, the ones to try instead and the fallback).
    """

    kernels: dict[str, Any] | None  # fused_kernel.kernels; None for a description that is never launched

    def __init__(self, folded: nn.Module, precision: str = "fp32", *, device: torch.device | str | None = None,
                 programs: int | None = None, block_m: int | None = None, num_warps: int | None = None,
                 input_mode: str | None = None) -> None:
        reason = availability()
        if reason is not None:
            raise FusedUnavailable(reason)
        interpreted = interpreting()
        self._build(folded, precision, interpreted, device,
                    {"programs": programs, "block_m": block_m, "num_warps": num_warps, "input_mode": input_mode})
        if not interpreted and self.device.type != "cuda":
            raise FusedUnavailable(f"FusedMLP runs on CUDA, but the model is on {self.device}: move it to cuda "
                                   f"(or set TRITON_INTERPRET=1 for the CPU interpreter), or {FALLBACK}")
        self.sms = 1 if interpreted else torch.cuda.get_device_properties(self.device).multi_processor_count
        from core.perf.fused_kernel import kernels

        self.kernels = kernels(interpreted)

    @classmethod
    def described(cls, folded: nn.Module, precision: str = "fp32", sms: int = 132, **overrides: Any) -> "FusedMLP":
        """The packed launch description on the CPU, for `compile_for_gpu`: it checks nothing about this machine
        and cannot be called (sms: the GPU's multiprocessor count, 132 on an H100 or H200 SXM)."""
        fused = cls.__new__(cls)
        keys = ("programs", "block_m", "num_warps", "input_mode")
        fused._build(folded, precision, False, "cpu", {k: overrides.get(k) for k in keys})
        fused.sms, fused.kernels = sms, None
        return fused

    def _build(self, folded: nn.Module, precision: str, interpreted: bool, device: torch.device | str | None,
               overrides: dict[str, Any]) -> None:
        _check_precision(precision)
        self.precision, self.interpreted, self.overrides = precision, interpreted, overrides
        C, context, pairs = _net(folded)
        self.device = torch.device("cpu") if interpreted else torch.device(device or pairs[0].W.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if len(pairs) > MAX_LINEARS:
            raise UnsupportedModel(f"FusedMLP takes at most {MAX_LINEARS} Linear layers, this net has {len(pairs)}: "
                                   f"{FALLBACK}")
        dtypes = {p.W.dtype for p in pairs} | ({C.dtype} if C is not None else set())
        if dtypes != {torch.float32}:
            raise UnsupportedModel(f"FusedMLP runs float32 nets, this one holds {sorted(map(str, dtypes))}: "
                                   f"convert it with .float(), or {FALLBACK}")
        widths = [pairs[0].W.shape[0]] + [p.W.shape[1] for p in pairs]
        if max(padded(w) for w in widths) > MAX_WIDTH:
            raise UnsupportedModel(f"FusedMLP takes widths up to {MAX_WIDTH}, this net has {max(widths)}: {FALLBACK}")
        mode = overrides["input_mode"]
        if mode is not None and (C is None or mode not in ("table", "gather")):
            raise UnsupportedModel(f"input_mode is 'table' or 'gather', for a CharMLP only; got {mode!r} for a "
                                   f"{type(folded).__name__}: leave input_mode None to take the default")
        _check_launch_overrides(overrides)
        self.embedded = C is not None
        self.in_features = widths[0] if context is None else context
        self.out_features = widths[-1]
        self.vocab = 1 if C is None else C.shape[0]
        self.dims = [padded(w) for w in widths] + [MIN_DOT] * (MAX_LINEARS + 1 - len(widths))
        self.activations = [p.activation for p in pairs] + [0] * (MAX_LINEARS - len(pairs))
        self.layers = len(pairs)
        self._pack(C, context, pairs)

    def _pack(self, C: torch.Tensor | None, context: int | None, pairs: list[LinearActivation]) -> None:
        dev, f32 = self.device, torch.float32
        wdtype = torch.bfloat16 if self.precision == "bf16" else f32
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        for k, p in enumerate(pairs):
            W = torch.zeros(self.dims[k], self.dims[k + 1], dtype=f32)
            W[:p.W.shape[0], :p.W.shape[1]] = p.W.cpu()
            b = torch.zeros(self.dims[k + 1], dtype=f32)
            b[:p.b.shape[0]] = p.b.cpu()
            self.weights.append(W.to(dev, wdtype).contiguous())
            self.biases.append(b.to(dev))
        dummy = torch.zeros(1, dtype=f32, device=dev)
        self.weights += [dummy.to(wdtype)] * (MAX_LINEARS - len(pairs))
        self.biases += [dummy] * (MAX_LINEARS - len(pairs))
        self.embedding = self.tables = dummy
        if C is not None and context is not None:
            self.embedding = C.to(dev, f32).contiguous()
            E = C.shape[1]
            W1 = pairs[0].W.cpu().double().view(context, E, -1)  # rows p·E + e of W1 belong to position p
            T = torch.einsum("ve,pen->pvn", C.cpu().double(), W1).to(f32)  # float64, rounded once
            self.tables = torch.zeros(context, C.shape[0], self.dims[1], dtype=f32)
            self.tables[:, :, :T.shape[2]] = T
            self.tables = self.tables.to(dev).contiguous()

    def config(self, rows: int) -> LaunchConfig:
        """The launch configuration for a batch of `rows`, overrides applied (a host-side choice: no sync)."""
        base = (SMALL if rows <= SMALL_ROWS else LARGE)[self.precision]
        o = self.overrides
        mode = "float" if not self.embedded else (o["input_mode"] or base.input_mode)
        return LaunchConfig(mode, o["block_m"] or base.block_m, o["num_warps"] or base.num_warps,
                            base.programs_per_sm, base.num_stages)

    def programs(self, rows: int, config: LaunchConfig) -> int:
        """How many programs the persistent kernel launches for `rows` rows."""
        blocks = -(-rows // config.block_m)
        if self.overrides["programs"] is not None:
            return min(blocks, self.overrides["programs"])
        limit = INTERPRETER_PROGRAMS if self.interpreted else self.sms * config.programs_per_sm
        return min(blocks, limit)

    def _check_input(self, X: torch.Tensor, out: torch.Tensor | None) -> None:
        if X.device != self.device:
            raise UnsupportedInput(f"X is on {X.device}, this FusedMLP on {self.device}: move X to {self.device}")
        if X.dim() != 2 or X.shape[1] != self.in_features:
            raise UnsupportedInput(f"X must have shape (B, {self.in_features}), got {tuple(X.shape)}")
        if self.embedded and X.dtype not in (torch.int64, torch.int32):
            raise UnsupportedInput(f"X must hold int64 (or int32) character ids, got {X.dtype}")
        if not self.embedded and X.dtype != torch.float32:
            raise UnsupportedInput(f"X must be float32, got {X.dtype}: convert it with .float()")
        if out is not None and (out.shape != (X.shape[0], self.out_features) or out.dtype != torch.float32
                                or out.device != self.device or (out.shape[0] > 0 and out.stride(1) != 1)):
            raise UnsupportedInput(f"out must be a float32 tensor of shape ({X.shape[0]}, {self.out_features}) on "
                                   f"{self.device} with unit stride along its rows, or None")
        if self.embedded:
            self._check_ids(X)  # last: on CUDA the one check that waits for the GPU

    def _check_ids(self, X: torch.Tensor) -> None:
        """UnsupportedInput naming the first id of X (row by row) outside [0, vocab), as the eager CharMLP refuses
        one (an IndexError of its embedding). One min/max over X; on CUDA reading it back waits for the GPU (a host
        sync). Skipped while a CUDA graph is being captured, where no sync is allowed: a captured FusedMLP's
        replays are not checked, and an id out of range there gives a NaN row (the kernel never reads outside C)."""
        if X.numel() == 0 or (X.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return
        low, high = (int(v) for v in X.aminmax())
        if low < 0 or high >= self.vocab:
            row, column = (int(i) for i in ((X < 0) | (X >= self.vocab)).nonzero()[0])
            raise UnsupportedInput(f"X holds the character id {int(X[row, column])} at row {row}, column {column}, "
                                   f"outside [0, {self.vocab}): the embedding has {self.vocab} rows, so ids run from "
                                   f"0 to {self.vocab - 1}")

    def launch(self, X: torch.Tensor, out: torch.Tensor) -> tuple[tuple[int], dict[str, Any], dict[str, Any],
                                                                  dict[str, Any]]:
        """(grid, tensor and scalar arguments, constexprs, compile options) of the launch for X into out.

        The constexprs leave out the helper functions (`fused_kernel.kernels` supplies them).
        """
        rows = X.shape[0]
        cfg = self.config(rows)
        w, b, d, a = self.weights, self.biases, self.dims, self.activations
        args = {"x_ptr": X, "out_ptr": out, "n_rows": rows, "stride_x": X.stride(0), "stride_xk": X.stride(1),
                "stride_out": out.stride(0), "t_ptr": self.tables if cfg.input_mode == "table" else self.embedding}
        for k in range(MAX_LINEARS):
            args[f"w{k + 1}_ptr"], args[f"b{k + 1}_ptr"] = w[k], b[k]
        gathered = self.in_features * self.embedding.shape[1] if cfg.input_mode == "gather" else self.in_features
        constexprs = {"INPUT": cfg.input_mode, "IN": gathered, "CTX": self.in_features, "VOCAB": self.vocab,
                      **{f"D{k}": d[k] for k in range(MAX_LINEARS + 1)}, "OUT": self.out_features,
                      "LAYERS": self.layers, **{f"A{k + 1}": a[k] for k in range(MAX_LINEARS)},
                      "OPERAND": self.precision, "EMULATE": self.interpreted, "BLOCK_M": cfg.block_m}
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "enable_reflect_ftz": False}
        return (self.programs(rows, cfg),), args, constexprs, options

    def __call__(self, X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The logits (B, fan_out), float32, written into `out` when given. One launch; for character ids on CUDA,
        one host sync before it (the id check), none while a CUDA graph is captured."""
        self._check_input(X, out)
        if out is None:
            out = torch.empty(X.shape[0], self.out_features, dtype=torch.float32, device=self.device)
        if X.shape[0] == 0:
            return out
        if self.kernels is None:
            raise UnsupportedModel("this FusedMLP is a launch description (FusedMLP.described) and cannot run: "
                                   "build one with FusedMLP(folded, precision)")
        grid, args, constexprs, options = self.launch(X, out)
        helpers = {name: fn for name, fn in self.kernels.items() if name != "kernel"}
        try:
            self.kernels["kernel"][grid](**args, **constexprs, **helpers, **({} if self.interpreted else options))
        except Exception as error:  # Triton compiles at the first launch; its failures come as many types
            raise FusedUnavailable(compile_failure(self.precision, self.config(X.shape[0]), self.embedded,
                                                   error)) from error
        return out

    def capture(self, example: torch.Tensor, warmup: int = 3) -> Forward:
        """This FusedMLP at example's shape as one CUDA-graph launch: see `core.perf.chain.capture`."""
        return capture(self, example, warmup)

    def __repr__(self) -> str:
        widths = [self.in_features] + [self.dims[k + 1] for k in range(self.layers)]
        return (f"FusedMLP({self.precision}, {'ids' if self.embedded else 'floats'} -> {self.out_features}, "
                f"padded widths {widths}, {'interpreter' if self.interpreted else self.device})")


def compile_failure(precision: str, config: LaunchConfig, embedded: bool, error: BaseException) -> str:
    """The message of the FusedUnavailable that stands for a failure of Triton to compile or launch a kernel: the
    Triton release, the configuration, Triton's own first line, the configurations to try instead and the fallback.
    """
    version = "no Triton" if triton is None else f"Triton {triton.__version__}"
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    others = []
    if embedded:
        other_mode = "table" if config.input_mode == "gather" else "gather"
        others.append(f"FusedMLP(folded, {precision!r}, input_mode={other_mode!r})")
    others += [f"FusedMLP(folded, {p!r})" for p in PRECISIONS if p != precision]
    return (f"{version} failed to compile or launch FusedMLP's {precision} kernel ({config.input_mode} input, "
            f"{config.block_m} rows, {config.num_warps} warps): {type(error).__name__}: {first or 'no message'}; "
            f"try {' or '.join(others)}, or {FALLBACK}")


def compile_for_gpu(folded: nn.Module, precision: str, rows: int, arch: int = 90, **overrides: Any) -> Any:
    """The kernel FusedMLP(folded, precision) launches for `rows` rows, compiled ahead of time for sm_`arch`.

    Needs Triton's NVIDIA backend but no GPU, and a process in which TRITON_INTERPRET was never set
    (Triton builds its own helpers for the interpreter at import). Returns Triton's compiled kernel
    (`.asm["ptx"]`, `.asm["cubin"]`, `.metadata.shared`): on a machine without a GPU, the check that
    the GPU branches of the kernel compile. FusedUnavailable for a Triton release FusedMLP is not checked on, or
    when Triton fails to compile the kernel (naming the configuration and what to try instead).
    """
    reason = triton_support()
    if reason is not None:
        raise FusedUnavailable(reason)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from core.perf.fused_kernel import kernels

    fused = FusedMLP.described(folded, precision, **overrides)
    X = torch.zeros(rows, fused.in_features, dtype=torch.int64 if fused.embedded else torch.float32)
    _, args, constexprs, options = fused.launch(X, torch.zeros(rows, fused.out_features))
    constexprs = {**constexprs, "EMULATE": False, **{k: v for k, v in kernels(False).items() if k != "kernel"}}
    types = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.int64: "*i64", torch.int32: "*i32"}
    signature = {name: types[v.dtype] if isinstance(v, torch.Tensor) else "i32" for name, v in args.items()}
    signature.update({name: "constexpr" for name in constexprs})
    source = ASTSource(fn=kernels(False)["kernel"], signature=signature, constexprs=constexprs)
    try:
        return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as error:  # Triton's failures come as many types (CompilationError, RuntimeError, ...)
        raise FusedUnavailable(compile_failure(precision, fused.config(rows), fused.embedded, error)) from error


# Bench integration.

def fused_variants(folded: nn.Module) -> dict[str, FusedMLP]:
    """{"fused fp32" | "fused tf32" | "fused bf16": FusedMLP} for a folded net on a CUDA device."""
    return {f"fused {p}": FusedMLP(folded, p) for p in PRECISIONS}


def compiled_variants(folded_module: nn.Module) -> dict[str, Callable[[torch.Tensor], Any]]:
    """{"torch.compile default" | "torch.compile max-autotune": compiled minimal chain of the folded net}.

    Compiles core.perf.chain.FrozenChain's forward (embedding, addmm, in-place activation), which
    holds the folded tensors; compilation happens at the first call.
    """
    chain = FrozenChain(folded_module)

    def forward(X: torch.Tensor) -> torch.Tensor:
        return chain(X)

    return {"torch.compile default": torch.compile(forward),
            "torch.compile max-autotune": torch.compile(forward, mode="max-autotune")}
