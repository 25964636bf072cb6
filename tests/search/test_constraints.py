"""qslm.search.constraints: sizes and fractions read from the command line, the performance floor
reduced to an allowed degradation (hand-computed for every kind), the memory budget and the
relative-performance term of the trade-off score."""

from __future__ import annotations

import math

import pytest

from qslm.errors import QslmError
from qslm.search.constraints import (
    FLOOR_KINDS,
    MemoryBudget,
    PerformanceFloor,
    SearchInputError,
    parse_bytes,
    parse_fraction,
    relative_performance,
)

# --- parse_bytes --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2MiB", 2 * 1024 * 1024),
    ("2MiB", 2097152),
    ("1.5MB", 1_500_000),
    ("1.5 MB", 1_500_000),
    ("300000", 300_000),
    ("512k", 524_288),
    ("512K", 524_288),
    ("1kB", 1000),
    ("1KiB", 1024),
    ("1GiB", 2**30),
    ("1GB", 10**9),
    ("2G", 2 * 2**30),
    ("3M", 3 * 2**20),
    ("100B", 100),
    ("  64 KiB  ", 65536),
    ("1e3", 1000),
])
def test_parse_bytes_reads_decimal_and_binary_units(text, expected):
    got = parse_bytes(text)
    assert got == expected
    assert isinstance(got, int)


@pytest.mark.parametrize("text", ["", "abc", "2XB", "-1MB", "0", "0MiB", "MiB", "1.2.3MB",
                                  "2 Mi B", "1e999"])
def test_parse_bytes_rejects_malformed_unknown_or_non_positive(text):
    with pytest.raises(SearchInputError) as info:
        parse_bytes(text)
    # an input error: a QslmError and a ValueError, with the offending text in the message
    assert isinstance(info.value, QslmError) and isinstance(info.value, ValueError)
    assert repr(text) in str(info.value) or text.strip() == ""


def test_parse_bytes_names_the_unknown_unit():
    with pytest.raises(SearchInputError, match="unknown size unit 'XB'"):
        parse_bytes("2XB")


def test_parse_bytes_rejects_a_size_that_truncates_to_zero_bytes():
    with pytest.raises(SearchInputError):
        parse_bytes("0.5")


# --- parse_fraction -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("5%", 0.05), ("0.05", 0.05), (" 5 % ", 0.05), ("0", 0.0), ("0%", 0.0),
    ("150%", 1.5), ("2.5%", 0.025), ("1", 1.0),
])
def test_parse_fraction(text, expected):
    assert parse_fraction(text, "--max-ppl-increase") == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("text", ["x%", "-1", "-5%", "", "%", "nan", "inf", "abc"])
def test_parse_fraction_rejects_bad_values_and_names_the_option(text):
    with pytest.raises(SearchInputError, match="--max-ppl-increase"):
        parse_fraction(text, "--max-ppl-increase")


# --- PerformanceFloor ---------------------------------------------------------------------------


def test_allowed_degradation_ppl_increase_is_log_of_one_plus_r():
    f = PerformanceFloor("ppl-increase", 0.05)
    assert f.metric == "nll"
    # PPL_q / PPL_fp = exp(NLL_q − NLL_fp) <= 1.05  ⇔  ΔNLL <= ln 1.05
    for baseline in (0.0, 3.7, 10.0):  # independent of the baseline
        assert f.allowed_degradation(baseline) == pytest.approx(math.log(1.05), rel=1e-15)
    assert PerformanceFloor("ppl-increase", 0.0).allowed_degradation(3.0) == 0.0
    assert PerformanceFloor("ppl-increase", 1.0).allowed_degradation(3.0) == \
        pytest.approx(math.log(2.0), rel=1e-15)


def test_allowed_degradation_max_ppl_is_log_p_minus_baseline_nll():
    f = PerformanceFloor("max-ppl", 20.0)
    assert f.metric == "nll"
    assert f.allowed_degradation(2.5) == pytest.approx(math.log(20.0) - 2.5, rel=1e-15)
    # a baseline already above the ceiling: no plan can meet it (negative allowance)
    assert f.allowed_degradation(math.log(25.0)) == pytest.approx(math.log(20 / 25), rel=1e-12)
    assert f.allowed_degradation(math.log(25.0)) < 0
    assert PerformanceFloor("max-ppl", 1.0).allowed_degradation(0.0) == 0.0


def test_allowed_degradation_acc_drop_is_points_over_100():
    f = PerformanceFloor("acc-drop", 1.0)
    assert f.metric == "accuracy"
    assert f.allowed_degradation(0.9) == pytest.approx(0.01, rel=1e-15)
    assert f.allowed_degradation(0.5) == pytest.approx(0.01, rel=1e-15)
    assert PerformanceFloor("acc-drop", 2.5).allowed_degradation(0.9) == pytest.approx(0.025)


def test_allowed_degradation_min_acc_is_baseline_minus_floor():
    f = PerformanceFloor("min-acc", 0.8)
    assert f.metric == "accuracy"
    assert f.allowed_degradation(0.85) == pytest.approx(0.05, abs=1e-15)
    assert f.allowed_degradation(0.75) == pytest.approx(-0.05, abs=1e-15)


def test_allowed_degradation_kl_is_the_value():
    f = PerformanceFloor("kl", 0.05)
    assert f.metric == "kl"
    assert f.allowed_degradation(0.0) == 0.05


def test_every_floor_kind_has_a_metric_and_a_description():
    for kind in FLOOR_KINDS:
        value = 0.5 if kind == "min-acc" else 2.0
        f = PerformanceFloor(kind, value)
        d = f.to_dict()
        assert d["kind"] == kind and d["value"] == value and d["text"] == f.describe()
        assert f.metric in ("accuracy", "nll", "kl")


@pytest.mark.parametrize("kind, value", [
    ("foo", 1.0), ("ppl", 0.05), ("ppl-increase", -0.01), ("kl", -1.0), ("acc-drop", -1.0),
    ("kl", math.nan), ("kl", math.inf), ("ppl-increase", math.inf),
    ("min-acc", 1.5), ("min-acc", -0.1), ("max-ppl", 0.5), ("max-ppl", -2.0),
])
def test_invalid_floors_raise_search_input_error(kind, value):
    with pytest.raises(SearchInputError):
        PerformanceFloor(kind, value)


# --- MemoryBudget -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind, nbytes", [
    ("fit", "fit", None), (" FIT ", "fit", None), ("none", "none", None), ("None", "none", None),
    (None, "none", None), ("", "none", None), ("2MiB", "bytes", 2097152),
    ("1.5MB", "bytes", 1_500_000), ("1KiB", "bytes", 1024),
])
def test_memory_budget_parse(text, kind, nbytes):
    b = MemoryBudget.parse(text)
    assert b == MemoryBudget(kind, nbytes)
    d = b.to_dict()
    assert d["kind"] == kind and d["bytes"] == nbytes and d["text"] == b.describe()


@pytest.mark.parametrize("text", ["2XB", "-1MB", "0", "fits", "abc"])
def test_memory_budget_parse_rejects_bad_sizes(text):
    with pytest.raises(SearchInputError):
        MemoryBudget.parse(text)


# --- relative_performance -----------------------------------------------------------------------


def test_relative_performance_accuracy_is_ratio_to_baseline():
    assert relative_performance("accuracy", 0.09, 0.9) == pytest.approx(0.9, rel=1e-15)
    assert relative_performance("accuracy", 0.0, 0.9) == 1.0
    assert relative_performance("accuracy", -0.09, 0.9) == pytest.approx(1.1, rel=1e-15)
    assert relative_performance("accuracy", 0.1, 0.0) == 0.0  # no baseline: nothing to keep


def test_relative_performance_nll_is_the_perplexity_ratio():
    # PPL_fp / PPL_q = exp(−ΔNLL); a 5 % perplexity increase scores 1/1.05
    assert relative_performance("nll", math.log(1.05), 3.0) == pytest.approx(1 / 1.05, rel=1e-14)
    assert relative_performance("nll", 0.0, 3.0) == 1.0


def test_relative_performance_kl_is_exp_minus_kl():
    assert relative_performance("kl", 0.05, 0.0) == pytest.approx(math.exp(-0.05), rel=1e-15)
    assert relative_performance("kl", 0.0, 0.0) == 1.0
