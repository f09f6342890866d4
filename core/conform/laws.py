"""The laws of folding, stated once and checked against any folder (`core.conform.folder`).

Each law is a function (folder, case) → Violation | None whose docstring states the law in one line of math, then
why it holds for a correct folder, then its scope. `LAWS` lists them with the case family each draws
(`core.conform.strategies`): a law runs for a folder only on a family the folder claims. A float comparison uses
the certified bound of `core.conform.certified` (error_bound at the folder's own fold arithmetic), or torch.equal
where a correct folder computes exactly what the original computes.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.conform.cases import (
    CONV,
    FOLD_COLUMNS,
    HALF,
    PADDED,
    SHARED_FAMILY,
    SHARED_PAIR,
    TRAINING,
    Case,
)
from core.conform.certified import certified_bound, finite, identical, leaves, outside
from core.conform.folder import Folded, Folder, run_folder
from core.conform.onnx_graph import UnreadableGraph
from core.deploy import first_line

RAISED, CRASHED, BOUND, DTYPE, SHAPE, OVERFLOW, MUTATED, FOLDED_TRAINING, CHANGED = (
    "raised", "crashed", "bound", "dtype", "shape", "overflow", "mutated", "folded-training", "changed")


@dataclass(frozen=True)
class Violation:
    """How a folder broke a law on a case: a kind (`RAISED`, `BOUND`, ...) and what was seen."""

    kind: str
    detail: str


def raised(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


def _outputs_within_bound(folder: Folder, case: Case) -> Violation | None:
    model, x = case.build(), case.example()
    with torch.no_grad():
        expected = model(x)
    if not finite(expected):
        return None  # out of scope: the original's outputs overflow
    try:
        folded = run_folder(folder, model, x)
    except Exception as e:
        return Violation(RAISED, f"{folder.name} raised on a case it claims: {raised(e)}")
    try:
        actual = folded.evaluate(x)
    except UnreadableGraph:
        raise  # the suite's gap, not the folder's
    except Exception as e:
        return Violation(CRASHED, f"the folded model does not run: {raised(e)}")
    bound = certified_bound(case.twin(), x, folder.fold_unit(case.dtype), folder.fold_roundings)
    excess = outside(expected, actual, bound)
    if excess is not None:
        if isinstance(excess, str):
            return Violation(DTYPE if " is " in excess and "where the original's is" in excess else SHAPE, excess)
        return Violation(BOUND, str(excess))
    try:
        deployed = folded(x)  # ONNX Runtime for an ONNX model: it must run there too, with outputs of these shapes
    except Exception as e:
        return Violation(CRASHED, f"the folded model does not run as deployed: {raised(e)}")
    shapes = [tuple(t.shape) for t in leaves(actual)]
    if [tuple(t.shape) for t in leaves(deployed)] != shapes:
        return Violation(CRASHED, f"deployed, the folded model gives outputs of other shapes than {shapes}")
    return None


def within_bound(folder: Folder, case: Case) -> Violation | None:
    """|model(X) − F(model)(X)| ≤ B_f(X) elementwise: B_f the certified bound at the folder's fold arithmetic.

    A fold is exact in real arithmetic (docs/design.md, "Folding"); in floating point each folded pair's outputs
    are within ρ_f·M_j + A of the unfolded ones, ρ_f counting the roundings of the folder's own W' and b' at its
    unit roundoff (docs/design-conv.md §11), and error_bound carries that through every later layer. B_f is the
    largest such bound over the sets of pairs a correct folder may fold (`core.conform.certified`): leaving a pair
    alone is within it too. A dropped mean, a scale on the wrong axis or of the wrong channel moves an output by a
    fraction of its magnitude, far outside. Scope: chains of one or two layer → BatchNorm pairs of the family,
    float32, whose original outputs are finite; an ONNX artefact is computed with torch's kernels.
    """
    return _outputs_within_bound(folder, case)


def shared_layers_keep_their_behaviour(folder: Folder, case: Case) -> Violation | None:
    """F(X)_path = model(X)_path on a path without a BatchNorm (torch.equal); the path with one within B_f.

    A conv called on two paths with a BatchNorm after one of them serves both: folding the BatchNorm into the conv
    itself changes the other path by the whole BatchNorm, and folding it into the conv once per call (a conv and
    its BatchNorm both called twice) scales the shared weight twice. A correct folder keeps such a pair, or folds
    it into a copy of the layer per call; the bound is computed on the model with one copy per call, which
    computes the same outputs (`Case.twin`). Scope: SharedConv (the column "shared conv") and SharedPair ("shared
    conv+BN") of `core.conform.cases`, float32.
    """
    return _outputs_within_bound(folder, case)


def bn_before_padding_is_kept(folder: Folder, case: Case) -> Violation | None:
    """F(BN → Conv(padding > 0, zeros))(X) = model(X), torch.equal: such a BatchNorm is never folded.

    The conv pads BN(x) with zeros, so an output whose window reaches the border sums fewer terms than a folded
    bias t·W counts (docs/design-conv.md §3): no per-channel bias can hold the fold, and bnfold's plan keeps the
    BatchNorm, so the bound is 0. Scope: a BatchNorm before a zero-padded Conv2d (a ReLU after it or not), float32.
    """
    return _outputs_within_bound(folder, case)


def input_is_untouched(folder: Folder, case: Case) -> Violation | None:
    """state(model) after F(model) and F(model)(X) = state(model) before, torch.equal; X unchanged.

    The state is every tensor with its dtype, every training flag and requires_grad. Folding makes new layers from
    the old ones' values and has no reason to write into them; a folder that scales a weight in place, or a fold
    that shares a tensor with the input and is written later, changes the user's model behind their back. Scope:
    conv → BatchNorm chains in float32 (eval).
    """
    model, x = case.build(), case.example()
    before, x_before = state(model), x.clone()
    try:
        run_folder(folder, model, x).evaluate(x)
    except Exception:
        pass  # a folder that raises must still leave the model as it was
    after = state(model)
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            return Violation(MUTATED, f"{name} {'appeared in' if name in after else 'vanished from'} the model")
        old, new = before[name], after[name]
        if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
            if old.dtype != new.dtype or old.shape != new.shape or not torch.equal(old, new):
                return Violation(MUTATED, f"{name} was changed by folding")
        elif old != new:
            return Violation(MUTATED, f"{name} was {old}, is {new} after folding")
    if not torch.equal(x, x_before):
        return Violation(MUTATED, "the input X was changed")
    return None


def state(model: torch.nn.Module) -> dict[str, object]:
    """Every tensor (copied), training flag and requires_grad of the model, by name."""
    found: dict[str, object] = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
    found.update({f"{name or 'model'}.training": m.training for name, m in model.named_modules()})
    found.update({f"{name}.requires_grad": p.requires_grad for name, p in model.named_parameters()})
    return found


def training_bn_is_refused_or_kept(folder: Folder, case: Case) -> Violation | None:
    """F(model) raises, or F(model)(X) = model(X) torch.equal with the BatchNorm in training mode.

    A BatchNorm in training mode normalises with the batch's statistics, not its running ones, so it is no affine
    map that could fold; a folder that folds it anyway computes the eval map instead. Left alone, it computes
    what the original computes, with the same kernel. Scope: a conv → BatchNorm pair, the BatchNorm in training
    mode and the rest in eval, float32.
    """
    model, x = case.build(), case.example()
    try:
        folded = run_folder(folder, model, x)
    except Exception:
        return None  # refused
    reference = case.build()
    with torch.no_grad():
        expected = reference(x)
    try:
        actual = folded.evaluate(x)
    except UnreadableGraph:
        raise
    except Exception as e:
        return Violation(CRASHED, f"the folded model does not run: {raised(e)}")
    if identical(expected, actual):
        return None
    worst = max(float((a.double() - e.double()).abs().max()) for e, a in zip(leaves(expected), leaves(actual)))
    return Violation(FOLDED_TRAINING, f"the BatchNorm in training mode was folded or changed: max |Δ| = {worst:.3e} "
                                      f"from the batch-statistics output")


def half_folds_without_overflow(folder: Folder, case: Case) -> Violation | None:
    """F(model) raises, or every tensor of F(model) is finite and of the model's dtype and |model(X) − F(X)| ≤ B_f.

    In float16 W' = W·s overflows where |W·s| > 65504 even though the model's outputs, s·(Σ x W) with small x,
    stay finite; such a fold cannot be represented, and a folder must refuse it (or keep the pair). A folded tensor
    of another dtype (float32 among float16) makes a model that runs in mixed precision, or not at all. Otherwise
    the bound holds at the dtype's unit roundoff and the folder's fold arithmetic. Scope: a conv → BatchNorm pair in
    float16 or bfloat16, weights up to 2^12, inputs up to 1/2, whose original outputs are finite.
    """
    model, x = case.build(), case.example()
    with torch.no_grad():
        expected = model(x)
    if not finite(expected):
        return None
    try:
        folded = run_folder(folder, model, x)
    except Exception:
        return None  # refused
    for name, tensor in folded.tensors().items():
        if tensor.is_floating_point() and tensor.dtype != case.dtype:
            return Violation(DTYPE, f"{name} is {str(tensor.dtype).removeprefix('torch.')} in a "
                                    f"{str(case.dtype).removeprefix('torch.')} model: mixed precision")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return Violation(OVERFLOW, f"{name} overflows {str(case.dtype).removeprefix('torch.')}: the fold gave "
                                       f"{tensor.abs().max().item()} (largest finite {torch.finfo(case.dtype).max:g})")
    return _outputs_within_bound(folder, case)


def folding_twice_changes_nothing(folder: Folder, case: Case) -> Violation | None:
    """F(F(model)) = F(model): the same outputs and the same named tensors, torch.equal.

    After one fold nothing is left that the folder folds, so a second fold must find nothing; one that folds again
    scales a weight a second time (or some leftover BatchNorm folds now but did not before). Scope: conv →
    BatchNorm chains in float32; a folder that raises on the first fold is out of scope (the fold laws catch it).
    """
    model, x = case.build(), case.example()
    try:
        once = run_folder(folder, model, x)
    except Exception:
        return None
    snapshot: Folded = copy.deepcopy(once)
    try:
        twice = run_folder(folder, model, x, again=once)
    except Exception as e:
        return Violation(RAISED, f"folding the folded model again raised {raised(e)}")
    first, second = snapshot.tensors(), twice.tensors()
    if sorted(first) != sorted(second):
        gone, new = sorted(set(first) - set(second)), sorted(set(second) - set(first))
        return Violation(CHANGED, f"the second fold changed the tensors: {len(gone)} gone ({', '.join(gone[:4])}"
                                  f"{', ...' if len(gone) > 4 else ''}), {len(new)} new ({', '.join(new[:4])}"
                                  f"{', ...' if len(new) > 4 else ''})")
    for name in first:
        if first[name].dtype != second[name].dtype or not torch.equal(first[name], second[name]):
            return Violation(CHANGED, f"{name} changed on the second fold")
    if not identical(snapshot.evaluate(x), twice.evaluate(x)):
        return Violation(CHANGED, "the second fold computes other outputs than the first")
    return None


Check = Callable[[Folder, Case], Violation | None]


@dataclass(frozen=True)
class Law:
    """One column of the matrix: a law run on one case family."""

    name: str
    family: str
    check: Check

    @property
    def statement(self) -> str:
        return (self.check.__doc__ or "").strip().splitlines()[0]

    @property
    def why(self) -> str:
        text = (self.check.__doc__ or "").strip().split("\n\n", 1)
        return " ".join(text[1].split()) if len(text) > 1 else ""


LAWS: tuple[Law, ...] = (
    *(Law(name, family, within_bound) for family, name in FOLD_COLUMNS.items()),
    Law("shared conv", SHARED_FAMILY, shared_layers_keep_their_behaviour),
    Law("shared conv+BN", SHARED_PAIR, shared_layers_keep_their_behaviour),
    Law("training BN", TRAINING, training_bn_is_refused_or_kept),
    Law("fp16/bf16", HALF, half_folds_without_overflow),
    Law("BN before padding", PADDED, bn_before_padding_is_kept),
    Law("input untouched", CONV, input_is_untouched),
    Law("idempotent", CONV, folding_twice_changes_nothing),
)
