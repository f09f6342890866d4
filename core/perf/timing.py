"""Timing: interleaved medians of several cases, and what a timing records about the machine it ran on."""

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROUNDS = 51
SAMPLE_S = 0.002  # short samples: on a busy machine most fall between preemptions, and medians keep those


def interleaved_medians(cases: dict[str, Callable[[], object]], device=None, rounds: int = ROUNDS,
                        sample_s: float = SAMPLE_S) -> dict[str, float]:
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


def extra_info(shape, dtype) -> dict:
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
                f"--threads 1 gives steadier ratios")
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
