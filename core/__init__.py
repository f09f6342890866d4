"""bnfold: fold every BatchNorm of a torch model into its neighbouring layer, and certify the folded model.

    from core import fold, error_bound
    folded, report = fold(model.eval())
    bound = error_bound(model, X, report.plan)   # |model(X) − folded(X)| ≤ bound, elementwise

Everything a user imports comes from here; the modules behind these names may move.
"""

from core.engine.bound.loss import loss_bound
from core.engine.bound.propagation import error_bound
from core.engine.fold import FoldedPair, FoldReport, KeptBN, fold
from core.engine.plan import Plan, plan_folds
from core.errors import BnfoldError, BoundError, FoldError

__version__ = "0.1.0"
__all__ = ["BnfoldError", "BoundError", "FoldError", "FoldReport", "FoldedPair", "KeptBN", "Plan", "error_bound",
           "fold", "loss_bound", "plan_folds"]
