"""`bnfold` (= `python -m core`): data, train, eval, sample, and the subcommands added beside them.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

import argparse
import json
import sys

import torch

from core.cli_vision import add_arguments as add_torchvision_args
from core.errors import BnfoldError

EXIT_BAD_INPUT = 2


def add_names_arg(p):
    p.add_argument("--names", metavar="PATH", help="names.txt (default: $BNFOLD_NAMES, else data/names.txt, else download it)")


def add_json_arg(p):
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def load_splits(args, seed: int, context_length: int):
    """(names_path, names, {split: (X, Y)}) for the CLI's --names and the given seed."""
    from core.data import build_dataset, load_names, resolve_names_path, split_names

    path = resolve_names_path(args.names)
    names = load_names(path)
    parts = dict(zip(("train", "dev", "test"), split_names(names, seed)))
    return path, names, {k: build_dataset(v, context_length) for k, v in parts.items()}


def emit(args, data: dict, text: str):
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def cmd_data(args):
    from core.data import NAMES_SHA256, Vocab, file_sha256, load_names, resolve_names_path, split_sizes

    path = resolve_names_path(args.names)
    names = load_names(path)
    sizes = dict(zip(("train", "dev", "test"), split_sizes(len(names))))
    digest = file_sha256(path)
    data = {"path": str(path), "names": len(names), "vocab_size": Vocab().size, "splits": sizes,
            "sha256": digest, "checksum_ok": digest == NAMES_SHA256}
    text = (f"{path}: {len(names)} names, vocab {Vocab().size}, "
            f"splits {sizes['train']}/{sizes['dev']}/{sizes['test']}, checksum {'ok' if data['checksum_ok'] else 'MISMATCH'}")
    emit(args, data, text)


def cmd_train(args):
    from core.model import e01_mlp, e02_mlp, save
    from core.train import train

    _, _, splits = load_splits(args, args.seed, context_length=4)
    g = torch.Generator().manual_seed(args.seed)
    model = e01_mlp(g, init=args.init) if args.arch == "e01" else e02_mlp(g)
    X, Y = splits["train"]
    history = train(model, X, Y, args.steps, batch_size=args.batch_size, lr=args.lr, generator=g, device=args.device)
    model.eval()
    save(model.cpu(), args.out)
    print(f"trained {args.arch} for {args.steps} steps in {history.wall_time:.1f}s "
          f"(last loss {history.losses[-1]:.4f}); saved {args.out}")


@torch.no_grad()
def split_losses(model, splits) -> dict:
    model.eval()
    return {name: model.loss(X, Y).item() for name, (X, Y) in splits.items()}


def cmd_eval(args):
    from core.model import load

    model = load(args.checkpoint)
    _, _, splits = load_splits(args, args.seed, model.context_length)
    losses = split_losses(model, splits)
    emit(args, losses, "  ".join(f"{k} {v:.4f}" for k, v in losses.items()))


def cmd_sample(args):
    from core.model import load

    model = load(args.checkpoint)
    for name in model.sample(args.n, generator=torch.Generator().manual_seed(args.seed)):
        print(name)


def cmd_fold(args):
    from core.cli_vision import cmd_fold_torchvision
    from core.errors import UsageError
    from core.experiments import fold_agreement
    from core.fold import fold
    from core.model import load, save

    if args.torchvision:
        return cmd_fold_torchvision(args)
    if args.checkpoint is None or args.out is None:
        raise UsageError("fold needs a checkpoint and -o/--out (or --torchvision NAME)")
    model = load(args.checkpoint).eval()
    folded, report = fold(model)
    _, _, splits = load_splits(args, args.seed, model.context_length)
    dev = fold_agreement(model, folded, *splits["dev"])
    save(folded, args.out)
    print(report)
    print(f"dev loss: unfolded {dev.loss_unfolded:.10f}, folded {dev.loss_folded:.10f} (certified |Δ| <= {dev.loss_bound:.3e})")
    print(f"max |Δlogit| on dev: {dev.max_abs_logit_diff:.3e} (certified bound {dev.max_bound:.3e})")
    print(f"saved {args.out}")


def cmd_reproduce(args):
    from core.reproduce import default_out, reproduce
    from core.report import summary_table

    out = args.out or default_out()
    _, _, splits = load_splits(args, args.seed, context_length=4)
    report = reproduce(splits, steps=args.steps, seed=args.seed, out=out, device=args.device)
    print(summary_table(report))
    print(f"wall time {report['wall_time_s']:.0f}s; report, plots and report.json in {out}")


def cmd_bench(args):
    import dataclasses

    from core import bench
    from core.data import load_names, resolve_names_path, synthetic_names
    from core.errors import UsageError

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
    if bench.busy_warning():
        print(f"warning: {bench.busy_warning()}", file=sys.stderr)
    path = resolve_names_path(args.names, fetch=False)
    if path.exists():
        names = load_names(path)
    else:
        print(f"{path} not found: timing on synthetic names", file=sys.stderr)
        names = synthetic_names(32033)
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnfold", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="check names.txt and show the split sizes")
    add_names_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train the E01 or E02 net and save a checkpoint")
    p.add_argument("--arch", choices=("e01", "e02"), required=True)
    p.add_argument("--steps", type=positive_int, default=100_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--init", default="zeros", help="init scheme of the e01 net (default zeros)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="checkpoint path")
    add_names_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="train/dev/test loss of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--seed", type=int, default=42, help="split seed (the one used to train)")
    add_names_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="draw names from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    add_names_arg(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("fold", help="fold every foldable BatchNorm into its Linear and save the folded checkpoint")
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("-o", "--out", help="folded checkpoint path")
    p.add_argument("--seed", type=int, default=42, help="split seed (the one used to train)")
    add_names_arg(p)
    add_torchvision_args(p)
    p.set_defaults(func=cmd_fold)

    p = sub.add_parser("reproduce", help="run E01 and E02 with the seed's recipe; write report.json, report.md, plots")
    p.add_argument("--steps", type=positive_int, default=100_000, help="training steps per experiment (default 100000)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="output directory (default runs/<timestamp>)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    add_names_arg(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("bench", help="time folded vs unfolded inference, training and data prep; print ratios")
    p.add_argument("--quick", action="store_true", help="a few seconds, small batches (a smoke run, not a measurement)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per set (default 51, quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: the CPU, and CUDA when available")
    p.add_argument("--save", metavar="NAME", help="write the ratios to .benchmarks/ratios-NAME.json")
    p.add_argument("--compare", metavar="NAME", help="compare with .benchmarks/ratios-NAME.json (marks growth over 10%%)")
    p.add_argument("--fail", metavar="PCT", help="with --compare: exit 1 if any ratio grew by more than PCT (e.g. 10%%)")
    p.add_argument("--names", metavar="PATH", help="names.txt (default: $BNFOLD_NAMES, else data/names.txt, else "
                                                   "synthetic names; bench never downloads)")
    p.set_defaults(func=cmd_bench)

    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except BnfoldError as e:
        print(f"bnfold: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 0
    return 0
