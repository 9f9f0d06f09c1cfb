"""Sizing and cost arithmetic of envs.execution on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from envs.errors import ConfigError
from envs.execution import (
    ActionError,
    ExecutionConfig,
    continuous_to_target,
    discrete_action_masks,
    discrete_to_target,
    holding_cost,
    order_costs,
    size_orders,
    validate_positions,
    weights_to_target,
)

FREE = ExecutionConfig(
    taker_fee=0, half_spread=0, impact_k=0, borrow_rate=0, margin_rate=0, rebalance_band=0
)


def test_size_orders_reaches_target_exposure() -> None:
    units = np.array([[0.0]])
    cash = np.array([1000.0])
    price = np.array([[50.0]])
    q = size_orders(np.array([[0.5]]), units, cash, price, FREE)
    assert q[0, 0] == pytest.approx(10.0)  # 0.5 * 1000 / 50


def test_lot_size_rounds_toward_zero_and_min_notional_drops() -> None:
    cfg = ExecutionConfig(lot_size=0.3, min_notional=100.0, rebalance_band=0.0)
    units, cash, price = np.zeros((1, 1)), np.array([1000.0]), np.array([[50.0]])
    q = size_orders(np.array([[0.5]]), units, cash, price, cfg)
    assert q[0, 0] == pytest.approx(9.9)  # 10 units rounded down to 33 lots of 0.3
    small = size_orders(np.array([[0.05]]), units, cash, price, cfg)  # 50 notional < 100
    assert small[0, 0] == 0.0


def test_flat_target_always_closes_and_band_skips_small_moves() -> None:
    cfg = ExecutionConfig(min_notional=1e9, rebalance_band=0.1)
    units, cash, price = np.array([[2.0]]), np.array([0.0]), np.array([[10.0]])
    assert size_orders(np.array([[0.0]]), units, cash, price, cfg)[0, 0] == -2.0
    assert size_orders(np.array([[0.95]]), units, cash, price, cfg)[0, 0] == 0.0


def test_nan_target_and_ruined_book_give_no_order() -> None:
    units, price = np.array([[1.0]]), np.array([[10.0]])
    assert size_orders(np.array([[np.nan]]), units, np.array([5.0]), price, FREE)[0, 0] == 0.0
    assert size_orders(np.array([[1.0]]), units, np.array([-20.0]), price, FREE)[0, 0] == 0.0


def test_order_costs_match_formulas() -> None:
    cfg = ExecutionConfig(taker_fee=0.001, half_spread=0.0005, impact_k=0.5)
    q = np.array([[-4.0, 1.0]])
    price = np.array([[100.0, 20.0]])
    sigma = np.array([[0.02, 0.01]])
    volume = np.array([[400.0, 100.0]])
    costs = order_costs(q, price, sigma, volume, cfg)
    notional = 400.0 + 20.0
    assert costs.notional[0] == pytest.approx(notional)
    assert costs.fee[0] == pytest.approx(0.001 * notional)
    assert costs.spread[0] == pytest.approx(0.0005 * notional)
    impact = 0.5 * 0.02 * np.sqrt(4 / 400) * 400 + 0.5 * 0.01 * np.sqrt(1 / 100) * 20
    assert costs.impact[0] == pytest.approx(impact)


def test_holding_cost_charges_shorts_and_borrowed_cash() -> None:
    cfg = ExecutionConfig(borrow_rate=0.1, margin_rate=0.2)
    units = np.array([[-2.0, 3.0]])
    price = np.array([[50.0, 10.0]])
    cost = holding_cost(units, np.array([-30.0]), price, 100.0, cfg)
    assert cost[0] == pytest.approx((0.1 * 100.0 + 0.2 * 30.0) / 100.0)
    assert holding_cost(-units, np.array([5.0]), price, 100.0, cfg)[0] == pytest.approx(0.03)


def test_discrete_mapping_masks_and_clip() -> None:
    positions = np.array([-1.0, 0.0, 1.0])
    long_only = ExecutionConfig(allow_short=False)
    assert discrete_action_masks(positions, long_only).tolist() == [False, True, True]
    assert discrete_action_masks(positions, ExecutionConfig()).all()
    # A masked short taken anyway goes flat (documented clip).
    assert discrete_to_target(np.array([0]), positions, long_only)[0, 0] == 0.0
    assert discrete_to_target(np.array([2]), positions, long_only)[0, 0] == 1.0
    for bad in (np.array([3]), np.array([-1]), np.array([np.nan]), np.array([0.5])):
        with pytest.raises(ActionError):
            discrete_to_target(bad, positions, long_only)


def test_continuous_clip_and_gross_cap() -> None:
    cfg = ExecutionConfig(max_leverage=2.0)
    out = continuous_to_target(np.array([[3.0, -0.5], [0.25, 0.5], [1.0, 1.0]]), cfg)
    np.testing.assert_allclose(out[0], [4 / 3, -2 / 3])  # clip 1, x2 -> [2, -1], gross 3 -> 2
    np.testing.assert_allclose(out[1], [0.5, 1.0])
    np.testing.assert_allclose(out[2], [1.0, 1.0])
    no_short = continuous_to_target(np.array([[-0.7]]), ExecutionConfig(allow_short=False))
    assert no_short[0, 0] == 0.0


def test_weights_projection() -> None:
    cfg = ExecutionConfig(allow_short=False)
    out = weights_to_target(np.array([[0.2, 0.2, 0.6], [0.0, 0.0, 0.0], [-1.0, 1.0, 1.0]]), cfg)
    np.testing.assert_allclose(out, [[0.2, 0.2], [0.0, 0.0], [0.0, 0.5]])
    short = weights_to_target(np.array([[-1.0, 1.0, 0.0]]), ExecutionConfig(max_leverage=2.0))
    np.testing.assert_allclose(short, [[-1.0, 1.0]])


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="taker_fee"):
        ExecutionConfig(taker_fee=-0.1)
    with pytest.raises(ConfigError, match="latency"):
        ExecutionConfig(latency=0)
    with pytest.raises(ConfigError, match="max_leverage"):
        validate_positions([-2.0, 0.0, 2.0], ExecutionConfig(max_leverage=1.0))
