"""Laws of the names data's checks: no part of a split empty, every character in the vocabulary, the names file
looked up in order, a failed download told in words."""

import re
import urllib.error
from pathlib import Path

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from core.makemore import data
from core.makemore.data import (
    DataError,
    Split,
    _failure_text,
    build_dataset,
    dataset_chunks,
    load_split,
    minimum_names,
    random_rows,
    require_enough_names,
    resolve_names_path,
    split_sizes,
)

weights = st.lists(st.integers(1, 50), min_size=3, max_size=3)


@given(weights=weights, extra=st.integers(0, 400))
@example(weights=[8, 1, 1], extra=0)
@example(weights=[1, 1, 1], extra=0)  # the fewest possible: three names
@example(weights=[14, 3, 3], extra=0)  # 3 names leave dev empty, 4 do not
def test_from_the_minimum_up_no_part_of_the_split_is_empty(weights, extra):
    """n ≥ minimum_names(f) ⇒ every part of split_sizes(n, f) ≥ 1, and minimum_names(f) − 1 leaves a part empty.

    Each part of n names holds at least ⌊f_k·n⌋ ≥ 1 once n ≥ 1/min f, and below that minimum_names checks every
    count; it is the first count from which no smaller count up to the bound fails.
    """
    fractions = tuple(w / sum(weights) for w in weights)
    assume(abs(sum(fractions) - 1) <= 1e-9)
    low = minimum_names(fractions)
    assert min(split_sizes(low + extra, fractions)) >= 1
    if low > 1:
        assert min(split_sizes(low - 1, fractions)) == 0


@given(count=st.integers(0, 40))
def test_too_few_names_is_a_data_error_naming_the_minimum(count):
    """require_enough_names(n) raises DataError naming the file and minimum_names() iff some part would be empty."""
    empty_part = min(split_sizes(count)) == 0
    if empty_part:
        with pytest.raises(DataError) as err:
            require_enough_names(count, "names.txt")
        assert str(err.value).startswith(f"names.txt: {count} name")
        assert f"needs at least {minimum_names()} names" in str(err.value)
    else:
        require_enough_names(count, "names.txt")
    assert empty_part == (count < minimum_names())


@pytest.mark.parametrize("fractions", [(0.0, 0.5, 0.5), (0.9, 0.1, 0.0), (1.0, 0.0, 0.0)])
def test_a_split_with_an_empty_share_is_refused_naming_the_fractions(fractions):
    """A fraction of 0 leaves its part empty at every size: minimum_names refuses it, naming the fractions."""
    with pytest.raises(ValueError, match=re.escape(f"every split fraction must be positive, got {fractions}")):
        minimum_names(fractions)


def test_a_names_file_too_small_for_its_split_is_refused_naming_the_file(tmp_path):
    """load_split refuses a file whose split leaves a part empty: the message names the file, the split's shares
    and the minimum for them."""
    path = tmp_path / "few.txt"
    path.write_text("ann\nbob\n")
    fractions = (0.5, 0.25, 0.25)
    with pytest.raises(DataError) as err:
        load_split(path, Split(3, fractions))
    assert str(err.value).startswith(f"{path}: 2 names are too few: the 0.5/0.25/0.25 train/dev/test split needs "
                                     f"at least {minimum_names(fractions)} names")


def test_a_split_describes_itself_and_cuts_by_its_own_fractions():
    """Split(seed, f).describe() reads 'seed S, f1/f2/f3', and its parts have the sizes split_sizes(n, f) gives."""
    split = Split(5, (0.5, 0.25, 0.25))
    names = [f"name{i}" for i in range(20)]
    parts = split.parts(names)
    assert split.describe() == "seed 5, 0.5/0.25/0.25"
    assert tuple(len(parts[k]) for k in ("train", "dev", "test")) == split_sizes(20, (0.5, 0.25, 0.25)) == (10, 5, 5)
    assert sorted(sum(parts.values(), [])) == sorted(names)


@pytest.mark.parametrize(("error", "text"), [
    (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), "connection refused"),
    (urllib.error.URLError("no host given"), "no host given"),
    (TimeoutError(), "TimeoutError"),
    (ValueError(), "ValueError"),
    (OSError(28, "No space left on device"), "no space left on device"),
])
def test_a_failed_download_is_told_in_words(error, text):
    """Why a download failed: a URLError's reason (an OSError's strerror, in lower case, without '[Errno N]'), or
    the error itself; its type's name, as written, when it has no words."""
    assert _failure_text(error) == text


def test_too_few_names_counts_them_in_words_under_the_split_asked_for():
    """One name 'is' too few, several 'are'; the check cuts by the split's own fractions, not the default ones (4
    names fill 0.5/0.25/0.25 but leave 0.8/0.1/0.1's dev part empty)."""
    with pytest.raises(DataError, match="^n.txt: 1 name is too few"):
        require_enough_names(1, "n.txt")
    require_enough_names(4, "n.txt", (0.5, 0.25, 0.25))
    with pytest.raises(DataError, match="^n.txt: 4 names are too few"):
        require_enough_names(4, "n.txt")


def test_the_names_file_is_looked_up_in_order(tmp_path, monkeypatch):
    """The path given, else $BNFOLD_NAMES, else data/names.txt when it exists (or fetching is off), else fetched
    there; an empty path is refused, not read as a missing one."""
    default = tmp_path / "data" / "names.txt"
    fetched = []
    monkeypatch.setattr(data, "DEFAULT_NAMES_PATH", default)
    monkeypatch.setattr(data, "fetch_names", lambda dest: fetched.append(dest) or dest)
    monkeypatch.setenv("BNFOLD_NAMES", str(tmp_path / "env.txt"))
    assert resolve_names_path("given.txt") == Path("given.txt")
    with pytest.raises(DataError, match="^" + re.escape("the names file's path is empty; give a names file such as "
                                                        "data/names.txt") + "$"):
        resolve_names_path("")
    assert resolve_names_path() == tmp_path / "env.txt"
    monkeypatch.delenv("BNFOLD_NAMES")
    assert resolve_names_path(fetch=False) == default and fetched == []
    assert resolve_names_path() == default and fetched == [default]
    default.parent.mkdir()
    default.write_text("ann\n")
    assert resolve_names_path() == default and fetched == [default]


@pytest.mark.parametrize(("name", "bad"), [("abcdefghéij", "é"), ("abcdefghijkLmno", "L"), ("é" + "a" * 20, "é"),
                                           ("a" * 20 + "Z", "Z"), ("aBcdefghij", "B")])
def test_a_long_name_with_a_character_outside_the_vocabulary_names_it(name, bad):
    """A name longer than a chunk is read in windows; a character outside a–z and '.' (non-ASCII, or ASCII such as
    an upper-case letter) anywhere in it is refused, naming that character."""
    with pytest.raises(DataError, match=re.escape(f"character {bad!r} is not in the vocabulary")):
        list(dataset_chunks([name], context_length=3, max_rows=4))


@pytest.mark.parametrize(("fractions", "sizes"), [((0.5, 0.3, 0.2), (5, 3, 2)), ((1.0, 0.0, 0.0), (10, 0, 0)),
                                                  ((0.0, 0.0, 1.0), (0, 0, 10))])
def test_split_sizes_cut_at_each_cumulative_share(fractions, sizes):
    """split_sizes(n, f) = (⌊f₁n⌋, ⌊(f₁ + f₂)n⌋ − ⌊f₁n⌋, the rest); a share of 0 is allowed there (an empty part is
    refused later, by the names check)."""
    assert split_sizes(10, fractions) == sizes


@pytest.mark.parametrize("fractions", [(1.2, -0.1, -0.1), (0.5, 0.5, 0.5), (0.5, 0.5), (0.5, 0.5 + 2e-9, 0.0)])
def test_split_sizes_refuse_anything_but_three_shares_summing_to_one(fractions):
    with pytest.raises(ValueError, match=re.escape(f"fractions must be three non-negative numbers summing to 1, "
                                                   f"got {fractions}")):
        split_sizes(10, fractions)


def test_random_rows_draw_every_id_from_the_generator_alone():
    """random_rows draws ids in [0, 27) from its generator only: the same seed gives the same rows, every id
    including 0 appears among 4000 draws, and torch's global RNG is untouched."""
    state = torch.random.get_rng_state()
    X, Y = random_rows(1000, torch.Generator().manual_seed(4), context_length=3)
    X2, Y2 = random_rows(1000, torch.Generator().manual_seed(4), context_length=3)
    assert torch.equal(X, X2) and torch.equal(Y, Y2) and torch.equal(torch.random.get_rng_state(), state)
    assert set(X.unique().tolist()) == set(Y.unique().tolist()) == set(range(27))


@pytest.mark.parametrize(("names", "bad"), [(["ab", "cBd"], "B"), (["é"], "é"), (["abc", "de", "fgé"], "é"),
                                            (["a-b"], "-")])
def test_a_name_with_a_character_outside_the_vocabulary_names_it(names, bad):
    """build_dataset refuses a name holding a character outside a–z, naming the first such character."""
    with pytest.raises(DataError, match=re.escape(f"character {bad!r} is not in the vocabulary")):
        build_dataset(names, 3)


@pytest.mark.parametrize("context_length", [1, 3])
def test_no_names_give_no_rows_of_the_right_shape(context_length):
    """build_dataset([], k): X of shape (0, k) and Y of shape (0,), both int64, so they concatenate with any chunk."""
    X, Y = build_dataset([], context_length)
    assert X.shape == (0, context_length) and Y.shape == (0,) and X.dtype == Y.dtype == torch.int64


@pytest.mark.parametrize("context_length", [0, -1])
def test_a_context_of_no_characters_is_refused(context_length):
    with pytest.raises(ValueError, match=re.escape(f"context_length must be >= 1, got {context_length}")):
        build_dataset(["ab"], context_length)


def test_chunks_of_no_rows_are_refused():
    with pytest.raises(ValueError, match=re.escape("max_rows must be >= 1, got 0")):
        list(dataset_chunks(["ab"], 3, 0))
