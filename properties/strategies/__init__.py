"""Shared hypothesis strategies, one module per kind of input; each builds valid inputs directly rather than
filtering. Import from the module that draws what a law needs:

- `values`: tensor values by decades (±10^e, one drawn byte each, cycled over a shape) and BatchNorm statistics in
  modes, the values of every folding case below.
- `pairs`: a Linear/BatchNorm1d pair and a conv/BatchNorm pair, the BatchNorm after or before its layer.
- `models`: whole models of Linears, BatchNorms and activations (core or torch.nn Sequentials, CharMLPs).
- `nets`: random conv nets of blocks, each BatchNorm's fold or kept reason known by construction.
- `kinds`: one strategy per layer kind (KIND_STRATEGIES) and the inputs a drawn layer accepts.
- `floats`: float64 tensors whose every value is drawn, and floats whose products never underflow.
- `mlps`: CharMLPs under an init scheme, the contexts and labels they train on (the zero-init laws).
- `names`: names of lowercase letters and lists of them (the data set laws).
"""
