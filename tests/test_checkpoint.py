"""Checkpoints: exact round trip, atomic writes, and refusal of anything unsafe or inconsistent."""

import errno
import os
import pickle

import pytest
import torch

from core.data import Split
from core.errors import CheckpointError, WriteError
from core.model import e01_mlp, e02_mlp, load, load_checkpoint, nonfinite_tensors, save


def models():
    g = torch.Generator().manual_seed(3)
    return [e01_mlp(g, init="zeros"), e01_mlp(g, init="kaiming"), e02_mlp(g)]


@pytest.mark.parametrize("model", models(), ids=["e01-zeros", "e01-kaiming", "e02"])
def test_round_trip(model, tmp_path):
    path = tmp_path / "m.pt"
    model.eval()
    save(model, path)
    loaded = load(path)
    assert loaded.config() == model.config()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    X = torch.randint(0, 27, (16, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    payload = RunsCode()
    payload.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"format": "bnfold.charmlp/1", "config": payload}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load(path)
    assert not marker.exists()


def test_plain_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    payload = RunsCode()
    payload.marker = marker
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError):
        load(path)
    assert not marker.exists()


def test_truncated_file(tmp_path):
    path = tmp_path / "m.pt"
    save(models()[2], path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=str(path)):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load(tmp_path / "nope.pt")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    """A full disk (here: fsync fails with ENOSPC) leaves the old file, no temporary, and says so in one line."""
    path = tmp_path / "m.pt"
    save(models()[0], path)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as err:
        save(models()[2], path)
    assert isinstance(err.value, WriteError)
    assert str(err.value).startswith(f"cannot write {path}: no space left on device")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_split_record_round_trip(tmp_path):
    path = tmp_path / "m.pt"
    save(models()[2], path, split=Split(7, (0.7, 0.2, 0.1)), names_sha256="ab" * 32)
    checkpoint = load_checkpoint(path)
    assert checkpoint.split == Split(7, (0.7, 0.2, 0.1)) and checkpoint.split_recorded
    assert checkpoint.names_sha256 == "ab" * 32
    assert checkpoint.model.context_length == 4


def test_legacy_checkpoint_loads_with_the_default_split(tmp_path):
    """A checkpoint of format /1 (no split record) loads, with the default split and split_recorded False."""
    path = tmp_path / "old.pt"
    model = models()[2].eval()
    torch.save({"format": "bnfold.charmlp/1", "config": model.config(), "training": False,
                "state_dict": model.state_dict()}, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint.split == Split(42, (0.8, 0.1, 0.1)) and not checkpoint.split_recorded
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 checkpoint.model.state_dict().values(), strict=True))


def payload_of(tmp_path, model=None):
    path = tmp_path / "m.pt"
    save((model or models()[2]).eval(), path, split=Split(42))
    return path, torch.load(path, weights_only=True)


def drop(key):
    return lambda p: p.pop(key)


def set_config(key, value):
    return lambda p: p["config"].__setitem__(key, value)


def set_layer(i, key, value):
    return lambda p: p["config"]["layers"][i].__setitem__(key, value)


def set_tensor(key, tensor):
    return lambda p: p["state_dict"].__setitem__(key, tensor)


CORRUPTIONS = {
    "no config": (drop("config"), "no 'config' entry"),
    "no state_dict": (drop("state_dict"), "no 'state_dict' entry"),
    "no vocab_size": (lambda p: p["config"].pop("vocab_size"), "no 'vocab_size' entry"),
    "no context_length": (lambda p: p["config"].pop("context_length"), "no 'context_length' entry"),
    "vocabulary of 5": (set_config("vocab_size", 5), "vocab_size is 5"),
    "vocabulary of 30": (set_config("vocab_size", 30), "vocab_size is 30"),
    "context length 3": (set_config("context_length", 3), "takes fan_in 40 but its input has 30 features"),
    "context length 0": (set_config("context_length", 0), "context_length is 0"),
    "context length huge": (set_config("context_length", 10**12), "takes fan_in 40"),
    "context length a string": (set_config("context_length", "4"), "context_length is '4'"),
    "context length true": (set_config("context_length", True), "context_length is True"),
    "negative eps": (set_layer(1, "eps", -1e-5), "eps -1e-05"),
    "zero eps": (set_layer(1, "eps", 0.0), "eps 0.0"),
    "nan eps": (set_layer(1, "eps", float("nan")), "eps nan"),
    "momentum 2": (set_layer(1, "momentum", 2.0), "momentum 2.0"),
    "unknown layer": (set_layer(2, "type", "gelu"), "gelu"),
    "layers empty": (set_config("layers", []), "layers is []"),
    "fan_out 99": (set_layer(0, "fan_out", 99), "normalises 100 features but its input has 99"),
    "huge fan_out": (set_layer(0, "fan_out", 10**9), "normalises 100 features but its input has 1000000000"),
    "C of 30 rows": (set_tensor("C", torch.zeros(30, 10)), "tensor C has shape (30, 10)"),
    "weight transposed": (set_tensor("layers.0.weight", torch.zeros(100, 40)), "layers.0.weight has shape (100, 40)"),
    "weight missing": (lambda p: p["state_dict"].pop("layers.3.weight"), "described with 10000 values"),
    "extra tensor": (set_tensor("layers.2.weight", torch.zeros(3)), "layer 2 (tanh) is described with 0 values"),
    "int weight": (set_tensor("layers.0.weight", torch.zeros(40, 100, dtype=torch.int64)), "torch.int64"),
    "mixed dtypes": (set_tensor("layers.0.weight", torch.zeros(40, 100, dtype=torch.float64)), "share one dtype"),
    "not a tensor": (set_tensor("layers.0.weight", [1.0, 2.0]), "expected a dense tensor"),
    "broadcast view": (set_tensor("C", torch.zeros(1).expand(27, 10)), "is a view of only 4 stored bytes"),
    "negative variance": (set_tensor("layers.1.running_var", -torch.ones(100)), "negative entries"),
    "split seed negative": (lambda p: p.__setitem__("split", {"seed": -1, "fractions": [0.8, 0.1, 0.1]}),
                            "split seed is -1"),
    "split fractions bad": (lambda p: p.__setitem__("split", {"seed": 1, "fractions": [0.9, 0.1, 0.0]}),
                            "split fractions are [0.9, 0.1, 0.0]"),
    "split not a dict": (lambda p: p.__setitem__("split", 42), "the split record is 42"),
    "training flag a string": (lambda p: p.__setitem__("training", "no"), "training flag is 'no'"),
    "config a list": (lambda p: p.__setitem__("config", [1, 2]), "the config is list"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_inconsistency_is_a_checkpoint_error(name, tmp_path):
    """Each inconsistency is a CheckpointError that names the file and what is wrong, in one line."""
    corrupt, expected = CORRUPTIONS[name]
    path, payload = payload_of(tmp_path)
    corrupt(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message and "weights_only" not in message


def test_other_format_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"format": "bnfold.charmlp/9", "config": {}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="another bnfold version"):
        load(path)


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    (b"anna\nbob\n", "not a readable bnfold checkpoint"),
    (None, "is a directory"),
])
def test_unreadable_files_say_why_without_torch_advice(content, expected, tmp_path):
    path = tmp_path / "m.pt"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load(path)
    assert expected in str(err.value) and "weights_only" not in str(err.value)


def test_a_device_is_not_a_checkpoint():
    with pytest.raises(CheckpointError, match="not a regular file"):
        load("/dev/null")


def test_nonfinite_tensors_are_named():
    model = models()[2]
    with torch.no_grad():
        model.layers[0].weight[3, 4] = float("nan")
        model.layers[1].running_var[0] = float("inf")
    assert nonfinite_tensors(model) == ["layers.0.weight (1 of 4000 values)", "layers.1.running_var (1 of 100 values)"]
