"""The cells of the timing tables (`bnfold bench`, its torchvision rows, the GPU check): a time in its unit, a ratio
marked when it misses its target, the targets of a row."""

from collections.abc import Sequence

UNITS = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6))  # the largest unit a time reaches, microseconds below that


def scaled(seconds: float) -> tuple[float, str]:
    """(value, unit) of a time in seconds: 0.0021 -> (2.1, 'ms')."""
    unit, scale = next((u, f) for u, f in UNITS if seconds >= f or u == UNITS[-1][0])
    return seconds / scale, unit


def time_cell(medians: dict[str, float], key: str) -> str:
    """The median at `key`, 11 characters wide ('-' when there is none)."""
    seconds = medians.get(key)
    if seconds is None:
        return f"{'-':>11}"
    value, unit = scaled(seconds)
    return f"{value:>8.3g} {unit:<2}"


def ratio_cell(result: dict, key: str) -> str:
    """The ratio at `key` of a bench result, 11 characters wide, '*' after it when it is above its target."""
    value, bound = result["ratios"].get(key), result["targets"].get(key)
    if value is None:
        return f"{'-':>10} "
    return f"{value:>10.3f}{'*' if bound is not None and value > bound else ' '}"


def target_cell(targets: dict[str, float], keys: Sequence[str], batches: Sequence[object]) -> str:
    """'<= x' when one target holds at every batch size, else each target with the batch size it holds at."""
    held = [(b, targets[k]) for b, k in zip(batches, keys) if k in targets]
    if not held:
        return ""
    if len(held) == len(keys) and len({t for _, t in held}) == 1:
        return f"<= {held[0][1]:.2f}"
    return ", ".join(f"<= {t:.2f} at B={b}" for b, t in held)
