"""report.md's tables keep their shape (a '|' inside a cell is escaped), and the speed rows mark a speed-up whose
medians spread by more than SPREAD_LIMIT as unreliable instead of printing it, with the threads each row ran on.

The timings are injected: no test asserts a time."""

import re

import pytest
import torch

from core.app import reproduce
from core.app.report import markdown, summary_rows, summary_table
from core.engine.fold import fold
from core.makemore.data import random_rows
from core.makemore.model import e02_mlp
from core.perf.timing import SMALL_BATCH_ROWS, SPREAD_LIMIT, Timing

UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def table_rows(text: str) -> list[list[list[str]]]:
    """Every markdown table in `text`, as rows of cells split at unescaped pipes."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([cell.strip() for cell in UNESCAPED_PIPE.split(line.strip())[1:-1]])
        previous = line
    return tables


def report_with(speed: list[dict]) -> dict:
    return {"e01": {"train_loss": 3.3, "dev_loss": 3.3, "dev_entropy": 3.29, "alive": ["layers.4.bias"]},
            "e02": {"dev_loss_unfolded": 2.1, "dev_loss_folded": 2.1, "max_abs_logit_diff": 1e-6,
                    "max_bound": 1e-5, "bn_left": 0},
            "speed": speed, "env": {"torch": torch.__version__, "device": "cpu", "threads": 2, "seed": 1, "steps": 9}}


@pytest.fixture
def injected(monkeypatch):
    """measure_speed with the unfolded module's median spread over the limit (0.5 of it) and every other at 0.01."""
    def timings(cases, device=None, rounds=0, sample_s=0.0):
        return {name: Timing(1e-4, 0.5e-4 if name == "unfolded module" else 1e-6) for name in cases}

    monkeypatch.setattr(reproduce, "interleaved_timings", timings)
    g = torch.Generator().manual_seed(0)
    model = e02_mlp(g).eval()
    folded = fold(model)[0]
    return reproduce.measure_speed(model, folded, random_rows(100, g)[0], torch.device("cpu"))


def test_every_table_row_has_the_headers_cells():
    """The quantities named with pipes (|dev − H|, max |Δlogit|) stay inside their cells."""
    rows = [{"batch": 1, "threads": 1, **{way: reproduce.speed_pair(Timing(2e-5, 1e-7), Timing(1e-5, 1e-7))
                                          for way in ("modules", "frozen_chains")}}]
    text = markdown(report_with(rows), {"Loss": "loss.png"})
    tables = table_rows(text)
    assert len(tables) == 2
    for table in tables:
        assert all(len(row) == len(table[0]) for row in table), table
    quantities = [row[0] for row in tables[0][2:]]
    assert r"E01 \|dev − H\|" in quantities and r"E02 max \|Δlogit\|" in quantities


def test_a_spread_over_the_limit_marks_the_row_unreliable_without_its_figure(injected):
    assert [row["batch"] for row in injected] == [1, 64, 4096, 100]  # 4096 rows beyond the dev set: all of them
    for row in injected:
        assert row["modules"]["reliable"] is False and row["frozen_chains"]["reliable"] is True
        assert row["modules"]["unfolded_iqr_us"] == pytest.approx(50.0)
        assert row["threads"] == (1 if min(row["batch"], 100) <= SMALL_BATCH_ROWS else torch.get_num_threads())
    report = report_with(injected)
    summary = dict(summary_rows(report))
    modules, chains = summary["speed-up at batch 1, modules"], summary["speed-up at batch 1, frozen chains"]
    assert modules.startswith(f"unreliable: a median's spread exceeds {SPREAD_LIMIT:.0%} (IQR 50 %, 1 %;")
    assert "x (" not in modules and chains.startswith("1.00x (100 → 100 µs; IQR 1 %, 1 %; 1 thread(s))")
    speed_table = table_rows(markdown(report, {}))[1]
    assert speed_table[0] == ["batch", "way", "threads", "unfolded µs", "folded µs", "spread (IQR)", "speed-up"]
    assert [row[-1] for row in speed_table[2:4]] == ["unreliable", "1.00x"]
    assert "unreliable" in summary_table(report)


def test_fold_torchvision_marks_speed_ups_on_spread_medians(monkeypatch, capsys):
    """B = 1 and 8 with the unfolded median spread over the limit: the speed-up says unreliable and every ratio on
    the unfolded time carries '?'; the others do not."""
    from core.app.cli import main
    from core.perf import bench_models

    def timings(cases, device=None, rounds=0, sample_s=0.0):
        return {name: Timing(1e-3, 0.5e-3 if name == "unfolded" else 1e-5) for name in cases}

    monkeypatch.setattr(bench_models, "interleaved_timings", timings)
    assert main(["fold", "--torchvision", "resnet18", "--image-size", "8", "--bound-size", "8", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for batch in (1, 8):
        line = next(line for line in out.splitlines() if line.startswith(f"  B={batch}: "))
        assert "unfolded 1.00 ms ±50%, folded 1.00 ms ±1%" in line
        assert line.endswith("speed-up (unreliable) 1.00x (1.00x channels-last)")
    ratio_lines = [line for line in out.splitlines() if line.startswith("    folded, channels-last / torch.fx fused")]
    assert len(ratio_lines) == 2
    assert all(line.endswith("folded / unfolded 1.000?") and "torch.fx fused 1.000," in line for line in ratio_lines)
