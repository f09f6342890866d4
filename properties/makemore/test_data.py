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


not_a_to_z = st.characters(blacklist_categories=("Cs",), blacklist_characters="abcdefghijklmnopqrstuvwxyz\n")


@given(name=names_st, data=st.data(), char=not_a_to_z)
@example(name="ab", data=None, char=" ")
@example(name="ab", data=None, char="\x1f")
@example(name="ab", data=None, char="\x7f")
@example(name="ab", data=None, char="é")
@example(name="ab", data=None, char="\ufeff")  # a BOM not at the start of the file is one more character
@example(name="ab", data=None, char="\U0001f600")
def test_a_bad_character_is_named_itself_with_its_code_point_and_column(name, data, char, tmp_path_factory):
    """X ∉ a–z at character column c of line 2 gives "path:2:c: character repr(X) (U+XXXX) is not in a-z".

    The file is decoded as UTF-8, so a letter such as é is named as the letter, not as its first byte; repr shows a
    control character as one escape (\\t, \\x1f), and the code point tells apart characters that look alike.
    """
    column = data.draw(st.integers(0, len(name)), label="column") if data is not None else 1
    line = name[:column] + char + name[column:]
    if char == "\r" and column == len(name):  # a final \r is a CRLF line end, not a bad character
        line += "a"
    path = tmp_path_factory.mktemp("names") / "bad.txt"
    path.write_bytes(f"first\n{line}\n".encode())
    expected = f"{path}:2:{column + 1}: character {char!r} (U+{ord(char):04X}) is not in a-z"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_names(path)


@given(name=names_st, data=st.data(), byte=st.integers(0x80, 0xFF))
@example(name="ab", data=None, byte=0xEF)
@example(name="ab", data=None, byte=0xFF)
def test_a_byte_that_is_not_utf8_is_named_as_a_byte_with_its_column(name, data, byte, tmp_path_factory):
    """A byte ≥ 0x80 between a–z letters at column c of line 2 gives "path:2:c: byte 0xNN is not UTF-8 text".

    A lone byte ≥ 0x80 among ASCII letters is never UTF-8 (a lead byte needs continuation bytes 0x80–0xBF, and a
    continuation byte needs a lead), so there is no character to name: the byte is named instead.
    """
    column = data.draw(st.integers(0, len(name)), label="column") if data is not None else 1
    line = name.encode()[:column] + bytes([byte]) + name.encode()[column:]
    path = tmp_path_factory.mktemp("names") / "bad.txt"
    path.write_bytes(b"first\n" + line + b"\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2:{column + 1}: byte 0x{byte:02x} is not UTF-8 text")):
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
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: is a directory, not a names file; give the names "
                                                  f"file inside it, such as {tmp_path / 'names.txt'}")):
        read_names_bytes(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="the names file is empty; expected one name per line"):
        load_names(tmp_path / "empty.txt")
