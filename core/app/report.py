"""report.json, report.md and the PNG plots of a reproduce run, from plain data.

The PNGs and report.md are written first and report.json last, each atomically, so a run that
stops early never leaves a report.json that looks complete.
"""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from core.atomic import atomic_path, atomic_write_text  # noqa: E402
from core.perf.timing import SPREAD_LIMIT  # noqa: E402

SMOOTH = 1000  # steps per point of a loss curve, as in the makemore notebook
REPORT_JSON = "report.json"  # written last, so a run that stops early leaves none of its own


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def smoothed_log10(losses: list[float], window: int = SMOOTH) -> tuple[list[float], list[float]]:
    """log10 of the loss, averaged over consecutive windows (a shorter run uses ~100 points)."""
    t = torch.tensor(losses, dtype=torch.float64)
    window = max(1, min(window, len(t) // 100 or 1))
    t = t[: len(t) // window * window].view(-1, window).mean(1)
    return (torch.arange(len(t)) * window + window / 2).tolist(), t.log10().tolist()


def plot_loss_curves(path: Path, curves: dict[str, list[float]], floors: dict[str, float] | None = None) -> None:
    """curves: label -> per-step losses; floors: label -> a horizontal reference line (e.g. H)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, losses in curves.items():
        ax.plot(*smoothed_log10(losses), label=label)
    for label, value in (floors or {}).items():
        ax.axhline(math.log10(value), ls="--", lw=1, color="grey")
        ax.annotate(label, (0, math.log10(value)), textcoords="offset points", xytext=(4, 4), fontsize=8, color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel("log10 loss (smoothed)")
    ax.set_title("Training loss")
    ax.legend()
    _save(fig, path)


def plot_layer_histograms(path: Path, per_scheme: dict[str, dict[str, torch.Tensor]], title: str, xlabel: str) -> None:
    """per_scheme: scheme -> {layer label -> 1-D tensor of values}; one row of axes per scheme."""
    fig, axes = plt.subplots(len(per_scheme), 1, figsize=(8, 2.6 * len(per_scheme)), squeeze=False)
    for ax, (scheme, layers) in zip(axes[:, 0], per_scheme.items()):
        for label, values in layers.items():
            values = values.detach().double().flatten()
            lo, hi = float(values.min()), float(values.max())
            if hi - lo < 1e-12:  # a spike (e.g. every value exactly 0): draw it as a bar, not an empty histogram
                ax.axvline(lo, lw=3, alpha=0.6, label=f"{label}: all {lo:g}")
                ax.set_xlim(min(ax.get_xlim()[0], lo - 1), max(ax.get_xlim()[1], lo + 1))
                continue
            hist = torch.histc(values, bins=50, min=lo, max=hi)
            centres = torch.linspace(lo, hi, 51)[:-1] + (hi - lo) / 100
            ax.plot(centres.tolist(), (hist / hist.sum()).tolist(), label=f"{label}: std {values.std():.2e}")
        ax.set_title(f"{title} — {scheme}")
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel(xlabel)
    fig.tight_layout()
    _save(fig, path)


def plot_alive(path: Path, alive_by_scheme: dict[str, dict[str, bool]]) -> None:
    """alive_by_scheme: scheme -> {parameter name -> bool (ever got a nonzero gradient)}."""
    schemes = list(alive_by_scheme)
    params = list(next(iter(alive_by_scheme.values())))
    grid = [[1.0 if alive_by_scheme[s][p] else 0.0 for p in params] for s in schemes]
    fig, ax = plt.subplots(figsize=(0.55 * len(params) + 2, 0.5 * len(schemes) + 1.6))
    ax.imshow(grid, cmap="Greens", vmin=0, vmax=1.4, aspect="auto")
    ax.set_xticks(range(len(params)), params, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(schemes)), schemes)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "alive" if v else "·", ha="center", va="center", fontsize=6)
    ax.set_title("Parameters that ever received a nonzero gradient")
    _save(fig, path)


def plot_bound_ratio(path: Path, ratios: torch.Tensor) -> None:
    """Histogram of |Δlogit| / certified bound over the dev set (every value must be ≤ 1)."""
    r = ratios.detach().double().flatten()
    fig, ax = plt.subplots(figsize=(7, 4))
    positive = r[r > 0]
    if len(positive):
        lo = math.floor(math.log10(float(positive.min())))
        bins = torch.logspace(lo, 0, 60).tolist()
        ax.hist(positive.tolist(), bins=bins)
        ax.set_xscale("log")
    ax.axvline(1.0, color="red", ls="--", lw=1)
    ax.set_xlabel("|folded − unfolded| / certified bound, per logit")
    ax.set_ylabel("logits")
    ax.set_title(f"Folding error against its bound: max {float(r.max()):.2e}, {int((r == 0).sum())} exactly equal")
    _save(fig, path)


SPEED_WAYS = {"modules": "modules", "frozen_chains": "frozen chains"}  # report.json key -> how the nets ran


def plot_speed(path: Path, speed: list[dict]) -> None:
    """speed: rows {batch, modules, frozen_chains}, each way {unfolded_us, folded_us, speedup}; time against batch."""
    batches = [row["batch"] for row in speed]
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = (("C0", (4, 6)), ("C1", (4, -12)))  # colour, where its speed-ups are written (above, below)
    for (way, label), (colour, offset) in zip(SPEED_WAYS.items(), styles):
        ax.loglog(batches, [row[way]["unfolded_us"] for row in speed], "o--", color=colour,
                  label=f"unfolded (BatchNorm), {label}")
        ax.loglog(batches, [row[way]["folded_us"] for row in speed], "o-", color=colour, label=f"folded, {label}")
        for row in speed:
            label_text = f"{row[way]['speedup']:.2f}x" if row[way].get("reliable", True) else "noise?"
            ax.annotate(label_text, (row["batch"], row[way]["folded_us"]),
                        textcoords="offset points", xytext=offset, fontsize=8, color=colour)
    ax.margins(0.1)  # room for the speed-ups written beside the end points
    ax.set_xlabel("batch size")
    ax.set_ylabel("µs per eval forward (median)")
    ax.set_title("E02 inference: folded vs unfolded, as modules and as frozen chains\n"
                 f"(noise?: a median's spread exceeds {SPREAD_LIMIT:.0%} of it)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def summary_rows(report: dict) -> list[tuple[str, str]]:
    e01, e02 = report["e01"], report["e02"]
    rows = [
        ("E01 train loss", f"{e01['train_loss']:.4f}"),
        ("E01 dev loss", f"{e01['dev_loss']:.4f}"),
        ("E01 dev entropy H", f"{e01['dev_entropy']:.4f}"),
        ("E01 |dev − H|", f"{abs(e01['dev_loss'] - e01['dev_entropy']):.4f}"),
        ("E01 alive", ", ".join(e01["alive"])),
        ("E02 dev loss unfolded", f"{e02['dev_loss_unfolded']:.6f}"),
        ("E02 dev loss folded", f"{e02['dev_loss_folded']:.6f}"),
        ("E02 max |Δlogit|", f"{e02['max_abs_logit_diff']:.3e}"),
        ("E02 max bound", f"{e02['max_bound']:.3e}"),
        ("E02 BatchNorms left", str(e02["bn_left"])),
    ]
    rows += [(f"speed-up at batch {row['batch']}, {label}", speed_text(row, row[way]))
             for row in report["speed"] for way, label in SPEED_WAYS.items()]
    return rows


def spread_percent(iqr_us: float | None, median_us: float) -> str:
    """An IQR as a percentage of its median: '3 %', '? %' when unknown."""
    if iqr_us is None or median_us <= 0:
        return "? %"
    return f"{iqr_us / median_us * 100:.0f} %"


def spreads(pair: dict) -> str:
    """'IQR 3 %, 2 %': the spread of the unfolded and the folded median."""
    return (f"IQR {spread_percent(pair.get('unfolded_iqr_us'), pair['unfolded_us'])}, "
            f"{spread_percent(pair.get('folded_iqr_us'), pair['folded_us'])}")


def speed_text(row: dict, pair: dict) -> str:
    """A speed-up with its times, spreads and threads; marked unreliable, without the figure, when a median's
    spread exceeds SPREAD_LIMIT (a busy machine's noise, not what folding buys)."""
    times = f"{pair['unfolded_us']:.0f} → {pair['folded_us']:.0f} µs"
    threads = f"{row['threads']} thread(s)" if "threads" in row else ""
    if not pair.get("reliable", True):
        return f"unreliable: a median's spread exceeds {SPREAD_LIMIT:.0%} ({spreads(pair)}; {times}; {threads})"
    return f"{pair['speedup']:.2f}x ({times}; {spreads(pair)}; {threads})"


def md_cell(value: object) -> str:
    """A value as the text of a markdown table cell: a '|' inside it escaped, so it does not end the cell."""
    return str(value).replace("|", "\\|")


def md_row(*cells: object) -> str:
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


def summary_table(report: dict) -> str:
    rows = summary_rows(report)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def markdown(report: dict, figures: dict[str, str]) -> str:
    env = report["env"]
    lines = [
        "# bnfold reproduce",
        "",
        f"torch {env['torch']} on {env['device']} ({env['threads']} threads), seed {env['seed']}, "
        f"{env['steps']} steps per experiment.",
        "",
        "| quantity | value |",
        "| --- | --- |",
        *[md_row(k, v) for k, v in summary_rows(report)],
        "",
        "## E01: zero init trains only the output bias",
        "",
        "Every Linear weight and bias starts at 0. Only the output bias ever gets a gradient, so the",
        "net ignores its input and its dev loss floors at H, the entropy of the dev labels' marginal.",
        "",
        "## E02: folding BatchNorm into Linear",
        "",
        "Each BatchNorm1d is folded into the Linear before it. The folded net has no BatchNorm and",
        "gives the same dev logits within the certified floating-point bound.",
        "",
        "Speed is measured two ways, all four timed interleaved: the nets called as modules, and each",
        "net's eval ops run as a frozen chain (no module calls). The first speed-up also counts the",
        "module calls that folding removes; the second is what folding buys in the ops alone.",
        "Each time is a median with its spread, the interquartile range (IQR) as a share of it; a",
        f"speed-up whose medians spread by more than {SPREAD_LIMIT:.0%} is noise (a busy machine), marked",
        "unreliable rather than given as a figure. Small batches run on one thread.",
        "",
        "| batch | way | threads | unfolded µs | folded µs | spread (IQR) | speed-up |",
        "| ---: | --- | ---: | ---: | ---: | --- | ---: |",
        *[md_row(r["batch"], label, r.get("threads", "?"), f"{r[way]['unfolded_us']:.1f}",
                 f"{r[way]['folded_us']:.1f}", spreads(r[way]).removeprefix("IQR "),
                 f"{r[way]['speedup']:.2f}x" if r[way].get("reliable", True) else "unreliable")
          for r in report["speed"] for way, label in SPEED_WAYS.items()],
        "",
    ]
    for title, name in figures.items():
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict, figures: dict[str, str]) -> None:
    """Write report.md, then report.json last (the PNGs named in `figures` are already there)."""
    atomic_write_text(out_dir / "report.md", markdown(report, figures))
    atomic_write_text(out_dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
