"""`bnfold reproduce`: E01 and E02 end to end with the notebook's recipe, then report.json, report.md and plots."""

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core.app import report as rp
from core.makemore.diagnostics import LayerProbe, Recorder
from core.makemore.experiments import Splits, run_e01, run_e02
from core.makemore.layers import Tanh
from core.makemore.model import e01_mlp
from core.makemore.train import train
from core.perf.chain import FrozenChain
from core.perf.timing import Timing, call_with, interleaved_timings, threads_for, torch_threads

SPEED_BATCHES = (1, 64, 4096)  # and the whole dev set
ALIVE_SCHEMES = ("kaiming(5/3)", "zeros", "constant(0.5)", "zero_last(5/3)", "zero_weights_random_bias")
ALIVE_STEPS = 200  # enough steps for every scheme's pattern of live parameters to settle
PROBE_ROWS = 512
# A batch-64 step is dozens of tiny ops: on a small CPU one thread beats two, which pay a
# synchronisation per op (measured 0.61 vs 0.8-1.0 ms per E01 step on 2 cores). Same numbers either way.
TRAIN_THREADS = 1

LayerValues = dict[str, dict[str, torch.Tensor]]  # init scheme -> layer label -> values


def probe_tanh_layers(splits: Splits, seed: int) -> tuple[LayerValues, LayerValues]:
    """Per init scheme (kaiming 5/3 vs zeros), each Tanh layer's outputs and output gradients on one batch at init."""
    X, Y = splits["train"]
    rows = torch.randint(0, X.shape[0], (PROBE_ROWS,), generator=torch.Generator().manual_seed(seed))
    activations: LayerValues = {}
    gradients: LayerValues = {}
    for scheme in ("kaiming(5/3)", "zeros"):
        model = e01_mlp(torch.Generator().manual_seed(seed), init=scheme)
        with LayerProbe(model, keep_outputs=True) as probe:
            model.loss(X[rows], Y[rows]).backward()
        tanh = [i for i, layer in enumerate(model.layers) if isinstance(layer, Tanh)]
        activations[scheme] = {f"layer {i} (Tanh)": probe.outputs[i] for i in tanh}
        gradients[scheme] = {f"layer {i} (Tanh)": probe.output_grads[i] for i in tanh}
    return activations, gradients


def alive_by_scheme(splits: Splits, seed: int, steps: int) -> dict[str, dict[str, bool]]:
    """Per init scheme of the E01 net: which parameters got a nonzero gradient during a short run."""
    X, Y = splits["train"]
    result: dict[str, dict[str, bool]] = {}
    for scheme in ALIVE_SCHEMES:
        g = torch.Generator().manual_seed(seed)
        model = e01_mlp(g, init=scheme)
        with Recorder(model) as recorder:
            train(model, X, Y, steps, generator=g, progress=False, on_step=recorder.on_step)
        result[scheme] = {name: step is not None for name, step in recorder.first_grad.items()}
    return result


def speed_pair(unfolded: Timing, folded: Timing) -> dict[str, float | bool | None]:
    """One way of running both nets: median µs per eval forward of each and its IQR (None when unknown), the
    speed-up unfolded / folded, and whether both medians are reliable (spread within SPREAD_LIMIT): a speed-up
    built on noise is reported as such, not as a figure."""
    def iqr_us(t: Timing) -> float | None:
        return None if math.isnan(t.iqr) else t.iqr * 1e6

    return {"unfolded_us": unfolded.median * 1e6, "folded_us": folded.median * 1e6,
            "unfolded_iqr_us": iqr_us(unfolded), "folded_iqr_us": iqr_us(folded),
            "speedup": unfolded.median / folded.median, "reliable": unfolded.reliable and folded.reliable}


@torch.inference_mode()
def measure_speed(unfolded: nn.Module, folded: nn.Module, dev_X: torch.Tensor, device: torch.device) -> list[dict]:
    """Per batch size, both nets' eval forward as modules and as frozen chains, all four timed interleaved in one run.

    The modules' speed-up includes Module.__call__ and attribute look-ups, which folding also
    removes (fewer layers); the frozen chains' speed-up is what folding buys in the ops alone. On the CPU a small
    batch (timing.SMALL_BATCH_ROWS) runs on one thread, a larger one on torch's count; each row records its threads.
    """
    unfolded.eval(), folded.eval()
    nets: dict[str, Callable[[torch.Tensor], object]] = {
        "unfolded module": unfolded, "folded module": folded,
        "unfolded frozen": FrozenChain(unfolded), "folded frozen": FrozenChain(folded)}
    rows: list[dict] = []
    for batch in (*SPEED_BATCHES, dev_X.shape[0]):
        x = dev_X[:batch].to(device)
        cases = {name: call_with(net, x) for name, net in nets.items()}
        threads = threads_for(x.shape[0], None) if device.type == "cpu" else torch.get_num_threads()
        with torch_threads(threads):
            timed = interleaved_timings(cases, device=device)
        rows.append({"batch": batch, "threads": threads,
                     "modules": speed_pair(timed["unfolded module"], timed["folded module"]),
                     "frozen_chains": speed_pair(timed["unfolded frozen"], timed["folded frozen"])})
    return rows


def reproduce(splits: Splits, steps: int, seed: int, out: Path, device: str = "cpu", progress: bool = True) -> dict:
    """Run E01 and E02 on `device` (one this machine has), measure, plot, and write the report into the existing
    directory `out` (report.json last, replacing any earlier one). Returns the report."""
    where = torch.device(device)
    started = time.perf_counter()
    with torch_threads(TRAIN_THREADS if where.type == "cpu" else torch.get_num_threads()):
        e01 = run_e01(splits, steps=steps, seed=seed, device=where, progress=progress)
        e02 = run_e02(splits, steps=steps, seed=seed, device=where, progress=progress)
        activations, gradients = probe_tanh_layers(splits, seed)
        alive = alive_by_scheme(splits, seed, min(steps, ALIVE_STEPS))
    speed = measure_speed(e02.unfolded, e02.folded, splits["dev"][0], where)

    figures = {
        "Loss curves": "loss_curves.png",
        "Tanh activations at init: kaiming vs zeros": "activations.png",
        "Tanh output gradients at init: kaiming vs zeros": "gradients.png",
        "Alive parameters per init scheme": "alive.png",
        "Folding error against its certified bound (dev set)": "fold_error.png",
        "Inference time against batch size": "speed.png",
    }
    rp.plot_loss_curves(out / "loss_curves.png", {"E01 zero init": e01.losses, "E02 BatchNorm": e02.losses},
                        floors={f"H = {e01.dev_entropy:.4f}": e01.dev_entropy})
    rp.plot_layer_histograms(out / "activations.png", activations, "Tanh outputs", "tanh output")
    rp.plot_layer_histograms(out / "gradients.png", gradients, "Gradients of Tanh outputs", "dL/d(tanh output)")
    rp.plot_alive(out / "alive.png", alive)
    assert e02.dev.bound_ratios is not None  # run_e02 compares the nets on the whole dev set at once
    rp.plot_bound_ratio(out / "fold_error.png", e02.dev.bound_ratios)
    rp.plot_speed(out / "speed.png", speed)

    report = {
        "e01": {"steps": e01.steps, "train_loss": e01.train_loss, "dev_loss": e01.dev_loss,
                "dev_entropy": e01.dev_entropy, "alive": e01.alive},
        "e02": {"steps": e02.steps, "dev_loss_unfolded": e02.dev.loss_unfolded, "dev_loss_folded": e02.dev.loss_folded,
                "max_abs_logit_diff": e02.dev.max_abs_logit_diff, "max_bound": e02.dev.max_bound,
                "bn_left": e02.bn_left, "loss_bound": e02.dev.loss_bound},
        "speed": speed,
        "env": {"torch": torch.__version__, "device": str(where), "threads": torch.get_num_threads(),
                "seed": seed, "steps": steps},
        "wall_time_s": time.perf_counter() - started,
    }
    rp.write_report(out, report, figures)
    return report

