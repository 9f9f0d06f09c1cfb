"""PolicyRunner: round trip from a real training run, env-identical observations and actions,
fills, limits, bad bars and unsafe checkpoints."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from agents.backtest import bar_dict
from agents.checkpoint import CheckpointError
from agents.evaluation import agent_policy
from agents.runner import HOLD, Fill, PolicyRunner, RiskLimits
from agents.runner.features import StreamingFeatures
from agents.trainer import train
from envs.data import gbm, load_sample
from envs.errors import ConfigError
from envs.execution import continuous_to_target, discrete_to_target
from envs.features import compute_features
from envs.market_env import MarketTradingEnv

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def _train(run_dir: Path, agent: str, extra: list[str]) -> Path:
    overrides = [
        f"agent={agent}",
        "env=market",
        "data=synthetic",
        "data.generator=gbm",
        "data.n_bars=1200",
        "total_timesteps=120",
        "eval_every=0",
        "eval_episodes=1",
        "test_episodes=1",
        "progress=false",
        "device=cpu",
        "env.kwargs.episode_length=100",
        "env.kwargs.window=8",
        *extra,
    ]
    return train_run(run_dir, overrides)


def train_run(run_dir: Path, overrides: list[str]) -> Path:
    """Compose the train config with ``overrides``, save it as Hydra would, and train."""
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    train(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(
        tmp_path_factory.mktemp("sac_run"),
        "sac",
        [
            "agent.params.learning_starts=40",
            "agent.params.batch_size=32",
            "agent.params.net_arch=[32,32]",
        ],
    )


@pytest.fixture(scope="module")
def q_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("q_run"), "qlearning", [])


def _replay_against_env(runner: PolicyRunner, n_bars: int = 260, seed: int = 7) -> dict:
    """Feed a fresh dataset bar by bar to the runner and, in lockstep, step the env."""
    ds = gbm(n_bars, seed=seed)
    kwargs = {k: v for k, v in runner.env_kwargs.items()}
    env = MarketTradingEnv(
        dataset=ds, scaler=runner.scaler, random_start=False, episode_length=None, **kwargs
    )
    obs, _ = env.reset(seed=0)
    first = env.setup.arrays.first_decision
    policy = agent_policy(runner.agent)
    runner.reset()
    out = {"obs_equal": 0, "decisions": 0, "first": first}
    for t in range(len(ds)):
        signal = runner.on_bar(bar_dict(ds, t))
        if t < first:
            assert signal.side == HOLD and signal.target_exposure is None
            assert "warming up" in signal.reason
            continue
        # The runner's observation at bar t equals the env's, bit for bit.
        np.testing.assert_array_equal(runner.last_observation, obs)
        out["obs_equal"] += 1
        action = policy(obs, env)
        cfg = env.setup.params.execution
        if env.setup.action_mode == "discrete":
            mapped = discrete_to_target(np.asarray(action).reshape(1), env.setup.positions, cfg)
        else:
            mapped = continuous_to_target(np.asarray(action, float).reshape(1, -1), cfg)
        np.testing.assert_array_equal(np.asarray(signal.target_exposure), mapped[0])
        out["decisions"] += 1
        units_before = env.unwrapped._scalar.units[0]
        obs, _, term, trunc, _ = env.step(action)
        state = env.unwrapped._scalar
        q = state.units[0] - units_before
        if q != 0.0:  # the bot reports the fill, then the exchange's balances (funding, costs)
            runner.on_fill(Fill(runner.symbols[0], q, float(env.setup.arrays.open[t + 1, 0])))
        runner.sync_account(state.cash, [state.units[0]])
        if term or trunc:
            break
    return out


def test_round_trip_sac_signals_equal_env_actions(sac_run: Path) -> None:
    runner = PolicyRunner.from_run(sac_run, device="cpu")
    assert runner.action_mode == "continuous"
    out = _replay_against_env(runner)
    assert out["decisions"] > 100 and out["obs_equal"] == out["decisions"]


def test_round_trip_qlearning_signals_equal_env_actions(q_run: Path) -> None:
    runner = PolicyRunner.from_run(q_run, device="cpu", policy="best")
    assert runner.action_mode == "discrete"
    out = _replay_against_env(runner)
    assert out["decisions"] > 100


def test_streaming_features_equal_pipeline_on_real_data() -> None:
    ds = load_sample("btc_usd_hourly").slice(5000, 6500)
    expected = compute_features(ds)
    stream = StreamingFeatures(None, 1)
    rows = np.stack([stream.push(int(ds.timestamps[t]), ds.ohlcv[t]) for t in range(len(ds))])
    assert stream.warmup == expected.warmup
    # Same definitions, different float order: identical float32 here; allow a one-ulp flip.
    np.testing.assert_allclose(rows, expected.values, rtol=2e-7, atol=1e-7)
    assert np.mean(rows == expected.values) > 0.9999


def test_streaming_features_multi_asset_and_extra() -> None:
    from envs.data.dataset import MarketDataset

    ds = gbm(400, seed=3, n_assets=2) if "n_assets" in gbm.__code__.co_varnames else None
    if ds is None:
        pytest.skip("gbm has no n_assets argument")
    extra = np.random.default_rng(0).normal(size=(len(ds), ds.n_assets, 1))
    extra[:30, 1, 0] = np.nan
    ds = MarketDataset(ds.timestamps, ds.symbols, ds.ohlcv, extra, ("funding",), source="t")
    names = ["logret_1", "rsi_14", "macdsignal_12_26_9", "bb_width_20", "atr_14", "extra:funding"]
    expected = compute_features(ds, names)
    stream = StreamingFeatures(names, 2, ("funding",))
    rows = np.stack(
        [stream.push(int(ds.timestamps[t]), ds.ohlcv[t], ds.extra[t]) for t in range(len(ds))]
    )
    np.testing.assert_allclose(rows, expected.values, rtol=2e-7, atol=1e-7)
    assert stream.ready_from == expected.warmup


def test_bad_bars_give_hold_with_reason(q_run: Path) -> None:
    runner = PolicyRunner.from_run(q_run, device="cpu")
    ds = gbm(200, seed=1)
    for t in range(150):
        runner.on_bar(bar_dict(ds, t))
    good = bar_dict(ds, 150)
    cases = {
        "missing field 'close'": {k: v for k, v in good.items() if k != "close"},
        "is nan": dict(good, open=float("nan")),
        "must be > 0": dict(good, low=-1.0, open=-1.0),
        "not a number": dict(good, volume="lots"),
        "missing field 'timestamp'": {k: v for k, v in good.items() if k != "timestamp"},
        "duplicate bar": dict(bar_dict(ds, 149)),
        "out-of-order": dict(bar_dict(ds, 140)),
        "absurd price": {**good, **{k: good[k] * 100 for k in ("open", "high", "low", "close")}},
    }
    for expected, bar in cases.items():
        sig = runner.on_bar(bar)
        assert sig.side == HOLD and expected in sig.reason, (expected, sig.reason)
    assert runner.on_bar(None).side == HOLD
    assert runner.on_bar(good).reason  # the good bar is still accepted afterwards
    assert runner.bars_seen == 151


def test_fills_track_the_real_position(q_run: Path) -> None:
    runner = PolicyRunner.from_run(q_run, device="cpu")
    runner.on_bar(bar_dict(gbm(5, seed=0), 0))
    runner.on_fill(Fill("asset", 2.0, 100.0, 0.5))
    runner.on_fill(Fill("asset", 1.0, 130.0, 0.0))
    assert runner.position[0] == 3.0
    assert runner.entry_price[0, 0] == pytest.approx(110.0)
    assert runner.cash[0] == pytest.approx(runner.initial_cash - 330.0 - 0.5)
    runner.on_fill(Fill("asset", -3.0, 120.0))
    assert runner.position[0] == 0.0 and runner.entry_price[0, 0] == 0.0
    with pytest.raises(ConfigError, match="unknown symbol"):
        runner.on_fill(Fill("nope", 1.0, 1.0))


def test_limits_and_confidence_threshold(sac_run: Path) -> None:
    limits = RiskLimits(max_position=0.5, max_order_units=0.2, min_trade_notional=1.0)
    runner = PolicyRunner.from_run(sac_run, device="cpu", limits=limits)
    ds = gbm(300, seed=5)
    for t in range(len(ds)):
        sig = runner.on_bar(bar_dict(ds, t))
        for leg in sig.legs:
            assert leg.size <= 0.2 + 1e-12
            assert abs(leg.target_units) <= 0.5 + 1e-9
            if leg.side != HOLD:
                runner.on_fill(
                    Fill(
                        leg.symbol,
                        leg.size if leg.side == "BUY" else -leg.size,
                        leg.reference_price,
                    )
                )
    strict = PolicyRunner.from_run(sac_run, device="cpu", limits={"confidence_threshold": 1.0})
    sigs = [strict.on_bar(bar_dict(ds, t)) for t in range(len(ds))]
    decided = [s for s in sigs if "warming up" not in s.reason]
    assert decided and all(s.side == HOLD and "confidence" in s.reason for s in decided)


def test_kill_switch_closes_and_holds(q_run: Path) -> None:
    runner = PolicyRunner.from_run(q_run, device="cpu", limits={"max_drawdown": 0.1})
    ds = gbm(200, seed=2)
    for t in range(120):
        runner.on_bar(bar_dict(ds, t))
    price = float(ds.close[119, 0])
    runner.on_fill(Fill("asset", 50.0, price))
    runner.sync_account(runner.cash[0] - 0.5 * runner.value, [50.0])  # lose half the book
    sig = runner.on_bar(bar_dict(ds, 120))
    assert "kill switch" in sig.reason
    assert sig.target_exposure == (0.0,) and sig.side == "SELL" and sig.size == 50.0


def test_unpickling_payload_is_refused(q_run: Path, tmp_path: Path) -> None:
    import shutil

    bad_run = tmp_path / "run"
    shutil.copytree(q_run, bad_run)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(bad_run / "policy.pt", "wb") as f:
        pickle.dump({"format": "x", "evil": Payload()}, f)
    with pytest.raises(CheckpointError, match=r"refused|not a readable"):
        PolicyRunner.from_run(bad_run, device="cpu")
    assert not marker.exists()
    # A torch-saved payload (zip format) is refused as well.
    torch.save({"evil": Payload()}, bad_run / "policy.pt")
    with pytest.raises(CheckpointError):
        PolicyRunner.from_run(bad_run, device="cpu")
    assert not marker.exists()


def test_missing_run_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        PolicyRunner.from_run(tmp_path)


@pytest.mark.parametrize(("algo", "mode"), [("PPO", "discrete"), ("PPO", "continuous")])
def test_sb3_confidence_from_the_policy_distribution(algo: str, mode: str) -> None:
    """SB3 confidence is no longer a constant 1: it follows the policy's distribution, and the
    action is exactly the agent's own ``act``."""
    from agents.runner.policy import PolicyAdapter
    from agents.sb3_adapter import SB3Agent

    env = MarketTradingEnv(dataset=gbm(300, seed=3), action_mode=mode, window=8, flatten=True)
    agent = SB3Agent(
        algo,
        env=env,
        policy_kwargs={"net_arch": [16]},
        algo_kwargs={"n_steps": 16, "batch_size": 16},
        device="cpu",
    )
    adapter = PolicyAdapter(agent)
    obs, _ = env.reset(seed=0)
    confidences = []
    policy = agent.model.policy
    for _ in range(5):
        action, confidence = adapter.decide(obs)
        assert np.array_equal(action, agent.act(obs, deterministic=True))
        assert 0.0 <= confidence <= 1.0
        confidences.append(confidence)
        obs, *_ = env.step(action)
    if mode == "discrete":
        with torch.no_grad():
            tensor, _ = policy.obs_to_tensor(obs)
            probs = policy.get_distribution(tensor).distribution.probs[0]
        action, confidence = adapter.decide(obs)
        assert confidence == pytest.approx(float(probs[int(action)]))
    else:
        # A wider policy (larger log-std) is less sure of the side it takes.
        with torch.no_grad():
            policy.log_std.fill_(3.0)
        _, wide = adapter.decide(obs)
        with torch.no_grad():
            policy.log_std.fill_(-3.0)
        _, narrow = adapter.decide(obs)
        assert wide < narrow
    assert any(c != 1.0 for c in confidences)


@pytest.mark.parametrize(
    ("algo", "mode"), [("DQN", "discrete"), ("TD3", "continuous"), ("RecurrentPPO", "discrete")]
)
def test_runner_confidence_for_other_sb3_algorithms(algo: str, mode: str) -> None:
    """Every SB3 family gets a confidence from its own policy (not a constant 1), the action is
    the agent's, and a recurrent policy's state restarts with the adapter's reset."""
    from agents.runner.policy import PolicyAdapter
    from agents.sb3_adapter import SB3Agent

    env = MarketTradingEnv(dataset=gbm(300, seed=3), action_mode=mode, window=8, flatten=True)
    algo_kwargs = (
        {"n_steps": 16, "batch_size": 16}
        if algo == "RecurrentPPO"
        else {"buffer_size": 100, "learning_starts": 10}
    )
    agent = SB3Agent(
        algo, env=env, policy_kwargs={"net_arch": [16]}, algo_kwargs=algo_kwargs, device="cpu"
    )
    adapter = PolicyAdapter(agent)
    obs, _ = env.reset(seed=0)
    observations, decisions = [], []
    for _ in range(5):
        action, confidence = adapter.decide(obs)
        assert 0.0 <= confidence < 1.0
        observations.append(obs)
        decisions.append((np.asarray(action).tolist(), confidence))
        obs, *_ = env.step(action)
    adapter.reset()
    again = [adapter.decide(o) for o in observations]
    assert [(np.asarray(a).tolist(), c) for a, c in again] == decisions


def test_prepare_bot_loop_freezes_what_is_loaded() -> None:
    import gc

    from agents.runner import prepare_bot_loop

    threads = torch.get_num_threads()
    try:
        settled = prepare_bot_loop(torch_threads=1)
        assert settled["frozen_objects"] == gc.get_freeze_count() > 1000
        assert settled["full_collection_ms"] >= 0.0 and torch.get_num_threads() == 1
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
