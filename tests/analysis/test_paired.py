"""Paired seed comparisons: t quantiles against the printed table, intervals computed by hand."""

import math

import pytest

from moe.analysis.paired import paired_difference, pooled_std, student_t_cdf, t_critical


@pytest.mark.parametrize(("df", "t95", "t99"), [(1, 12.706, 63.657), (2, 4.303, 9.925), (3, 3.182, 5.841),
                                                (4, 2.776, 4.604), (9, 2.262, 3.250), (30, 2.042, 2.750)])
def test_t_critical_matches_the_printed_table(df, t95, t99):
    assert t_critical(df) == pytest.approx(t95, abs=5e-4)
    assert t_critical(df, 0.99) == pytest.approx(t99, abs=5e-4)


def test_t_cdf_closed_forms():
    assert student_t_cdf(0.0, 5) == pytest.approx(0.5)
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/π
    assert student_t_cdf(-2.0, 2) == pytest.approx(0.5 - 2 / (2 * math.sqrt(2 + 4)))  # ν=2: ½ + t/(2√(2+t²))


def test_interval_that_excludes_zero():
    # differences -0.03, -0.02, -0.025: mean -0.025, sample std 0.005, half width t(2)·0.005/√3
    diff = paired_difference({0: 1.00, 1: 1.10, 2: 1.20}, {0: 1.03, 1: 1.12, 2: 1.225})
    half = 4.302653 * 0.005 / math.sqrt(3)
    assert diff.seeds == 3 and diff.mean == pytest.approx(-0.025) and diff.std == pytest.approx(0.005)
    assert (diff.low, diff.high) == (pytest.approx(-0.025 - half), pytest.approx(-0.025 + half))
    assert diff.distinguishable


def test_interval_that_holds_zero_is_not_distinguishable():
    # differences -3, -1, -2 (x 0.01): mean -0.02, std 0.01, half width 0.0248 > 0.02
    diff = paired_difference({0: 0.97, 1: 0.99, 2: 0.98}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert diff.low == pytest.approx(-0.02 - 4.302653 * 0.01 / math.sqrt(3))
    assert diff.high > 0 and not diff.distinguishable


def test_pairing_needs_the_same_seeds():
    with pytest.raises(ValueError, match=r"arm has seeds \[0, 1, 3\], reference has \[0, 1, 2\]"):
        paired_difference({0: 1.0, 1: 1.0, 3: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_difference({0: 1.0}, {0: 2.0})


def test_pooled_std_weights_arms_by_their_degrees_of_freedom():
    # variances 1 (n=3: {1,2,3}) and 4 (n=2: {0, 2√2}): (2·1 + 1·4) / 3 = 2
    assert pooled_std([[1.0, 2.0, 3.0], [0.0, 2 * math.sqrt(2)]]) == pytest.approx(math.sqrt(2))


def test_check_pairing_names_what_differs():
    from moe.analysis.paired import check_pairing

    check_pairing({"a": [0, 1, 2], "b": [2, 1, 0]}, "a")  # the same seeds in any order pair
    with pytest.raises(ValueError, match=r"'c' is not an arm of these runs; arms: \['a', 'b'\]"):
        check_pairing({"a": [0, 1], "b": [0, 1]}, "c")
    with pytest.raises(ValueError, match=r"arm 'b' has seeds \[0\] but the reference 'a' has \[0, 1\]"):
        check_pairing({"a": [0, 1], "b": [0]}, "a")
    with pytest.raises(ValueError, match=r"arm 'b' has seed\(s\) \[0, 0, 1\]: each seed may appear once"):
        check_pairing({"a": [0, 1], "b": [0, 0, 1]}, "a")
    with pytest.raises(ValueError, match="a paired interval needs >= 2"):
        check_pairing({"a": [0], "b": [0]}, "a")
