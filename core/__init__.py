"""bnfold: fold every BatchNorm of a torch model into its neighbouring layer, and certify the folded model.

    from core import fold, certify
    folded, report = fold(model.eval())
    print(certify(model, folded, X, report))   # each fold checked on the activations model computes at X

Everything a user imports comes from here; the modules behind these names may move. They load on first use, so
`import core` (and the command line's argument checks) stays quick.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.deploy import OnnxCheck as OnnxCheck
    from core.deploy import export as export
    from core.engine.bound.loss import loss_bound as loss_bound
    from core.engine.bound.propagation import error_bound as error_bound
    from core.engine.certify import Certificate as Certificate
    from core.engine.certify import PairCheck as PairCheck
    from core.engine.certify import certify as certify
    from core.engine.fold import FoldedPair as FoldedPair
    from core.engine.fold import FoldReport as FoldReport
    from core.engine.fold import KeptBN as KeptBN
    from core.engine.fold import fold as fold
    from core.engine.plan import Plan as Plan
    from core.engine.plan import plan_folds as plan_folds
    from core.errors import BnfoldError as BnfoldError
    from core.errors import BoundError as BoundError
    from core.errors import ExportError as ExportError
    from core.errors import FoldError as FoldError

__version__ = "0.1.0"
PUBLIC = {  # name -> the module that defines it
    "fold": "core.engine.fold", "FoldReport": "core.engine.fold", "FoldedPair": "core.engine.fold",
    "KeptBN": "core.engine.fold", "error_bound": "core.engine.bound.propagation",
    "loss_bound": "core.engine.bound.loss", "plan_folds": "core.engine.plan", "Plan": "core.engine.plan",
    "certify": "core.engine.certify", "Certificate": "core.engine.certify", "PairCheck": "core.engine.certify",
    "BnfoldError": "core.errors", "BoundError": "core.errors", "FoldError": "core.errors",
    "ExportError": "core.errors", "export": "core.deploy", "OnnxCheck": "core.deploy",
}
__all__ = sorted(PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    return getattr(import_module(PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *PUBLIC])
