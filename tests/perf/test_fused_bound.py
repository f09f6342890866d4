"""Laws of the fused kernel (core.perf.fused): every precision within its certified bound, against the
unfolded net and against the eager folded net.

Without CUDA the kernels run on Triton's CPU interpreter (TRITON_INTERPRET=1, set here before
Triton is imported). There the tf32/bf16 operand conversions are emulated at the model's limit
(truncation) and the dots are IEEE fp32; the tensor-core accumulation, libdevice's tanh and the
GPU code generation are not exercised (core/perf/fused.py says what is and is not checked).
With CUDA the same properties run the real kernels.
"""

import copy
import math
import os
from dataclasses import dataclass

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: the kernels run on the CPU
pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch builds ship without it)")

from hypothesis import example, given, note
from hypothesis import strategies as st
from torch import nn

from core.engine.fold import fold
from core.makemore.layers import ReLU, Sigmoid, Tanh
from core.makemore.model import CharMLP
from core.perf.fused import PRECISIONS, FusedMLP, evaluation_bound, fused_error_bound
from properties.checks import worst_ratio
from properties.strategies.pairs import make_bn, make_linear

F64 = torch.float64
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
CORE_ACT = {"tanh": Tanh, "relu": ReLU, "sigmoid": Sigmoid}
TORCH_ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
VOCAB = 27
pins = st.lists(st.floats(-8, 8, allow_subnormal=False, width=32), max_size=16).map(tuple)


@dataclass(frozen=True)
class NetCase:
    """Linear(widths[k], widths[k+1]) → BatchNorm1d → activation for each k; the last activation may be None.

    kind "charmlp": a CharMLP (vocab 27, context `context`, embedding widths[0] / context) fed ids;
    "core"/"torch": an nn.Sequential of core or torch.nn layers fed float rows. The bulk of the
    values comes from `seed`; `x_pins` (the first inputs or embedding entries) and `w_pins` (the
    first weights of each Linear) are drawn by hypothesis directly, so failures shrink to plain values.
    `weight_exp` scales every weight by 2^weight_exp (saturation and cancellation).
    """

    kind: str = "core"
    widths: tuple = (1, 1)
    activations: tuple = (None,)
    context: int = 1
    batch: int = 1
    weight_exp: int = 0
    seed: int = 0
    x_pins: tuple = ()
    w_pins: tuple = ()
    input_mode: str | None = None

    def build(self):
        """(unfolded model in eval mode, X) in float32 on DEVICE."""
        g = torch.Generator().manual_seed(self.seed)
        layers = []
        for k, (fan_in, fan_out) in enumerate(zip(self.widths, self.widths[1:])):
            W = torch.randn(fan_in, fan_out, generator=g, dtype=F64) * 2.0**self.weight_exp / math.sqrt(fan_in)
            W.view(-1)[:len(self.w_pins)] = torch.tensor(self.w_pins[:W.numel()], dtype=F64)
            b = torch.randn(fan_out, generator=g, dtype=F64) if k % 2 == 0 else None
            layers += [self._linear(W.float(), None if b is None else b.float()), self._bn(g, fan_out)]
            if self.activations[k] is not None:
                layers.append((TORCH_ACT if self.kind == "torch" else CORE_ACT)[self.activations[k]]())
        if self.kind == "charmlp":
            C = torch.randn(VOCAB, self.widths[0] // self.context, generator=g, dtype=F64)
            C.view(-1)[:len(self.x_pins)] = torch.tensor(self.x_pins[:C.numel()], dtype=F64)
            model = CharMLP(C.float(), layers, context_length=self.context)
            X = torch.randint(0, VOCAB, (self.batch, self.context), generator=g)
        else:
            model = nn.Sequential(*layers)
            X = torch.randn(self.batch, self.widths[0], generator=g, dtype=F64) * 3
            X.view(-1)[:len(self.x_pins)] = torch.tensor(self.x_pins[:X.numel()], dtype=F64)
            X = X.float()
        return model.eval().to(DEVICE), X.to(DEVICE)

    def _linear(self, W, b):
        return make_linear("torch" if self.kind == "torch" else "core", W, b)

    def _bn(self, g, dim):
        """Random running statistics: |μ| = 10^U(−2, 1), v = 10^U(−2, 2), γ ~ N(0, 1), β ~ N(0, 1)."""
        sign = torch.randint(0, 2, (dim,), generator=g) * 2 - 1
        mean = sign * 10 ** (torch.rand(dim, generator=g) * 3 - 2)
        var = 10 ** (torch.rand(dim, generator=g) * 4 - 2)
        stats = (mean, var, torch.randn(dim, generator=g), torch.randn(dim, generator=g))
        return make_bn("torch" if self.kind == "torch" else "core", stats, 1e-5, dtype=torch.float32)


@st.composite
def net_cases(draw, max_width=64, max_batch=48):
    """1..3 Linears, widths 1..max_width (a CharMLP's input is context × embedding), BN after each, random batch."""
    kind = draw(st.sampled_from(("charmlp", "core", "torch")))
    depth = draw(st.integers(1, 3))
    context = draw(st.integers(1, 4)) if kind == "charmlp" else 1
    first = context * draw(st.integers(1, max_width // 4)) if kind == "charmlp" else draw(st.integers(1, max_width))
    widths = (first, *draw(st.lists(st.integers(1, max_width), min_size=depth, max_size=depth)))
    hidden = st.sampled_from(("tanh", "relu", "sigmoid"))
    activations = (*draw(st.lists(hidden, min_size=depth - 1, max_size=depth - 1)), draw(st.one_of(st.none(), hidden)))
    mode = draw(st.sampled_from((None, "table", "gather"))) if kind == "charmlp" else None
    return NetCase(kind, widths, activations, context, draw(st.integers(1, max_batch)), draw(st.integers(-2, 2)),
                   draw(st.integers(0, 2**32 - 1)), draw(pins), draw(pins), mode)



E02_LIKE = NetCase("charmlp", (40, 64, 64, 27), ("tanh", "tanh", None), context=4, batch=33)


@given(net_cases())
@example(NetCase())  # batch 1, fan-in 1, one Linear
@example(NetCase("torch", (1, 64, 1), ("sigmoid", "relu"), batch=1, x_pins=(0.0,)))
@example(NetCase("charmlp", (1, 1), ("tanh",), context=1, batch=1, input_mode="gather"))
@example(E02_LIKE)
def test_fused_within_certified_bound(case):
    """|unfolded(X) − FusedMLP(fold(unfolded), p)(X)| ≤ error_bound(unfolded, X) + E_p(X) for p ∈ {fp32, tf32, bf16}.

    The fold costs at most error_bound against the eager folded net, and the fused kernel differs from
    that by at most E_p: (2) of core/perf/fused.py carried through the layers, with each fused term
    within ρ_p(n) of exact (fp32: n + 1 IEEE roundings; tf32/bf16: two operand conversions below
    2u_f and fp32 accumulation) and activations within 4 ulp.
    """
    model, X = case.build()
    folded = fold(model)[0]
    with torch.no_grad():  # on the CPU: the evaluation error_bound certifies
        expected = copy.deepcopy(model).cpu()(X.cpu()).double()
    for precision in PRECISIONS:
        fused = FusedMLP(folded, precision, input_mode=case.input_mode)
        err = (fused(X).double().cpu() - expected).abs()
        bound = fused_error_bound(model, X, precision)
        note(f"{precision}: max err {err.max().item():.3e}, max bound {bound.max().item():.3e}, "
             f"max err/bound {worst_ratio(err, bound):.3e}")
        assert (err <= bound).all(), precision


@given(net_cases())
@example(NetCase())
@example(E02_LIKE)
def test_fused_matches_eager_folded_within_evaluation_bound(case):
    """|folded(X) − FusedMLP(folded, p)(X)| ≤ E_p(X), folded evaluated eagerly in float32 on the CPU.

    Two evaluations of one net: from D = 0 at the (exactly shared) input, each Linear adds
    (1 + ρ_p)·D|W| + (γ(n + 1, u) + ρ_p)·(|x̂||W| + |b|) and each activation its slope times D plus
    4 ulp on each side; for fp32 both sides obey the same n + 1-rounding model.
    """
    model, X = case.build()
    folded = fold(model)[0]
    with torch.no_grad():
        eager = copy.deepcopy(folded).cpu()(X.cpu()).double()
    for precision in PRECISIONS:
        err = (FusedMLP(folded, precision, input_mode=case.input_mode)(X).double().cpu() - eager).abs()
        bound = evaluation_bound(folded, X, precision)
        note(f"{precision}: max err/E {worst_ratio(err, bound):.3e}")
        assert (err <= bound).all(), precision
