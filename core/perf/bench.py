"""`bnfold bench`: what folding buys and what the frozen chain buys at inference, torch's fuser and the eager
limit, the training step and build_dataset, each set timed interleaved in one run and reported as ratios of medians.

Every ratio is time(ours) / time(reference), so for every ratio lower is better, and a ratio has
regressed when it grew by more than the threshold: new > saved * (1 + fail). Ratios measured within
one run cancel most of a machine's speed and load; absolute times across runs do not.

The inference variants all include the embedding lookup C[X], so each maps int64 (B, 4) to logits.
"""

import json
import math
import os
import re
import stat
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import cast

import torch

from core import notebook
from core.atomic import atomic_write_text
from core.engine.fold import fold
from core.errors import BnfoldError, os_error_text
from core.makemore.data import build_dataset, open_once, random_rows, read_at_most, split_names
from core.makemore.experiments import trained_e02
from core.makemore.model import CharMLP, e02_mlp
from core.makemore.torchnn import to_torch_nn
from core.makemore.train import train
from core.perf import bench_models, bench_onnx
from core.perf.cells import RATIO_MARKS, TIMING_WIDTH, ratio_cell, target_cell, timing_cell
from core.perf.chain import Forward, FrozenChain, capture, minimal_chain
from core.perf.fused import availability, compiled_variants, fused_variants
from core.perf.timing import (
    ROUNDS,
    SAMPLE_S,
    SPREAD_LIMIT,
    Timing,
    call_with,
    cpu_name,
    interleaved_timings,
    machine_info,
    threads_for,
    torch_threads,
)

FORMAT = "bnfold.bench/1"
BENCH_DIR = Path(".benchmarks")
DEV_ROWS = 22655  # dev-set rows of names.txt under the standard split (seed 42); random rows stand in without it
SPLIT_SEED = 42
Batch = int | str  # a batch size, or "dev": the whole dev set
Log = Callable[[str], None]


# The things timed: the inference variants.

def inference_variants(model: CharMLP, folded: CharMLP) -> dict[str, Forward]:
    """name -> callable(X): the net unfolded and folded, as modules (core; torch.nn) and as frozen chains.

    "torch fused" is torch's own folded net: the torch.nn modules with each Linear -> BatchNorm1d
    pair fused by fuse_linear_bn_eval. The minimal chain is the eager limit of the folded net.
    """
    return {
        "unfolded module": model,
        "unfolded torch.nn": to_torch_nn(model),
        "folded module": folded,
        "torch fused": to_torch_nn(model, fuse=True),
        "unfolded frozen": FrozenChain(model),
        "folded frozen": FrozenChain(folded),
        "minimal chain": minimal_chain(folded),
    }


def fused_runs(folded: CharMLP, X: torch.Tensor, compiled: bool) -> dict[str, Forward]:
    """On CUDA with Triton: the fused kernel at every precision and its fp32 CUDA graph; with `compiled`, torch.compile
    (default and max-autotune) of the folded frozen chain. Empty where FusedMLP cannot run."""
    if availability() is not None:
        return {}
    runs: dict[str, Forward] = dict(fused_variants(folded))
    runs["fused fp32 CUDA graph"] = capture(runs["fused fp32"], X)
    return {**runs, **(compiled_variants(folded) if compiled else {})}


# The run: settings, the sets, ratios and their targets.

@dataclass(frozen=True)
class Settings:
    rounds: int = ROUNDS
    sample_s: float = SAMPLE_S
    batch_sizes: tuple[Batch, ...] = (1, 64, 4096, "dev")
    cuda_batch_sizes: tuple[Batch, ...] = (1, 64, 4096, "dev", 2**21)
    stats_steps: int = 200  # SGD steps that give the BatchNorms realistic statistics
    train_steps: int = 20  # training steps per timed call
    build_rounds: int = 5  # build_dataset's loop takes about a second on names.txt
    names_limit: int | None = None  # build_dataset on this many names (None: all)
    threads: int | None = None  # torch CPU threads for every set; None: one for small batches, torch's own above
    quick: bool = False  # a smoke run: the torchvision rows are bench_models.QUICK's too
    torchvision_rounds: int | None = None  # rounds of the torchvision rows (None: their own default)


QUICK = Settings(rounds=3, batch_sizes=(1, 64), cuda_batch_sizes=(1, 64), stats_steps=20,
                 train_steps=3, build_rounds=2, names_limit=300, quick=True)

INFERENCE_RATIOS = [  # (label, ours, reference)
    ("folded module / torch fused", "folded module", "torch fused"),
    ("folded frozen / minimal chain", "folded frozen", "minimal chain"),
    ("folded frozen / torch fused", "folded frozen", "torch fused"),
    # what folding buys, with the way of running the net held fixed
    ("folded / unfolded, modules", "folded module", "unfolded module"),
    ("folded / unfolded, torch.nn", "torch fused", "unfolded torch.nn"),
    ("folded / unfolded, frozen chains", "folded frozen", "unfolded frozen"),
]
GRAPH_RATIO = ("CUDA graph / minimal chain", "folded CUDA graph", "minimal chain")
# CUDA with Triton: the fused kernel at each precision against torch.compile max-autotune (timed at LARGE_BATCH
# only, where its tuning pays) and, replayed from a CUDA graph, against the captured frozen chain.
FUSED_RATIOS = [(f"fused {p} / torch.compile max-autotune", f"fused {p}", "torch.compile max-autotune")
                for p in ("fp32", "tf32", "bf16")] + [
    ("fused fp32 CUDA graph / CUDA graph", "fused fp32 CUDA graph", "folded CUDA graph")]
FUSED_FP32_TARGET = 1 / 2.4  # fused fp32 at least 2.4x faster than torch.compile max-autotune in fp32
OTHER_RATIOS = [  # CPU only, keyed without a batch size
    ("train step ours / notebook", "train step ours", "train step notebook"),
    ("build_dataset vectorised / loop", "build_dataset vectorised", "build_dataset loop"),
]
LARGE_BATCH = 2**21  # where the CUDA graph must at least match the eager chain's throughput
TRAIN_BATCH_ROWS = 64  # the rows of one timed training step (train's default batch): a small batch

CPU_TARGETS = {  # at every batch size
    "folded module / torch fused": 1.00,
    "folded frozen / minimal chain": 1.05,
    "train step ours / notebook": 0.67,
    "build_dataset vectorised / loop": 0.20,
}
CPU_TARGETS_AT_B1 = {"folded frozen / torch fused": 0.70}  # where call overhead is most of the time


def target(device: str, batch: Batch | None, label: str) -> float | None:
    """The bound a ratio should stay under, or None: the CPU speed targets, and the CUDA graph at 2^21 rows."""
    if device == "cpu":
        if batch == 1 and label in CPU_TARGETS_AT_B1:
            return CPU_TARGETS_AT_B1[label]
        return CPU_TARGETS.get(label)
    if batch == LARGE_BATCH and label == FUSED_RATIOS[0][0]:
        return FUSED_FP32_TARGET
    return 1.00 if (label == GRAPH_RATIO[0] and batch == LARGE_BATCH) else None


def ratio_key(device: str, batch: Batch | None, label: str) -> str:
    return f"{device} B={batch}: {label}" if batch is not None else f"{device}: {label}"


def measure(names: list[str], settings: Settings = Settings(), devices: tuple[str, ...] = ("cpu",),
            log: Log | None = None) -> dict:
    """Time every set on every device and return the result: medians, ratios, targets, machine, settings."""
    log = log or (lambda msg: None)
    train_names, dev_names, _ = split_names(names, SPLIT_SEED)
    X, Y = build_dataset(train_names, 4)
    X_dev = build_dataset(dev_names, 4)[0]
    g = torch.Generator().manual_seed(0)
    if len(X_dev) < 1000:  # a tiny names file: random rows of the real dev size
        X_dev = random_rows(DEV_ROWS, g)[0]
    log(f"training the E02 net for {settings.stats_steps} steps for realistic BatchNorm statistics")
    model = trained_e02(X, Y, settings.stats_steps, g)
    folded = cast(CharMLP, fold(model)[0])  # fold returns a net of its input's type
    timings: dict[str, Timing] = {}
    ratios: dict[str, float] = {}
    targets: dict[str, float] = {}
    rows: dict[str, int] = {}
    threads: dict[str, int] = {}  # the torch threads each set ran on
    unreliable: list[str] = []

    def add(device: str, batch: Batch | None, label: str, ours: str, ref: str) -> None:
        key = ratio_key(device, batch, label)
        ratios[key] = timings[ours].median / timings[ref].median
        if not (timings[ours].reliable and timings[ref].reliable):
            unreliable.append(key)
        bound = target(device, batch, label)
        if bound is not None:
            targets[key] = bound

    for device in devices:
        dev = torch.device(device)
        model_d, folded_d = model.to(dev), folded.to(dev)
        variants = inference_variants(model_d, folded_d)
        for batch in settings.cuda_batch_sizes if dev.type == "cuda" else settings.batch_sizes:
            Xb = _batch(X_dev, batch, g).to(dev)
            rows[str(batch)] = Xb.shape[0]
            log(f"{device} B={batch}: inference ({Xb.shape[0]} rows)")
            runs = dict(variants)
            if dev.type == "cuda":
                runs[GRAPH_RATIO[1]] = capture(variants["folded frozen"], Xb)
                runs.update(fused_runs(folded_d, Xb, compiled=batch == LARGE_BATCH))
            cases = {name: call_with(fn, Xb) for name, fn in runs.items()}
            n = threads_for(Xb.shape[0], settings.threads) if dev.type == "cpu" else torch.get_num_threads()
            threads[f"{device} B={batch}"] = n
            with torch.inference_mode(), torch_threads(n):
                timed = interleaved_timings(cases, dev, settings.rounds, settings.sample_s)
            timings.update({f"{device} B={batch}: {name}": t for name, t in timed.items()})
            for label, ours, ref in INFERENCE_RATIOS + ([GRAPH_RATIO] + FUSED_RATIOS if dev.type == "cuda" else []):
                if ours in runs and ref in runs:
                    add(device, batch, label, f"{device} B={batch}: {ours}", f"{device} B={batch}: {ref}")
    model.cpu()
    folded.cpu()

    log(f"cpu: training step, {settings.train_steps} steps per sample")
    ours_model = e02_mlp(torch.Generator().manual_seed(1))
    notebook_net = notebook.Net(ours_model)
    g_ours, g_notebook = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    steps = settings.train_steps
    n = threads["cpu: train step"] = threads_for(TRAIN_BATCH_ROWS, settings.threads)
    with torch_threads(n):
        timed = interleaved_timings({
            "train step ours": lambda: train(ours_model, X, Y, steps, generator=g_ours, progress=False),
            "train step notebook": lambda: notebook.train(notebook_net, X, Y, steps, generator=g_notebook),
        }, rounds=settings.rounds, sample_s=settings.sample_s)
    timings.update({f"cpu: {name}": Timing(t.median / steps, t.iqr / steps) for name, t in timed.items()})

    some = names[:settings.names_limit] if settings.names_limit else names
    log(f"cpu: build_dataset on {len(some)} names")
    n = threads["cpu: build_dataset"] = settings.threads or torch.get_num_threads()
    with torch_threads(n):
        timed = interleaved_timings({
            "build_dataset vectorised": lambda: build_dataset(some, 4),
            "build_dataset loop": lambda: notebook.prepare_data(some, 4),
        }, rounds=settings.build_rounds, sample_s=0.0)
    timings.update({f"cpu: {name}": t for name, t in timed.items()})
    for label, ours, ref in OTHER_RATIOS:
        add("cpu", None, label, f"cpu: {ours}", f"cpu: {ref}")

    result = {"format": FORMAT, "machine": machine_info(),
              "settings": {**asdict(settings), "devices": list(devices), "rows": rows, "names": len(names)},
              "threads": threads, **timing_fields(timings), "ratios": ratios, "targets": targets,
              "unreliable": unreliable}
    return torchvision_rows(result, settings, log)


def timing_fields(timings: dict[str, Timing]) -> dict[str, dict[str, float | None]]:
    """A result's medians_s and spread_s (the IQR of each median; None where a single sample gives none)."""
    return {"medians_s": {k: t.median for k, t in timings.items()},
            "spread_s": {k: None if math.isnan(t.iqr) else t.iqr for k, t in timings.items()}}


# torchvision rows (core.perf.bench_models): resnet18 and mobilenet_v2 on the CPU, unfolded / folded / torch.fx fused.

def torchvision_rows(result: dict, settings: Settings, log: Log | None) -> dict:
    """The torchvision rows (bench_models), with the run's thread count and rounds where they were chosen."""
    rows = bench_models.QUICK if settings.quick else bench_models.Settings()
    if settings.threads:
        rows = replace(rows, threads=settings.threads)
    if settings.torchvision_rounds:
        rows = replace(rows, rounds=settings.torchvision_rounds)
    return bench_models.extend(result, rows, log)


def _batch(X_dev: torch.Tensor, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    if isinstance(batch, str):  # "dev"
        return X_dev
    if batch <= len(X_dev):
        return X_dev[:batch]
    return random_rows(batch, generator)[0]


# Reporting, saving, comparing.

def format_table(result: dict) -> str:
    """Per device a grid of medians with their spreads and one of ratios (columns: batch sizes), with the threads
    each column ran on, then the CPU's other ratios."""
    s, m = result["settings"], result["machine"]
    medians, ratios, targets = result["medians_s"], result["ratios"], result["targets"]
    spreads, threads = result.get("spread_s", {}), result.get("threads", {})
    dev_rows = f"; B=dev is {s['rows']['dev']} rows" if "dev" in s["rows"] else ""
    gpu = f", {m['cuda']}" if "cuda" in m else ""
    lines = [(f"bnfold bench: torch {m['torch']}, {m['cpu']}{gpu}, {s['rounds']} rounds, medians ± IQR / median"
              f"{dev_rows}"), RATIO_MARKS]
    for device in s["devices"]:
        batches = s["cuda_batch_sizes"] if device == "cuda" else s["batch_sizes"]
        time_head = "".join(f"{'B=' + str(b):>{TIMING_WIDTH}}" for b in batches)
        head = "".join(f"{'B=' + str(b):>11}" for b in batches)
        prefix = f"{device} B={batches[0]}: "
        lines += ["", f"{device + ' inference, time per call':<36}{time_head}"]
        if device == "cpu" and threads:
            lines.append(f"  {'threads':<34}" + "".join(f"{threads.get(f'{device} B={b}', '-'):>{TIMING_WIDTH}}"
                                                         for b in batches))
        for name in (k[len(prefix):] for k in medians if k.startswith(prefix)):
            lines.append(f"  {name:<34}" + "".join(timing_cell(medians, spreads, f"{device} B={b}: {name}")
                                                   for b in batches))
        lines.append(f"{device + ' ratios, lower is better':<36}{head}  target")
        for label in (k[len(prefix):] for k in ratios if k.startswith(prefix)):
            keys = [ratio_key(device, b, label) for b in batches]
            cells = "".join(ratio_cell(result, k) for k in keys)
            lines.append(f"  {label:<34}{cells}  {target_cell(targets, keys, batches)}")
    lines += ["", f"{'cpu, per call':<36}{'ours':>{TIMING_WIDTH}}{'reference':>{TIMING_WIDTH}}{'ratio':>11}  target"]
    for label, ours, ref in OTHER_RATIOS:
        key = ratio_key("cpu", None, label)
        if key not in ratios:
            continue
        bound = f"<= {targets[key]:.2f}" if key in targets else ""
        group = "train step" if ours.startswith("train step") else "build_dataset"
        on = f", {threads[f'cpu: {group}']} thread(s)" if f"cpu: {group}" in threads else ""
        times = timing_cell(medians, spreads, f"cpu: {ours}") + timing_cell(medians, spreads, f"cpu: {ref}")
        lines.append(f"  {label:<34}{times}{ratio_cell(result, key)}  {bound}{on}")
    extra = [rows for rows in (bench_models.format_rows(result), bench_onnx.format_rows(result)) if rows]
    return "\n".join([*lines, *extra])  # the torchvision and ONNX Runtime rows, when the run has them


def ratios_path(name: str) -> Path:
    if not name:
        raise BnfoldError("the bench name is empty; give a name such as base")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise BnfoldError(f"bench name {name!r}: use letters, digits, '.', '_' and '-' only")
    return BENCH_DIR / f"ratios-{name}.json"


def save(result: dict, name: str) -> Path:
    """Write the result to .benchmarks/ratios-NAME.json atomically."""
    path = ratios_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path


MAX_SAVED_BYTES = 16 * 2**20  # a saved run is a few kilobytes


def load(name: str) -> dict:
    """The saved run `name`, its schema checked before anything is measured: the format, a "machine" object, and
    at least one ratio, each a positive finite number (a ratio of two times). A file that fails any of these is
    refused with what is wrong in it; nothing later trips over it."""
    path = ratios_path(name)
    again = "save a run under that name again"
    try:
        fd, info = open_once(path)  # one open: no check of one file and read of another, no wait on a FIFO
        try:
            if not stat.S_ISREG(info.st_mode):
                raise BnfoldError(f"{path}: is not a regular file; {again}")
            raw = read_at_most(fd, MAX_SAVED_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError as e:
        raise BnfoldError(f"{path}: no saved ratios named {name!r}; save a run under that name first") from e
    except OSError as e:
        raise BnfoldError(f"{path}: unreadable ({os_error_text(e)}); {again}") from e
    if len(raw) > MAX_SAVED_BYTES:
        raise BnfoldError(f"{path}: larger than {MAX_SAVED_BYTES // 2**20} MiB, far more than a saved run; {again}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BnfoldError(f"{path}: unreadable ({e}); {again}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("ratios"), dict):
        raise BnfoldError(f"{path}: not a {FORMAT} file; {again}")
    if not isinstance(data.get("machine"), dict):
        what = "has no" if "machine" not in data else f"has {json.dumps(data['machine'])[:40]} as its"
        raise BnfoldError(f"{path}: {what} \"machine\" object (the CPU and torch version it was timed on); {again}")
    if not data["ratios"]:
        raise BnfoldError(f"{path}: holds no ratios, so a comparison would compare nothing; {again}")
    for key, value in data["ratios"].items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0):
            raise BnfoldError(f"{path}: ratio {key!r} is {json.dumps(value)[:40]}; a ratio of two times is a "
                              f"positive finite number; {again}")
    return data


def ratio_device(key: str) -> str:
    """The device a ratio key was timed on: 'cpu' for 'cpu B=1: ...', 'cpu: ...' and 'cpu/torchvision B=1: ...'."""
    return re.split(r"[ :/]", key, maxsplit=1)[0]


def comparable(saved: dict[str, float], devices: tuple[str, ...]) -> list[str]:
    """The saved ratio keys a run on `devices` can measure again (the CPU's torchvision rows need torchvision)."""
    return [key for key in saved if ratio_device(key) in devices]


DEFAULT_THRESHOLD = 0.10  # the growth of a ratio that a comparison marks as regressed unless told otherwise


def parse_threshold(text: str) -> float:
    """'10%' (or '10') -> 0.10."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*%?\s*", text)
    if not match:
        raise BnfoldError(f"a threshold is a percentage such as 10%, got {text!r}")
    return float(match.group(1)) / 100


@dataclass(frozen=True)
class Change:
    key: str
    saved: float
    now: float
    regressed: bool

    @property
    def percent(self) -> float:
        return (self.now / self.saved - 1) * 100


def compare(saved: dict, now: dict, threshold: float) -> tuple[list[Change], list[str]]:
    """(a Change per ratio in both, the saved keys not measured now); regressed: now > saved * (1 + threshold)."""
    changes = [Change(key, saved[key], now[key], now[key] > saved[key] * (1 + threshold))
               for key in saved if key in now]
    return changes, [key for key in saved if key not in now]


KEY_WIDTH = 60  # the comparison's key column; a longer key widens it


def format_comparison(name: str, saved: dict, changes: list[Change], missing: list[str], threshold: float,
                      unreliable: Collection[str] = ()) -> str:
    """The comparison, a line per ratio; a ratio whose new value rests on a median too spread to trust
    (`unreliable`) says so beside its status."""
    machine = saved["machine"]
    width = max([KEY_WIDTH, *(len(c.key) + 1 for c in changes), *(len(key) + 1 for key in missing)])
    lines = [(f"against {ratios_path(name)} (saved on {machine.get('cpu', '?')}, torch {machine.get('torch', '?')}); "
              f"regressed: grew by more than {threshold * 100:g}%")]
    for c in changes:
        status = "REGRESSED" if c.regressed else "ok"
        if c.key in unreliable:
            status += f" (unreliable now: a median's spread exceeds {SPREAD_LIMIT:.0%})"
        lines.append(f"  {c.key:<{width}}{c.saved:>8.3f} -> {c.now:<8.3f}{c.percent:+7.1f}%  {status}")
    lines += [f"  {key:<{width}}not measured in this run" for key in missing]
    if machine.get("cpu") != cpu_name() or machine.get("torch") != torch.__version__:
        lines.append("  note: saved on another CPU or torch version; ratios travel better than times, "
                     "but not perfectly")
    return "\n".join(lines)
