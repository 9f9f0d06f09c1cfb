"""ArbitrageRunner with predictor blocks: a tiny ``agent=sac env=arbitrage predictor=[gas]`` run,
replayed bar by bar against the env whose gas block is the provider's walk-forward over the
held-out rows of the run's fixed scenario."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runner_arbitrage import _train_arb  # tests/ is on sys.path (rootdir-relative)

from agents.backtest import (
    arbitrage_snapshot,
    episode_start_row,
    priming_snapshot,
    run_arbitrage_backtest,
)
from agents.predictor_blocks import arbitrage_scenario
from agents.runner import ArbitrageRunner, PolicyRunner
from agents.runner.arb_predictors import OnlineDefiPredictor, feature_lookback
from envs.arbitrage_env import ArbitrageEnv, build_config
from envs.errors import DataError
from predictors.base import load_predictor
from predictors.provider import WalkForwardProvider

SIZES = {"train_blocks": 700, "val_blocks": 300, "test_blocks": 200}


@pytest.fixture(scope="module")
def gas_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_arb(
        tmp_path_factory.mktemp("sac_arb_gas"),
        "sac",
        [
            "predictor=[gas]",
            "agent.params.learning_starts=40",
            "agent.params.batch_size=16",
            "predictors.gas.model.max_epochs=1",
            "predictors.gas.model.max_fit_seconds=5",
            "predictors.gas.provider.update_every=16",  # several online updates per episode
            *(f"arbitrage_scenario.{k}={v}" for k, v in SIZES.items()),
        ],
    )


def _env_with_walked_blocks(runner: ArbitrageRunner) -> tuple[ArbitrageEnv, object, dict]:
    """The test env of the run, its gas block walked from the saved predictor over the held-out
    rows exactly as ``WalkForwardProvider`` walks them in training (chunks from the first
    validation row, predict then learn)."""
    cfg = runner.config
    scenario, rows = arbitrage_scenario(runner.cfg.n_pools, cfg["arbitrage_scenario"], cfg["seed"])
    b = rows["val"][0]
    lo, hi = rows["test"]
    pred = load_predictor(Path(runner.run_dir) / "predictors" / "gas", device="cpu")
    series = pred.prepare(scenario.base_fee)
    provider = WalkForwardProvider(pred, name="gas", online=True, update_every=16)
    n = len(scenario)
    out = np.zeros((n, len(pred.block_columns())))
    valid = np.zeros(n, dtype=bool)
    # The very call training makes for the rows after the fit range (WalkForwardProvider.blocks
    # with fit_range=(a, b): a copy of the fitted predictor walks [b, n) over the whole series).
    updates = provider._walk(pred, series.features, series.targets, b, n, out, valid)
    assert updates >= 10 and not valid[b - 1] and valid[b:].all()
    names = provider.column_names()
    full = np.concatenate([out, valid[:, None]], axis=1).astype(np.float32)
    env = ArbitrageEnv(
        scenario=scenario.window(lo, hi),
        predictor_blocks={"pred_gas": full[lo:hi]},
        predictor_columns={"pred_gas": list(names)},
        **runner.env_kwargs,
    )
    return env, scenario, {"b": b, "lo": lo, "names": list(names)}


def test_gas_run_observations_and_actions_equal_the_env(gas_run: Path) -> None:
    runner = PolicyRunner.from_run(gas_run, device="cpu")
    assert isinstance(runner, ArbitrageRunner)
    source = runner.predictors["pred_gas"]
    assert source.update_every == 16 and source.online
    assert source.warmup == feature_lookback(source.predictor) + source.window - 1 + source.delay
    env, scenario, where = _env_with_walked_blocks(runner)
    assert source.columns == where["names"]
    pred_slice = runner.builder.flat_slices["pred_gas"]
    rest = np.ones(runner.builder.flat_dim, dtype=bool)
    rest[pred_slice] = False
    compared, profits = 0, []
    for seed in (20_000, 20_001):
        obs, _ = env.reset(seed=seed)
        scen, state = env.scenario_batch, env.state
        first = where["lo"] + episode_start_row(scenario, where["lo"], scen)
        runner.reset()
        # History before the episode: the held-out rows from (b - warm-up) on, as a live bot
        # would have fed them; then the episode's rows through on_snapshot.
        for row in range(where["b"] - source.warmup, first):
            assert runner.feed_predictors(priming_snapshot(scenario, row)) is None
        assert runner.predictor_warmup == 0
        runner.reset(predictors=False)
        for row in range(int(state.row0[0])):
            assert runner.on_snapshot(arbitrage_snapshot(scen, state, row)).is_hold
        prev = None
        while True:
            row = int(state.row0[0] + state.t[0])
            sig = runner.on_snapshot(arbitrage_snapshot(scen, state, row, prev))
            got = runner.last_observation
            assert got is not None, sig.reason
            # Everything but the predictor block is bit-identical; the block equals the
            # provider's batched walk up to float rounding (features from a 97-row buffer
            # instead of cumulative sums over the whole scenario; one row instead of a chunk).
            assert np.array_equal(got[rest], obs[rest]), f"observation differs at {row}"
            np.testing.assert_allclose(got[pred_slice], obs[pred_slice], rtol=1e-5, atol=1e-6)
            assert got[pred_slice][-1] == 1.0
            action = np.asarray(runner.agent.act(obs, deterministic=True), dtype=float)
            np.testing.assert_allclose(np.asarray(sig.action), action.ravel(), atol=1e-5)
            compared += 1
            runner.maintain()
            prev = float(state.comp_rate[0])
            obs, _, _, truncated, info = env.step(action)
            runner.sync_inventory(state.bal[0], state.transit[0])
            if truncated:
                profits.append(info["episode"]["total_profit"])
                break
    assert compared == 2 * runner.env_kwargs["episode_length"]
    assert source.updates >= 2  # online updates happened inside the compared rows
    # The backtest replays the same test episodes with the same priming, through the runner.
    result = run_arbitrage_backtest(runner, [20_000, 20_001])
    got = [e["total_profit"] for e in result.episodes]
    np.testing.assert_allclose(got, profits, rtol=1e-6, atol=1e-6)
    assert result.metrics["oracle"]["share_of_oracle"] == pytest.approx(1.0, abs=1e-6)
    name = runner.config["agent"]["name"]
    assert result.metrics[name]["oracle_profit"] == pytest.approx(
        result.metrics["oracle"]["oracle_profit"], rel=1e-9
    )


def test_gas_run_holds_until_predictors_are_warm(gas_run: Path) -> None:
    runner = PolicyRunner.from_run(gas_run, device="cpu")
    env, _, _ = _env_with_walked_blocks(runner)
    env.reset(seed=20_000)
    scen, state = env.scenario_batch, env.state
    runner.reset()
    sig = None
    for row in range(int(state.row0[0]) + 3):
        sig = runner.on_snapshot(arbitrage_snapshot(scen, state, row))
    assert sig is not None and sig.is_hold and "warming up predictors" in sig.reason
    assert runner.predictor_warmup > 0


def test_online_predictor_updates_only_in_maintain(gas_run: Path) -> None:
    pred = load_predictor(Path(gas_run) / "predictors" / "gas", device="cpu")
    source = OnlineDefiPredictor(pred, "gas", "defi_gas", update_every=4)
    fee = 20.0 * np.exp(0.05 * np.sin(np.arange(source.warmup + 12) / 5.0))
    rows = [source.push(np.array([f])) for f in fee]
    assert all(r[-1] == 0.0 for r in rows[: source.warmup])
    assert all(r[-1] == 1.0 for r in rows[source.warmup :])
    assert source.update_pending and source.updates == 2  # 3 chunks closed, 2 run by push
    assert source.maintain() and not source.update_pending and source.updates == 3
    assert not source.maintain()


def test_missing_predictor_files_are_data_errors(gas_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(gas_run, copy)
    shutil.rmtree(copy / "predictors" / "gas")
    with pytest.raises(DataError, match="gas"):
        PolicyRunner.from_run(copy, device="cpu")


def test_liquidity_predictor_reads_pool_reserves_and_volumes() -> None:
    """A liquidity block (inputs ``defi_liquidity``): rows from the snapshot's pool reserves and
    ``volumes``; a snapshot without volumes is held with a reason naming the field."""
    from test_runner_arbitrage import FixedPolicy, _snap

    from agents.runner.arbitrage import ArbitrageRunner
    from envs.arbitrage_env import build_config
    from predictors.base import SeriesData
    from predictors.liquidity import LiquidityPredictor

    rng = np.random.default_rng(0)
    n = 400
    x = 10_000.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    y = x * 2_540.0
    vol = np.abs(rng.normal(0, 5e4, n))
    pred = LiquidityPredictor(window=8, horizons=[1, 4], hidden_size=8, max_epochs=1, seed=0)
    series = pred.prepare(x, y, vol)
    pred.fit(
        SeriesData(series.features, series.targets),
        feature_names=series.feature_names,
        target_names=series.target_names,
    )
    source = OnlineDefiPredictor(pred, "liquidity", "defi_liquidity", {"pool": 0}, update_every=8)
    assert source.lookback == feature_lookback(pred) == pred.config.feature_window + 1
    runner = ArbitrageRunner(
        policy=FixedPolicy([0.0, 0.0]),
        cfg=build_config("cex_dex"),
        flatten=True,
        predictors={"pred_liquidity": source},
    )
    held = runner.on_snapshot(_snap(timestamp=0, block=0))
    assert held.is_hold and "volumes" in held.reason
    for t in range(source.warmup + runner.cfg.gas_window + 2):
        sig = runner.on_snapshot(
            _snap(
                timestamp=(t + 1) * 12_000_000_000,
                block=t + 1,
                reserves=[[x[t], y[t]]],
                volumes=[vol[t]],
            )
        )
    assert runner.predictor_warmup == 0 and source.updates + int(source.update_pending) > 0
    assert not sig.reason.startswith("warming up"), sig.reason
    flat = runner.last_observation
    block = flat[runner.builder.flat_slices["pred_liquidity"]]
    assert block[-1] == 1.0 and np.all(np.isfinite(block))


@pytest.fixture(scope="module")
def small_gas() -> object:
    """A tiny gas predictor fitted in memory (window 8, horizons 1 and 4)."""
    from predictors.base import SeriesData
    from predictors.gas import GasPricePredictor

    fee = 20.0 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.05, 300)))
    pred = GasPricePredictor(window=8, horizons=[1, 4], hidden_size=8, max_epochs=1, seed=0)
    series = pred.prepare(fee)
    pred.fit(SeriesData(series.features, series.targets))
    return pred


finite_or_bad = st.one_of(st.floats(1, 200), st.sampled_from([0.0, -3.0, math.nan, math.inf]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(-1, 2), finite_or_bad, st.floats(2000, 3000)),
        min_size=1,
        max_size=60,
    )
)
def test_random_streams_with_a_gas_block_never_raise(small_gas: object, stream: list) -> None:
    """Duplicated, reordered, gapped snapshots and bad base fees around a predictor block: no
    internal error, bad rows not ingested (the predictor sees only accepted rows), HOLDs have
    reasons, and every block value the policy sees is finite."""
    from test_runner_arbitrage import FixedPolicy, _snap

    source = OnlineDefiPredictor(small_gas, "gas", "defi_gas", update_every=3, lookback=4)
    runner = ArbitrageRunner(
        policy=FixedPolicy([0.3, 0.1]),
        cfg=build_config(gas_window=2),
        flatten=True,
        predictors={"pred_gas": source},
    )
    block = 0
    for step, fee, price in stream:
        block += step
        seen = runner.snapshots_seen
        sig = runner.on_snapshot(
            _snap(
                timestamp=block,
                block=block,
                ref_price=price,
                base_fee=fee,
                reserves=[[1000.0, 1000.0 * price * 1.004]],
            )
        )
        runner.maintain()
        assert sig.reason and "internal error" not in sig.reason, sig.reason
        assert source.rows_seen == runner.snapshots_seen
        if not (math.isfinite(fee) and fee > 0):
            assert runner.snapshots_seen == seen and sig.is_hold
        if runner.last_observation is not None:
            assert np.all(np.isfinite(runner.last_observation))
