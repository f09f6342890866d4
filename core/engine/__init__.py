"""The fold engine: folds the BatchNorms of any torch model that torch.fx can trace, and certifies the result.

Importing it registers torch's own layer types in the layer-kind table (`core.engine.catalog`).
"""

from core.engine import catalog  # noqa: F401  (registers torch's layer types)
