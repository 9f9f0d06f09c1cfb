"""The training loop behind ``scripts/train_agent.py``: run directory, TensorBoard, checkpoints.

The trainer only wires: the task (``agents.tasks``) builds the train/validation/test envs and
baselines from the config, the registry (``agents.registry``) builds the agent, and the agent's own
``learn`` runs the algorithm. A step callback evaluates on the validation split every
``eval_every`` steps (deterministic policy, best policy kept), checkpoints atomically every
``checkpoint_every`` steps and drives the progress bar. At the end the final and best policies are
evaluated on the test split next to the task's baselines, printed as a table and saved in
``metrics.json``.

Run directory layout (``runs/<env>/<agent>/<timestamp>/``)::

    .hydra/config.yaml    resolved config (written by Hydra; enough to rebuild the agent)
    tb/                   TensorBoard event files
    checkpoints/last.pt   latest training checkpoint (policy, optimisers, counters, RNG)
    policy.pt             final policy        best_policy.pt  best validation policy
    artifacts/            fitted scalers and other task artifacts (JSON)
    predictors/           with predictor=[...]: each fitted predictor (<name>/) and manifest.json
    metrics.json          validation history, test table, timings
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from agents.base import Learner, get_device
from agents.evaluation import agent_policy, evaluate_policy, format_table
from agents.registry import build_agent, load_agent
from agents.seeding import set_seed
from agents.tasks import Task, build_task
from envs.errors import ConfigError

# Stable TensorBoard names (README, TensorBoard section) where they differ from the metric keys
# of metrics.json.
_TB_NAMES = {"share_of_oracle": "oracle_share", "share_of_path_oracle": "path_oracle_share"}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and ``os.replace`` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def best_validation_score(metrics: Mapping[str, Any]) -> float:
    """The best validation score recorded in ``metrics`` (under the task's score key)."""
    return float(next(v for k, v in metrics["best_val"].items() if k != "step"))


def validate_config(cfg: DictConfig) -> None:
    """Check run-level fields before anything is built; ``ConfigError`` names the field."""
    for field in ("total_timesteps", "eval_episodes", "test_episodes"):
        value = cfg.get(field)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config field {field!r}: expected a positive integer, got {value!r}")
    for field in ("eval_every", "checkpoint_every", "log_interval"):
        value = cfg.get(field)
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"config field {field!r}: expected an integer >= 0, got {value!r}")
    if cfg.get("resume") and not (Path(cfg.resume) / "checkpoints" / "last.pt").is_file():
        raise ConfigError(
            f"config field 'resume': {cfg.resume!r} has no checkpoints/last.pt to continue from"
        )


class _Progress:
    """A tqdm bar with steps/s and ETA, updated every few hundred steps to stay cheap."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = None
        self.last = start
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(step - self.last)
        self.last = step
        if postfix:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train the configured agent on the configured env and fill ``run_dir``.

    Args:
        cfg: the composed Hydra config (``configs/train.yaml``).
        run_dir: the run directory (Hydra's output directory).
        on_eval: called with ``(step, validation score)`` after every evaluation; a
            hyperparameter search uses it to report to its pruner (it may raise to stop).

    Returns:
        The metrics written to ``metrics.json``.
    """
    from torch.utils.tensorboard import SummaryWriter

    validate_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    set_seed(int(cfg.seed))
    device = get_device(str(cfg.device))
    if cfg.get("torch_threads") is not None:
        import torch

        torch.set_num_threads(int(cfg.torch_threads))

    task: Task = build_task(cfg)
    agent: Learner = build_agent(
        cfg.agent,
        task.train_env,
        device=str(device),
        seed=int(cfg.seed),
        run_dir=run_dir,
        log_interval=int(cfg.log_interval),
    )
    for name, payload in task.artifacts.items():
        atomic_write_text(run_dir / "artifacts" / f"{name}.json", json.dumps(payload, indent=2))
    if task.predictors is not None:
        # Fitted on the training split only; the policy runner reloads them from here.
        task.predictors.save(run_dir / "predictors")

    resumed_from = None
    if cfg.get("resume"):
        resumed_from = str(Path(cfg.resume) / "checkpoints" / "last.pt")
        agent.load_checkpoint(resumed_from)
        print(f"resumed from {resumed_from} at step {agent.num_timesteps}")

    writer = SummaryWriter(log_dir=str(run_dir / "tb"))
    total = int(cfg.total_timesteps)
    eval_every, ckpt_every = int(cfg.eval_every), int(cfg.checkpoint_every)
    history: list[dict[str, float]] = []
    best = {"score": -float("inf"), "step": -1}
    start_step = agent.num_timesteps
    progress = _Progress(total, start_step, bool(cfg.progress))
    started = time.perf_counter()

    def evaluate_now(step: int) -> None:
        result = evaluate_policy(
            agent_policy(agent),
            task.val_env,
            int(cfg.eval_episodes),
            seed=task.eval_seed,
        )
        result["step"] = float(step)
        history.append(result)
        for key, value in result.items():
            if key != "step":
                writer.add_scalar(f"eval/{_TB_NAMES.get(key, key)}", value, step)
        score = result.get(task.score_key, result["mean_reward"])
        if score > best["score"]:
            best.update(score=score, step=step)
            agent.save(run_dir / "best_policy.pt")
        progress.update(step, {"eval": score})
        if on_eval is not None:
            on_eval(step, score)

    def callback(step: int) -> bool:
        if eval_every and step % eval_every == 0:
            evaluate_now(step)
        if ckpt_every and step % ckpt_every == 0:
            agent.save_checkpoint(
                run_dir / "checkpoints" / "last.pt", include_buffer=bool(cfg.save_buffer)
            )
        if step % 200 == 0:
            progress.update(step)
        return True

    try:
        agent.learn(task.train_env, total, callback=callback, writer=writer)
    finally:
        progress.close()
    train_seconds = time.perf_counter() - started
    agent.save_checkpoint(run_dir / "checkpoints" / "last.pt", include_buffer=bool(cfg.save_buffer))
    agent.save(run_dir / "policy.pt")
    if not history or history[-1]["step"] != agent.num_timesteps:
        evaluate_now(agent.num_timesteps)

    # Final table on the held-out test split: our final and best policies next to baselines.
    rows: dict[str, dict[str, float]] = {}
    n_test, test_seed = int(cfg.test_episodes), task.test_seed
    rows[f"{cfg.agent.name} (final)"] = evaluate_policy(
        agent_policy(agent), task.test_env, n_test, test_seed
    )
    best_agent = load_agent(cfg.agent, run_dir / "best_policy.pt", device=str(device))
    rows[f"{cfg.agent.name} (best val)"] = evaluate_policy(
        agent_policy(best_agent), task.test_env, n_test, test_seed
    )
    baseline_env = task.baseline_env or task.test_env
    for name, make_policy in task.baselines.items():
        rows[name] = evaluate_policy(make_policy(baseline_env), baseline_env, n_test, test_seed)
    for name, metrics in rows.items():
        for key, value in metrics.items():
            writer.add_scalar(f"test/{name.split(' ')[0]}_{key}", value, agent.num_timesteps)
    writer.close()

    table = format_table(rows, task.table_columns)
    print(f"\nTest split ({n_test} episodes, deterministic):\n{table}\n")
    metrics = {
        "env": str(cfg.env.name),
        "agent": str(cfg.agent.name),
        "seed": int(cfg.seed),
        "device": str(device),
        "num_timesteps": int(agent.num_timesteps),
        "train_seconds": train_seconds,
        "steps_per_second": (agent.num_timesteps - start_step) / max(train_seconds, 1e-9),
        "resumed_from": resumed_from,
        "best_val": {"step": best["step"], task.score_key: best["score"]},
        "validation": history,
        "test": rows,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=float))
    print(f"run directory: {run_dir}")
    return metrics
