"""How a folded net agrees with its original (core.makemore.evaluate): on one batch, and over a split in chunks."""

import dataclasses

import pytest
import torch

from core.engine.fold import fold
from core.makemore.data import build_dataset, dataset_chunks, random_rows, synthetic_names
from core.makemore.evaluate import FoldAgreement, combine_agreements, fold_agreement, split_agreement
from core.makemore.experiments import trained_e02


@pytest.fixture(scope="module")
def nets():
    """(unfolded, folded): a briefly trained E02 net in eval, so its BatchNorms fold into something, and its fold."""
    g = torch.Generator().manual_seed(0)
    model = trained_e02(*random_rows(400, g), 20, g)
    return model, fold(model)[0].eval()


def test_one_batch_agrees_within_its_certified_bounds(nets):
    """On (X, Y): every |Δlogit| ≤ its bound (ratios ≤ 1), |Δloss| ≤ loss_bound, and the agreement counts X's rows."""
    model, folded = nets
    X, Y = build_dataset(synthetic_names(20, seed=3), model.context_length)
    agreement = fold_agreement(model, folded, X, Y)
    assert (agreement.rows, agreement.chunks) == (X.shape[0], 1)
    assert agreement.bound_ratios is not None and agreement.bound_ratios.shape == (X.shape[0], 27)
    assert (agreement.bound_ratios <= 1).all()
    assert agreement.max_abs_logit_diff <= agreement.max_bound
    assert abs(agreement.loss_unfolded - agreement.loss_folded) <= agreement.loss_bound


def test_a_split_in_chunks_is_the_combination_of_its_chunks(nets):
    """split_agreement(names, R) = combine_agreements of fold_agreement on each chunk of dataset_chunks(names, R):
    the same rows and chunk count, the logit maxima exactly, and no per-row ratios (memory stays bounded)."""
    model, folded = nets
    names = synthetic_names(30, seed=4)
    chunks = list(dataset_chunks(names, model.context_length, 50))
    assert len(chunks) > 1
    split = split_agreement(model, folded, names, chunk_rows=50)
    parts = [(X.shape[0], fold_agreement(model, folded, X, Y)) for X, Y in chunks]
    assert split == combine_agreements(parts)
    assert (split.rows, split.chunks) == (sum(n for n, _ in parts), len(chunks))
    assert split.bound_ratios is None
    assert split.max_abs_logit_diff == max(a.max_abs_logit_diff for _, a in parts)
    assert split.max_bound == max(a.max_bound for _, a in parts)
    assert abs(split.loss_unfolded - split.loss_folded) <= split.loss_bound


def test_one_chunk_keeps_its_values(nets):
    """A split that fits one chunk reports that chunk's losses, bounds and maxima as they are."""
    model, folded = nets
    names = synthetic_names(5, seed=5)
    X, Y = build_dataset(names, model.context_length)
    whole = fold_agreement(model, folded, X, Y)
    split = split_agreement(model, folded, names)
    assert split == dataclasses.replace(whole, bound_ratios=None)


def test_no_chunks_have_no_agreement():
    with pytest.raises(ValueError, match="no chunks to combine"):
        combine_agreements([])


def test_an_agreement_prints_without_its_ratios(nets):
    model, folded = nets
    X, Y = build_dataset(synthetic_names(3, seed=6), model.context_length)
    text = repr(fold_agreement(model, folded, X, Y))
    assert text.startswith(f"{FoldAgreement.__name__}(loss_unfolded=") and "bound_ratios" not in text
