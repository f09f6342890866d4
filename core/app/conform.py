"""bnfold conform: the laws run against every BatchNorm folder (bnfold's own and its peers'), the matrix written as
DIR/conformance.md and DIR/conformance.json (docs/ by default), atomically. Exit 1 if bnfold fails a law."""

import argparse
import os
import sys
from typing import Any

from core.app.arguments import integer_in
from core.app.errors import UsageError
from core.app.outputs import check_output_file

MARKDOWN, JSON = "conformance.md", "conformance.json"
DEFAULT_EXAMPLES = 20
MAX_EXAMPLES = 10_000


def add_conform_parser(sub: Any) -> None:
    """`bnfold conform [--folder KEY ...] [--examples N] [--out DIR]` on the command line's subparsers."""
    p = sub.add_parser("conform", help="run the laws against every BatchNorm folder; write docs/conformance.md")
    p.add_argument("--folder", nargs="+", metavar="KEY", help="only these folders (default: all of them)")
    p.add_argument("--examples", type=integer_in(1, MAX_EXAMPLES), default=DEFAULT_EXAMPLES,
                   help=f"cases per law and folder, 1..{MAX_EXAMPLES} (default {DEFAULT_EXAMPLES})")
    p.add_argument("--out", default="docs", metavar="DIR", help="where conformance.md and .json go (default docs)")
    p.set_defaults(func=cmd_conform)


def cmd_conform(args: argparse.Namespace) -> None:
    md = check_output_file(os.path.join(args.out, MARKDOWN), "--out")
    js = check_output_file(os.path.join(args.out, JSON), "--out")
    from core.conform.adapters import KEYS, folders
    from core.conform.folder import peer

    unknown = sorted(set(args.folder or ()) - set(KEYS))
    if unknown:
        raise UsageError(f"--folder {', '.join(unknown)}: no such folder; the folders are {', '.join(KEYS)}")
    peer("hypothesis", "bnfold conform")
    from core.conform.matrix import bnfold_failures, markdown, run_matrix, write

    chosen = folders(args.folder)
    matrix = run_matrix(chosen, args.examples, progress=lambda line: print(line, file=sys.stderr, flush=True))
    write(matrix, str(md), str(js))
    text = markdown(matrix)
    table = text[text.index("| folder |"):].split("\n\n", 1)[0]
    print(table)
    print(f"wrote {md} and {js} ({matrix.seconds:.0f} s, {matrix.examples} examples per law)")
    failed = bnfold_failures(matrix)
    if failed:
        print(f"bnfold fails {', '.join(failed)}: see {md}", file=sys.stderr)
        raise SystemExit(1)
