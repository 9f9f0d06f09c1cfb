"""Batched ``Arbitrage-v0``: ``N`` envs stepped together with array operations.

The single env is the ``N = 1`` case of the same core (``envs.arbitrage_core``), and each sub-env
draws its episodes from its own generator seeded ``seed + i``, so the batch reproduces ``N``
single envs seeded ``seed + i`` exactly (tested). Autoreset follows Gymnasium's ``NEXT_STEP``
mode: the step after an episode ends resets that env and returns its first observation with
reward 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs import arbitrage_core as core
from envs.arbitrage_env import (
    action_space_for,
    build_setup,
    episode_summary,
)
from envs.data.dataset import MarketDataset
from envs.data.defi import DefiScenario, ScenarioParams
from envs.errors import ConfigError

__all__ = ["ArbitrageVectorEnv"]


class ArbitrageVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of ``ArbitrageEnv`` stepped with one set of array operations.

    Args:
        num_envs: number of sub-envs ``N``.
        scenario, scenario_params, dataset, dataset_symbol, mode, predictor_blocks, flatten,
            episode_length, episode_oracle, predictor_columns, **config: as for
            :class:`envs.arbitrage_env.ArbitrageEnv`.
        render_mode: accepted for ``gymnasium.make_vec`` compatibility (no rendering).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "render_modes": [],
    }

    def __init__(
        self,
        num_envs: int = 1,
        scenario: DefiScenario | None = None,
        scenario_params: ScenarioParams | None = None,
        dataset: MarketDataset | None = None,
        dataset_symbol: str | None = None,
        mode: str = "cex_dex",
        predictor_blocks: dict[str, np.ndarray] | None = None,
        flatten: bool = False,
        episode_length: int = 1000,
        render_mode: str | None = None,
        episode_oracle: bool = True,
        predictor_columns: Mapping[str, Sequence[str]] | None = None,
        **config: Any,
    ) -> None:
        if int(num_envs) < 1:
            raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        setup = build_setup(
            scenario, scenario_params, dataset, dataset_symbol, mode, predictor_blocks,
            flatten, episode_length, config, predictor_columns,
        )  # fmt: skip
        self.cfg, self.episode_length = setup.cfg, setup.episode_length
        self.scenario_rows, self.source, self.builder = (
            setup.scenario_rows,
            setup.source,
            setup.builder,
        )
        self.render_mode = None
        self.single_observation_space = self.builder.observation_space
        self.single_action_space = action_space_for(self.cfg)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._scen = core.ScenarioBatch.empty(
            self.num_envs, self.scenario_rows, self.cfg.n_pools, self.source.predictor_shapes
        )
        self._state = core.init_state(self.cfg, self.num_envs)
        self.episode_oracle = bool(episode_oracle)
        self._state0 = core.init_state(self.cfg, self.num_envs)  # states after reset
        self._vol0 = (scenario_params or ScenarioParams()).vol_per_block
        self._rngs: list[np.random.Generator] = [
            seeding.np_random(None)[0] for _ in range(self.num_envs)
        ]
        self._needs_reset = np.ones(self.num_envs, dtype=bool)
        self._ready = False

    def _reset_idx(self, idx: np.ndarray) -> None:
        for i in idx:
            scen, preds = self.source.draw(self._rngs[int(i)])
            self._scen.load(int(i), scen, preds, self._vol0)
        core.reset_slots(self.cfg, self._state, self._scen, idx)
        core.put_rows(self._state0, self._state, idx)

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every sub-env; ``seed`` int seeds sub-env ``i`` with ``seed + i``."""
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed
            if len(seeds) != self.num_envs:
                raise ConfigError(f"reset: {len(seeds)} seeds for {self.num_envs} envs")
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        idx = np.arange(self.num_envs)
        self._reset_idx(idx)
        self._needs_reset[:] = False
        self._ready = True
        obs, opp = self._observe()
        return obs, self._infos(None, opp)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-env; sub-envs that ended last step are reset instead (NEXT_STEP)."""
        if not self._ready:
            raise gym.error.ResetNeeded("call reset() before step()")
        n = self.num_envs
        if self.cfg.action_mode == "discrete":
            act = np.asarray(actions, dtype=np.int64).reshape(n)
            if np.any((act < 0) | (act >= self.cfg.n_discrete_actions)):
                raise ConfigError(f"actions outside Discrete({self.cfg.n_discrete_actions})")
        else:
            act = np.asarray(actions, dtype=np.float64).reshape(n, self.cfg.n_slots + 1)
            if not np.all(np.isfinite(act)):
                raise ConfigError("actions must be finite")
        resetting = self._needs_reset.copy()
        size, tip = core.decode_actions(self.cfg, act, self._state, self._scen)
        size[resetting] = 0.0
        tip[resetting] = 0.0
        # Sub-envs being reset are stepped on a throw-away copy of their rows: simplest is to
        # step everyone and then overwrite the resetting slots with a fresh episode.
        res = core.core_step(self.cfg, self._state, self._scen, size, tip, self.episode_length)
        ended = np.flatnonzero(res.truncated & ~resetting)
        oracle = np.full(n, np.nan)
        if self.episode_oracle and ended.size:
            # Every sub-env that ended replays the oracle over its episode, in one batch.
            oracle[ended] = core.oracle_run_profit(
                self.cfg,
                core.take_rows(self._state0, ended),
                core.take_rows(self._scen, ended),
                self.episode_length,
            )
        summaries = {
            i: episode_summary({k: v[i] for k, v in self._state.cum.items()}, oracle[i])
            for i in ended
        }
        if resetting.any():
            self._reset_idx(np.flatnonzero(resetting))
        truncated = res.truncated & ~resetting
        reward = np.where(resetting, 0.0, res.reward)
        self._needs_reset = truncated.copy()
        obs, opp = self._observe()
        infos = self._infos(res, opp, resetting)
        if summaries:
            ep_mask = np.zeros(n, dtype=bool)
            ep = {k: np.zeros(n) for k in next(iter(summaries.values()))}
            for i, s in summaries.items():
                ep_mask[i] = True
                for k, v in s.items():
                    ep[k][i] = v
            infos["episode"] = ep
            infos["_episode"] = ep_mask
        terminated = np.zeros(n, dtype=bool)
        return obs, reward.astype(np.float64), terminated, truncated, infos

    def action_masks(self) -> np.ndarray:
        """Valid discrete actions per sub-env ``(N, n_actions)``."""
        if self.cfg.action_mode != "discrete":
            raise ConfigError("action_masks() is only defined for action_mode='discrete'")
        return core.discrete_masks(self.cfg, self._opportunities())

    def oracle_action(self) -> np.ndarray:
        """Privileged continuous oracle actions ``(N, S+1)``; see ``ArbitrageEnv.oracle_action``."""
        return core.core_oracle_action(self.cfg, self._state, self._scen).astype(np.float32)

    @property
    def state(self) -> core.ArbState:
        """Batched state, read-only by convention."""
        return self._state

    def _opportunities(self) -> dict[str, np.ndarray]:
        s = self._state
        return core.opportunity_table(
            self.cfg, s, self._scen, s.row0 + s.t, np.zeros(self.num_envs)
        )

    def _observe(self) -> tuple[Any, dict[str, np.ndarray]]:
        opp = self._opportunities()
        blocks = core.observation_blocks(self.cfg, self._state, self._scen, opp)
        return self.builder.build_batch(blocks), opp

    def _infos(
        self,
        res: core.StepResult | None,
        opp: dict[str, np.ndarray],
        resetting: np.ndarray | None = None,
    ) -> dict[str, Any]:
        n = self.num_envs
        infos: dict[str, Any] = {}
        keys = (
            "profit",
            "gas_spent",
            "fees_paid",
            "reverted",
            "competitor_took",
            "outbid",
            "oracle_profit",
            "traded",
            "rebalance_fee",
        )
        ones = np.ones(n, dtype=bool)
        for key in keys:
            v = np.zeros(n) if res is None else np.asarray(getattr(res, key), dtype=np.float64)
            if resetting is not None:
                v = np.where(resetting, 0.0, v)
            infos[key] = v
            infos[f"_{key}"] = ones
        infos["inventory"] = self._state.bal.copy()
        infos["_inventory"] = ones
        for key, v in self._state.cum.items():
            infos[f"cum_{key}"] = v.copy()
            infos[f"_cum_{key}"] = ones
        if self.cfg.action_mode == "discrete":
            infos["action_mask"] = core.discrete_masks(self.cfg, opp)
            infos["_action_mask"] = ones
        return infos
