"""Laws of the reference helpers in properties/exact.py: the bounds other laws and tests compare with are sound,
checked against exact rational arithmetic, and the quotient bound is reached."""

from fractions import Fraction

import torch
from hypothesis import example, given, note
from hypothesis import strategies as st

from core.engine.bound.rounding import TINY64, U64
from properties.exact import exact_stats, population_std, ratio_bound
from properties.strategies.floats import floats_without_underflow, tensors

positive = st.floats(1e-3, 1e3)


@st.composite
def quotients(draw):
    """(a, da, b, db, â, b̂): a ≥ 0, 0 ≤ db < b, and â, b̂ within da, db of them (float64 values)."""
    a, b = draw(st.floats(0, 1e3)), draw(positive)
    da, db = draw(st.floats(0, 1e2)), b * draw(st.floats(0, 0.99))
    a_hat = a + da * draw(st.floats(-1, 1))
    b_hat = b + db * draw(st.floats(-1, 1))
    return a, da, b, db, a_hat, b_hat


@given(quotients())
@example((1.0, 0.0, 3.0, 0.0, 1.0, 3.0))
@example((1.0, 0.5, 2.0, 1.0, 1.5, 1.0))
@example((2.225073858507203e-309, 0.0, 1.0, 2.225073858507203e-309, 2.225073858507203e-309, 1.0))  # underflows
def test_ratio_bound_covers_every_quotient_within_its_inputs(q):
    """|fl(â / b̂) − a / b| ≤ ratio_bound(a, da, b, db) whenever |â − a| ≤ da and |b̂ − b| ≤ db < b.

    â/b̂ − a/b = (b(â − a) − a(b̂ − b)) / (b·b̂), at most (da + (a/b)·db)/(b − db) = spread, and the division
    rounds once: u·|â/b̂| ≤ u·(a/b + spread).
    """
    a, da, b, db, a_hat, b_hat = q
    if abs(a_hat - a) > da or abs(b_hat - b) > db:  # the float sums above may round past the interval
        a_hat, b_hat = a, b
    error = abs(Fraction(a_hat / b_hat) - Fraction(a) / Fraction(b))
    note(f"error {float(error):.6e}, bound {ratio_bound(a, da, b, db):.6e}")
    assert error <= Fraction(ratio_bound(a, da, b, db))


@given(floats_without_underflow(0, 1e3), floats_without_underflow(0, 1e2), positive,
       floats_without_underflow(0, 0.99))
def test_ratio_bound_is_reached_at_the_corner(a, da, b, shrink):
    """spread ≤ ratio_bound ≤ spread·(1 + 2⁻²⁹) + 2u·a/b + 2⁻¹⁰²², spread = |(a + da)/(b − db) − a/b|, reached at
    the corner, for inputs 0 or ≥ 10⁻¹⁰⁰ (where an input underflows, the upper side is off by subnormals).

    (a + da)/(b − db) − a/b = (b·da + a·db)/(b(b − db)) = (da + (a/b)·db)/(b − db): the bound adds one rounding
    of the quotient, the 2⁻³⁰ that covers its own rounding and the smallest normal that covers its own
    underflow, nothing more.
    """
    db = b * shrink
    exact = Fraction(a) + Fraction(da), Fraction(b) - Fraction(db)
    reached = exact[0] / exact[1] - Fraction(a) / Fraction(b)
    bound = Fraction(ratio_bound(a, da, b, db))
    note(f"reached {float(reached):.6e}, bound {float(bound):.6e}")
    assert reached <= bound <= reached * (1 + Fraction(2) ** -29) + 2 * Fraction(U64) * Fraction(a) / Fraction(b) \
        + Fraction(TINY64)


@given(tensors((24,), st.floats(-1, 1)), st.sampled_from((0.0, 1.0, 1e4, 1e8)))
@example(torch.zeros(24, dtype=torch.float64), 1e8)
def test_population_std_covers_torch_mean_and_std(values, offset):
    """|mean(x) − m| ≤ Δm and |std(x, correction=0) − σ| ≤ Δσ for torch's float64 kernels, m and σ exact.

    The offset makes the values cancel: a mean of 1e8 with a spread of 1 loses 16 digits of the spread
    to a naive one-pass variance, which the bound (two-pass or Welford, Chan–Golub–LeVeque) does not cover.
    """
    x = values + offset
    m, dm, sigma, dsigma = population_std(x)
    (exact_m,), (S,) = exact_stats(x.reshape(-1, 1))
    exact_sigma = (S / len(x)) ** 0.5 if S else 0.0
    torch_m, torch_sigma = x.mean().item(), x.std(correction=0).item()
    note(f"mean err {abs(torch_m - float(exact_m)):.3e} ≤ {dm:.3e}; std err {abs(torch_sigma - exact_sigma):.3e}"
         f" ≤ {dsigma:.3e}")
    assert abs(Fraction(torch_m) - exact_m) <= Fraction(dm)
    assert abs(torch_sigma - float(exact_sigma)) <= dsigma + U64 * float(exact_sigma)
    assert abs(m - float(exact_m)) <= U64 * abs(float(exact_m))
