"""`bnfold data`: the names file the commands read, its count, vocabulary, split sizes and checksum."""

import argparse

from core.app.process import print_result


def cmd_data(args: argparse.Namespace) -> None:
    from core.makemore.data import (
        NAMES_SHA256,
        Vocab,
        read_names,
        require_enough_names,
        resolve_names_path,
        split_sizes,
    )

    path = resolve_names_path(args.names)
    read = read_names(path)  # once: the checksum is of the bytes the names came from (a pipe has no second read)
    names, digest = read.names, read.sha256
    require_enough_names(len(names), path)
    sizes = dict(zip(("train", "dev", "test"), split_sizes(len(names)), strict=True))
    data = {"path": str(path), "names": len(names), "vocab_size": Vocab().size, "splits": sizes,
            "sha256": digest, "checksum_ok": digest == NAMES_SHA256}
    text = (f"{path}: {len(names)} names, vocab {Vocab().size}, "
            f"splits {sizes['train']}/{sizes['dev']}/{sizes['test']}, "
            f"checksum {'ok' if data['checksum_ok'] else 'MISMATCH'}")
    print_result(data, text, args.json)
