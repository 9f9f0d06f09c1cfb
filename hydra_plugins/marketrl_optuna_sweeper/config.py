"""Structured config of the ``hydra/sweeper=optuna`` sweeper, stored in Hydra's ConfigStore.

Hydra imports every public module of the ``hydra_plugins`` namespace package when any Hydra app
starts, so this module only declares dataclasses (no Optuna, no torch import).

No ``from __future__ import annotations`` here: Hydra's scan executes the module before putting it
in ``sys.modules``, and ``dataclasses`` resolves string annotations through ``sys.modules`` (an
``AttributeError`` at scan time). The annotations below are evaluated eagerly (Python >= 3.10).
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    """Which Optuna sampler proposes the trials."""

    name: str = "tpe"  # tpe (optuna.samplers.TPESampler) or random (optuna.samplers.RandomSampler)
    seed: int | None = None  # seeds the sampler; null draws a fresh seed


@dataclass
class OptunaSweeperConf:
    """Fields of ``hydra.sweeper`` when ``hydra/sweeper=optuna`` (see the package docstring)."""

    _target_: str = "hydra_plugins.marketrl_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    n_trials: int = 20  # trials to run in this sweep (added to those already in `storage`)
    direction: str = "maximize"  # maximize or minimize the value the task function returns
    sampler: SamplerConf = field(default_factory=SamplerConf)  # tpe / random, with its seed
    study_name: str | None = None  # name of the study (needed to continue one in `storage`)
    storage: str | None = None  # null (in memory) or an Optuna storage URL (sqlite:///x.db)
    n_jobs: int = 1  # trials asked per launcher batch (parallel with a parallel launcher)
    # Search space in Hydra's override grammar, one entry per config path, e.g.
    # agent.params.learning_rate: tag(log, interval(1e-4, 3e-3)). Empty: the agent's search_space.
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="marketrl"
)
