"""Timing: interleaved medians of several cases, and what a timing records about the machine it ran on."""

import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch

ROUNDS = 51
SAMPLE_S = 0.002  # short samples: on a busy machine most fall between preemptions, and medians keep those
T = TypeVar("T")


def call_with(fn: Callable[[T], object], X: T) -> Callable[[], object]:
    """The case fn(X) as a zero-argument callable, for interleaved_medians."""
    return lambda: fn(X)


def interleaved_medians(cases: Mapping[str, Callable[[], object]], device: torch.device | str | None = None,
                        rounds: int = ROUNDS, sample_s: float = SAMPLE_S) -> dict[str, float]:
    """Median seconds per call of each zero-argument case, sampled once per round so drift hits all alike.

    Each round runs the cases in a fresh order (a fixed seed), never one case twice in a row: what ran just
    before a case changes its time by a few percent on a model of several MB (caches warm from itself, or
    flushed by a larger model), so a fixed order (A B C, C B A) favours some cases over others.
    A sample is as many calls as fill about `sample_s`. On a CUDA `device` the clock is read
    after a synchronize, so the queued work of the calls is counted.
    """
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else None

    def now() -> float:
        if sync is not None:
            sync(device)
        return time.perf_counter()

    calls: dict[str, int] = {}
    for name, fn in cases.items():
        fn()  # warm-up
        start = now()
        fn()
        fn()
        calls[name] = max(1, math.ceil(sample_s / max((now() - start) / 2, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for name in sample_order(list(cases), rounds):
        fn, n = cases[name], calls[name]
        start = now()
        for _ in range(n):
            fn()
        samples[name].append((now() - start) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def sample_order(names: list[str], rounds: int, seed: int = 0) -> list[str]:
    """`rounds` shuffles of names one after another, none starting with the name the one before ended with."""
    rng = random.Random(seed)
    order: list[str] = []
    for _ in range(rounds):
        shuffled = names[:]
        rng.shuffle(shuffled)
        if order and len(names) > 1 and shuffled[0] == order[-1]:
            shuffled[0], shuffled[-1] = shuffled[-1], shuffled[0]
        order += shuffled
    return order


def extra_info(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> dict:
    """What a benchmark records beside its times: input shape, dtype, threads, torch version."""
    return {"shape": list(shape), "dtype": str(dtype), "threads": torch.get_num_threads(), "torch": torch.__version__}


def machine_info() -> dict:
    """The CPU, cores, threads, platform, Python and torch versions, load average, and the GPU if any."""
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": load_average()}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name()
    return info


def load_average() -> float | None:
    """The 1-minute load average: near or above cpu_count, other processes share the cores and times are noisy."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def busy_warning() -> str | None:
    """A hint when other processes keep the cores busy: several threads then wait on each other at every op."""
    load = load_average()
    if load is not None and load >= (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        return (f"the CPU is busy (load {load} on {os.cpu_count()} cores): multi-threaded timings can be far off; "
                f"one thread gives steadier ratios")
    return None


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
