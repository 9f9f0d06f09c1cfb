"""Property-based tests: random and adversarial bar streams never make the runner raise,
limits always hold on emitted orders, and every HOLD carries a reason."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.runner import HOLD, Fill, PolicyRunner, RiskLimits
from envs.execution import ExecutionConfig
from envs.features.pipeline import DEFAULT_FEATURES
from envs.features.scaling import StandardScaler


class _RandomPolicy:
    """A stand-in policy: any action in [-1.5, 1.5] (out of range on purpose) or NaN."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def decide(self, obs):
        if self.rng.random() < 0.05:
            return np.array([np.nan]), 0.5
        return self.rng.uniform(-1.5, 1.5, size=1), float(self.rng.random())


def _runner(seed: int, limits: RiskLimits) -> PolicyRunner:
    scaler = StandardScaler()
    scaler.center_ = np.zeros(len(DEFAULT_FEATURES))
    scaler.scale_ = np.ones(len(DEFAULT_FEATURES))
    return PolicyRunner(
        policy=_RandomPolicy(seed),
        action_mode="continuous",
        execution=ExecutionConfig(max_leverage=2.0, min_notional=5.0),
        scaler=scaler,
        window=4,
        limits=limits,
    )


_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=50.0, max_value=150.0),
    st.none(),
    st.text(max_size=3),
)


@st.composite
def _bars(draw):
    n = draw(st.integers(min_value=20, max_value=90))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    ts = 1_700_000_000_000_000_000
    price = 100.0
    bars = []
    for _ in range(n):
        kind = draw(st.sampled_from(["good"] * 6 + ["garbage", "dup", "back", "gap", "jump"]))
        step = 3_600_000_000_000
        if kind == "gap":
            step *= 20
        if kind == "back":
            step = -step
        if kind != "dup":
            ts += step
        price = max(1e-3, price * math.exp(rng.normal(0, 0.01)))
        close = price * (30.0 if kind == "jump" else 1.0)
        bar = {
            "timestamp": ts,
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": float(rng.uniform(0, 100)),
        }
        if kind == "garbage":
            field = draw(st.sampled_from(["open", "high", "low", "close", "volume", "timestamp"]))
            bar[field] = draw(_value)
        bars.append(bar)
    return bars


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bars=_bars(), seed=st.integers(0, 1000), fill_prob=st.floats(0.0, 1.0))
def test_no_exception_limits_hold_and_holds_have_reasons(bars, seed, fill_prob) -> None:
    limits = RiskLimits(
        max_position=30.0,
        max_notional=5_000.0,
        max_order_units=10.0,
        max_order_notional=2_000.0,
        min_trade_notional=20.0,
        confidence_threshold=0.1,
        max_drawdown=0.5,
    )
    runner = _runner(seed, limits)
    rng = np.random.default_rng(seed)
    for bar in bars:
        before = runner.position.copy()
        sig = runner.on_bar(bar)  # must never raise
        assert sig.reason
        if sig.side == HOLD:
            assert sig.size == 0.0
        for j, leg in enumerate(sig.legs):
            if leg.side == HOLD:
                continue
            q = leg.size if leg.side == "BUY" else -leg.size
            new = before[j] + q
            reducing = abs(new) < abs(before[j]) and np.sign(new) * np.sign(before[j]) >= 0
            assert leg.size <= limits.max_order_units + 1e-9
            assert leg.notional <= limits.max_order_notional + 1e-6
            assert leg.notional >= limits.min_trade_notional or new == 0.0
            if not reducing:
                assert abs(new) <= limits.max_position + 1e-9
                assert abs(new) * leg.reference_price <= limits.max_notional + 1e-6
            if rng.random() < fill_prob:
                runner.on_fill(Fill(leg.symbol, q, leg.reference_price, 0.1))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.dictionaries(st.text(max_size=8), _value, max_size=7),
        ),
        max_size=30,
    )
)
def test_arbitrary_objects_give_hold(objects) -> None:
    runner = _runner(0, RiskLimits())
    for obj in objects:
        sig = runner.on_bar(obj)
        assert sig.side == HOLD and sig.reason
