"""The cells of the timing tables (`bnfold bench`, its torchvision rows, the GPU check): a time in its unit (with
its spread), a ratio marked when it misses its target or rests on medians too spread to trust, the targets of a
row."""

import math
from collections.abc import Mapping, Sequence

from core.perf.timing import SPREAD_LIMIT

UNITS = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6))  # the largest unit a time reaches, microseconds below that


def scaled(seconds: float) -> tuple[float, str]:
    """(value, unit) of a time in seconds: 0.0021 -> (2.1, 'ms')."""
    unit, scale = next((u, f) for u, f in UNITS if seconds >= f or u == UNITS[-1][0])
    return seconds / scale, unit


def time_cell(medians: Mapping[str, float], key: str) -> str:
    """The median at `key`, 11 characters wide ('-' when there is none)."""
    seconds = medians.get(key)
    if seconds is None:
        return f"{'-':>11}"
    value, unit = scaled(seconds)
    return f"{value:>8.3g} {unit:<2}"


TIMING_WIDTH = 18  # a timing cell: a time cell and its spread


def spread_text(spread: float) -> str:
    """IQR / median as a percentage, 5 characters at most: '4%', '>999%', '?' when unknown."""
    if math.isnan(spread):
        return "?"
    return f"{spread * 100:.0f}%" if spread * 100 < 999.5 else ">999%"


def timing_cell(medians: Mapping[str, float], spreads: Mapping[str, float | None], key: str) -> str:
    """The median at `key` and its spread (IQR / median) beside it, TIMING_WIDTH characters: '  2.1 ms ±   4%'."""
    if key not in medians:
        return f"{'-':>{TIMING_WIDTH}}"
    iqr = spreads.get(key)
    median = medians[key]
    spread = math.nan if iqr is None else (iqr / median if median > 0 else (0.0 if iqr == 0 else math.inf))
    return f"{time_cell(medians, key)} ±{spread_text(spread):>5}"


RATIO_MARKS = (f"* misses its target; ? rests on a median whose spread (IQR) exceeds {SPREAD_LIMIT:.0%} of it: "
               f"noise, not a measurement")


def ratio_cell(result: dict, key: str) -> str:
    """The ratio at `key` of a bench result, 11 characters wide: '?' after it when it rests on a median too spread
    to trust (result['unreliable']), else '*' when it is above its target."""
    value, bound = result["ratios"].get(key), result["targets"].get(key)
    if value is None:
        return f"{'-':>10} "
    if key in result.get("unreliable", ()):
        return f"{value:>10.3f}?"
    return f"{value:>10.3f}{'*' if bound is not None and value > bound else ' '}"


def target_cell(targets: dict[str, float], keys: Sequence[str], batches: Sequence[object]) -> str:
    """'<= x' when one target holds at every batch size, else each target with the batch size it holds at."""
    held = [(b, targets[k]) for b, k in zip(batches, keys) if k in targets]
    if not held:
        return ""
    if len(held) == len(keys) and len({t for _, t in held}) == 1:
        return f"<= {held[0][1]:.2f}"
    return ", ".join(f"<= {t:.2f} at B={b}" for b, t in held)


def batch_table(result: dict, device: str, title: str, extra_labels: Sequence[str] = ()) -> tuple[list[str], int]:
    """(the rows of a bench result whose keys read '<device> B=<b>: <label>', width of their label column): a head,
    the times with their spreads, then the ratios with their targets; none when the result has no such ratio.
    `extra_labels` widen the label column for rows the caller adds."""
    medians, ratios, targets = result["medians_s"], result["ratios"], result["targets"]
    keys = [k for k in ratios if k.startswith(device + " ")]
    if not keys:
        return [], 0
    batches = list(dict.fromkeys(k.split(":")[0].split("B=")[1] for k in keys))
    labels = list(dict.fromkeys(k.split(": ", 1)[1] for k in keys))
    names = list(dict.fromkeys(k.split(": ", 1)[1] for k in medians if k.startswith(device + " ")))
    width = max(len(text) for text in [*names, *labels, *extra_labels])
    spreads = result.get("spread_s", {})
    head = "".join(f"{'B=' + b:>{TIMING_WIDTH}}" for b in batches)
    lines = ["", f"{title:<{width + 2}}{head}  target"]
    for name in names:
        lines.append(f"  {name:<{width}}" + "".join(timing_cell(medians, spreads, f"{device} B={b}: {name}")
                                                    for b in batches))
    for label in labels:  # ratio cells right-aligned under the timing cells' columns
        cells = "".join(f"{ratio_cell(result, f'{device} B={b}: {label}'):>{TIMING_WIDTH}}" for b in batches)
        bound = targets.get(f"{device} B={batches[0]}: {label}")
        lines.append(f"  {label:<{width}}{cells}  {f'<= {bound:.2f}' if bound is not None else ''}")
    return lines, width
