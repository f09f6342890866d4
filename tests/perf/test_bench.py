"""`bnfold bench`: saving, comparing and failing on ratios (synthetic ratio files), and a quick smoke run.

No test asserts a time: ratios here are made up, and the smoke run only checks that a table and a file appear.
"""

import dataclasses
import json

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
from core.perf.timing import interleaved_medians, machine_info


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
    bench.save(result({"k": 1.0}), "base")
    monkeypatch.setattr(bench, "measure", fake_measure({"k": 9.0}))
    assert main(["bench", "--names", str(names_file), "--device", "cpu", "--compare", "base"]) == 0
    assert "REGRESSED" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--fail", "10%"], "--fail needs --compare"),
    (["--compare", "absent"], "no saved ratios"),
    (["--save", "../x"], "bench name"),
    (["--compare", "base", "--fail", "lots"], "percentage"),
])
def test_bad_options_exit_2_before_any_timing(in_tmp, names_file, monkeypatch, capsys, argv, message):
    bench.save(result({"k": 1.0}), "base")
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
