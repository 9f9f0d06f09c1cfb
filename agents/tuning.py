"""Hyperparameter search with Optuna, driven directly (``scripts/tune_agent.py``).

``hydra-optuna-sweeper`` pins ``optuna<3`` (see DOMAIN.md: Dependency facts). Two searches share
the ``search_space`` format below and ``suggest``: our own Hydra sweeper
(``train_agent.py -m hydra/sweeper=optuna``, ``hydra_plugins/marketrl_optuna_sweeper``: one
Hydra job per trial, any launcher, no pruning) and this module, a plain Optuna study in one
process, which can prune because it sees every validation evaluation.

Here each trial copies the composed Hydra config, sets the sampled values at their dotted paths,
trains with ``agents.trainer.train`` in its own sub-directory, and returns the best validation
score. Validation evaluations are reported to Optuna's median pruner, so hopeless
trials stop early. The search space lives in the agent config (``search_space``), one entry per
dotted config path::

    search_space:
      agent.params.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      agent.params.n_step: {type: int, low: 1, high: 5}
      agent.params.dueling: {type: categorical, choices: [true, false]}
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from agents.trainer import atomic_write_text, best_validation_score, train
from envs.errors import ConfigError


def suggest(trial: Any, path: str, spec: Mapping[str, Any]) -> Any:
    """Draw one value for ``path`` from an Optuna trial according to ``spec``."""
    kind = spec.get("type")
    if kind == "float":
        return trial.suggest_float(
            path, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
        )
    if kind == "int":
        return trial.suggest_int(
            path, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
        )
    if kind == "categorical":
        return trial.suggest_categorical(path, list(spec["choices"]))
    raise ConfigError(
        f"search_space[{path!r}].type: expected float, int or categorical, got {kind!r}"
    )


def tune(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run an Optuna study over ``cfg.agent.search_space`` and write ``study.json``.

    Args:
        cfg: composed config with a ``tune`` section (``n_trials``, ``seed``, ``prune``).
        out_dir: directory holding one sub-directory per trial and the study summary.

    Returns:
        The best trial's number, value and parameters, and every trial's outcome.
    """
    import optuna

    space = cfg.agent.get("search_space")
    if not space:
        raise ConfigError(f"agent.search_space: agent {cfg.agent.name!r} defines no search space")
    space = OmegaConf.to_container(space, resolve=True)
    out_dir = Path(out_dir)
    sampler = optuna.samplers.TPESampler(seed=int(cfg.tune.seed))
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if cfg.tune.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)

    def objective(trial: optuna.Trial) -> float:
        trial_cfg = copy.deepcopy(cfg)
        for path, spec in space.items():
            OmegaConf.update(trial_cfg, path, suggest(trial, path, spec), force_add=False)

        def report(step: int, score: float) -> None:
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        metrics = train(trial_cfg, out_dir / f"trial_{trial.number:03d}", on_eval=report)
        return best_validation_score(metrics)

    study.optimize(objective, n_trials=int(cfg.tune.n_trials))
    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
        for t in study.trials
    ]
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise ConfigError("tune: no trial completed (all pruned or failed)")
    summary = {
        "best": {
            "number": study.best_trial.number,
            "value": study.best_value,
            "params": study.best_params,
        },
        "trials": trials,
    }
    atomic_write_text(out_dir / "study.json", json.dumps(summary, indent=2, default=str))
    return summary
