"""The output checks by themselves: each refusal names the option it was given, and a directory of reports keeps what
is already in it (the run replaces its report atomically, at the end)."""

import re

import pytest

from core.app.errors import UsageError
from core.app.outputs import check_output_dir, check_output_file


def test_a_report_directory_keeps_what_is_in_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("{}")
    assert check_output_dir(out, "--out", None, "report.json") == out
    assert (out / "report.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_a_missing_report_directory_is_made(tmp_path):
    out = tmp_path / "a" / "b"
    assert check_output_dir(str(out), "--out", None, "report.json") == out and out.is_dir()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("option", ["--out", "-o"])
def test_refusals_name_the_option_they_were_given(option, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("anna\n")
    with pytest.raises(UsageError, match=f"^{re.escape(f'{option} {names}')}: is the names file"):
        check_output_file(names, option, {"the names file": names})
    with pytest.raises(UsageError, match=f"^{re.escape(f'{option} {names}')}: is the names file, not a directory"):
        check_output_dir(names, option, names, "report.json")
    with pytest.raises(UsageError, match=f"^{option}: the path is empty"):
        check_output_file("", option)
