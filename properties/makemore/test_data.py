"""Laws of the data pipeline: windows, labels, round trip, the split, and line-exact errors."""

import re

import pytest
import torch
from hypothesis import example, given, note
from hypothesis import strategies as st

from core import notebook
from core.makemore.data import (
    DataError,
    Vocab,
    build_dataset,
    load_names,
    read_names_bytes,
    split_names,
    split_sizes,
    synthetic_names,
)
from properties.strategies.names import name_lists, names_st

contexts = st.integers(min_value=1, max_value=8)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@given(name_lists, contexts)
@example(["a"], 1)
@example(["abcdefghijkl"], 3)
def test_row_count(names, context_length):
    """len(X) = len(Y) = Σ_names (len(name) + 1).

    Every character of a name and the end marker '.' is a label exactly once.
    """
    X, Y = build_dataset(names, context_length)
    assert X.shape == (sum(len(n) + 1 for n in names), context_length)
    assert Y.shape == (X.shape[0],)
    assert X.dtype == Y.dtype == torch.int64


@given(name_lists, contexts)
@example(["ab", "c"], 4)
def test_rows_shift(names, context_length):
    """X[i] = 0…0 at a name's first row, else X[i] = X[i-1][1:] ‖ Y[i-1].

    A window slides one character per label and resets to all '.' when a new name starts.
    """
    X, Y = build_dataset(names, context_length)
    starts = set(torch.cumsum(torch.tensor([0] + [len(n) + 1 for n in names[:-1]]), 0).tolist())
    for i in range(X.shape[0]):
        if i in starts:
            assert torch.equal(X[i], torch.zeros(context_length, dtype=torch.int64)), i
        else:
            assert torch.equal(X[i], torch.cat([X[i - 1][1:], Y[i - 1 : i]])), i


@given(name_lists, contexts)
def test_round_trip(names, context_length):
    """decode(Y) = Σ_names (name + '.'): splitting the decoded labels at '.' gives back every name.

    Labels are exactly the characters of each name followed by its end marker.
    """
    _, Y = build_dataset(names, context_length)
    assert Vocab().decode(Y.tolist()).split(".")[:-1] == names


@given(name_lists, contexts)
def test_matches_seed_loop(names, context_length):
    """build_dataset(names) = prepare_data(names), row for row (the notebook's loop)."""
    X, Y = build_dataset(names, context_length)
    X_ref, Y_ref = notebook.prepare_data(names, context_length)
    assert torch.equal(X, X_ref) and torch.equal(Y, Y_ref)


@given(st.lists(names_st, max_size=60), seeds)
@example([], 0)
@example(["a"], 1)
def test_split_is_partition(names, seed):
    """train ⊎ dev ⊎ test = names as multisets, sizes (⌊0.8n⌋, ⌊0.9n⌋−⌊0.8n⌋, rest), same seed ⇒ same split.

    The split shuffles a copy with random.Random(seed) and cuts it; nothing is added or lost.
    """
    parts = split_names(names, seed)
    note(f"sizes {[len(p) for p in parts]}")
    assert sorted(parts[0] + parts[1] + parts[2]) == sorted(names)
    n = len(names)
    assert tuple(map(len, parts)) == (int(0.8 * n), int(0.9 * n) - int(0.8 * n), n - int(0.9 * n))
    assert split_names(names, seed) == parts
    assert split_sizes(n) == tuple(map(len, parts))


line_endings = st.sampled_from(["\n", "\r\n"])


@given(names=name_lists, eol=line_endings, final_newline=st.booleans())
def test_load_tolerates_crlf_and_missing_final_newline(names, eol, final_newline, tmp_path_factory):
    """load_names(write(names, eol, final)) = names for eol ∈ {LF, CRLF} and either ending."""
    path = tmp_path_factory.mktemp("names") / "names.txt"
    path.write_bytes((eol.join(names) + (eol if final_newline else "")).encode())
    assert load_names(path) == names


bad_lines = st.one_of(
    st.just(""),
    st.builds(lambda a, c, b: a + c + b, st.text(st.sampled_from("abc"), max_size=3),
              st.sampled_from("A Z0 9-'é.\t"), st.text(st.sampled_from("xyz"), max_size=3)),
)


@given(names=name_lists, data=st.data(), bad=bad_lines)
@example(names=["ab", "cd"], data=None, bad="")
def test_bad_line_is_named(names, data, bad, tmp_path_factory):
    """A blank line or a character outside a-z at line k raises DataError naming the file and line k.

    load_names checks every line in order and skips nothing.
    """
    k = data.draw(st.integers(0, len(names) - 1), label="k") if data is not None else 1
    lines = names[:k] + [bad] + names[k:]
    path = tmp_path_factory.mktemp("names") / "bad.txt"
    path.write_bytes("\n".join(lines).encode("utf-8"))
    with pytest.raises(DataError) as err:
        load_names(path)
    note(str(err.value))
    assert f"{path}:{k + 1}:" in str(err.value)


@given(st.integers(0, 400), st.integers(0, 2**32 - 1))
def test_synthetic_names_are_lowercase_names_of_two_to_ten_letters(n, seed):
    """synthetic_names(n, seed): n names over a–z of 2..10 letters, the same for the same seed (0 by default).

    They stand in for names.txt where it is missing (`bnfold bench`), so they must pass the same data path.
    """
    names = synthetic_names(n, seed)
    assert len(names) == n and names == synthetic_names(n, seed) and synthetic_names(n) == synthetic_names(n, 0)
    assert all(2 <= len(name) <= 10 and set(name) <= set("abcdefghijklmnopqrstuvwxyz") for name in names)
    if n >= 300:  # every length and letter shows up: P(miss) < 9·(8/9)^300 + 26·(25/26)^600 < 10⁻⁸
        assert {len(name) for name in names} == set(range(2, 11)) and set("".join(names)) == set(
            "abcdefghijklmnopqrstuvwxyz")


@given(name=names_st, data=st.data(), byte=st.integers(0, 255).filter(lambda b: not 97 <= b <= 122 and b != 10))
@example(name="ab", data=None, byte=32)
@example(name="ab", data=None, byte=126)
@example(name="ab", data=None, byte=127)
@example(name="ab", data=None, byte=31)
def test_a_bad_byte_is_named_with_its_column_and_shown_readably(name, data, byte, tmp_path_factory):
    """A byte outside a–z at column c of line 2 gives "path:2:c: character X", X the character itself when it is
    printable ASCII (32–126) and \\xNN otherwise.

    A message with the column and a visible character lets a user find the byte in any editor.
    """
    column = data.draw(st.integers(0, len(name)), label="column") if data is not None else 1
    line = name.encode()[:column] + bytes([byte]) + name.encode()[column:]
    if byte == 13 and column == len(name):  # a final \r is a CRLF line end, not a bad byte
        line += b"a"
    path = tmp_path_factory.mktemp("names") / "bad.txt"
    path.write_bytes(b"first\n" + line + b"\n")
    shown = chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}"
    with pytest.raises(DataError, match=re.escape(f"{path}:2:{column + 1}: character {shown!r} is not in a-z")):
        load_names(path)


def test_the_size_limit_admits_exactly_its_bytes(tmp_path):
    """A names file of exactly `limit` bytes is read whole; one more byte is refused, naming the limit in MiB; an
    unreadable path is refused in words."""
    limit = 2**20
    path = tmp_path / "names.txt"
    path.write_bytes(b"ab\n" * (limit // 3) + b"a" * (limit % 3))
    assert read_names_bytes(path, limit) == path.read_bytes()
    path.write_bytes(path.read_bytes() + b"a")
    with pytest.raises(DataError, match=re.escape(f"{path}: the names file is larger than 1 MiB, the most bnfold "
                                                  f"reads; give a smaller names file")):
        read_names_bytes(path, limit)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: cannot read names file (is a directory); give a "
                                                  f"names file that can be read")):
        read_names_bytes(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="the names file is empty; expected one name per line"):
        load_names(tmp_path / "empty.txt")
