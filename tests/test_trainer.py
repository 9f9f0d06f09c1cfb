"""The trainer and CLI: run directories, TensorBoard files, checkpoints, resume, config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from agents.trainer import train
from envs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "total_timesteps=300",
    "eval_every=150",
    "eval_episodes=1",
    "test_episodes=1",
    "checkpoint_every=150",
    "progress=false",
    "log_interval=100",
]


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _tiny_agent(agent: str) -> list[str]:
    if agent in ("sac", "qlearning"):
        return [
            f"agent={agent}",
            "agent.params.learning_starts=50",
            "agent.params.batch_size=32",
            "agent.params.buffer_size=1000",
        ]
    return [f"agent={agent}", "agent.params.n_steps=64", "agent.params.batch_size=32"]


def _event_scalars(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (run_dir / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


def _check_run_dir(run_dir: Path, metrics: dict) -> None:
    for name in ("policy.pt", "best_policy.pt", "checkpoints/last.pt", "metrics.json"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["num_timesteps"] == metrics["num_timesteps"] >= 300
    assert on_disk["test"], "the test table is saved"
    tags = _event_scalars(run_dir)
    assert any(t.startswith("eval/") for t in tags), tags
    assert any(t.startswith("rollout/") for t in tags), tags


@pytest.mark.parametrize("agent", ["sac", "qlearning", "ppo"])
def test_each_agent_trains_on_market_env(agent: str, tmp_path: Path) -> None:
    cfg = _compose([*_tiny_agent(agent), "env=market", "env.kwargs.episode_length=100", *TINY])
    metrics = train(cfg, tmp_path)
    _check_run_dir(tmp_path, metrics)
    assert (tmp_path / "artifacts" / "feature_scaler.json").is_file()
    assert {"buy_and_hold", "flat"} <= set(metrics["test"])


@pytest.mark.parametrize("agent", ["sac", "qlearning", "ppo"])
def test_each_agent_trains_on_arbitrage_env(agent: str, tmp_path: Path) -> None:
    cfg = _compose([*_tiny_agent(agent), "env=arbitrage", "env.kwargs.episode_length=100", *TINY])
    metrics = train(cfg, tmp_path)
    _check_run_dir(tmp_path, metrics)
    assert {"oracle", "threshold"} <= set(metrics["test"])
    # The oracle baseline is the policy the env replays for share_of_oracle: its share is 1.
    assert metrics["test"]["oracle"]["share_of_oracle"] == pytest.approx(1.0, rel=1e-6)
    assert {"eval/oracle_share", "eval/path_oracle_share"} <= _event_scalars(tmp_path)


def test_resume_continues_the_step_count(tmp_path: Path) -> None:
    first = tmp_path / "first"
    cfg = _compose([*_tiny_agent("sac"), "env=pendulum", *TINY])
    train(cfg, first)
    cfg = _compose(
        [*_tiny_agent("sac"), "env=pendulum", *TINY, "total_timesteps=450", f"resume={first}"]
    )
    metrics = train(cfg, tmp_path / "second")
    assert metrics["resumed_from"].startswith(str(first))
    assert metrics["num_timesteps"] == 450


def test_bad_config_values_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        train(_compose(["agent=sac", "env=pendulum", "agent.params.learning_rate=-1"]), tmp_path)
    with pytest.raises(ConfigError, match="total_timesteps"):
        train(_compose(["agent=sac", "env=pendulum", "total_timesteps=0"]), tmp_path)
    with pytest.raises(ConfigError, match="Box"):
        train(_compose(["agent=sac", "env=market", "env.kwargs.action_mode=discrete"]), tmp_path)
    with pytest.raises(ConfigError, match="Discrete"):
        train(_compose(["agent=qlearning", "env=pendulum"]), tmp_path)
    assert not (tmp_path / "policy.pt").exists()


def test_cli_runs_and_rejects_unknown_agent(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "train_agent.py")
    run = subprocess.run(
        [sys.executable, script, *_tiny_agent("sac"), "env=pendulum", *TINY,
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert "Test split" in run.stdout
    bad = subprocess.run(
        [sys.executable, script, "agent=nope", f"hydra.run.dir={tmp_path / 'bad'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "nope" in bad.stderr


def test_optuna_search_runs_trials_and_keeps_the_best(tmp_path: Path) -> None:
    from agents.tuning import tune

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="tune",
            overrides=[*_tiny_agent("qlearning"), "env=cartpole", *TINY, "tune.n_trials=2"],
        )
    summary = tune(cfg, tmp_path)
    assert len(summary["trials"]) == 2
    assert set(summary["best"]["params"]) == set(cfg.agent.search_space)
    assert (tmp_path / "study.json").is_file()
    assert (tmp_path / "trial_000" / "metrics.json").is_file()


MODEL_BASED_TINY = {
    "mbpo": [
        "agent=mbpo",
        "agent.params.learning_starts=100",
        "agent.params.model_train_freq=100",
        "agent.params.rollout_batch_size=50",
        "agent.params.updates_per_step=1",
        "agent.params.sac.batch_size=32",
        "agent.params.sac.net_arch=[32,32]",
        "agent.params.ensemble.hidden=[32,32]",
        "agent.params.ensemble.ensemble_size=3",
        "agent.params.ensemble.num_elites=2",
        "agent.params.model_training.max_epochs=3",
    ],
    "pets": [
        "agent=pets",
        "agent.params.learning_starts=100",
        "agent.params.model_train_freq=100",
        "agent.params.horizon=5",
        "agent.params.population=20",
        "agent.params.planner_elites=5",
        "agent.params.iterations=2",
        "agent.params.particles=2",
        "agent.params.ensemble.hidden=[32,32]",
        "agent.params.ensemble.ensemble_size=3",
        "agent.params.ensemble.num_elites=2",
        "agent.params.model_training.max_epochs=3",
    ],
}


@pytest.mark.parametrize(
    ("agent", "env"),
    [("mbpo", "pendulum"), ("pets", "pendulum"), ("mbpo_trading_aware", "market")],
)
def test_model_based_agents_train_through_the_cli(agent: str, env: str, tmp_path: Path) -> None:
    overrides = list(MODEL_BASED_TINY[agent.split("_")[0]])
    if agent == "mbpo_trading_aware":
        overrides.append("agent.params.trading_aware=true")
    extra = ["env.kwargs.episode_length=100"] if env == "market" else []
    cfg = _compose([*overrides, f"env={env}", *extra, *TINY])
    metrics = train(cfg, tmp_path)
    _check_run_dir(tmp_path, metrics)
