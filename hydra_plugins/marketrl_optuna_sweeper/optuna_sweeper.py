"""The ``hydra/sweeper=optuna`` Sweeper class Hydra finds when it scans ``hydra_plugins``.

Kept thin: Hydra imports this module for every Hydra app, so Optuna and the sweep loop
(``_impl.py``) are imported only when the sweeper is actually instantiated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Hydra sweeper backed by an Optuna 5 study (see the package docstring).

    Args:
        n_trials: trials to run in this sweep.
        direction: ``maximize`` or ``minimize`` the task function's return value.
        sampler: ``{name: tpe|random, seed: int|null}``.
        study_name: Optuna study name.
        storage: ``None`` or an Optuna storage URL (``sqlite:///study.db``).
        n_jobs: trials asked and launched per launcher batch.
        params: search space in Hydra's override grammar, keyed by config path.
    """

    def __init__(
        self,
        n_trials: int,
        direction: str,
        sampler: Mapping[str, Any],
        study_name: str | None,
        storage: str | None,
        n_jobs: int,
        params: Mapping[str, Any] | None,
    ) -> None:
        from hydra_plugins.marketrl_optuna_sweeper._impl import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(
            n_trials=n_trials,
            direction=direction,
            sampler=sampler,
            study_name=study_name,
            storage=storage,
            n_jobs=n_jobs,
            params=params,
        )

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Hand the composed config and task function to the implementation."""
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """Run the study; returns the summary also written to ``optimization_results.yaml``."""
        return self.sweeper.sweep(arguments)
