"""hydra/sweeper=optuna (hydra_plugins/marketrl_optuna_sweeper): search space, failures, CLI.

Multirun needs Hydra's full command-line path, so sweeps run in subprocesses. They put the repo
root on PYTHONPATH, which makes the ``hydra_plugins`` namespace importable from the source tree
whatever the install state; ``test_installed_environment_discovers_the_sweeper`` checks discovery
without it, as CI's ``pip install -e .`` provides it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("hydra_plugins") is None:
    # The installed marketrl predates 'hydra_plugins*' in pyproject's packages.find include:
    # read the plugin from the source tree (test_installed_environment_... says so by skipping).
    sys.path.append(str(ROOT))

from hydra_plugins.marketrl_optuna_sweeper._impl import OptunaSweeperImpl, trial_score  # noqa: E402
from hydra_plugins.marketrl_optuna_sweeper._search_space import (  # noqa: E402
    build_search_space,
    format_value,
)

SAC_SPACE = {
    "agent.params.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "agent.params.batch_size": {"type": "categorical", "choices": [64, 128]},
}


def _env_with_repo() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


# --- search space -------------------------------------------------------------------------------


def test_override_grammar_maps_to_optuna_distributions() -> None:
    space = build_search_space(
        {
            "lr": "tag(log, interval(1e-4, 3e-3))",
            "width": "int(interval(8, 64))",
            "layers": "range(1, 4)",
            "frac": "range(0.1, 0.5, 0.1)",
            "batch": "choice(64, 128)",
            "arch": "choice([64,64],[256,256])",
            "tau": 0.01,
        },
        ["agent=sac", "seed=0,1"],
        agent_space=SAC_SPACE,
    )
    d = space.distributions
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)
    assert d["width"] == optuna.distributions.IntDistribution(8, 64)
    # Hydra's range excludes stop, as the basic sweeper does: 1, 2, 3
    assert d["layers"] == optuna.distributions.IntDistribution(1, 3, step=1)
    assert isinstance(d["frac"], optuna.distributions.FloatDistribution)
    assert d["frac"].step == pytest.approx(0.1) and d["frac"].high == pytest.approx(0.4)
    assert d["batch"].choices == (64, 128) and d["seed"].choices == (0, 1)
    assert d["arch"].choices == ("[64,64]", "[256,256]")
    assert space.fixed == ["tau=0.01", "agent=sac"]
    assert not space.agent_space, "the agent's space is only the fallback"

    trial = optuna.create_study().ask(space.distributions)
    overrides = space.trial_overrides(trial)
    parsed = {
        o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(overrides)
    }
    assert parsed["arch"] in ([64, 64], [256, 256]), "list choices reach the job as lists"
    assert parsed["lr"] == trial.params["lr"] and parsed["batch"] == trial.params["batch"]


def test_command_line_wins_and_nested_params_are_flattened() -> None:
    space = build_search_space(
        {"agent": {"params": {"gamma": "interval(0.9, 0.99)", "tau": "choice(0.01, 0.02)"}}},
        ["agent.params.gamma=0.95", "agent.params.tau=interval(0.001,0.1)"],
        agent_space=None,
    )
    assert space.fixed == ["agent.params.gamma=0.95"]
    assert set(space.distributions) == {"agent.params.tau"}
    assert isinstance(
        space.distributions["agent.params.tau"], optuna.distributions.FloatDistribution
    )


def test_agent_search_space_is_the_fallback_minus_pinned_paths() -> None:
    space = build_search_space({}, ["agent=sac", "agent.params.batch_size=32"], SAC_SPACE)
    assert not space.distributions
    assert list(space.agent_space) == ["agent.params.learning_rate"]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    overrides = space.trial_overrides(trial)
    assert overrides[:2] == ["agent=sac", "agent.params.batch_size=32"]
    lr = float(overrides[2].split("=", 1)[1])
    assert 1e-4 <= lr <= 3e-3 and lr == trial.params["agent.params.learning_rate"]


@pytest.mark.parametrize(
    ("params", "agent_space", "match"),
    [
        ({"x": "interval(2, 1)"}, None, "low < high"),
        ({"x": "range(5, 1)"}, None, "non-empty range"),
        ({}, {"agent.params.gamma": {"type": "normal"}}, "float, int or categorical"),
        ({}, {"agent.params.gamma": {"type": "float", "low": 0.9}}, "missing"),
    ],
)
def test_bad_search_space_names_the_entry(
    params: dict, agent_space: dict | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        build_search_space(params, [], agent_space)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("n_trials", {"n_trials": 0}),
        ("n_jobs", {"n_jobs": -1}),
        ("direction", {"direction": "up"}),
        ("sampler.name", {"sampler": {"name": "cmaes"}}),
    ],
)
def test_bad_sweeper_fields_are_config_errors(field: str, kwargs: dict) -> None:
    base = {
        "n_trials": 2,
        "direction": "maximize",
        "sampler": {"name": "tpe", "seed": 0},
        "study_name": None,
        "storage": None,
        "n_jobs": 1,
        "params": {},
    }
    with pytest.raises(ConfigError, match=field.split(".")[-1]):
        OptunaSweeperImpl(**{**base, **kwargs})


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.text(max_size=12),
        st.integers(-(10**9), 10**9),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
    )
)
def test_sampled_values_read_back_unchanged(value: object) -> None:
    parser = OverridesParser.create()
    back = parser.parse_overrides([f"k={format_value('k', value)}"])[0].value()
    assert type(back) is type(value) and back == value


def test_trial_score_accepts_finite_numbers_only() -> None:
    def job(value: object, status: JobStatus = JobStatus.COMPLETED) -> JobReturn:
        ret = JobReturn(status=status)
        ret.return_value = value
        ret.status = status
        return ret

    assert trial_score(job(1.5)) == (1.5, None)
    assert trial_score(job(3)) == (3.0, None)
    for bad in (math.nan, math.inf, None, "1.0", True):
        value, error = trial_score(job(bad))
        assert value is None and error, bad
    value, error = trial_score(job(RuntimeError("boom"), JobStatus.FAILED))
    assert value is None and "RuntimeError: boom" in error


# --- sweeps in a subprocess ---------------------------------------------------------------------

TOY_APP = """
import math
import sys

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path=".", config_name="conf")
def main(cfg):
    job = HydraConfig.get().job.num
    if cfg.fail and job == 0:
        raise RuntimeError("boom")
    if cfg.fail and job == 1:
        sys.exit(2)
    if cfg.fail and job == 2:
        return math.nan
    if cfg.fail and job == 3:
        return "not a number"
    return -((cfg.x - 0.3) ** 2) + 0.01 * cfg.n


if __name__ == "__main__":
    main()
"""

TOY_CONF = """
defaults:
  - override hydra/sweeper: optuna
  - _self_
x: 0.0
n: 1
fail: true
hydra:
  sweeper:
    sampler: {name: random, seed: 0}
    study_name: toy
    params:
      x: interval(0, 1)
      n: choice(1, 2, 3)
"""


def _run_toy(app_dir: Path, sweep_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(app_dir / "app.py"), "-m", f"hydra.sweep.dir={sweep_dir}", *args],
        capture_output=True, text=True, timeout=180, cwd=app_dir, env=_env_with_repo(),
    )  # fmt: skip


def _toy(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(TOY_APP)
    (tmp_path / "conf.yaml").write_text(textwrap.dedent(TOY_CONF))
    return tmp_path


def _results(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


def test_failed_trials_are_recorded_not_fatal(tmp_path: Path) -> None:
    app = _toy(tmp_path)
    run = _run_toy(app, tmp_path / "s1", "hydra.sweeper.n_trials=6")
    assert run.returncode == 0, run.stderr[-3000:]
    results = _results(tmp_path / "s1")
    states = [t["state"] for t in results["trials"]]
    assert states == ["FAIL"] * 4 + ["COMPLETE"] * 2, results["trials"]
    errors = [t["error"] for t in results["trials"][:4]]
    assert "RuntimeError: boom" in errors[0] and "code 2" in errors[1]
    assert "non-finite" in errors[2] and "expected a float" in errors[3]
    completed = [t for t in results["trials"] if t["state"] == "COMPLETE"]
    assert results["best_value"] == max(t["value"] for t in completed)
    best = next(t for t in completed if t["value"] == results["best_value"])
    assert results["best_params"] == best["params"]
    assert (tmp_path / "s1" / best["output_dir"] / ".hydra" / "overrides.yaml").is_file()


@pytest.mark.slow
def test_stored_study_continues_and_no_completed_trial_is_an_error(tmp_path: Path) -> None:
    app = _toy(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = _run_toy(
        app, tmp_path / "s1", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}"
    )
    assert first.returncode != 0, "jobs 0 and 1 fail: no trial completed"
    assert "no trial completed" in first.stderr
    results = _results(tmp_path / "s1")
    assert results["best_value"] is None and [t["state"] for t in results["trials"]] == ["FAIL"] * 2

    second = _run_toy(
        app,
        tmp_path / "s2",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}",
        "fail=false",
        "hydra.sweeper.n_jobs=2",  # both trials asked first, then launched as one batch
    )
    assert second.returncode == 0, second.stderr[-3000:]
    results = _results(tmp_path / "s2")
    assert [t["number"] for t in results["trials"]] == [0, 1, 2, 3]
    assert [t["state"] for t in results["trials"]] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert all("fail=false" in t["overrides"] for t in results["trials"][2:])
    assert results["best_value"] == max(t["value"] for t in results["trials"][2:])


def test_train_agent_sweep_maximises_the_validation_score(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_agent.py"), "-m", "hydra/sweeper=optuna",
         "agent=sac", "env=pendulum", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0",
         "total_timesteps=300", "eval_every=150", "eval_episodes=1", "test_episodes=1",
         "checkpoint_every=300", "progress=false", "log_interval=100",
         "agent.params.learning_starts=50", "agent.params.buffer_size=1000",
         f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env_with_repo(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    trials = results["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    # no params and no sweep on the command line: the SAC config's search_space is searched
    assert set(results["best_params"]) == {
        "agent.params.learning_rate",
        "agent.params.gamma",
        "agent.params.batch_size",
        "agent.params.tau",
    }
    assert results["best_value"] == max(t["value"] for t in trials)
    for trial in trials:
        run_dir = sweep_dir / trial["output_dir"]
        assert run_dir.parent == sweep_dir / "pendulum" / "sac"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        best_val = next(v for k, v in metrics["best_val"].items() if k != "step")
        assert trial["value"] == pytest.approx(best_val), "the objective is the validation score"
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        assert config["agent"]["params"]["tau"] == pytest.approx(
            trial["params"]["agent.params.tau"]
        )
    assert (sweep_dir / "multirun.yaml").is_file()


DISCOVER = """
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
names = [c.__module__ + "." + c.__name__ for c in Plugins.instance().discover(Sweeper)]
assert "hydra_plugins.marketrl_optuna_sweeper.optuna_sweeper.OptunaSweeper" in names, names
assert "optuna.yaml" in ConfigStore.instance().list("hydra/sweeper")
import sys
heavy = sorted(m for m in ("optuna", "torch", "agents", "envs") if m in sys.modules)
assert not heavy, f"the plugin scan imported {heavy}"
"""


def test_installed_environment_discovers_the_sweeper(tmp_path: Path) -> None:
    top_level = importlib.metadata.distribution("marketrl").read_text("top_level.txt") or ""
    if "hydra_plugins" not in top_level.split():
        pytest.skip(
            "the installed marketrl predates 'hydra_plugins*' in pyproject's packages.find "
            "include; reinstall with pip install -e ."
        )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # sys.path[0] is the scripts directory when `python scripts/train_agent.py` runs, and an
    # unrelated directory when the project is used from elsewhere: neither holds hydra_plugins.
    for cwd in (ROOT / "scripts", tmp_path):
        run = subprocess.run(
            [sys.executable, "-c", DISCOVER], capture_output=True, text=True, cwd=cwd, env=env
        )
        assert run.returncode == 0, f"from {cwd}: {run.stderr[-2000:]}"
