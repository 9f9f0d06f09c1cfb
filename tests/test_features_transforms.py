"""Causal transforms: EMA / Wilder against a plain recursion, stable rolling moments."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from envs.features.transforms import (
    ema,
    lag_log_return,
    rolling_mean_var,
    true_range,
    wilder,
)


def reference_ema(x: np.ndarray, alpha: float, init: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    state = init
    for t in range(x.shape[0]):
        state = alpha * x[t] + (1 - alpha) * state
        out[t] = state
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.5, 2 / 27, 1 / 14, 1e-3])
def test_ema_matches_recursion_across_blocks(alpha: float) -> None:
    rng = np.random.default_rng(1)
    # Price-like level plus noise, long enough to cross many closed-form blocks.
    x = 1e4 + np.cumsum(rng.normal(0, 1, (6000, 3)), axis=0)
    got = ema(x, alpha)
    want = reference_ema(x, alpha, x[0])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    init = np.array([0.0, 5.0, -5.0])
    np.testing.assert_allclose(ema(x, alpha, init), reference_ema(x, alpha, init), rtol=1e-12)


def test_ema_one_dimensional_and_empty() -> None:
    x = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(ema(x, 0.5), [1.0, 1.5, 2.75])
    assert ema(np.empty((0, 2)), 0.5).shape == (0, 2)
    with pytest.raises(ValueError, match="alpha"):
        ema(x, 0.0)


def test_wilder_seeds_with_simple_mean() -> None:
    x = np.array([np.nan, 1.0, 3.0, 5.0, 1.0])
    got = wilder(x, 2, first=1)
    # seed at row 2: mean(1, 3) = 2; row 3: 2 + (5 - 2)/2 = 3.5; row 4: 3.5 + (1 - 3.5)/2 = 2.25
    np.testing.assert_allclose(got, [np.nan, np.nan, 2.0, 3.5, 2.25])
    assert np.isnan(wilder(x[:2], 5)).all()


@pytest.mark.parametrize("window", [1, 2, 3, 20, 1023, 1024, 1025, 1500])
def test_rolling_mean_var_matches_two_pass(window: int) -> None:
    rng = np.random.default_rng(window)
    x = rng.normal(0, 1, (5000, 2)) * np.array([1.0, 50.0]) + np.array([0.0, 3e4])
    mean, var = rolling_mean_var(x, window)
    windows = sliding_window_view(x, window, axis=0)
    assert np.isnan(mean[: window - 1]).all() and np.isnan(var[: window - 1]).all()
    for col in range(2):
        level = np.abs(x[:, col]).max()  # errors scale with the level, not the (tiny) mean
        np.testing.assert_allclose(
            mean[window - 1 :, col], windows[:, col].mean(-1), rtol=0, atol=1e-13 * level
        )
        # Variance error ~ eps * (rows summed since the block anchor) * spread**2.
        spread = x[:, col].std()
        want = windows[:, col].var(-1)
        np.testing.assert_allclose(var[window - 1 :, col], want, rtol=1e-9, atol=1e-11 * spread**2)


def test_rolling_var_stable_at_high_level_over_many_bars() -> None:
    """Naive cumsum of squares would lose every digit here (level 1e6, spread 1e-3)."""
    rng = np.random.default_rng(7)
    n = 300_000
    x = 1e6 + rng.normal(0, 1e-3, n) + np.linspace(0, 50, n)
    _, var = rolling_mean_var(x, 24)
    idx = rng.choice(np.arange(23, n), 2000, replace=False)
    want = np.array([x[i - 23 : i + 1].var() for i in idx])
    # Two-pass on 24 values around 1e6 itself carries ~1e-10 absolute error on spread 1e-3.
    np.testing.assert_allclose(var[idx], want, rtol=1e-3)
    naive = np.cumsum(x * x)
    naive_sum = naive[idx] - naive[idx - 24]
    naive_mean = (np.cumsum(x)[idx] - np.cumsum(x)[idx - 24]) / 24
    naive_var = naive_sum / 24 - naive_mean**2
    assert np.max(np.abs(naive_var - want) / want) > 1.0  # the naive formula is useless here


def test_constant_series_has_zero_variance() -> None:
    mean, var = rolling_mean_var(np.full((3000, 1), 123.456), 20)
    assert (var[19:] == 0).all()
    np.testing.assert_allclose(mean[19:], 123.456, rtol=1e-15)


def test_log_return_and_true_range() -> None:
    c = np.array([1.0, 2.0, 4.0])
    np.testing.assert_array_equal(lag_log_return(c, 1), [np.nan, np.log(2.0), np.log(2.0)])
    np.testing.assert_array_equal(lag_log_return(c, 5), [np.nan] * 3)
    tr = true_range(np.array([2.0, 5.0]), np.array([1.0, 4.5]), np.array([1.5, 4.8]))
    np.testing.assert_allclose(tr, [1.0, 3.5])  # |5 - 1.5| beats 5 - 4.5


@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(1, 3000),
    window=st.integers(1, 1100),
    level=st.sampled_from([0.0, 1.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_rolling_moments_property(n_rows: int, window: int, level: float, seed: int) -> None:
    x = level + np.random.default_rng(seed).normal(0, 1, (n_rows, 2))
    mean, var = rolling_mean_var(x, window)
    assert mean.shape == var.shape == x.shape
    assert np.isnan(mean[: window - 1]).all()
    if n_rows >= window:
        windows = sliding_window_view(x, window, axis=0)
        np.testing.assert_allclose(mean[window - 1 :], windows.mean(-1), rtol=0, atol=1e-9)
        np.testing.assert_allclose(var[window - 1 :], windows.var(-1), rtol=1e-7, atol=1e-9)
        assert (var[window - 1 :] >= 0).all()


@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(1, 3000),
    alpha=st.floats(1e-4, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_ema_property(n_rows: int, alpha: float, seed: int) -> None:
    x = np.random.default_rng(seed).normal(0, 1, (n_rows, 1))
    np.testing.assert_allclose(ema(x, alpha), reference_ema(x, alpha, x[0]), rtol=0, atol=1e-10)
