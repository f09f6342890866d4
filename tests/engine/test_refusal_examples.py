"""The models fold refuses before it computes anything, by example, each through every entry point (fold,
plan_folds, error_bound, certify): statistics whose v + ε is not positive in the BatchNorm's own dtype, non-finite
scales, shifts, weights and biases, a fold that overflows float64, tensors on the meta device, lazy modules not yet
initialised, old-style weight_norm, spectral_norm and pruning, a weight held as a plain tensor or with autograd
history, statistics of the wrong shape; and the models fold keeps or folds that look alike (parametrized layers,
lazy modules once initialised, a model built under inference mode)."""

import copy
import re

import pytest
import torch
import torch.nn.utils.prune
from torch import nn
from torch.nn.utils import parametrize

from core.engine.bound.propagation import error_bound
from core.engine.certify import certify
from core.engine.fold import fold
from core.engine.plan import plan_folds
from core.errors import FoldError
from core.makemore.layers import BatchNorm1d, Linear
from core.makemore.model import e02_mlp
from tests.engine.models import linear, with_statistics


def refused_everywhere(model, X, message, artefact=None):
    """fold, plan_folds, error_bound and certify each raise FoldError with exactly `message` (a str) or a message
    matching it (a pattern). certify judges `artefact` (a fold of a sound copy of the model, so that it reads a fold
    there), or the model itself."""
    calls = {"fold": lambda: fold(model), "plan_folds": lambda: plan_folds(model),
             "error_bound": lambda: error_bound(model, X),
             "certify": lambda: certify(model, model if artefact is None else artefact, X)}
    for name, call in calls.items():
        with pytest.raises(FoldError) as info:
            call()
        text = str(info.value)
        assert (text == message if isinstance(message, str) else message.search(text)), (name, text)


def folded_copy(model):
    """fold of a copy of the sound model: an artefact that certify reads a fold from once the model is spoilt."""
    return fold(copy.deepcopy(model))[0]


def linear_bn(fan_in=3, fan_out=3, dtype=torch.float32, seed=0):
    """nn.Linear → BatchNorm1d in eval, values from a seeded generator, and an input batch."""
    gen = torch.Generator().manual_seed(seed)
    model = with_statistics(nn.Sequential(linear(fan_in, fan_out, gen), nn.BatchNorm1d(fan_out)))
    return model.to(dtype), torch.randn(4, fan_in, generator=gen, dtype=torch.float64).to(dtype)


# 1. v + ε ≤ 0 in the BatchNorm's own dtype.

@pytest.mark.parametrize("dtype, total", [(torch.float32, "0.0"), (torch.float16, "-1.3580574886873364e-08"),
                                          (torch.bfloat16, "-1.3580574886873364e-08")])
def test_running_var_of_minus_eps_is_refused_as_torch_computes_it(dtype, total):
    """v = −ε rounded to the dtype. float32: v ⊕ ε = 0 in float32, where torch's eval BatchNorm adds ε, so it outputs
    nan at z = μ, while in float64 v + ε = 2.5·10⁻¹³ > 0 and the fold used to compute a finite layer from it.
    float16, bfloat16: torch adds ε in float32, where fl(−10⁻⁵) + fl32(10⁻⁵) < 0."""
    model, X = linear_bn(dtype=dtype)
    artefact, bn = folded_copy(model), model[1]
    with torch.no_grad():
        bn.running_var[1] = -torch.tensor(bn.eps, dtype=dtype)
        assert bn(bn.running_mean[None])[0, 1].isnan()  # the original divides by √0, or by √ of a negative number
    v = bn.running_var[1].item()
    message = (f"BatchNorm1d '1' has running_var + eps <= 0 at unit 1 (running_var {v}, eps 1e-05: {total} in "
               f"torch.float32), so 1/sqrt(var + eps) is undefined: re-estimate the statistics or raise eps")
    refused_everywhere(model, X, message, artefact)


def test_a_half_precision_sum_that_underflows_is_not_refused():
    """float16, v = 0, ε = 10⁻⁸: v + ε rounds to 0 in float16, but torch's kernel adds ε in float32 (1/√ε = 10⁴ there),
    so the BatchNorm is a finite map and folds."""
    model, X = linear_bn(dtype=torch.float16)
    bn = model[1]
    bn.eps = 1e-8
    with torch.no_grad():
        bn.running_var[0] = 0
        bn.weight.fill_(1e-4)
        assert (bn.running_var + bn.eps)[0] == 0 and torch.isfinite(bn(bn.running_mean[None])).all()
    _, report = fold(model)
    assert len(report.folded) == 1


def test_float32_sum_zero_is_refused_where_float64_is_positive():
    """The float32 case of the defect: v = fl32(−10⁻⁵) gives v + ε = 2.5·10⁻¹³ > 0 in float64, 0 in float32."""
    model, X = linear_bn()
    with torch.no_grad():
        model[1].running_var[2] = -1e-5
    assert model[1].running_var[2].item() + 1e-5 > 0
    with pytest.raises(FoldError, match=r"'1' has running_var \+ eps <= 0 at unit 2 .*0\.0 in torch\.float32\)"):
        fold(model)


def test_a_kept_batchnorm_with_zero_variance_sum_is_refused_by_the_bound():
    """A BatchNorm fold keeps, downstream of a fold, is read by error_bound's rule: v ⊕ ε = 0 there is refused too."""
    model, X = linear_bn()
    kept = with_statistics(nn.BatchNorm1d(3))
    with torch.no_grad():
        kept.running_var[0] = -torch.tensor(kept.eps)
    model = nn.Sequential(*model, nn.Tanh(), kept)
    _, report = fold(model)
    assert [k.bn for k in report.kept] == ["3"]
    with pytest.raises(FoldError, match=r"BatchNorm1d '3' has running_var \+ eps <= 0 at unit 0"):
        error_bound(model, X)


def test_the_notebooks_batchnorm_is_judged_alike():
    gen = torch.Generator().manual_seed(1)
    bn = BatchNorm1d(2).eval()
    model = nn.Sequential(Linear(2, 2, generator=gen), bn).eval()
    artefact = folded_copy(model)
    with torch.no_grad():
        bn.running_var[0] = -torch.tensor(bn.eps)
    pattern = re.compile(r"^BatchNorm1d '1' has running_var \+ eps <= 0 at unit 0 .*: 0\.0 in torch\.float32\)")
    refused_everywhere(model, torch.randn(3, 2, generator=gen), pattern, artefact)


# 2. Non-finite terms, named; a fold that overflows float64.

def test_non_finite_gamma_of_a_float64_model_is_named():
    """It used to read 'gives values that do not fit torch.float64 … fold a float32 or float64 copy'."""
    model, X = linear_bn(dtype=torch.float64)
    artefact = folded_copy(model)
    with torch.no_grad():
        model[1].weight[2] = float("nan")
    message = ("BatchNorm1d '1' has a non-finite scale γ 'weight' (nan at unit 2), so it outputs nan or inf at that "
               "unit whatever its input: load finite parameters (retrain, or a checkpoint saved before training "
               "diverged) before folding")
    refused_everywhere(model, X, message, artefact)


def test_non_finite_beta_of_the_notebooks_batchnorm_is_named():
    gen = torch.Generator().manual_seed(2)
    bn = BatchNorm1d(3, dtype=torch.float64).eval()
    with torch.no_grad():
        bn.beta[0] = -float("inf")
    model = nn.Sequential(bn, Linear(3, 2, generator=gen, dtype=torch.float64)).eval()
    with pytest.raises(FoldError, match=re.escape("BatchNorm1d '0' has a non-finite shift β 'beta' (-inf at unit 0)")):
        fold(model)


def test_non_finite_weight_of_the_layer_is_named():
    model, X = linear_bn(dtype=torch.float64)
    artefact = folded_copy(model)
    with torch.no_grad():
        model[0].weight[1, 2] = float("inf")
    message = ("Linear '0' has a non-finite weight (inf at index [1, 2]), so some of its outputs are nan or inf "
               "whatever its input: load finite parameters (retrain, or a checkpoint saved before training diverged) "
               "before folding")
    refused_everywhere(model, X, message, artefact)


def test_a_non_finite_layer_no_batchnorm_folds_into_is_left_alone():
    """Only the layers of a fold are read: a nan elsewhere is the model's own, copied as it is."""
    model, X = linear_bn()
    last = linear(3, 2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        last.weight[0, 0] = float("nan")
    folded, report = fold(nn.Sequential(*model, nn.Tanh(), last))
    assert len(report.folded) == 1 and folded[2].weight[0, 0].isnan()


def test_a_fold_that_overflows_float64_says_so():
    """γ = 10³⁰⁰, v = 0, ε = 10⁻³⁰⁰: s = 10⁴⁵⁰ overflows float64 itself, so no dtype of the model would help."""
    model, X = linear_bn(dtype=torch.float64)
    bn = model[1]
    bn.eps = 1e-300
    with torch.no_grad():
        bn.running_var.fill_(0)
        bn.weight[1] = 1e300
    with pytest.raises(FoldError) as info:
        fold(model)
    assert str(info.value) == (
        "folding BatchNorm1d '1' into Linear '0' gives values beyond float64's range at output unit 1 (the fold "
        "computes in float64), so no dtype holds the folded layer: the BatchNorm's scale γ/√(v + ε) or shift β − μ·s "
        "is beyond any trained value; check its weight, running_var and eps")


def test_statistics_of_another_shape_are_refused():
    model, X = linear_bn()
    artefact = folded_copy(model)
    model[1].running_var = torch.ones(4)
    message = ("BatchNorm1d '1' has running_var of shape (4,) but running_mean of shape (3,): a BatchNorm holds one "
               "value per feature in each; load a state_dict that matches the architecture")
    refused_everywhere(model, X, message, artefact)


# 3. Tensors fold can neither read nor copy.

META = ("has its weight on the meta device, which holds shapes but no values: load the values first "
        "(model.load_state_dict(state_dict, assign=True), or model.to_empty(device=...) then load_state_dict) before "
        "folding")


def test_a_model_on_the_meta_device():
    model, X = linear_bn()
    refused_everywhere(model.to("meta"), X, f"Linear '0' {META}")


def test_a_batchnorm_alone_on_the_meta_device():
    model, X = linear_bn()
    model[1].to("meta")
    refused_everywhere(model, X, f"BatchNorm1d '1' {META}")


def test_a_charmlp_whose_embedding_is_on_the_meta_device():
    model = e02_mlp(torch.Generator().manual_seed(0)).eval()
    model.C = nn.Parameter(model.C.to("meta"))
    with pytest.raises(FoldError, match=re.escape("the model (CharMLP) has its C on the meta device")):
        fold(model)


LAZY = ("has an uninitialised weight (a lazy module that has not run yet): run the model once on an example input "
        "to initialise it (after load_state_dict, if you load one) before folding")


@pytest.mark.parametrize("lazy, plain, X", [
    (lambda: nn.Sequential(nn.LazyLinear(3), nn.BatchNorm1d(3)),
     lambda: nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), torch.ones(4, 2)),
    (lambda: nn.Sequential(nn.LazyConv2d(3, 1), nn.BatchNorm2d(3)),
     lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)), torch.ones(1, 2, 2, 2)),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 1, device="meta").to_empty(device="cpu"), nn.LazyBatchNorm2d()),
     lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)), torch.ones(1, 2, 2, 2)),
], ids=["LazyLinear", "LazyConv2d", "LazyBatchNorm2d"])
def test_a_lazy_module_that_has_not_run(lazy, plain, X):
    """Refused naming it while its tensors are uninitialised, and still after load_state_dict (its type and hooks
    change at its first call: the original would change under certify's run); after one forward it folds."""
    model = lazy().eval()
    index = 0 if not isinstance(model[1], nn.LazyBatchNorm2d) else 1
    name = f"{type(model[index]).__name__} '{index}'"
    refused_everywhere(model, X, f"{name} {LAZY}")
    with torch.random.fork_rng(devices=[]):  # the plain layers' init draws from the global RNG
        torch.manual_seed(0)
        state = with_statistics(plain()).state_dict()
    model.load_state_dict(state)
    refused_everywhere(model, X, f"{name} is a lazy module that has not run yet: its type and hooks change at its "
                                 f"first call, so run the model once on an example input before folding")
    with torch.no_grad():
        model(X)
    if isinstance(model[0], nn.Conv2d) and model[0].in_channels == 0:  # torch keeps in_channels 0 after such a load
        for call in (fold, plan_folds, lambda m: error_bound(m, X)):  # the conv is read where it folds
            with pytest.raises(FoldError, match=r"^Conv2d '0' has a weight of shape \(3, 2, 1, 1\), but its "
                                                r"in_channels 0, out_channels 3, groups 1 and kernel_size \(1, 1\) "
                                                r"give \(3, 0, 1, 1\): set them to match the weight"):
                call(model)
        model[0].in_channels = 2
    folded, report = fold(model)
    assert len(report.folded) == 1 and certify(model, folded, X, report).holds


def test_old_style_weight_norm_and_its_removal():
    model, X = linear_bn()
    with pytest.warns(FutureWarning):
        nn.utils.weight_norm(model[0])
    model(X)  # a forward with autograd on: the weight it leaves has a history, which deepcopy refuses
    message = ("Linear '0' has torch.nn.utils.weight_norm applied to its 'weight', which a forward pre-hook "
               "recomputes from 'weight_g' and 'weight_v' at every call, so fold can neither copy nor fold it: remove "
               "it with torch.nn.utils.remove_weight_norm(module, 'weight') before folding (the tensor keeps its "
               "current value)")
    refused_everywhere(model, X, message)
    nn.utils.remove_weight_norm(model[0])
    folded, report = fold(model)
    assert len(report.folded) == 1 and certify(model, folded, X, report).holds


def test_old_style_spectral_norm_and_pruning():
    model, X = linear_bn()
    with torch.random.fork_rng(devices=[]):  # spectral_norm draws its first vectors from the global RNG
        torch.manual_seed(0)
        nn.utils.spectral_norm(model[0])
    refused_everywhere(model, X, re.compile(r"^Linear '0' has torch\.nn\.utils\.spectral_norm applied to its 'weight'"
                                            r".*torch\.nn\.utils\.remove_spectral_norm\(module, 'weight'\)"))
    model, X = linear_bn()
    torch.nn.utils.prune.l1_unstructured(model[1], "weight", amount=0.5)
    refused_everywhere(model, X, re.compile(r"^BatchNorm1d '1' has torch\.nn\.utils\.prune applied to its 'weight', "
                                            r"which a forward pre-hook recomputes from 'weight_orig' times "
                                            r"'weight_mask'.*torch\.nn\.utils\.prune\.remove\(module, 'weight'\)"))
    torch.nn.utils.prune.remove(model[1], "weight")
    folded, report = fold(model)
    assert len(report.folded) == 1 and certify(model, folded, X, report).holds


def test_parametrized_layers_are_kept_with_the_way_to_fold_them():
    """torch.nn.utils.parametrizations.weight_norm makes a ParametrizedLinear, whose weight is computed at every
    call: the BatchNorm beside it is kept, the reason names remove_parametrizations, and the artefact certifies; once
    removed, the pair folds."""
    model, X = linear_bn()
    nn.utils.parametrizations.weight_norm(model[0])
    folded, report = fold(model)
    assert report.folded == ()
    assert report.kept[0].reason == (
        "BatchNorm1d '1' is kept: its producer ParametrizedLinear '0' is parametrized (torch.nn.utils.parametrize "
        "computes its 'weight' at every call), so it holds no fixed tensor to fold (torch.nn.utils.parametrize."
        "remove_parametrizations(module, 'weight') would let it fold); it feeds the model's output")
    assert certify(model, folded, X, report).holds and certify(model, folded, X).holds
    parametrize.remove_parametrizations(model[0], "weight")
    folded, report = fold(model)
    assert len(report.folded) == 1 and certify(model, folded, X, report).holds


def test_certify_against_an_artefact_of_another_parametrized_model_is_refused_not_a_key_error():
    """Parametrized types are made per module: another model's ParametrizedBatchNorm1d differs in type, so certify
    reads its BatchNorm as folded away and would fold a type of no kind (a KeyError before)."""
    models = [linear_bn(seed=s)[0] for s in (0, 1)]
    for model in models:
        nn.utils.parametrizations.weight_norm(model[1])
    X = linear_bn()[1]
    folded, _ = fold(models[0])
    with pytest.raises(FoldError, match=r"BatchNorm1d '1' cannot be folded: ParametrizedBatchNorm1d is no BatchNorm "
                                        r"type of fold's kind table"):
        certify(models[1], folded, X)


def test_a_weight_held_as_a_plain_tensor():
    """It folded, but certify's float64 reference (.double()) could not see it: a RuntimeError there."""
    model, X = linear_bn()
    weight = model[0].weight.detach().clone()
    del model[0].weight
    model[0].weight = weight
    refused_everywhere(model, X, "Linear '0' holds its weight as a plain tensor attribute, not a Parameter or buffer, "
                                 "so state_dict, .to() and .double() do not see it: register it (module.weight = "
                                 "torch.nn.Parameter(module.weight.detach())) before folding")


class Scaled(nn.Module):
    """bn(linear(x)) · scale, scale a plain attribute computed from a parameter (with autograd history)."""

    def __init__(self):
        super().__init__()
        model, _ = linear_bn()
        self.linear, self.bn = model
        self.log_scale = nn.Parameter(torch.zeros(3))
        self.scale = self.log_scale.exp()

    def forward(self, x):
        return self.bn(self.linear(x)) * self.scale


def test_a_plain_attribute_with_autograd_history():
    refused_everywhere(Scaled().eval(), torch.ones(2, 3),
                       "the model (Scaled) holds the tensor 'scale' as a plain attribute computed with autograd "
                       "history (not a Parameter or buffer), which cannot be copied: compute it under torch.no_grad(), "
                       "or register it as a buffer, before folding")


def test_a_model_built_under_inference_mode_folds_and_certifies():
    with torch.inference_mode():
        model, X = linear_bn()
    folded, report = fold(model)
    assert len(report.folded) == 1 and certify(model, folded, X.clone(), report).holds
