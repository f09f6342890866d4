"""The command line end to end, and its one-line errors with exit code 2."""

import json

import pytest

from core.app.cli import main
from tests.app.cli_runner import assert_one_line_error, run_cli


def test_data_json(names_path):
    result = run_cli("data", "--json", "--names", names_path)
    assert result.code == 0
    data = json.loads(result.out)
    assert data["names"] == 32033 and data["vocab_size"] == 27 and data["checksum_ok"]
    assert data["splits"] == {"train": 25626, "dev": 3203, "test": 3204}


def test_train_eval_sample(names_path, tmp_path, capsys):
    ckpt = tmp_path / "e02.pt"
    assert main(["train", "--arch", "e02", "--steps", "2000", "--seed", "1", "--out", str(ckpt),
                 "--names", str(names_path)]) == 0
    assert main(["eval", str(ckpt), "--json", "--names", str(names_path)]) == 0
    losses = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert set(losses) == {"train", "dev", "test"}
    assert all(2.0 < v < 2.9 for v in losses.values()), losses  # log 27 = 3.30 at start
    assert main(["sample", str(ckpt), "-n", "5", "--seed", "3"]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) == 5 and all(n.isalpha() and n.islower() for n in names)


def test_sample_is_seeded(names_path, tmp_path, capsys):
    ckpt = tmp_path / "e01.pt"
    main(["train", "--arch", "e01", "--init", "kaiming", "--steps", "50", "--out", str(ckpt),
          "--names", str(names_path)])
    capsys.readouterr()
    outs = []
    for _ in range(2):
        main(["sample", str(ckpt), "-n", "8", "--seed", "11"])
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data", "--names", "{tmp}/missing.txt"], "cannot read names file"),
        (["data", "--names", "{tmp}/bad.txt"], "bad.txt:2:"),
        (["eval", "{tmp}/missing.pt"], "no such checkpoint"),
        (["eval", "{tmp}/bad.txt"], "not a readable bnfold checkpoint"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, expected, tmp_path):
    (tmp_path / "bad.txt").write_text("anna\nBob\n")
    assert_one_line_error(run_cli(*[a.format(tmp=tmp_path) for a in args]), expected)
