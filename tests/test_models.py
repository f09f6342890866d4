"""The models a user names (core.models): a factory, a timm or torchvision architecture, their state_dicts loaded as
checkpoints are, and their default input shapes; each refusal one ModelError naming what is wrong. The weights files
are made here: nothing is downloaded."""

import pickle
import sys

import pytest
import torch
from torch import nn

from core.errors import MissingDependency, ModelError
from core.models import check_runs, default_input_shape, from_factory, load_weights, timm_model, torchvision_model

pytest.importorskip("torchvision")


def tiny_net() -> nn.Module:
    """A factory of no arguments, as --model names one: conv → BatchNorm → ReLU → pool → Linear."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def not_a_model() -> str:
    return "a string"


def test_a_factory_builds_its_model_in_eval_mode():
    model = from_factory("tests.test_models:tiny_net")
    assert isinstance(model, nn.Sequential) and not model.training


@pytest.mark.parametrize("spec, message", [
    ("tests.test_models", "names no factory: write package.module:factory"),
    (":tiny_net", "names no factory"),
    ("no_such_package_here:make", "cannot import 'no_such_package_here'"),
    ("tests.test_models:missing", "tests.test_models has no function 'missing'"),
    ("tests.test_models:not_a_model", "tests.test_models:not_a_model returned a str, not a torch.nn.Module"),
    ("timm:no_such_timm_model", "timm has no model 'no_such_timm_model'"),
])
def test_a_factory_that_cannot_give_a_model_is_refused_naming_why(spec, message):
    if spec.startswith("timm:"):
        pytest.importorskip("timm")
    with pytest.raises(ModelError, match=message):
        from_factory(spec)


def test_timm_models_build_through_timm_and_know_their_input_size():
    pytest.importorskip("timm")
    model = from_factory("timm:resnet18d")
    assert not model.training and default_input_shape(model) == (1, 3, 224, 224)


def test_timm_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(MissingDependency, match=r"timm:resnet18d needs the package timm.*pip install 'bnfold\[timm\]'"):
        timm_model("resnet18d")


def test_a_state_dict_loads_into_its_architecture(tmp_path):
    """torchvision_model(name) + load_weights(its saved state_dict) holds exactly the saved tensors."""
    source = torchvision_model("resnet18")
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    loaded = load_weights(torchvision_model("resnet18"), path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


def test_a_state_dict_of_another_model_names_its_keys(tmp_path):
    path = tmp_path / "other.pt"
    state = tiny_net().state_dict()
    torch.save({**state, "extra.weight": torch.zeros(1)}, path)
    model = tiny_net()
    del model[5]
    with pytest.raises(ModelError, match=r"other.pt: not a state_dict of this Sequential: unexpected 5.weight, "
                                         r"5.bias, extra.weight"):
        load_weights(model, path)
    torch.save({k: v for k, v in state.items() if not k.startswith("0.")}, path)
    with pytest.raises(ModelError, match="missing 0.weight, 0.bias"):
        load_weights(tiny_net(), path)
    torch.save({**state, "5.weight": torch.zeros(3, 4)}, path)
    with pytest.raises(ModelError, match=r"tensors of other shapes than this Sequential's: 5.weight \(3, 4\) \(the "
                                         r"model's is \(2, 4\)\)"):
        load_weights(tiny_net(), path)


class Payload:
    def __reduce__(self):
        return (print, ("this should never run",))


def test_a_file_that_is_no_safe_state_dict_is_refused(tmp_path, capsys):
    code = tmp_path / "code.pt"
    code.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelError, match="code.pt: not a state_dict torch can load safely"):
        load_weights(tiny_net(), code)
    assert "this should never run" not in capsys.readouterr().out
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ModelError, match="list.pt: not a state_dict \\(a mapping of names to tensors"):
        load_weights(tiny_net(), listed)
    with pytest.raises(ModelError, match="absent.pt: no such file"):
        load_weights(tiny_net(), tmp_path / "absent.pt")


@pytest.mark.parametrize("name, size", [("resnet18", 224), ("inception_v3", 299)])
def test_torchvision_models_take_their_documented_size(name, size):
    assert default_input_shape(torchvision_model(name), name) == (1, 3, size, size)


def test_a_factory_model_has_no_default_shape_and_a_wrong_one_is_refused():
    model = tiny_net().eval()
    assert default_input_shape(model) is None
    check_runs(model, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ModelError, match=r"Sequential does not run on an input of shape \(1, 5, 8, 8\) .*give the "
                                         r"shape it takes"):
        check_runs(model, torch.zeros(1, 5, 8, 8))
