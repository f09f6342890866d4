"""Output paths are proven writable before any work, never overwrite an input, and are written atomically with
the umask's mode; interruptions, full disks and closed pipes end in one line and leave no partial file."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.atomic import stale_temps, temp_path
from tests.app.cli_runner import assert_one_line_error, cli_env, run_cli, run_main

TRAIN = ["train", "--arch", "e01", "--steps", "2"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def train_to(out, names, *extra, runner=run_main):
    return runner(*TRAIN, "--out", out, "--names", names, *extra)


# Targets refused before training, in one line, with nothing written.

def test_out_equal_to_the_names_file_is_refused(tmp_path, small_names):
    names = tmp_path / "names.txt"
    names.write_bytes(small_names.read_bytes())
    before = names.read_bytes()
    result = train_to(names, names, runner=run_cli)
    assert_one_line_error(result, f"--out {names}: is the names file")
    assert names.read_bytes() == before and listing(tmp_path) == ["names.txt"]


def test_fold_output_over_the_names_file_is_refused(tmp_path, small_names, checkpoints):
    names = tmp_path / "names.txt"
    names.write_bytes(small_names.read_bytes())
    result = run_main("fold", checkpoints["e02"], "-o", names, "--names", names)
    assert_one_line_error(result, f"-o {names}: is the names file")
    assert names.read_bytes() == small_names.read_bytes() and listing(tmp_path) == ["names.txt"]


def test_default_names_file_is_protected_too(tmp_path, small_names):
    """data/names.txt, found by default rather than passed with --names, is still an input."""
    (tmp_path / "data").mkdir()
    names = tmp_path / "data" / "names.txt"
    names.write_bytes(small_names.read_bytes())
    env = cli_env()
    env.pop("BNFOLD_NAMES", None)
    result = run_cli("fold", "in.pt", "-o", "data/names.txt", env=env, cwd=tmp_path)
    assert_one_line_error(result, "-o data/names.txt: is the names file")
    assert names.read_bytes() == small_names.read_bytes()


def test_fold_over_its_own_input_is_refused(tmp_path, small_names, checkpoints):
    ckpt = tmp_path / "e02.pt"
    ckpt.write_bytes(checkpoints["e02"].read_bytes())
    link = tmp_path / "alias.pt"
    os.link(ckpt, link)
    for target in (ckpt, link):
        result = run_main("fold", ckpt, "-o", target, "--names", small_names)
        assert_one_line_error(result, f"-o {target}: is the checkpoint being folded")
    assert ckpt.read_bytes() == checkpoints["e02"].read_bytes()


@pytest.mark.parametrize("make_target, expected", [
    (lambda t: "/dev/full", "is not a regular file"),
    (lambda t: "/dev/null", "is not a regular file"),
    (lambda t: t / "missing" / "m.pt", "does not exist; create it first"),
    (lambda t: t, "is a directory"),
    (lambda t: f"{t}/new/", "is a directory"),
    (lambda t: "", "the path is empty"),
    (lambda t: t / "file.txt" / "m.pt", "is not a directory"),
    (lambda t: "/proc/self/m.pt", "cannot create files in /proc/self"),
    (lambda t: t / ("a" * 256), "the file name is 256 bytes, longer than the 255"),
    (lambda t: t / "loop", "is a loop of symlinks"),
], ids=["dev-full", "dev-null", "missing-dir", "directory", "trailing-slash", "empty", "file-as-dir", "proc",
        "name-too-long", "symlink-loop"])
def test_unusable_targets_are_refused_before_training(make_target, expected, tmp_path, small_names):
    (tmp_path / "file.txt").write_text("")
    os.symlink(tmp_path / "loop", tmp_path / "loop2")
    os.symlink(tmp_path / "loop2", tmp_path / "loop")
    before = listing(tmp_path)
    assert_one_line_error(train_to(make_target(tmp_path), small_names), expected)
    assert listing(tmp_path) == before


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only directories")
def test_read_only_directory_is_refused(tmp_path, small_names):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert_one_line_error(train_to(folder / "m.pt", small_names), "cannot create files in")
    finally:
        folder.chmod(0o755)
    assert listing(folder) == []


@pytest.mark.skipif(IS_ROOT, reason="root writes over read-only files")
def test_read_only_file_is_refused(tmp_path, small_names):
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep")
    out.chmod(0o444)
    assert_one_line_error(train_to(out, small_names), "is read-only")
    assert out.read_bytes() == b"keep"


# Writes that succeed: modes, symlinks, long names, stale temporaries.

def test_new_file_respects_the_umask(tmp_path, small_names):
    """0666 less the umask, as for any file a program creates (properties/test_atomic_writes.py: every umask)."""
    umask = 0o027
    out = tmp_path / "m.pt"
    result = run_cli(*TRAIN, "--out", out, "--names", small_names, umask=umask)
    assert result.code == 0, result.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert listing(tmp_path) == ["m.pt"]


def test_replaced_file_keeps_its_mode(tmp_path, small_names):
    out = tmp_path / "m.pt"
    out.write_bytes(b"old")
    out.chmod(0o640)
    assert train_to(out, small_names).code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and out.read_bytes() != b"old"


def test_symlink_is_written_through(tmp_path, small_names):
    target = tmp_path / "real" / "m.pt"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    assert train_to(link, small_names).code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes().startswith(b"PK")  # a zip: torch's checkpoint format
    assert listing(tmp_path / "real") == ["m.pt"]


def test_dangling_symlink_creates_its_target(tmp_path, small_names):
    link = tmp_path / "link.pt"
    link.symlink_to(tmp_path / "new.pt")
    assert train_to(link, small_names).code == 0
    assert link.is_symlink() and (tmp_path / "new.pt").is_file()


def test_longest_legal_name_is_written(tmp_path, small_names):
    """A 250-byte name leaves no room for `.NAME.PID-TOKEN.tmp`; the temporary gets a shorter stem instead."""
    out = tmp_path / ("m" * 247 + ".pt")
    result = train_to(out, small_names)
    assert result.code == 0, result.err
    assert listing(tmp_path) == [out.name]
    assert run_main("eval", out, "--names", small_names).code == 0


def test_stale_temporaries_are_cleaned_and_live_ones_kept(tmp_path, small_names):
    out = tmp_path / "m.pt"
    old_style = tmp_path / ".m.pt.k2j4x_9q.tmp"  # not our exact form: it could be a user's file, so it stays
    dead_writer = tmp_path / f".m.pt.999999999-{'00aa' * 4}.tmp"  # our form, its writer's pid long gone
    live_writer = temp_path(out)  # our form, this very process: a save in progress
    other_file = tmp_path / ".m.pt.old.123-ab.tmp"  # a temporary of m.pt.old, not of m.pt
    for path in (old_style, dead_writer, live_writer, other_file):
        path.write_bytes(b"partial")
    assert set(stale_temps(out)) == {dead_writer}
    assert train_to(out, small_names).code == 0
    assert listing(tmp_path) == sorted(["m.pt", live_writer.name, other_file.name, old_style.name])


# Interruptions, full disks and closed pipes.

@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupt_is_one_line_and_leaves_the_old_file(sig, code, word, tmp_path, small_names):
    out = tmp_path / "m.pt"
    out.write_bytes(b"old")
    # The child gets SIGINT's default disposition, as a terminal gives it: a test run started in the background
    # inherits SIGINT ignored, and Python then keeps ignoring it.
    proc = subprocess.Popen([sys.executable, "-m", "core", *TRAIN[:3], "--steps", "10000000", "--out", str(out),
                             "--names", str(small_names)], stderr=subprocess.PIPE, text=True, env=cli_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(2.5)  # past interpreter start-up: in the checks, loading or training, all handled alike
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in err, err
    assert out.read_bytes() == b"old" and listing(tmp_path) == ["m.pt"]


def test_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, small_names):
    out = tmp_path / "m.pt"
    out.write_bytes(b"old")
    full_disk = ("import errno, os\n"
                 "def fsync(fd):\n"
                 "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
                 "os.fsync = fsync")
    result = run_cli(*TRAIN, "--out", out, "--names", small_names, prelude=full_disk)
    assert_one_line_error(result, f"cannot write {out}: no space left on device")
    assert out.read_bytes() == b"old" and listing(tmp_path) == ["m.pt"]


def test_closed_pipe_is_one_line(checkpoints, tmp_path):
    """`bnfold sample -n 3000 | head -1`: head leaves after one name, long before the ~60 KB of names are
    written; bnfold says so in one line (exit 2), no traceback, no 'Exception ignored' at shutdown."""
    err = tmp_path / "err.txt"
    command = (f"{sys.executable} -m core sample {checkpoints['uniform']} -n 3000 2>{err} | head -1; "
               f"exit ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=cli_env(), check=False)
    assert len(proc.stdout.splitlines()) == 1 and proc.stdout.strip().isalpha()
    lines = err.read_text().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err.read_text()
    assert lines[0] == "bnfold: error: the output pipe was closed before all output was written (broken pipe)"


def test_reproduce_refuses_a_file_and_keeps_an_old_report_on_bad_input(tmp_path, small_names, five_names_file):
    assert_one_line_error(run_main("reproduce", "--steps", "2", "--out", small_names, "--names", small_names),
                          f"--out {small_names}: is the names file, not a directory")
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text("{}")
    result = run_main("reproduce", "--steps", "2", "--out", run, "--names", five_names_file)
    assert_one_line_error(result, "5 names are too few")
    assert (run / "report.json").read_text() == "{}" and listing(run) == ["report.json"]


@pytest.fixture
def five_names_file(tmp_path):
    path = tmp_path / "five.txt"
    path.write_text("anna\nbob\ncat\ndan\neve\n")
    return path


def test_full_standard_output_is_one_line(small_names):
    """`bnfold data --json > /dev/full`: one line, exit 2, and nothing more when the interpreter exits."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "core", "data", "--json", "--names", str(small_names)],
                              stdout=full, stderr=subprocess.PIPE, text=True, env=cli_env(), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["bnfold: error: cannot write standard output: no space left on device"]
