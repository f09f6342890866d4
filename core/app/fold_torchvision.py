"""`bnfold fold --torchvision NAME`: fold a torchvision architecture (random weights, BatchNorm statistics from a few
training-mode forwards) and print the report, the count against torch.fx's fuse, the certificate on two images, and
the speed-up at B = 1 and 8 (interleaved medians with their spread), also in the channels-last layout
(core.perf.layout). Exit 2 when the certificate does not hold.

Before any of that, the image sizes are checked against the architecture on the meta device (shapes only, no memory
and no arithmetic): a size the model cannot run on, or whose activations cannot fit in the memory available, is
refused naming the option."""

import argparse
import math
import time
from typing import TYPE_CHECKING

from core.app.errors import UsageError, naming_option
from core.app.process import print_result
from core.errors import ModelError

if TYPE_CHECKING:
    from core.perf.timing import Timing

IMAGE_SIZE, BOUND_SIZE, ROUNDS = 224, 64, 9  # the defaults of --image-size, --bound-size and --rounds
TIMED_BATCHES = (1, 8)
STATISTICS_BATCH = 4  # images per training-mode forward that estimates the BatchNorm statistics (vision.build)
CERTIFIED_IMAGES = 2
MEMINFO = "/proc/meminfo"


def available_memory() -> int | None:
    """Bytes of memory a new allocation can have now: MemAvailable in /proc/meminfo (None where there is none)."""
    try:
        with open(MEMINFO) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


# How each image size is used: (option, [(images, bytes per element / 4, copies of the weights alive, what)]).
USES = (("--bound-size", ((STATISTICS_BATCH, 1, 1, "the BatchNorm statistics"),
                          (CERTIFIED_IMAGES, 2, 4, "the certificate's float64 reference"))),
        ("--image-size", ((max(TIMED_BATCHES), 1, 5, "the timing of five variants"),)))


def check_sizes(name: str, image_size: int, bound_size: int) -> None:
    """Refuse, before the model is built, an image size the architecture cannot run on (naming a size it runs on),
    and one whose forward needs more memory than is available now. The need is a lower bound, from a forward of one
    image on the meta device (the tensors alive at its peak) scaled by each use's batch and element size, plus the
    copies of the weights alive: a refusal is certain, a pass is no promise."""
    from core import vision

    shapes = vision.shape_model(name)
    weights = vision.parameter_bytes(shapes)
    available = available_memory()
    for option, uses in USES:
        size = image_size if option == "--image-size" else bound_size
        try:
            one_image = vision.forward_bytes(shapes, name, size)
        except vision.ImageSizeError as e:
            fix = f": give {option} {e.runs_on}" if e.runs_on is not None else ""
            raise UsageError(f"{option} {size}: {e}{fix}") from e
        if one_image is None or available is None:
            continue
        for images, width, copies, what in uses:
            needed = images * width * one_image + copies * weights
            if needed > available:
                raise UsageError(f"{option} {size}: {name} needs at least {gigabytes(needed)} for {what} on "
                                 f"{images} images of {size}² (the tensors a forward keeps alive at once), more "
                                 f"than the {gigabytes(available)} of memory available now; give a smaller {option}")


def torchvision_options(args: argparse.Namespace) -> tuple[int, int, int]:
    """(image size, bound size, rounds) of `fold --torchvision`, refusing the options it does not use."""
    if args.checkpoint is not None or args.out is not None:
        raise UsageError("--torchvision folds a model it builds: give no checkpoint and no -o")
    if args.names is not None:
        raise UsageError("--names applies to folding a checkpoint; --torchvision folds a model on random images, "
                         "with no names: drop --names")
    return (IMAGE_SIZE if args.image_size is None else args.image_size,
            BOUND_SIZE if args.bound_size is None else args.bound_size,
            ROUNDS if args.rounds is None else args.rounds)


def cmd_fold_torchvision(args: argparse.Namespace) -> None:
    name = args.torchvision
    if not name:
        raise UsageError("--torchvision: the model name is empty; give one such as resnet18")
    image_size, bound_size, rounds = torchvision_options(args)

    import torch

    from core import vision
    from core.engine.certify import certify
    from core.engine.fold import fold
    from core.perf import bench_models
    from core.perf.cells import spread_text

    with naming_option(before=f"--torchvision {name}: ", errors=(ModelError,)):
        vision.check_architecture(name)
    check_sizes(name, image_size, bound_size)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed = 0 if args.seed is None else args.seed
    say = (lambda text: None) if args.json else print
    say(f"torchvision {name}: random weights and BatchNorm statistics (seed {seed}), "
        f"{torch.get_num_threads()} thread(s)")
    model = vision.build(name, seed=seed, image_size=bound_size, batch=STATISTICS_BATCH)
    start = time.perf_counter()
    folded, report = fold(model)
    seconds = time.perf_counter() - start
    _, theirs = vision.fx_folded(model)
    ours = {p.bn for p in report.folded}
    say(str(report))
    covers = "every pair it folds, fold folds too" if theirs <= ours else f"it folds {sorted(theirs - ours)} too"
    say(f"fold: {len(report.folded)} folded, {len(report.kept)} kept in {seconds:.2f} s; torch.fx fuse: "
        f"{len(theirs)} folded ({covers})")
    X = vision.images(CERTIFIED_IMAGES, bound_size, vision.sub_seed(seed, 1))
    start = time.perf_counter()
    certificate = certify(model, folded, X, report)
    certified = time.perf_counter() - start
    say(f"on {CERTIFIED_IMAGES} images of {bound_size}², in {certified:.2f} s: {certificate}")
    if not certificate.holds:
        if args.json:
            print_result({"model": name, "report": report.as_dict(), "certificate": certificate.as_dict()}, "", True)
        certificate.require()
    timed = bench_models.speed(model, image_size, TIMED_BATCHES, rounds, seed)
    say(f"speed, median per call ± its spread (IQR / median) ({image_size}² images, {rounds} interleaved rounds, "
        f"{torch.get_num_threads()} thread(s)); ? marks a ratio whose medians spread too much to trust:")
    for batch, t in timed.items():
        times = ", ".join(f"{variant} {timing.median * 1e3:.2f} ms ±{spread_text(timing.spread)}"
                          for variant, timing in t.items())
        ratios = ", ".join(f"{label} {t[ours].median / t[reference].median:.3f}"
                           f"{'' if bench_models.ratio_reliable(t, ours, reference) else '?'}"
                           for label, ours, reference in bench_models.RATIOS)
        say(f"  B={batch}: {times}; speed-up {speed_ups(t)}\n    {ratios}")
    if args.json:
        print_result({"model": name, "seed": seed, "report": report.as_dict(), "fold_seconds": seconds,
                      "torch_fx_fuse": sorted(theirs), "certificate": certificate.as_dict(),
                      "certify_seconds": certified, "image_size": image_size, "threads": torch.get_num_threads(),
                      "speed_seconds": {str(batch): {v: x.median for v, x in t.items()} for batch, t in timed.items()},
                      "speed_iqr_seconds": {str(batch): {v: None if math.isnan(x.iqr) else x.iqr
                                                         for v, x in t.items()} for batch, t in timed.items()}},
                     "", True)


def speed_ups(timed: "dict[str, Timing]") -> str:
    """'1.23x (1.31x channels-last)': unfolded over folded, as is and channels-last; '(unreliable) ' in front when
    a median they rest on spreads too much for them to mean anything."""
    from core.perf import bench_models

    used = ("unfolded", "folded", bench_models.FOLDED_CL)
    noisy = "" if all(timed[v].reliable for v in used) else "(unreliable) "
    return (f"{noisy}{timed['unfolded'].median / timed['folded'].median:.2f}x "
            f"({timed['unfolded'].median / timed[bench_models.FOLDED_CL].median:.2f}x channels-last)")
