"""Constant-product pool maths: hand-computed values, invariants, optimality."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs import amm

reserves = st.floats(1e2, 1e7)
fees = st.sampled_from([0.0, 0.0005, 0.003, 0.01])


def test_amount_out_hand_computed():
    # x=1000, y=2_000_000, 0.3% fee, pay 10 X: out = 2e6*0.997*10/(1000 + 0.997*10)
    out = amm.amount_out(10.0, 1000.0, 2_000_000.0, 0.003)
    assert out == pytest.approx(19_940_000.0 / 1009.97, rel=1e-12)
    assert out == pytest.approx(19743.160687, rel=1e-9)
    # No fee: 1 in of (100, 100) gives 100/101.
    assert amm.amount_out(1.0, 100.0, 100.0, 0.0) == pytest.approx(100.0 / 101.0)


def test_amount_in_for_out_inverts_amount_out():
    dx = np.array([0.1, 1.0, 50.0, 400.0])
    out = amm.amount_out(dx, 1000.0, 2e6, 0.003)
    back = amm.amount_in_for_out(out, 1000.0, 2e6, 0.003)
    np.testing.assert_allclose(back, dx, rtol=1e-10)
    assert np.isinf(amm.amount_in_for_out(2e6, 1000.0, 2e6, 0.003))


def test_spot_and_price_impact():
    assert amm.spot_price(1000.0, 2.5e6) == pytest.approx(2500.0)
    # Impact = fee/g + a/r_in: 0.003/0.997 + 10/1000.
    assert amm.price_impact(10.0, 1000.0, 2e6, 0.003) == pytest.approx(0.003 / 0.997 + 0.01)
    eff = amm.effective_price(10.0, 1000.0, 2e6, 0.003)  # X per Y paid per unit out
    spot_in_per_out = 1000.0 / 2e6
    assert eff / spot_in_per_out - 1 == pytest.approx(0.003 / 0.997 + 0.01, rel=1e-9)


def test_optimal_buy_x_hand_computed():
    # Pool price 2500 (x=1000, y=2.5e6), no fee, reference 2600:
    # dy* = sqrt(2600*1000*2.5e6) - 2.5e6 = sqrt(6.5e12) - 2.5e6.
    dy, dx, profit = amm.optimal_buy_x(1000.0, 2.5e6, 0.0, 2600.0)
    assert dy == pytest.approx(np.sqrt(6.5e12) - 2.5e6, rel=1e-12)
    assert dx == pytest.approx(1000.0 * dy / (2.5e6 + dy), rel=1e-12)
    assert profit == pytest.approx(2600.0 * dx - dy, rel=1e-12)
    # After the trade the pool's marginal price equals the reference (no fee).
    assert (2.5e6 + dy) / (1000.0 - dx) == pytest.approx(2600.0, rel=1e-9)


def test_no_opportunity_inside_the_fee_band():
    # Price 2500, fee 0.3%: references within the band give nothing in either direction.
    for p in (2495.0, 2500.0, 2505.0):
        assert amm.optimal_buy_x(1000.0, 2.5e6, 0.003, p)[2] == 0.0
        assert amm.optimal_sell_x(1000.0, 2.5e6, 0.003, p)[2] == 0.0
    assert amm.optimal_buy_x(1000.0, 2.5e6, 0.003, 2600.0)[2] > 0
    assert amm.optimal_sell_x(1000.0, 2.5e6, 0.003, 2400.0)[2] > 0


@settings(max_examples=200, deadline=None)
@given(x=reserves, y=reserves, fee=fees, frac=st.floats(1e-6, 0.9))
def test_k_never_decreases_and_round_trip_never_profits(x, y, fee, frac):
    dx = frac * x
    x1, y1, out = amm.swap_reserves(dx, x, y, fee)
    assert x1 * y1 >= x * y * (1 - 1e-12)
    # Sell the Y back: never more X than we started with (no free money).
    x2_in_y, x2, back = amm.swap_reserves(out, y1, x1, fee)
    assert back <= dx * (1 + 1e-12)
    assert x2 * x2_in_y >= x1 * y1 * (1 - 1e-12)


@settings(max_examples=200, deadline=None)
@given(
    x=st.floats(10, 1e5),
    fee=fees,
    gap=st.floats(-0.2, 0.2),
)
def test_optimal_sizes_beat_their_neighbours(x, fee, gap):
    y = x * 2500.0
    p = 2500.0 * (1 + gap)
    _, dxb, pb = amm.optimal_buy_x(x, y, fee, p)
    dxs, _, ps = amm.optimal_sell_x(x, y, fee, p)
    for dx, profit, fn in ((dxb, pb, amm.arb_buy_x_profit), (dxs, ps, amm.arb_sell_x_profit)):
        if profit <= 0:
            continue
        assert fn(dx, x, y, fee, p) == pytest.approx(profit, rel=1e-9, abs=1e-9)
        for eps in (1e-4, 1e-2, 0.1):
            for nb in (dx * (1 - eps), dx * (1 + eps)):
                assert fn(nb, x, y, fee, p) <= profit * (1 + 1e-9) + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    xa=st.floats(10, 1e5),
    xb=st.floats(10, 1e5),
    fa=fees,
    fb=fees,
    gap=st.floats(-0.1, 0.1),
)
def test_two_pool_optimum_beats_neighbours(xa, xb, fa, fb, gap):
    ya, yb = xa * 2500.0, xb * 2500.0 * (1 + gap)
    _dy, dx, profit = amm.optimal_two_pool(xa, ya, fa, xb, yb, fb)
    if profit <= 0:
        assert dx == 0.0
        # No profitable size on a grid either.
        grid = np.linspace(1e-6, 0.5, 50) * min(xa, xb)
        assert np.all(amm.two_pool_profit(grid, xa, ya, fa, xb, yb, fb) <= 1e-6 * ya)
        return
    assert amm.two_pool_profit(dx, xa, ya, fa, xb, yb, fb) == pytest.approx(profit, rel=1e-7)
    for eps in (1e-3, 1e-2, 0.1):
        for nb in (dx * (1 - eps), dx * (1 + eps)):
            assert amm.two_pool_profit(nb, xa, ya, fa, xb, yb, fb) <= profit * (1 + 1e-9) + 1e-9


def test_two_pool_matches_brute_force():
    xa, ya, fa = 1000.0, 2.5e6, 0.0005
    xb, yb, fb = 400.0, 400.0 * 2600.0, 0.003
    _, dx, profit = amm.optimal_two_pool(xa, ya, fa, xb, yb, fb)
    grid = np.linspace(0.0, 40.0, 400_001)
    brute = amm.two_pool_profit(grid, xa, ya, fa, xb, yb, fb)
    assert dx == pytest.approx(grid[np.argmax(brute)], abs=2e-4)
    assert profit == pytest.approx(brute.max(), rel=1e-8)


def test_vectorised_over_pools():
    x = np.array([1000.0, 500.0, 2000.0])
    y = x * np.array([2500.0, 2550.0, 2450.0])
    f = np.array([0.0005, 0.003, 0.01])
    dy, dx, profit = amm.optimal_buy_x(x, y, f, 2600.0)
    for i in range(3):
        one = amm.optimal_buy_x(x[i], y[i], f[i], 2600.0)
        assert (dy[i], dx[i], profit[i]) == pytest.approx(tuple(float(v) for v in one))
