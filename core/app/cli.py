"""`bnfold` (= `python -m core`): data, train, eval, sample, and the subcommands added beside them.

Every input is checked before any work starts: numbers, devices, init schemes, and output paths
(a write is proven possible before training). Any failure ends with one line on stderr, no
traceback, and exit code 2; Ctrl-C ends with one line and 130. Torch is imported only once the
arguments have parsed, so a mistyped option fails at once.
"""

import argparse
import json
import math
import os
import re
import signal
import sys
import warnings

from core.errors import (
    BnfoldError,
    CheckpointError,
    TrainingError,
    UsageError,
    os_error_text,
)
from core.limits import (
    BATCHNORM_MIN_BATCH,
    MAX_BATCH_SIZE,
    MAX_LR,
    MAX_ROUNDS,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    MAX_THREADS,
    SAMPLE_CHUNK,
)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
DIVERGENCE_CHECK_EVERY = 100  # training steps between checks that every parameter is still finite
INIT_CHECK_ROWS = 256  # rows of the training set on which a fresh net's loss must be finite


# One line on stderr, whatever the message holds.

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """`text` with every control character (newlines, ANSI escapes) shown as \\xNN, so it prints as one plain line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def report_error(message: str) -> None:
    print(f"bnfold: error: {one_line(message)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"bnfold: warning: {one_line(message)}", file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2) instead of a usage block."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


# Numbers: finite and in range, or one line naming the option, the range and the value.

def _integer(text: str) -> int | None:
    """The integer written in `text` (digits, an optional sign, _ separators), else None; huge ones stay exact."""
    digits = text.strip().replace("_", "")
    if not re.fullmatch(r"[+-]?\d+", digits):
        return None
    if len(digits.lstrip("+-").lstrip("0")) > 40:  # beyond every range here; int() of 4300+ digits would refuse
        return -(10**41) if digits.startswith("-") else 10**41
    return int(digits)


def shown(text: str) -> str:
    """A user's value for an error message: as typed, or its start and length when it is very long."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def integer_in(low: int, high: int, what: str = "an integer"):
    """An argparse type accepting integers low..high, refusing anything else in one line."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what} from {low} to {high}, got {shown(text)}")
        return value

    parse.__name__ = what
    return parse


def number_in(low: float, high: float, what: str = "a number"):
    """An argparse type accepting finite numbers with low < x <= high, refusing nan, inf and overflow."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low < value <= high):
            raise argparse.ArgumentTypeError(f"must be {what} greater than {low:g} and at most {high:g}, "
                                             f"got {shown(text)}")
        return value

    parse.__name__ = what
    return parse


steps_arg = integer_in(1, MAX_STEPS, "a step count")
seed_arg = integer_in(0, MAX_SEED, "a seed")
batch_size_arg = integer_in(1, MAX_BATCH_SIZE, "a batch size")
lr_arg = number_in(0.0, MAX_LR, "a learning rate")
samples_arg = integer_in(1, MAX_SAMPLES, "a count of names")
rounds_arg = integer_in(1, MAX_ROUNDS, "a count of rounds")
threads_arg = integer_in(1, MAX_THREADS, "a thread count")


# Checks that need more than one option, or torch: all run before any data is read or any step taken.

def check_device(text: str) -> str:
    """`text` if it names a device this machine has (cpu, cuda, cuda:N, mps), else a UsageError saying why."""
    if text == "cpu":
        return text
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {text}: not a device name; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {text}: Apple MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {text}: bnfold runs on cpu, cuda or mps")
    return text


def check_init(args) -> str:
    """The init scheme to build the net with; refuses a scheme that does not parse or has a non-finite value,
    and any --init for e02 (whose init is fixed), rather than ignore it."""
    if args.arch == "e02":
        if args.init is not None:
            raise UsageError(f"--init {args.init}: --init applies to --arch e01 only; the e02 net is always "
                             f"built with kaiming(5/3) and BatchNorm; drop --init")
        return "kaiming(5/3)"
    if args.init is None:
        return "zeros"
    scheme = args.init
    from core.makemore.init import parse_scheme

    try:
        _, value = parse_scheme(scheme)
    except (ValueError, OverflowError) as e:
        reason = str(e) if isinstance(e, ValueError) else "its value overflows a float"
        raise UsageError(f"--init {scheme}: {reason}") from None
    if value is not None and not math.isfinite(value):
        raise UsageError(f"--init {scheme}: its value must be a finite number")
    return scheme


def names_path(args, fetch: bool = True):
    from core.makemore.data import resolve_names_path

    return resolve_names_path(args.names, fetch=fetch)


def check_out(path, label: str, **protected):
    """Prove --out writable now (see core.atomic.check_target), never over an input of this command."""
    from core.atomic import check_target

    return check_target(path, label, {what.replace("_", " "): p for what, p in protected.items()})


def load_usable_checkpoint(path, purpose: str):
    """The checkpoint at `path`, refused (CheckpointError) if any weight is nan or inf: no silent nan output."""
    from core.makemore.checkpoint import load_checkpoint
    from core.makemore.model import nonfinite_tensors

    checkpoint = load_checkpoint(path)
    bad = nonfinite_tensors(checkpoint.model)
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {', '.join(bad)}; {purpose} would give nan; "
                              f"retrain it (a lower --lr usually avoids divergence)")
    return checkpoint


def evaluation_split(checkpoint, seed, checkpoint_path):
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


def load_evaluation_names(args, checkpoint, split):
    """{part: names} for `split`, warning when the names file is not the one the checkpoint was trained on."""
    from core.makemore.data import file_sha256, load_split

    path = names_path(args)
    _, parts = load_split(path, split)
    if checkpoint.names_sha256 is not None and file_sha256(path) != checkpoint.names_sha256:
        warn(f"{path} is not the names file {args.checkpoint} was trained on (its sha256 differs): "
             f"the parts hold other names; pass --names with the training file")
    return parts


def emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, allow_nan=False) if getattr(args, "json", False) else text)


# Commands.

def cmd_data(args):
    from core.makemore.data import (
        NAMES_SHA256,
        Vocab,
        file_sha256,
        load_names,
        require_enough_names,
        split_sizes,
    )

    path = names_path(args)
    names = load_names(path)
    require_enough_names(len(names), path)
    sizes = dict(zip(("train", "dev", "test"), split_sizes(len(names)), strict=True))
    digest = file_sha256(path)
    data = {"path": str(path), "names": len(names), "vocab_size": Vocab().size, "splits": sizes,
            "sha256": digest, "checksum_ok": digest == NAMES_SHA256}
    text = (f"{path}: {len(names)} names, vocab {Vocab().size}, "
            f"splits {sizes['train']}/{sizes['dev']}/{sizes['test']}, "
            f"checksum {'ok' if data['checksum_ok'] else 'MISMATCH'}")
    emit(args, data, text)


def cmd_train(args):
    # Everything that can be refused is refused before the names are read or the net is built.
    if args.arch == "e02" and args.batch_size < BATCHNORM_MIN_BATCH:
        raise UsageError(f"--batch-size {args.batch_size}: the e02 net's BatchNorm needs at least "
                         f"{BATCHNORM_MIN_BATCH} rows per batch (the variance of one row is undefined)")
    scheme = check_init(args)
    device = check_device(args.device) if args.device is not None else None
    check_out(args.out, "--out", the_names_file=names_path(args, fetch=False))

    from core.makemore.data import Split, dataset_chunks, file_sha256, load_split

    path = names_path(args)
    split = Split(args.seed)
    _, parts = load_split(path, split)

    import torch

    from core.makemore.checkpoint import save
    from core.makemore.model import e01_mlp, e02_mlp, nonfinite_tensors
    from core.makemore.train import train

    chunks = list(dataset_chunks(parts["train"], 4))
    X, Y = torch.cat([x for x, _ in chunks]), torch.cat([y for _, y in chunks])
    del chunks
    g = torch.Generator().manual_seed(args.seed)
    model = e01_mlp(g, init=scheme) if args.arch == "e01" else e02_mlp(g)
    check_initial_loss(model, X, Y, scheme)

    def stop_on_divergence(step, model):
        if step % DIVERGENCE_CHECK_EVERY == DIVERGENCE_CHECK_EVERY - 1 and nonfinite_tensors(model):
            raise TrainingError(f"training diverged: parameters became nan or inf by step {step + 1} "
                                f"(--lr {args.lr:g}); lower --lr; nothing was saved")

    history = train(model, X, Y, args.steps, batch_size=args.batch_size, lr=args.lr, generator=g, device=device,
                    on_step=stop_on_divergence)
    model.eval()
    if nonfinite_tensors(model) or not math.isfinite(history.losses[-1]):
        raise TrainingError(f"training diverged: the last loss is {history.losses[-1]} (--lr {args.lr:g}); "
                            f"lower --lr; nothing was saved")
    save(model.cpu(), args.out, split=split, names_sha256=file_sha256(path))
    print(f"trained {args.arch} for {args.steps} steps in {history.wall_time:.1f}s "
          f"(last loss {history.losses[-1]:.4f}); saved {one_line(args.out)}")


def check_initial_loss(model, X, Y, scheme: str) -> None:
    """Refuse an init under which the fresh net's loss is already nan or inf (it overflows), before training."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model.loss(X[:INIT_CHECK_ROWS], Y[:INIT_CHECK_ROWS]).item()
    model.train(was_training)
    if not math.isfinite(loss):
        raise UsageError(f"--init {scheme}: the freshly built net's loss is already {loss} (its activations "
                         f"overflow); choose a smaller value")


def require_finite_losses(losses: dict, checkpoint_path) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise CheckpointError(f"{checkpoint_path}: the loss is not finite ({shown}): the net's forward overflows "
                              f"its dtype on these names; evaluate a float32 or float64 copy")


def cmd_eval(args):
    from core.makemore.evaluate import split_losses

    checkpoint = load_usable_checkpoint(args.checkpoint, "evaluating it")
    split = evaluation_split(checkpoint, args.seed, args.checkpoint)
    parts = load_evaluation_names(args, checkpoint, split)
    losses = split_losses(checkpoint.model, parts)
    require_finite_losses(losses, args.checkpoint)
    emit(args, losses, "  ".join(f"{k} {v:.4f}" for k, v in losses.items()))


def cmd_sample(args):
    import torch

    checkpoint = load_usable_checkpoint(args.checkpoint, "sampling from it")
    generator = torch.Generator().manual_seed(args.seed)
    for start in range(0, args.n, SAMPLE_CHUNK):
        names = checkpoint.model.sample(min(SAMPLE_CHUNK, args.n - start), generator=generator)
        sys.stdout.write("".join(f"{name}\n" for name in names))
        sys.stdout.flush()


def cmd_fold(args):
    from core.errors import UsageError

    if args.torchvision:
        from core.app.fold_torchvision import cmd_fold_torchvision

        return cmd_fold_torchvision(args)
    if args.checkpoint is None or args.out is None:
        raise UsageError("fold needs a checkpoint and -o/--out (or --torchvision NAME)")
    check_out(args.out, "-o", the_checkpoint_being_folded=args.checkpoint,
              the_names_file=names_path(args, fetch=False))

    from core.engine.fold import fold
    from core.makemore.checkpoint import save
    from core.makemore.evaluate import split_agreement

    checkpoint = load_usable_checkpoint(args.checkpoint, "folding it")
    model = checkpoint.model.eval()
    folded, report = fold(model)
    split = evaluation_split(checkpoint, args.seed, args.checkpoint)
    parts = load_evaluation_names(args, checkpoint, split)
    dev = split_agreement(model, folded, parts["dev"])
    if not all(map(math.isfinite, (dev.loss_unfolded, dev.loss_folded, dev.max_abs_logit_diff))):
        raise CheckpointError(f"{args.checkpoint}: the dev loss or logits are not finite (unfolded "
                              f"{dev.loss_unfolded}, folded {dev.loss_folded}): the net overflows its dtype; "
                              f"fold a float32 or float64 copy")
    save(folded, args.out, split=checkpoint.split if checkpoint.split_recorded else None,
         names_sha256=checkpoint.names_sha256)
    print(report)
    print(f"dev loss: unfolded {dev.loss_unfolded:.10f}, folded {dev.loss_folded:.10f} "
          f"(certified |Δ| <= {dev.loss_bound:.3e})")
    print(f"max |Δlogit| on dev: {dev.max_abs_logit_diff:.3e} (certified bound {dev.max_bound:.3e})")
    print(f"saved {one_line(args.out)}")


def check_out_dir(out, names) -> None:
    """--out of reproduce: a directory, made if missing, in which files can be created; never a file such as the
    names file. A report already there is left alone until the run replaces it."""
    from core.atomic import check_target, same_file

    if os.path.lexists(out) and not os.path.isdir(out):
        what = "the names file" if names is not None and same_file(out, names) else "a file"
        raise UsageError(f"--out {out}: is {what}, not a directory; reproduce writes a directory of reports "
                         f"and plots: choose a directory path")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create this directory ({os_error_text(e)}); "
                         f"choose a writable place") from e
    check_target(os.path.join(out, "report.json"), "--out")


def cmd_reproduce(args):
    device = check_device(args.device)
    if args.out is None:
        from core.app.reproduce import default_out

    out = args.out or default_out()
    check_out_dir(out, names_path(args, fetch=False))

    from core.makemore.data import Split, build_dataset, load_split

    _, parts = load_split(names_path(args), Split(args.seed))

    from core.app.report import summary_table
    from core.app.reproduce import reproduce

    splits = {k: build_dataset(v, 4) for k, v in parts.items()}
    report = reproduce(splits, steps=args.steps, seed=args.seed, out=out, device=device)
    print(summary_table(report))
    print(f"wall time {report['wall_time_s']:.0f}s; report, plots and report.json in {out}")


def cmd_bench(args):
    import dataclasses

    import torch

    from core.errors import UsageError
    from core.makemore.data import load_names, require_enough_names, resolve_names_path, synthetic_names
    from core.perf import bench, timing

    if args.fail is not None and args.compare is None:
        raise UsageError("--fail needs --compare NAME: it fails on ratios that regressed against a saved run")
    threshold = bench.parse_threshold(args.fail) if args.fail is not None else bench.DEFAULT_THRESHOLD
    saved = bench.load(args.compare) if args.compare else None
    if args.save:
        bench.ratios_path(args.save)  # a bad name fails now, not after the run
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available here")
    cuda = ["cuda"] if torch.cuda.is_available() else []
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "auto": ["cpu", *cuda]}[args.device]
    if args.threads:
        torch.set_num_threads(args.threads)
    busy = timing.busy_warning()
    if busy:
        print(f"warning: {busy}", file=sys.stderr)
    path = resolve_names_path(args.names, fetch=False)
    if path.exists():
        names = load_names(path)
    else:
        print(f"{path} not found: timing on synthetic names", file=sys.stderr)
        names = synthetic_names(32033)
    require_enough_names(len(names), path)
    settings = bench.QUICK if args.quick else bench.Settings()
    if args.quick:
        print("--quick: a smoke run; its numbers are too noisy to judge by", file=sys.stderr)
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    result = bench.measure(names, settings, devices, log=lambda msg: print(msg, file=sys.stderr))
    print(bench.format_table(result))
    if args.save:
        print(f"saved {bench.save(result, args.save)}")
    if saved is not None:
        changes, missing = bench.compare(saved["ratios"], result["ratios"], threshold)
        print(bench.format_comparison(args.compare, saved, changes, missing, threshold))
        if args.fail is not None and any(c.regressed for c in changes):
            raise SystemExit(1)


def add_names_arg(p):
    p.add_argument("--names", metavar="PATH",
                   help="names.txt (default: $BNFOLD_NAMES, else data/names.txt, else download it)")


def add_json_arg(p):
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bnfold", description=__doc__.splitlines()[0])
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
    p.add_argument("-o", "--out", help="folded checkpoint path (never the input checkpoint)")
    p.add_argument("--seed", type=seed_arg, default=None, help=seed_help)
    add_names_arg(p)
    from core.app.fold_torchvision import add_arguments as add_torchvision_args

    add_torchvision_args(p)
    p.set_defaults(func=cmd_fold)

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
                                                   "synthetic names; bench never downloads)")
    p.set_defaults(func=cmd_bench)

    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that writes in progress clean up like on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush into a closed pipe raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _stdout_writable() -> bool:
    """Flush stdout; if it fails, point it at /dev/null (so the interpreter's exit raises nothing) and say so."""
    try:
        sys.stdout.flush()
        return True
    except (OSError, ValueError):
        _discard_stdout()
        return False


def run(argv=None) -> int:
    """Parse and run one command; every failure becomes one line on stderr and an exit code."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help (0) or a usage error, already reported in one line (2)
            return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
        args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        report_error("interrupted (Ctrl-C); nothing was written that was not complete")
        return EXIT_INTERRUPTED
    except Terminated:
        report_error("terminated (SIGTERM); nothing was written that was not complete")
        return EXIT_TERMINATED
    except BrokenPipeError:
        _discard_stdout()
        report_error("the output pipe was closed before all output was written (broken pipe)")
        return EXIT_BAD_INPUT
    except BnfoldError as e:
        report_error(str(e))
        return EXIT_BAD_INPUT
    except MemoryError:
        report_error("out of memory; use a smaller input (--names, --batch-size, -n)")
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.filename:
            where = f"{e.filename}: "
        else:  # no file named: standard output, if it cannot take what is still buffered for it
            where = "" if _stdout_writable() else "cannot write standard output: "
        report_error(f"{where}{os_error_text(e)}")
        return EXIT_BAD_INPUT
    except Exception as e:
        if os.environ.get("BNFOLD_DEBUG"):
            raise
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        report_error(f"unexpected {type(e).__name__}{': ' + detail if detail else ''} "
                     f"(a bug; BNFOLD_DEBUG=1 shows the traceback)")
        return EXIT_BAD_INPUT
    return 0


def _warning_line(message, category, filename, lineno, file=None, line=None):
    warn(f"{category.__name__}: {message}")


def main(argv=None) -> int:
    """The `bnfold` entry point: `run`, with SIGTERM turned into a clean one-line exit and Python warnings
    (from torch or elsewhere) printed as one `bnfold: warning:` line each, while it runs."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        pass
    show_warning, warnings.showwarning = warnings.showwarning, _warning_line
    try:
        return run(argv)
    finally:
        warnings.showwarning = show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
