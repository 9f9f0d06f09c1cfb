"""ArbitrageRunner: env-identical observations along replayed episodes, backtest equals the env's
evaluation, venue legs, inventory, limits and bad snapshots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runner import train_run  # tests/ is on sys.path (rootdir-relative, no package)

from agents.backtest import (
    arbitrage_snapshot,
    run_arbitrage_backtest,
    save_arbitrage_chart,
)
from agents.runner import (
    BUY,
    HOLD,
    SELL,
    ArbitrageRunner,
    Fill,
    PolicyRunner,
    RiskLimits,
    SnapshotGuards,
)
from envs.arbitrage_env import ArbitrageEnv, build_config
from envs.errors import ConfigError


def _train_arb(run_dir: Path, agent: str, extra: list[str]) -> Path:
    overrides = [
        f"agent={agent}",
        "env=arbitrage",
        "total_timesteps=80",
        "eval_every=0",
        "eval_episodes=1",
        "test_episodes=1",
        "progress=false",
        "device=cpu",
        "env.kwargs.episode_length=40",
        *extra,
    ]
    return train_run(run_dir, overrides)


@pytest.fixture(scope="module")
def sac_arb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_arb(
        tmp_path_factory.mktemp("sac_arb"),
        "sac",
        ["agent.params.learning_starts=40", "agent.params.batch_size=16"],
    )


@pytest.fixture(scope="module")
def q_arb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_arb(tmp_path_factory.mktemp("q_arb"), "qlearning", [])


def _env_episode(runner: ArbitrageRunner, seed: int) -> tuple[int, float, int]:
    """Replay one env episode's snapshots; the runner's observation must equal the env's."""
    env = ArbitrageEnv(**runner.env_kwargs)
    obs, _ = env.reset(seed=seed)
    runner.reset()
    scen, state = env.scenario_batch, env.state
    for row in range(int(state.row0[0])):
        sig = runner.on_snapshot(arbitrage_snapshot(scen, state, row))
        assert sig.is_hold and sig.reason.startswith("warming up")
    prev, steps, trades = None, 0, 0
    while True:
        row = int(state.row0[0] + state.t[0])
        sig = runner.on_snapshot(arbitrage_snapshot(scen, state, row, prev))
        assert np.array_equal(runner.last_observation, obs), f"observation differs at {row}"
        action = runner.agent.act(obs, deterministic=True)
        assert sig.action == tuple(np.asarray(action, dtype=float).ravel().tolist())
        size, tip = runner.decode(action)
        assert np.array_equal(runner.slot_sizes(sig), size)
        assert sig.priority_fee_gwei == (tip if np.any(size != 0) else 0.0)
        trades += int(np.count_nonzero(size))
        prev = float(state.comp_rate[0])
        obs, _, _, truncated, info = env.step(action)
        runner.sync_inventory(state.bal[0], state.transit[0])
        steps += 1
        if truncated:
            return steps, info["episode"]["total_profit"], trades


@pytest.mark.parametrize("run", ["sac_arb", "q_arb"])
def test_observations_bit_identical_and_backtest_equals_env(
    run: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    runner = PolicyRunner.from_run(request.getfixturevalue(run), device="cpu")
    assert isinstance(runner, ArbitrageRunner)
    profits = []
    for seed in (20_000, 20_001):
        steps, profit, _ = _env_episode(runner, seed)
        assert steps == runner.env_kwargs["episode_length"]
        profits.append(profit)
    result = run_arbitrage_backtest(runner, [20_000, 20_001])
    assert [e["total_profit"] for e in result.episodes] == profits
    assert set(result.metrics) == {runner.config["agent"]["name"], "threshold", "oracle"}
    assert result.metrics["oracle"]["share_of_oracle"] == pytest.approx(1.0, abs=1e-6)
    # The runner's episodes are scored against the same oracle replay as the baselines.
    name = runner.config["agent"]["name"]
    assert result.metrics[name]["oracle_profit"] == pytest.approx(
        result.metrics["oracle"]["oracle_profit"], rel=1e-9
    )
    assert len(result.profit_curves) == 2 and result.profit_curves[0][-1] == pytest.approx(
        profits[0]
    )
    assert '"share_of_oracle"' in result.to_json()
    assert save_arbitrage_chart(result, tmp_path / "arb.png").stat().st_size > 1000


def _snap(**over: object) -> dict:
    snap = {
        "timestamp": 0,
        "ref_price": 2500.0,
        "spread": 1e-4,
        "base_fee": 20.0,
        "utilization": 0.5,
        "native_price": 2500.0,
        "reserves": [[10_000.0, 25_400_000.0]],  # pool 1.6% above the CEX: sell base to it
    }
    snap.update(over)
    return snap


class FixedPolicy:
    def __init__(self, action: list[float], confidence: float = 0.9) -> None:
        self.action = np.asarray(action, dtype=np.float32)
        self.confidence = confidence

    def decide(self, obs: object) -> tuple[np.ndarray, float]:
        return self.action, self.confidence


def _warm(runner: ArbitrageRunner, n: int | None = None) -> int:
    n = runner.cfg.gas_window if n is None else n
    for i in range(n):
        assert runner.on_snapshot(_snap(timestamp=i * 12_000_000_000, block=i)).is_hold
    return n


def test_signal_has_venue_legs_profit_and_bid() -> None:
    runner = ArbitrageRunner(policy=FixedPolicy([-0.5, 0.25]), cfg=build_config())
    n = _warm(runner)
    sig = runner.on_snapshot(_snap(timestamp=n * 12_000_000_000, block=n))
    assert sig.side == SELL and sig.symbol == "pool0" and sig.size == pytest.approx(10.0)
    (pool, cex) = sig.legs
    assert (pool.symbol, pool.side, cex.symbol, cex.side) == ("pool0", SELL, "cex", BUY)
    assert pool.size == cex.size == sig.size
    assert pool.reference_price > cex.reference_price  # sells dearer to the pool than buys
    assert sig.priority_fee_gwei == pytest.approx(0.25 * runner.cfg.max_priority_fee_gwei)
    gas = runner.cfg.gas_units * (20.0 + sig.priority_fee_gwei) * 1e-9 * 2500.0
    assert sig.gas_cost == pytest.approx(gas)
    gross = pool.notional - cex.notional
    assert sig.expected_profit == pytest.approx(gross - gas)
    # The fills come back: inventory moves by the legs (gas paid from the DEX quote balance).
    before = runner.inventory
    runner.on_fill(Fill("pool0", -pool.size, pool.reference_price, cost=gas))
    runner.on_fill(Fill("cex", cex.size, cex.reference_price))
    after = runner.inventory
    assert after[2] == pytest.approx(before[2] - 10.0) and after[0] == pytest.approx(before[0] + 10)
    assert after[3] == pytest.approx(before[3] + pool.notional - gas)
    assert after[1] == pytest.approx(before[1] - cex.notional)
    with pytest.raises(ConfigError, match="unknown venue"):
        runner.on_fill(Fill("pool7", 1.0, 1.0))


def test_never_sells_what_it_does_not_hold() -> None:
    runner = ArbitrageRunner(policy=FixedPolicy([-1.0, 0.0]), cfg=build_config())
    runner.reset(balances=(100.0, 250_000.0, 3.0, 250_000.0))  # only 3 base on the DEX side
    n = _warm(runner)
    sig = runner.on_snapshot(_snap(timestamp=n * 12_000_000_000, block=n))
    assert sig.side == SELL and sig.size == pytest.approx(3.0)
    runner.sync_inventory((100.0, 250_000.0, 0.0, 250_000.0))
    sig = runner.on_snapshot(_snap(timestamp=(n + 1) * 12_000_000_000, block=n + 1))
    assert sig.is_hold and sig.legs == () and "no trade" in sig.reason


def test_limits_cut_hold_and_threshold() -> None:
    cfg = build_config()
    cut = ArbitrageRunner(
        policy=FixedPolicy([-0.5, 0.1]), cfg=cfg, limits=RiskLimits(max_order_units=4.0)
    )
    n = _warm(cut)
    sig = cut.on_snapshot(_snap(timestamp=n * 12_000_000_000, block=n))
    assert sig.size == pytest.approx(4.0) and "order limit" in sig.reason
    picky = ArbitrageRunner(
        policy=FixedPolicy([-0.5, 1.0]), cfg=cfg, limits=RiskLimits(min_expected_profit=1e6)
    )
    _warm(picky)
    sig = picky.on_snapshot(_snap(timestamp=n * 12_000_000_000, block=n))
    assert sig.is_hold and "expected profit" in sig.reason
    shy = ArbitrageRunner(
        policy=FixedPolicy([-0.5, 0.1], 0.2), cfg=cfg, limits=RiskLimits(confidence_threshold=0.5)
    )
    _warm(shy)
    sig = shy.on_snapshot(_snap(timestamp=n * 12_000_000_000, block=n))
    assert sig.is_hold and "below threshold" in sig.reason


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"ref_price": float("nan")}, "'ref_price' is nan"),
        ({"reserves": [[0.0, 2.5e6]]}, "reserves must be finite and > 0"),
        ({"reserves": [[1000.0, -1.0]]}, "reserves must be finite and > 0"),
        ({"reserves": [[1.0, 2.0, 3.0]]}, "(base, quote) pairs"),
        ({"base_fee": None}, "missing field 'base_fee'"),
        ({"base_fee": "x"}, "not a number"),
        ({"timestamp": None}, "missing field 'timestamp'"),
        ({"block": 3}, "out-of-order"),
        ({"block": 4}, "duplicate"),
        ({"ref_price": 9000.0}, "absurd price"),
    ],
)
def test_bad_snapshots_hold_with_a_reason_and_are_not_ingested(bad: dict, reason: str) -> None:
    runner = ArbitrageRunner(policy=FixedPolicy([-0.5, 0.1]), cfg=build_config())
    _warm(runner, 5)
    sig = runner.on_snapshot(_snap(**{"timestamp": 10**12, "block": 5, **bad}))
    assert sig.is_hold and reason in sig.reason, sig.reason
    assert runner.snapshots_seen == 5


def test_stale_and_gap_snapshots_hold() -> None:
    runner = ArbitrageRunner(
        policy=FixedPolicy([-0.5, 0.1]), cfg=build_config(), guards=SnapshotGuards(stale_seconds=30)
    )
    n = _warm(runner)
    sig = runner.on_snapshot(_snap(timestamp=n * 12_000_000_000, block=n), now=n * 12 + 60.0)
    assert sig.is_hold and sig.reason.startswith("stale data")
    sig = runner.on_snapshot(_snap(timestamp=(n + 5) * 12_000_000_000, block=n + 5))
    assert sig.is_hold and sig.reason.startswith("gap")
    assert not runner.on_snapshot(_snap(timestamp=(n + 6) * 12_000_000_000, block=n + 6)).is_hold


def test_from_run_refuses_market_options_for_arbitrage(q_arb: Path) -> None:
    with pytest.raises(ConfigError, match="takes no symbols"):
        PolicyRunner.from_run(q_arb, device="cpu", symbols=("a",))


finite = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(-2, 3),
            st.one_of(st.floats(1000, 4000), finite),
            st.one_of(st.floats(1, 2000), finite),
            st.one_of(st.floats(0.01, 100), finite),
            st.floats(-1, 1),
            st.floats(0, 1),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_random_snapshot_streams_never_raise_and_respect_inventory(stream: list) -> None:
    policy = FixedPolicy([0.0, 0.0])
    runner = ArbitrageRunner(policy=policy, cfg=build_config(gas_window=2))
    runner.reset(balances=(2.0, 5000.0, 1.0, 5000.0))
    block = 0
    for step, price, base, fee, size, tip in stream:
        block += step
        policy.action = np.array([size, tip], dtype=np.float32)
        bal = runner.inventory
        sig = runner.on_snapshot(
            _snap(
                timestamp=block,
                block=block,
                ref_price=price,
                base_fee=fee,
                reserves=[[base, base * (price if math.isfinite(price) else 1.0) * 1.003]],
            )
        )
        assert sig.reason
        for leg in sig.legs:
            assert leg.size >= 0 and math.isfinite(leg.size)
            if leg.side == SELL:
                held = bal[0] if leg.symbol == "cex" else bal[2]
                assert leg.size <= held + 1e-9, (leg, bal)
        if sig.side == HOLD:
            assert not sig.legs


@pytest.mark.parametrize("mode", ["dex_dex", "cex_dex"])
def test_threshold_rule_through_the_runner_equals_the_env(mode: str) -> None:
    """The deployable threshold baseline, run on the runner's observations, earns exactly what
    it earns in the env (both modes; the runner passes itself as the env: cfg and builder)."""
    from envs.arbitrage_baselines import ThresholdPolicy

    rule = ThresholdPolicy()
    kwargs = {"mode": mode, "episode_length": 60, "flatten": True}
    runner = ArbitrageRunner(policy=None, cfg=build_config(mode), flatten=True)
    runner.policy = type("P", (), {"decide": lambda self, obs: (rule(obs, runner), 1.0)})()
    runner.env_kwargs = kwargs
    result = run_arbitrage_backtest(runner, [7, 8], baselines=False)
    env = ArbitrageEnv(**kwargs)
    for seed, episode in zip((7, 8), result.episodes, strict=True):
        obs, _ = env.reset(seed=seed)
        truncated = False
        while not truncated:
            obs, _, _, truncated, info = env.step(rule(obs, env))
        assert episode["total_profit"] == info["episode"]["total_profit"]
        assert episode["gas_spent"] == info["episode"]["gas_spent"]
    assert sum(e["trades"] for e in result.episodes) > 0
    legs = [leg.symbol for s in result.signals for leg in s.legs]
    assert legs and set(legs) <= set(runner.venues)
