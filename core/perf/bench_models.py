"""torchvision rows of `bnfold bench`, and the timing of `bnfold fold --torchvision`: unfolded, folded
(core.engine.fold) and torch.fx-fused (torch.fx.experimental.optimization.fuse) inference of one architecture,
each fused net also in the channels-last layout (core.perf.layout), interleaved in one run.

The rows are ratios of medians, like every bench ratio:
- folded, channels-last / torch.fx fused (target ≤ 1.00 at each batch size): what fold and the layout give a
  CPU deployment against torch's fuser;
- folded / torch.fx fused and folded, channels-last / torch.fx fused, channels-last: the folds alone, in one
  layout. On resnet18 and mobilenet_v2 both fold the same pairs into the same program
  (tests/engine/test_fold_torchvision.py), so these are 1 up to the noise of the machine;
- folded / unfolded.
Keys read
"cpu/torchvision B=<batch>: <model> <ours> / <reference>", so they sit apart from the E02 grid. `fold()`'s own
time on resnet50 (tracing included) is recorded beside them, with its target of 2 s.
"""

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from core import vision
from core.engine.fold import fold
from core.errors import MissingDependency
from core.perf.cells import batch_table, time_cell
from core.perf.layout import channels_last
from core.perf.timing import Timing, call_with, interleaved_timings

DEVICE = "cpu/torchvision"  # the device part of every key here
FOLD_TIME_MODEL = "resnet50"
FOLD_TIME_TARGET_S = 2.0
FOLDED_CL, FUSED_CL = "folded, channels-last", "torch.fx fused, channels-last"
RATIOS = [(f"{FOLDED_CL} / torch.fx fused", FOLDED_CL, "torch.fx fused"),
          ("folded / torch.fx fused", "folded", "torch.fx fused"),
          (f"{FOLDED_CL} / {FUSED_CL}", FOLDED_CL, FUSED_CL),
          ("folded / unfolded", "folded", "unfolded")]
TARGETS = {f"{FOLDED_CL} / torch.fx fused": 1.00}


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = ("resnet18", "mobilenet_v2")
    image_size: int = 224
    batch_sizes: tuple[int, ...] = (1, 8)
    rounds: int = 15
    fold_runs: int = 5  # fold() of resnet50, median of these
    threads: int | None = None  # torch threads while these rows run (None: as the caller set them)


# A smoke run: that the rows appear. One thread: on a busy machine two OpenMP threads that wait on each other
# can make a small forward fifty times slower.
QUICK = Settings(models=("resnet18",), image_size=16, rounds=1, fold_runs=0, threads=1)


def variants(model: nn.Module) -> dict[str, nn.Module]:
    """name -> module: the model itself, folded by core.engine.fold and fused by torch.fx's fuse (a deep copy), each of
    those two also channels-last."""
    from torch.fx.experimental.optimization import fuse

    folded, fused = fold(model)[0], fuse(copy.deepcopy(model))
    return {"unfolded": model, "folded": folded, FOLDED_CL: channels_last(copy.deepcopy(folded)),
            "torch.fx fused": fused, FUSED_CL: channels_last(copy.deepcopy(fused))}


def speed(model: nn.Module, image_size: int, batch_sizes: Iterable[int], rounds: int,
          seed: int = 0) -> dict[int, dict[str, Timing]]:
    """{batch: {variant: median seconds per call and its IQR}}, the variants timed interleaved under inference mode
    on images drawn from the seed's stream number `batch` (vision.sub_seed)."""
    timed = {}
    for batch in batch_sizes:
        X = vision.images(batch, image_size, vision.sub_seed(seed, batch), next(model.parameters()).dtype)
        cases = {name: call_with(m, X) for name, m in variants(model).items()}
        with torch.inference_mode():
            timed[batch] = interleaved_timings(cases, rounds=rounds)
    return timed


def ratio_reliable(timed: dict[str, Timing], ours: str, reference: str) -> bool:
    """Whether the ratio ours / reference rests on two medians whose spreads are within the limit."""
    return timed[ours].reliable and timed[reference].reliable


def fold_time(name: str = FOLD_TIME_MODEL, runs: int = 5, image_size: int = 32) -> float:
    """Median seconds of fold(model) (tracing included) on torchvision's `name`."""
    model = vision.build(name, image_size=image_size)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fold(model)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def key(batch: int | str, label: str) -> str:
    return f"{DEVICE} B={batch}: {label}"


def extend(result: dict, settings: Settings = Settings(), log: Callable[[str], None] | None = None) -> dict:
    """Adds the torchvision rows to a bench result (medians_s, ratios, targets); nothing without torchvision."""
    log = log or (lambda msg: None)
    try:
        vision.torchvision_models()
    except MissingDependency:
        log("torchvision is not installed: no torchvision rows")
        return result
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        _extend(result, settings, log)
    finally:
        torch.set_num_threads(threads)
    return result


def _extend(result: dict, settings: Settings, log: Callable[[str], None]) -> None:
    medians, ratios, targets = result["medians_s"], result["ratios"], result["targets"]
    spreads, unreliable = result.setdefault("spread_s", {}), result.setdefault("unreliable", [])
    for name in settings.models:
        log(f"cpu: {name} unfolded / folded / torch.fx fused, {settings.image_size}² images")
        model = vision.build(name, image_size=min(settings.image_size, 64))
        for batch, timed in speed(model, settings.image_size, settings.batch_sizes, settings.rounds).items():
            medians.update({key(batch, f"{name} {variant}"): t.median for variant, t in timed.items()})
            spreads.update({key(batch, f"{name} {variant}"): None if math.isnan(t.iqr) else t.iqr
                            for variant, t in timed.items()})
            for label, ours, reference in RATIOS:
                ratios[key(batch, f"{name} {label}")] = timed[ours].median / timed[reference].median
                if not ratio_reliable(timed, ours, reference):
                    unreliable.append(key(batch, f"{name} {label}"))
                if label in TARGETS:
                    targets[key(batch, f"{name} {label}")] = TARGETS[label]
    if settings.fold_runs:
        log(f"cpu: fold() of {FOLD_TIME_MODEL}, {settings.fold_runs} run(s)")
        medians[f"{DEVICE}: fold() {FOLD_TIME_MODEL}"] = fold_time(runs=settings.fold_runs)
    result.setdefault("settings", {})["torchvision"] = {"models": list(settings.models),
                                                        "image_size": settings.image_size,
                                                        "batch_sizes": list(settings.batch_sizes),
                                                        "rounds": settings.rounds,
                                                        "threads": torch.get_num_threads()}


def format_rows(result: dict) -> str:
    """The torchvision rows of a bench result as a table ('' when it has none): times with their spreads, then
    ratios, * marking a missed target and ? a ratio on medians too spread to trust."""
    tv = result.get("settings", {}).get("torchvision", {})
    title = f"torchvision on cpu ({tv.get('image_size', '?')}² images, {tv.get('threads', '?')} thread(s))"
    fold_label = f"fold() {FOLD_TIME_MODEL}, tracing included"
    lines, width = batch_table(result, DEVICE, title, (fold_label,))
    if not lines:
        return ""
    medians = result["medians_s"]
    seconds = medians.get(f"{DEVICE}: fold() {FOLD_TIME_MODEL}")
    if seconds is not None:
        star = "*" if seconds > FOLD_TIME_TARGET_S else " "
        cell = time_cell(medians, f"{DEVICE}: fold() {FOLD_TIME_MODEL}")
        lines.append(f"  {fold_label:<{width}}{cell}{star} <= {FOLD_TIME_TARGET_S:.2f} s")
    return "\n".join(lines)
