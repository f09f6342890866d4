"""`bnfold train`: every option checked before the names are read or the net is built, then seeded SGD with the
library's guards (a fresh net whose loss is already nan, parameters that diverge), then an atomic checkpoint."""

import argparse

from core.app.devices import check_device
from core.app.errors import UsageError, naming_option
from core.app.outputs import check_output_file
from core.app.process import one_line
from core.errors import ModelError, TrainingError
from core.limits import BATCHNORM_MIN_BATCH

E02_INIT = "kaiming(5/3)"  # what e02_mlp builds; --init cannot change it


def check_init(arch: str, init: str | None) -> str:
    """The init scheme to build the net with; refuses a scheme that does not parse or has a non-finite value,
    and any --init for e02 (whose init is fixed), rather than ignore it."""
    if arch == "e02":
        if init is not None:
            raise UsageError(f"--init {init}: --init applies to --arch e01 only; the e02 net is always "
                             f"built with {E02_INIT} and BatchNorm; drop --init")
        return E02_INIT
    if init is None:
        return "zeros"
    from core.makemore.init import parse_scheme

    with naming_option(before=f"--init {init}: " if init else "--init: ", errors=(ModelError,)):
        parse_scheme(init)
    return init


def cmd_train(args: argparse.Namespace) -> None:
    # Everything that can be refused is refused before the names are read or the net is built.
    if args.arch == "e02" and args.batch_size < BATCHNORM_MIN_BATCH:
        raise UsageError(f"--batch-size {args.batch_size}: the e02 net's BatchNorm needs at least "
                         f"{BATCHNORM_MIN_BATCH} rows per batch (the variance of one row is undefined)")
    scheme = check_init(args.arch, args.init)
    device = check_device(args.device) if args.device is not None else None

    from core.makemore.data import Split, dataset_chunks, load_split, resolve_names_path

    check_output_file(args.out, "--out", {"the names file": resolve_names_path(args.names, fetch=False)})
    path = resolve_names_path(args.names)
    split = Split(args.seed)
    names_file, parts = load_split(path, split)

    import torch

    from core.makemore.checkpoint import save
    from core.makemore.model import e01_mlp, e02_mlp
    from core.makemore.train import DIVERGENCE_CHECK_EVERY, check_initial_loss, train

    chunks = list(dataset_chunks(parts["train"], 4))
    X, Y = torch.cat([x for x, _ in chunks]), torch.cat([y for _, y in chunks])
    del chunks
    g = torch.Generator().manual_seed(args.seed)
    model = e01_mlp(g, init=scheme) if args.arch == "e01" else e02_mlp(g)
    with naming_option(before=f"--init {scheme}: ", errors=(TrainingError,)):
        check_initial_loss(model, X, Y)
    with naming_option(after=f" (--lr {args.lr:g}); nothing was saved", errors=(TrainingError,)):
        history = train(model, X, Y, args.steps, batch_size=args.batch_size, lr=args.lr, generator=g, device=device,
                        check_every=DIVERGENCE_CHECK_EVERY)
    model.eval()
    save(model.cpu(), args.out, split=split, names_sha256=names_file.sha256)
    print(f"trained {args.arch} for {args.steps} steps in {history.wall_time:.1f}s "
          f"(last loss {history.losses[-1]:.4f}); saved {one_line(args.out)}")
