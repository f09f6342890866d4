"""Cases build what they print, and their twins compute what they compute."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.conform.cases import FAMILIES
from core.conform.certified import identical
from core.conform.strategies import cases


@settings(max_examples=5)
@given(st.sampled_from(FAMILIES).flatmap(cases))
def test_a_case_prints_the_model_it_builds_and_its_twin_computes_it(case):
    """exec(case.code()) gives case.build() and case.example(), torch.equal; case.twin()(X) = case.build()(X)."""
    namespace: dict = {}
    with torch.random.fork_rng(devices=[]):
        exec(compile(case.code(), "case", "exec"), namespace)
    built, x = case.build(), case.example()
    assert torch.equal(namespace["x"], x) and namespace["x"].dtype == x.dtype
    assert namespace["x"].stride() == x.stride()  # channels-last where the case is
    with torch.no_grad():
        assert identical(namespace["model"](x), built(x))
        assert identical(case.twin()(x), case.build()(x))
