"""Laws of training: determinism per generator seed, the SGD step itself, and what train() records and leaves."""

import inspect
import io
import re
import sys
import time

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import core.makemore.train
from core import notebook
from core.engine.bound.rounding import U32
from core.makemore.data import build_dataset
from core.makemore.model import e01_mlp, e02_mlp
from core.makemore.train import train
from properties.strategies.names import name_lists

archs = st.sampled_from(["e01-kaiming", "e01-zeros", "e02"])


def small_model(arch: str, seed: int, context_length: int):
    g = torch.Generator().manual_seed(seed)
    if arch == "e02":
        return e02_mlp(g, context_length=context_length, emb_size=3, n_hidden=8)
    return e01_mlp(g, init=arch.split("-")[1], context_length=context_length, emb_size=3, n_hidden=8)


@given(name_lists, archs, st.integers(1, 4), st.integers(1, 20), st.integers(2, 16), st.integers(0, 2**32 - 1))
def test_same_seed_same_parameters(names, arch, context_length, steps, batch_size, seed):
    """train(model(s), seed s') = train(model(s), seed s') parameter for parameter, bit for bit.

    Initial weights and every minibatch come from explicit generators, and the CPU kernels are
    deterministic for a fixed thread count, so two runs perform the same float operations.
    """
    X, Y = build_dataset(names, context_length)
    runs = []
    for _ in range(2):
        model = small_model(arch, seed, context_length)
        history = train(model, X, Y, steps, batch_size=batch_size, lr=0.1,
                        generator=torch.Generator().manual_seed(seed + 1), progress=False)
        runs.append((model.state_dict(), history.losses))
    (sd_a, loss_a), (sd_b, loss_b) = runs
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert loss_a == loss_b and len(loss_a) == steps


@given(name_lists, st.integers(2, 16), st.floats(1e-3, 1.0), st.integers(0, 2**32 - 1))
@example(["a"], 2, 1e-3, 0)
def test_one_step_is_plain_sgd(names, batch_size, lr, seed):
    """After one step, p₁ = p₀ − lr·∇p L(p₀; batch₀), batch₀ the generator's first draw; losses[0] = L(p₀; batch₀).

    train() draws indices with torch.randint(0, N, (B,), generator), as the notebook does, and
    applies the plain update, so replaying that draw and taking the gradient by hand gives the
    same loss and gradient bit for bit. The update is a product and a sum (or one fused
    multiply-add): each side is within 2u·(|p₀| + |lr·g|) of the exact p₀ − lr·g, u = 2⁻²⁴ in
    float32, hence the 4u bound.
    """
    X, Y = build_dataset(names, 3)
    model = small_model("e01-kaiming", seed, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = small_model("e01-kaiming", seed, 3)
    ix = torch.randint(0, X.shape[0], (batch_size,), generator=torch.Generator().manual_seed(seed + 7))
    loss = reference.loss(X[ix], Y[ix])
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    history = train(model, X, Y, 1, batch_size=batch_size, lr=lr, generator=torch.Generator().manual_seed(seed + 7),
                    progress=False)
    assert history.losses == [loss.item()] and history.steps == 1
    u = U32
    for (name, _), g in zip(reference.named_parameters(), grads):
        p0, step = before[name], lr * g
        bound = 4 * u * (p0.abs() + step.abs())
        assert ((model.state_dict()[name] - (p0 - step)).abs() <= bound).all(), name


@given(st.sampled_from(["e01-kaiming", "e02"]), st.integers(1, 12), st.booleans(), st.integers(0, 2**32 - 1))
def test_train_records_every_step_and_leaves_the_model_training(arch, steps, start_in_eval, seed):
    """train(m, T) calls on_step(t, m) after update t for t = 0..T−1, records T losses, and leaves m.training.

    on_step sees the parameters after the update it follows: its t-th call finds them changed from
    the (t−1)-th. A frozen parameter (requires_grad = False) never changes.
    """
    X, Y = build_dataset(["emma", "ava", "olivia"], 2)
    model = small_model(arch, seed, 2).train(not start_in_eval)
    frozen = model.C
    frozen.requires_grad_(False)
    C0 = frozen.detach().clone()
    seen = []

    def on_step(step, m):
        assert m is model
        seen.append((step, [p.detach().clone() for p in m.parameters() if p.requires_grad]))

    history = train(model, X, Y, steps, batch_size=4, lr=0.1, generator=torch.Generator().manual_seed(seed),
                    progress=False, on_step=on_step)
    assert [step for step, _ in seen] == list(range(steps))
    assert history.steps == len(history.losses) == steps and history.wall_time > 0
    assert all(isinstance(v, float) for v in history.losses)
    assert model.training
    assert torch.equal(model.C, C0)
    for (_, before), (_, after) in zip(seen, seen[1:]):
        assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_a_zero_learning_rate_changes_nothing():
    """lr = 0: p_t = p₀ − 0·g = p₀ bit for bit, for every parameter and step (g finite)."""
    X, Y = build_dataset(["emma", "ava", "olivia"], 3)
    model = small_model("e01-kaiming", 1, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, X, Y, 3, batch_size=4, lr=0.0, generator=torch.Generator().manual_seed(2), progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_defaults_are_the_notebooks():
    """train(m, X, Y, T) = train(m, X, Y, T, batch_size=64, lr=0.1), the notebook loop's defaults, bit for bit."""
    defaults = {k: v.default for k, v in inspect.signature(notebook.train).parameters.items()
                if k in ("batch_size", "lr")}
    assert defaults == {"batch_size": 64, "lr": 0.1}
    X, Y = build_dataset(["emma", "ava", "olivia", "isabella"], 3)
    runs = []
    for kwargs in ({}, defaults):
        model = small_model("e01-kaiming", 4, 3)
        train(model, X, Y, 2, generator=torch.Generator().manual_seed(5), progress=False, **kwargs)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stderr, progress, shown", [(Terminal, None, True), (Terminal, False, False),
                                                     (io.StringIO, None, False)])
def test_progress_is_drawn_on_a_terminal_only(monkeypatch, stderr, progress, shown):
    """train draws its progress bar on stderr by default iff stderr is a terminal: never into a pipe or a log file.

    The bar counts steps against the total ("0/3", "step/s") and is erased when training ends, so
    the terminal keeps no trace of it (its last write is a carriage return, not a newline).
    """
    monkeypatch.setattr(sys, "stderr", stderr())
    X, Y = build_dataset(["emma", "ava"], 2)
    kwargs = {} if progress is None else {"progress": progress}
    train(small_model("e01-zeros", 0, 2), X, Y, 3, batch_size=4, generator=torch.Generator().manual_seed(0), **kwargs)
    out = sys.stderr.getvalue()
    assert bool(out) == shown
    if shown:
        assert " 0/3 " in out and re.search(r"[\d?]step/s\]", out)
        assert out.endswith("\r") and not out.rstrip(" \r").endswith("\n")


class RecordingBar:
    """Stands in for tqdm in core.makemore.train: records how far the bar is moved and what it is told to show."""

    def __init__(self, **kwargs):
        self.kwargs, self.n, self.shown = kwargs, 0, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix(self, refresh=True, **postfix):
        self.shown.append((self.n, postfix, refresh))

    def update(self, k):
        self.n += k


def test_the_bar_advances_every_thousand_steps_and_at_the_end(monkeypatch):
    """After step t the bar reads t + 1 at t ≡ 999 (mod 1000) and at the last step, with that step's loss (4 places)
    set without a redraw of its own; wall_time is the time train() took."""
    bars = []
    monkeypatch.setattr(core.makemore.train, "tqdm", lambda **kwargs: bars.append(RecordingBar(**kwargs)) or bars[-1])
    X, Y = build_dataset(["emma", "ava"], 2)
    start = time.perf_counter()
    history = train(small_model("e01-zeros", 0, 2), X, Y, 2001, batch_size=2,
                    generator=torch.Generator().manual_seed(0))
    elapsed = time.perf_counter() - start
    (bar,) = bars
    assert bar.n == 2001 and bar.kwargs["total"] == 2001
    # (the bar's count when the loss is set, the loss shown, redraw?): the count moves right after each
    assert bar.shown == [(before, {"loss": f"{history.losses[step]:.4f}"}, False)
                         for before, step in ((0, 999), (1000, 1999), (2000, 2000))]
    assert 0 < history.wall_time <= elapsed
