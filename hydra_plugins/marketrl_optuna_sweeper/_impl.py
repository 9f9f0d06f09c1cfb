"""The Optuna sweep loop: ask trials, launch them through Hydra's launcher, tell their scores.

Imported only when ``hydra/sweeper=optuna`` is instantiated (the leading underscore keeps Hydra's
plugin scan from importing Optuna, torch and our packages for every Hydra app). The package
docstring says what the sweeper supports.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, configure_log
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from agents.trainer import atomic_write_text
from envs.errors import ConfigError
from hydra_plugins.marketrl_optuna_sweeper._search_space import SearchSpace, build_search_space

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``hydra.sweeper.sampler`` names (``tpe`` or ``random``)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"hydra.sweeper.sampler.name: expected tpe or random, got {name!r}")


def trial_score(ret: JobReturn) -> tuple[float | None, str | None]:
    """The score a finished job returned, or ``None`` and why it cannot be used."""
    try:
        value = ret.return_value  # re-raises the job's exception when the job failed
    except Exception as err:  # a failed trial, not a failed sweep
        return None, f"{type(err).__name__}: {err}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None, f"the task returned {value!r}; expected a float score"
    if not math.isfinite(float(value)):
        return None, f"the task returned a non-finite score {value!r}"
    return float(value), None


class OptunaSweeperImpl(Sweeper):
    """Hydra sweeper running an Optuna study; each trial is one job of Hydra's launcher.

    Args:
        n_trials: trials to run in this sweep.
        direction: ``maximize`` or ``minimize`` the task function's return value.
        sampler: ``{name: tpe|random, seed: int|null}``.
        study_name: Optuna study name (continue a study in ``storage`` by naming it).
        storage: ``None`` (in memory) or an Optuna storage URL such as ``sqlite:///study.db``.
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
        for field, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"hydra.sweeper.{field}: expected an integer >= 1, got {value!r}")
        if direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"hydra.sweeper.direction: expected maximize or minimize, got {direction!r}"
            )
        self.n_trials = n_trials
        self.direction = direction
        self.sampler_name = str(sampler.get("name", "tpe"))
        self.sampler_seed = sampler.get("seed")
        self.sampler = make_sampler(self.sampler_name, self.sampler_seed)
        self.study_name = study_name
        self.storage = storage
        self.n_jobs = n_jobs
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(f"hydra.sweeper.params: expected a mapping, got {params!r}")
        if isinstance(params, DictConfig):
            params = OmegaConf.to_container(params, resolve=True)
        self.params: dict[str, Any] = dict(params or {})
        self.job_idx = 0
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep the composed multirun config and instantiate the configured launcher."""
        self.config = config
        self.hydra_context = hydra_context
        self.job_idx = 0
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def search_space(self, arguments: list[str]) -> SearchSpace:
        """The sweep's search space from ``params``, ``arguments`` and ``agent.search_space``."""
        assert self.config is not None
        agent_space = OmegaConf.select(self.config, "agent.search_space", default=None)
        if agent_space is not None:
            agent_space = OmegaConf.to_container(agent_space, resolve=True)
        space = build_search_space(self.params, arguments, agent_space)
        if not len(space):
            raise ConfigError(
                "hydra.sweeper.params: nothing to search (no params, no sweep on the command "
                "line, and the agent config has no search_space)"
            )
        return space

    def sweep(self, arguments: list[str]) -> dict[str, Any]:
        """Run ``n_trials`` trials and write ``optimization_results.yaml`` in the sweep dir.

        Returns:
            The summary written to the results file.
        """
        assert self.config is not None
        space = self.search_space(arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            direction=self.direction,
            load_if_exists=True,
        )
        log.info(f"Optuna study {study.study_name!r}: {self.n_trials} trials, {self.direction}")
        log.info(f"Search space: {space.distributions or space.agent_space}")
        if space.fixed:
            log.info(f"Fixed overrides: {' '.join(space.fixed)}")

        asked = 0
        while asked < self.n_trials:
            size = min(self.n_jobs, self.n_trials - asked)
            batch = [study.ask(space.distributions) for _ in range(size)]
            asked += size
            try:
                self._run_batch(study, space, batch, sweep_dir)
            except BaseException:
                # a sweep-level error or Ctrl-C: leave no RUNNING trial behind in `storage`
                numbers_ = {trial.number for trial in batch}
                for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if trial.number in numbers_:
                        study.tell(trial.number, state=TrialState.FAIL)
                raise

        summary = self._summary(study, sweep_dir)
        atomic_write_text(sweep_dir / RESULTS_FILE, yaml.safe_dump(summary, sort_keys=False))
        if summary["best_value"] is None:
            first_error = next((t["error"] for t in summary["trials"] if t["error"]), None)
            raise ConfigError(
                f"hydra/sweeper=optuna: no trial completed (first error: {first_error}); "
                f"every trial is in {sweep_dir / RESULTS_FILE}"
            )
        log.info(f"Best parameters: {summary['best_params']}")
        log.info(f"Best value: {summary['best_value']}")
        return summary

    def _run_batch(
        self, study: optuna.Study, space: SearchSpace, batch: list[optuna.Trial], sweep_dir: Path
    ) -> None:
        """Launch one batch of asked trials and tell Optuna how each ended."""
        assert self.config is not None and self.hydra_context is not None
        jobs: list[tuple[optuna.Trial, list[str]]] = []
        for trial in batch:
            overrides = space.trial_overrides(trial)
            trial.set_user_attr("overrides", overrides)
            try:  # compose here so one trial's bad value fails that trial, not the launcher
                self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            except Exception as err:
                self._fail(study, trial, f"config composition: {type(err).__name__}: {err}")
                continue
            jobs.append((trial, overrides))
        if not jobs:
            return
        first_job = self.job_idx
        self.job_idx += len(jobs)
        try:
            returns: Sequence[JobReturn] = self.launcher.launch(
                [overrides for _, overrides in jobs], initial_job_idx=first_job
            )
        except SystemExit as exit_:
            # scripts/train_agent.py exits with code 2 on a ConfigError; under the in-process
            # launcher that would end the whole sweep, so it fails the batch instead (the
            # launcher returns nothing, so every job of the batch counts as failed).
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            for trial, _ in jobs:
                self._fail(study, trial, f"the job exited with code {exit_.code!r}")
            return
        for (trial, _), ret in zip(jobs, returns, strict=True):
            output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None)
            if output_dir is not None:
                trial.set_user_attr("output_dir", _relative(Path(output_dir), sweep_dir))
            value, error = trial_score(ret)
            if error is not None:
                self._fail(study, trial, error)
                continue
            study.tell(trial, value)
            log.info(f"Trial {trial.number}: {value} ({' '.join(ret.overrides or [])})")

    @staticmethod
    def _fail(study: optuna.Study, trial: optuna.Trial, error: str) -> None:
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        log.warning(f"Trial {trial.number} failed: {error}")

    def _summary(self, study: optuna.Study, sweep_dir: Path) -> dict[str, Any]:
        """Best params and value (the official plugin's keys) plus every trial of the study."""
        trials = [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": dict(t.params),
                "overrides": t.user_attrs.get("overrides"),
                "output_dir": t.user_attrs.get("output_dir"),
                "error": t.user_attrs.get("error"),
            }
            for t in study.trials
        ]
        completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
        best = study.best_trial if completed else None
        return {
            "name": "optuna",
            "study_name": study.study_name,
            "direction": self.direction,
            "sampler": {"name": self.sampler_name, "seed": self.sampler_seed},
            "best_params": dict(best.params) if best else None,
            "best_value": best.value if best else None,
            "best_trial": (
                {
                    "number": best.number,
                    "overrides": best.user_attrs.get("overrides"),
                    "output_dir": best.user_attrs.get("output_dir"),
                }
                if best
                else None
            ),
            "trials": trials,
        }


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (results stay valid if the sweep dir moves)."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
