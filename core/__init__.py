"""bnfold core: makemore part 3's zero-init and BatchNorm-folding exercises, minimal and exact."""

__version__ = "0.1.0"
