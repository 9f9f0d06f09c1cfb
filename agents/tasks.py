"""Turn the ``env`` and ``data`` config groups into train / validation / test envs and baselines.

Three kinds of task:

- ``market``: ``MarketTrading-v0`` on a dataset (embedded sample, your CSV/Parquet, or a seeded
  generator) split chronologically; the feature scaler is fitted on the training split only and
  reused by the validation and test envs (and saved in the run directory).
- ``arbitrage``: ``Arbitrage-v0``; training, validation and test episodes come from disjoint
  scenario seeds, so evaluation is on held-out market paths. With predictors
  (``predictor=[gas,...]``) the three splits are instead consecutive parts of one fixed seeded
  scenario (``arbitrage_scenario`` sizes), so predictor blocks can be computed walk-forward over
  it once, fitted on the training part only (``agents.predictor_blocks``).
- ``gym``: any registered Gymnasium id (``Pendulum-v1``, ``CartPole-v1`` ...), for checking agents
  against the literature.

The env's ``action_mode`` may be left ``null`` in the env config: the agent config's preferred
mode is used then (continuous for SAC, discrete for Q-learning); an explicit value always wins,
and an agent that cannot handle it says so before training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig

import envs  # noqa: F401  (registers our env ids)
from agents.evaluation import Policy
from agents.predictor_blocks import (
    PredictorBlocks,
    arbitrage_predictor_blocks,
    arbitrage_scenario,
    market_predictor_blocks,
    predictor_specs,
)
from agents.registry import plain_dict
from envs.data.dataset import MarketDataset
from envs.errors import ConfigError

TASK_KINDS = ("market", "arbitrage", "gym")


@dataclass
class Task:
    """What the trainer needs from an environment config.

    Attributes:
        train_env: env the agent learns on.
        val_env: env for periodic deterministic evaluation (best policy selection).
        test_env: held-out env for the final table.
        baselines: name -> factory building a policy for a given env.
        artifacts: name -> JSON-able payload saved under ``artifacts/`` (fitted scalers ...).
        score_key: evaluation metric that picks the best policy (higher is better).
        eval_seed: base seed of validation episodes.
        test_seed: base seed of test episodes.
        table_columns: metrics shown in the final table (None: all).
        baseline_env: env the baselines run on when they need another action mode than the
            agent's (same market paths for the same seeds); None: ``test_env``.
        predictors: the fitted predictors and their blocks when ``cfg.predictors`` is set (the
            trainer saves them in ``<run_dir>/predictors/``); None without predictors.
    """

    train_env: gym.Env
    val_env: gym.Env
    test_env: gym.Env
    baselines: dict[str, Callable[[gym.Env], Policy]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    score_key: str = "mean_reward"
    eval_seed: int = 10_000
    test_seed: int = 20_000
    table_columns: list[str] | None = None
    baseline_env: gym.Env | None = None
    predictors: PredictorBlocks | None = None


def _action_mode(cfg: DictConfig, kwargs: dict[str, Any]) -> None:
    if kwargs.get("action_mode") is None:
        preferred = cfg.agent.get("action_mode")
        if preferred is None:
            kwargs.pop("action_mode", None)
        else:
            kwargs["action_mode"] = str(preferred)


def load_data(data_cfg: Mapping[str, Any], seed: int) -> MarketDataset:
    """Load the dataset the ``data`` config group describes."""
    from envs import data as market_data

    kind = data_cfg.get("kind")
    if kind == "sample":
        return market_data.load_sample(str(data_cfg.get("name") or "btc_usd_hourly"))
    if kind in ("csv", "parquet"):
        path = data_cfg.get("path")
        if not path:
            raise ConfigError(f"data.path: required for data.kind={kind!r}")
        return market_data.load_dataset(str(path))
    if kind == "synthetic":
        generators = {
            "gbm": market_data.gbm,
            "regime_switching": market_data.regime_switching,
            "jump_diffusion": market_data.jump_diffusion,
            "ornstein_uhlenbeck": market_data.ornstein_uhlenbeck,
        }
        name = data_cfg.get("generator")
        if name not in generators:
            raise ConfigError(f"data.generator: expected one of {list(generators)}, got {name!r}")
        n_bars = data_cfg.get("n_bars") or 20_000
        return generators[name](int(n_bars), seed=seed)
    raise ConfigError(
        f"data.kind: expected one of ['sample', 'csv', 'parquet', 'synthetic'], got {kind!r}"
    )


def _constant_policy(action: Any) -> Callable[[gym.Env], Policy]:
    def make(_env: gym.Env) -> Policy:
        return lambda _obs, _e: action

    return make


def _market_baselines(env: gym.Env) -> dict[str, Callable[[gym.Env], Policy]]:
    """Buy-and-hold (full long exposure, held) and flat (no position) in the env's action mode."""
    setup = env.unwrapped.setup
    space = env.action_space
    if setup.action_mode == "discrete":
        positions = np.asarray(setup.positions, dtype=float)
        return {
            "buy_and_hold": _constant_policy(int(np.argmax(positions))),
            "flat": _constant_policy(int(np.argmin(np.abs(positions)))),
        }
    if setup.action_mode == "continuous":
        return {
            "buy_and_hold": _constant_policy(np.full(space.shape, 1.0, dtype=np.float32)),
            "flat": _constant_policy(np.zeros(space.shape, dtype=np.float32)),
        }
    # Portfolio weights over assets plus cash (cash last): equal weight on assets, or all cash.
    n = int(space.shape[0])
    hold = np.zeros(n, dtype=np.float32)
    hold[:-1] = 1.0 / (n - 1)
    cash = np.zeros(n, dtype=np.float32)
    cash[-1] = 1.0
    return {"buy_and_hold": _constant_policy(hold), "flat": _constant_policy(cash)}


def _market_task(cfg: DictConfig) -> Task:
    from envs.data.splits import chronological_split

    data_cfg = plain_dict(cfg.data)
    dataset = load_data(data_cfg, int(cfg.seed))
    shares = float(data_cfg.get("train", 0.7)), float(data_cfg.get("val", 0.15))
    train, val, test = chronological_split(dataset, train=shares[0], val=shares[1])
    kwargs = plain_dict(cfg.env.get("kwargs"))
    _action_mode(cfg, kwargs)
    # Predictor blocks are walked once over the whole dataset (fitted on the training rows only)
    # and sliced per split, so validation and test blocks continue from the training data.
    specs = predictor_specs(cfg, "market")
    blocks = market_predictor_blocks(specs, dataset, *shares) if specs else None

    def split_kwargs(split: str, base: dict[str, Any]) -> dict[str, Any]:
        if blocks is None:
            return base
        return dict(
            base, predictor_blocks=blocks.splits[split], predictor_columns=blocks.block_columns()
        )

    train_env = gym.make(str(cfg.env.id), dataset=train, **split_kwargs("train", kwargs))
    scaler = train_env.unwrapped.scaler
    # Validation and test run one episode over their whole split from its first decision bar,
    # with the scaler fitted on the training split (nothing is fitted on held-out data).
    eval_kwargs = dict(kwargs, random_start=False, episode_length=None, scaler=scaler)
    val_env = gym.make(str(cfg.env.id), dataset=val, **split_kwargs("val", eval_kwargs))
    test_env = gym.make(str(cfg.env.id), dataset=test, **split_kwargs("test", eval_kwargs))
    artifacts: dict[str, Any] = {"feature_scaler": scaler.to_dict()}
    if blocks is not None:
        artifacts["predictor_blocks"] = blocks.manifest()
    return Task(
        train_env=train_env,
        val_env=val_env,
        test_env=test_env,
        baselines=_market_baselines(train_env),
        artifacts=artifacts,
        score_key="mean_reward",
        table_columns=[
            "mean_reward",
            "return",
            "sharpe",
            "sortino",
            "max_drawdown",
            "calmar",
            "turnover",
        ],
        predictors=blocks,
    )


def _gym_task(cfg: DictConfig) -> Task:
    kwargs = plain_dict(cfg.env.get("kwargs"))
    env_id = str(cfg.env.id)

    def make() -> gym.Env:
        return gym.make(env_id, **kwargs)

    def random_policy(env: gym.Env) -> Policy:
        space = env.action_space
        space.seed(0)
        return lambda _obs, _e: space.sample()

    return Task(make(), make(), make(), baselines={"random": random_policy})


def build_task(cfg: DictConfig) -> Task:
    """Build the task the ``env`` config group names (``env.kind``)."""
    kind = cfg.env.get("kind")
    if kind == "market":
        return _market_task(cfg)
    if kind == "arbitrage":
        return _arbitrage_task(cfg)
    if kind == "gym":
        return _gym_task(cfg)
    raise ConfigError(f"env.kind: expected one of {list(TASK_KINDS)}, got {kind!r}")


def _arbitrage_task(cfg: DictConfig) -> Task:
    from envs.arbitrage_baselines import make_baseline

    kwargs = plain_dict(cfg.env.get("kwargs"))
    _action_mode(cfg, kwargs)
    env_id = str(cfg.env.id)
    # Evaluation episodes default to the training episode length (the env's own default when the
    # config gives none).
    eval_length = cfg.env.get("eval_episode_length") or kwargs.get("episode_length")
    eval_kwargs = dict(kwargs)
    if eval_length is not None:
        eval_kwargs["episode_length"] = int(eval_length)
    specs = predictor_specs(cfg, "arbitrage")
    blocks = None
    if specs:
        # With predictors: one fixed long scenario cut into train/val/test rows; episodes are
        # windows of their split at seeded random offsets, blocks are rows of the same scenario.
        sizes = plain_dict(cfg.get("arbitrage_scenario"))
        probe = gym.make(env_id, **kwargs).unwrapped
        # Evaluation episodes default to the training length here ("null: same as training
        # episodes", configs/env/arbitrage.yaml), so they fit in the held-out rows.
        eval_kwargs.setdefault("episode_length", probe.episode_length)
        need = probe.cfg.gas_window + 1 + max(probe.episode_length, eval_kwargs["episode_length"])
        for key in ("train_blocks", "val_blocks", "test_blocks"):
            if isinstance(sizes.get(key), int) and sizes[key] < need:
                raise ConfigError(
                    f"arbitrage_scenario.{key}: {sizes[key]} rows, an episode needs {need} "
                    "(episode_length + gas_window + 1)"
                )
        scenario, rows = arbitrage_scenario(probe.cfg.n_pools, sizes, int(cfg.seed))
        source = f"generate_scenario(seed=[{int(cfg.seed)}, 6], rows={len(scenario)})"
        blocks = arbitrage_predictor_blocks(specs, scenario, rows, kwargs, source)
        fixed = {
            split: {
                "scenario": scenario.window(*rows[split]),
                "predictor_blocks": blocks.splits[split],
                "predictor_columns": blocks.block_columns(),
            }
            for split in rows
        }
        train_env = gym.make(env_id, **dict(kwargs, episode_oracle=False, **fixed["train"]))
        val_env = gym.make(env_id, **dict(eval_kwargs, **fixed["val"]))
        test_env = gym.make(env_id, **dict(eval_kwargs, **fixed["test"]))
        eval_kwargs = dict(eval_kwargs, **fixed["test"])
    else:
        # Every episode is a fresh scenario drawn from the env's seeded RNG: training episodes
        # follow the run's seed, validation and test episodes use disjoint seed ranges.
        # Training episodes skip the end-of-episode oracle replay (only evaluation reports it).
        train_env = gym.make(env_id, **dict(kwargs, episode_oracle=False))
        val_env = gym.make(env_id, **eval_kwargs)
        test_env = gym.make(env_id, **eval_kwargs)
    # The oracle and the threshold rule act in the continuous mode with sizes in units of
    # max_trade_size and bids in units of the max tip; on the same seeds they see the same
    # market paths as the agent's (possibly discrete, or optimum-relative) test env.
    test_cfg = test_env.unwrapped.cfg
    max_units = {"action_mode": "continuous", "continuous_size": "max", "continuous_bid": "max"}
    baseline_env = (
        test_env
        if all(getattr(test_cfg, k) == v for k, v in max_units.items())
        else gym.make(env_id, **dict(eval_kwargs, **max_units))
    )

    def baseline(name: str) -> Callable[[gym.Env], Policy]:
        return lambda _env: make_baseline(name)

    return Task(
        train_env=train_env,
        val_env=val_env,
        test_env=test_env,
        baselines={name: baseline(name) for name in ("oracle", "threshold", "noop", "random")},
        score_key="total_profit",
        baseline_env=baseline_env,
        artifacts={} if blocks is None else {"predictor_blocks": blocks.manifest()},
        predictors=blocks,
        table_columns=[
            "mean_reward",
            "total_profit",
            "share_of_oracle",
            "gas_spent",
            "reverts",
            "competitor_took",
            "trades",
        ],
    )
