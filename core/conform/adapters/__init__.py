"""The adapters: one small module per BatchNorm folder, each calling its implementation as documented.

`ADAPTERS` lists them in the matrix's order; `folders(keys)` builds the ones asked for.
"""

from core.conform.adapters.ao_fuse import AoFuseModules
from core.conform.adapters.bnfold import Bnfold
from core.conform.adapters.fx_fuse import FxFuse
from core.conform.adapters.inductor import InductorFuseConvBn
from core.conform.adapters.onnx_export import OnnxExport
from core.conform.adapters.onnx_optimizer import OnnxOptimizer
from core.conform.adapters.onnx_runtime import OnnxRuntime
from core.conform.adapters.onnx_script import OnnxScript
from core.conform.adapters.torch_fusion import TorchFusion
from core.conform.folder import Folder

ADAPTERS: tuple[type[Folder], ...] = (Bnfold, TorchFusion, FxFuse, AoFuseModules, InductorFuseConvBn, OnnxExport,
                                      OnnxRuntime, OnnxOptimizer, OnnxScript)
KEYS = tuple(adapter.key for adapter in ADAPTERS)


def folders(keys: list[str] | tuple[str, ...] | None = None) -> list[Folder]:
    """The adapters with these keys (all of them for None), in the matrix's order; ValueError naming the keys there
    are for any other."""
    unknown = sorted(set(keys or ()) - set(KEYS))
    if unknown:
        raise ValueError(f"no folder {', '.join(unknown)}: the folders are {', '.join(KEYS)}")
    return [adapter() for adapter in ADAPTERS if keys is None or adapter.key in keys]
