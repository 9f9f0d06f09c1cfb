"""``Arbitrage-v0``: CEX-DEX and DEX-DEX arbitrage with AMM impact, gas, competition and latency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import arbitrage_core as core
from envs.data.dataset import MarketDataset
from envs.data.defi import (
    DefiScenario,
    ScenarioParams,
    generate_scenario,
    reference_from_dataset,
)
from envs.errors import ConfigError, DataError
from envs.observation import BlockSpec, ObservationBuilder, block_column_names, check_column_blocks

__all__ = ["ArbitrageEnv", "ScenarioSource", "build_config", "make_observation_builder"]

_DEFAULT_POOLS = {
    # The ETH/USDC 5 bps pool against a CEX; DEX-DEX: the 5 bps pool against a shallower 30 bps one.
    "cex_dex": ((0.0005,), (5e6,)),
    "dex_dex": ((0.0005, 0.003), (5e6, 2e6)),
}


def build_config(mode: str = "cex_dex", **kwargs: Any) -> core.ArbConfig:
    """Build a validated :class:`~envs.arbitrage_core.ArbConfig`; unknown fields raise."""
    names = {f.name for f in fields(core.ArbConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(
            f"Arbitrage-v0: unknown arguments {unknown}; expected some of {sorted(names)}"
        )
    if mode not in core.MODES:
        raise ConfigError(f"Arbitrage-v0: mode must be one of {core.MODES}, got {mode!r}")
    fees, tvl = _DEFAULT_POOLS[mode]
    if kwargs.get("pool_fees") is None:
        kwargs["pool_fees"] = fees
    if kwargs.get("pool_tvl") is None:
        kwargs["pool_tvl"] = (
            tvl if len(kwargs["pool_fees"]) == len(tvl) else ((tvl[0],) * len(kwargs["pool_fees"]))
        )
    for key in (
        "pool_fees",
        "pool_tvl",
        "initial_balances",
        "inventory_limits",
        "size_levels",
        "bid_levels",
    ):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = tuple(float(v) for v in kwargs[key])
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return core.ArbConfig(mode=mode, **kwargs)


OBS_BOUND = 1e6  # |observation element| cap, see make_observation_builder


def make_observation_builder(
    cfg: core.ArbConfig,
    predictor_shapes: dict[str, tuple[int, ...]],
    flatten: bool,
    predictor_columns: Mapping[str, Sequence[str]] | None = None,
) -> ObservationBuilder:
    """The observation layout of ``Arbitrage-v0`` (shared by the single and the vector env).

    ``predictor_columns`` names each predictor block's columns (its last axis).
    """
    k = cfg.n_pools
    pool_cols = ("gap_pct", "log_depth_ratio", "fee_pct")
    opp_cols = ("size_frac", "gross_per_gas", "gross_per_tip")
    if cfg.mode == "cex_dex":
        directions = [f"pool{s}_{side}" for s in range(k) for side in ("buy", "sell")]
    else:
        directions = ["buy0_sell1", "buy1_sell0"]
    blocks = [
        BlockSpec(
            "pools",
            (k * 3,),
            feature_names=tuple(f"pool{i}_{c}" for i in range(k) for c in pool_cols),
        ),
        BlockSpec("reference", (3,), feature_names=("ret_bps", "vol_bps", "spread_bps")),
        BlockSpec("gas", (3,), feature_names=("base_fee", "base_fee_mean", "last_utilization")),
        BlockSpec("gas_history", (cfg.gas_window,), 0.0, OBS_BOUND),
        BlockSpec("competition", (3,), feature_names=("last_tip", "last_took", "rate")),
        BlockSpec(
            "opportunity",
            (len(directions) * 3,),
            feature_names=tuple(f"{d}_{c}" for d in directions for c in opp_cols),
        ),
        BlockSpec(
            "inventory",
            (6,),
            feature_names=(
                "cex_base",
                "cex_quote",
                "dex_base",
                "dex_quote",
                "transit_base",
                "transit_quote",
            ),
        ),
    ]
    check_column_blocks(predictor_columns, list(predictor_shapes))
    for name, shape in predictor_shapes.items():
        names = block_column_names(predictor_columns, name, shape)
        blocks.append(BlockSpec(name, shape, feature_names=names))
    # Finite bounds (Gymnasium's checker warns on infinite ones), far outside any value the
    # blocks take in practice; the builder clips, so observations always lie in the space.
    blocks = [
        BlockSpec(b.name, b.shape, max(b.low, -OBS_BOUND), min(b.high, OBS_BOUND), b.feature_names)
        for b in blocks
    ]
    return ObservationBuilder(blocks, flatten=flatten, clip=True)


class ScenarioSource:
    """Where episodes come from: a fixed long scenario, a dataset's prices, or the generator.

    Every episode is ``length`` rows drawn with the env's ``np_random``: a window of the fixed
    scenario at a random offset, a freshly generated scenario on a window of the dataset's
    close, or a freshly generated synthetic scenario.
    """

    def __init__(
        self,
        cfg: core.ArbConfig,
        length: int,
        scenario: DefiScenario | None,
        scenario_params: ScenarioParams | None,
        dataset: MarketDataset | None,
        dataset_symbol: str | None,
        predictor_blocks: dict[str, np.ndarray] | None,
    ) -> None:
        self.cfg = cfg
        self.length = length
        self.params = scenario_params or ScenarioParams()
        self.scenario = scenario
        self.reference = None
        if scenario is not None and dataset is not None:
            raise ConfigError("Arbitrage-v0: pass either scenario= or dataset=, not both")
        if scenario is not None:
            if not isinstance(scenario, DefiScenario):
                raise ConfigError("Arbitrage-v0: scenario must be an envs.data.defi.DefiScenario")
            if scenario.n_pools != cfg.n_pools:
                raise DataError(f"scenario has {scenario.n_pools} pools, config has {cfg.n_pools}")
            if len(scenario) < length:
                raise ConfigError(
                    f"Arbitrage-v0: scenario has {len(scenario)} rows, an episode needs "
                    f"{length} (episode_length + gas_window + 1)"
                )
        if dataset is not None:
            self.reference = reference_from_dataset(dataset, dataset_symbol)
            if self.reference.shape[0] < length:
                raise ConfigError(
                    f"Arbitrage-v0: dataset {dataset.source} has {self.reference.shape[0]} "
                    f"bars, an episode needs {length}"
                )
        self.predictors: dict[str, np.ndarray] = {}
        for name, arr in (predictor_blocks or {}).items():
            if scenario is None:
                raise ConfigError(
                    f"Arbitrage-v0: predictor block {name!r} needs a fixed scenario= to align "
                    "with (rows of the scenario)"
                )
            a = np.asarray(arr, dtype=np.float32)
            if a.ndim == 1:
                a = a[:, None]
            if a.shape[0] != len(scenario):
                raise DataError(
                    f"predictor block {name!r}: {a.shape[0]} rows, scenario has {len(scenario)}"
                )
            if not np.all(np.isfinite(a)):
                row = int(np.argwhere(~np.isfinite(a))[0][0])
                raise DataError(f"predictor block {name!r}: non-finite value at row {row}")
            self.predictors[name] = a

    @property
    def predictor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of each predictor block."""
        return {k: tuple(v.shape[1:]) for k, v in self.predictors.items()}

    def draw(self, rng: np.random.Generator) -> tuple[DefiScenario, dict[str, np.ndarray]]:
        """One episode's scenario rows and aligned predictor rows."""
        n = self.length
        if self.scenario is not None:
            start = int(rng.integers(0, len(self.scenario) - n + 1))
            preds = {k: v[start : start + n] for k, v in self.predictors.items()}
            return self.scenario.window(start, start + n), preds
        ref = None
        if self.reference is not None:
            start = int(rng.integers(0, self.reference.shape[0] - n + 1))
            ref = self.reference[start : start + n]
        return generate_scenario(rng, n, self.cfg.n_pools, self.params, ref_price=ref), {}


def action_space_for(cfg: core.ArbConfig) -> spaces.Space:
    """Continuous Box ``[sizes per slot in [-1, 1], bid in [0, 1]]`` or Discrete."""
    if cfg.action_mode == "discrete":
        return spaces.Discrete(cfg.n_discrete_actions)
    low = np.array([-1.0] * cfg.n_slots + [0.0], dtype=np.float32)
    high = np.ones(cfg.n_slots + 1, dtype=np.float32)
    return spaces.Box(low, high, dtype=np.float32)


class Setup(NamedTuple):
    """What the single and the vector env derive alike from their constructor arguments."""

    cfg: core.ArbConfig
    episode_length: int
    scenario_rows: int
    source: ScenarioSource
    builder: ObservationBuilder


def build_setup(
    scenario: DefiScenario | None,
    scenario_params: ScenarioParams | None,
    dataset: MarketDataset | None,
    dataset_symbol: str | None,
    mode: str,
    predictor_blocks: dict[str, np.ndarray] | None,
    flatten: bool,
    episode_length: int,
    config: dict[str, Any],
    predictor_columns: Mapping[str, Sequence[str]] | None = None,
) -> Setup:
    """Validate the shared constructor arguments of ``Arbitrage-v0`` and build its parts.

    Raises:
        ConfigError: ``episode_length`` below 1 or a bad config field.
    """
    if int(episode_length) < 1:
        raise ConfigError(f"episode_length must be >= 1, got {episode_length}")
    cfg = build_config(mode, **config)
    rows = cfg.gas_window + int(episode_length) + 1
    source = ScenarioSource(
        cfg, rows, scenario, scenario_params, dataset, dataset_symbol, predictor_blocks
    )
    builder = make_observation_builder(cfg, source.predictor_shapes, flatten, predictor_columns)
    return Setup(cfg, int(episode_length), rows, source, builder)


class ArbitrageEnv(gym.Env):
    """Arbitrage between a reference venue (CEX) and constant-product AMM pools, or two pools.

    ## Description

    Each step is one block. The agent sees the pools' reserves, the CEX price, gas and recent
    competitor activity, and may send one transaction per slot: in ``cex_dex`` mode it buys the
    base token (e.g. ETH) on pool ``k`` and sells it on the CEX, or the reverse (inventory held on
    both venues, no transfer needed per trade); in ``dex_dex`` mode it routes atomically through
    two pools of different fee and depth. Transactions pay ``gas x (base fee + priority fee) x
    native price`` even when they revert; a competing arbitrageur who outbids the agent takes the
    opportunity first and the agent's transaction then usually fails its slippage check.
    The exogenous dynamics (reference price, EIP-1559 base fee with volatility-linked congestion,
    noise-trader swaps, LP adds/removes, competitor draws) come from ``envs.data.defi``; see
    ``envs.arbitrage_core`` for the exact block timeline and the oracle.

    ## Action Space

    ``action_mode="continuous"``: ``Box(low=[-1]*S + [0], high=1)`` with ``S`` slots (one per
    pool in ``cex_dex``, one route in ``dex_dex``). ``a[s]`` is the signed size as a fraction of
    ``max_trade_size`` (base units): positive buys base from pool ``s`` and sells it on the CEX
    (``dex_dex``: buys from pool 0 and sells into pool 1); negative is the mirror trade. With
    ``continuous_size="optimal"`` the fraction is of the closed-form optimal size of the chosen
    direction at the observed state instead (capped at ``max_trade_size``; zero when that
    direction is unprofitable before gas), so a policy decides whether, how much of the
    optimum, and at which bid, rather than re-deriving the AMM maths.
    ``|a[s]| < dead_zone`` sends nothing (so a policy can abstain without paying gas). ``a[S]``
    in [0, 1] is the priority-fee bid as a fraction of ``max_priority_fee_gwei``, or with
    ``continuous_bid="surplus"`` the share of the intended trade's expected surplus (gross at the
    observed reserves minus gas at the base fee) offered to the builder as tip, capped at the
    max tip: the unit searchers bid in, and the one competitors' bids scale with.
    ``action_mode="discrete"``: ``Discrete(1 + 2*S*len(size_levels)*len(bid_levels))``: 0 is
    no-op, then every (direction, size level, bid level); size levels are fractions of the
    closed-form optimal size at the observed state (``size_reference="optimal"``) or of
    ``max_trade_size``; bid levels are fractions of the max tip, or with
    ``bid_reference="surplus"`` shares of the expected surplus as for ``continuous_bid``.
    ``action_masks()`` marks directions the balances cannot fund. Sizes are always clipped to
    balances, inventory limits and the gas reserve.

    ## Observation Space

    A Dict (or, with ``flatten=True``, one Box vector; names in ``flat_feature_names``) built
    with ``envs.observation.ObservationBuilder``:
    ``pools (3K,)``: per pool the gap of the pool price to the CEX mid in %, log depth vs
    initial, fee in %;
    ``reference (3,)``: last log return, EWMA volatility and spread, in bps;
    ``gas (3,)``: this block's base fee and its recent mean (in units of 20 gwei) and the last
    block's fullness; ``gas_history (W,)``: the last ``gas_window`` base fees;
    ``competition (3,)``: the highest competitor tip of the last block (fraction of the max tip),
    whether a competitor executed, and the EWMA rate of competitor presence;
    ``opportunity (6S,)``: per direction the closed-form optimal size within the constraints as a
    fraction of ``max_trade_size`` and its gross profit in units of the base-fee gas cost and of
    the max-tip gas cost; ``inventory (6,)``: CEX base, CEX quote, DEX base, DEX quote and the
    amounts in transit, over the initial totals; plus one block per ``predictor_blocks`` entry.
    Every value at step ``t`` uses scenario rows ``<= t`` only.

    ## Rewards

    Realised profit in quote of the block: CEX and pool legs net of LP fees, taker fees and the
    half spread, minus gas (reverts included) and rebalancing fees; minus
    ``inventory_penalty * sum_v |base_v - base_v0| * price * vol`` when the penalty is set;
    times ``reward_scale``.

    ## Info

    Per step: ``profit``, ``gas_spent``, ``fees_paid`` (LP fee + CEX taker fee + half spread),
    ``reverted``, ``competitor_took`` (competitor trades that came first), ``outbid`` (our
    transaction lost the priority auction), ``traded``, ``rebalance_fee``, ``oracle_profit``
    (best trade per pool at the block's start within our constraints, perfect inclusion at the
    competitor's bid known in hindsight; see ``envs.arbitrage_core``), ``inventory`` (cex base,
    cex quote, dex base, dex quote), ``in_transit``, ``opportunity_size`` and ``cum_*`` running
    totals; ``action_mask`` in discrete mode; at the end ``episode`` with total profit, gas,
    reverts, ``oracle_profit`` / ``share_of_oracle`` and ``path_oracle_profit`` /
    ``share_of_path_oracle``.

    ## Oracle

    Two references, both with hindsight on the block's competitor bids and gas:

    - ``oracle_profit`` (headline, ``share_of_oracle``): at the episode's end the oracle policy
      (the ``oracle`` baseline: the closed-form best trade per pool within our constraints, a tip
      just above the competitor's bid, so it is always included first) is replayed over the same
      scenario rows from the same initial state, with the same competitors, gas, reverts,
      inventory limits and rebalancing. It does not depend on the evaluated policy. It is the
      best greedy policy with perfect foresight of the current block, not a proof-level bound: a
      policy that lets gaps grow to pay gas less often could in principle exceed it (shares
      above 1), and with ``latency > 0`` the oracle acts on stale reserves like everybody else.
    - ``path_oracle_profit`` (``share_of_path_oracle``): the per-block best trade summed along
      the evaluated policy's own trajectory (``info["oracle_profit"]`` per step). It is a strict
      upper bound on that policy's profit, but loose for passive policies: a gap they leave open
      is counted again in every block it stays open.

    ``episode_oracle=False`` skips the replay (``oracle_profit`` is then NaN); it costs about one
    episode of env arithmetic per episode end, so training envs switch it off.

    ## Episode End

    ``truncated`` after ``episode_length`` steps; never ``terminated`` (balances cannot go
    negative, so there is no ruin).

    ## Arguments

    - ``scenario``: a fixed ``DefiScenario``; episodes are windows at seeded random offsets.
    - ``scenario_params``: ``ScenarioParams`` of the generator (default ETH/USDC-like); used
      when no scenario is given. Each reset generates a fresh scenario from ``self.np_random``.
    - ``dataset``, ``dataset_symbol``: take the reference price path from a ``MarketDataset``'s
      close (windows at seeded offsets); gas, flows and competitors are still generated.
    - ``mode``: ``"cex_dex"`` (default) or ``"dex_dex"``.
    - ``pool_fees``, ``pool_tvl``: LP fee and initial value locked (quote) per pool; defaults
      ``(0.0005,)``/``(5e6,)`` in ``cex_dex``, ``(0.0005, 0.003)``/``(5e6, 2e6)`` in ``dex_dex``.
    - ``cex_fee``: CEX taker fee (0.0005).
    - ``action_mode``, ``size_levels`` (0.5, 1.0), ``bid_levels`` (0, 0.1, 0.25, 0.5: competitor
      bids scale with the opportunity, so a ladder of bids matters), ``size_reference``
      ("optimal", discrete), ``bid_reference`` ("max" or "surplus", discrete),
      ``continuous_size`` ("max" or "optimal"), ``continuous_bid`` ("max" or "surplus"): see
      Action Space.
    - ``max_trade_size``: largest trade in base units (20; the 99th percentile of optimal
      sizes in the default scenario is about 10); ``dead_zone``: 0.05.
    - ``max_priority_fee_gwei``: tip at bid 1.0 (300 gwei).
    - ``gas_per_swap`` (110k per pool leg), ``gas_overhead`` (40k), ``revert_gas`` (45k).
    - ``slippage_tolerance``: revert when the pool moved by more than this (0.2%).
    - ``latency``: blocks between decision and inclusion (0: the next block).
    - ``competitor_scale`` (quote), ``competitor_bid_share``, ``competitor_bid_sigma``: a
      competitor shows up with probability ``1 - exp(-(G - gas)/scale)`` and bids
      ``share*(G - gas)`` worth of tip, log-normally scattered with ``sigma``.
    - ``initial_balances``: (cex_base, cex_quote, dex_base, dex_quote), default
      (100, 250000, 100, 250000); ``inventory_limits``: max base held on (cex, dex).
    - ``rebalance``, ``rebalance_threshold``, ``rebalance_fee_bps``, ``rebalance_fee_fixed``,
      ``rebalance_delay``: automatic transfers when a venue's share of a token falls under the
      threshold, restoring the initial split after the delay (steps) for a fee.
    - ``inventory_penalty``: weight of the inventory-risk penalty (0).
    - ``reward_scale``: multiplies the reward only (``info`` keeps quote units), e.g. 0.01 to
      give learners rewards of order one (1.0).
    - ``gas_window``: length of ``gas_history`` (8); ``base_fee_ref_gwei``: gas normaliser (20).
    - ``predictor_blocks``: ``{name: array (T, ...)}`` aligned with the rows of ``scenario``;
      ``predictor_columns``: ``{name: column names}`` along each block's last axis (used by
      ``flat_feature_names``; default ``pred_gas[0]`` ...).
    - ``flatten``: flat Box observation; ``episode_length``: steps per episode (1000);
      ``render_mode``: ``"ansi"`` or None; ``episode_oracle``: replay the oracle at episode end
      (True; see Oracle).

    ## Version History

    - v0: initial release (issue 4).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
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
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be one of {self.metadata['render_modes']}")
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
        self.render_mode = render_mode
        self.observation_space = self.builder.observation_space
        self.action_space = action_space_for(self.cfg)
        self._scen = core.ScenarioBatch.empty(
            1, self.scenario_rows, self.cfg.n_pools, self.source.predictor_shapes
        )
        self._state = core.init_state(self.cfg, 1)
        self.episode_oracle = bool(episode_oracle)
        self._state0 = self._state  # the state after reset, for the episode's oracle run
        self._vol0 = (scenario_params or ScenarioParams()).vol_per_block
        self._ready = False
        self._last_info: dict[str, Any] = {}

    # -- Gymnasium API --------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode on a fresh (seeded) scenario."""
        super().reset(seed=seed)
        scen, preds = self.source.draw(self.np_random)
        self._scen.load(0, scen, preds, self._vol0)
        core.reset_slots(self.cfg, self._state, self._scen, np.array([0]))
        self._state0 = core.take_rows(self._state, np.array([0]))
        self._ready = True
        obs, opp = self._observe()
        info = self._info(None, opp)
        self._last_info = info
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Send the action's transaction, run the block, return the next observation."""
        if not self._ready:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self.cfg.action_mode == "discrete":
            a = np.asarray(action)
            if a.size != 1 or not 0 <= int(a.reshape(-1)[0]) < self.cfg.n_discrete_actions:
                raise ConfigError(
                    f"action {action!r} outside Discrete({self.cfg.n_discrete_actions})"
                )
            act = a.reshape(1).astype(np.int64)
        else:
            act = np.asarray(action, dtype=np.float64).reshape(1, -1)
            if act.shape[1] != self.cfg.n_slots + 1 or not np.all(np.isfinite(act)):
                raise ConfigError(
                    f"action must be {self.cfg.n_slots + 1} finite floats, got {action!r}"
                )
        size, tip = core.decode_actions(self.cfg, act, self._state, self._scen)
        res = core.core_step(self.cfg, self._state, self._scen, size, tip, self.episode_length)
        truncated = bool(res.truncated[0])
        if truncated:
            self._ready = False
        obs, opp = self._observe()
        info = self._info(res, opp)
        self._last_info = info
        return obs, float(res.reward[0]), False, truncated, info

    def render(self) -> str | None:
        """One-line text summary of the current block (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        s = self._state
        row = int(s.row0[0] + s.t[0])
        gaps = 100 * np.log(s.y[0] / s.x[0] / self._scen.ref_price[0, row])
        c = s.cum
        return (
            f"t={int(s.t[0])} ref={self._scen.ref_price[0, row]:.2f} "
            f"gap%={np.array2string(gaps, precision=3)} base={self._scen.base_fee[0, row]:.1f}gwei "
            f"profit={c['profit'][0]:.2f} oracle={c['oracle_profit'][0]:.2f} "
            f"gas={c['gas_spent'][0]:.2f} reverts={int(c['reverts'][0])} "
            f"bal={np.array2string(s.bal[0], precision=2)}"
        )

    # -- extras ---------------------------------------------------------------------------------

    def action_masks(self) -> np.ndarray:
        """Valid discrete actions (no-op always; no direction the balances cannot fund)."""
        if self.cfg.action_mode != "discrete":
            raise ConfigError("action_masks() is only defined for action_mode='discrete'")
        opp = self._opportunities()
        return core.discrete_masks(self.cfg, opp)[0]

    def oracle_action(self) -> np.ndarray:
        """Privileged continuous action realising this block's oracle trade (knows the
        competitor's bid in hindsight). Exact with ``latency=0``; used by the oracle baseline."""
        return core.core_oracle_action(self.cfg, self._state, self._scen)[0].astype(np.float32)

    @property
    def flat_feature_names(self) -> list[str]:
        """Names of the flat observation's columns."""
        return self.builder.flat_feature_names()

    @property
    def state(self) -> core.ArbState:
        """The batched (N=1) state, read-only by convention (baselines and tests read it)."""
        return self._state

    @property
    def scenario_batch(self) -> core.ScenarioBatch:
        """The loaded scenario rows of the current episode (N=1)."""
        return self._scen

    def _opportunities(self) -> dict[str, np.ndarray]:
        s = self._state
        return core.opportunity_table(self.cfg, s, self._scen, s.row0 + s.t, np.zeros(1))

    def _observe(self) -> tuple[Any, dict[str, np.ndarray]]:
        opp = self._opportunities()
        blocks = core.observation_blocks(self.cfg, self._state, self._scen, opp)
        return self.builder.build({k: v[0] for k, v in blocks.items()}), opp

    def _info(self, res: core.StepResult | None, opp: dict[str, np.ndarray]) -> dict[str, Any]:
        s = self._state
        info: dict[str, Any] = {}
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
        for key in keys:
            info[key] = float(getattr(res, key)[0]) if res is not None else 0.0
        info["inventory"] = s.bal[0].copy()
        info["in_transit"] = s.transit[0].copy()
        info["opportunity_size"] = opp["size"][0].copy()
        for key, v in s.cum.items():
            info[f"cum_{key}"] = float(v[0])
        if self.cfg.action_mode == "discrete":
            info["action_mask"] = core.discrete_masks(self.cfg, opp)[0]
        if res is not None and bool(res.truncated[0]):
            oracle = float("nan")
            if self.episode_oracle:
                ep_len = self.episode_length
                run = core.oracle_run_profit(self.cfg, self._state0, self._scen, ep_len)
                oracle = float(run[0])
            info["episode"] = episode_summary({k: v[0] for k, v in s.cum.items()}, oracle)
        return info


def episode_summary(cum: dict[str, Any], oracle_profit: float = float("nan")) -> dict[str, float]:
    """Episode figures from cumulative sums: profit, gas, reverts, shares of oracle profit.

    Args:
        cum: the episode's cumulative sums (``ArbState.cum`` of one env).
        oracle_profit: the oracle policy's profit on the same episode
            (:func:`envs.arbitrage_core.oracle_run_profit`); NaN when it was not computed.
    """
    path_oracle = float(cum["oracle_profit"])
    profit = float(cum["profit"])
    oracle = float(oracle_profit)
    return {
        "total_profit": profit,
        "gas_spent": float(cum["gas_spent"]),
        "fees_paid": float(cum["fees_paid"]),
        "reverts": float(cum["reverts"]),
        "competitor_took": float(cum["competitor_took"]),
        "trades": float(cum["trades"]),
        "outbid": float(cum["outbid"]),
        "rebalance_fees": float(cum["rebalance_fees"]),
        "oracle_profit": oracle,
        "share_of_oracle": profit_share(profit, oracle),
        "path_oracle_profit": path_oracle,
        "share_of_path_oracle": profit_share(profit, path_oracle),
        "total_reward": float(cum["reward"]),
    }


def profit_share(profit: float | np.ndarray, oracle: float | np.ndarray) -> Any:
    """``profit / oracle`` where the oracle earned something, 0 where it earned nothing, NaN
    where it was not computed (elementwise for arrays)."""
    profit, oracle = np.asarray(profit, dtype=np.float64), np.asarray(oracle, dtype=np.float64)
    out = np.where(oracle > 0, profit / np.where(oracle > 0, oracle, 1.0), 0.0)
    out = np.where(np.isnan(oracle), np.nan, out)
    return float(out) if out.ndim == 0 else out
