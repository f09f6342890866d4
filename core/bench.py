"""`bnfold bench`: folded vs unfolded inference, torch's fuser and the eager limit, the training step and
build_dataset, each set timed interleaved in one run and reported as ratios of medians.

Every ratio is time(ours) / time(reference), so for every ratio lower is better, and a ratio has
regressed when it grew by more than the threshold: new > saved * (1 + fail). Ratios measured within
one run cancel most of a machine's speed and load; absolute times across runs do not.

The inference variants all include the embedding lookup C[X], so each maps int64 (B, 4) to logits.
"""

import json
import math
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.atomic import atomic_write_text
from core import notebook
from core.data import build_dataset, random_rows, split_names
from core.errors import BnfoldError
from core.experiments import trained_e02
from core.fold import fold
from core.inference import FrozenChain, capture
from core.layers import Linear
from core.model import e02_mlp
from core.torchnn import to_torch_nn
from core.train import train

FORMAT = "bnfold.bench/1"
BENCH_DIR = Path(".benchmarks")
DEV_ROWS = 22655  # dev-set rows of names.txt under the seed's split; random rows stand in without it
SPLIT_SEED = 42


# The things timed: the inference variants.

def minimal_chain(folded):
    """The eager limit of a folded Linear/Tanh net: one addmm per layer plus in-place tanh, no modules."""
    C = folded.C.detach()
    steps = [(layer.weight.detach(), layer.bias.detach()) for layer in folded.layers if isinstance(layer, Linear)]
    last = len(steps) - 1

    def chain(X):
        x = torch.embedding(C, X).view(X.shape[0], -1)
        for i, (W, b) in enumerate(steps):
            x = torch.addmm(b, x, W)
            if i < last:
                x.tanh_()
        return x

    return chain


def inference_variants(model, folded) -> dict:
    """name -> callable(X): the net unfolded (core, torch.nn), folded (core, frozen, torch's fuser), the minimal chain."""
    return {
        "unfolded core": model,
        "unfolded torch.nn": to_torch_nn(model),
        "folded core": folded,
        "folded frozen": FrozenChain(folded),
        "torch fused": to_torch_nn(model, fuse=True),
        "minimal chain": minimal_chain(folded),
    }


def extra_info(shape, dtype) -> dict:
    """What a benchmark records beside its times: input shape, dtype, threads, torch version."""
    return {"shape": list(shape), "dtype": str(dtype), "threads": torch.get_num_threads(), "torch": torch.__version__}


def machine_info() -> dict:
    info = {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": _load_average()}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name()
    return info


def _load_average() -> float | None:
    """The 1-minute load average: near or above cpu_count, other processes share the cores and times are noisy."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def busy_warning() -> str | None:
    """A hint when other processes keep the cores busy: several threads then wait on each other at every op."""
    load = _load_average()
    if load is not None and load >= (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        return (f"the CPU is busy (load {load} on {os.cpu_count()} cores): multi-threaded timings can be far off; "
                f"--threads 1 gives steadier ratios")
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# Timing.

ROUNDS = 51
SAMPLE_S = 0.002  # short samples: on a busy machine most fall between preemptions, and medians keep those


def interleaved_medians(cases: dict, device=None, rounds: int = ROUNDS, sample_s: float = SAMPLE_S) -> dict:
    """Median seconds per call of each zero-argument case, sampled A B C, C B A, ... so drift hits all alike.

    A sample is as many calls as fill about `sample_s`. On a CUDA `device` the clock is read
    after a synchronize, so the queued work of the calls is counted.
    """
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else None

    def now():
        if sync is not None:
            sync(device)
        return time.perf_counter()

    calls = {}
    for name, fn in cases.items():
        fn()  # warm-up
        start = now()
        fn()
        fn()
        calls[name] = max(1, math.ceil(sample_s / max((now() - start) / 2, 1e-9)))
    samples = {name: [] for name in cases}
    for r in range(rounds):
        for name in (list(cases) if r % 2 == 0 else reversed(list(cases))):
            fn, n = cases[name], calls[name]
            start = now()
            for _ in range(n):
                fn()
            samples[name].append((now() - start) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


# The run: settings, the sets, ratios and their targets.

@dataclass(frozen=True)
class Settings:
    rounds: int = ROUNDS
    sample_s: float = SAMPLE_S
    batch_sizes: tuple = (1, 64, 4096, "dev")
    cuda_batch_sizes: tuple = (1, 64, 4096, "dev", 2**21)
    stats_steps: int = 200  # SGD steps that give the BatchNorms realistic statistics
    train_steps: int = 20  # training steps per timed call
    build_rounds: int = 5  # build_dataset's loop takes about a second on names.txt
    names_limit: int | None = None  # build_dataset on this many names (None: all)


QUICK = Settings(rounds=3, batch_sizes=(1, 64), cuda_batch_sizes=(1, 64), stats_steps=20,
                 train_steps=3, build_rounds=2, names_limit=300)

INFERENCE_RATIOS = [  # (label, ours, reference)
    ("folded / unfolded core", "folded core", "unfolded core"),
    ("folded / unfolded torch.nn", "folded core", "unfolded torch.nn"),
    ("folded / torch fused", "folded core", "torch fused"),
    ("folded / minimal chain", "folded core", "minimal chain"),
    ("frozen / minimal chain", "folded frozen", "minimal chain"),
    ("frozen / torch fused", "folded frozen", "torch fused"),
]
GRAPH_RATIO = ("CUDA graph / minimal chain", "folded CUDA graph", "minimal chain")
OTHER_RATIOS = [  # CPU only, keyed without a batch size
    ("train step ours / notebook", "train step ours", "train step notebook"),
    ("build_dataset vectorised / loop", "build_dataset vectorised", "build_dataset loop"),
]
LARGE_BATCH = 2**21  # where the CUDA graph must at least match the eager chain's throughput


CPU_TARGETS = {"folded / minimal chain": 1.10, "folded / torch fused": 1.00,
               "frozen / minimal chain": 1.10, "frozen / torch fused": 1.00,
               "train step ours / notebook": 0.67, "build_dataset vectorised / loop": 0.20}


def target(device: str, batch, label: str) -> float | None:
    """The bound a ratio should stay under, or None: the CPU speed targets, and the CUDA graph at 2^21 rows."""
    if device == "cpu":
        return 0.70 if (label.endswith("/ torch fused") and batch == 1) else CPU_TARGETS.get(label)
    return 1.00 if (label == GRAPH_RATIO[0] and batch == LARGE_BATCH) else None


def ratio_key(device: str, batch, label: str) -> str:
    return f"{device} B={batch}: {label}" if batch is not None else f"{device}: {label}"


def measure(names, settings: Settings = Settings(), devices=("cpu",), log=None) -> dict:
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
    folded, _ = fold(model)
    medians, ratios, targets, rows = {}, {}, {}, {}

    def add(device, batch, label, ours, ref):
        key = ratio_key(device, batch, label)
        ratios[key] = medians[ours] / medians[ref]
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
            cases = {name: (lambda fn=fn: fn(Xb)) for name, fn in variants.items()}
            if dev.type == "cuda":
                cases["folded CUDA graph"] = (lambda replay=capture(folded_d, Xb): replay(Xb))
            with torch.inference_mode():
                timed = interleaved_medians(cases, dev, settings.rounds, settings.sample_s)
            medians.update({f"{device} B={batch}: {name}": t for name, t in timed.items()})
            for label, ours, ref in INFERENCE_RATIOS + ([GRAPH_RATIO] if dev.type == "cuda" else []):
                add(device, batch, label, f"{device} B={batch}: {ours}", f"{device} B={batch}: {ref}")
    model.cpu()
    folded.cpu()

    log(f"cpu: training step, {settings.train_steps} steps per sample")
    ours_model = e02_mlp(torch.Generator().manual_seed(1))
    notebook_net = notebook.Net(ours_model)
    g_ours, g_notebook = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    steps = settings.train_steps
    timed = interleaved_medians({
        "train step ours": lambda: train(ours_model, X, Y, steps, generator=g_ours, progress=False),
        "train step notebook": lambda: notebook.train(notebook_net, X, Y, steps, generator=g_notebook),
    }, rounds=settings.rounds, sample_s=settings.sample_s)
    medians.update({f"cpu: {name}": t / steps for name, t in timed.items()})

    some = names[:settings.names_limit] if settings.names_limit else names
    log(f"cpu: build_dataset on {len(some)} names")
    timed = interleaved_medians({
        "build_dataset vectorised": lambda: build_dataset(some, 4),
        "build_dataset loop": lambda: notebook.prepare_data(some, 4),
    }, rounds=settings.build_rounds, sample_s=0.0)
    medians.update({f"cpu: {name}": t for name, t in timed.items()})
    for label, ours, ref in OTHER_RATIOS:
        add("cpu", None, label, f"cpu: {ours}", f"cpu: {ref}")

    result = {"format": FORMAT, "machine": machine_info(),
              "settings": {**asdict(settings), "devices": list(devices), "rows": rows, "names": len(names)},
              "medians_s": medians, "ratios": ratios, "targets": targets}
    return torchvision_rows(result, settings, log)


# torchvision rows (core.perf.bench_models): resnet18 and mobilenet_v2 on the CPU, unfolded / folded / torch.fx fused.

def torchvision_rows(result: dict, settings: Settings, log) -> dict:
    from core.perf import bench_models

    quick = settings.rounds <= QUICK.rounds
    return bench_models.extend(result, bench_models.QUICK if quick else bench_models.Settings(), log)


def _batch(X_dev, batch, generator):
    if batch == "dev":
        return X_dev
    if batch <= len(X_dev):
        return X_dev[:batch]
    return random_rows(batch, generator)[0]


# Reporting, saving, comparing.

def format_table(result: dict) -> str:
    """Per device a grid of medians and one of ratios (columns: batch sizes), then the CPU's other ratios."""
    s, m = result["settings"], result["machine"]
    medians, ratios, targets = result["medians_s"], result["ratios"], result["targets"]
    dev_rows = f"; B=dev is {s['rows']['dev']} rows" if "dev" in s["rows"] else ""
    lines = [f"bnfold bench: torch {m['torch']}, {m['cpu']}{', ' + m['cuda'] if 'cuda' in m else ''}, "
             f"{m['threads']} thread(s), {s['rounds']} rounds, medians{dev_rows}; * misses its target"]
    for device in s["devices"]:
        batches = s["cuda_batch_sizes"] if device == "cuda" else s["batch_sizes"]
        head = "".join(f"{'B=' + str(b):>11}" for b in batches)
        prefix = f"{device} B={batches[0]}: "
        lines += ["", f"{device + ' inference, time per call':<36}{head}"]
        for name in (k[len(prefix):] for k in medians if k.startswith(prefix)):
            lines.append(f"  {name:<34}" + "".join(_time_cell(medians, f"{device} B={b}: {name}") for b in batches))
        lines.append(f"{device + ' ratios, lower is better':<36}{head}  target")
        for label in (k[len(prefix):] for k in ratios if k.startswith(prefix)):
            keys = [ratio_key(device, b, label) for b in batches]
            cells = "".join(_ratio_cell(result, k) for k in keys)
            bounds = list(dict.fromkeys(f"{targets[k]:.2f}" for k in keys if k in targets))
            lines.append(f"  {label:<34}{cells}  {'<= ' + ' / '.join(bounds) if bounds else ''}")
    lines += ["", f"{'cpu, per call':<36}{'ours':>11}{'reference':>11}{'ratio':>11}  target"]
    for label, ours, ref in OTHER_RATIOS:
        key = ratio_key("cpu", None, label)
        if key not in ratios:
            continue
        bound = f"<= {targets[key]:.2f}" if key in targets else ""
        times = _time_cell(medians, f"cpu: {ours}") + _time_cell(medians, f"cpu: {ref}")
        lines.append(f"  {label:<34}{times}{_ratio_cell(result, key)}  {bound}")
    from core.perf import bench_models  # the torchvision rows, when the run has them

    return "\n".join(lines) + bench_models.format_rows(result)


def _ratio_cell(result: dict, key: str) -> str:
    value, bound = result["ratios"].get(key), result["targets"].get(key)
    if value is None:
        return f"{'-':>10} "
    return f"{value:>10.3f}{'*' if bound is not None and value > bound else ' '}"


def _time_cell(medians: dict, key: str) -> str:
    seconds = medians.get(key)
    if seconds is None:
        return f"{'-':>11}"
    unit, scale = next((u, f) for u, f in (("s", 1), ("ms", 1e-3), ("us", 1e-6)) if seconds >= f or u == "us")
    return f"{seconds / scale:>8.3g} {unit:<2}"


def ratios_path(name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise BnfoldError(f"bench name {name!r}: use letters, digits, '.', '_' and '-' only")
    return BENCH_DIR / f"ratios-{name}.json"


def save(result: dict, name: str) -> Path:
    """Write the result to .benchmarks/ratios-NAME.json atomically."""
    path = ratios_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path


def load(name: str) -> dict:
    path = ratios_path(name)
    if not path.exists():
        raise BnfoldError(f"{path}: no saved ratios named {name!r}; run `bnfold bench --save {name}` first")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BnfoldError(f"{path}: unreadable ({e}); save it again with `bnfold bench --save {name}`") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("ratios"), dict):
        raise BnfoldError(f"{path}: not a {FORMAT} file; save it again with `bnfold bench --save {name}`")
    return data


DEFAULT_THRESHOLD = 0.10  # what --compare marks as regressed when --fail does not say


def parse_threshold(text: str) -> float:
    """'10%' (or '10') -> 0.10."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*%?\s*", text)
    if not match:
        raise BnfoldError(f"--fail takes a percentage such as 10%, got {text!r}")
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


def format_comparison(name: str, saved: dict, changes, missing, threshold) -> str:
    machine = saved["machine"]
    lines = [f"against {ratios_path(name)} (saved on {machine.get('cpu', '?')}, torch {machine.get('torch', '?')}); "
             f"regressed: grew by more than {threshold * 100:g}%"]
    for c in changes:
        status = "REGRESSED" if c.regressed else "ok"
        lines.append(f"  {c.key:<60}{c.saved:>8.3f} -> {c.now:<8.3f}{c.percent:+7.1f}%  {status}")
    lines += [f"  {key:<60}not measured in this run" for key in missing]
    if machine.get("cpu") != _cpu_name() or machine.get("torch") != torch.__version__:
        lines.append("  note: saved on another CPU or torch version; ratios travel better than times, but not perfectly")
    return "\n".join(lines)
