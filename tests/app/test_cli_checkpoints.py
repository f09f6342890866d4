"""eval, fold and sample use the split a checkpoint records, refuse damaged or non-finite checkpoints in one line,
print strict JSON, and evaluate in chunks, summing in float64."""

import json

import pytest
import torch

from core.makemore.checkpoint import load_checkpoint
from core.makemore.data import Split, synthetic_names
from core.makemore.model import CharMLP
from tests.app.cli_runner import assert_one_line_error, run_cli, run_main
from tests.makemore.pickles import RunsCode


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_names):
    """An e02 checkpoint trained 2 steps with --seed 7 on small_names (so its split seed is 7)."""
    path = tmp_path_factory.mktemp("trained") / "e02.pt"
    result = run_main("train", "--arch", "e02", "--steps", "2", "--seed", "7", "--out", path, "--names", small_names)
    assert result.code == 0, result.err
    return path


def test_train_records_the_split(trained, small_names):
    from core.makemore.data import file_sha256

    checkpoint = load_checkpoint(trained)
    assert checkpoint.split == Split(7, (0.8, 0.1, 0.1)) and checkpoint.split_recorded
    assert checkpoint.names_sha256 == file_sha256(small_names)
    assert checkpoint.model.context_length == 4


def test_eval_uses_the_recorded_split_and_warns_when_told_otherwise(trained, small_names):
    recorded = run_main("eval", trained, "--names", small_names, "--json")
    same = run_main("eval", trained, "--names", small_names, "--json", "--seed", "7")
    other = run_main("eval", trained, "--names", small_names, "--json", "--seed", "8")
    assert recorded.code == same.code == other.code == 0
    assert recorded.err == same.err == ""
    assert strict_json(recorded.out) == strict_json(same.out) != strict_json(other.out)
    assert other.err_lines == [(f"bnfold: warning: --seed 8 differs from the split seed 7 recorded in {trained}: "
                                f"these train/dev/test parts are not the ones it was trained on")]


def test_fold_uses_the_recorded_split_and_keeps_it(trained, small_names, tmp_path):
    out = tmp_path / "folded.pt"
    result = run_main("fold", trained, "-o", out, "--names", small_names)
    assert result.code == 0 and result.err == "", result.err
    assert load_checkpoint(out).split == Split(7)
    warned = run_main("fold", trained, "-o", out, "--names", small_names, "--seed", "9")
    assert warned.code == 0 and "--seed 9 differs from the split seed 7" in warned.err


def test_fold_prints_the_certificate_and_gives_it_as_json(trained, small_names, tmp_path):
    """The folded checkpoint's certificate on the dev rows: its text after the report, and the same as data."""
    text = run_main("fold", trained, "-o", tmp_path / "a.pt", "--names", small_names)
    data = run_main("fold", trained, "-o", tmp_path / "b.pt", "--names", small_names, "--json")
    assert text.code == data.code == 0, text.err + data.err
    assert "certificate: holds" in text.out and "3 folded layer(s) checked on the real activations" in text.out
    result = strict_json(data.out)
    assert result["certificate"]["holds"] and [p["layer"] for p in result["certificate"]["pairs"]] == ["0", "3", "6"]
    assert [p["bn"] for p in result["report"]["folded"]] == ["1", "4", "7"]
    assert result["saved"] == str(tmp_path / "b.pt")


def test_a_fold_that_fails_its_certificate_is_not_saved(trained, small_names, tmp_path, monkeypatch):
    """fold gone wrong (the BatchNorm's mean dropped from the first fold): the certificate fails naming that fold,
    exit 2, and no checkpoint is written."""
    from core.engine import fold as engine_fold
    from properties.plants import plant

    right = engine_fold.fold

    def mean_dropped(model):
        folded, report = right(model)
        if not isinstance(model, CharMLP):  # fold folds a CharMLP's layer stack through its adapter
            return folded, report
        layers = plant(report.plan, folded.layers, "0", "mean_dropped", (0, 1))
        return CharMLP(folded.C.detach(), list(layers), folded.context_length, folded.init_scheme), report

    monkeypatch.setattr(engine_fold, "fold", mean_dropped)
    result = run_main("fold", trained, "-o", tmp_path / "f.pt", "--names", small_names)
    assert_one_line_error(result, "the folded model's certificate does not hold: 1 into 0")
    assert "certificate: FAILS" in result.out and not (tmp_path / "f.pt").exists()


def test_legacy_checkpoint_says_it_uses_the_default_split(checkpoints, small_names):
    result = run_cli("eval", checkpoints["legacy"], "--names", small_names)
    assert result.code == 0
    assert result.err_lines == [(f"bnfold: warning: {checkpoints['legacy']} records no split (it was written before "
                                 f"splits were recorded): using the default split (seed 42, 0.8/0.1/0.1); pass "
                                 f"--seed S if it was trained with another seed")]
    assert len(result.out.split()) == 6  # train L  dev L  test L


def test_another_names_file_is_warned_about(checkpoints, tmp_path):
    names = tmp_path / "other.txt"
    names.write_text("\n".join(synthetic_names(30, seed=5)) + "\n")
    result = run_main("eval", checkpoints["e01"], "--names", names)
    assert result.code == 0 and "is not the names file" in result.err and len(result.err_lines) == 1


@pytest.mark.parametrize("command", ["eval", "fold", "sample"])
def test_nonfinite_weights_are_refused(command, checkpoints, small_names, tmp_path):
    args = {"eval": ["--names", small_names], "fold": ["-o", tmp_path / "f.pt", "--names", small_names],
            "sample": []}[command]
    result = run_main(command, checkpoints["nan"], *args)
    assert_one_line_error(result, "non-finite weights in layers.0.weight (1 of 4000 values)")
    assert result.out == "" and list(tmp_path.iterdir()) == []


def test_nonfinite_weights_through_the_command_line(checkpoints, small_names):
    result = run_cli("eval", checkpoints["nan"], "--names", small_names, "--json")
    assert_one_line_error(result, f"{checkpoints['nan']}: non-finite weights")
    assert result.out == ""


def test_eval_json_is_strict_json(checkpoints, small_names):
    result = run_main("eval", checkpoints["e01"], "--names", small_names, "--json")
    losses = strict_json(result.out)
    assert set(losses) == {"train", "dev", "test"} and all(2 < v < 5 for v in losses.values())


def test_float16_mean_is_taken_in_float64(checkpoints, tmp_path):
    """6000 names give ~35k training rows whose losses sum past float16's 65504 (a float16 mean is inf there,
    and rounded to 3 digits below): the mean must equal the float32 evaluation of the same weights."""
    names = tmp_path / "names.txt"
    names.write_text("\n".join(synthetic_names(6000, seed=2)) + "\n")
    half = strict_json(run_main("eval", checkpoints["half"], "--names", names, "--json").out)
    single = load_checkpoint(checkpoints["half"]).model.float()
    from core.makemore.evaluate import split_losses

    parts = Split(42).parts(names.read_text().split())
    reference = split_losses(single, parts)
    for part, value in half.items():
        assert value == pytest.approx(reference[part], abs=1e-3), part


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: p.write_text("anna\nbob\n"), "not a readable bnfold checkpoint"),
    (lambda p: p.mkdir(), "is a directory, not a checkpoint"),
    (lambda p: torch.save({"format": "bnfold.charmlp/2"}, p), "has no 'config' entry"),
    (lambda p: torch.save([1, 2, 3], p), "not a bnfold checkpoint"),
], ids=["empty", "text", "directory", "no-config", "a-list"])
def test_unreadable_checkpoints_are_one_line(make, expected, tmp_path, small_names):
    path = tmp_path / "m.pt"
    make(path)
    line = assert_one_line_error(run_main("eval", path, "--names", small_names), f"{path}: ", expected)
    assert "weights_only" not in line


def test_hostile_checkpoint_through_the_command_line(tmp_path):
    """Pickled code is refused without running it; the message says why, not how to load it unsafely."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "bnfold.charmlp/2", "config": RunsCode(marker)}, path)
    result = run_cli("sample", path)
    line = assert_one_line_error(result, f"{path}: not a readable bnfold checkpoint (refused to load:", "posix.system")
    assert "weights_only" not in line and "trusted source" not in line
    assert not marker.exists()


def test_a_checkpoint_with_the_wrong_context_length_is_one_line(checkpoints, tmp_path, small_names):
    payload = torch.load(checkpoints["e02"], weights_only=True)
    payload["config"]["context_length"] = 3
    path = tmp_path / "m.pt"
    torch.save(payload, path)
    assert_one_line_error(run_cli("fold", path, "-o", tmp_path / "f.pt", "--names", small_names),
                          "layer 0 (linear) takes fan_in 40 but its input has 30 features")
    assert not (tmp_path / "f.pt").exists()


def test_one_long_name_is_evaluated_in_bounded_memory(checkpoints, small_names, tmp_path):
    """A names file holding one name of a million characters is evaluated chunk by chunk: the peak memory grows
    by far less than the whole split's dataset and activations (over a gigabyte) would need.

    The growth is measured against an evaluation of small_names in the same process, so the size of
    torch itself (which differs between builds) does not enter.
    """
    names = tmp_path / "long.txt"
    names.write_text("\n".join([*synthetic_names(9, seed=3), "q" * 1_000_000]) + "\n")
    measure = ("import atexit, contextlib, io, resource, sys\n"
               "from core.app.cli import main as run_once\n"
               "with contextlib.redirect_stdout(io.StringIO()):\n"
               f"    run_once(['eval', {str(checkpoints['e01'])!r}, '--names', {str(small_names)!r}])\n"
               "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
               "def report():\n"
               "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
               "    print('growth_kib', peak - before, file=sys.stderr)\n"
               "atexit.register(report)")
    result = run_cli("eval", checkpoints["e01"], "--names", names, "--json", prelude=measure)
    assert result.code == 0, result.err
    assert all(0 < v < 100 for v in strict_json(result.out).values())
    growth_mib = int(result.err.split("growth_kib ")[1].split()[0]) / 1024
    assert growth_mib < 400, f"peak memory grew by {growth_mib:.0f} MiB"
