"""Checkpoints: exact round trip, atomic writes, and refusal of anything unsafe or inconsistent."""

import os
import pickle

import pytest
import torch

from core.errors import CheckpointError
from core.model import e01_mlp, e02_mlp, load, save


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


def test_config_not_matching_tensors(tmp_path):
    model = models()[2]
    path = tmp_path / "m.pt"
    save(model, path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["layers"][0]["fan_out"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="does not match"):
        load(path)


def test_other_object_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a bnfold checkpoint"):
        load(path)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save(models()[0], path)
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save(models()[2], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
