"""The names data set: vocabulary, loading with line-exact errors, seeded split, windowed dataset, fetch.

torch is imported by the functions that build tensors, not with the module, so reading and checking
a names file (`bnfold data`, every command's input checks) does not pay for torch's start-up.
"""

import hashlib
import http.client
import math
import os
import random
import re
import select
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.atomic import atomic_write_bytes
from core.errors import DataError, os_error_text
from core.limits import DEFAULT_FRACTIONS, DEFAULT_SPLIT_SEED, SPLIT_PARTS

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
DEFAULT_NAMES_PATH = Path("data/names.txt")
MAX_NAMES_BYTES = 256 * 2**20  # a names file larger than this is refused (names.txt is 228 KB)
MAX_DOWNLOAD_BYTES = 16 * 2**20  # a download larger than this is cut off and refused
DOWNLOAD_DEADLINE_S = 120.0  # the whole download, however slowly the server sends
CHUNK_ROWS = 65536  # rows per chunk when a split is evaluated piece by piece
_NOT_A_Z = re.compile(rb"[^a-z]")
_NOT_A_Z_TEXT = re.compile(r"[^a-z]")

if TYPE_CHECKING:
    import torch

PathLike = str | os.PathLike[str]
Fractions = Sequence[float]  # train, dev, test


class Vocab:
    """'.' (start/end of a name) is 0, 'a'..'z' are 1..26."""

    chars = ".abcdefghijklmnopqrstuvwxyz"

    def __init__(self) -> None:
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.itos = dict(enumerate(self.chars))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[int(i)] for i in ids)


def open_once(path: PathLike) -> tuple[int, os.stat_result]:
    """A read-only descriptor of `path` and its fstat, opened without waiting: open() of a FIFO that no process
    writes to would block forever, so the descriptor is non-blocking (made blocking again for a regular file).
    Whatever the caller checks with the stat is the file it then reads: nothing is opened twice. OSError as open
    raises it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from `fd` until its end. On a non-blocking pipe whose writer has not written yet, waits
    for data or for the writer to close (a pipe with no writer at all ends at once)."""
    pieces, size = [], 0
    while size < limit:
        try:
            piece = os.read(fd, min(limit - size, 1 << 20))
        except BlockingIOError:  # a writer is there, with nothing written yet
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            poller.poll()
            continue
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)


def read_names_bytes(path: PathLike, limit: int = MAX_NAMES_BYTES) -> bytes:
    """The bytes of a names file, read once: a regular file, or a pipe (`--names <(zcat names.gz)`). Refuses
    (DataError) one that cannot be read, a directory or device, a pipe that gives nothing, and more than `limit`
    bytes."""
    path = Path(path)
    try:
        fd, info = open_once(path)
        try:
            if stat.S_ISDIR(info.st_mode):
                raise DataError(f"{path}: is a directory, not a names file; give the names file inside it, such as "
                                f"{path / 'names.txt'}")
            pipe = stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode)
            if not (pipe or stat.S_ISREG(info.st_mode)):
                raise DataError(f"{path}: is a device, not a names file; give a file (or a pipe) of names")
            raw = read_at_most(fd, limit + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise DataError(f"{path}: cannot read names file ({os_error_text(e)}); give a names file that can be "
                        f"read") from e
    if len(raw) > limit:
        raise DataError(f"{path}: the names file is larger than {limit // 2**20} MiB, the most bnfold reads; "
                        f"give a smaller names file")
    if pipe and not raw:
        raise DataError(f"{path}: is a pipe that gave no data (no process was writing to it, or the writer wrote "
                        f"nothing); start the writer first, or give a names file")
    return raw


BOM = "\ufeff"


def _bad_character(path: PathLike, lineno: int, line: bytes, first_bad: int) -> DataError:
    """The error for the first character outside a-z of a line whose byte `first_bad` is not a-z: the character
    itself and its code point where the line is UTF-8 up to it, else the byte that is not UTF-8; the column counts
    characters."""
    try:
        text = line.decode("utf-8")
        invalid = None
    except UnicodeDecodeError as e:
        text, invalid = line[: e.start].decode("utf-8"), e.start
    bad = _NOT_A_Z_TEXT.search(text)
    if bad is None:  # every character before the invalid byte is a-z
        assert invalid is not None
        return DataError(f"{path}:{lineno}:{len(text) + 1}: byte 0x{line[invalid]:02x} is not UTF-8 text; names are "
                         f"lowercase a-z only")
    char, column = bad.group(), bad.start() + 1
    if char == BOM and lineno == 1 and column == 1:
        return DataError(f"{path}:1:1: the file starts with a byte order mark (BOM, U+FEFF), which some editors put "
                         f"at the start of UTF-8 files; names are lowercase a-z only: save the file as UTF-8 without "
                         f"a BOM")
    return DataError(f"{path}:{lineno}:{column}: character {char!r} (U+{ord(char):04X}) is not in a-z; names are "
                     f"lowercase a-z only")


def parse_names(raw: bytes, path: PathLike) -> list[str]:
    """One lowercase a-z name per line of `raw` (the bytes of the file at `path`, which errors name); CRLF and a
    missing final newline are fine, nothing is skipped."""
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if not lines:
        raise DataError(f"{path}: the names file is empty; expected one name per line")
    names = []
    for lineno, line in enumerate(lines, start=1):
        line = line.removesuffix(b"\r")
        if not line:
            raise DataError(f"{path}:{lineno}: blank line; every line must hold one name")
        bad = _NOT_A_Z.search(line)
        if bad:
            raise _bad_character(path, lineno, line, bad.start())
        names.append(line.decode("ascii"))
    return names


@dataclass(frozen=True)
class NamesFile:
    """A names file as read once: its names, and the sha256 of the very bytes they were parsed from."""

    path: Path
    names: list[str]
    sha256: str


def read_names(path: PathLike) -> NamesFile:
    """The names of a names file and their bytes' sha256, from one read (a pipe can be read only once, and a file
    that changes between two reads would give names and a checksum of different contents)."""
    raw = read_names_bytes(path)
    return NamesFile(Path(path), parse_names(raw, path), hashlib.sha256(raw).hexdigest())


def load_names(path: PathLike) -> list[str]:
    """One lowercase a-z name per line; CRLF and a missing final newline are fine, nothing is skipped."""
    return read_names(path).names


def split_sizes(n: int, fractions: Fractions = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """The notebook's rule: int(0.8n) train, int(0.9n) - int(0.8n) dev, the rest test."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    first = int(fractions[0] * n)
    second = int((fractions[0] + fractions[1]) * n)
    return first, second - first, n - second


def split_names(names: Iterable[str], seed: int,
                fractions: Fractions = DEFAULT_FRACTIONS) -> tuple[list[str], list[str], list[str]]:
    """Shuffle a copy with random.Random(seed) and cut it into (train, dev, test)."""
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    n_train, n_dev, _ = split_sizes(len(shuffled), fractions)
    return (
        shuffled[:n_train],
        shuffled[n_train : n_train + n_dev],
        shuffled[n_train + n_dev :],
    )


def minimum_names(fractions: Fractions = DEFAULT_FRACTIONS) -> int:
    """The fewest names n such that every count from n up leaves each part of the split at least one name.

    Each part of n names holds at least ⌊f·n⌋ (a floor of a sum minus a floor is at least the floor of the
    difference), so every n ≥ 1/min(f) works; below that the counts are checked one by one.
    """
    if min(fractions) <= 0:
        raise ValueError(f"every split fraction must be positive, got {tuple(fractions)}")
    top = math.ceil(1 / min(fractions)) + 1  # one past the bound, for the rounding of f·n
    for n in range(top, 3, -1):
        if min(split_sizes(n - 1, fractions)) <= 0:
            return n
    return 3  # three parts need three names


def require_enough_names(count: int, path: PathLike, fractions: Fractions = DEFAULT_FRACTIONS) -> None:
    """Refuse (DataError naming the file and the minimum) a names file whose split would leave a part empty."""
    if min(split_sizes(count, fractions)) > 0:
        return
    shares = "/".join(f"{f:g}" for f in fractions)
    raise DataError(f"{path}: {count} {'name is' if count == 1 else 'names are'} too few: the {shares} train/dev/test "
                    f"split needs at least {minimum_names(fractions)} names so that no part is empty; "
                    f"give a larger names file")


@dataclass(frozen=True)
class Split:
    """Which names go to train, dev and test: random.Random(seed) shuffles, then `fractions` cut."""

    seed: int = DEFAULT_SPLIT_SEED
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS

    def parts(self, names: Iterable[str]) -> dict[str, list[str]]:
        return dict(zip(SPLIT_PARTS, split_names(names, self.seed, self.fractions)))

    def describe(self) -> str:
        return f"seed {self.seed}, {'/'.join(f'{f:g}' for f in self.fractions)}"


def load_split(path: PathLike, split: Split) -> tuple[NamesFile, dict[str, list[str]]]:
    """(the names file read once, {'train'|'dev'|'test': names}), refusing a file too small for `split`."""
    names = read_names(path)
    require_enough_names(len(names.names), path, split.fractions)
    return names, split.parts(names.names)


def _code_table(vocab: Vocab) -> "torch.Tensor":
    import torch

    table = torch.full((256,), -1)  # int64, from the fill value
    for ch, i in vocab.stoi.items():
        table[ord(ch)] = i
    return table


def build_dataset(names: Sequence[str], context_length: int,
                  vocab: Vocab | None = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(X, Y): for every character of every name and its end '.', the previous context_length ids and the id.

    Vectorised: each name becomes `context_length` pad ids, its ids and the end id in one flat
    stream; labels are every position after a pad, and each window is the context_length ids
    before its label, so a window never reaches into the previous name.
    """
    import torch

    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    if not names:
        return torch.empty(0, context_length, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    vocab = vocab or Vocab()
    pad, end = "." * context_length, "."
    text = "".join(pad + name + end for name in names)
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as e:
        raise DataError(f"character {text[e.start]!r} is not in the vocabulary") from e
    flat = _code_table(vocab)[torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()]
    if (flat < 0).any():
        bad = text[int((flat < 0).nonzero()[0])]
        raise DataError(f"character {bad!r} is not in the vocabulary")
    lengths = torch.tensor([len(name) + 1 for name in names])  # int64
    starts = torch.cumsum(lengths + context_length, 0) - lengths  # first label of each name
    first_row = torch.cumsum(lengths, 0) - lengths
    row_starts = torch.repeat_interleave(starts, lengths)
    offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(first_row, lengths)
    label_pos = row_starts + offsets
    X = flat.unfold(0, context_length, 1)[label_pos - context_length].contiguous()
    Y = flat[label_pos]
    return X, Y


def _long_name_chunks(name: str, context_length: int, max_rows: int,
                      vocab: Vocab) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
    """The rows of one name in pieces of at most max_rows, each piece carrying its own context window."""
    import torch

    padded = "." * context_length + name + "."
    try:
        text = padded.encode("ascii")
    except UnicodeEncodeError as e:  # e.start counts in the padded text
        raise DataError(f"character {padded[e.start]!r} is not in the vocabulary") from e
    table = _code_table(vocab)
    for start in range(context_length, len(text), max_rows):
        stop = min(start + max_rows, len(text))
        ids = table[torch.frombuffer(bytearray(text[start - context_length : stop]), dtype=torch.uint8).long()]
        if (ids < 0).any():
            bad = text[start - context_length + int((ids < 0).nonzero()[0])]
            raise DataError(f"character {chr(bad)!r} is not in the vocabulary")
        yield ids.unfold(0, context_length, 1)[: stop - start].contiguous(), ids[context_length:].clone()


def dataset_chunks(names: Iterable[str], context_length: int, max_rows: int = CHUNK_ROWS,
                   vocab: Vocab | None = None) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
    """build_dataset(names, context_length) in pieces of at most max_rows rows, in order, so memory stays bounded.

    Names are grouped while their rows fit; a name with more rows than max_rows is cut into windows
    that each start with the context_length ids before them, so concatenating the pieces gives back
    build_dataset row for row.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    vocab = vocab or Vocab()
    group: list[str] = []
    rows = 0
    for name in names:
        need = len(name) + 1
        if rows + need > max_rows and group:
            yield build_dataset(group, context_length, vocab)
            group, rows = [], 0
        if need > max_rows:
            yield from _long_name_chunks(name, context_length, max_rows, vocab)
            continue
        group.append(name)
        rows += need
    if group:
        yield build_dataset(group, context_length, vocab)


def _failure_text(error: BaseException) -> str:
    """Why a download failed, in words: a URLError's reason or an OSError's strerror, never '[Errno N]'."""
    reason = getattr(error, "reason", None) or error
    if isinstance(reason, OSError):
        return os_error_text(reason)
    return str(reason) or type(reason).__name__


def download(url: str, timeout: float = 30.0, deadline: float = DOWNLOAD_DEADLINE_S,
             max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """The body at `url`, or a DataError: unreachable, slower than `deadline` seconds in all, larger than
    `max_bytes`, or cut off before its Content-Length. `timeout` bounds each wait for the server."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, deadline)) as response:
            declared = response.headers.get("Content-Length")
            declared = int(declared) if declared and declared.strip().isdigit() else None
            if declared is not None and declared > max_bytes:
                raise DataError(f"{url}: the server announces {declared} bytes, more than the {max_bytes} "
                                f"bnfold accepts")
            pieces, size = [], 0
            while True:
                if time.monotonic() - started > deadline:
                    raise DataError(f"{url}: the download took longer than {deadline:g} s and was stopped "
                                    f"after {size} bytes")
                piece = response.read1(65536)
                if not piece:
                    break
                size += len(piece)
                if size > max_bytes:
                    raise DataError(f"{url}: the download exceeded {max_bytes} bytes and was stopped")
                pieces.append(piece)
    except DataError:
        raise
    except http.client.IncompleteRead as e:
        raise DataError(f"{url}: the download was cut off after {len(e.partial)} bytes") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise DataError(f"cannot download {url} ({_failure_text(e)})") from e
    if declared is not None and size != declared:
        raise DataError(f"{url}: the download was cut off after {size} of {declared} bytes")
    return b"".join(pieces)


def fetch_names(dest: PathLike = DEFAULT_NAMES_PATH, url: str = NAMES_URL, sha256: str = NAMES_SHA256,
                timeout: float = 30.0, deadline: float = DOWNLOAD_DEADLINE_S,
                max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Download names.txt, check its sha256, then write it atomically to dest (never a partial file)."""
    dest = Path(dest)
    by_hand = f"download {url} by hand to {dest} (sha256 {sha256}), or give another names file"
    try:
        data = download(url, timeout=timeout, deadline=deadline, max_bytes=max_bytes)
    except DataError as e:
        raise DataError(f"{e}; {by_hand}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(f"{url}: sha256 {digest} does not match the expected {sha256}; {by_hand}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, data)
    return dest


def file_sha256(path: PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_names_path(path: PathLike | None = None, fetch: bool = True) -> Path:
    """`path`, else $BNFOLD_NAMES, else data/names.txt, else fetch it there. An empty path is refused, not taken
    for a missing one."""
    if path is not None:
        if not os.fspath(path):
            raise DataError("the names file's path is empty; give a names file such as data/names.txt")
        return Path(path)
    if os.environ.get("BNFOLD_NAMES"):
        return Path(os.environ["BNFOLD_NAMES"])
    if DEFAULT_NAMES_PATH.exists() or not fetch:
        return DEFAULT_NAMES_PATH
    return fetch_names(DEFAULT_NAMES_PATH)


def random_rows(rows: int, generator: "torch.Generator",
                context_length: int = 4) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(X, Y) of uniformly random character ids, standing in for a split of names.txt."""
    import torch

    vocab = Vocab().size
    X = torch.randint(vocab, (rows, context_length), generator=generator)
    return X, torch.randint(vocab, (rows,), generator=generator)


def synthetic_names(n: int, seed: int = 0) -> list[str]:
    """n random lowercase names of 2..10 letters, for machines without names.txt."""
    rng = random.Random(seed)
    return ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(n)]
