"""The names data set: vocabulary, loading with line-exact errors, seeded split, windowed dataset, fetch."""

import hashlib
import os
import random
import urllib.error
import urllib.request
from pathlib import Path

import torch

from core.atomic import atomic_write_bytes
from core.errors import DataError

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
DEFAULT_NAMES_PATH = Path("data/names.txt")


class Vocab:
    """'.' (start/end of a name) is 0, 'a'..'z' are 1..26."""

    chars = ".abcdefghijklmnopqrstuvwxyz"

    def __init__(self):
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.itos = dict(enumerate(self.chars))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[ch] for ch in text]

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)


def load_names(path) -> list[str]:
    """One lowercase a-z name per line; CRLF and a missing final newline are fine, nothing is skipped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read names file ({e.strerror}); pass --names PATH") from e
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
        for col, byte in enumerate(line, start=1):
            if not 97 <= byte <= 122:
                shown = chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}"
                raise DataError(
                    f"{path}:{lineno}:{col}: character {shown!r} is not in a-z; names are lowercase a-z only"
                )
        names.append(line.decode("ascii"))
    return names


def split_sizes(n: int, fractions=(0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    """The seed's rule: int(0.8n) train, int(0.9n) - int(0.8n) dev, the rest test."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    first = int(fractions[0] * n)
    second = int((fractions[0] + fractions[1]) * n)
    return first, second - first, n - second


def split_names(names, seed: int, fractions=(0.8, 0.1, 0.1)):
    """Shuffle a copy with random.Random(seed) and cut it into (train, dev, test)."""
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    n_train, n_dev, _ = split_sizes(len(shuffled), fractions)
    return (
        shuffled[:n_train],
        shuffled[n_train : n_train + n_dev],
        shuffled[n_train + n_dev :],
    )


def _code_table(vocab: Vocab) -> torch.Tensor:
    table = torch.full((256,), -1, dtype=torch.int64)
    for ch, i in vocab.stoi.items():
        table[ord(ch)] = i
    return table


def build_dataset(names, context_length: int, vocab: Vocab | None = None):
    """(X, Y): for every character of every name and its end '.', the previous context_length ids and the id.

    Vectorised: each name becomes `context_length` pad ids, its ids and the end id in one flat
    stream; labels are every position after a pad, and each window is the context_length ids
    before its label, so a window never reaches into the previous name.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
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
    lengths = torch.tensor([len(name) + 1 for name in names], dtype=torch.int64)
    starts = torch.cumsum(lengths + context_length, 0) - lengths  # first label of each name
    first_row = torch.cumsum(lengths, 0) - lengths
    row_starts = torch.repeat_interleave(starts, lengths)
    offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(first_row, lengths)
    label_pos = row_starts + offsets
    X = flat.unfold(0, context_length, 1)[label_pos - context_length].contiguous()
    Y = flat[label_pos]
    return X, Y


def fetch_names(dest=DEFAULT_NAMES_PATH, url: str = NAMES_URL, sha256: str = NAMES_SHA256, timeout: float = 30.0):
    """Download names.txt, check its sha256, then write it atomically to dest (never a partial file)."""
    dest = Path(dest)
    by_hand = f"download {url} by hand to {dest} (sha256 {sha256}) or pass --names PATH"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"cannot download {url} ({getattr(e, 'reason', e)}); {by_hand}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(f"{url}: sha256 {digest} does not match the expected {sha256}; {by_hand}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, data)
    return dest


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_names_path(cli_path=None, fetch: bool = True) -> Path:
    """--names PATH, else $BNFOLD_NAMES, else data/names.txt, else fetch it there."""
    if cli_path:
        return Path(cli_path)
    if os.environ.get("BNFOLD_NAMES"):
        return Path(os.environ["BNFOLD_NAMES"])
    if DEFAULT_NAMES_PATH.exists() or not fetch:
        return DEFAULT_NAMES_PATH
    return fetch_names(DEFAULT_NAMES_PATH)


def random_rows(rows: int, generator: torch.Generator, context_length: int = 4):
    """(X, Y) of uniformly random character ids, standing in for a split of names.txt."""
    vocab = Vocab().size
    X = torch.randint(0, vocab, (rows, context_length), generator=generator)
    return X, torch.randint(0, vocab, (rows,), generator=generator)


def synthetic_names(n: int, seed: int = 0) -> list[str]:
    """n random lowercase names of 2..10 letters, for machines without names.txt."""
    rng = random.Random(seed)
    return ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(n)]
