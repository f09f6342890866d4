"""`bnfold` (= `python -m core`): data, train, eval, sample, fold, reproduce, bench and conform.

Every input is checked before any work starts: numbers, devices, init schemes, and output paths
(a write is proven possible before training). Any failure ends with one line on stderr, no
traceback, and exit code 2; Ctrl-C ends with one line and 130, SIGTERM with 143. Torch is imported
only once the arguments have parsed, so a mistyped option fails at once.
"""

import argparse
import os
import re
import sys
from collections.abc import Sequence

from core.app.arguments import (
    OneLineParser,
    batch_size_arg,
    image_size_arg,
    input_shape_arg,
    lr_arg,
    rounds_arg,
    samples_arg,
    seed_arg,
    steps_arg,
    threads_arg,
)
from core.app.checkpoints import cmd_eval, cmd_fold, cmd_sample
from core.app.conform import add_conform_parser
from core.app.errors import UsageError
from core.app.fold_model import chosen, cmd_fold_model
from core.app.fold_torchvision import BOUND_SIZE, IMAGE_SIZE, ROUNDS, cmd_fold_torchvision
from core.app.names import cmd_data
from core.app.process import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    discard_stdout,
    one_line_signals_and_warnings,
    report_error,
    stdout_writable,
)
from core.app.runs import cmd_bench, cmd_reproduce
from core.app.training import cmd_train
from core.errors import BnfoldError, DataError, os_error_text
from core.limits import MAX_BATCH_SIZE, MAX_LR, MAX_SAMPLES, MAX_STEPS


def add_names_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", metavar="PATH",
                   help="names.txt (default: $BNFOLD_NAMES, else data/names.txt, else download it)")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def fold_command(args: argparse.Namespace) -> None:
    """`fold --model SPEC` or `fold --torchvision NAME --weights FILE` (a model of your own), `fold --torchvision NAME`
    (random weights, timed), or `fold CHECKPOINT -o OUT`."""
    if chosen(args):
        cmd_fold_model(args)
        return
    if args.input_shape is not None:
        raise UsageError("--input-shape applies to fold --model or --weights: drop it (a checkpoint is certified on "
                         "its dev rows, --torchvision on random images of --bound-size)")
    if args.torchvision is not None:
        if args.onnx is not None:
            raise UsageError("--onnx writes a model of your own (fold --model, or --torchvision NAME --weights FILE) "
                             "or a checkpoint's fold: drop --onnx here")
        cmd_fold_torchvision(args)
    else:
        cmd_fold(args)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bnfold", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    seed_help = "split seed (default: the one the checkpoint records; another one is warned about)"

    p = sub.add_parser("data", help="check names.txt and show the split sizes")
    add_names_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train the E01 or E02 net and save a checkpoint")
    p.add_argument("--arch", choices=("e01", "e02"), required=True)
    p.add_argument("--steps", type=steps_arg, default=100_000, help=f"SGD steps, 1..{MAX_STEPS} (default 100000)")
    p.add_argument("--seed", type=seed_arg, default=42, help="seed of the split, the init and the batches (default 42)")
    p.add_argument("--batch-size", type=batch_size_arg, default=64,
                   help=f"rows per step, 1..{MAX_BATCH_SIZE}; at least 2 for e02 (default 64)")
    p.add_argument("--lr", type=lr_arg, default=0.1, help=f"learning rate, 0 < lr <= {MAX_LR:g} (default 0.1)")
    p.add_argument("--init", default=None, help="init scheme of the e01 net (default zeros); refused for e02")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or mps")
    p.add_argument("--out", required=True, help="checkpoint path (a new file or a regular file to replace)")
    add_names_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="train/dev/test loss of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--seed", type=seed_arg, default=None, help=seed_help)
    add_names_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="draw names from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("-n", type=samples_arg, default=10, help=f"how many names, 1..{MAX_SAMPLES} (default 10)")
    p.add_argument("--seed", type=seed_arg, default=0, help="sampling seed (default 0)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("fold", help="fold every foldable BatchNorm into its Linear and save the folded checkpoint")
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("-o", "--out", help="where the fold goes: a checkpoint for a checkpoint, a .pt2 torch.export "
                                         "program for --model or --weights")
    p.add_argument("--seed", type=seed_arg, default=None, help=seed_help)
    add_names_arg(p)
    p.add_argument("--torchvision", metavar="NAME", help="fold torchvision's NAME (e.g. resnet18) with random weights "
                                                         "instead of a checkpoint; needs torchvision")
    p.add_argument("--image-size", type=image_size_arg, default=None,
                   help=f"with --torchvision: image size of the timing (default {IMAGE_SIZE})")
    p.add_argument("--bound-size", type=image_size_arg, default=None,
                   help=f"with --torchvision: image size of the max |Δ| vs bound check (default {BOUND_SIZE})")
    p.add_argument("--rounds", type=rounds_arg, default=None,
                   help=f"with --torchvision: interleaved timing rounds (default {ROUNDS})")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="with --torchvision or --model: torch CPU threads (default: torch's own)")
    p.add_argument("--model", metavar="SPEC", help="fold the model package.module:factory returns (a function of no "
                                                    "arguments), or timm:NAME (needs timm)")
    p.add_argument("--weights", metavar="FILE", help="with --torchvision NAME or --model: load this state_dict "
                                                      "(torch.save(model.state_dict(), FILE)) before folding")
    p.add_argument("--input-shape", type=input_shape_arg, default=None, metavar="SHAPE",
                   help="with --model or --weights: the example input, e.g. 1,3,224,224 (default: a torchvision or "
                        "timm model's documented size)")
    p.add_argument("--onnx", metavar="FILE", help="also write the folded model as ONNX (needs the onnx extra), once "
                                                   "ONNX Runtime computes it layer by layer")
    add_json_arg(p)
    p.set_defaults(func=fold_command)

    p = sub.add_parser("reproduce", help="run E01 and E02 with the notebook's recipe; write reports and plots")
    p.add_argument("--steps", type=steps_arg, default=100_000,
                   help=f"training steps per experiment, 1..{MAX_STEPS} (default 100000)")
    p.add_argument("--seed", type=seed_arg, default=42)
    p.add_argument("--out", default=None, help="output directory (default runs/<timestamp>)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    add_names_arg(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("bench", help="time folded vs unfolded inference, training and data prep; print ratios")
    p.add_argument("--quick", action="store_true", help="a few seconds, small batches (a smoke run, not a measurement)")
    p.add_argument("--onnx", action="store_true",
                   help="also time resnet18 and mobilenet_v2 in ONNX Runtime, unfolded and folded, optimisations "
                        "off/basic/all (needs the onnx extra)")
    p.add_argument("--rounds", type=rounds_arg, default=None, help="interleaved rounds per set (default 51, quick 3)")
    p.add_argument("--threads", type=threads_arg, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: the CPU, and CUDA when available")
    p.add_argument("--save", metavar="NAME", help="write the ratios to .benchmarks/ratios-NAME.json")
    p.add_argument("--compare", metavar="NAME",
                   help="compare with .benchmarks/ratios-NAME.json (marks growth over 10%%)")
    p.add_argument("--fail", metavar="PCT",
                   help="with --compare: exit 1 if any ratio grew by more than PCT (e.g. 10%%)")
    p.add_argument("--names", metavar="PATH", help="names.txt (default: $BNFOLD_NAMES, else data/names.txt, else "
                                                   "synthetic names if it is missing; bench never downloads)")
    p.set_defaults(func=cmd_bench)

    add_conform_parser(sub)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; every failure becomes one line on stderr and an exit code.

    Every BnfoldError is a cause outside the code (bad input, a full disk) and is told as its message; any other
    exception is a bug, told in one line too (BNFOLD_DEBUG=1 raises it with its traceback instead).
    """
    args = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help (0) or a usage error, already reported in one line (2)
            return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
        if sys.stdout is None:  # started with standard output closed (>&-)
            raise UsageError("standard output is closed; bnfold writes its results there: redirect it to a file "
                             "(> FILE), or to /dev/null to discard them")
        args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        report_error("interrupted (Ctrl-C); nothing was written that was not complete")
        return EXIT_INTERRUPTED
    except Terminated:
        report_error("terminated (SIGTERM); nothing was written that was not complete")
        return EXIT_TERMINATED
    except BrokenPipeError:
        discard_stdout()
        report_error("the output pipe was closed before all output was written (broken pipe)")
        return EXIT_BAD_INPUT
    except DataError as e:  # the names file: say which option chooses another
        report_error(f"{e} (--names PATH chooses the names file)" if hasattr(args, "names") else str(e))
        return EXIT_BAD_INPUT
    except BnfoldError as e:
        report_error(str(e))
        return EXIT_BAD_INPUT
    except MemoryError:
        report_error(f"out of memory; {memory_hint(args)}")
        return EXIT_BAD_INPUT
    except RuntimeError as e:  # torch's allocators raise RuntimeError (or OutOfMemoryError), not MemoryError
        if not out_of_memory(e):
            if os.environ.get("BNFOLD_DEBUG"):
                raise
            report_error(bug_line(e))
            return EXIT_BAD_INPUT
        report_error(f"out of memory{allocation(e)}; {memory_hint(args)}")
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.filename:
            where = f"{e.filename}: "
        else:  # no file named: standard output, if it cannot take what is still buffered for it
            where = "" if stdout_writable() else "cannot write standard output: "
        report_error(f"{where}{os_error_text(e)}")
        return EXIT_BAD_INPUT
    except Exception as e:
        if os.environ.get("BNFOLD_DEBUG"):
            raise
        report_error(bug_line(e))
        return EXIT_BAD_INPUT
    return 0


def bug_line(error: Exception) -> str:
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (f"unexpected {type(error).__name__}{': ' + detail if detail else ''} "
            f"(a bug; BNFOLD_DEBUG=1 shows the traceback)")


_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|not enough memory", re.IGNORECASE)
_TRIED = re.compile(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)", re.IGNORECASE)


def out_of_memory(error: RuntimeError) -> bool:
    """Whether a RuntimeError is an allocator's failure: torch's OutOfMemoryError (CUDA), or the CPU allocator's
    "can't allocate memory" (which torch raises as a plain RuntimeError)."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom is not None and isinstance(error, oom)) or bool(_OUT_OF_MEMORY.search(str(error)))


def allocation(error: RuntimeError) -> str:
    """' (an allocation of 8.6 GB failed)' from the allocator's message, or '' when it names no size."""
    match = _TRIED.search(str(error))
    if not match:
        return ""
    number, unit = float(match.group(1)), match.group(2).upper()
    scale = {"BYTES": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
             "TIB": 2**40}[unit]
    return f" (an allocation of {number * scale / 1e9:.1f} GB failed)"


MEMORY_HINTS = {  # what each command can make smaller
    "train": "a smaller --batch-size or names file (--names)",
    "eval": "a smaller names file (--names)",
    "sample": "a smaller -n",
    "fold": "a smaller names file (--names)",
    "reproduce": "a smaller names file (--names)",
    "bench": "--quick, or a smaller names file (--names)",
    "data": "a smaller names file (--names)",
}


def memory_hint(args: argparse.Namespace | None) -> str:
    """What to make smaller, for the command that ran out of memory."""
    command = getattr(args, "command", None)
    if command == "fold" and getattr(args, "torchvision", None) is not None:
        return "give a smaller --image-size or --bound-size, or a smaller model"
    return f"use {MEMORY_HINTS.get(command or '', 'a smaller input')}"


def main(argv: Sequence[str] | None = None) -> int:
    """The `bnfold` entry point: `run`, with SIGTERM turned into a clean one-line exit and Python warnings
    printed as one `bnfold: warning:` line each, while it runs."""
    with one_line_signals_and_warnings():
        return run(argv)
