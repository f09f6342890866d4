"""Laws of chunked evaluation: the chunks are the dataset, the chunked mean is the float64 mean, bounds combine."""

from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from core.makemore.data import build_dataset, dataset_chunks
from core.makemore.evaluate import combine_agreements, mean_loss
from core.makemore.model import e01_mlp

letters = st.sampled_from("abcdefghijklmnopqrstuvwxyz")
short_or_long = st.one_of(st.text(letters, min_size=1, max_size=8), st.text(letters, min_size=30, max_size=80))
name_lists = st.lists(short_or_long, min_size=1, max_size=8)
contexts = st.integers(1, 6)
chunk_rows = st.integers(1, 70)


@given(names=name_lists, context_length=contexts, max_rows=chunk_rows)
@example(names=["abc"], context_length=4, max_rows=1)
@example(names=["a" * 80, "b"], context_length=3, max_rows=7)
def test_chunks_concatenate_to_the_dataset(names, context_length, max_rows):
    """cat(dataset_chunks(names, k, R)) = build_dataset(names, k), every chunk having 1..R rows.

    Whole names are grouped while they fit; a longer name is cut into windows that each carry the k
    ids before them, so no row loses its context.
    """
    chunks = list(dataset_chunks(names, context_length, max_rows))
    X, Y = build_dataset(names, context_length)
    assert all(1 <= y.shape[0] <= max_rows and x.shape == (y.shape[0], context_length) for x, y in chunks)
    assert torch.equal(torch.cat([x for x, _ in chunks]), X) and torch.equal(torch.cat([y for _, y in chunks]), Y)


@given(names=name_lists, context_length=contexts, max_rows=chunk_rows)
@example(names=["ab", "cd", "ef"], context_length=2, max_rows=6)
def test_whole_names_fill_each_chunk_as_far_as_the_next_one_allows(names, context_length, max_rows):
    """With every name shorter than R rows, each chunk is whole names, and a chunk ends only where the next name's
    rows would take it past R: rows(chunk) + rows(next name) > R.

    Fewer, fuller chunks mean fewer forward calls when a split is evaluated in bounded memory.
    """
    short = [n for n in names if len(n) + 1 <= max_rows]
    sizes = [y.shape[0] for _, y in dataset_chunks(short, context_length, max_rows)]
    rows = [len(n) + 1 for n in short]
    ends, total = [], 0
    for size in sizes:
        total += size
        ends.append(total)
    starts = [0] + [sum(rows[:k]) for k in range(1, len(rows) + 1)]
    assert all(end in starts for end in ends)  # chunks hold whole names
    for size, end in zip(sizes, ends[:-1]):
        assert size + rows[starts.index(end)] > max_rows


model_dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


def small_model(seed: int, dtype=torch.float64):
    return e01_mlp(torch.Generator().manual_seed(seed), init="kaiming", emb_size=3, n_hidden=8).to(dtype).eval()


@given(names=name_lists, max_rows=chunk_rows, seed=st.integers(0, 2**32 - 1))
@example(names=["a"], max_rows=1, seed=0)
def test_chunk_size_changes_nothing_but_the_summation_order(names, max_rows, seed):
    """mean_loss(model, chunks of R rows) = mean over all rows of CE(model(X)) within 1e-12 relative, for any R.

    The loss of a row does not depend on the rows evaluated with it (to float64 rounding), and the
    chunk sums are added in float64: only the summation order changes with R.
    """
    model = small_model(seed)
    X, Y = build_dataset(names, model.context_length)
    with torch.no_grad():
        expected = F.cross_entropy(model(X), Y).item()
    got = mean_loss(model, dataset_chunks(names, model.context_length, max_rows))
    assert abs(got - expected) <= 1e-12 * abs(expected)


@given(names=name_lists, max_rows=chunk_rows, dtype=model_dtypes, seed=st.integers(0, 2**32 - 1))
def test_the_mean_is_taken_in_float64_whatever_the_dtype(names, max_rows, dtype, seed):
    """mean_loss(model in dtype d) = (exact mean of the rows' CE(float64(logits))) within 1e-12 relative.

    Logits are cast to float64 before the cross-entropy and summed in float64, so a float16 model's
    mean is neither rounded to 3 digits nor overflowed past 65504 as a float16 sum would be.
    """
    model = small_model(seed, dtype)
    chunks = list(dataset_chunks(names, model.context_length, max_rows))
    with torch.no_grad():
        rows = [F.cross_entropy(model(X).double(), Y, reduction="none") for X, Y in chunks]
    exact = sum(Fraction(v) for r in rows for v in r.tolist()) / sum(r.shape[0] for r in rows)
    got = mean_loss(model, chunks)
    assert abs(Fraction(got) - exact) <= Fraction(1e-12) * abs(exact)


@dataclass
class ChunkAgreement:
    loss_unfolded: float
    loss_folded: float
    loss_bound: float
    max_abs_logit_diff: float
    max_bound: float


chunk = st.tuples(st.integers(1, 10**6), st.floats(0, 10), st.floats(-1, 1), st.floats(0, 1), st.floats(0, 1))


@given(st.lists(chunk, min_size=1, max_size=20))
def test_combined_bound_holds_when_every_chunk_bound_holds(raw):
    """|L_c − L'_c| ≤ β_c for every chunk ⇒ |L − L'| ≤ combined bound, L the row-weighted mean of the L_c.

    The exact weighted means differ by at most Σ w_c β_c; each reported mean is its exact value rounded
    once (ulp/2), and the bound adds an ulp of each and of itself.
    """
    parts = []
    for rows, unfolded, share, bound, diff in raw:
        folded = unfolded + share * bound  # |unfolded − folded| ≤ bound, in exact arithmetic...
        bound = max(bound, abs(Fraction(folded) - Fraction(unfolded)))  # ...and after rounding
        parts.append((rows, ChunkAgreement(unfolded, folded, float(bound) * (1 + 2**-50), diff * float(bound),
                                           float(bound))))
    combined = combine_agreements(parts)
    assert abs(Fraction(combined.loss_unfolded) - Fraction(combined.loss_folded)) <= Fraction(combined.loss_bound)
    assert combined.rows == sum(n for n, _ in parts)
    assert combined.max_bound == max(a.max_bound for _, a in parts)
