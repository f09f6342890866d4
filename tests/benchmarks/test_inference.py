"""E02 inference: folded vs unfolded as modules (core, torch.nn, torch's fuser) and as frozen chains; the eager limit.

Every variant includes the embedding lookup C[X]; compare within a group (one batch size).
"""

import pytest
import torch

from core.engine.fold import fold
from core.makemore.data import random_rows
from core.perf.chain import FrozenChain, capture, minimal_chain
from core.perf.timing import extra_info

BATCHES = [1, 64, 4096, "dev"]
VARIANTS = ["unfolded module", "unfolded torch.nn", "folded module", "torch fused", "unfolded frozen", "folded frozen",
            "minimal chain"]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_inference(benchmark, variants, batch_of, variant, batch):
    X = batch_of(batch)
    benchmark.group = f"inference B={batch}"
    benchmark.extra_info.update(extra_info(X.shape, torch.float32), variant=variant)
    with torch.inference_mode():
        logits = benchmark(variants[variant], X)
    assert logits.shape == (X.shape[0], 27)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64, 4096, 2**21])
@pytest.mark.parametrize("variant", ["folded frozen", "minimal chain", "folded CUDA graph"])
def test_cuda_inference(benchmark, e02, variant, batch):
    folded = fold(e02[0])[0].eval().cuda()
    X = random_rows(batch, torch.Generator().manual_seed(0))[0].cuda()
    frozen = FrozenChain(folded)
    fn = {"folded frozen": frozen, "minimal chain": minimal_chain(folded),
          "folded CUDA graph": capture(frozen, X)}[variant]

    def synchronised():
        out = fn(X)
        torch.cuda.synchronize()
        return out

    benchmark.group = f"cuda inference B={batch}"
    benchmark.extra_info.update(extra_info(X.shape, torch.float32), variant=variant,
                                device=torch.cuda.get_device_name())
    with torch.inference_mode():
        assert benchmark(synchronised).shape == (batch, 27)
