"""``MarketTrading-v0``: single- and multi-asset trading with realistic execution and costs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from envs.execution import (
    ActionError,
    ExecutionConfig,
    continuous_to_target,
    discrete_action_masks,
    discrete_to_target,
    validate_positions,
    weights_to_target,
)
from envs.market_core import (
    PORTFOLIO_CLIP,
    CoreParams,
    CoreState,
    MarketArrays,
    build_market_arrays,
)
from envs.market_fast import ScalarActions, ScalarCore, ScalarState
from envs.metrics import episode_metrics
from envs.observation import BlockSpec, ObservationBuilder, block_column_names, check_column_blocks
from envs.rewards import Reward, RewardContext, make_reward

__all__ = ["ACTION_MODES", "BACKENDS", "MarketSetup", "MarketTradingEnv", "build_market_setup"]

ACTION_MODES = ("discrete", "continuous", "weights")
BACKENDS = ("auto", "python", "numba")
_empty = np.empty  # module globals: one lookup per step instead of two
_np_log = np.log
_F32 = np.dtype(np.float32)  # a dtype instance: np.empty skips converting the type (~20 ns)
_INT64 = np.int64
# Where the numba backend's state array holds the bar, the units, the traded notional and the
# portfolio block (envs.market_numba.SINGLE_STATE_FIELDS; tests/test_market_numba_single.py pins
# these): module constants, so importing this module does not import numba.
_ST_T, _ST_UNITS, _ST_NOTIONAL, _ST_BLOCK = 0, 4, 15, slice(16, 21)
_RESERVED_BLOCKS = ("market", "portfolio")


@dataclass(frozen=True)
class MarketSetup:
    """Everything derived from the constructor arguments, shared by the single and batched env.

    Attributes:
        arrays: precomputed market arrays.
        params: static step parameters.
        reward: the reward function.
        builder: the observation builder (Dict or flat).
        action_space: the action space of one env.
        action_mode: ``discrete``, ``continuous`` or ``weights``.
        positions: discrete target exposures (discrete mode), else None.
        scaler: the fitted feature scaler in use.
        feature_names: the ``F`` feature names per asset.
        symbols: asset names.
        timestamps: ``(T,)`` bar timestamps (for rendering).
        episode_length: steps per episode, None = to the end of the data.
        random_start: draw the first decision bar at random.
    """

    arrays: MarketArrays
    params: CoreParams
    reward: Reward
    builder: ObservationBuilder
    action_space: spaces.Space
    action_mode: str
    positions: np.ndarray | None
    scaler: Any
    feature_names: tuple[str, ...]
    symbols: tuple[str, ...]
    timestamps: np.ndarray
    episode_length: int | None
    random_start: bool

    def start_range(self) -> tuple[int, int]:
        """Inclusive range of first decision bars an episode may start at."""
        lo = self.arrays.first_decision
        last = self.arrays.n_bars - 1
        hi = last - (self.episode_length or 1)
        return lo, hi

    def draw_start(self, rng: np.random.Generator) -> tuple[int, int]:
        """First decision bar and last bar of a new episode, drawn with ``rng`` if random."""
        lo, hi = self.start_range()
        start = int(rng.integers(lo, hi + 1)) if self.random_start else lo
        end = self.arrays.n_bars - 1
        if self.episode_length is not None:
            end = start + self.episode_length
        return start, end

    def map_actions(self, actions: Any, batch: int) -> np.ndarray:
        """Validate a batch of raw actions and map them to ``(batch, N)`` target exposures.

        Raises:
            ActionError: wrong shape, non-finite values, bad discrete indices.
        """
        cfg = self.params.execution
        if self.action_mode == "discrete":
            arr = np.asarray(actions)
            if arr.shape not in ((batch,),) and not (batch == 1 and arr.shape in ((), (1,))):
                raise ActionError(
                    f"discrete action: expected shape ({batch},) of integer indices, got "
                    f"{arr.shape}"
                )
            return discrete_to_target(arr.reshape(batch), self.positions, cfg)
        shape = self.action_space.shape
        arr = np.asarray(actions, dtype=np.float64) if _is_numeric(actions) else None
        if arr is None or (
            arr.shape != (batch, *shape) and not (batch == 1 and arr.shape == shape)
        ):
            got = "non-numeric" if arr is None else str(arr.shape)
            raise ActionError(f"{self.action_mode} action: expected shape {shape}, got {got}")
        arr = arr.reshape(batch, *shape)
        if not np.all(np.isfinite(arr)):
            raise ActionError(f"{self.action_mode} action contains NaN or inf: {arr.tolist()}")
        if self.action_mode == "continuous":
            return continuous_to_target(arr, cfg)
        return weights_to_target(arr, cfg)


def _is_numeric(x: Any) -> bool:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        return False
    return arr.dtype.kind in "iufb"


def _fit_scaler(values: np.ndarray, warmup: int, names: Sequence[str]) -> Any:
    from envs.features.scaling import StandardScaler

    return StandardScaler().fit(values, warmup=warmup, feature_names=names)


def build_market_setup(
    *,
    dataset: MarketDataset | None = None,
    features: Sequence[str] | None = None,
    window: int = 32,
    episode_length: int | None = None,
    random_start: bool = True,
    action_mode: str = "discrete",
    positions: Sequence[float] = (-1.0, 0.0, 1.0),
    max_leverage: float = 1.0,
    allow_short: bool = True,
    initial_cash: float = 10_000.0,
    taker_fee: float = 0.001,
    half_spread: float = 0.0002,
    impact_k: float = 1.0,
    borrow_rate: float = 0.05,
    margin_rate: float = 0.05,
    latency: int = 1,
    lot_size: float = 0.0,
    min_notional: float = 0.0,
    rebalance_band: float = 0.05,
    vol_lookback: int = 24,
    obs_clip: float = 10.0,
    reward: str | Callable[[RewardContext], Any] | Reward = "log_return",
    reward_kwargs: Mapping[str, Any] | None = None,
    predictor_blocks: Mapping[str, np.ndarray] | None = None,
    predictor_columns: Mapping[str, Sequence[str]] | None = None,
    scaler: Any = None,
    flatten: bool = False,
    max_drawdown: float | None = None,
) -> MarketSetup:
    """Validate the constructor arguments and precompute everything per dataset.

    Arguments are those of :class:`MarketTradingEnv` (except ``render_mode``).

    Raises:
        ConfigError: an argument out of range.
        DataError: the data cannot support an episode.
    """
    from envs.features import compute_features

    if dataset is None:
        from envs.data import load_sample

        dataset = load_sample("btc_usd_hourly")
    if not isinstance(dataset, MarketDataset):
        raise ConfigError(f"dataset must be a MarketDataset, got {type(dataset).__name__}")
    if action_mode not in ACTION_MODES:
        raise ConfigError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
    if int(window) != window or window < 1:
        raise ConfigError(f"window must be an integer >= 1, got {window!r}")
    window = int(window)
    if episode_length is not None and (int(episode_length) != episode_length or episode_length < 1):
        raise ConfigError(f"episode_length must be None or an integer >= 1, got {episode_length!r}")
    if not np.isfinite(initial_cash) or initial_cash <= 0:
        raise ConfigError(f"initial_cash must be > 0, got {initial_cash!r}")
    if max_drawdown is not None and not 0 < max_drawdown < 1:
        raise ConfigError(f"max_drawdown must be None or in (0, 1), got {max_drawdown!r}")
    if int(vol_lookback) != vol_lookback or vol_lookback < 2:
        raise ConfigError(f"vol_lookback must be an integer >= 2, got {vol_lookback!r}")
    cfg = ExecutionConfig(
        taker_fee=taker_fee,
        half_spread=half_spread,
        impact_k=impact_k,
        borrow_rate=borrow_rate,
        margin_rate=margin_rate,
        max_leverage=max_leverage,
        allow_short=allow_short,
        lot_size=lot_size,
        min_notional=min_notional,
        rebalance_band=rebalance_band,
        latency=latency,
    )
    n_assets = dataset.n_assets
    pos_arr = None
    if action_mode == "discrete":
        if n_assets != 1:
            raise ConfigError(
                f"action_mode='discrete' is single-asset only; {dataset.source} has {n_assets} "
                "assets: use 'continuous' or 'weights', or dataset.select([symbol])"
            )
        pos_arr = validate_positions(positions, cfg)

    feature_set = compute_features(dataset, features)
    values = feature_set.values  # (T, N, F) float32
    if scaler is None:
        scaler = _fit_scaler(values, feature_set.warmup, feature_set.names)
    scaled = np.asarray(scaler.transform(values), dtype=np.float32)
    if scaled.shape != values.shape:
        raise ConfigError(
            f"scaler returned shape {scaled.shape} for features of shape {values.shape}"
        )
    if not np.isfinite(obs_clip) or obs_clip <= 0:
        raise ConfigError(f"obs_clip must be a finite number > 0, got {obs_clip!r}")
    # Scaled features are clipped once here (as SB3's VecNormalize clips at 10 std) so the
    # market block has finite Box bounds; the clip never depends on future bars.
    flat_features = np.clip(scaled.reshape(len(dataset), -1), -obs_clip, obs_clip)

    blocks = dict(predictor_blocks or {})
    clash = [name for name in blocks if name in _RESERVED_BLOCKS]
    if clash:
        raise ConfigError(f"predictor_blocks names {clash} are reserved; rename them")
    check_column_blocks(predictor_columns, list(blocks))
    arrays = build_market_arrays(
        dataset,
        flat_features,
        feature_set.warmup,
        window,
        blocks=blocks,
        vol_lookback=int(vol_lookback),
        impact_needed=impact_k > 0,
    )
    params = CoreParams(
        execution=cfg, initial_cash=float(initial_cash), window=window, max_drawdown=max_drawdown
    )
    setup_reward = make_reward(reward, dict(reward_kwargs or {}))

    symbols = dataset.symbols
    if n_assets == 1:
        market_names = tuple(feature_set.names)
        pos_names = ("position",)
        target_names = ("last_target",)
    else:
        market_names = tuple(f"{s}:{f}" for s in symbols for f in feature_set.names)
        pos_names = tuple(f"position:{s}" for s in symbols)
        target_names = tuple(f"last_target:{s}" for s in symbols)
    specs = [
        BlockSpec(
            "market",
            (window, flat_features.shape[1]),
            low=-float(obs_clip),
            high=float(obs_clip),
            feature_names=market_names,
        )
    ]
    for name, arr in arrays.blocks.items():
        # Bounds are the block's own range over the bars episodes can observe: the arrays are
        # given whole, so every observation lies inside by construction.
        seen = arr[arrays.first_decision :]
        shape = tuple(arr.shape[1:])
        specs.append(
            BlockSpec(
                name,
                shape,
                low=float(seen.min()),
                high=float(seen.max()),
                feature_names=block_column_names(predictor_columns, name, shape),
            )
        )
    specs.append(
        BlockSpec(
            "portfolio",
            (2 * n_assets + 3,),
            low=-PORTFOLIO_CLIP,
            high=PORTFOLIO_CLIP,
            feature_names=(*pos_names, "cash", "unrealised_pnl", "time_in_trade", *target_names),
        )
    )
    builder = ObservationBuilder(specs, flatten=flatten)

    if action_mode == "discrete":
        action_space: spaces.Space = spaces.Discrete(pos_arr.shape[0])
    elif action_mode == "continuous":
        low = -1.0 if cfg.allow_short else 0.0
        action_space = spaces.Box(low, 1.0, shape=(n_assets,), dtype=np.float32)
    else:
        low_arr = np.full(n_assets + 1, -1.0 if cfg.allow_short else 0.0, dtype=np.float32)
        low_arr[-1] = 0.0
        action_space = spaces.Box(low_arr, np.ones(n_assets + 1, np.float32), dtype=np.float32)

    setup = MarketSetup(
        arrays=arrays,
        params=params,
        reward=setup_reward,
        builder=builder,
        action_space=action_space,
        action_mode=action_mode,
        positions=pos_arr,
        scaler=scaler,
        feature_names=tuple(feature_set.names),
        symbols=symbols,
        timestamps=dataset.timestamps,
        episode_length=None if episode_length is None else int(episode_length),
        random_start=bool(random_start),
    )
    lo, hi = setup.start_range()
    if hi < lo:
        raise DataError(
            f"{dataset.source}: {len(dataset)} bars cannot hold an episode of "
            f"{episode_length} steps after warmup={feature_set.warmup} and window={window} "
            f"(first decision bar {lo}); use a shorter episode_length or more data"
        )
    return setup


class MarketTradingEnv(gym.Env):
    """Trade one asset or a portfolio of assets on historical or synthetic bars, with costs.

    ## Description

    Each episode is a window of a :class:`~envs.data.dataset.MarketDataset` (real CSV or
    synthetic). At every step the agent sees causal features up to the current bar's close and
    picks a target exposure; the order that gets there is filled at the open of the next bar
    (``latency`` bars later), paying a taker fee, half the bid-ask spread and square-root market
    impact ``impact_k * sigma * sqrt(|q| / V)`` per unit notional (Almgren et al. 2005). Short
    positions pay ``borrow_rate`` and borrowed cash pays ``margin_rate`` (both annual, charged per
    bar). The book is marked to market at each close: value = cash + sum(units * close).
    Sizing, costs and the step arithmetic live in :mod:`envs.execution` and
    :mod:`envs.market_core` (the reference), shared with the batched env and the policy
    runner; this env steps through their scalar twin :mod:`envs.market_fast` (Python floats,
    equal bit for bit, tested) because NumPy's per-call overhead dominates a batch of one, or,
    where numba is installed and the setup allows (one asset, ``log_return``, latency 1), one
    compiled call per step (:mod:`envs.market_numba_single`, equal bit for bit to the Python
    floats, tested; see ``backend``).

    ## Action Space

    * ``action_mode="discrete"`` (single asset): ``Discrete(K)``, action ``i`` targets exposure
      ``positions[i]`` (default ``(-1, 0, 1)`` = short / flat / long). ``action_masks()`` gives the
      allowed actions (shorts masked when ``allow_short=False``; taken anyway they go flat).
    * ``"continuous"``: ``Box(-1, 1, (N,))`` (``[0, 1]`` without shorts), target exposure per
      asset in units of ``max_leverage`` (exposure = action * max_leverage; the space is
      normalised as SB3 recommends). Out-of-range values are clipped, then the gross exposure
      is scaled down to ``max_leverage``.
    * ``"weights"``: ``Box((N + 1,))`` weights over the assets plus cash (last entry), in
      ``[-1, 1]`` (``[0, 1]`` without shorts; cash always ``[0, 1]``). Projection: clip, then
      L1-normalise ``w = a / sum|a|``; exposures are ``w[:N] * max_leverage``; all zeros = cash.

    NaN/inf or wrongly shaped actions raise :class:`~envs.execution.ActionError` (a
    ``DataError``). Orders are rounded toward zero to ``lot_size``, and dropped under
    ``min_notional`` or inside ``rebalance_band`` (a target of exactly 0 always closes): with
    the default band of 0.05, holding a position does not trade back every small price drift.

    ## Observation Space

    A ``Dict`` of float32 blocks, built by :class:`~envs.observation.ObservationBuilder`
    (``flatten=True`` gives one ``Box`` in the same order; ``env.observation_builder
    .flat_feature_names()`` names every column, ``env.block_names`` the blocks):

    * ``market``: ``(window, N * F)`` scaled features of bars ``t - window + 1 .. t`` (columns
      ``symbol:feature`` when N > 1).
    * one block per ``predictor_blocks`` entry: the row of that aligned array at bar ``t``.
    * ``portfolio``: ``(2N + 3,)`` exposure per asset, cash / value, unrealised PnL / value,
      time in the current trade ``bars / (bars + window)``, last target exposure per asset;
      clipped to ``[-100, 100]`` (reached only near ruin).

    ## Rewards

    From :mod:`envs.rewards`: ``log_return`` of the value net of all costs (default),
    ``differential_sharpe``, ``sortino``, ``drawdown``, ``turnover``, ``excess_buy_and_hold``,
    or a callable ``fn(ctx: RewardContext) -> (1,)`` array (see that module).

    ## Starting State

    Flat book with ``initial_cash``. The first decision bar is drawn uniformly (``random_start``)
    from the bars that leave a full feature window and ``episode_length`` steps, or is the first
    such bar.

    ## Episode End

    ``terminated`` when the value reaches 0 (ruin) or falls more than ``max_drawdown`` below
    its peak; ``truncated`` after ``episode_length`` steps or at the last bar of the data.

    ## Info

    ``portfolio_value``, ``position`` (exposure per asset), ``cash``, episode totals ``fees``,
    ``spread``, ``impact``, ``funding`` (cash units) and ``trades`` (orders filled), this step's
    ``step_cost``; at episode end ``episode``: ``return``, ``sharpe``, ``sortino``,
    ``max_drawdown``, ``calmar``, ``turnover`` (from :func:`envs.metrics.episode_metrics`,
    annualised with the data's bars per year).

    ## Arguments

    * ``dataset``: a ``MarketDataset``; None loads the ``btc_usd_hourly`` sample.
    * ``features``: feature names for :func:`envs.features.compute_features` (None = defaults).
    * ``window`` (32): bars in the market block.
    * ``episode_length`` (None): steps per episode; None runs to the end of the data.
    * ``random_start`` (True): random first bar (through ``self.np_random``).
    * ``action_mode`` ("discrete"), ``positions`` ((-1, 0, 1)), ``max_leverage`` (1.0),
      ``allow_short`` (True).
    * ``initial_cash`` (10 000).
    * ``taker_fee`` (0.001), ``half_spread`` (0.0002), ``impact_k`` (1.0), ``borrow_rate``
      (0.05/yr), ``margin_rate`` (0.05/yr), ``latency`` (1 bar), ``lot_size`` (0),
      ``min_notional`` (0), ``rebalance_band`` (0.05), ``vol_lookback`` (24 returns for sigma).
    * ``obs_clip`` (10): scaled features are clipped to ``[-obs_clip, obs_clip]``.
    * ``reward`` ("log_return") and ``reward_kwargs``.
    * ``predictor_blocks``: ``{name: (T, ...) array}`` aligned with the dataset.
    * ``predictor_columns``: ``{name: column names}`` along each predictor block's last axis
      (e.g. ``pred_gas_mean_h1``), used by ``flat_feature_names``; default ``pred_gas[0]`` ...
    * ``scaler``: a fitted feature scaler with ``transform``; None fits a ``StandardScaler``
      on this env's data (exposed as ``env.scaler`` to pass to validation/test envs).
    * ``flatten`` (False), ``max_drawdown`` (None), ``render_mode`` (None, "ansi", "rgb_array").
    * ``backend`` ("auto"): the step's implementation. ``"python"``: the Python-float step of
      :mod:`envs.market_fast`. ``"numba"``: the compiled step of
      :mod:`envs.market_numba_single` (one call per step, the same results bit for bit,
      ``tests/test_market_numba_single.py``); raises :class:`ConfigError` naming the reason
      when numba is not installed or the setup is one the kernel does not support (more
      than one asset, a reward other than ``log_return``, latency > 1). ``"auto"``: numba
      when both hold, else python. The one in use is :attr:`backend`.

    ## Version History

    * v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self, *, render_mode: str | None = None, backend: str = "auto", **kwargs: Any
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.render_mode = render_mode
        self.setup = build_market_setup(**kwargs)
        self.action_space = self.setup.action_space
        self.observation_space = self.setup.builder.observation_space
        setup = self.setup
        # The python backend's step runs on Python floats (envs.market_fast), pinned bit for bit
        # to the batched step_core by tests/test_market_fast.py; NumPy per-call overhead would
        # dominate B = 1. Both backends reset through it (initial state, first observation).
        self._core = ScalarCore(setup.arrays, setup.params, setup.reward)
        self._actions = ScalarActions(
            setup.action_mode,
            setup.positions,
            setup.params.execution,
            setup.action_space.shape,
            setup.arrays.n_assets,
        )
        self._core_step = self._core.step_function()
        self._map_action = self._actions.map_function()
        # The builder's trusted assembler: sources checked once, then copies only per step.
        self._assemble = setup.builder.bar_assembler(
            "market", setup.arrays.features, setup.arrays.blocks, "portfolio"
        )
        # Bound methods called per step: a bound Python method is called without the
        # instance-call slot (~40 ns less per call on CPython 3.11).
        self._observe = self._assemble.__call__
        self._one_asset = setup.arrays.n_assets == 1
        self._py_state: ScalarState | None = None  # the episode state (python backend)
        self._equity: list[float] = []
        self._fills: list[tuple[int, int]] = []  # (bar, +1 buy / -1 sell) for rendering
        self._start = 0
        self._done = False
        # numba backend: the episode state as one float64 array (envs.market_numba_single
        # .STATE_FIELDS), the template of the ScalarState fields it does not hold, the compiled
        # step, and (during an episode) everything step reads, in one tuple: one attribute
        # load and an unpack instead of seven attribute loads per step.
        self._st: np.ndarray | None = None
        self._template: ScalarState | None = None
        self._kernel: Any = None
        self._entry: Callable[..., tuple] | None = None
        self._fast: tuple | None = None
        self.backend = self._choose_backend(backend)
        if self.backend == "numba":
            self._bind_kernel()

    def _choose_backend(self, backend: str) -> str:
        """``numba`` if asked for (or ``auto``) and the kernel supports the setup, else python."""
        if backend == "python":  # without importing numba (and its process-wide LLVM option)
            return "python"
        from envs.market_numba import choose_backend

        setup = self.setup
        return choose_backend(backend, "python", setup.arrays, setup.params, setup.reward)

    def _bind_kernel(self) -> None:
        from envs.market_numba_single import SingleKernel

        setup = self.setup
        self._kernel = SingleKernel(setup.arrays, setup.params, self._assemble, setup.builder)
        self._entry = self._kernel.entry
        self._unpack = SingleKernel.unpack
        self._pack = SingleKernel.pack

    def _bind_episode(self) -> None:
        """The tuple the numba step reads (the state array and the equity list are per episode)."""
        kernel = self._kernel
        self._fast = (
            self._entry,
            self._st,
            kernel.tables,
            kernel.source,
            kernel.obs_size,
            # Index -> target exposure for int / np.int64 discrete actions (ScalarActions'),
            # and the mapping of anything else (a list, or None for the NumPy path).
            self._actions._by_index,
            self._map_action,
            self._equity.append,
            kernel.window_shape,  # None: flat layouts
        )

    def __getstate__(self) -> dict[str, Any]:
        # The compiled kernel does not pickle: it is built again on load (from the numba
        # cache), or the episode continues on the python backend where numba is missing.
        drop = ("_kernel", "_entry", "_fast", "_unpack", "_pack")
        return {k: v for k, v in self.__dict__.items() if k not in drop}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._kernel = self._entry = self._fast = None
        if self.backend == "numba":
            from envs.market_numba import numba_available

            if numba_available():
                self._bind_kernel()
                if self._st is not None:
                    self._bind_episode()
            else:  # unpickled without numba: continue the episode on the python backend
                if self._st is not None:
                    from envs.market_numba_single import SingleKernel

                    self._py_state = SingleKernel.unpack(self._st, self._template)
                self._st = None
                self.backend = "python"

    @property
    def _scalar(self) -> ScalarState | None:
        """The episode state as a :class:`ScalarState` (numba backend: a fresh snapshot)."""
        st = self._st
        if st is not None:
            return self._unpack(st, self._template)
        return self._py_state

    # --- public views -------------------------------------------------------------------------
    @property
    def observation_builder(self) -> ObservationBuilder:
        """The builder of this env's observations (names of every element)."""
        return self.setup.builder

    @property
    def block_names(self) -> tuple[str, ...]:
        """Names of the observation blocks, in flattening order."""
        return self.setup.builder.block_names

    @property
    def scaler(self) -> Any:
        """The fitted feature scaler; pass it to validation/test envs."""
        return self.setup.scaler

    @property
    def state(self) -> CoreState | None:
        """A snapshot of the current state as a batched :class:`CoreState` (``B = 1``)."""
        scalar = self._scalar
        return None if scalar is None else self._core.to_core_state(scalar)

    def action_masks(self) -> np.ndarray:
        """Allowed discrete actions (True = allowed), as sb3-contrib's MaskablePPO expects."""
        if self.setup.action_mode != "discrete":
            raise ConfigError("action_masks() exists only for action_mode='discrete'")
        return discrete_action_masks(self.setup.positions, self.setup.params.execution)

    # --- gym API --------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start a new episode; ``options={"start": bar}`` forces the first decision bar."""
        super().reset(seed=seed)
        start, end = self.setup.draw_start(self.np_random)
        if options and "start" in options:
            lo, hi = self.setup.start_range()
            start = int(options["start"])
            if not lo <= start <= hi:
                raise ConfigError(f"options['start'] must be in [{lo}, {hi}], got {start}")
            end = self.setup.arrays.n_bars - 1
            if self.setup.episode_length is not None:
                end = start + self.setup.episode_length
        self._start = start
        scalar = self._core.initial_state(start, end)
        self._equity = [self.setup.params.initial_cash]
        self._fills = []
        self._done = False
        if self._entry is not None:
            self._st = self._pack(scalar)
            self._template = scalar
            self._bind_episode()
        else:
            self._py_state = scalar
        block, exposure = self._core.portfolio(scalar)
        return self._assemble(start, block), self._info(scalar, exposure, step_cost=0.0)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Fill the order for ``action`` at the next open, mark at the close, return the result."""
        fast = self._fast
        if fast is not None:  # the numba backend, after reset
            entry, st, tables, source, obs_size, by_index, map_action, append, window_shape = fast
            if self._done:
                raise RuntimeError(
                    "MarketTradingEnv.step called before reset() or after episode end"
                )
            kind = type(action)
            target = by_index.get(action) if kind is _INT64 or kind is int else None
            if target is None:
                mapped = map_action(action)
                target = mapped[0] if mapped is not None else self._validated_target(action)
            mode = self.render_mode
            draws = mode is not None and mode == "rgb_array"
            if draws:
                prev_units = float(st[_ST_UNITS])
            position = _empty(1)
            if window_shape is None:
                obs = _empty(obs_size, _F32)
                outputs = entry(st, tables, source, obs, position, target)
            else:  # Dict of market and portfolio: fresh arrays the kernel fills
                window = _empty(window_shape, _F32)
                portfolio = _empty(5, _F32)
                outputs = entry(st, tables, source, window, portfolio, position, target)
                obs = {"market": window, "portfolio": portfolio}
            (
                ratio,
                step_cost,
                terminated,
                truncated,
                value,
                cash,
                fees,
                spread,
                impact,
                funding,
                trades,
                filled,
            ) = outputs
            # NumPy's log, as ScalarCore applies it (envs.market_numba_single's module doc).
            reward = float(_np_log(ratio))
            append(value)
            if draws:
                self._record_fill(prev_units)
            info = {
                "portfolio_value": value,
                "position": position,
                "cash": cash,
                "fees": fees,
                "spread": spread,
                "impact": impact,
                "funding": funding,
                "trades": trades,
                "step_cost": step_cost,
            }
            if terminated or truncated:
                self._done = True
                info["episode"] = episode_metrics(
                    np.asarray(self._equity),
                    self.setup.arrays.bars_per_year,
                    turnover=float(st[_ST_NOTIONAL]) / self.setup.params.initial_cash,
                )
            if not filled:  # predictor blocks, or a flat span past the data's end: assembler
                values = st.tolist()
                obs = self._observe(int(values[_ST_T]), values[_ST_BLOCK])
            return obs, reward, terminated, truncated, info
        state = self._py_state
        if state is None or self._done:
            raise RuntimeError("MarketTradingEnv.step called before reset() or after episode end")
        # Callables kept on the instance are read into locals before the call: CPython 3.11
        # specialises an attribute load, but not a method-style call of an instance attribute.
        map_action = self._map_action
        target = map_action(action)
        if target is None:  # anything unusual goes through the validating NumPy mapping
            target = self.setup.map_actions(action, 1)[0].tolist()
        mode = self.render_mode  # (``is`` first: comparing None to a str is a slow path)
        draws = mode is not None and mode == "rgb_array"
        if draws:
            prev_units = state.units[0]
        core_step = self._core_step
        reward, terminated, truncated, step_cost, block, exposure = core_step(state, target)
        self._equity.append(state.value)
        if draws:
            moved = state.units[0] - prev_units
            if moved:
                # Fill markers for the first asset (the one whose price is drawn on top).
                self._fills.append((state.t, 1 if moved > 0 else -1))
        info = self._info(state, exposure, step_cost)
        if terminated or truncated:
            self._done = True
            info["episode"] = episode_metrics(
                np.asarray(self._equity),
                self.setup.arrays.bars_per_year,
                turnover=state.traded_notional / self.setup.params.initial_cash,
            )
        observe = self._observe
        return observe(state.t, block), reward, terminated, truncated, info

    def render(self) -> str | np.ndarray | None:
        """``ansi``: one text line per call; ``rgb_array``: price with fills and equity curve."""
        scalar = self._scalar
        if self.render_mode is None or scalar is None:
            return None
        if self.render_mode == "ansi":
            return self._render_ansi()
        return _render_rgb(
            closes=self.setup.arrays.close[self._start : scalar.t + 1],
            start=self._start,
            fills=self._fills,
            equity=np.asarray(self._equity),
            symbols=self.setup.symbols,
        )

    # --- helpers ----------------------------------------------------------------------------------
    def _validated_target(self, action: Any) -> float:
        """The target exposure of a one-asset ``action`` the scalar mapping passed on.

        The validating NumPy mapping (which raises the :class:`ActionError` of bad actions).
        """
        return self.setup.map_actions(action, 1)[0].tolist()[0]

    def _record_fill(self, prev_units: float) -> None:
        """Rendering (numba backend): a fill marker when the step moved the units."""
        st = self._st
        moved = float(st[_ST_UNITS]) - prev_units
        if moved:
            self._fills.append((int(st[_ST_T]), 1 if moved > 0 else -1))

    def _info(self, state: ScalarState, exposure: list[float], step_cost: float) -> dict[str, Any]:
        if self._one_asset:
            # Same float64 (1,) array as np.array(exposure), without the list conversion.
            position = _empty(1)
            position[0] = exposure[0]
        else:
            position = np.array(exposure)
        return {
            "portfolio_value": state.value,
            "position": position,
            "cash": state.cash,
            "fees": state.fees,
            "spread": state.spread,
            "impact": state.impact,
            "funding": state.funding,
            "trades": state.trades,
            "step_cost": step_cost,
        }

    def _render_ansi(self) -> str:
        state = self._scalar
        t = state.t
        ts = np.datetime64(int(self.setup.timestamps[t]), "ns").astype("datetime64[s]")
        close = self.setup.arrays.close[t]
        info = self._info(state, self._core.portfolio(state)[1], 0.0)
        prices = " ".join(f"{s}={c:.6g}" for s, c in zip(self.setup.symbols, close, strict=True))
        pos = " ".join(f"{p:+.3f}" for p in info["position"])
        return (
            f"{ts} step={state.steps} {prices} position=[{pos}] "
            f"value={info['portfolio_value']:.2f} cash={info['cash']:.2f} "
            f"fees={info['fees']:.2f} impact={info['impact']:.2f} "
            f"funding={info['funding']:.2f} trades={info['trades']}\n"
        )


def _render_rgb(
    closes: np.ndarray,
    start: int,
    fills: list[tuple[int, int]],
    equity: np.ndarray,
    symbols: tuple[str, ...],
) -> np.ndarray:
    """Draw price (normalised per asset when N > 1) with fills, and the equity curve."""
    # Imported lazily: matplotlib is slow to import and only rendering needs it.
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax_price, ax_eq = fig.subplots(2, 1, sharex=True)
    bars = np.arange(start, start + closes.shape[0])
    series = closes if closes.shape[1] == 1 else closes / closes[:1]
    for j, sym in enumerate(symbols):
        ax_price.plot(bars, series[:, j], lw=1.0, label=sym)
    for side, marker, color in ((1, "^", "tab:green"), (-1, "v", "tab:red")):
        pts = [b for b, s in fills if s == side and start <= b < start + closes.shape[0]]
        if pts:
            idx = np.asarray(pts) - start
            ax_price.scatter(pts, series[idx, 0], marker=marker, color=color, s=25, zorder=3)
    ax_price.set_ylabel("price" if closes.shape[1] == 1 else "price / first")
    ax_price.legend(loc="upper left", fontsize=7)
    ax_eq.plot(bars[: equity.shape[0]], equity, color="tab:blue", lw=1.0)
    ax_eq.set_ylabel("portfolio value")
    ax_eq.set_xlabel("bar")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
