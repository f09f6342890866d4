"""`bnfold reproduce` and `bnfold bench`: the long runs. Their options, names file and outputs are checked before
any experiment runs or anything is timed."""

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from core.app.devices import check_device
from core.app.errors import UsageError, naming_option
from core.app.outputs import check_output_dir
from core.app.process import warn


def cmd_reproduce(args: argparse.Namespace) -> None:
    from core.app.report import REPORT_JSON, summary_table
    from core.makemore.data import Split, build_dataset, load_split, resolve_names_path

    device = check_device(args.device)
    out = check_output_dir(default_out() if args.out is None else args.out, "--out",
                           resolve_names_path(args.names, fetch=False), REPORT_JSON)
    _, parts = load_split(resolve_names_path(args.names), Split(args.seed))

    from core.app.reproduce import reproduce

    splits = {k: build_dataset(v, 4) for k, v in parts.items()}
    report = reproduce(splits, steps=args.steps, seed=args.seed, out=out, device=device)
    print(summary_table(report))
    print(f"wall time {report['wall_time_s']:.0f}s; report, plots and {REPORT_JSON} in {out}")


def default_out() -> Path:
    """runs/<timestamp>: a new directory per run, named by its local start time."""
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def cmd_bench(args: argparse.Namespace) -> None:
    from core.makemore.data import read_names, require_enough_names, resolve_names_path, synthetic_names

    if args.fail is not None and args.compare is None:
        raise UsageError("--fail needs --compare NAME: it fails on ratios that regressed against a saved run")
    if args.device == "cuda":
        check_device(args.device)

    import torch

    from core.perf import bench, timing

    with naming_option(before="--fail: "):
        threshold = bench.parse_threshold(args.fail) if args.fail is not None else bench.DEFAULT_THRESHOLD
    cuda = ("cuda",) if torch.cuda.is_available() else ()
    devices = {"cpu": ("cpu",), "cuda": ("cuda",), "auto": ("cpu", *cuda)}[args.device]
    saved = None
    if args.compare is not None:
        with naming_option(before=f"--compare {args.compare}: ", after=f" (with bnfold bench --save {args.compare})"):
            saved = bench.load(args.compare)
        if not bench.comparable(saved["ratios"], devices):
            timed_on = sorted({bench.ratio_device(k) for k in saved["ratios"]})
            raise UsageError(f"--compare {args.compare}: its ratios were timed on {', '.join(timed_on)}, which this "
                             f"run does not time ({', '.join(devices)}): nothing would be compared; choose the "
                             f"devices with --device")
    if args.save is not None:  # the name and the place are checked now, not after the run
        with naming_option(before="--save: "):
            path = bench.ratios_path(args.save)
        check_output_dir(path.parent, "--save", None, path.name,
                         purpose=f"bench saves its ratios in the directory {path.parent}: move that file away")
    if args.onnx:  # its packages are checked now, not after the run
        from core.deploy import optional

        for package in ("onnx", "onnxscript", "onnxruntime"):
            optional(package, "bench --onnx")
    path = resolve_names_path(args.names, fetch=False)
    chosen = args.names is not None or bool(os.environ.get("BNFOLD_NAMES"))
    if chosen or path.exists():  # a names file asked for is read (or refused), never replaced by synthetic names
        names = read_names(path).names
    else:
        print(f"{path} not found: timing on synthetic names", file=sys.stderr)
        names = synthetic_names(32033)
    require_enough_names(len(names), path)
    if args.threads:
        torch.set_num_threads(args.threads)
    busy = timing.busy_warning()
    if busy:
        warn(f"{busy} (--threads 1)")
    settings = bench.QUICK if args.quick else bench.Settings()
    if args.quick:
        print("--quick: a smoke run; its numbers are too noisy to judge by", file=sys.stderr)
    settings = dataclasses.replace(settings, threads=args.threads)
    if args.rounds:  # every set, the torchvision rows too
        settings = dataclasses.replace(settings, rounds=args.rounds, torchvision_rounds=args.rounds)
    result = bench.measure(names, settings, devices, log=lambda msg: print(msg, file=sys.stderr))
    if args.onnx:
        from core.perf import bench_onnx

        rows = bench_onnx.QUICK if args.quick else bench_onnx.Settings()
        rows = dataclasses.replace(rows, threads=args.threads or rows.threads, rounds=args.rounds or rows.rounds)
        bench_onnx.extend(result, rows, log=lambda msg: print(msg, file=sys.stderr))
    print(bench.format_table(result))
    if args.save is not None:
        print(f"saved {bench.save(result, args.save)}")
    if saved is not None:
        changes, missing = bench.compare(saved["ratios"], result["ratios"], threshold)
        if not changes:
            raise UsageError(f"--compare {args.compare}: none of its {len(saved['ratios'])} ratios was measured in "
                             f"this run, so nothing was compared; run bench with the settings it was saved with")
        print(bench.format_comparison(args.compare, saved, changes, missing, threshold,
                                      result.get("unreliable", ())))
        if args.fail is not None and any(c.regressed for c in changes):
            raise SystemExit(1)
