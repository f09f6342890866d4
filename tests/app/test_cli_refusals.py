"""Inputs the command line must refuse in one line before any work, or handle correctly, by class:

- a names file is read once: a pipe (`--names <(...)`) gives its names and their checksum; a FIFO with no writer
  is refused at once, never waited on;
- an option a command does not use is refused, not ignored; an empty name is called empty;
- `fold --torchvision` checks its image sizes against the architecture and the memory before building anything;
  every seed up to 2^64 - 1 works;
- a forward that overflows its dtype, a closed standard output and an allocator that runs out of memory are each
  one line naming the way out.
"""

import os
import stat
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import core.app.fold_torchvision as fold_torchvision
import core.app.outputs
import core.makemore.train
import core.vision
from core.limits import MAX_SEED
from core.makemore.checkpoint import load_checkpoint, save
from core.makemore.data import NAMES_SHA256, Split, read_names
from core.makemore.model import e01_mlp
from tests.app.cli_runner import ROOT, Result, assert_one_line_error, cli_env, run_cli, run_main


def run_bash(command: str, timeout: float = 120) -> Result:
    """A bash command line (for `<(...)` and `>&-`), with $BNFOLD meaning `python -m core`."""
    script = f"BNFOLD='{sys.executable} -m core'\n{command}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=cli_env(), timeout=timeout,
                          cwd=ROOT, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


# The names file, read once.

def test_a_names_file_from_a_pipe_gives_its_names_and_their_checksum(names_path, tmp_path):
    """data, train and eval read `--names <(cat names.txt)` like the file: the checkpoint records the file's sha256
    (not the empty file's, e3b0c442...), and eval finds it is the training file."""
    data = run_bash(f"$BNFOLD data --names <(cat {names_path})")
    assert data.code == 0 and data.out.endswith("checksum ok\n"), data.err
    out = tmp_path / "m.pt"
    train = run_bash(f"$BNFOLD train --arch e01 --steps 2 --out {out} --names <(cat {names_path})")
    assert train.code == 0, train.err
    assert load_checkpoint(out).names_sha256 == NAMES_SHA256
    evaluated = run_bash(f"$BNFOLD eval {out} --names <(cat {names_path})")
    assert evaluated.code == 0 and evaluated.err == "", evaluated.err


def test_names_and_checksum_come_from_the_same_read(small_names):
    """read_names of a pipe: the pipe gives its bytes once, and both the names and the sha256 are of those bytes."""
    import hashlib

    raw = small_names.read_bytes()
    read_end, write_end = os.pipe()

    def write() -> None:
        with os.fdopen(write_end, "wb") as fh:
            fh.write(raw)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        got = read_names(f"/dev/fd/{read_end}")
    finally:
        writer.join()
        os.close(read_end)
    assert got.names == raw.decode().split() and got.sha256 == hashlib.sha256(raw).hexdigest()


def test_a_fifo_with_no_writer_is_refused_at_once(tmp_path):
    fifo = tmp_path / "names.fifo"
    os.mkfifo(fifo)
    for command in (["data"], ["train", "--arch", "e01", "--steps", "1", "--out", tmp_path / "m.pt"]):
        result = run_cli(*command, "--names", fifo, timeout=120)  # a hang fails here
        assert_one_line_error(result, f"{fifo}: is a pipe that gave no data (no process was writing to it, or the "
                                      f"writer wrote nothing); start the writer first, or give a names file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.fifo"]


def test_every_file_bnfold_reads_is_opened_once_without_waiting_on_a_fifo(tmp_path, monkeypatch):
    """A checkpoint or a saved bench run that is a FIFO is refused at once (a blocking open would wait for a writer
    forever), from the same open whose descriptor would be read."""
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    assert_one_line_error(run_cli("eval", fifo, timeout=120), f"{fifo}: is not a regular file (a device, pipe or "
                                                              f"socket); give a checkpoint file")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".benchmarks").mkdir()
    os.mkfifo(tmp_path / ".benchmarks" / "ratios-base.json")
    assert_one_line_error(run_cli("bench", "--compare", "base", timeout=120),
                          "--compare base: .benchmarks/ratios-base.json: is not a regular file")


@pytest.mark.parametrize("content, message", [
    ("\ufeffanna\nbob\n".encode(), "names.txt:1:1: the file starts with a byte order mark (BOM, U+FEFF), which some "
                                   "editors put at the start of UTF-8 files; names are lowercase a-z only: save the "
                                   "file as UTF-8 without a BOM"),
    ("anna\nzoë\n".encode(), "names.txt:2:3: character 'ë' (U+00EB) is not in a-z"),
    ("anna\nZoe\n".encode("latin-1"), "names.txt:2:1: character 'Z' (U+005A) is not in a-z"),
    ("anna\nzo\xeb\n".encode("latin-1"), "names.txt:2:3: byte 0xeb is not UTF-8 text"),
], ids=["bom", "utf8-letter", "uppercase", "latin-1"])
def test_a_bad_character_is_named_as_itself_once(content, message, tmp_path):
    names = tmp_path / "names.txt"
    names.write_bytes(content)
    line = assert_one_line_error(run_main("data", "--names", names), message)
    assert "\\\\" not in line


def test_a_directory_or_device_is_not_a_names_file(tmp_path):
    assert_one_line_error(run_main("data", "--names", tmp_path), "is a directory, not a names file")
    assert_one_line_error(run_main("data", "--names", os.devnull), "is a device, not a names file")


# Options a command does not use, and empty names.

@pytest.mark.parametrize("option, value", [("--image-size", "32"), ("--bound-size", "32"), ("--rounds", "3"),
                                           ("--threads", "2")])
def test_fold_of_a_checkpoint_refuses_the_torchvision_options(option, value, checkpoints, small_names, tmp_path):
    out = tmp_path / "f.pt"
    assert_one_line_error(run_main("fold", checkpoints["e02"], "-o", out, "--names", small_names, option, value),
                          f"{option} applies to fold --torchvision only", f"drop {option}")
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["fold", "--torchvision", "resnet18", "--names", "x.txt"], "--names applies to folding a checkpoint"),
    (["fold", "--torchvision", ""], "--torchvision: the model name is empty; give one such as resnet18"),
    (["fold", "", "-o", "{tmp}/f.pt"], "the checkpoint path is empty; give a checkpoint file such as model.pt"),
    (["eval", ""], "the checkpoint path is empty"),
    (["sample", ""], "the checkpoint path is empty"),
    (["reproduce", "--out", ""], "--out: the path is empty; give a directory path"),
    (["train", "--arch", "e01", "--out", "{tmp}/m.pt", "--device", ""], "--device: the device name is empty"),
    (["train", "--arch", "e01", "--out", "{tmp}/m.pt", "--init", ""], "--init: unknown init scheme ''"),
    (["fold", "x.pt", "-o", ""], "-o: the path is empty"),
], ids=["torchvision-names", "empty-model", "fold-empty", "eval-empty", "sample-empty", "reproduce-empty-out",
        "empty-device", "empty-init", "empty-out"])
def test_unused_options_and_empty_names_are_refused(args, message, tmp_path, monkeypatch):
    monkeypatch.setattr(core.vision, "build", lambda *a, **k: pytest.fail("built a model despite a bad option"))
    assert_one_line_error(run_main(*[a.format(tmp=tmp_path) for a in args]), message)
    assert list(tmp_path.iterdir()) == []


# fold --torchvision: image sizes and memory checked before the model is built; every seed.

@pytest.fixture
def no_build(monkeypatch):
    monkeypatch.setattr(core.vision, "build", lambda *a, **k: pytest.fail("built the model despite a bad size"))


@pytest.mark.parametrize("args, message", [
    (["inception_v3"], "--bound-size 64: torchvision's inception_v3 cannot run on 64² images (Calculated padded "
                       "input size per channel"),
    (["vit_b_16"], "--bound-size 64: torchvision's vit_b_16 cannot run on 64² images (Wrong image height! Expected "
                   "224 but got 64!); the smallest size it runs on is 224²: give --bound-size 224"),
    (["vit_b_16", "--bound-size", "224", "--image-size", "256"], "--image-size 256: torchvision's vit_b_16 cannot "
                                                                 "run on 256² images"),
    (["alexnet", "--image-size", "32", "--bound-size", "32"], "--bound-size 32: torchvision's alexnet cannot run on "
                                                              "32² images"),
], ids=["inception-defaults", "vit-bound", "vit-image", "alexnet-32"])
def test_an_image_size_the_model_cannot_take_is_refused_naming_the_option(args, message, no_build):
    line = assert_one_line_error(run_main("fold", "--torchvision", *args), message)
    assert "a bug" not in line


def test_the_size_named_is_one_the_model_runs_on():
    """The bisection's answer runs and the size below it does not (alexnet: pooling to a 0x0 map below 63²)."""
    model = core.vision.shape_model("alexnet")
    with pytest.raises(core.vision.ImageSizeError) as err:
        core.vision.forward_bytes(model, "alexnet", 32)
    smallest = err.value.runs_on
    assert smallest is not None and core.vision.forward_bytes(model, "alexnet", smallest) is not None
    with pytest.raises(core.vision.ImageSizeError):
        core.vision.forward_bytes(model, "alexnet", smallest - 1)


def test_images_too_large_for_the_memory_are_refused_before_the_work(monkeypatch, no_build):
    """resnet18's conv1 output alone at 4096², B = 8 is 8.6 GB; with 8 GB available the timing cannot fit."""
    monkeypatch.setattr(fold_torchvision, "available_memory", lambda: 8 * 10**9)
    line = assert_one_line_error(run_main("fold", "--torchvision", "resnet18", "--image-size", "4096"),
                                 "--image-size 4096: resnet18 needs at least ", " for the timing of five variants on "
                                 "8 images of 4096² (the tensors a forward keeps alive at once), more than the 8.0 GB "
                                 "of memory available now; give a smaller --image-size")
    needed = float(line.split("needs at least ")[1].split(" GB")[0])
    assert needed >= 8 * 64 * 2048**2 * 4 / 1e9  # at least conv1's output


def test_the_estimate_is_at_least_one_layers_output():
    """forward_bytes ≥ the input and conv1's output of resnet18, both alive while conv1 runs."""
    model = core.vision.shape_model("resnet18")
    assert core.vision.forward_bytes(model, "resnet18", 64) >= (3 * 64**2 + 64 * 32**2) * 4


def test_the_largest_seed_folds_a_torchvision_model():
    result = run_main("fold", "--torchvision", "resnet18", "--seed", str(MAX_SEED), "--image-size", "8",
                      "--bound-size", "8", "--rounds", "1")
    assert result.code == 0, result.err
    assert "certificate: holds" in result.out


@given(st.integers(0, MAX_SEED), st.integers(1, 64), st.integers(1, 64))
def test_sub_seeds_are_seeds_distinct_per_stream(seed, a, b):
    """sub_seed(s, k) = (s + k) mod 2^64 ∈ [0, 2^64): a seed torch takes, different for different streams k and
    from s itself, and s + k whenever that does not wrap."""
    x, y = core.vision.sub_seed(seed, a), core.vision.sub_seed(seed, b)
    assert 0 <= x <= MAX_SEED and x != seed and (x == y) == (a == b)
    assert x == seed + a or seed + a > MAX_SEED
    torch.Generator().manual_seed(x)


# A forward that overflows, a closed standard output, memory.

@pytest.fixture(scope="module")
def overflowing(tmp_path_factory, small_names):
    """A float16 e01 checkpoint whose logits overflow to ±inf: its last layer's weights are 60000 (finite in
    float16), summed over 100 tanh outputs."""
    model = e01_mlp(torch.Generator().manual_seed(0), init="kaiming").half()
    with torch.no_grad():
        model.layers[-1].weight.fill_(60000.0)
    path = tmp_path_factory.mktemp("overflow") / "half.pt"
    save(model.eval(), path, split=Split(42), names_sha256=read_names(small_names).sha256)
    return path


@pytest.mark.parametrize("command, message", [
    (["eval", "{ckpt}", "--names", "{names}"], "the loss is not finite"),
    (["fold", "{ckpt}", "-o", "{tmp}/f.pt", "--names", "{names}"], "the dev loss or logits are not finite"),
    (["sample", "{ckpt}", "-n", "3"], "{ckpt}: the logits are not finite while sampling: the net's forward overflows "
                                      "its dtype (float16); sample from a float32 or float64 copy"),
], ids=["eval", "fold", "sample"])
def test_a_forward_that_overflows_is_one_clear_line_in_every_command(command, message, overflowing, small_names,
                                                                      tmp_path):
    fill = {"ckpt": overflowing, "names": small_names, "tmp": tmp_path}
    result = run_main(*[a.format(**fill) for a in command])
    line = assert_one_line_error(result, message.format(**fill))
    assert "a bug" not in line and not (tmp_path / "f.pt").exists()


@pytest.mark.parametrize("command", ["$BNFOLD sample {ckpt} -n 3", "$BNFOLD eval {ckpt} --names {names}",
                                     "$BNFOLD data --names {names}"])
def test_a_closed_standard_output_is_refused_before_any_work(command, checkpoints, small_names):
    result = run_bash(command.format(ckpt=checkpoints["e01"], names=small_names) + " >&-")
    assert_one_line_error(result, "standard output is closed; bnfold writes its results there: redirect it to a "
                                  "file (> FILE), or to /dev/null to discard them")


def allocate_too_much(*args, **kwargs):
    torch.empty(2**40)  # 4 TiB: the CPU allocator refuses it with a RuntimeError, not a MemoryError


def test_an_allocator_that_runs_out_is_out_of_memory_naming_what_to_shrink(monkeypatch, small_names, tmp_path):
    monkeypatch.setattr(core.vision, "build", allocate_too_much)
    assert_one_line_error(run_main("fold", "--torchvision", "resnet18", "--image-size", "8", "--bound-size", "8"),
                          "out of memory (an allocation of 4398.0 GB failed); give a smaller --image-size or "
                          "--bound-size, or a smaller model")
    monkeypatch.setattr(core.makemore.train, "train", allocate_too_much)
    line = assert_one_line_error(run_main("train", "--arch", "e01", "--steps", "1", "--out", tmp_path / "m.pt",
                                          "--names", small_names),
                                 "out of memory (an allocation of 4398.0 GB failed); use a smaller --batch-size")
    assert "a bug" not in line and list(tmp_path.iterdir()) == []


def test_a_runtime_error_that_is_not_memory_is_still_a_bug(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(core.vision, "build", broken)
    assert_one_line_error(run_main("fold", "--torchvision", "resnet18", "--image-size", "8", "--bound-size", "8"),
                          "unexpected RuntimeError: shapes do not match (a bug")


# A read-only file system is told apart from a read-only file.

def test_a_read_only_file_system_is_not_a_read_only_file(tmp_path, small_names, monkeypatch):
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep")

    class ReadOnlyMount:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(core.app.outputs.os, "access", lambda path, mode: False)
    train = ["train", "--arch", "e01", "--steps", "1", "--out", out, "--names", small_names]
    line = assert_one_line_error(run_main(*train), "the file is read-only; make it writable (chmod u+w)")
    monkeypatch.setattr(core.app.outputs.os, "statvfs", lambda path: ReadOnlyMount())
    line = assert_one_line_error(run_main(*train), f"--out {out}: is on a read-only file system, where no file can be "
                                                   f"replaced; choose a path on a writable one")
    assert "chmod" not in line and out.read_bytes() == b"keep"
    assert stat.S_ISREG(out.stat().st_mode)
