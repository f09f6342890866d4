"""Law of checkpoint loading: any edit to a saved checkpoint loads as exactly what the file says, or is refused."""

import copy

import torch
from hypothesis import given
from hypothesis import strategies as st

from core.errors import CheckpointError
from core.makemore.checkpoint import load_checkpoint, save
from core.makemore.data import Split
from core.makemore.model import e01_mlp, e02_mlp

MODELS = {"e01": e01_mlp(torch.Generator().manual_seed(1), init="kaiming", n_hidden=6).eval(),
          "e02": e02_mlp(torch.Generator().manual_seed(2), n_hidden=6).eval()}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=4), st.dictionaries(st.text(max_size=3), st.none()),
    st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
              st.lists(st.integers(0, 7), max_size=3).map(tuple),
              st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool])),
)


def paths(tree, prefix=()):
    """Every (path, value) inside nested dicts and lists, tensors as leaves."""
    yield prefix, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from paths(value, (*prefix, i))


@given(kind=st.sampled_from(sorted(MODELS)), data=st.data())
def test_an_edited_checkpoint_loads_as_written_or_is_a_checkpoint_error(kind, data, tmp_path_factory):
    """load(edit(save(m))) is a CheckpointError, or a model whose config and tensors are those in the edited file.

    Loading checks every entry of the config and the split record, and every tensor's name, shape and
    dtype against the config, before it builds anything; whatever passes is loaded as stored.
    """
    path = tmp_path_factory.mktemp("c") / "m.pt"
    save(MODELS[kind], path, split=Split(3))
    payload = torch.load(path, weights_only=True)
    edited = copy.deepcopy(payload)
    spots = [p for p, _ in paths(edited) if p]
    spot = data.draw(st.sampled_from(spots), label="where")
    parent = edited
    for key in spot[:-1]:
        parent = parent[key]
    if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
        del parent[spot[-1]]
    else:
        parent[spot[-1]] = data.draw(junk, label="value")
    torch.save(edited, path)
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        return
    model = checkpoint.model
    assert model.config() == {**edited["config"], "init_scheme": edited["config"].get("init_scheme")}
    stored = edited["state_dict"]
    assert set(model.state_dict()) == set(stored)
    assert all(torch.equal(t, stored[k]) for k, t in model.state_dict().items())
