"""`bnfold fold --torchvision NAME`: fold a torchvision architecture (random weights, BatchNorm statistics from a few
training-mode forwards) and print the report, the count against torch.fx's fuse, the certificate on two images, and
the speed-up at B = 1 and 8 (interleaved medians), also in the channels-last layout (core.perf.layout). Exit 2 when
the certificate does not hold."""

import argparse
import time

from core.app.errors import UsageError, naming_option
from core.app.process import print_result
from core.errors import ModelError


def cmd_fold_torchvision(args: argparse.Namespace) -> None:
    import torch

    from core import vision
    from core.engine.certify import certify
    from core.engine.fold import fold
    from core.perf import bench_models

    if args.checkpoint is not None or args.out is not None:
        raise UsageError("--torchvision folds a model it builds: give no checkpoint and no -o")
    name = args.torchvision
    with naming_option(before=f"--torchvision {name}: ", errors=(ModelError,)):
        vision.check_architecture(name)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed = 0 if args.seed is None else args.seed
    say = (lambda text: None) if args.json else print
    say(f"torchvision {name}: random weights and BatchNorm statistics (seed {seed}), "
        f"{torch.get_num_threads()} thread(s)")
    model = vision.build(name, seed=seed, image_size=args.bound_size)
    start = time.perf_counter()
    folded, report = fold(model)
    seconds = time.perf_counter() - start
    _, theirs = vision.fx_folded(model)
    ours = {p.bn for p in report.folded}
    say(str(report))
    covers = "every pair it folds, fold folds too" if theirs <= ours else f"it folds {sorted(theirs - ours)} too"
    say(f"fold: {len(report.folded)} folded, {len(report.kept)} kept in {seconds:.2f} s; torch.fx fuse: "
        f"{len(theirs)} folded ({covers})")
    X = vision.images(2, args.bound_size, seed + 1)
    start = time.perf_counter()
    certificate = certify(model, folded, X, report)
    certified = time.perf_counter() - start
    say(f"on 2 images of {args.bound_size}², in {certified:.2f} s: {certificate}")
    if not certificate.holds:
        if args.json:
            print_result({"model": name, "report": report.as_dict(), "certificate": certificate.as_dict()}, "", True)
        certificate.require()
    timed = bench_models.speed(model, args.image_size, (1, 8), args.rounds, seed)
    say(f"speed, median per call ({args.image_size}² images, {args.rounds} interleaved rounds):")
    for batch, t in timed.items():
        times = ", ".join(f"{variant} {seconds * 1e3:.2f} ms" for variant, seconds in t.items())
        ratios = ", ".join(f"{label} {t[ours] / t[reference]:.3f}" for label, ours, reference in bench_models.RATIOS)
        say(f"  B={batch}: {times}; speed-up {t['unfolded'] / t['folded']:.2f}x "
            f"({t['unfolded'] / t[bench_models.FOLDED_CL]:.2f}x channels-last)\n    {ratios}")
    if args.json:
        print_result({"model": name, "seed": seed, "report": report.as_dict(), "fold_seconds": seconds,
                      "torch_fx_fuse": sorted(theirs), "certificate": certificate.as_dict(),
                      "certify_seconds": certified, "image_size": args.image_size,
                      "speed_seconds": {str(batch): t for batch, t in timed.items()}}, "", True)
