"""The certified error bound of folding: the rounding model (`rounding`), the bound of one fold (`pair`), the rules
that carry a bound through a layer (`rules`) or a node of a traced graph (`graph_rules`), the whole-model bound
(`propagation`) and the loss bound (`loss`). docs/design.md and docs/design-conv.md derive them."""
