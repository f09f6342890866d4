"""Known upstream issues, and which violations they explain.

A violation is matched by what it is (the law, the case's form and layers, the kind of violation), never by the
folder's name alone; a violation no entry matches is reported as one with no known issue.
"""

from collections.abc import Callable
from dataclasses import dataclass

from core.conform.cases import (
    CONV3D,
    HALF,
    LINEAR,
    PAIRED,
    SHARED,
    SHARED_FAMILY,
    SHARED_PAIR,
    TRAINING,
    TRANSPOSED,
    Case,
)
from core.conform.laws import BOUND, CRASHED, DTYPE, FOLDED_TRAINING, RAISED, Law, Violation


@dataclass(frozen=True)
class KnownIssue:
    reference: str  # owner/repo#number
    summary: str
    matches: Callable[[str, Law, Case, Violation], bool]

    @property
    def url(self) -> str:
        repository, number = self.reference.split("#")
        return f"https://github.com/{repository}/issues/{number}"


def _groups(case: Case) -> int:
    return max((int(dict(spec.kwargs).get("groups", 1)) for spec in case.layers), default=1)


def _torch_graph(folder: str) -> bool:
    """Whether the folder is one of torch's own, which share fuse_conv_bn_weights and replace modules by name."""
    return folder.startswith(("torch.nn", "torch.fx", "torch.ao", "inductor"))


def _without_bias(case: Case) -> bool:
    return any(spec.type.startswith("Conv") and ("bias", False) in spec.kwargs for spec in case.layers)


def _not_affine(case: Case) -> bool:
    return any(spec.type.startswith("BatchNorm") and ("affine", False) in spec.kwargs for spec in case.layers)


KNOWN: tuple[KnownIssue, ...] = (
    KnownIssue("pytorch/pytorch#122183", "fuse_linear_bn_weights multiplies by a BatchNorm's weight, which is None "
                                         "when affine=False",
               lambda folder, law, case, v: law.family == LINEAR and _not_affine(case) and _torch_graph(folder)
               and v.kind in (RAISED, CRASHED)),
    KnownIssue("pytorch/pytorch#197539", "a conv shared with a path that has no BatchNorm is replaced by the fused "
                                         "conv on both paths",
               lambda folder, law, case, v: law.family == SHARED_FAMILY and case.form == SHARED
               and _torch_graph(folder) and v.kind == BOUND),
    KnownIssue("pytorch/ao#2795", "a BatchNorm folded again into weights shared by several calls",
               lambda folder, law, case, v: law.family == SHARED_PAIR and case.form == PAIRED and v.kind == BOUND),
    KnownIssue("pytorch/pytorch#180995", "fuse_conv_bn_weights(transpose=True) scales a grouped ConvTranspose's "
                                         "weight with the wrong shape",
               lambda folder, law, case, v: law.family == TRANSPOSED and _groups(case) > 1 and _torch_graph(folder)
               and v.kind in (BOUND, RAISED, CRASHED)),
    KnownIssue("ultralytics/ultralytics#25364", "a transposed conv's weight scaled along its input axis, not its "
                                                "output axis",
               lambda folder, law, case, v: law.family == TRANSPOSED and _groups(case) == 1 and v.kind == BOUND),
    KnownIssue("microsoft/onnxscript#3027", "the BatchNorm fold into Gemm ignores Gemm's beta",
               lambda folder, law, case, v: law.family == LINEAR and folder.startswith("onnxscript")
               and v.kind == BOUND),
    KnownIssue("microsoft/onnxscript#2931", "torch.onnx exports a Conv3d without bias with a bias of shape "
                                            "[out_channels, 2], which ONNX Runtime refuses",
               lambda folder, law, case, v: law.family == CONV3D and folder.startswith("torch.onnx")
               and _without_bias(case) and v.kind == CRASHED),
    KnownIssue("pytorch/pytorch#52867", "torch.onnx exports every BatchNorm in the export's mode (eval), not the "
                                        "layer's own",
               lambda folder, law, case, v: law.family == TRAINING and folder.startswith("torch.onnx")
               and v.kind == FOLDED_TRAINING),
    KnownIssue("Megvii-BaseDetection/YOLOX#1246", "a float16 model folded into mixed Half and Float tensors",
               lambda folder, law, case, v: law.family == HALF and v.kind == DTYPE),
)


def known_issue(folder: str, law: Law, case: Case, violation: Violation) -> KnownIssue | None:
    """The first known issue that explains this violation, or None."""
    return next((issue for issue in KNOWN if issue.matches(folder, law, case, violation)), None)
