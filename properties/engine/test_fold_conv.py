"""Laws of folding a BatchNorm into a convolution: after any Conv or ConvTranspose (1d/2d/3d, groups, stride,
dilation, padding, padding mode), before a conv whose border sees BatchNorm'd values, and before a Linear through
a Flatten; each within the certified bound, and agreeing with torch's conv fuser."""

import math

import pytest
import torch
from hypothesis import example, given, note
from hypothesis import strategies as st
from torch.nn.utils.fusion import fuse_conv_bn_eval

from core.engine.bound.propagation import error_bound
from core.engine.fold import fold
from core.engine.kinds import KINDS, NormTerms
from properties.checks import assert_within_bound
from properties.strategies.pairs import BN_TYPES, CONV_DECADES, ConvPairCase, channelwise, conv_pair_cases
from properties.strategies.values import F64, cycled, norm_stats, tensor_values

F32 = torch.float32



@given(conv_pair_cases())
@example(ConvPairCase(spatial=1, direction="before", padding=(2,), padding_mode="reflect", kernel=(3,), stride=(1,),
                      dilation=(2,), size=(5,), var="zero", gamma="negative", eps=1e-8, dtype=F64))
@example(ConvPairCase(spatial=3, transposed=True, groups=3, in_per_group=2, out_per_group=1, kernel=(2, 1, 2),
                      stride=(2, 1, 3), dilation=(1, 2, 1), padding=(0, 0, 1), size=(2, 1, 3), batch=2))
@example(ConvPairCase(spatial=2, groups=3, in_per_group=1, out_per_group=1, kernel=(3, 3), padding=(1, 1),
                      size=(4, 4), affine=False, bias=False, var="mixed"))
@example(ConvPairCase(spatial=2, direction="before", groups=2, in_per_group=2, out_per_group=3, kernel=(3, 2),
                      padding=(1, 1), padding_mode="circular", size=(3, 2), dtype=F64))
def test_conv_pair_within_bound(case):
    """|BN(conv(x)) − conv'(x)| ≤ B (BN after) and |conv(BN(x)) − conv'(x)| ≤ B (BN before), B = error_bound.

    A conv is a Linear on each patch, per group, with n = C_in/g·K terms (ConvTranspose: C_in/g·Π⌈k·gcd(d,s)/s⌉);
    BN after scales its output channels, BN before its input channels on every kernel offset, and a non-zero
    padding mode pads with copies of BN'd values: the fold is an identity, and ρ·M_j covers both roundings.
    """
    model, x = case.sequential()
    folded, report = fold(model)
    assert len(report.folded) == 1 and report.kept == ()
    (layer,) = folded
    conv = model[0] if case.direction == "after" else model[1]
    assert type(layer) is type(conv) and layer.bias is not None and layer.weight.dtype == case.dtype
    assert (layer.stride, layer.padding, layer.dilation, layer.groups) == (conv.stride, conv.padding, conv.dilation,
                                                                          conv.groups)
    assert_within_bound(model, folded, x)


@given(conv_pair_cases(directions=("after",)))
def test_agrees_with_torch_conv_fuser(case):
    """|fuse_conv_bn_eval(C, B)(x) − ours(x)| ≤ B for a conv or transposed conv with an affine BN after it; torch's
    fuser raises on a grouped transposed conv (it scales the weight's dim 1 as if it held every output channel),
    and there ours is within B of BN(C(x)).

    torch's fused conv is one more float evaluation of the same affine map, with at most n + 9 roundings per
    term, the count error_bound allows the unfolded pair (as for Linear, test_fold_pair).
    """
    case = ConvPairCase(**{**case.__dict__, "affine": True})
    model, x = case.sequential()
    conv, bn = model
    ours, _ = fold(model)
    reference = model
    if case.transposed and case.groups > 1:
        with pytest.raises(RuntimeError), torch.no_grad():
            fuse_conv_bn_eval(conv, bn, transpose=True)(x)
    else:
        reference = fuse_conv_bn_eval(conv, bn, transpose=case.transposed)
    with torch.no_grad():
        err = (reference(x).double() - ours(x).double()).abs()
    bound = error_bound(model, x)
    note(f"max err {err.max().item():.3e}, max bound {bound.max().item():.3e}")
    assert (err <= bound).all()


@given(conv_pair_cases(directions=("before",), exact=False))
def test_a_bn_before_a_zero_padded_conv_is_kept(case):
    """BN → Conv folds iff padding = 0 or padding_mode ≠ zeros; a kept one is reported with the padding as reason.

    A zero-padded conv sees 0 at its border, not the BN's shift t, so folding t·W into the bias would be wrong
    at every output whose window reaches the border.
    """
    model, _ = case.sequential()
    _, report = fold(model)
    zero_border = case.padding_mode == "zeros" and any(case.padding)
    assert len(report.kept) == zero_border and len(report.folded) == (not zero_border)
    if zero_border:
        assert "pads with zeros" in report.kept[0].reason and "'0'" in report.kept[0].reason


@st.composite
def flatten_heads(draw):
    """(model, x): BatchNorm{d}d → Flatten → Linear on (N, C, *spatial), float32 or float64, every value drawn (as for
    conv_pair_cases: |W| ∈ [0.01, 10], |b| ∈ [0.1, 10], |x − μ| ∈ [0.01, 100], μ over [10⁻², 10²], v ∈ [10⁻³, 10³])."""
    d, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    size = tuple(draw(st.integers(1, 3)) for _ in range(d))
    out, batch, dtype = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.sampled_from((F32, F64)))
    features = c * math.prod(size)
    stats = draw(norm_stats(c, mean_decades=(-2, 2), var_decades=(-3, 3))).tensors(c)
    bn = KINDS[BN_TYPES[d]].build(NormTerms(*(t.to(dtype) for t in stats), 1e-5), 0.1)
    shapes = {"W": (features, out), "b": (out,), "x": (batch, c, *size)}
    drawn = draw(tensor_values(shapes, CONV_DECADES))
    W, b, x = (cycled(drawn[name], shape) for name, shape in shapes.items())
    linear = KINDS[torch.nn.Linear].build(W.to(dtype), b.to(dtype))
    x = x + channelwise(stats[0], x.ndim)
    return torch.nn.Sequential(bn.eval(), torch.nn.Flatten(), linear.eval()), x.to(dtype)


@given(flatten_heads())
def test_bn_before_flatten_folds_into_the_linear(case):
    """|Linear(flatten(BN(x))) − Linear'(flatten(x))| ≤ B: each flattened feature belongs to one channel, so s and t
    repeat over the channel's spatial positions and fold before the Linear as for a BatchNorm1d."""
    model, x = case
    folded, report = fold(model)
    assert [type(m) for m in folded] == [torch.nn.Flatten, torch.nn.Linear] and report.kept == ()
    with torch.no_grad():
        err = (model(x).double() - folded(x).double()).abs()
    bound = error_bound(model, x)
    note(f"max err {err.max().item():.3e}, max bound {bound.max().item():.3e}")
    assert (err <= bound).all()
