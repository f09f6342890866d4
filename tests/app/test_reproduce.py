"""`bnfold reproduce`: the report contract, real images, agreement within the bound, and clean failures."""

import json

import matplotlib.image
import pytest
import torch

from core.app.cli import main
from core.makemore.diagnostics import output_bias
from core.makemore.model import e01_mlp
from tests.app.cli_runner import assert_one_line_error, run_cli

CONTRACT = {
    "e01": {"steps", "train_loss", "dev_loss", "dev_entropy", "alive"},
    "e02": {"steps", "dev_loss_unfolded", "dev_loss_folded", "max_abs_logit_diff", "max_bound", "bn_left",
            "loss_bound"},
    "env": {"torch", "device", "threads", "seed", "steps"},
}
SPEED_ROW = {"batch", "threads", "modules", "frozen_chains"}  # folded vs unfolded, timed both ways
SPEED_PAIR = {"unfolded_us", "folded_us", "unfolded_iqr_us", "folded_iqr_us", "speedup", "reliable"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def short_run(names_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    assert main(["reproduce", "--steps", "300", "--seed", "5", "--out", str(out), "--names", str(names_path)]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_contract(short_run):
    _, report = short_run
    for section, keys in CONTRACT.items():
        assert keys <= set(report[section]), section
    assert report["e01"]["steps"] == report["e02"]["steps"] == report["env"]["steps"] == 300
    assert [row["batch"] for row in report["speed"]][:3] == [1, 64, 4096]
    assert report["speed"][3]["batch"] > 4096  # the whole dev set
    for row in report["speed"]:
        assert set(row) == SPEED_ROW
        for way in ("modules", "frozen_chains"):
            pair = row[way]
            assert set(pair) == SPEED_PAIR
            assert pair["speedup"] == pytest.approx(pair["unfolded_us"] / pair["folded_us"], rel=1e-12)
            assert isinstance(pair["reliable"], bool)
        assert row["threads"] == (1 if row["batch"] <= 64 else torch.get_num_threads())
    assert report["e02"]["bn_left"] == 0


def test_every_png_is_a_real_image(short_run):
    out, _ = short_run
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 6
    markdown = (out / "report.md").read_text()
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        pixels = matplotlib.image.imread(png)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0, f"{png.name} is blank"
        assert f"]({png.name})" in markdown


def test_folded_agrees_within_bound(short_run):
    _, report = short_run
    e02 = report["e02"]
    assert e02["max_abs_logit_diff"] <= e02["max_bound"]
    assert abs(e02["dev_loss_folded"] - e02["dev_loss_unfolded"]) <= e02["loss_bound"]


def test_e01_only_output_bias_alive(short_run):
    _, report = short_run
    assert report["e01"]["alive"] == [output_bias(e01_mlp(torch.Generator()))]


def test_same_seed_same_numbers(short_run, names_path, tmp_path):
    _, first = short_run
    assert main(["reproduce", "--steps", "300", "--seed", "5", "--out", str(tmp_path), "--names", str(names_path)]) == 0
    second = json.loads((tmp_path / "report.json").read_text())
    assert second["e01"] == first["e01"] and second["e02"] == first["e02"]


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (lambda t: ["--names", t / "missing.txt", "--out", t / "out"], "cannot read names file"),
        (lambda t: ["--names", t / "bad.txt", "--out", t / "out"], "bad.txt:2:"),
        (lambda t: ["--out", t / "file.txt" / "out"], "cannot create this directory (not a directory)"),
        (lambda t: ["--device", "cuda", "--out", t / "out"], "CUDA"),
    ],
    ids=["missing-names", "malformed-names", "unwritable-out", "no-cuda"],
)
def test_bad_input_fails_cleanly(make_args, expected, tmp_path, names_path):
    if expected == "CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    (tmp_path / "bad.txt").write_text("anna\nbo b\n")
    (tmp_path / "file.txt").write_text("")
    args = [str(a) for a in make_args(tmp_path)]
    if "--names" not in args:
        args += ["--names", str(names_path)]
    assert_one_line_error(run_cli("reproduce", "--steps", "50", *args), expected)
    assert not list(tmp_path.rglob("report.json"))
