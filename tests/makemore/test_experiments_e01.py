"""E01 end to end: the label entropy floor, the notebook's own loop as the reference, and the run's record.

The notebook check on names.txt (100k steps) is part of tests/app/test_reproduce_full.py, which runs E01 once
for both.
"""

import math
from collections import Counter
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from core import notebook
from core.engine.bound.rounding import U64, rounding_bound, unit_roundoff
from core.makemore.data import build_dataset
from core.makemore.experiments import label_entropy, run_e01
from core.makemore.model import e01_mlp

E01_OUTPUT_BIAS = "layers.8.bias"  # the E01 net: (Linear, Tanh) four times, then the output Linear at index 8
E01_PARAMETERS = 11  # C and the weight and bias of five Linears
NAMES = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "charlotte", "amelia", "harper", "evelyn"]
U32 = unit_roundoff(torch.float32)


@pytest.fixture(scope="module")
def tiny_splits():
    return {"train": build_dataset(NAMES[:7], 4), "dev": build_dataset(NAMES[7:], 4)}


def entropy_of(labels) -> float:
    """H = −Σ p log p of the labels' shares, as a float near the exact value: shares exact, fsum of the terms."""
    counts, n = Counter(labels), len(labels)
    return -math.fsum(float(Fraction(c, n)) * math.log(c / n) for c in counts.values())


@pytest.mark.parametrize("labels, expected", [
    (list(range(27)), math.log(27)),
    ([3] * 10, 0.0),
    ([0, 0, 1, 1], math.log(2)),
    ([0, 0, 0, 26], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))),
    ([5] * 26 + [7], None),
])
def test_label_entropy(labels, expected):
    """H(ĉ) = −Σ ĉ_k log ĉ_k: closed forms, within the float64 rounding of k ≤ 27 terms.

    Each term p·log p costs a division, a log (within 2u in torch), a product: 4 roundings; the
    sum of k terms k − 1 more, and the closed forms above carry up to 4 of their own.
    """
    expected = entropy_of(labels) if expected is None else expected
    got = label_entropy(torch.tensor(labels))
    k = len(set(labels))
    shares = [c / len(labels) for c in Counter(labels).values()]
    magnitude = math.fsum(abs(p * math.log(p)) for p in shares)
    assert abs(got - expected) <= rounding_bound(k + 8, U64) * magnitude
    if k == 1:
        assert got == 0.0


def run_notebook_e01(splits, steps, batch_size, lr, seed):
    """The notebook's loop on the E01 net that run_e01 builds: same generator, so the same init and batches."""
    g = torch.Generator().manual_seed(seed)
    net = notebook.Net(e01_mlp(g, init="zeros"))
    notebook.train(net, *splits["train"], steps, batch_size=batch_size, lr=lr, generator=g)
    return net


def notebook_loss(net, X, Y) -> float:
    with torch.no_grad():
        x = net.C[X].view(X.shape[0], -1)
        for layer in net.layers:
            x = layer(x)
        return F.cross_entropy(x, Y).item()


def test_e01_equals_the_notebook_loop_bit_for_bit(tiny_splits):
    """run_e01 = the notebook's loop, bit for bit, at lr = 1/2: the same losses on train and dev, only b_L alive.

    With every Linear at 0 the logits are b_L exactly in both (0·x + 0 = 0, tanh 0 = 0, x@0 + b = b),
    so both compute the same cross-entropy gradient from the same bits. Our update is one fused
    p + (−lr)·g, the notebook's p + fl(−lr·g); with lr a power of two −lr·g is exact, so both round
    once, to the same value. By induction every step agrees, and so do the final losses.
    """
    steps, batch_size, lr, seed = 120, 16, 0.5, 3
    result = run_e01(tiny_splits, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False)
    net = run_notebook_e01(tiny_splits, steps, batch_size, lr, seed)
    assert result.train_loss == notebook_loss(net, *tiny_splits["train"])
    assert result.dev_loss == notebook_loss(net, *tiny_splits["dev"])
    assert result.alive == [E01_OUTPUT_BIAS]
    assert [p.grad.count_nonzero().item() > 0 for p in net.parameters] == [False] * (E01_PARAMETERS - 1) + [True]
    assert result.steps == len(result.losses) == steps


def test_e01_floors_at_the_dev_label_entropy(tiny_splits):
    """E01: dev loss = H(ĉ_dev) + KL(ĉ_dev ‖ softmax(b_L)) ≥ H(ĉ_dev), and loss₀ = log 27 within float32 rounding.

    The net ignores its input (its logits are b_L), so its cross-entropy on any rows is the entropy
    of their labels plus a KL divergence (Gibbs). Here the train and dev histograms differ, so the
    KL term is of order 0.1, far above float32 rounding (≈ 1e-6 on losses near 3). The first loss is
    log 27 (uniform softmax of zero logits): the log of 27 and the mean of B equal rows round
    B + 3 times in float32.
    """
    result = run_e01(tiny_splits, steps=200, batch_size=16, seed=3, progress=False)
    dev_labels = tiny_splits["dev"][1].tolist()
    assert abs(result.dev_entropy - entropy_of(dev_labels)) <= rounding_bound(27 + 8, U64) * entropy_of(dev_labels)
    assert result.dev_loss > result.dev_entropy
    assert result.gap == result.dev_loss - result.dev_entropy  # the distance above the floor
    assert abs(result.losses[0] - math.log(27)) <= rounding_bound(16 + 3, U32) * math.log(27)
    assert result.wall_time > 0


def test_e01_is_fixed_by_its_seed(tiny_splits):
    a, b = (run_e01(tiny_splits, steps=50, seed=9, progress=False) for _ in range(2))
    assert a.losses == b.losses and a.dev_loss == b.dev_loss and a.train_loss == b.train_loss


def test_a_kaiming_net_is_alive_everywhere(tiny_splits):
    result = run_e01(tiny_splits, steps=5, seed=0, progress=False, init="kaiming(5/3)")
    assert len(result.alive) == E01_PARAMETERS
