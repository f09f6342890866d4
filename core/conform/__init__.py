"""The laws of folding as a conformance suite for any BatchNorm folder: bnfold's own and its peers' (docs/design.md,
"Conformance").

A folder (`core.conform.folder`) takes an eval-mode model and an example input and returns something that runs like
a model; an adapter per implementation (`core.conform.adapters`) says which cases it claims. The laws
(`core.conform.laws`) are stated once and run against every folder on cases drawn by hypothesis
(`core.conform.strategies`, `core.conform.cases`); `core.conform.matrix` runs them all and writes the matrix.
"""
