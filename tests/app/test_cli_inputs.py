"""Every bad command-line input is one stderr line and exit code 2, before any work: nothing is written.

Subprocess runs check what a user sees; the many variants of one class run in-process (same code path,
no torch start-up per case).
"""

import pytest
import torch

from tests.app.cli_runner import assert_one_line_error, run_cli, run_main

TRAIN = ["train", "--arch", "e01", "--steps", "2"]

NUMBERS = {
    "lr nan": (["--lr", "nan"], "argument --lr", "'nan'"),
    "lr inf": (["--lr", "inf"], "argument --lr", "'inf'"),
    "lr -1": (["--lr", "-1"], "argument --lr", "greater than 0"),
    "lr 0": (["--lr", "0"], "argument --lr", "greater than 0"),
    "lr overflow": (["--lr", "1e400"], "argument --lr", "'1e400'"),
    "lr huge": (["--lr", "1e9"], "argument --lr", "at most 1000"),
    "lr text": (["--lr", "fast"], "argument --lr", "'fast'"),
    "batch 0": (["--batch-size", "0"], "argument --batch-size", "from 1 to 65536"),
    "batch -1": (["--batch-size", "-1"], "argument --batch-size", "'-1'"),
    "batch float": (["--batch-size", "6.5"], "argument --batch-size", "'6.5'"),
    "batch huge": (["--batch-size", "1000000000"], "argument --batch-size", "from 1 to 65536"),
    "steps 10**13": (["--steps", str(10**13)], "argument --steps", "from 1 to 10000000"),
    "steps 10**400": (["--steps", "1" + "0" * 400], "argument --steps", "(401 characters)"),
    "steps 0": (["--steps", "0"], "argument --steps", "from 1"),
    "steps 1e3": (["--steps", "1e3"], "argument --steps", "'1e3'"),
    "seed 2**64": (["--seed", str(2**64)], "argument --seed", "from 0 to 18446744073709551615"),
    "seed -1": (["--seed", "-1"], "argument --seed", "'-1'"),
    "seed 5000 digits": (["--seed", "9" * 5000], "argument --seed", "(5000 characters)"),
}


@pytest.mark.parametrize("name", ["lr nan", "batch 0", "steps 10**13", "seed 2**64"])
def test_bad_numbers_through_the_command_line(name, tmp_path):
    args, *expected = NUMBERS[name]
    out = tmp_path / "m.pt"
    result = run_cli(*TRAIN, "--out", out, *args)
    assert_one_line_error(result, *expected)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", NUMBERS)
def test_bad_numbers(name, tmp_path):
    args, *expected = NUMBERS[name]
    assert_one_line_error(run_main(*TRAIN, "--out", tmp_path / "m.pt", *args), *expected)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, expected", [
    (["sample", "{ckpt}", "-n", "0"], "argument -n"),
    (["sample", "{ckpt}", "-n", "-1"], "argument -n"),
    (["sample", "{ckpt}", "-n", str(10**9)], "from 1 to 1000000"),
    (["sample", "{ckpt}", "--seed", str(2**64)], "argument --seed"),
    (["eval", "{ckpt}", "--seed", "-5"], "argument --seed"),
    (["fold", "{ckpt}", "-o", "{tmp}/f.pt", "--seed", "1.5"], "argument --seed"),
    (["reproduce", "--steps", "0", "--out", "{tmp}/r"], "argument --steps"),
    (["reproduce", "--steps", str(10**13), "--out", "{tmp}/r"], "argument --steps"),
    (["bench", "--rounds", "0"], "argument --rounds"),
    (["bench", "--threads", "0"], "argument --threads"),
    (["bench", "--threads", "nan"], "argument --threads"),
    (["train", "--arch", "e03", "--out", "{tmp}/m.pt"], "invalid choice: 'e03'"),
    (["eval", "{ckpt}", "--names", ""], "the names file's path is empty"),
    (["train", "--arch", "e01", "--out", "{tmp}/m.pt", "--names", ""], "the names file's path is empty"),
    (["train", "--arch", "e01"], "required: --out"),
    (["frobnicate"], "invalid choice"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_numbers_and_options_of_every_command(args, expected, tmp_path, checkpoints):
    args = [a.format(ckpt=checkpoints["e01"], tmp=tmp_path) for a in args]
    assert_one_line_error(run_main(*args), expected)
    assert list(tmp_path.iterdir()) == []


def test_sample_count_through_the_command_line(checkpoints):
    assert_one_line_error(run_cli("sample", checkpoints["e01"], "-n", str(10**9)), "argument -n", "1000000")


@pytest.mark.parametrize("args, expected", [
    (["--arch", "e02", "--init", "zeros"], "--init applies to --arch e01 only"),
    (["--arch", "e02", "--init", "kaiming(5/3)"], "--init applies to --arch e01 only"),
    (["--arch", "e02", "--batch-size", "1"], "at least 2 rows per batch"),
    (["--arch", "e01", "--init", "bogus"], "unknown init scheme 'bogus'"),
    (["--arch", "e01", "--init", "constant(1e400)"], "overflows a float"),
    (["--arch", "e01", "--init", "constant(nan)"], "is not a number"),
    (["--arch", "e01", "--init", "constant"], "needs a value"),
    (["--arch", "e01", "--init", "zeros(2)"], "takes no argument"),
    (["--arch", "e01", "--init", "kaiming(1/0)"], "is not a number"),
    (["--arch", "e01", "--init", "constant(1e38)"],
     "--init constant(1e38): the freshly built net's loss is already nan (its activations overflow); build it with a "
     "smaller init value"),
    (["--arch", "e01", "--device", "foo"], "--device foo: not a device name"),
    (["--arch", "e01", "--device", "meta"], "bnfold runs on cpu, cuda or mps"),
    (["--arch", "e01", "--device", "mps"], "--device mps"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_options_that_cannot_be_honoured(args, expected, tmp_path, small_names):
    if "mps" in args and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    out = tmp_path / "m.pt"
    assert_one_line_error(run_main("train", "--steps", "2", "--out", out, "--names", small_names, *args), expected)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, expected", [
    (["--arch", "e02", "--init", "zeros"], "--init applies to --arch e01 only"),
    (["--arch", "e01", "--init", "constant(1e400)"], "--init constant(1e400)"),
])
def test_init_refusals_through_the_command_line(args, expected, tmp_path, small_names):
    out = tmp_path / "m.pt"
    assert_one_line_error(run_cli("train", "--steps", "2", "--out", out, "--names", small_names, *args), expected)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device, runner", [("cuda", run_cli), ("cuda:1", run_main)])
def test_missing_cuda_is_refused_before_training(device, runner, tmp_path, small_names):
    out = tmp_path / "m.pt"
    result = runner("train", "--arch", "e01", "--steps", "2", "--device", device, "--out", out, "--names", small_names)
    assert_one_line_error(result, f"--device {device}: CUDA is not available here")
    assert not out.exists()


def test_divergence_stops_training_and_saves_nothing(tmp_path, small_names, monkeypatch):
    """Parameters that turn inf mid-training stop the run at the library's next check; the line names the step, the
    fix and the option to change, and nothing is saved."""
    import core.makemore.train

    seen = []
    real_train = core.makemore.train.train

    def poison(step, model):
        if step == 150:
            with torch.no_grad():
                model.layers[0].weight[0, 0] = float("inf")
        seen.append(step)

    def diverging_train(*args, **kwargs):
        return real_train(*args, **kwargs, on_step=poison)

    monkeypatch.setattr(core.makemore.train, "train", diverging_train)
    out = tmp_path / "m.pt"
    result = run_main("train", "--arch", "e01", "--steps", "100000", "--out", out, "--names", small_names)
    assert_one_line_error(result, "training diverged: parameters became nan or inf by step 200; lower the learning "
                                  "rate (--lr 0.1); nothing was saved")
    assert seen[-1] == 199 and list(tmp_path.iterdir()) == []


# Data sets too small for the split: a DataError naming the minimum, in every command that reads names.

@pytest.fixture
def five_names(tmp_path):
    path = tmp_path / "five.txt"
    path.write_text("anna\nbob\ncat\ndan\neve\n")
    return path


SMALL_DATA_COMMANDS = {
    "data": ["data"],
    "train": ["train", "--arch", "e01", "--steps", "2", "--out", "{tmp}/m.pt"],
    "eval": ["eval", "{e01}"],
    "fold": ["fold", "{e02}", "-o", "{tmp}/f.pt"],
    "reproduce": ["reproduce", "--steps", "2", "--out", "{tmp}/run"],
    "bench": ["bench", "--quick", "--rounds", "1"],
}


@pytest.mark.parametrize("command", SMALL_DATA_COMMANDS)
def test_too_few_names_name_the_minimum(command, five_names, tmp_path, checkpoints):
    args = [a.format(tmp=tmp_path, e01=checkpoints["e01"], e02=checkpoints["e02"])
            for a in SMALL_DATA_COMMANDS[command]]
    result = run_main(*args, "--names", five_names)
    assert result.code == 2, result.err
    assert result.err_lines[-1] == (f"bnfold: error: {five_names}: 5 names are too few: the 0.8/0.1/0.1 "
                                    f"train/dev/test split needs at least 6 names so that no part is empty; "
                                    f"give a larger names file (--names PATH chooses the names file)")
    assert "Traceback" not in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) in (["five.txt"], ["five.txt", "run"])
    assert not (tmp_path / "run" / "report.json").exists()


def test_too_few_names_through_the_command_line(five_names, tmp_path):
    out = tmp_path / "m.pt"
    result = run_cli("train", "--arch", "e01", "--steps", "2", "--out", out, "--names", five_names)
    assert_one_line_error(result, "5 names are too few", "at least 6 names")
    assert not out.exists()


def test_the_minimum_is_enough(tmp_path):
    """Six names, the minimum, train and evaluate (each part of the split holds a name)."""
    names = tmp_path / "six.txt"
    names.write_text("anna\nbob\ncat\ndan\neve\nfay\n")
    out = tmp_path / "m.pt"
    assert run_main("train", "--arch", "e02", "--steps", "2", "--out", out, "--names", names).code == 0
    result = run_main("eval", out, "--names", names, "--json")
    assert result.code == 0 and result.err == "", result.err
