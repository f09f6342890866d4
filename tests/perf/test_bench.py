"""`bnfold bench`: saving, comparing and failing on ratios (synthetic ratio files), and a quick smoke run.

No test asserts a time: ratios here are made up, and the smoke run only checks that a table and a file appear.
"""

import dataclasses
import errno
import json
import math
import os
import re
import sys

import pytest
import torch

from core import notebook
from core.app.cli import main
from core.engine.fold import fold
from core.makemore.data import build_dataset, random_rows, synthetic_names
from core.makemore.experiments import trained_e02
from core.makemore.model import e02_mlp
from core.makemore.train import train
from core.perf import bench
from core.perf.bench import Change, compare, parse_threshold
from core.perf.timing import Timing, interleaved_medians, machine_info, summarize, torch_threads


def result(ratios: dict, cpu="test cpu") -> dict:
    machine = {**machine_info(), "cpu": cpu}
    settings = {**dataclasses.asdict(bench.QUICK), "devices": ["cpu"], "rows": {}, "names": 0}
    return {"format": bench.FORMAT, "machine": machine, "settings": settings, "medians_s": {}, "ratios": ratios,
            "targets": {}}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def names_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(synthetic_names(400, seed=1)) + "\n")
    return path


@pytest.mark.parametrize("text, value", [("10%", 0.10), ("10", 0.10), (" 2.5 % ", 0.025), ("0%", 0.0)])
def test_parse_threshold(text, value):
    assert parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "ten", "-5%", "10%%", "1e3"])
def test_parse_threshold_refuses_non_percentages(text):
    with pytest.raises(bench.BnfoldError, match="percentage"):
        parse_threshold(text)


def test_a_ratio_regressed_only_when_it_grew_past_the_threshold():
    saved = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5, "gone": 2.0}
    now = {"a": 1.0999, "b": 1.1001, "c": 0.5, "d": 0.56, "new": 3.0}
    changes, missing = compare(saved, now, 0.10)
    assert {c.key: c.regressed for c in changes} == {"a": False, "b": True, "c": False, "d": True}
    assert missing == ["gone"]
    assert Change("x", 2.0, 3.0, True).percent == pytest.approx(50.0)


def test_zero_threshold_fails_on_any_growth_and_never_on_improvement():
    changes, _ = compare({"a": 1.0, "b": 1.0}, {"a": 1.0 + 1e-12, "b": 0.9}, 0.0)
    assert [c.regressed for c in changes] == [True, False]


def test_save_then_load_round_trips_through_the_benchmarks_folder(in_tmp):
    data = result({"cpu B=1: folded frozen / minimal chain": 1.05})
    path = bench.save(data, "base")
    assert path.resolve() == in_tmp / ".benchmarks" / "ratios-base.json"
    assert bench.load("base") == json.loads(json.dumps(data))
    assert [p.name for p in path.parent.iterdir()] == ["ratios-base.json"]  # no temporary file left


@pytest.mark.parametrize("name", ["../up", "a/b", ".hidden", "", "sp ace"])
def test_bad_names_are_refused(in_tmp, name):
    with pytest.raises(bench.BnfoldError, match="bench name"):
        bench.ratios_path(name)


def test_missing_and_corrupt_saved_files_say_what_to_do(in_tmp):
    with pytest.raises(bench.BnfoldError, match="no saved ratios named .nothing.; save a run under that name first"):
        bench.load("nothing")
    (in_tmp / ".benchmarks").mkdir()
    (in_tmp / ".benchmarks" / "ratios-bad.json").write_text("{not json")
    with pytest.raises(bench.BnfoldError, match="unreadable"):
        bench.load("bad")
    (in_tmp / ".benchmarks" / "ratios-other.json").write_text(json.dumps({"format": "x", "ratios": {}}))
    with pytest.raises(bench.BnfoldError, match="not a"):
        bench.load("other")


@pytest.mark.parametrize("batch", [1, 64, 4096, "dev"])
def test_targets_per_ratio_and_batch_size(batch):
    assert bench.target("cpu", batch, "folded module / torch fused") == 1.00
    assert bench.target("cpu", batch, "folded frozen / minimal chain") == 1.05
    assert bench.target("cpu", batch, "folded frozen / torch fused") == (0.70 if batch == 1 else None)
    for label in ("folded / unfolded, modules", "folded / unfolded, torch.nn", "folded / unfolded, frozen chains"):
        assert bench.target("cpu", batch, label) is None
    assert bench.target("cuda", batch, "folded module / torch fused") is None


def fake_measure(ratios):
    def measure(names, settings, devices, log=None):
        return result(ratios, cpu=machine_info()["cpu"])
    return measure


@pytest.mark.parametrize("now, code", [(1.05, None), (1.2, 1), (0.5, None)])
def test_compare_with_fail_exits_1_only_on_a_regression(in_tmp, names_file, monkeypatch, capsys, now, code):
    bench.save(result({"cpu B=1: folded frozen / minimal chain": 1.0, "cpu: train step ours / notebook": 0.6}), "base")
    monkeypatch.setattr(bench, "measure", fake_measure({"cpu B=1: folded frozen / minimal chain": now,
                                                        "cpu: train step ours / notebook": 0.6}))
    argv = ["bench", "--names", str(names_file), "--device", "cpu", "--compare", "base", "--fail", "10%"]
    if code is None:
        assert main(argv) == 0
    else:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == code
    out = capsys.readouterr().out
    assert ("REGRESSED" in out) == (code == 1)


def test_compare_without_fail_reports_but_passes(in_tmp, names_file, monkeypatch, capsys):
    bench.save(result({"cpu: k": 1.0}), "base")
    monkeypatch.setattr(bench, "measure", fake_measure({"cpu: k": 9.0}))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", "--compare", "base"]) == 0
    assert "REGRESSED" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--fail", "10%"], "--fail needs --compare"),
    (["--compare", "absent"], "no saved ratios"),
    (["--save", "../x"], "bench name"),
    (["--compare", "base", "--fail", "lots"], "percentage"),
    (["--names", "absent.txt"], "absent.txt: cannot read names file (no such file or directory)"),
])
def test_bad_options_exit_2_before_any_timing(in_tmp, names_file, monkeypatch, capsys, argv, message):
    bench.save(result({"cpu: k": 1.0}), "base")
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("measured despite bad options"))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


def test_quick_smoke_run_prints_the_table_and_saves(in_tmp, names_file, capsys):
    assert main(["bench", "--quick", "--names", str(names_file), "--device", "cpu", "--save", "smoke"]) == 0
    out = capsys.readouterr().out
    for label in ("folded module / torch fused", "folded frozen / minimal chain", "folded frozen / torch fused",
                  "folded / unfolded, modules", "folded / unfolded, torch.nn", "folded / unfolded, frozen chains",
                  "train step ours / notebook", "build_dataset vectorised / loop"):
        assert label in out
    saved = bench.load("smoke")
    assert saved["machine"]["torch"] == torch.__version__ and "threads" in saved["machine"]
    assert all(value > 0 for value in saved["ratios"].values())


def test_inference_variants_agree(in_tmp):
    g = torch.Generator().manual_seed(0)
    model = trained_e02(*random_rows(300, g), steps=20, generator=g)
    folded = fold(model)[0].eval()
    X = random_rows(50, g)[0]
    with torch.inference_mode():
        outs = {name: fn(X) for name, fn in bench.inference_variants(model, folded).items()}
    for name, out in outs.items():
        torch.testing.assert_close(out, outs["unfolded module"], msg=name)  # float32 rounding of folding only
    assert torch.equal(outs["folded module"], outs["minimal chain"])
    assert torch.equal(outs["folded frozen"], outs["folded module"])
    assert torch.equal(outs["unfolded frozen"], outs["unfolded module"])


def test_notebook_loop_matches_ours_on_the_first_step():
    g = torch.Generator().manual_seed(0)
    X, Y = random_rows(200, g)
    ours = e02_mlp(torch.Generator().manual_seed(1))
    reference = notebook.Net(ours)
    train(ours, X, Y, 1, generator=torch.Generator().manual_seed(2), progress=False)
    notebook.train(reference, X, Y, 1, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(reference.C, ours.C.detach())
    torch.testing.assert_close(reference.layers[0].weight, ours.layers[0].weight.detach())


def test_notebook_prepare_data_is_build_dataset_row_for_row():
    names = synthetic_names(50, seed=3)
    for got, expected in zip(notebook.prepare_data(names, 3), build_dataset(names, 3)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_interleaving_varies_the_order_and_never_repeats_a_case(count):
    """Each of k cases is sampled once per round; no case runs twice in a row; over 40 rounds every case runs
    right after every other.

    What ran just before a case changes its time by a few percent on a model of several MB: a fixed order
    (A B C, C B A) favours some cases over the others.
    """
    order = []
    cases = {name: (lambda name=name: order.append(name)) for name in "ABCDE"[:count]}
    rounds = 40
    interleaved_medians(cases, rounds=rounds, sample_s=0.0)
    timed = order[3 * count:]  # after each case's warm-up and the two calls that size its samples
    assert all(sorted(timed[r * count:(r + 1) * count]) == sorted(cases) for r in range(rounds))
    assert all(a != b for a, b in zip(timed, timed[1:])) or count == 1
    assert set(zip(timed, timed[1:])) >= {(a, b) for a in cases for b in cases if a != b}


# A saved run is checked when it is loaded, before anything is timed; a comparison that compares nothing is refused.

def write_saved(folder, name: str, data) -> None:
    (folder / ".benchmarks").mkdir(exist_ok=True)
    (folder / ".benchmarks" / f"ratios-{name}.json").write_text(data if isinstance(data, str) else json.dumps(data))


SAVED_KEY = "cpu B=1: folded frozen / minimal chain"
BAD_SAVED = {
    "no ratios": ({"ratios": {}}, "holds no ratios, so a comparison would compare nothing"),
    "a string": ({"ratios": {SAVED_KEY: "1.0"}}, f"ratio {SAVED_KEY!r} is \"1.0\"; a ratio of two times is a positive"),
    "null": ({"ratios": {SAVED_KEY: None}}, f"ratio {SAVED_KEY!r} is null;"),
    "zero": ({"ratios": {SAVED_KEY: 0}}, f"ratio {SAVED_KEY!r} is 0;"),
    "negative": ({"ratios": {SAVED_KEY: -1.977}}, f"ratio {SAVED_KEY!r} is -1.977;"),
    "true": ({"ratios": {SAVED_KEY: True}}, f"ratio {SAVED_KEY!r} is true;"),
    "no machine": ({"machine": None}, "has no \"machine\" object"),
    "machine a string": ({"machine": "laptop"}, "has \"laptop\" as its \"machine\" object"),
}


@pytest.mark.parametrize("name", BAD_SAVED)
def test_a_saved_run_with_a_bad_schema_is_refused_when_loaded(in_tmp, name):
    change, message = BAD_SAVED[name]
    data = result({SAVED_KEY: 1.0})
    data.update(change)
    if data["machine"] is None:
        del data["machine"]
    write_saved(in_tmp, "bad", data)
    with pytest.raises(bench.BnfoldError) as err:
        bench.load("bad")
    assert message in str(err.value) and str(err.value).startswith(str(bench.ratios_path("bad")))


def saved_with_ratio(key: str, constant: str) -> str:
    """A saved run as text whose one ratio is the JSON constant given; only that ratio's text is replaced (the
    machine's load average may read 1.0… too)."""
    ratio = f"{json.dumps(key)}: 1.0"
    text = json.dumps(result({key: 1.0}))
    assert text.count(ratio) == 1
    return text.replace(ratio, f"{json.dumps(key)}: {constant}")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_saved_non_finite_ratio_is_refused(in_tmp, constant):
    """json reads NaN and Infinity; a ratio of two times is neither."""
    text = saved_with_ratio(SAVED_KEY, constant)
    write_saved(in_tmp, "bad", text)
    with pytest.raises(bench.BnfoldError, match=re.escape(f"ratio {SAVED_KEY!r} is {constant};")):
        bench.load("bad")


@pytest.mark.parametrize("name", [*BAD_SAVED, "a NaN"])
def test_a_bad_saved_run_fails_the_command_before_any_timing(in_tmp, names_file, monkeypatch, capsys, name):
    if name == "a NaN":
        write_saved(in_tmp, "bad", saved_with_ratio(SAVED_KEY, "NaN"))
    else:
        data = {**result({SAVED_KEY: 1.0}), **BAD_SAVED[name][0]}
        write_saved(in_tmp, "bad", {k: v for k, v in data.items() if v is not None})
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("measured despite a bad saved run"))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", "--compare", "bad", "--fail", "10%"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnfold: error: --compare bad: .benchmarks/ratios-bad.json: "), err


def test_saved_ratios_of_devices_this_run_does_not_time_are_refused_before_timing(in_tmp, names_file, monkeypatch,
                                                                                 capsys):
    bench.save(result({"cuda B=1: folded frozen / minimal chain": 1.0}), "gpu")
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("measured with nothing to compare"))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", "--compare", "gpu"]) == 2
    assert ("--compare gpu: its ratios were timed on cuda, which this run does not time (cpu): nothing would be "
            "compared") in capsys.readouterr().err


def test_a_comparison_that_compares_nothing_is_an_error(in_tmp, names_file, monkeypatch, capsys):
    """Every saved key went unmeasured (another batch grid, say): exit 2, never a pass."""
    bench.save(result({"cpu B=7: folded frozen / minimal chain": 1.0}), "base")
    monkeypatch.setattr(bench, "measure", fake_measure({SAVED_KEY: 5.0}))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", "--compare", "base", "--fail", "10%"]) == 2
    assert ("--compare base: none of its 1 ratios was measured in this run, so nothing was compared"
            in capsys.readouterr().err)


@pytest.mark.parametrize("option", ["--save", "--compare"])
def test_an_empty_bench_name_is_refused_not_ignored(in_tmp, names_file, monkeypatch, capsys, option):
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("measured despite an empty name"))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", option, ""]) == 2
    assert "the bench name is empty; give a name such as base" in capsys.readouterr().err


def make_benchmarks_a_file(folder):
    (folder / ".benchmarks").write_text("not a directory")


@pytest.mark.parametrize("arrange, name, message", [
    (make_benchmarks_a_file, "base", "--save .benchmarks: is a file, not a directory; bench saves its ratios in the "
                                     "directory .benchmarks: move that file away"),
    (lambda folder: None, "x" * 250, "the file name is 262 bytes, longer than the 255 this file system allows"),
], ids=["benchmarks-is-a-file", "name-too-long"])
def test_save_checks_its_output_before_any_timing(in_tmp, names_file, monkeypatch, capsys, arrange, name, message):
    arrange(in_tmp)
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("measured despite an unusable --save"))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", "--save", name]) == 2
    assert message in capsys.readouterr().err


def test_save_on_a_read_only_file_system_is_refused_before_timing(in_tmp, names_file, monkeypatch, capsys):
    import core.app.outputs

    def read_only(target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(core.app.outputs, "probe_create", read_only)
    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("measured despite a read-only file system"))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", "--save", "base"]) == 2
    assert ("--save .benchmarks/ratios-base.json: .benchmarks is on a read-only file system; choose a path on a "
            "writable one") in capsys.readouterr().err


# Spread, threads and the marking of unreliable ratios, with injected timings.

@pytest.mark.parametrize("samples, median, iqr", [
    ([5.0], 5.0, math.nan), ([1.0, 3.0], 2.0, 1.0), ([10, 10, 10, 11, 12], 10, 1), ([4, 1, 3, 2], 2.5, 1.5)])
def test_a_timing_is_the_median_and_interquartile_range_of_its_samples(samples, median, iqr):
    """summarize(s) = (median s, Q3 − Q1), inclusive quartiles; a single sample has no spread (nan)."""
    timing = summarize(samples)
    assert timing.median == median
    assert (math.isnan(timing.iqr) and math.isnan(iqr)) or timing.iqr == pytest.approx(iqr, rel=1e-12)


@pytest.mark.parametrize("median, iqr, reliable", [
    (10.0, 1.0, True), (10.0, 1.0000001, False), (10.0, 0.0, True), (10.0, math.nan, False), (0.0, 1.0, False),
    (0.0, 0.0, True)])
def test_a_median_is_reliable_exactly_while_its_spread_is_within_the_limit(median, iqr, reliable):
    """reliable ⟺ IQR ≤ SPREAD_LIMIT · median; an unknown spread (one sample) is never reliable."""
    assert Timing(median, iqr).reliable is reliable


def injected_timings(noisy: str, seen_threads: list):
    """interleaved_timings with `noisy`'s median spread at half of it and every other at 1 %; it records the torch
    threads each set of cases ran on."""
    def timings(cases, device=None, rounds=0, sample_s=0.0):
        seen_threads.append(torch.get_num_threads())
        return {name: Timing(1e-3, 0.5e-3 if name == noisy else 1e-5) for name in cases}
    return timings


@pytest.fixture
def no_torchvision_rows(monkeypatch):
    monkeypatch.setattr(bench.bench_models, "extend", lambda result, settings, log=None: result)


def test_ratios_on_a_spread_median_are_marked_and_never_starred(monkeypatch, names_file, no_torchvision_rows):
    monkeypatch.setattr(bench, "interleaved_timings", injected_timings("torch fused", []))
    settings = dataclasses.replace(bench.QUICK, batch_sizes=(1, 4096), stats_steps=2, train_steps=1)
    out = bench.measure(names_file.read_text().split(), settings)
    spread = {f"cpu B={b}: {label}" for b in (1, 4096) for label, ours, ref in bench.INFERENCE_RATIOS
              if "torch fused" in (ours, ref)}
    assert set(out["unreliable"]) == spread
    assert out["spread_s"]["cpu B=1: torch fused"] == pytest.approx(0.5e-3)
    table = bench.format_table(out)
    lines = {line.split("  ")[1]: line for line in table.splitlines() if line.startswith("  ")}
    assert lines["folded frozen / torch fused"].endswith("     1.000?     1.000?  <= 0.70 at B=1")  # ?, not *
    assert lines["folded frozen / minimal chain"].endswith("     1.000      1.000   <= 1.05")
    assert lines["folded / unfolded, modules"].endswith("     1.000      1.000   ")
    assert lines["torch fused"].endswith("       1 ms ±  50%       1 ms ±  50%")
    assert lines["folded module"].endswith("       1 ms ±   1%       1 ms ±   1%")
    assert "* misses its target; ? rests on a median whose spread (IQR) exceeds 10% of it" in table


def test_small_batches_run_on_one_thread_unless_a_count_is_chosen(monkeypatch, names_file, no_torchvision_rows):
    names = names_file.read_text().split()
    settings = dataclasses.replace(bench.QUICK, batch_sizes=(1, 64, 4096), stats_steps=2, train_steps=1)
    for chosen, expected in ((None, {"cpu B=1": 1, "cpu B=64": 1, "cpu B=4096": 2, "cpu: train step": 1}),
                             (3, {"cpu B=1": 3, "cpu B=64": 3, "cpu B=4096": 3, "cpu: train step": 3})):
        seen: list = []
        monkeypatch.setattr(bench, "interleaved_timings", injected_timings("none", seen))
        with torch_threads(2):
            out = bench.measure(names, dataclasses.replace(settings, threads=chosen))
            assert torch.get_num_threads() == 2
        assert {k: v for k, v in out["threads"].items() if k in expected} == expected
        assert seen[:4] == [expected["cpu B=1"], expected["cpu B=64"], expected["cpu B=4096"],
                            expected["cpu: train step"]]
        assert out["unreliable"] == []
    assert "  threads" in bench.format_table(out)


def test_a_comparison_names_a_ratio_that_rests_on_noise():
    saved = result({SAVED_KEY: 1.0})
    changes, missing = compare(saved["ratios"], {SAVED_KEY: 1.5}, 0.1)
    text = bench.format_comparison("base", saved, changes, missing, 0.1, unreliable=[SAVED_KEY])
    assert "REGRESSED (unreliable now: a median's spread exceeds 10%)" in text


def test_a_comparison_keeps_its_columns_for_keys_longer_than_its_key_column():
    """Every row's saved value starts in the same column, however long its key: the column widens to the longest."""
    long_key = "cpu/onnxruntime B=8: mobilenet_v2 folded, off / unfolded, basic"
    assert len(long_key) > bench.KEY_WIDTH
    saved = result({SAVED_KEY: 1.0, long_key: 2.0, "gone": 3.0})
    changes, missing = compare(saved["ratios"], {SAVED_KEY: 1.0, long_key: 2.0}, 0.1)
    rows = bench.format_comparison("base", saved, changes, missing, 0.1).splitlines()[1:4]
    arrows = [row.index(" -> ") for row in rows[:2]]  # the saved value, 8 wide, stands just before its arrow
    assert arrows[0] == arrows[1] and rows[2].index("not measured") == arrows[0] - 8


def test_the_onnx_rows_time_both_exports_at_each_level_and_say_their_ratios():
    """bench --onnx's rows (quick settings): six sessions per batch, three ratios each, the target on the one that says
    whether folding needs ONNX Runtime's optimiser for Conv + BatchNorm; the table prints them. No time is asserted."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torchvision")
    from core.perf import bench_onnx

    result = bench_onnx.extend({"medians_s": {}, "ratios": {}, "targets": {}}, bench_onnx.QUICK)
    assert sorted(k.split(": ")[1] for k in result["medians_s"] if "B=1:" in k) == sorted(
        f"resnet18 {v}, {level}" for v in ("unfolded", "folded") for level in bench_onnx.LEVELS)
    assert sorted(result["ratios"]) == sorted(f"cpu/onnxruntime B={b}: resnet18 {label}" for b in (1, 8)
                                              for label, _, _ in bench_onnx.RATIOS)
    assert result["targets"] == {f"cpu/onnxruntime B={b}: resnet18 folded, off / unfolded, basic": 1.05
                                 for b in (1, 8)}
    table = bench_onnx.format_rows(result)
    assert "onnxruntime" in table and "resnet18 folded, off / unfolded, basic" in table and "<= 1.05" in table


def test_bench_onnx_without_its_packages_is_refused_before_the_run(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["bench", "--onnx", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bench --onnx needs the package onnxruntime" in err
