"""The cells of the timing tables (core.perf.cells): times in their unit, ratios marked against their targets."""

import math

import pytest

from core.perf import bench
from core.perf.cells import TIMING_WIDTH, ratio_cell, scaled, spread_text, target_cell, time_cell, timing_cell


@pytest.mark.parametrize("seconds, value, unit", [
    (2.5, 2.5, "s"), (1.0, 1.0, "s"), (0.0021, 2.1, "ms"), (1e-3, 1.0, "ms"), (4.2e-6, 4.2, "us"), (3e-8, 0.03, "us"),
])
def test_a_time_takes_the_largest_unit_it_reaches(seconds, value, unit):
    """scaled(t) = (t / f, unit) for the largest unit f of s, ms, us with t ≥ f, microseconds below 1 us."""
    got, got_unit = scaled(seconds)
    assert got_unit == unit and got == pytest.approx(value, rel=1e-12)


def test_time_cells_are_eleven_characters_wide():
    medians = {"a": 0.0021, "b": 12.5, "c": 4.2e-6}
    cells = [time_cell(medians, key) for key in ("a", "b", "c", "missing")]
    assert cells == ["     2.1 ms", "    12.5 s ", "     4.2 us", "          -"]
    assert all(len(cell) == 11 for cell in cells)


def test_a_ratio_above_its_target_is_starred():
    result = {"ratios": {"over": 1.2, "under": 0.8, "free": 5.0}, "targets": {"over": 1.0, "under": 1.0}}
    assert ratio_cell(result, "over") == "     1.200*"
    assert ratio_cell(result, "under") == "     0.800 "
    assert ratio_cell(result, "free") == "     5.000 "
    assert ratio_cell(result, "missing") == "         - "


def test_target_column_names_the_batch_size_a_target_holds_at():
    keys = [bench.ratio_key("cpu", b, "r") for b in (1, 64)]
    assert target_cell({keys[0]: 0.7}, keys, (1, 64)) == "<= 0.70 at B=1"
    assert target_cell({keys[0]: 1.0, keys[1]: 1.0}, keys, (1, 64)) == "<= 1.00"
    assert target_cell({}, keys, (1, 64)) == ""


def test_a_ratio_on_a_spread_median_is_marked_unreliable_before_any_target():
    result = {"ratios": {"over": 1.2, "free": 5.0}, "targets": {"over": 1.0}, "unreliable": ["over", "free"]}
    assert ratio_cell(result, "over") == "     1.200?"
    assert ratio_cell(result, "free") == "     5.000?"


def test_timing_cells_give_the_spread_beside_the_time():
    medians = {"a": 0.0021, "b": 4.2e-6, "c": 1.0, "d": 0.0, "e": 0.0}
    spreads = {"a": 0.000042, "b": None, "c": 20.0, "d": 0.0, "e": 1e-9}
    cells = [timing_cell(medians, spreads, key) for key in ("a", "b", "c", "d", "e", "missing")]
    assert cells == ["     2.1 ms ±   2%", "     4.2 us ±    ?", "       1 s  ±>999%", "       0 us ±   0%",
                     "       0 us ±>999%", "                 -"]
    assert {len(cell) for cell in cells} == {TIMING_WIDTH}
    assert spread_text(math.nan) == "?" and spread_text(0.1) == "10%" and spread_text(9.994) == "999%"
