"""train's guards: a fresh net whose loss is already nan, and parameters that diverge, each a TrainingError that names
the step or the cause and the fix, and no command-line option."""

import pytest
import torch

from core.errors import TrainingError
from core.makemore.data import random_rows
from core.makemore.model import e01_mlp
from core.makemore.train import DIVERGENCE_CHECK_EVERY, check_initial_loss, train


def rows(seed: int = 0):
    return random_rows(512, torch.Generator().manual_seed(seed))


def poisoned_at(step_to_poison: int, seen: list[int]):
    """An on_step that sets one weight to inf after step `step_to_poison`, and records every step it sees."""

    def on_step(step, model):
        if step == step_to_poison:
            with torch.no_grad():
                model.layers[0].weight[0, 0] = float("inf")
        seen.append(step)

    return on_step


@pytest.mark.parametrize("steps, poisoned, stopped_by", [(100_000, 150, 200), (130, 110, 130)],
                         ids=["at-the-next-check", "at-the-end"])
def test_divergence_stops_at_the_next_check_or_the_end(steps, poisoned, stopped_by):
    """With check_every = 100, a parameter that turns inf after step 150 stops training at step 200, and one that
    turns inf after step 110 of 130 at the end; the message names the step and the fix, and no option."""
    X, Y = rows()
    seen: list[int] = []
    model = e01_mlp(torch.Generator().manual_seed(1), init="kaiming")
    with pytest.raises(TrainingError) as err:
        train(model, X, Y, steps, generator=torch.Generator().manual_seed(2), progress=False,
              on_step=poisoned_at(poisoned, seen), check_every=DIVERGENCE_CHECK_EVERY)
    assert str(err.value) == (f"training diverged: parameters became nan or inf by step {stopped_by}; "
                              f"lower the learning rate")
    assert seen[-1] == stopped_by - 1


def test_without_checks_training_runs_to_the_end():
    """check_every=None (the default) checks nothing: the diagnostics' runs see every step, finite or not."""
    X, Y = rows()
    seen: list[int] = []
    model = e01_mlp(torch.Generator().manual_seed(1), init="kaiming")
    history = train(model, X, Y, 130, generator=torch.Generator().manual_seed(2), progress=False,
                    on_step=poisoned_at(110, seen))
    assert history.steps == 130 and seen[-1] == 129


def test_a_fresh_net_whose_loss_overflows_is_refused_before_training():
    """constant(1e38) makes the activations overflow: the loss is nan before any step. The error names the cause
    and the fix, and the model's training mode is left as it was."""
    X, Y = rows()
    model = e01_mlp(torch.Generator().manual_seed(1), init="constant(1e38)")
    model.train()
    with pytest.raises(TrainingError) as err:
        check_initial_loss(model, X, Y)
    assert str(err.value) == ("the freshly built net's loss is already nan (its activations overflow); "
                              "build it with a smaller init value")
    assert model.training


def test_a_fresh_net_with_a_finite_loss_passes():
    X, Y = rows()
    model = e01_mlp(torch.Generator().manual_seed(1), init="kaiming").eval()
    check_initial_loss(model, X, Y)
    assert not model.training
