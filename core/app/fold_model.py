"""`bnfold fold --model SPEC` and `bnfold fold --torchvision NAME --weights FILE`: fold a model of your own, certify
it on inputs drawn at its input shape, and write it as a torch.export program (-o FILE.pt2) and an ONNX file
(--onnx FILE.onnx), each only once the certificate holds, the ONNX file only once ONNX Runtime computes it layer by
layer. Every option and output is checked before the model is built; a failure is one line, and nothing is
written."""

import argparse
import time
from pathlib import Path
from typing import Any

from core.app.errors import UsageError, naming_option
from core.app.outputs import check_output_file
from core.app.process import print_result
from core.errors import ExportError, ModelError

EXPORT_SUFFIXES = {"-o": ".pt2", "--onnx": ".onnx"}  # what each output option writes


def chosen(args: argparse.Namespace) -> bool:
    """Whether the command folds a model the user names (--model, or --weights for a torchvision name)."""
    return args.model is not None or args.weights is not None


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before any work, the options this form does not use and outputs it cannot write."""
    if args.checkpoint is not None:
        raise UsageError("--model and --weights fold a model you name: give no checkpoint")
    if args.model is not None and args.torchvision is not None:
        raise UsageError("--model and --torchvision each name the model: give one")
    if args.model is None and args.torchvision is None:
        raise UsageError("--weights loads into the architecture --torchvision NAME or --model SPEC names: give one")
    if args.model == "":
        raise UsageError("--model: the model is empty; give package.module:factory or timm:NAME")
    if args.weights == "":
        raise UsageError("--weights: the path is empty; give a state_dict file such as model.pt")
    for option in ("image_size", "bound_size", "rounds", "names"):
        if getattr(args, option) is not None:
            flag = "--" + option.replace("_", "-")
            raise UsageError(f"{flag} applies to fold --torchvision NAME without --weights (random weights, timed) or "
                             f"to a checkpoint: drop {flag}; --input-shape sets the input here")
    for option, path in (("-o", args.out), ("--onnx", args.onnx)):
        if path is None:
            continue
        if Path(path).suffix != EXPORT_SUFFIXES[option]:
            other = "--onnx FILE.onnx writes ONNX" if option == "-o" else "-o FILE.pt2 writes a torch.export program"
            raise UsageError(f"{option} {path}: {option} writes a {EXPORT_SUFFIXES[option]} file; give a path ending "
                             f"in {EXPORT_SUFFIXES[option]} ({other})")
        check_output_file(path, option, {"the weights file": args.weights})


def build(args: argparse.Namespace) -> tuple[Any, str]:
    """(the model, as eval-mode nn.Module, and how the output names it)."""
    from core import models

    if args.model is not None:
        with naming_option(before=f"--model {args.model}: ", errors=(ModelError,)):
            model = models.from_factory(args.model)
        described = args.model
    else:
        with naming_option(before=f"--torchvision {args.torchvision}: ", errors=(ModelError,)):
            model = models.torchvision_model(args.torchvision)
        described = f"torchvision {args.torchvision}"
    if args.weights is not None:
        with naming_option(before="--weights ", errors=(ModelError,)):
            models.load_weights(model, args.weights)
        described += f" with the weights of {args.weights}"
    return model, described


def cmd_fold_model(args: argparse.Namespace) -> None:
    check_options(args)

    import torch

    from core import models
    from core.deploy import export
    from core.engine.certify import certify
    from core.engine.fold import fold

    if args.threads:
        torch.set_num_threads(args.threads)
    model, described = build(args)
    shape = args.input_shape or models.default_input_shape(model, args.torchvision)
    if shape is None:
        raise UsageError(f"--model {args.model}: give --input-shape, the input the model takes (such as 1,3,224,224); "
                         f"only torchvision and timm models have a known default")
    seed = 0 if args.seed is None else args.seed
    X = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with naming_option(before="--input-shape: ", errors=(ModelError,)):
        models.check_runs(model, X)
    say = (lambda text: None) if args.json else print
    say(f"{described}; inputs of shape {','.join(map(str, shape))} drawn with seed {seed}")
    start = time.perf_counter()
    folded, report = fold(model)
    folding = time.perf_counter() - start
    say(str(report))
    start = time.perf_counter()
    certificate = certify(model, folded, X, report)
    certified = time.perf_counter() - start
    say(f"folded in {folding:.2f} s; certified in {certified:.2f} s: {certificate}")
    data: dict[str, Any] = {"model": described, "input_shape": list(shape), "seed": seed, "report": report.as_dict(),
                            "certificate": certificate.as_dict(), "written": {}}
    if not certificate.holds:
        if args.json:
            print_result(data, "", True)
        certificate.require()  # nothing is written
    for option, path in (("-o", args.out), ("--onnx", args.onnx)):
        if path is None:
            continue
        with naming_option(before=f"{option} {path}: ", errors=(ExportError,)):
            check = export(folded, X, path)
        data["written"][str(path)] = None if check is None else {
            "holds": check.holds, "max_abs_diff": check.observed,
            "layers": [{"name": c.name, "observed": c.observed, "bound": c.bound, "slack": c.slack}
                       for c in check.layers]}
        say(f"wrote {path}" + ("" if check is None else f": {check}"))
    if args.json:
        print_result(data, "", True)
