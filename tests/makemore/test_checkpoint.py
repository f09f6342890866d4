"""Checkpoints: exact round trip, atomic writes, and refusal of anything unsafe or inconsistent."""

import errno
import os
import pickle

import pytest
import torch

from core.errors import CheckpointError, WriteError
from core.makemore.checkpoint import load, load_checkpoint, save
from core.makemore.data import Split
from core.makemore.model import e01_mlp, e02_mlp, nonfinite_tensors
from tests.makemore.pickles import RunsCode


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


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    payload = RunsCode(marker)
    path = tmp_path / "evil.pt"
    torch.save({"format": "bnfold.charmlp/1", "config": payload}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load(path)
    assert not marker.exists()


def test_plain_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    payload = RunsCode(marker)
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


def rename_tensors(*pairs):
    return lambda p: [p["state_dict"].__setitem__(new, p["state_dict"].pop(old)) for old, new in pairs]


def set_split(record):
    return lambda p: p.__setitem__("split", record)


MAX_SEED = 2**64 - 1
FRACTIONS = [0.8, 0.1, 0.1]

CORRUPTIONS = {
    "no config": (drop("config"), "the checkpoint has no 'config' entry"),
    "no state_dict": (drop("state_dict"), "the checkpoint has no 'state_dict' entry"),
    "no vocab_size": (lambda p: p["config"].pop("vocab_size"), "the config has no 'vocab_size' entry"),
    "no emb_size": (lambda p: p["config"].pop("emb_size"), "the config has no 'emb_size' entry"),
    "no context_length": (lambda p: p["config"].pop("context_length"), "the config has no 'context_length' entry"),
    "no layers": (lambda p: p["config"].pop("layers"), "the config has no 'layers' entry"),
    "vocabulary of 5": (set_config("vocab_size", 5),
                        "vocab_size is 5, but bnfold's vocabulary has 27 characters ('.' and a-z)"),
    "vocabulary of 30": (set_config("vocab_size", 30), "vocab_size is 30"),
    "vocabulary a string": (set_config("vocab_size", "27"), "vocab_size is '27'; expected an integer >= 1"),
    "emb_size 0": (set_config("emb_size", 0), "emb_size is 0; expected an integer >= 1"),
    "context length 3": (set_config("context_length", 3),
                         "layer 0 (linear) takes fan_in 40 but its input has 30 features"),
    "context length 0": (set_config("context_length", 0), "context_length is 0; expected an integer >= 1"),
    "context length huge": (set_config("context_length", 10**12), "takes fan_in 40"),
    "context length a string": (set_config("context_length", "4"), "context_length is '4'"),
    "context length true": (set_config("context_length", True), "context_length is True"),
    "init_scheme a number": (set_config("init_scheme", 5), "init_scheme is 5; expected a string or none"),
    "layer not a dict": (lambda p: p["config"]["layers"].__setitem__(2, 42),
                         "layer 2 is 42; expected a dict with a 'type'"),
    "linear without fan_in": (lambda p: p["config"]["layers"][0].pop("fan_in"),
                              "layer 0 (linear) has no 'fan_in' entry"),
    "linear fan_in 0": (set_layer(0, "fan_in", 0), "layer 0 (linear) fan_in is 0; expected an integer >= 1"),
    "linear without fan_out": (lambda p: p["config"]["layers"][0].pop("fan_out"),
                               "layer 0 (linear) has no 'fan_out' entry"),
    "linear fan_out 2.5": (set_layer(0, "fan_out", 2.5), "layer 0 (linear) fan_out is 2.5; expected an integer >= 1"),
    "linear without bias": (lambda p: p["config"]["layers"][0].pop("bias"), "layer 0 (linear) has no 'bias' entry"),
    "linear bias 1": (set_layer(0, "bias", 1), "layer 0 (linear) bias is 1; expected true or false"),
    "batchnorm without dim": (lambda p: p["config"]["layers"][1].pop("dim"), "layer 1 (batchnorm) has no 'dim' entry"),
    "batchnorm dim -1": (set_layer(1, "dim", -1), "layer 1 (batchnorm) dim is -1; expected an integer >= 1"),
    "batchnorm without eps": (lambda p: p["config"]["layers"][1].pop("eps"), "layer 1 (batchnorm) has no 'eps' entry"),
    "batchnorm without momentum": (lambda p: p["config"]["layers"][1].pop("momentum"),
                                   "layer 1 (batchnorm) has no 'momentum' entry"),
    "batchnorm without affine": (lambda p: p["config"]["layers"][1].pop("affine"),
                                 "layer 1 (batchnorm) has no 'affine' entry"),
    "batchnorm affine none": (set_layer(1, "affine", None),
                              "layer 1 (batchnorm) affine is None; expected true or false"),
    "negative eps": (set_layer(1, "eps", -1e-5),
                     "layer 1 (batchnorm) has eps -1e-05; eps must be a positive finite number such as 1e-05"),
    "zero eps": (set_layer(1, "eps", 0.0), "eps 0.0"),
    "nan eps": (set_layer(1, "eps", float("nan")), "eps nan"),
    "momentum 2": (set_layer(1, "momentum", 2.0),
                   "layer 1 (batchnorm) has momentum 2.0; momentum must be a number from 0 to 1"),
    "momentum just below 0": (set_layer(1, "momentum", -1e-300), "momentum -1e-300"),
    "unknown layer": (set_layer(2, "type", "gelu"), "a layer spec cannot be built (unknown layer type 'gelu')"),
    "layers empty": (set_config("layers", []), "layers is []; expected a non-empty list of layer specs"),
    "fan_out 99": (set_layer(0, "fan_out", 99), "layer 1 (batchnorm) normalises 100 features but its input has 99"),
    "huge fan_out": (set_layer(0, "fan_out", 10**9), "normalises 100 features but its input has 1000000000"),
    "30 logits": (lambda p: [set_layer(6, "fan_out", 30)(p), set_layer(7, "dim", 30)(p)],
                  "the last layer gives 30 features but vocab_size is 27: the net must end in one logit per character"),
    "state_dict a list": (lambda p: p.__setitem__("state_dict", [1.0]),
                          "the state_dict is not a dict of named tensors"),
    "tensor named by a number": (set_tensor(0, torch.zeros(1)), "the state_dict is not a dict of named tensors"),
    "no C": (lambda p: p["state_dict"].pop("C"), "the state_dict has no 'C' entry"),
    "int C": (set_tensor("C", torch.zeros(27, 10, dtype=torch.int64)),
              "tensor C is torch.int64; expected a floating-point dtype"),
    "C of 30 rows": (set_tensor("C", torch.zeros(30, 10)),
                     "tensor C has shape (30, 10) but vocab_size 27 and emb_size 10 imply (27, 10)"),
    "weight transposed": (set_tensor("layers.0.weight", torch.zeros(100, 40)),
                          "tensor layers.0.weight has shape (100, 40) but the config implies (40, 100)"),
    "weight missing": (lambda p: p["state_dict"].pop("layers.3.weight"),
                       "layer 3 (linear) is described with 10000 values but the file stores 0 for it"),
    "running mean missing": (lambda p: p["state_dict"].pop("layers.1.running_mean"),
                             "layer 1 (batchnorm) is described with 400 values but the file stores 300 for it"),
    "extra tensor": (set_tensor("layers.2.weight", torch.zeros(3)), "layer 2 (tanh) is described with 0 values"),
    "gamma and beta renamed": (rename_tensors(("layers.1.gamma", "layers.1.g"), ("layers.1.beta", "layers.1.b")),
                               "the stored tensors lack layers.1.gamma, layers.1.beta"),
    "tensors of no layer": (lambda p: [set_tensor(k, torch.zeros(1))(p) for k in ("extra.a", "extra.b")],
                            "the file stores tensors the config has no place for: extra.a, extra.b"),
    "int weight": (set_tensor("layers.0.weight", torch.zeros(40, 100, dtype=torch.int64)), "torch.int64"),
    "mixed dtypes": (set_tensor("layers.0.weight", torch.zeros(40, 100, dtype=torch.float64)),
                     "tensor layers.0.weight is torch.float64 but C is torch.float32; "
                     "every tensor must share one dtype"),
    "not a tensor": (set_tensor("layers.0.weight", [1.0, 2.0]),
                     "state_dict entry 'layers.0.weight' is list; expected a dense tensor"),
    "broadcast view": (set_tensor("C", torch.zeros(1).expand(27, 10)),
                       "tensor 'C' of shape (27, 10) is a view of only 4 stored bytes; expected a tensor of its own"),
    "overlapping view": (set_tensor("C", torch.zeros(140).as_strided((27, 10), (5, 1))),
                         "tensor 'C' of shape (27, 10) is a view of only 560 stored bytes"),
    "negative variance": (set_tensor("layers.1.running_var", -torch.ones(100)),
                          "tensor layers.1.running_var has negative entries; a variance is never negative"),
    "split seed negative": (set_split({"seed": -1, "fractions": FRACTIONS}),
                            f"the split seed is -1; expected an integer from 0 to {MAX_SEED}"),
    "split seed 2^64": (set_split({"seed": MAX_SEED + 1, "fractions": FRACTIONS}),
                        f"the split seed is {MAX_SEED + 1}; expected an integer from 0 to {MAX_SEED}"),
    "split without seed": (set_split({"fractions": FRACTIONS}), "the split record has no 'seed' entry"),
    "split without fractions": (set_split({"seed": 1}), "the split record has no 'fractions' entry"),
    "split fractions bad": (set_split({"seed": 1, "fractions": [0.9, 0.1, 0.0]}),
                            "split fractions are [0.9, 0.1, 0.0]; expected three positive numbers summing to 1"),
    "split fractions a number": (set_split({"seed": 1, "fractions": 1.0}), "the split fractions are 1.0; expected"),
    "split fractions sum 1.1": (set_split({"seed": 1, "fractions": [0.8, 0.2, 0.1]}),
                                "the split fractions are [0.8, 0.2, 0.1]; expected"),
    "split not a dict": (set_split(42), "the split record is 42; expected a dict with 'seed' and 'fractions'"),
    "names_sha256 upper case": (lambda p: p.__setitem__("names_sha256", "AB" * 32),
                                f"names_sha256 is '{'AB' * 28}...; expected 64 hex digits or none"),
    "names_sha256 a number": (lambda p: p.__setitem__("names_sha256", 7), "names_sha256 is 7; expected 64 hex digits"),
    "training flag a string": (lambda p: p.__setitem__("training", "no"),
                               "the training flag is 'no'; expected true or false"),
    "config a list": (lambda p: p.__setitem__("config", [1, 2]), "the config is list; expected a dict"),
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
