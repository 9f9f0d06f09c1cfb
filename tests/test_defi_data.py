"""Seeded DeFi scenario generator: reproducibility, EIP-1559, correlations, validation."""

from __future__ import annotations

import numpy as np
import pytest

from envs.data.dataset import MarketDataset
from envs.data.defi import (
    DefiScenario,
    ScenarioParams,
    eip1559_next_base_fee,
    generate_scenario,
    reference_from_dataset,
)
from envs.errors import ConfigError, DataError


def _gen(seed: int, n: int = 3000, k: int = 2, **kw) -> DefiScenario:
    return generate_scenario(np.random.default_rng(seed), n, k, **kw)


def test_same_seed_same_scenario_and_shapes():
    a, b, c = _gen(1), _gen(1), _gen(2)
    for name in ("ref_price", "base_fee", "noise_flow", "lp_flow", "comp_u", "comp_z"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.ref_price, c.ref_price)
    assert a.noise_flow.shape == (3000, 2) and a.comp_u.shape == (3000, 3)
    assert len(a) == 3000 and a.n_pools == 2
    np.testing.assert_array_equal(a.native_price, a.ref_price)


def test_base_fee_follows_eip1559_exactly():
    s = _gen(3)
    p = ScenarioParams()
    nxt = np.maximum(
        eip1559_next_base_fee(s.base_fee[:-1], s.utilization[:-1]), p.min_base_fee_gwei
    )
    np.testing.assert_allclose(s.base_fee[1:], nxt, rtol=1e-12)
    # At most 12.5% per block.
    ratio = s.base_fee[1:] / s.base_fee[:-1]
    assert np.all((ratio >= 0.875 - 1e-12) & (ratio <= 1.125 + 1e-12))
    assert np.all((s.utilization >= 0) & (s.utilization <= 1))


def test_base_fee_level_and_spikes():
    s = _gen(4, n=20_000, k=1)
    med = np.median(s.base_fee)
    assert 10 < med < 50  # ~20 gwei by default
    assert s.base_fee.max() > 2.5 * med  # congestion spikes happen
    p = ScenarioParams()
    # Congestion is capped: the base fee settles near level * exp(max_congestion) at most.
    assert s.base_fee.max() < p.base_fee_gwei * np.exp(p.max_congestion) * 1.6


def test_fat_tailed_external_path_keeps_gas_bounded():
    # Hourly-like returns with jumps (t-distributed, 1% scale): relative volatility drives gas.
    rng = np.random.default_rng(0)
    rets = 0.01 * rng.standard_t(2.5, 5000)
    ref = 30_000 * np.exp(np.cumsum(rets))
    s = generate_scenario(np.random.default_rng(1), 5000, 1, ref_price=ref)
    p = ScenarioParams()
    assert 10 < np.median(s.base_fee) < 60
    assert s.base_fee.max() < p.base_fee_gwei * np.exp(p.max_congestion) * 1.6


def test_congestion_correlates_with_volatility():
    s = _gen(5, n=60_000, k=1)
    hi = s.volatility > np.median(s.volatility)
    assert s.base_fee[hi].mean() > s.base_fee[~hi].mean()


def test_reference_gbm_vol_matches_parameters():
    p = ScenarioParams(vol_of_vol=0.0)
    s = _gen(6, n=50_000, k=1, params=p)
    r = np.diff(np.log(s.ref_price))
    assert r.std() == pytest.approx(p.vol_per_block, rel=0.05)


def test_flows_are_bounded_and_lp_events_rare():
    s = _gen(7, n=20_000)
    assert np.all(np.abs(s.noise_flow) < 0.5)
    assert 0 < np.mean(s.lp_flow != 0) < 0.01
    assert np.all(s.lp_flow > -1)


def test_reference_path_from_dataset():
    n = 500
    close = 30_000 * np.exp(np.cumsum(np.full(n, 1e-4)))
    ohlcv = np.stack([close, close, close, close, np.ones(n)], axis=1)
    ds = MarketDataset(timestamps=np.arange(n) * 3_600_000_000_000, symbols=("BTC",), ohlcv=ohlcv)
    ref = reference_from_dataset(ds)
    np.testing.assert_allclose(ref, close)
    s = generate_scenario(np.random.default_rng(0), n, 1, ref_price=ref)
    np.testing.assert_allclose(s.ref_price, close)
    with pytest.raises(DataError, match="symbol"):
        reference_from_dataset(ds, "ETH")


def test_window_and_validation_errors():
    s = _gen(8, n=100, k=1)
    w = s.window(10, 30)
    assert len(w) == 20
    np.testing.assert_array_equal(w.base_fee, s.base_fee[10:30])
    with pytest.raises(DataError, match="window"):
        s.window(90, 120)
    bad = s.base_fee.copy()
    bad[5] = -1.0
    with pytest.raises(DataError, match=r"base_fee.*row 5"):
        DefiScenario(**{**s.__dict__, "base_fee": bad})
    with pytest.raises(DataError, match="noise_flow"):
        DefiScenario(**{**s.__dict__, "noise_flow": s.noise_flow[:, :0]})
    with pytest.raises(ConfigError, match="annual_vol"):
        ScenarioParams(annual_vol=0.0)
    with pytest.raises(ConfigError, match="n_steps"):
        generate_scenario(np.random.default_rng(0), 1)
