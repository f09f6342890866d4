"""`bnfold` (= `python -m core`): data, train, eval, sample, and the subcommands added beside them.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

import argparse
import json
import sys

import torch

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnfold", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="check names.txt and show the split sizes")
    add_names_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train the E01 or E02 net and save a checkpoint")
    p.add_argument("--arch", choices=("e01", "e02"), required=True)
    p.add_argument("--steps", type=int, default=100_000)
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
