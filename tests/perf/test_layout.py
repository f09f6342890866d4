"""The channels-last layout of a folded net (core.perf.layout): the same values laid out for oneDNN, still within
the certified bound of the fold; and the torchvision bench rows that time it."""


import torch
from hypothesis import given
from torch import nn

from core.engine.fold import fold
from core.perf import bench_models
from core.perf.layout import channels_last
from properties.checks import assert_within_bound
from properties.strategies.nets import MODELLED_BLOCKS, net_cases


def test_four_and_five_dim_tensors_become_channels_last_and_keep_their_values():
    """Each 4-D parameter or buffer is channels_last, each 5-D one channels_last_3d, each other one as it was;
    every value is the same (torch.equal), and the module itself is returned."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 2), nn.Conv2d(3, 4, 3), nn.Conv3d(4, 5, 2), nn.BatchNorm2d(4),
                          nn.Linear(5, 2))
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g)
    model.register_buffer("volume", torch.randn(2, 3, 4, 5, 6, generator=g))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strides = {k: v.stride() for k, v in model.state_dict().items()}
    assert channels_last(model) is model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
        if value.dim() == 4:
            assert value.is_contiguous(memory_format=torch.channels_last) and not value.is_contiguous(), key
        elif value.dim() == 5:
            assert value.is_contiguous(memory_format=torch.channels_last_3d) and not value.is_contiguous(), key
        else:
            assert value.stride() == strides[key], key


@given(net_cases(blocks=MODELLED_BLOCKS))
def test_a_channels_last_fold_is_within_the_bound(case):
    """|m(X) − channels_last(fold(m))(X)| ≤ error_bound(m, X) elementwise, float32 and float64.

    The layout changes where each value sits, not which products a conv sums: it may sum them in another
    order, and the pair bound and the conv rule hold for every order (docs/design.md).
    """
    model, X, _ = case.build()
    assert_within_bound(model, channels_last(fold(model)[0]), X)


def test_rows_name_each_variant_and_star_a_missed_target():
    """One row per variant and per ratio, every label ending before the first column however long it is, and * on
    a ratio above its target."""
    key = bench_models.key
    variants = ["unfolded", "folded", bench_models.FOLDED_CL, "torch.fx fused", bench_models.FUSED_CL]
    labels = [f"net {v}" for v in variants] + [f"net {label}" for label, _, _ in bench_models.RATIOS]
    medians = {key(b, f"net {v}"): 1e-3 * (i + 1) for b in (1, 8) for i, v in enumerate(variants)}
    ratios = {key(b, f"net {label}"): 0.9 if b == 1 else 1.1 for b in (1, 8) for label, _, _ in bench_models.RATIOS}
    targets = {key(b, f"net {label}"): t for b in (1, 8) for label, t in bench_models.TARGETS.items()}
    rows = bench_models.format_rows({"medians_s": medians, "ratios": ratios, "targets": targets}).splitlines()[2:]
    column = 2 + max(map(len, labels))
    assert [row[:column].strip() for row in rows] == labels
    assert all(row[column] == " " for row in rows)
    target_row = rows[labels.index(f"net {bench_models.FOLDED_CL} / torch.fx fused")]
    assert target_row.split()[-4:] == ["0.900", "1.100*", "<=", "1.00"]
