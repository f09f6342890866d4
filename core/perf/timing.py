"""Timing: interleaved medians of several cases with their spread, the threads they ran on, and what a timing
records about the machine it ran on.

A median is reported with its spread, the interquartile range (IQR) of its samples. Where the IQR exceeds
SPREAD_LIMIT of the median, the samples disagree by more than the differences the tables are read for (a fold
buys a few percent to a few tens of percent), so the median is marked unreliable, and so is every ratio built on
it: on a busy machine, where threads wait on each other, times vary by factors, not percent.
"""

import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

ROUNDS = 51
SAMPLE_S = 0.002  # short samples: on a busy machine most fall between preemptions, and medians keep those
SPREAD_LIMIT = 0.10  # IQR / median above which a median is noise, not a measurement
# Batches of at most this many rows are timed on one thread unless a thread count is chosen: a forward of a few
# dozen rows is a chain of tiny ops, and several OpenMP threads then pay a synchronisation per op, and on a busy
# machine wait for each other (a B = 1 forward of tens of µs was measured at 24 ms with two other jobs running).
SMALL_BATCH_ROWS = 64
T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """The median seconds per call of one case and the interquartile range of its samples (nan with fewer than
    two samples: no spread known)."""

    median: float
    iqr: float

    @property
    def spread(self) -> float:
        """IQR / median; inf for a median of 0 with samples that differ, nan when unknown."""
        if math.isnan(self.iqr) or self.iqr == 0:
            return self.iqr
        return self.iqr / self.median if self.median > 0 else math.inf

    @property
    def reliable(self) -> bool:
        """The spread is known and at most SPREAD_LIMIT of the median."""
        return self.spread <= SPREAD_LIMIT  # False for nan


def summarize(samples: Sequence[float]) -> Timing:
    """The median and the interquartile range (inclusive quartiles) of `samples` (at least one)."""
    if len(samples) < 2:
        return Timing(statistics.median(samples), math.nan)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Timing(statistics.median(samples), q3 - q1)


def threads_for(rows: int, chosen: int | None) -> int:
    """The torch threads to time a batch of `rows` rows on: the chosen count, else one for a small batch
    (SMALL_BATCH_ROWS), else torch's current count."""
    if chosen:
        return chosen
    return 1 if rows <= SMALL_BATCH_ROWS else torch.get_num_threads()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` in the block, and restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def call_with(fn: Callable[[T], object], X: T) -> Callable[[], object]:
    """The case fn(X) as a zero-argument callable, for interleaved_medians."""
    return lambda: fn(X)


def interleaved_medians(cases: Mapping[str, Callable[[], object]], device: torch.device | str | None = None,
                        rounds: int = ROUNDS, sample_s: float = SAMPLE_S) -> dict[str, float]:
    """Median seconds per call of each zero-argument case: interleaved_timings without the spreads."""
    return {name: t.median for name, t in interleaved_timings(cases, device, rounds, sample_s).items()}


def interleaved_timings(cases: Mapping[str, Callable[[], object]], device: torch.device | str | None = None,
                        rounds: int = ROUNDS, sample_s: float = SAMPLE_S) -> dict[str, Timing]:
    """Median seconds per call of each zero-argument case and its IQR, sampled once per round so drift hits all
    alike.

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
    return {name: summarize(s) for name, s in samples.items()}


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
