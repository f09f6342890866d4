"""`bnfold eval`, `sample` and `fold CHECKPOINT -o OUT`: a checkpoint refused if any weight is nan or inf, evaluated
on the split it records (another seed or names file is warned about), and results that must be finite."""

import argparse
import math
import sys
from typing import TYPE_CHECKING, cast

from core.app.errors import UsageError, naming_option
from core.app.outputs import check_output_file
from core.app.process import one_line, print_result, warn
from core.atomic import StrPath
from core.errors import CheckpointError, ExportError
from core.limits import SAMPLE_CHUNK

CERTIFY_ROWS = 4096  # dev rows the certificate checks every fold on

if TYPE_CHECKING:
    from core.makemore.checkpoint import Checkpoint
    from core.makemore.data import Split
    from core.makemore.model import CharMLP


def load_usable_checkpoint(path: StrPath, purpose: str) -> "Checkpoint":
    """The checkpoint at `path`, refused (CheckpointError) if any weight is nan or inf: no silent nan output."""
    from core.makemore.checkpoint import load_checkpoint
    from core.makemore.model import nonfinite_tensors

    checkpoint = load_checkpoint(path)
    bad = nonfinite_tensors(checkpoint.model)
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {', '.join(bad)}; {purpose} would give nan; "
                              f"retrain it (a lower --lr usually avoids divergence)")
    return checkpoint


def evaluation_split(checkpoint: "Checkpoint", seed: int | None, checkpoint_path: StrPath) -> "Split":
    """The split to evaluate on: the one the checkpoint records unless --seed says otherwise (then a warning)."""
    from core.makemore.data import Split

    recorded = checkpoint.split
    if seed is None:
        if not checkpoint.split_recorded:
            warn(f"{checkpoint_path} records no split (it was written before splits were recorded): using the "
                 f"default split ({recorded.describe()}); pass --seed S if it was trained with another seed")
        return recorded
    if checkpoint.split_recorded and seed != recorded.seed:
        warn(f"--seed {seed} differs from the split seed {recorded.seed} recorded in {checkpoint_path}: "
             f"these train/dev/test parts are not the ones it was trained on")
    return Split(seed, recorded.fractions)


def load_evaluation_names(names: str | None, checkpoint: "Checkpoint", checkpoint_path: StrPath,
                          split: "Split") -> dict[str, list[str]]:
    """{part: names} for `split`, warning when the names file is not the one the checkpoint was trained on."""
    from core.makemore.data import load_split, resolve_names_path

    path = resolve_names_path(names)
    names_file, parts = load_split(path, split)
    if checkpoint.names_sha256 is not None and names_file.sha256 != checkpoint.names_sha256:
        warn(f"{path} is not the names file {checkpoint_path} was trained on (its sha256 differs): "
             f"the parts hold other names; pass --names with the training file")
    return parts


def require_finite_losses(losses: dict[str, float], checkpoint_path: StrPath) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        values = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise CheckpointError(f"{checkpoint_path}: the loss is not finite ({values}): the net's forward overflows "
                              f"its dtype on these names; evaluate a float32 or float64 copy")


def cmd_eval(args: argparse.Namespace) -> None:
    from core.makemore.evaluate import split_losses

    checkpoint = load_usable_checkpoint(args.checkpoint, "evaluating it")
    split = evaluation_split(checkpoint, args.seed, args.checkpoint)
    parts = load_evaluation_names(args.names, checkpoint, args.checkpoint, split)
    losses = split_losses(checkpoint.model, parts)
    require_finite_losses(losses, args.checkpoint)
    print_result(losses, "  ".join(f"{k} {v:.4f}" for k, v in losses.items()), args.json)


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    checkpoint = load_usable_checkpoint(args.checkpoint, "sampling from it")
    model = checkpoint.model
    dtype = str(model.C.dtype).removeprefix("torch.")

    def require_finite_logits(module: object, inputs: object, logits: "torch.Tensor") -> None:
        if not bool(torch.isfinite(logits).all()):  # softmax would give nan probabilities, which cannot be drawn from
            raise CheckpointError(f"{args.checkpoint}: the logits are not finite while sampling: the net's forward "
                                  f"overflows its dtype ({dtype}); sample from a float32 or float64 copy")

    generator = torch.Generator().manual_seed(args.seed)
    with model.register_forward_hook(require_finite_logits):
        for start in range(0, args.n, SAMPLE_CHUNK):
            names = model.sample(min(SAMPLE_CHUNK, args.n - start), generator=generator)
            sys.stdout.write("".join(f"{name}\n" for name in names))
            sys.stdout.flush()


def cmd_fold(args: argparse.Namespace) -> None:
    from core.makemore.data import resolve_names_path

    if args.checkpoint is None or args.out is None:
        raise UsageError("fold needs a checkpoint and -o/--out (or --torchvision NAME)")
    for option, value in (("--image-size", args.image_size), ("--bound-size", args.bound_size),
                          ("--rounds", args.rounds), ("--threads", args.threads)):
        if value is not None:  # refused, not ignored
            raise UsageError(f"{option} applies to fold --torchvision only; a checkpoint is folded and certified on "
                             f"its dev names, with no images and no timing: drop {option}")
    protected = {"the checkpoint being folded": args.checkpoint,
                 "the names file": resolve_names_path(args.names, fetch=False)}
    check_output_file(args.out, "-o", protected)
    if args.onnx is not None:
        if not str(args.onnx).endswith(".onnx"):
            raise UsageError(f"--onnx {args.onnx}: --onnx writes an .onnx file; give a path ending in .onnx")
        check_output_file(args.onnx, "--onnx", {**protected, "the folded checkpoint": args.out})

    from core.engine.certify import certify
    from core.engine.fold import fold
    from core.makemore.checkpoint import save
    from core.makemore.data import dataset_chunks
    from core.makemore.evaluate import split_agreement

    checkpoint = load_usable_checkpoint(args.checkpoint, "folding it")
    model = checkpoint.model.eval()
    folded, report = fold(model)
    split = evaluation_split(checkpoint, args.seed, args.checkpoint)
    parts = load_evaluation_names(args.names, checkpoint, args.checkpoint, split)
    dev = split_agreement(model, folded, parts["dev"], plan=report.plan)
    if not all(map(math.isfinite, (dev.loss_unfolded, dev.loss_folded, dev.max_abs_logit_diff))):
        raise CheckpointError(f"{args.checkpoint}: the dev loss or logits are not finite (unfolded "
                              f"{dev.loss_unfolded}, folded {dev.loss_folded}): the net overflows its dtype; "
                              f"fold a float32 or float64 copy")
    X, _ = next(dataset_chunks(parts["dev"], model.context_length, CERTIFY_ROWS))
    certificate = certify(model, folded, X, report)
    text = (f"{report}\n"
            f"on the first {X.shape[0]} dev rows: {certificate}\n"
            f"dev loss: unfolded {dev.loss_unfolded:.10f}, folded {dev.loss_folded:.10f} "
            f"(certified |Δ| <= {dev.loss_bound:.3e})\n"
            f"max |Δlogit| on dev: {dev.max_abs_logit_diff:.3e} (certified bound {dev.max_bound:.3e})")
    if not certificate.holds:
        print_result({"report": report.as_dict(), "certificate": certificate.as_dict()}, text, args.json)
        certificate.require()  # nothing is saved
    data = {"report": report.as_dict(), "certificate": certificate.as_dict(), "certified_rows": X.shape[0],
            "dev": {"loss_unfolded": dev.loss_unfolded, "loss_folded": dev.loss_folded, "loss_bound": dev.loss_bound,
                    "max_abs_logit_diff": dev.max_abs_logit_diff, "max_bound": dev.max_bound, "rows": dev.rows},
            "saved": str(args.out)}
    if args.onnx is not None:  # written first: if ONNX Runtime does not compute the fold, nothing is written
        from core.deploy import export

        with naming_option(before=f"--onnx {args.onnx}: ", errors=(ExportError,)):
            check = export(folded, X, args.onnx)
        assert check is not None
        text += f"\nwrote {one_line(args.onnx)}: {check}"
        data["onnx"] = {"path": str(args.onnx), "holds": check.holds, "max_abs_diff": check.observed}
    save(cast("CharMLP", folded), args.out, split=checkpoint.split if checkpoint.split_recorded else None,
         names_sha256=checkpoint.names_sha256)  # fold returns a net of its input's type
    print_result(data, f"{text}\nsaved {one_line(args.out)}", args.json)
