"""Checkpoint loading at its limits: the exact messages a user reads, and values accepted right at each bound."""

import errno
import fractions
import io
import os
import pickle
import zipfile

import pytest
import torch

from core.errors import CheckpointError
from core.limits import MAX_SEED
from core.makemore.checkpoint import load, load_checkpoint, save
from core.makemore.data import Split
from core.makemore.layers import BatchNorm1d, Linear, Tanh
from core.makemore.model import CharMLP, e01_mlp, e02_mlp
from tests.makemore.pickles import RunsCode

FIX = "the file is damaged or was not written by this bnfold: re-create it with `bnfold train`"


def e02(seed=0, n_hidden=4):
    return e02_mlp(torch.Generator().manual_seed(seed), n_hidden=n_hidden).eval()


def saved_payload(tmp_path, model=None, **kw):
    path = tmp_path / "m.pt"
    save(model if model is not None else e02(), path, **kw)
    return path, torch.load(path, weights_only=True)


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    return str(err.value)


def same_model(a: CharMLP, b: CharMLP) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return (a.config() == b.config() and a.training == b.training and list(sa) == list(sb)
            and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa))


@pytest.mark.parametrize("corrupt, problem", [
    (lambda p: p.pop("config"), "the checkpoint has no 'config' entry"),
    (lambda p: p.__setitem__("state_dict", [1.0]), "the state_dict is not a dict of named tensors"),
], ids=["no config", "state_dict a list"])
def test_an_inconsistency_reads_file_problem_and_fix(corrupt, problem, tmp_path):
    """'PATH: what is wrong; the fix' is the whole message: the file, the inconsistency, then how to recover."""
    path, payload = saved_payload(tmp_path)
    corrupt(payload)
    torch.save(payload, path)
    assert refusal(path) == f"{path}: {problem}; {FIX}"


@pytest.mark.parametrize("fmt, expected", [
    ("bnfold.charmlp/9", "not a bnfold checkpoint (format 'bnfold.charmlp/9', expected 'bnfold.charmlp/2'); "
                         "it was written by another bnfold version"),
    ("other/1", "not a bnfold checkpoint (format 'other/1', expected 'bnfold.charmlp/2')"),
])
def test_another_format_names_itself_and_a_bnfold_one_its_version(fmt, expected, tmp_path):
    """A format other than bnfold's is named in the refusal; only a 'bnfold.' format blames the bnfold version."""
    path, payload = saved_payload(tmp_path)
    payload["format"] = fmt
    torch.save(payload, path)
    assert refusal(path) == f"{path}: {expected}"


@pytest.mark.parametrize("length, shown", [(58, "'" + "g" * 58 + "'"), (59, "'" + "g" * 56 + "...")],
                         ids=["repr of 60", "repr of 61"])
def test_a_stored_value_is_shown_whole_up_to_60_characters(length, shown, tmp_path):
    """A value whose repr has at most 60 characters is quoted whole; a longer one shows its first 57 and '...'.

    Here the repr of a string of 58 letters is 60 characters long (with its quotes), of 59 letters 61.
    """
    path, payload = saved_payload(tmp_path)
    payload["names_sha256"] = "g" * length
    torch.save(payload, path)
    assert refusal(path) == f"{path}: names_sha256 is {shown}; expected 64 hex digits or none; {FIX}"


def smallest_net():
    """Every integer field at its minimum of 1: context 1, embedding 1, hidden width 1."""
    return e01_mlp(torch.Generator().manual_seed(0), init="kaiming", context_length=1, emb_size=1, n_hidden=1)


def bounds_net():
    """BatchNorm momenta at both ends of [0, 1] and a running variance of exactly 0 (a constant feature)."""
    model = e02()
    model.layers[1].momentum, model.layers[4].momentum = 0.0, 1.0
    model.layers[1].running_var.zero_()
    return model


def affine_free_net():
    """A hand-built net: no init scheme recorded, and a BatchNorm without gamma and beta."""
    g = torch.Generator().manual_seed(0)
    layers = [Linear(40, 27, bias=False, generator=g), BatchNorm1d(27, affine=False)]
    return CharMLP(torch.randn(27, 10, generator=g), layers).eval()


@pytest.mark.parametrize("build", [smallest_net, bounds_net, affine_free_net, lambda: e02().double(),
                                   lambda: e02().train()],
                         ids=["minimum sizes", "bounds", "affine-free", "float64", "training mode"])
def test_a_valid_net_at_the_limits_round_trips_exactly(build, tmp_path):
    """load(save(m)) = m (config, training flag, tensor names, dtypes and values) at every accepted limit."""
    model = build()
    path = tmp_path / "m.pt"
    save(model, path)
    assert same_model(load_checkpoint(path).model, model)


def test_a_checkpoint_without_a_training_flag_loads_in_eval_mode(tmp_path):
    """A payload with no 'training' entry loads as an eval-mode model: evaluation is the default use."""
    path, payload = saved_payload(tmp_path, e02().train())
    del payload["training"]
    torch.save(payload, path)
    assert load_checkpoint(path).model.training is False


@pytest.mark.parametrize("seed", [0, MAX_SEED])
def test_split_seeds_from_0_to_the_largest_generator_seed_load(seed, tmp_path):
    """The split seed may be anything torch.Generator.manual_seed takes: 0 to 2^64 - 1 (one beyond is refused)."""
    path = tmp_path / "m.pt"
    save(e02(), path, split=Split(seed))
    assert load_checkpoint(path).split == Split(seed)


def test_a_legacy_checkpoint_ignores_split_entries(tmp_path):
    """Format /1 recorded no split, so a /1 file's 'split' and 'names_sha256' entries are not read as one."""
    path, payload = saved_payload(tmp_path, split=Split(7, (0.5, 0.25, 0.25)), names_sha256="ab" * 32)
    payload["format"] = "bnfold.charmlp/1"
    torch.save(payload, path)
    checkpoint = load_checkpoint(path)
    assert (checkpoint.split, checkpoint.split_recorded, checkpoint.names_sha256) == (Split(), False, None)


def test_a_net_ending_in_an_activation_is_checked_for_its_width(tmp_path):
    """An activation passes its input width on: Linear(40, 30) then Tanh gives 30 logits, not 27, and is refused."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "m.pt"
    save(CharMLP(torch.randn(27, 10, generator=g), [Linear(40, 30, generator=g), Tanh()]), path)
    assert refusal(path) == (f"{path}: the last layer gives 30 features but vocab_size is 27: the net must end in "
                             f"one logit per character; {FIX}")


def cuda_tagged(payload) -> bytes:
    """The bytes torch.save writes for payload on a GPU: each storage's location reads 'cuda:0', not 'cpu'."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    source, out = zipfile.ZipFile(buffer), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("/data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            target.writestr(name, data)
    return out.getvalue()


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(tmp_path):
    """Tensors saved from CUDA are mapped to the CPU on loading, so a CPU-only machine can evaluate them."""
    model = e02()
    _, payload = saved_payload(tmp_path, model)
    path = tmp_path / "gpu.pt"
    path.write_bytes(cuda_tagged(payload))
    loaded = load(path)
    assert same_model(loaded, model) and all(t.device.type == "cpu" for t in loaded.state_dict().values())


def test_loading_stays_weights_only_when_the_environment_asks_otherwise(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 unpickles code only where weights_only is left unset: load sets it."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "bnfold.charmlp/2", "config": RunsCode(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refused to load"):
        load(path)
    assert not marker.exists()


def test_a_path_through_a_file_says_why_it_cannot_be_read(tmp_path):
    """A path whose parent is a file is unreadable, with the OS's reason in words."""
    (tmp_path / "runs").write_bytes(b"")
    path = tmp_path / "runs" / "m.pt"
    assert refusal(path) == f"{path}: cannot read the checkpoint (not a directory)"


def test_a_read_error_says_why(tmp_path, monkeypatch):
    """A disk error while torch reads the file is a CheckpointError naming the file and the OS's reason."""
    path, _ = saved_payload(tmp_path)

    def disk_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", disk_error)
    assert refusal(path) == f"{path}: cannot read the checkpoint (input/output error)"


@pytest.mark.parametrize("size, expected", [
    (2**30, "not a readable bnfold checkpoint"),
    (2**30 + 1, "1073741825 bytes is far larger than any bnfold checkpoint; check the path"),
], ids=["2^30", "2^30 + 1"])
def test_files_over_a_gibibyte_are_refused_unread(size, expected, tmp_path):
    """A file of more than 2^30 bytes is refused for its size alone; one of exactly 2^30 bytes is read (sparse here)."""
    path = tmp_path / "m.pt"
    with open(path, "wb") as f:
        f.truncate(size)
    assert refusal(path).startswith(f"{path}: {expected}")


def unreadable(tmp_path, content: bytes) -> str:
    path = tmp_path / "m.pt"
    path.write_bytes(content)
    message = refusal(path)
    prefix = f"{path}: not a readable bnfold checkpoint (refused to load: "
    suffix = "); re-create it with `bnfold train`"
    assert message.startswith(prefix) and message.endswith(suffix), message
    return message.removeprefix(prefix).removesuffix(suffix)


def good_bytes(tmp_path) -> bytes:
    path, _ = saved_payload(tmp_path)
    return path.read_bytes()


def without_member(data: bytes, member: str) -> bytes:
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            if not name.endswith(member):
                target.writestr(name, source.read(name))
    return out.getvalue()


def pickled(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_an_empty_file_says_so(tmp_path):
    """torch's unpickler meets the end of an empty file at once: 'the file is empty or ends early'."""
    assert unreadable(tmp_path, b"") == "the file is empty or ends early"


def test_a_cut_zip_archive_is_truncated_or_corrupted(tmp_path):
    """A checkpoint cut short loses the zip's central directory: torch's reason without its boilerplate."""
    reason = unreadable(tmp_path, good_bytes(tmp_path)[:1000])
    assert reason == "the file is truncated or corrupted (failed finding central directory)"


def test_a_checkpoint_cut_anywhere_is_truncated_or_corrupted(tmp_path):
    """Every cut of a checkpoint (the last byte, half, a 100-byte head) is refused as truncated or corrupted.

    torch's zip reader raises RuntimeError for some cuts and OSError(EINVAL), seeking past the cut end, for
    others; neither is a failure to read the file, which opened and was read.
    """
    data = good_bytes(tmp_path)
    for cut in (len(data) - 1, len(data) // 2, 100):
        assert unreadable(tmp_path, data[:cut]).startswith("the file is truncated or corrupted"), cut


def test_a_zip_archive_without_its_pickle_is_truncated_or_corrupted(tmp_path):
    """An archive lacking data.pkl: torch's first sentence, which names the missing member, is kept."""
    reason = unreadable(tmp_path, without_member(good_bytes(tmp_path), "/data.pkl"))
    assert reason == ("the file is truncated or corrupted "
                      "(PytorchStreamReader failed locating file data.pkl: file not found)")


def test_pickled_code_names_the_blocked_call_only(tmp_path):
    """A pickled os.system call is refused by its name; torch's advice to load with weights_only=False is dropped."""
    reason = unreadable(tmp_path, pickled({"config": RunsCode(tmp_path / "ran")}))
    assert reason == "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"


def test_a_disallowed_class_names_the_class_only(tmp_path):
    """An object of a class torch does not allow (a Fraction) is refused naming it, without the two options."""
    reason = unreadable(tmp_path, pickled({"config": fractions.Fraction(1, 3)}))
    assert reason.startswith("Unsupported global: GLOBAL fractions.Fraction was not an allowed global by default")
    assert reason.endswith("to allowlist this global if you trust this class/function") and ";" not in reason


def test_a_plain_pickle_names_the_unsupported_operation(tmp_path):
    """A pickle that is no torch checkpoint is refused with the unpickler's reason alone."""
    reason = unreadable(tmp_path, pickle.dumps(os.system))
    assert reason == "Unsupported operand 149"


@pytest.mark.parametrize("error, reason", [
    (MemoryError(), "MemoryError"),
    (RuntimeError("first problem.\n  second problem."), "first problem; second problem"),
    (pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
                            "will likely succeed.\n\nCheck the documentation of torch.load: weights_only"),
     "UnpicklingError"),
], ids=["no text", "two lines", "advice only"])
def test_any_failure_of_torch_load_is_one_line(error, reason, tmp_path, monkeypatch):
    """Whatever torch.load raises is one line: its lines joined by '; ', or its type when it says nothing else."""
    path, _ = saved_payload(tmp_path)

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", fails)
    assert unreadable(tmp_path, path.read_bytes()) == reason
