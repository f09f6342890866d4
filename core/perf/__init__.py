"""The performance layer: frozen eval chains, the fused Triton kernel, CUDA-graph replay, timing and `bnfold bench`.

The rule: this layer may import the library (core's modules), and only the application modules
(core.app.cli, core.app.reproduce) and the tests import it; the library and properties/ never do. So
nothing here can change what a model computes: a model's forward is always the module path, and
every fast path here is checked against it.
"""
