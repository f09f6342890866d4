"""The real names.txt: counts, split sizes and dataset rows."""

from core.makemore.data import NAMES_SHA256, Vocab, build_dataset, file_sha256, split_names


def test_names_file(names_path, all_names):
    assert file_sha256(names_path) == NAMES_SHA256
    assert len(all_names) == 32033


def test_seed_split_sizes(all_names):
    train, dev, test = split_names(all_names, 42)
    assert (len(train), len(dev), len(test)) == (25626, 3203, 3204)


def test_rows_per_split(all_names):
    for part in split_names(all_names, 42):
        X, Y = build_dataset(part, 4)
        assert X.shape[0] == Y.shape[0] == sum(len(n) + 1 for n in part)


def test_vocab():
    v = Vocab()
    assert v.size == 27
    assert v.encode(".az") == [0, 1, 26]
    assert v.decode([0, 1, 26]) == ".az"
