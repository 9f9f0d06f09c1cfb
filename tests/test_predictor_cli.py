"""Predictors in training: train_predictor CLI, predictor blocks in both envs, no look-ahead."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from agents.predictor_blocks import (
    load_run_predictors,
    market_predictor_blocks,
    parse_spec,
    predictor_specs,
)
from agents.tasks import build_task
from agents.trainer import train
from envs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "total_timesteps=120",
    "eval_every=0",
    "eval_episodes=1",
    "test_episodes=1",
    "checkpoint_every=0",
    "progress=false",
    "log_interval=100",
    "device=cpu",
    "agent=sac",
    "agent.params.learning_starts=50",
    "agent.params.batch_size=32",
    "agent.params.buffer_size=1000",
]
TINY_LSTM = [
    "predictors.lstm.model.max_epochs=2",
    "predictors.lstm.model.hidden_size=8",
    "predictors.lstm.model.window=8",
]
TINY_GAS = [
    "predictors.gas.model.max_epochs=2",
    "predictors.gas.model.hidden_size=8",
    "predictors.gas.model.window=8",
    "predictors.gas.model.horizons=[1,4]",
]
TINY_ARB = [
    "env=arbitrage",
    "env.kwargs.episode_length=60",
    "arbitrage_scenario.train_blocks=1200",
    "arbitrage_scenario.val_blocks=300",
    "arbitrage_scenario.test_blocks=300",
]
TINY_MARKET = ["env=market", "env.kwargs.episode_length=60", "data=synthetic", "data.n_bars=1500"]


def _compose(overrides: list[str], name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _builder(env):
    """The observation builder (``observation_builder`` on the market env, ``builder`` here)."""
    u = env.unwrapped
    return getattr(u, "observation_builder", None) or u.builder


def _flat_block(env, obs: np.ndarray, block: str) -> np.ndarray:
    return obs[_builder(env).flat_slices[block]]


# --- configs -----------------------------------------------------------------------------------
def test_default_config_has_no_predictors_and_list_syntax_selects_them() -> None:
    assert predictor_specs(_compose([]), "arbitrage") == []
    cfg = _compose(["predictor=[gas,liquidity]", "predictors.gas.model.window=7"])
    specs = {s.name: s for s in predictor_specs(cfg, "arbitrage")}
    assert set(specs) == {"gas", "liquidity"}
    assert specs["gas"].model["window"] == 7 and specs["gas"].block == "pred_gas"
    for name in ("lstm", "vae", "regime"):
        (spec,) = predictor_specs(_compose([f"predictor=[{name}]"]), "market")
        assert spec.envs == ("market",)
    with pytest.raises(ConfigError, match="applies to env kinds"):
        predictor_specs(cfg, "market")
    with pytest.raises(ConfigError, match="inputs"):
        parse_spec("bad", {"kind": "gas", "inputs": "nope"})


# --- train_predictor ---------------------------------------------------------------------------
def test_train_predictor_cli_gas_writes_loadable_predictor_and_metrics(tmp_path: Path) -> None:
    from predictors import load_predictor

    run = tmp_path / "gas"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_predictor.py"), "predictor=gas",
         *TINY_GAS, "scenario.train_blocks=1500", "scenario.val_blocks=400",
         "scenario.test_blocks=400", "device=cpu", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit_rows"] == [0, 1500]
    table = metrics["test"]
    assert set(table) == {
        "log_base_fee_h1",
        "realised_vol_h1",
        "log_base_fee_h4",
        "realised_vol_h4",
    }
    for by_model in table.values():
        assert set(by_model) == {"model", "persistence", "mean"}
        assert 0.0 <= by_model["model"]["coverage_90"] <= 1.0
    assert metrics["test_online"]["online_updates"] > 0
    # Training curves: the event file parses and holds one point per epoch, at steps 1..epochs.
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    epochs = int(metrics["fit"]["epochs"])
    assert epochs >= 1 and len(metrics["fit_history"]) == epochs
    for tag in ("epoch/train_loss", "epoch/val_loss", "epoch/val_coverage_90"):
        points = acc.Scalars(tag)
        assert [p.step for p in points] == list(range(1, epochs + 1)), tag
    val = [p.value for p in acc.Scalars("epoch/val_loss")]
    assert min(val) == pytest.approx(metrics["fit"]["val_loss"], rel=1e-5)  # best epoch kept
    assert all(0.0 <= p.value <= 1.0 for p in acc.Scalars("epoch/val_coverage_90"))
    model = load_predictor(run, device="cpu")
    assert model.kind == "gas" and model.fitted
    assert model.block_columns() == metrics["columns"]


def test_train_predictor_lstm_on_market_data(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "train_predictor_script", ROOT / "scripts" / "train_predictor.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = _compose(
        ["predictor=lstm", *TINY_LSTM, "data=synthetic", "data.n_bars=1500", "device=cpu"],
        name="train_predictor",
    )
    metrics = script.train_predictor(cfg, tmp_path)
    from predictors import load_predictor

    model = load_predictor(tmp_path, device="cpu")
    assert model.kind == "lstm"
    assert set(metrics["test"]["log_return_h1"]) == {"model", "persistence", "mean"}
    # Fitted on the training split only: it ends before the test split starts.
    assert metrics["fit_range_time"][1] < metrics["test_range_time"][0]
    assert json.loads((tmp_path / "metrics.json").read_text())["kind"] == "lstm"


# --- blocks in the envs ------------------------------------------------------------------------
def test_market_task_adds_blocks_and_arbitrage_blocks_align_with_episode_rows() -> None:
    task = build_task(_compose([*TINY_MARKET, "predictor=[lstm,regime]", *TINY_LSTM, *TINY]))
    assert task.predictors is not None
    env = task.train_env
    assert {"pred_lstm", "pred_regime"} <= set(_builder(env).block_names)
    names = _builder(env).flat_feature_names()
    cols = task.predictors.block_columns()
    assert cols["pred_lstm"] == ["pred_lstm_mean_h1", "pred_lstm_std_h1", "pred_lstm_valid"]
    # The env's flat names carry the predictor's column names.
    assert [n for n in names if n.startswith("pred_lstm[")] == [
        f"pred_lstm[{c}]" for c in cols["pred_lstm"]
    ]
    assert "pred_regime_is_volatile" in cols["pred_regime"]
    assert task.artifacts["predictor_blocks"]["predictors"]["lstm"]["columns"] == cols["pred_lstm"]
    # Validation rows continue the walk after the training data: every row is predicted.
    val = task.predictors.splits["val"]["pred_lstm"]
    assert val[:, -1].min() == 1.0
    obs, _ = task.val_env.reset(seed=0)
    assert task.val_env.observation_space.contains(obs)

    task = build_task(_compose([*TINY_ARB, "predictor=[gas]", *TINY_GAS, *TINY]))
    env = task.val_env
    assert "pred_gas" in _builder(env).block_names
    blocks = task.predictors.splits["val"]["pred_gas"]
    obs, _ = env.reset(seed=3)
    scen = env.unwrapped.scenario_batch
    # Find the episode's offset inside the validation scenario from its (continuous) base fee.
    full = env.unwrapped.source.scenario.base_fee
    n = scen.base_fee.shape[1]
    starts = [
        s for s in range(len(full) - n + 1) if np.array_equal(full[s : s + n], scen.base_fee[0])
    ]
    assert len(starts) == 1
    row = starts[0] + int(env.unwrapped.state.row0[0])
    for t in range(5):
        np.testing.assert_array_equal(_flat_block(env, obs, "pred_gas"), blocks[row + t])
        obs, *_ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))


@pytest.mark.parametrize(
    ("env", "name", "fit_rows"),
    [("arbitrage", "gas", [0, 1200]), ("market", "regime", [0, 1050])],
)
def test_train_agent_saves_predictors_in_run_dir(
    env: str, name: str, fit_rows: list[int], tmp_path: Path
) -> None:
    extra = [*TINY_ARB, *TINY_GAS] if env == "arbitrage" else TINY_MARKET
    train(_compose([*extra, f"predictor=[{name}]", *TINY]), tmp_path)
    manifest = json.loads((tmp_path / "predictors" / "manifest.json").read_text())
    entry = manifest["predictors"][name]
    assert entry["fit_rows"] == fit_rows == manifest["split_rows"]["train"]
    assert entry["block"] == f"pred_{name}" and entry["columns"][-1] == f"pred_{name}_valid"
    loaded = load_run_predictors(tmp_path / "predictors", device="cpu")
    assert loaded[name].fitted and loaded[name].block_columns()
    assert (tmp_path / "artifacts" / "predictor_blocks.json").is_file()
    assert (tmp_path / "policy.pt").is_file()


# --- no look-ahead -----------------------------------------------------------------------------
def _perturbed(ds, start: int, seed: int):
    rng = np.random.default_rng(seed)
    ohlcv = ds.ohlcv.copy()
    factor = np.exp(np.cumsum(rng.normal(0.0, 0.02, len(ds) - start)))
    ohlcv[start:, :, :4] *= factor[:, None, None]
    return dataclasses.replace(ds, ohlcv=ohlcv)


def test_blocks_never_fit_on_held_out_data() -> None:
    from envs.data import synthetic

    ds = synthetic.regime_switching(1500, seed=4)
    cfg = _compose(["predictor=[lstm]", *TINY_LSTM, "device=cpu"])
    specs = predictor_specs(cfg, "market")
    base = market_predictor_blocks(specs, ds, 0.7, 0.15)
    (vs, _), (ts, _) = base.split_rows["val"], base.split_rows["test"]
    assert base.fitted["lstm"].fit_rows == (0, vs)
    assert base.fit_range_time is not None
    fit_end = datetime.fromisoformat(base.fit_range_time[1])
    assert fit_end.timestamp() < ds.timestamps[vs] / 1e9

    # Changing every bar from the validation split on changes neither the fitted predictor nor
    # the training blocks; changing only test bars leaves the validation blocks unchanged too.
    after_val = market_predictor_blocks(specs, _perturbed(ds, vs, 1), 0.7, 0.15)
    after_test = market_predictor_blocks(specs, _perturbed(ds, ts, 2), 0.7, 0.15)
    w0 = base.fitted["lstm"].predictor.net.state_dict()
    for other in (after_val, after_test):
        w1 = other.fitted["lstm"].predictor.net.state_dict()
        assert all(np.array_equal(w0[k].numpy(), w1[k].numpy()) for k in w0)
        np.testing.assert_array_equal(
            base.splits["train"]["pred_lstm"], other.splits["train"]["pred_lstm"]
        )
    np.testing.assert_array_equal(
        base.splits["val"]["pred_lstm"], after_test.splits["val"]["pred_lstm"]
    )
    assert not np.array_equal(base.splits["val"]["pred_lstm"], after_val.splits["val"]["pred_lstm"])


# --- reset time (figures only, never asserted) -------------------------------------------------
@pytest.mark.slow
def test_print_reset_time_with_and_without_blocks() -> None:
    """Issue 6 goal: all blocks slow a reset by < 10%. Prints medians of interleaved rounds."""
    import gymnasium as gym

    def reset_us(env, n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            env.reset(seed=i)
        return 1e6 * (time.perf_counter() - t0) / n

    def compare(label: str, envs: dict, n: int) -> None:
        for env in envs.values():
            env.reset(seed=0)
        rounds = {k: [reset_us(e, n) for _ in range(1)] for k, e in envs.items()}
        for _ in range(6):  # interleaved, so load changes on the shared CPU hit all alike
            for k, e in envs.items():
                rounds[k].append(reset_us(e, n))
        cells = ", ".join(f"{k} {np.median(v):.1f} us" for k, v in rounds.items())
        print(f"{label} reset (median of 7 rounds x {n}): {cells}")

    market = [*TINY_MARKET, "data.n_bars=4000", *TINY]
    plain = build_task(_compose(market))
    full = build_task(_compose([*market, "predictor=[lstm,vae,regime]", *TINY_LSTM]))
    print()
    compare("market", {"no blocks": plain.train_env, "lstm+vae+regime": full.train_env}, 200)
    arb = [
        *TINY_ARB,
        "env.kwargs.episode_length=1000",
        "arbitrage_scenario.train_blocks=6000",
        "arbitrage_scenario.val_blocks=1100",
        "arbitrage_scenario.test_blocks=1100",
        *TINY,
    ]
    fresh = build_task(_compose(arb)).train_env
    full = build_task(_compose([*arb, "predictor=[gas,liquidity]", *TINY_GAS])).train_env
    fixed = gym.make(
        "Arbitrage-v0",
        scenario=full.unwrapped.source.scenario,
        episode_length=1000,
        flatten=True,
        action_mode="continuous",
    )
    envs = {"fresh scenario": fresh, "fixed, no blocks": fixed, "fixed + gas+liquidity": full}
    compare("arbitrage", envs, 40)
