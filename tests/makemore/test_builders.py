"""The notebook's E01 and E02 nets: their exact architecture, sizes and initial values."""

import torch

from core.makemore.model import e01_mlp, e02_mlp


def linear(fan_in, fan_out, bias):
    return {"type": "linear", "fan_in": fan_in, "fan_out": fan_out, "bias": bias}


def batchnorm(dim):
    return {"type": "batchnorm", "dim": dim, "eps": 1e-5, "momentum": 0.1, "affine": True}


def test_e01_starts_from_zeros_by_default():
    """e01_mlp's default init is 'zeros' (the notebook's E01 baseline), recorded on the model."""
    default = e01_mlp(torch.Generator().manual_seed(0))
    zeros = e01_mlp(torch.Generator().manual_seed(0), init="zeros")
    assert default.init_scheme == "zeros"
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), zeros.state_dict().values(),
                                                 strict=True))


def test_e01_reads_the_context_length_it_is_built_for():
    """An E01 net built for a context of 3 takes rows of 3 ids: its first layer has 3 * emb_size inputs."""
    model = e01_mlp(torch.Generator().manual_seed(0), context_length=3, emb_size=2, n_hidden=5)
    assert model.context_length == 3 and model.config()["layers"][0]["fan_in"] == 6
    assert model(torch.zeros(2, 3, dtype=torch.int64)).shape == (2, 27)


def test_e02_is_the_notebooks_batchnorm_net():
    """E02 = (Linear without bias, BatchNorm1d, Tanh) twice, then Linear without bias and BatchNorm1d(27)."""
    model = e02_mlp(torch.Generator().manual_seed(0), context_length=3, emb_size=2, n_hidden=5)
    assert model.config() == {
        "vocab_size": 27, "emb_size": 2, "context_length": 3, "init_scheme": "kaiming(5/3)",
        "layers": [linear(6, 5, False), batchnorm(5), {"type": "tanh"},
                   linear(5, 5, False), batchnorm(5), {"type": "tanh"},
                   linear(5, 27, False), batchnorm(27)],
    }


def test_e02_starts_with_gained_weights_and_a_small_last_gamma():
    """E02's weights are (5/3) randn / sqrt(fan_in) in draw order; the last BatchNorm's gamma is 0.1, the others 1.

    The draws are C, then each Linear's weight, from the one generator, as in the notebook.
    """
    g = torch.Generator().manual_seed(0)
    model = e02_mlp(torch.Generator().manual_seed(0), n_hidden=6)
    C = torch.randn(27, 10, generator=g)
    weights = []
    for fan_in, fan_out in [(40, 6), (6, 6), (6, 27)]:
        w = torch.randn(fan_in, fan_out, generator=g) / fan_in**0.5
        w *= 5 / 3
        weights.append(w)
    assert torch.equal(model.C, C)
    assert all(torch.equal(model.layers[i].weight, w) for i, w in zip([0, 3, 6], weights, strict=True))
    assert torch.equal(model.layers[1].gamma, torch.ones(6)) and torch.equal(model.layers[4].gamma, torch.ones(6))
    assert torch.equal(model.layers[7].gamma, torch.full((27,), 0.1))
