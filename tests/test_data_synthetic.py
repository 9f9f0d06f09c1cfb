"""Synthetic generators: reproducible by seed, consistent OHLCV, the claimed statistical shape."""

from __future__ import annotations

import numpy as np
import pytest

from envs.data import (
    gbm,
    jump_diffusion,
    ornstein_uhlenbeck,
    regime_switching,
    validate_dataset,
)
from envs.data.dataset import SECONDS_PER_YEAR
from envs.errors import ConfigError

GENERATORS = [gbm, regime_switching, jump_diffusion, ornstein_uhlenbeck]
DT_HOUR = 3600.0 / SECONDS_PER_YEAR


def _log_returns(close: np.ndarray) -> np.ndarray:
    return np.diff(np.log(close), axis=0)


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda g: g.__name__)
def test_same_seed_same_data_other_seed_other_data(gen) -> None:
    a, b, c = gen(500, seed=7), gen(500, seed=7), gen(500, seed=8)
    np.testing.assert_array_equal(a.ohlcv, b.ohlcv)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert not np.array_equal(a.ohlcv, c.ohlcv)


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda g: g.__name__)
def test_bars_are_consistent(gen) -> None:
    ds = gen(5000, seed=1)
    validate_dataset(ds)  # finite, positive, low <= open/close <= high, increasing time
    o, h, lo, c, v = (ds.ohlcv[:, 0, j] for j in range(5))
    assert np.all(h >= np.maximum(o, c)) and np.all(lo <= np.minimum(o, c))
    assert np.all(v > 0)
    # open = previous close plus a small gap (noise is 5% of a bar's volatility by default)
    gap = np.log(o[1:] / c[:-1])
    assert np.abs(gap).max() < 0.5 * np.abs(_log_returns(c)).max()
    # volume rises with |return|
    assert np.corrcoef(np.abs(_log_returns(c)), v[1:])[0, 1] > 0.3
    assert ds.bar_seconds == 3600.0


def test_gbm_drift_and_volatility_estimates() -> None:
    mu, sigma, n = 0.3, 0.4, 100_000
    r = _log_returns(gbm(n, seed=3, mu=mu, sigma=sigma).close[:, 0])
    sigma_hat = r.std(ddof=1) / np.sqrt(DT_HOUR)
    # Sampling error of a variance estimate is sqrt(2/n) relative: 0.45% here; allow 2%.
    assert sigma_hat == pytest.approx(sigma, rel=0.02)
    mean_per_bar = (mu - 0.5 * sigma**2) * DT_HOUR
    se = r.std(ddof=1) / np.sqrt(r.size)
    assert abs(r.mean() - mean_per_bar) < 4 * se


def test_multi_asset_gbm_correlation() -> None:
    corr = np.array([[1.0, 0.8, -0.3], [0.8, 1.0, 0.0], [-0.3, 0.0, 1.0]])
    ds = gbm(20_000, seed=4, correlation=corr, sigma=[0.3, 0.5, 0.8])
    assert ds.symbols == ("GBM0", "GBM1", "GBM2") and ds.ohlcv.shape == (20_000, 3, 5)
    est = np.corrcoef(_log_returns(ds.close).T)
    np.testing.assert_allclose(est, corr, atol=0.03)
    vols = _log_returns(ds.close).std(axis=0) / np.sqrt(DT_HOUR)
    np.testing.assert_allclose(vols, [0.3, 0.5, 0.8], rtol=0.04)


def test_regime_labels_and_volatile_regime_is_most_volatile() -> None:
    ds = regime_switching(40_000, seed=5)
    assert ds.regime_names == ("bull", "bear", "ranging", "volatile")
    assert ds.regimes is not None and ds.regimes.shape == (40_000,)
    assert set(np.unique(ds.regimes)) == {0, 1, 2, 3}
    r = _log_returns(ds.close[:, 0])
    labels = ds.regimes[1:]
    vol = {name: r[labels == k].std() for k, name in enumerate(ds.regime_names)}
    assert vol["volatile"] > 1.5 * max(vol["bull"], vol["bear"], vol["ranging"])
    assert vol["ranging"] < min(vol["bull"], vol["bear"])
    # Sticky chain: mean run length near 1 / (1 - 0.995) = 200 bars.
    switches = np.count_nonzero(np.diff(ds.regimes))
    assert 100 < 40_000 / (switches + 1) < 400


def test_regime_switching_custom_chain_and_errors() -> None:
    ds = regime_switching(
        300, seed=1, regimes={"calm": (0.0, 0.1), "storm": (0.0, 2.0)}, initial_regime="storm"
    )
    assert ds.regime_names == ("calm", "storm") and ds.regimes[0] == 1
    with pytest.raises(ConfigError, match="transition must be a"):
        regime_switching(100, seed=1, transition=[[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ConfigError, match="initial_regime"):
        regime_switching(100, seed=1, initial_regime="sideways")


def test_jumps_give_excess_kurtosis() -> None:
    def excess_kurtosis(x: np.ndarray) -> float:
        z = x - x.mean()
        return float((z**4).mean() / (z**2).mean() ** 2 - 3.0)

    jumpy = _log_returns(jump_diffusion(50_000, seed=6).close[:, 0])
    plain = _log_returns(jump_diffusion(50_000, seed=6, jump_intensity=0.0).close[:, 0])
    assert excess_kurtosis(jumpy) > 3.0
    assert abs(excess_kurtosis(plain)) < 0.3


def test_ou_log_price_reverts() -> None:
    theta = 50.0
    x = np.log(ornstein_uhlenbeck(30_000, seed=9, theta=theta, mean_price=100.0).close[:, 0])
    xc = x - x.mean()
    phi_hat = float(xc[1:] @ xc[:-1] / (xc[:-1] @ xc[:-1]))  # AR(1) OLS coefficient
    phi = np.exp(-theta * DT_HOUR)  # 0.9943
    se = np.sqrt((1 - phi**2) / x.size)
    assert phi_hat < 1 - 5 * se  # clearly below a unit root
    assert abs(phi_hat - phi) < 5 * se + 2 / x.size  # plus OLS small-sample bias
    assert abs(np.exp(x.mean()) / 100.0 - 1) < 0.05
    # a random walk with the same volatility wanders much further from its start
    walk = np.log(gbm(30_000, seed=9, mu=0.0, sigma=0.3).close[:, 0])
    assert np.std(x) < np.std(walk)


def test_timestamps_start_and_bar_size() -> None:
    ds = gbm(10, seed=0, bar_seconds=60, start="2024-02-01T00:00:00Z")
    assert str(np.datetime64(int(ds.timestamps[0]), "ns")) == "2024-02-01T00:00:00.000000000"
    assert ds.bar_seconds == 60.0


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: gbm(1, seed=0), "n_bars"),
        (lambda: gbm(10, seed=0, sigma=-0.1), "sigma"),
        (lambda: gbm(10, seed=0, correlation=[[1, 2], [2, 1]]), "correlation"),
        (lambda: gbm(10, seed=0, correlation=[[1, 0.9, 0.9], [0.9, 1, -0.9], [0.9, -0.9, 1]]),
         "positive semi-definite"),
        (lambda: gbm(10, seed=0, n_assets=2, symbols=["A", "B", "C"]), "inconsistent"),
        (lambda: ornstein_uhlenbeck(10, seed=0, theta=0), "theta"),
        (lambda: jump_diffusion(10, seed=0, jump_std=-1), "jump_std"),
        (lambda: gbm(10, seed=0, start="not a date"), "start"),
    ],
)  # fmt: skip
def test_bad_parameters_raise_config_error(call, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        call()
