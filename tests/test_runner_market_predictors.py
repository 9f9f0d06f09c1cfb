"""PolicyRunner with an online predictor block: a tiny ``agent=sac env=market predictor=[lstm]``
run, replayed bar by bar against the test env whose block is training's walk-forward over the
rows after the fit range (issues 6 and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_runner import _train  # tests/ is on sys.path (rootdir-relative)

from agents.backtest import bar_dict
from agents.predictor_blocks import market_series, parse_spec, split_row_ranges
from agents.runner import Fill, PolicyRunner
from agents.runner.run_dir import OnlinePredictorBlock
from agents.tasks import load_data
from envs.data.splits import chronological_split
from envs.errors import ConfigError
from envs.market_env import MarketTradingEnv
from predictors.base import load_predictor
from predictors.provider import WalkForwardProvider

UPDATE_EVERY = 16


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(
        tmp_path_factory.mktemp("sac_market_lstm"),
        "sac",
        [
            "predictor=[lstm]",
            "agent.params.learning_starts=40",
            "agent.params.batch_size=32",
            "agent.params.net_arch=[32,32]",
            "predictors.lstm.model.max_epochs=1",
            "predictors.lstm.model.hidden_size=8",
            "predictors.lstm.model.window=8",
            "predictors.lstm.model.max_fit_seconds=5",
            f"predictors.lstm.provider.update_every={UPDATE_EVERY}",  # several updates in test
        ],
    )


def _walked_test_env(runner: PolicyRunner) -> tuple[MarketTradingEnv, object, dict]:
    """The run's test env, its block walked from the saved predictor over the rows after the fit
    range exactly as training's ``WalkForwardProvider.blocks(fit_range=(a, b))`` walks them (a
    copy of the fitted predictor walks ``[b, n)``; the saved predictor is that fitted predictor,
    replay buffer and replay RNG included)."""
    cfg = runner.config
    data = cfg["data"]
    dataset = load_data(data, int(cfg["seed"]))
    shares = float(data.get("train", 0.7)), float(data.get("val", 0.15))
    rows = split_row_ranges(len(dataset), *shares)
    _, _, test = chronological_split(dataset, train=shares[0], val=shares[1])
    spec = parse_spec("lstm", cfg["predictors"]["lstm"])
    pred = load_predictor(Path(runner.run_dir) / "predictors" / "lstm", device="cpu")
    series = market_series(spec, pred, dataset)
    provider = WalkForwardProvider(pred, name="lstm", online=True, update_every=UPDATE_EVERY)
    n = len(dataset)
    out = np.zeros((n, len(pred.block_columns())))
    valid = np.zeros(n, dtype=bool)
    b = rows["train"][1]
    updates = provider._walk(pred, series.features, series.targets, b, n, out, valid)
    assert updates >= 10 and valid[b:].all()
    names = provider.column_names()
    full = np.concatenate([out, valid[:, None]], axis=1).astype(np.float32)
    lo, hi = rows["test"]
    env = MarketTradingEnv(
        dataset=test,
        scaler=runner.scaler,
        random_start=False,
        episode_length=None,
        predictor_blocks={"pred_lstm": full[lo:hi]},
        predictor_columns={"pred_lstm": names},
        **runner.env_kwargs,
    )
    where = {"b": b, "lo": lo, "names": names, "features": series.feature_names, "test": test}
    return env, dataset, where


def test_market_runner_predictor_block_follows_the_training_walk(lstm_run: Path) -> None:
    runner = PolicyRunner.from_run(lstm_run, device="cpu")
    source = runner.predictor_blocks["pred_lstm"]
    assert isinstance(source, OnlinePredictorBlock)
    assert source.online and source.update_every == UPDATE_EVERY
    env, dataset, where = _walked_test_env(runner)
    assert source.columns == where["names"]
    # The predictor reads its own 7 features, not the runner's market features.
    assert source.feature_names == list(where["features"])
    assert list(runner.features.names) != source.feature_names
    # History before the test split, as training's walk saw it: every bar from the first.
    runner.reset()
    for t in range(where["lo"]):
        assert runner.feed_predictors(bar_dict(dataset, t)) is None
    assert source.updates > 0  # the validation rows were learnt from, as in the walk
    assert runner.predictor_warmup == 0
    runner.reset(predictors=False)  # the market history starts at the split, as the env's
    obs, _ = env.reset(seed=0)
    first = env.setup.arrays.first_decision
    pred_slice = runner.builder.flat_slices["pred_lstm"]
    rest = np.ones(runner.builder.flat_dim, dtype=bool)
    rest[pred_slice] = False
    test = where["test"]
    updates_before, compared, identical, max_rel, max_abs = source.updates, 0, 0, 0.0, 0.0
    for t in range(len(test)):
        sig = runner.on_bar(bar_dict(test, t))
        if t < first:
            assert sig.is_hold and "warming up" in sig.reason
            continue
        got = runner.last_observation
        assert got is not None, sig.reason
        assert np.array_equal(got[rest], obs[rest]), f"observation differs at test bar {t}"
        # The block: same features, targets and model weights as the walk (checked below), but
        # the walk predicts each chunk as one batch of rows and the runner each row alone when
        # it arrives; float32 GEMMs accumulate in a batch-size-dependent order, so a row can
        # differ in its last bits (measured: 9.3e-10 absolute on values of 1e-3).
        np.testing.assert_allclose(got[pred_slice], obs[pred_slice], rtol=1e-6, atol=1e-9)
        diff = np.abs(got[pred_slice] - obs[pred_slice]) / np.maximum(np.abs(obs[pred_slice]), 1e-9)
        max_rel = max(max_rel, float(diff.max()))
        max_abs = max(max_abs, float(np.abs(got[pred_slice] - obs[pred_slice]).max()))
        identical += int(np.array_equal(got[pred_slice], obs[pred_slice]))
        assert got[pred_slice][-1] == 1.0
        action = np.asarray(runner.agent.act(obs, deterministic=True), dtype=float)
        np.testing.assert_allclose(np.asarray(sig.action), action.ravel(), atol=1e-5)
        compared += 1
        if t % 3:  # else the pending update runs at the start of the next on_bar
            runner.maintain()
        units_before = env.unwrapped._scalar.units[0]
        obs, _, term, trunc, _ = env.step(action)
        state = env.unwrapped._scalar
        q = state.units[0] - units_before
        if q != 0.0:  # the bot reports the fill, then the exchange's balances
            runner.on_fill(Fill(runner.symbols[0], q, float(env.setup.arrays.open[t + 1, 0])))
        runner.sync_account(state.cash, [state.units[0]])
        if term or trunc:
            break
    assert compared > 100
    assert source.updates - updates_before >= 5  # online updates inside the compared bars
    print(
        f"predictor block: {identical}/{compared} rows bit-identical, max abs diff {max_abs:.2e},"
        f" max rel diff {max_rel:.2e} (relative to max(|value|, 1e-9))"
    )
    # The online learning itself is exact: after the runner's k updates its model equals, bit
    # for bit, the saved predictor walked over the first k full chunks after the fit range.
    runner.maintain()
    k = source.updates
    walked = load_predictor(Path(runner.run_dir) / "predictors" / "lstm", device="cpu")
    spec = parse_spec("lstm", runner.config["predictors"]["lstm"])
    series = market_series(spec, walked, dataset)
    provider = WalkForwardProvider(walked, name="lstm", online=True, update_every=UPDATE_EVERY)
    n = len(dataset)
    stop = where["b"] + k * UPDATE_EVERY
    scratch = np.zeros((n, len(walked.block_columns())))
    assert (
        provider._walk(
            walked, series.features, series.targets, where["b"], stop, scratch, np.zeros(n, bool)
        )
        == k
    )
    mine, theirs = source.predictor.net.state_dict(), walked.net.state_dict()
    assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
    assert len(source.predictor.replay) == len(walked.replay)
    assert torch.equal(source.predictor.replay.windows, walked.replay.windows)


def test_predictor_block_holds_until_warm_and_checks_its_inputs(lstm_run: Path) -> None:
    runner = PolicyRunner.from_run(lstm_run, device="cpu")
    source = runner.predictor_blocks["pred_lstm"]
    env, _, where = _walked_test_env(runner)
    first = env.setup.arrays.first_decision
    runner.reset()
    test = where["test"]
    ready = None
    for t in range(first + 1):
        sig = runner.on_bar(bar_dict(test, t))
        if t == 2:
            ready = source._features.ready_from
            # Bars before the block's first prediction: its features' warm-up plus a window.
            assert runner.predictor_warmup == ready + source.window - 3
    assert ready is not None and ready + source.window - 1 < first  # warm before the runner
    assert sig.target_exposure is not None and runner.predictor_warmup == 0  # a decision
    # A block that restarts (here: reset alone) makes the runner hold until it predicts again.
    source.reset()
    sig = runner.on_bar(bar_dict(test, first + 1))
    assert sig.target_exposure is None and "warming up predictors" in sig.reason
    assert runner.predictor_warmup > 0
    # A manifest naming features the saved predictor was not fitted on is a ConfigError.
    with pytest.raises(ConfigError, match="fitted on"):
        OnlinePredictorBlock(source.predictor, "pred_x", feature_names=["logret_1"])
    manifest = json.loads((lstm_run / "predictors" / "manifest.json").read_text())
    assert manifest["predictors"]["lstm"]["feature_names"] == source.feature_names


def test_regime_block_equals_the_walk_without_a_training_run() -> None:
    """``market_regime`` inputs: the rule detector's block from the last ``long + 1`` closes
    equals the provider's walk over the whole series (features up to float rounding)."""
    from envs.data import gbm
    from predictors import RuleRegimeDetector

    ds = gbm(400, seed=3)
    close = ds.close[:, 0]
    detector = RuleRegimeDetector(short=8, long=32)
    series = detector.prepare(close)
    detector.fit(
        (series.features[:200], series.targets[:200]), None, feature_names=series.feature_names
    )
    provider = WalkForwardProvider(detector, name="regime", online=False)
    cols = provider.blocks(series.features, series.targets)
    walked = np.stack([cols[c] for c in provider.column_names()], axis=1)
    block = OnlinePredictorBlock(
        detector, "pred_regime", inputs="market_regime", online=False, columns=list(cols)
    )
    assert block.lookback == 33
    rows = [block.on_bar(int(ds.timestamps[t]), ds.ohlcv[t])[0] for t in range(len(ds))]
    np.testing.assert_allclose(np.stack(rows), walked, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="computes 'market_features' and 'market_regime'"):
        OnlinePredictorBlock(detector, "pred_regime", inputs="defi_gas")


def test_backtest_feeds_predictors_the_bars_before_the_split(lstm_run: Path) -> None:
    from agents.backtest import load_replay_data, replay_history, run_backtest

    runner = PolicyRunner.from_run(lstm_run, device="cpu")
    data = runner.config["data"]
    spec = f"synthetic:{data['generator']}:{data['n_bars']}"
    seed = int(runner.config["seed"])
    shares = float(data.get("train", 0.7)), float(data.get("val", 0.15))
    test = load_replay_data(spec, "test", *shares, seed)
    history = replay_history(spec, "test", *shares, seed)
    assert replay_history(spec, "all", *shares, seed) is None
    assert history is not None and history.timestamps[-1] < test.timestamps[0]
    # With history the block reaches the replay's first bar having walked (and learned from)
    # every bar before the split, as the env's test block did; without it, it starts cold.
    cold = run_backtest(runner, test, baselines=False)
    block = runner.predictor_blocks["pred_lstm"]
    cold_updates, cold_rows = block.updates, block.rows_seen
    warm = run_backtest(runner, test, baselines=False, history=history)
    assert block.rows_seen == cold_rows + len(history)
    assert block.updates > cold_updates
    assert len(warm.equity["sac"]) == len(cold.equity["sac"])
