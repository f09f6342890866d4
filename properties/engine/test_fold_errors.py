"""Every FoldError case: the fold refuses, and the message names the layer and what to do."""

import re
from dataclasses import replace

import pytest
import torch
import torch.nn.utils.prune
from hypothesis import assume, example, given, note
from hypothesis import strategies as st

from core.engine.algebra import fold_pair
from core.engine.bound.propagation import error_bound
from core.engine.certify import certify
from core.engine.fold import fold
from core.engine.kinds import KINDS, NormTerms
from core.engine.plan import plan_folds
from core.errors import FoldError
from properties.strategies.nets import MODELLED_BLOCKS, net_cases
from properties.strategies.pairs import (
    BN_TYPES,
    ConvPairCase,
    PairCase,
    conv_pair_cases,
    make_bn,
    make_linear,
    pair_cases,
)

small_pairs = pair_cases(max_fan=8, max_batch=2)
prefixes = st.integers(0, 3)
units = st.integers(0, 7)  # taken modulo the BatchNorm's size


def in_model(case: PairCase, linear, bn, prefix: int):
    """(Sequential of `prefix` Tanh layers then the pair in its order, index of the BN in it)."""
    pair = (linear, bn) if case.direction == "after" else (bn, linear)
    return torch.nn.Sequential(*[torch.nn.Tanh() for _ in range(prefix)], *pair), prefix + (case.direction == "after")


def refused(model, *patterns):
    with pytest.raises(FoldError) as info:
        fold(model)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))


@given(small_pairs, prefixes)
def test_training_mode_is_refused(case, prefix):
    """BN.training ⇒ FoldError("… 'i' is in training mode … call model.eval() …").

    In training a BatchNorm normalises with the batch's statistics: no fixed affine map to fold.
    """
    linear, bn, _ = case.build()
    model, i = in_model(case, linear, bn.train(), prefix)
    refused(model, f"BatchNorm1d '{i}' is in training mode", r"call model\.eval\(\)")


@given(small_pairs, prefixes, st.sampled_from(["running_mean", "running_var"]))
def test_missing_statistics_are_refused(case, prefix, stat):
    """running_mean or running_var is None ⇒ FoldError("… 'i' has no running_mean/running_var: load …").

    Without running statistics the eval map is undefined.
    """
    linear, bn, _ = case.build()
    setattr(bn, stat, None)
    model, i = in_model(case, linear, bn, prefix)
    refused(model, f"'{i}' has no running_mean/running_var", "load a state_dict")


@given(small_pairs, prefixes, st.sampled_from(["running_mean", "running_var"]),
       st.sampled_from([float("nan"), float("inf"), -float("inf")]), units)
def test_non_finite_statistics_are_refused(case, prefix, stat, value, unit):
    """μ_j or v_j ∉ ℝ ⇒ FoldError("… 'i' has a non-finite <stat> (<value> at unit j): re-estimate …").

    A nan or inf statistic makes s or t non-finite: the folded layer would output nan/inf.
    """
    linear, bn, _ = case.build()
    j = unit % len(bn.running_mean)
    with torch.no_grad():
        getattr(bn, stat)[j] = value
    model, i = in_model(case, linear, bn, prefix)
    refused(model, f"'{i}' has a non-finite {stat} \\({value} at unit {j}\\)", "re-estimate the statistics")


@given(small_pairs, prefixes, st.floats(1e-3, 10), units)
@example(PairCase(dtype=torch.float64, eps=1e-5), 0, 0.0, 0)
def test_non_positive_variance_plus_eps_is_refused(case, prefix, r, unit):
    """v_j + ε ≤ 0 ⇒ FoldError("… 'i' has running_var + eps <= 0 at unit j …").

    1/√(v + ε) is undefined there. The test sets v_j = −ε(1 + r); r ≥ 10⁻³ survives a float32 rounding.
    """
    linear, bn, _ = case.build()
    j = unit % len(bn.running_var)
    with torch.no_grad():
        bn.running_var[j] = -case.eps * (1 + r)
    model, i = in_model(case, linear, bn, prefix)
    refused(model, f"'{i}' has running_var \\+ eps <= 0 at unit {j}", "raise eps")


@given(small_pairs, prefixes, st.integers(1, 3))
def test_size_mismatch_is_refused(case, prefix, extra):
    """dim(BN) ≠ fan_out (after) or fan_in (before) ⇒ FoldError("… has d features but Linear 'k' has
    fan_out n …").

    s and t have one entry per unit of the side they scale; other sizes cannot pair with W.
    """
    linear, bn, _ = case.build()
    units = case.fan_out if case.direction == "after" else case.fan_in
    wrong = make_bn(case.kind, case.stats.tensors(units + extra), case.eps, dtype=case.dtype)
    model, i = in_model(case, linear, wrong, prefix)
    k = i - 1 if case.direction == "after" else i + 1
    side = "fan_out" if case.direction == "after" else "fan_in"
    refused(model, f"'{i}' has {units + extra} features but Linear '{k}' has {side} {units}",
            "they are no Linear/BatchNorm pair; check the architecture")


@given(pair_cases(kinds=("torch",), max_fan=8, max_batch=2), prefixes)
def test_untracked_torch_batchnorm_is_refused(case, prefix):
    """torch BatchNorm1d(track_running_stats=False) ⇒ FoldError("… has track_running_stats=False … rebuild it with …").

    Such a BatchNorm uses batch statistics even in eval mode, so it is no fixed affine map.
    """
    linear, _, _ = case.build()
    units = case.fan_out if case.direction == "after" else case.fan_in
    bn = torch.nn.BatchNorm1d(units, affine=case.affine, track_running_stats=False, dtype=case.dtype).eval()
    model, i = in_model(case, linear, bn, prefix)
    refused(model, f"'{i}' has track_running_stats=False", "rebuild it with track_running_stats=True")


@given(pair_cases(dtypes=(torch.float16, torch.bfloat16), max_fan=8, max_batch=2), prefixes)
def test_overflow_is_refused(case, prefix):
    """|W'| > max(dtype) ⇒ FoldError("folding … 'i' into … do not fit <dtype> … fold a float32 … copy").

    With W = 1, v = 0, ε = 10⁻⁶ and γ = max(dtype)/10, s = γ/√ε = 100·max(dtype): the float64 fold
    is finite, but W' = W·s (or s·W) does not fit the layer's dtype, and a cast would give inf.
    """
    units = case.fan_out if case.direction == "after" else case.fan_in
    ones = torch.ones(case.fan_in, case.fan_out, dtype=case.dtype)
    linear = make_linear(case.kind, ones, None).eval()
    top = torch.finfo(case.dtype).max
    stats = (torch.ones(units), torch.zeros(units), torch.full((units,), top / 10), torch.zeros(units))
    bn = make_bn(case.kind, stats, 1e-6, dtype=case.dtype)
    model, i = in_model(case, linear, bn, prefix)
    refused(model, f"folding BatchNorm1d '{i}' into Linear", f"do not fit {case.dtype}",
            "fold a float32 or float64 copy")


@given(conv_pair_cases(), st.integers(1, 3))
@example(ConvPairCase(direction="before", groups=2, kernel=(1, 1)), 1)
def test_conv_size_mismatch_is_refused_naming_the_channels(case, extra):
    """dim(BN) ≠ out_channels (after) or in_channels (before) of a conv ⇒ FoldError("… has d features but … has
    out_channels n …: they are no convolution/BatchNorm pair").

    A conv's BN scales one output (or input) channel per entry; the message names the conv's own attribute.
    """
    conv, _, _ = case.build()
    c_in, c_out = case.channels
    units = c_out if case.direction == "after" else c_in
    terms = NormTerms(*(t.to(case.dtype) for t in case.stats.tensors(units + extra)), case.eps)
    wrong = KINDS[BN_TYPES[case.spatial]].build(terms, 0.1).eval()
    pair = (conv, wrong) if case.direction == "after" else (wrong, conv)
    side = "out_channels" if case.direction == "after" else "in_channels"
    refused(torch.nn.Sequential(*pair), f"has {units + extra} features but .* has {side} {units}",
            "no convolution/BatchNorm pair")


@given(pair_cases(dtypes=(torch.float16, torch.bfloat16), max_fan=8, max_batch=2))
@example(PairCase(dtype=torch.float16, fan_in=2, fan_out=1))
def test_weights_that_fit_fold_even_when_their_sum_overflows(case):
    """Every |W'_ij| ≤ max(dtype) ⇒ fold succeeds, even when Σ W' overflows to inf.

    With W = 1, μ = 0, v = 1 − ε and γ = 3/4·max(dtype), W' = s·W = fl(3/4·max) fits; the sum of two or
    more such values does not, and a fold that judged fit by the sum alone would refuse a valid model.
    """
    units = case.fan_out if case.direction == "after" else case.fan_in
    linear = make_linear(case.kind, torch.ones(case.fan_in, case.fan_out, dtype=case.dtype), None).eval()
    top = torch.finfo(case.dtype).max
    stats = (torch.zeros(units), torch.full((units,), 1 - 1e-5), torch.full((units,), 0.75 * top),
             torch.zeros(units))
    bn = make_bn(case.kind, stats, 1e-5, dtype=case.dtype)
    folded, _ = fold(torch.nn.Sequential(*((linear, bn) if case.direction == "after" else (bn, linear))))
    assert torch.isfinite(folded[0].weight).all()
    assert case.fan_in * case.fan_out < 2 or not torch.isfinite(folded[0].weight.double().sum().to(case.dtype))


@given(small_pairs, st.integers(1, 3), st.integers(1, 3))
@example(PairCase(direction="before", fan_in=5), 1, 2)
def test_layer_level_folds_name_the_pair_and_the_flattened_positions(case, extra, spread):
    """fold_pair(layer, bn, direction, spread=k) with dim(BN)·k ≠ the layer's side ⇒ FoldError("the BatchNorm has d
    features [x k flattened positions] but the Linear has fan_in n …").

    Called on layers rather than a model, the message names them generically; before a Linear through a Flatten
    each channel feeds k inputs, so the count it compares is d·k and the message says so.
    """
    linear, _, _ = case.build()
    units = case.fan_out if case.direction == "after" else case.fan_in
    k = 1 if case.direction == "after" else spread
    width = units + extra
    bn = make_bn(case.kind, case.stats.tensors(width), case.eps, dtype=case.dtype)
    per = f" x {k} flattened positions" if k > 1 else ""
    side = "fan_out" if case.direction == "after" else "fan_in"
    with pytest.raises(FoldError, match=re.escape(f"the BatchNorm has {width} features{per} but the Linear has "
                                                  f"{side} {units}: they are no Linear/BatchNorm pair")):
        fold_pair(linear, bn, case.direction, spread=k)


@given(pair_cases(kinds=("torch",), max_fan=8, max_batch=2))  # the core layers take 2-D tensors only
@example(PairCase(kind="torch", direction="before", fan_in=2, fan_out=3, batch=2))
def test_a_pair_fed_three_dim_tensors_is_refused_by_the_bound(case):
    """X of shape (N, L, fan_in) with L the BatchNorm1d's width ⇒ error_bound(m, X) raises FoldError naming both layers.

    fold sees no input: it folds a BatchNorm1d into a Linear as if the Linear's features sat in dim 1, true of
    (N, C) tensors only. On (N, L, C) the Linear keeps its features last while BatchNorm1d normalises dim 1 (the
    model runs when L = C), so fold(m) scales the wrong dim; error_bound, which sees X, says so.
    """
    model, x = case.sequential()
    X = x[:, None, :].expand(-1, case.bn_dim, -1).contiguous()
    with torch.no_grad():
        model(X)  # the model itself runs on X
    with pytest.raises(FoldError) as info:
        error_bound(model, X)
    bn, linear = ("1", "0") if case.direction == "after" else ("0", "1")
    assert re.search(rf"BatchNorm1d '{bn}' normalises dim 1 of a 3-D tensor here, but \w+ '{linear}' "
                     r"keeps its channels in dim 1 only of 2-D tensors \(N, C\)", str(info.value)), str(info.value)


def test_an_unbatched_conv1d_pair_is_refused_by_the_bound():
    """Conv1d(2, 2, 1) → BatchNorm1d(2) on an unbatched (C, L) = (2, 2) input ⇒ error_bound raises FoldError.

    Conv1d reads (C, L) as one sample; BatchNorm1d then reads the (C, L) output as (N, C), normalising L: the model
    runs, but fold folded the BN into the conv's channels."""
    gen = torch.Generator().manual_seed(3)
    conv, bn = torch.nn.Conv1d(2, 2, 1), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        for t in (conv.weight, conv.bias, bn.running_mean, bn.running_var):
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    model = torch.nn.Sequential(conv, bn).eval()
    X = torch.rand(2, 2, generator=gen)
    with torch.no_grad():
        model(X)
    with pytest.raises(FoldError) as info:
        error_bound(model, X)
    assert str(info.value).startswith(
        "BatchNorm1d '1' normalises dim 1 of a 2-D tensor here, but Conv1d '0' keeps its channels in "
        "dim 1 only of 3-D tensors (N, C, ...): fold(model) folded them as if it did")


def steps_from(value: torch.Tensor, k: int) -> torch.Tensor:
    """The value k steps of one ulp away from `value`, in its own dtype (k < 0: downwards)."""
    toward = torch.tensor(float("inf") if k > 0 else -float("inf"), dtype=value.dtype)
    for _ in range(abs(k)):
        value = torch.nextafter(value, toward)
    return value


ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@given(pair_cases(dtypes=ALL_DTYPES, max_fan=8, max_batch=2), st.integers(-3, 3), units, prefixes)
@example(PairCase(dtype=torch.float32, eps=1e-5), 0, 0, 0)
@example(PairCase(dtype=torch.float16, eps=1e-5), 0, 0, 0)
@example(PairCase(dtype=torch.bfloat16, eps=1e-5), 0, 0, 0)
@example(PairCase(dtype=torch.float16, eps=1e-8), 0, 0, 0)
@example(PairCase(dtype=torch.float64, eps=1e-5, direction="before"), 1, 0, 1)
def test_variance_plus_eps_is_judged_as_torch_computes_it(case, k, unit, prefix):
    """torch's eval BN(μ)_j = nan ⇔ FoldError("… 'i' has running_var + eps <= 0 at unit j …"), in every dtype.

    torch's eval BatchNorm adds ε rounded to the precision it computes in (the BatchNorm's dtype, float32 for
    float16 and bfloat16): with v_j = −fl(ε) it divides by √0 (or by √ of a negative number) and outputs nan at
    z = μ, though in float64 v_j + ε may be a tiny positive number from which the fold would compute a finite layer.
    Conversely, where that sum is positive the map is finite, even when v_j + ε rounds to 0 in float16 itself. v_j is
    drawn k ulps from −fl(ε) in the BatchNorm's dtype (the other units hold v = 1).
    """
    linear, bn, _ = case.build()
    j = unit % len(bn.running_var)
    with torch.no_grad():
        bn.running_var.fill_(1)
        bn.running_var[j] = steps_from(-torch.tensor(case.eps, dtype=case.dtype), k)
        undefined = bool(bn(bn.running_mean[None])[0, j].isnan())  # torch's own eval map at z = μ
    note(f"v_j {bn.running_var[j].item()!r}, eps {bn.eps!r}: torch's BN(μ)_j is nan: {undefined}")
    model, i = in_model(case, linear, bn, prefix)
    try:
        fold(model)
        refusal = ""
    except FoldError as e:
        refusal = str(e)
    refused = "has running_var + eps <= 0" in refusal
    assert refused == undefined, refusal
    if refused:
        assert f"'{i}' has running_var + eps <= 0 at unit {j}" in refusal and "raise eps" in refusal, refusal


@given(pair_cases(dtypes=ALL_DTYPES, max_fan=8, max_batch=2), prefixes, st.sampled_from(["gamma", "beta"]),
       st.sampled_from([float("nan"), float("inf"), -float("inf")]), units)
@example(PairCase(dtype=torch.float64), 0, "gamma", float("nan"), 0)
@example(PairCase(kind="torch", dtype=torch.float64, direction="before"), 1, "beta", float("inf"), 0)
def test_non_finite_scale_or_shift_is_refused_naming_it(case, prefix, which, value, unit):
    """γ_j or β_j ∉ ℝ ⇒ FoldError("… 'i' has a non-finite scale γ '<attr>' (<value> at unit j) …"), in every dtype.

    Such a BatchNorm outputs nan or inf at unit j whatever its input, and the fold would spread it into the layer (a
    whole column after it, every output before it): the refusal names the tensor as the layer holds it ('weight' and
    'bias' in torch, 'gamma' and 'beta' in the notebook's layers) rather than the overflow it would cause.
    """
    case = replace(case, affine=True)
    linear, bn, _ = case.build()
    j = unit % len(bn.running_var)
    attribute = {("torch", "gamma"): "weight", ("torch", "beta"): "bias"}.get((case.kind, which), which)
    with torch.no_grad():
        getattr(bn, attribute)[j] = value
    model, i = in_model(case, linear, bn, prefix)
    role = "scale γ" if which == "gamma" else "shift β"
    refused(model, re.escape(f"'{i}' has a non-finite {role} '{attribute}' ({value} at unit {j})"),
            "load finite parameters")


@given(pair_cases(dtypes=ALL_DTYPES, max_fan=8, max_batch=2), prefixes, st.sampled_from(["weight", "bias"]),
       st.sampled_from([float("nan"), float("inf"), -float("inf")]), st.integers(0, 63))
@example(PairCase(dtype=torch.float64), 0, "weight", float("nan"), 0)
@example(PairCase(kind="torch", dtype=torch.float64, direction="before", fan_in=2), 0, "bias", float("inf"), 0)
def test_non_finite_weight_or_bias_of_the_layer_is_refused_naming_it(case, prefix, which, value, flat):
    """W_ij or b_j ∉ ℝ in a folding layer ⇒ FoldError("Linear 'k' has a non-finite <attr> (<v> at index [i, j])").

    A nan or inf term makes some output of the layer nan or inf whatever its input (0·inf = nan): no fold of it is
    certified, and the folded layer would carry it on. A bias names its unit j, a weight its index in the tensor's own
    layout (torch's Linear holds W as (fan_out, fan_in), the notebook's as (fan_in, fan_out)).
    """
    case = replace(case, bias=True)
    linear, bn, _ = case.build()
    with torch.no_grad():
        bn.running_var.fill_(1)  # v + ε > 0 in every dtype: the layer's term is what is refused
    tensor = getattr(linear, which)
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat % tensor.numel()), tensor.shape))
    with torch.no_grad():
        tensor[index] = value
    model, i = in_model(case, linear, bn, prefix)
    k = i - 1 if case.direction == "after" else i + 1
    where = f"unit {index[0]}" if which == "bias" else f"index [{index[0]}, {index[1]}]"
    refused(model, re.escape(f"Linear '{k}' has a non-finite {which} ({value} at {where})"), "load finite parameters")


BREAKS = ("meta", "weight_norm", "spectral_norm", "prune", "plain")


def broken(module: torch.nn.Module, how: str) -> str:
    """Make `module` hold a weight fold can neither read nor copy; returns the phrase its refusal must hold."""
    if how == "meta":
        module.to("meta")
        return "on the meta device"
    if how == "weight_norm":
        torch.nn.utils.weight_norm(module)
        return r"torch\.nn\.utils\.remove_weight_norm\(module, 'weight'\)"
    if how == "spectral_norm":
        with torch.random.fork_rng(devices=[]):  # spectral_norm draws its first vectors from the global RNG
            torch.manual_seed(0)
            torch.nn.utils.spectral_norm(module)
        return r"torch\.nn\.utils\.remove_spectral_norm\(module, 'weight'\)"
    if how == "prune":
        torch.nn.utils.prune.l1_unstructured(module, "weight", amount=0.5)
        return r"torch\.nn\.utils\.prune\.remove\(module, 'weight'\)"
    weight = module.weight.detach().clone()
    del module.weight
    module.weight = weight
    return "holds its weight as a plain tensor attribute"


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@given(net_cases(max_blocks=3, blocks=MODELLED_BLOCKS), st.integers(0, 31), st.sampled_from(BREAKS),
       st.sampled_from(["fold", "plan_folds", "error_bound", "certify"]))
def test_a_weight_fold_cannot_read_is_refused_naming_the_layer_by_every_entry_point(case, pick, how, entry):
    """weight on meta, under weight_norm/spectral_norm/prune, or plain ⇒ every entry point's FoldError names the layer.

    fold, plan_folds, error_bound and certify each refuse, naming the layer and the fix (the call that removes the
    hook, the load that gives the values, the registration).

    A meta tensor holds no values; an old-style reparametrisation recomputes the weight at every call, as a plain
    attribute that cannot be deep-copied once computed with autograd; a plain tensor escapes state_dict, .to() and
    .double(). Each used to escape as torch's own NotImplementedError or RuntimeError, or only from certify; now the
    model is refused before anything runs, wherever the layer sits and whether or not a BatchNorm folds into it.
    """
    model, X, _ = case.build()
    named = [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    assume(named)  # a net of pools only holds no weight
    name, module = named[pick % len(named)]
    phrase = broken(module, how)
    calls = {"fold": lambda: fold(model), "plan_folds": lambda: plan_folds(model),
             "error_bound": lambda: error_bound(model, X), "certify": lambda: certify(model, model, X)}
    with pytest.raises(FoldError) as info:
        calls[entry]()
    message = str(info.value)
    assert f"{type(module).__name__} '{name}'" in message and re.search(phrase, message), message
