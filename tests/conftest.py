"""Small inputs for the command-line tests (a names file of synthetic names, checkpoints of every kind), and torch's
float32 precision settings restored after a test that changes them."""

import pytest
import torch

from core.makemore.checkpoint import save
from core.makemore.data import Split, file_sha256, synthetic_names
from core.makemore.model import e01_mlp, e02_mlp

PER_BACKEND = [("mkldnn", "matmul"), ("mkldnn", "conv"), ("cuda", "matmul"), ("cudnn", "conv")]


@pytest.fixture
def precision_settings():
    """torch.backends, its float32 precision settings (legacy and per-backend) restored after the test: the
    per-backend ones first (while any differs from its start, torch refuses to read the legacy flags), then the
    legacy ones."""
    backends = torch.backends
    per_backend = {(b, op): getattr(getattr(backends, b), op).fp32_precision for b, op in PER_BACKEND}
    legacy = torch.get_float32_matmul_precision(), backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    yield backends
    for (b, op), value in per_backend.items():
        getattr(getattr(backends, b), op).fp32_precision = value
    torch.set_float32_matmul_precision(legacy[0])
    backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = legacy[1:]


@pytest.fixture(scope="session")
def small_names(tmp_path_factory):
    """40 random lowercase names: enough for every split, fast to evaluate."""
    path = tmp_path_factory.mktemp("names") / "names.txt"
    path.write_text("\n".join(synthetic_names(40, seed=1)) + "\n")
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, small_names):
    """{kind: path} of untrained checkpoints whose split (seed 42) was cut from small_names.

    e01 (kaiming), e02, half (e01 in float16), nan (e02 with one nan weight), uniform (e01 at zero init: every
    character equally likely, so names average about 20 characters), legacy (e02 in the format that records
    no split).
    """
    folder = tmp_path_factory.mktemp("checkpoints")
    g = torch.Generator().manual_seed(0)
    digest = file_sha256(small_names)
    models = {"e01": e01_mlp(g, init="kaiming"), "e02": e02_mlp(g), "half": e01_mlp(g, init="kaiming").half(),
              "nan": e02_mlp(g), "uniform": e01_mlp(g, init="zeros")}
    with torch.no_grad():
        models["nan"].layers[0].weight[0, 0] = float("nan")
    paths = {}
    for kind, model in models.items():
        paths[kind] = folder / f"{kind}.pt"
        save(model.eval(), paths[kind], split=Split(42), names_sha256=digest)
    legacy = e02_mlp(g).eval()
    paths["legacy"] = folder / "legacy.pt"
    torch.save({"format": "bnfold.charmlp/1", "config": legacy.config(), "training": False,
                "state_dict": legacy.state_dict()}, paths["legacy"])
    return paths
