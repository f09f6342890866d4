"""`bnfold bench --onnx`: what folding buys at deployment in ONNX Runtime on the CPU. resnet18 and mobilenet_v2 are
exported unfolded and folded (core.deploy: torch.onnx without its own optimizer, so the unfolded export keeps its
BatchNorms), each run with ONNX Runtime's graph optimisations off, basic and all, the six sessions timed interleaved at
each batch size.

ORT's basic level already folds Conv + BatchNorm itself; its all level adds layout and activation fusions. The ratio
that says whether folding needs no optimiser for that step: folded, off / unfolded, basic (target ≤ 1.05). Beside
it: folded, all / unfolded, all, and folded, off / unfolded, off (what folding alone buys). Keys read
"cpu/onnxruntime B=<batch>: <model> <ours> / <reference>". No test asserts a time.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from core import vision
from core.deploy import onnx_model, optional
from core.engine.fold import fold
from core.perf.cells import batch_table
from core.perf.timing import Timing, interleaved_timings, threads_for

DEVICE = "cpu/onnxruntime"
LEVELS = ("off", "basic", "all")  # ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_ALL
RATIOS = [("folded, off / unfolded, basic", "folded, off", "unfolded, basic"),
          ("folded, all / unfolded, all", "folded, all", "unfolded, all"),
          ("folded, off / unfolded, off", "folded, off", "unfolded, off")]
TARGETS = {"folded, off / unfolded, basic": 1.05}


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...] = ("resnet18", "mobilenet_v2")
    image_size: int = 224
    batch_sizes: tuple[int, ...] = (1, 8)
    rounds: int = 15
    threads: int | None = None  # ORT's intra-op threads (None: one for small batches, as every bench row)


QUICK = Settings(models=("resnet18",), image_size=16, rounds=1, threads=1)


def sessions(model: torch.nn.Module, X: torch.Tensor, threads: int) -> dict[str, Callable[[], object]]:
    """{'<unfolded|folded>, <level>': a call of that ONNX Runtime session on X}."""
    ort = optional("onnxruntime", "bench --onnx")
    level = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    calls: dict[str, Callable[[], object]] = {}
    feeds = {"x": X.numpy()}
    for variant, m in (("unfolded", model), ("folded", fold(model)[0])):
        data = onnx_model(m, X).SerializeToString()
        for name in LEVELS:
            options = ort.SessionOptions()
            options.graph_optimization_level = level[name]
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            calls[f"{variant}, {name}"] = run_of(session, {session.get_inputs()[0].name: feeds["x"]})
    return calls


def run_of(session: Any, feed: dict[str, Any]) -> Callable[[], object]:
    """A call of `session` on `feed`, for the timing."""
    return lambda: session.run(None, feed)


def speed(name: str, settings: Settings) -> dict[int, dict[str, Timing]]:
    """{batch: {'<variant>, <level>': median seconds per call and its IQR}} for torchvision's `name`."""
    model = vision.build(name, image_size=min(settings.image_size, 64))
    timed = {}
    for batch in settings.batch_sizes:
        X = vision.images(batch, settings.image_size, vision.sub_seed(0, batch))
        timed[batch] = interleaved_timings(sessions(model, X, threads_for(batch, settings.threads)),
                                           rounds=settings.rounds)
    return timed


def key(batch: int, label: str) -> str:
    return f"{DEVICE} B={batch}: {label}"


def extend(result: dict[str, Any], settings: Settings = Settings(),
           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Adds the ONNX Runtime rows to a bench result (medians_s, spread_s, ratios, targets, unreliable)."""
    log = log or (lambda msg: None)
    medians, ratios, targets = result["medians_s"], result["ratios"], result["targets"]
    spreads, unreliable = result.setdefault("spread_s", {}), result.setdefault("unreliable", [])
    for name in settings.models:
        log(f"cpu: {name} in ONNX Runtime, unfolded and folded, optimisations {', '.join(LEVELS)}, "
            f"{settings.image_size}² images")
        for batch, timed in speed(name, settings).items():
            for variant, t in timed.items():
                medians[key(batch, f"{name} {variant}")] = t.median
                spreads[key(batch, f"{name} {variant}")] = None if math.isnan(t.iqr) else t.iqr
            for label, ours, reference in RATIOS:
                ratios[key(batch, f"{name} {label}")] = timed[ours].median / timed[reference].median
                if not (timed[ours].reliable and timed[reference].reliable):
                    unreliable.append(key(batch, f"{name} {label}"))
                if label in TARGETS:
                    targets[key(batch, f"{name} {label}")] = TARGETS[label]
    result.setdefault("settings", {})["onnx"] = {
        "models": list(settings.models), "image_size": settings.image_size, "batch_sizes": list(settings.batch_sizes),
        "rounds": settings.rounds, "threads": {str(b): threads_for(b, settings.threads) for b in settings.batch_sizes},
        "onnxruntime": optional("onnxruntime", "bench --onnx").__version__}
    return result


def format_rows(result: dict[str, Any]) -> str:
    """The ONNX Runtime rows of a bench result as a table ('' when it has none)."""
    run = result.get("settings", {}).get("onnx", {})
    threads = "/".join(str(t) for t in run.get("threads", {}).values()) or "?"
    title = (f"onnxruntime {run.get('onnxruntime', '?')} on cpu ({run.get('image_size', '?')}² images, {threads} "
             f"thread(s) by batch)")
    lines, _ = batch_table(result, DEVICE, title)
    return "\n".join(lines)
