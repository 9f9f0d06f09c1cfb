"""Pure, batched step core of the arbitrage environment (NumPy arithmetic only).

The single env (``ArbitrageEnv``) is the ``N = 1`` case of this core and the vector env
(``ArbitrageVectorEnv``) runs ``N`` envs at once, so both produce the same trajectories.

Block timeline (row ``t`` of the scenario is block ``t``):

1. The agent observes the state before block ``t``: pool reserves after block ``t - 1``, the
   reference price ``p_t`` and spread, the base fee of block ``t`` (known one block ahead under
   EIP-1559), its balances, and what competitors did in earlier blocks.
2. Its transaction (decided at ``t``) is included in block ``t + latency``. The slippage limit is
   quoted from the reserves seen at decision time.
3. In the including block, a competing arbitrageur shows up for each opportunity with probability
   ``1 - exp(-(G - gas) / competitor_scale)`` (``G`` the best gross profit at the block's start)
   and bids a priority fee ``share * (G - gas) / gas_units * exp(sigma*z - sigma^2/2)``. Top of
   block goes to the highest tip (ties to the competitor). The winner trades first; the loser's
   transaction then runs against the moved pool and usually hits its slippage limit and reverts,
   paying ``revert_gas * (base + tip)`` (DOMAIN.md: Competition; gas is paid even on revert).
4. The CEX leg of a CEX-DEX trade is filled at the block's reference bid/ask with the taker fee.
5. Noise-trader swaps, then LP adds/removes, complete the block.
6. Automatic rebalancing (CEX-DEX) moves inventory between venues with a fee and a delay.

The oracle profit of a block is the best trade per pool (one transaction each) at the block's
start, within the same constraints the agent faces (max size, balances, inventory limits, the dead
zone, the max priority fee), with perfect inclusion at the lowest winning tip: the competitor's
bid when one shows up (known in hindsight), zero otherwise. It is an upper bound on what any
policy can earn in that block, and the tightest we can justify without knowing the future.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from envs import amm
from envs.data.defi import DefiScenario
from envs.errors import ConfigError

GWEI = 1e-9
MODES = ("cex_dex", "dex_dex")

__all__ = [
    "ArbConfig",
    "ArbState",
    "ScenarioBatch",
    "StepResult",
    "core_oracle_action",
    "core_step",
    "decode_actions",
    "discrete_masks",
    "init_state",
    "observation_blocks",
    "opportunity_table",
    "oracle_run_profit",
    "put_rows",
    "quote_limits",
    "reset_slots",
    "take_rows",
]


@dataclass(frozen=True)
class ArbConfig:
    """Everything fixed for an episode; see ``ArbitrageEnv`` for the meaning of each field."""

    mode: str = "cex_dex"
    pool_fees: tuple[float, ...] = (0.0005,)
    pool_tvl: tuple[float, ...] = (5e6,)
    cex_fee: float = 0.0005
    max_trade_size: float = 20.0
    dead_zone: float = 0.05
    max_priority_fee_gwei: float = 300.0
    gas_per_swap: float = 110_000.0
    gas_overhead: float = 40_000.0
    revert_gas: float = 45_000.0
    slippage_tolerance: float = 0.002
    latency: int = 0
    competitor_scale: float = 20.0
    competitor_bid_share: float = 0.5
    competitor_bid_sigma: float = 0.5
    initial_balances: tuple[float, float, float, float] = (100.0, 250_000.0, 100.0, 250_000.0)
    inventory_limits: tuple[float, float] = (np.inf, np.inf)
    rebalance: bool = True
    rebalance_threshold: float = 0.25
    rebalance_fee_bps: float = 5.0
    rebalance_fee_fixed: float = 10.0
    rebalance_delay: int = 50
    inventory_penalty: float = 0.0
    reward_scale: float = 1.0
    gas_window: int = 8
    base_fee_ref_gwei: float = 20.0
    action_mode: str = "continuous"
    size_levels: tuple[float, ...] = (0.5, 1.0)
    bid_levels: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)
    size_reference: str = "optimal"
    bid_reference: str = "max"
    continuous_size: str = "max"
    continuous_bid: str = "max"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if len(self.pool_fees) != len(self.pool_tvl) or not self.pool_fees:
            raise ConfigError(
                f"pool_fees ({len(self.pool_fees)}) and pool_tvl ({len(self.pool_tvl)}) must "
                "have the same non-zero length"
            )
        if self.mode == "dex_dex" and len(self.pool_fees) != 2:
            raise ConfigError(f"mode='dex_dex' needs exactly 2 pools, got {len(self.pool_fees)}")
        for i, f in enumerate(self.pool_fees):
            if not 0 <= f < 1:
                raise ConfigError(f"pool_fees[{i}] must be in [0, 1), got {f}")
        for i, v in enumerate(self.pool_tvl):
            if not v > 0:
                raise ConfigError(f"pool_tvl[{i}] must be > 0, got {v}")
        checks = {
            "cex_fee": 0 <= self.cex_fee < 1,
            "max_trade_size": self.max_trade_size > 0,
            "dead_zone": 0 <= self.dead_zone < 1,
            "max_priority_fee_gwei": self.max_priority_fee_gwei > 0,
            "gas_per_swap": self.gas_per_swap > 0,
            "gas_overhead": self.gas_overhead >= 0,
            "revert_gas": self.revert_gas >= 0,
            "slippage_tolerance": self.slippage_tolerance >= 0,
            "latency": self.latency >= 0,
            "competitor_scale": self.competitor_scale > 0,
            "competitor_bid_share": self.competitor_bid_share >= 0,
            "competitor_bid_sigma": self.competitor_bid_sigma >= 0,
            "rebalance_threshold": 0 <= self.rebalance_threshold < 0.5,
            "rebalance_fee_bps": self.rebalance_fee_bps >= 0,
            "rebalance_fee_fixed": self.rebalance_fee_fixed >= 0,
            "rebalance_delay": self.rebalance_delay >= 0,
            "inventory_penalty": self.inventory_penalty >= 0,
            "reward_scale": self.reward_scale > 0,
            "gas_window": self.gas_window >= 1,
            "base_fee_ref_gwei": self.base_fee_ref_gwei > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name}: invalid value {getattr(self, name)!r}")
        if len(self.initial_balances) != 4 or any(b < 0 for b in self.initial_balances):
            raise ConfigError(
                "initial_balances must be 4 non-negative amounts (cex_base, cex_quote, "
                f"dex_base, dex_quote), got {self.initial_balances}"
            )
        if len(self.inventory_limits) != 2 or any(not v > 0 for v in self.inventory_limits):
            raise ConfigError(
                f"inventory_limits must be 2 positive base amounts (cex, dex), got "
                f"{self.inventory_limits}"
            )
        if self.action_mode not in ("continuous", "discrete"):
            raise ConfigError(
                f"action_mode must be 'continuous' or 'discrete', got {self.action_mode!r}"
            )
        if not self.size_levels or any(not 0 < s <= 1 for s in self.size_levels):
            raise ConfigError(f"size_levels must be fractions in (0, 1], got {self.size_levels}")
        if not self.bid_levels or any(not 0 <= b <= 1 for b in self.bid_levels):
            raise ConfigError(f"bid_levels must be fractions in [0, 1], got {self.bid_levels}")
        if self.size_reference not in ("optimal", "max"):
            raise ConfigError(
                f"size_reference must be 'optimal' or 'max', got {self.size_reference!r}"
            )
        if self.continuous_size not in ("optimal", "max"):
            raise ConfigError(
                f"continuous_size must be 'optimal' or 'max', got {self.continuous_size!r}"
            )
        if self.bid_reference not in ("surplus", "max"):
            raise ConfigError(
                f"bid_reference must be 'surplus' or 'max', got {self.bid_reference!r}"
            )
        if self.continuous_bid not in ("surplus", "max"):
            raise ConfigError(
                f"continuous_bid must be 'surplus' or 'max', got {self.continuous_bid!r}"
            )

    @property
    def n_pools(self) -> int:
        """Number of pools ``K``."""
        return len(self.pool_fees)

    @property
    def n_slots(self) -> int:
        """Agent transaction slots per block: one per pool (CEX-DEX) or one route (DEX-DEX)."""
        return self.n_pools if self.mode == "cex_dex" else 1

    @property
    def n_directions(self) -> int:
        """Rows of the opportunity table: 2 per slot (buy base on the DEX side or sell it)."""
        return 2 * self.n_slots

    @property
    def gas_units(self) -> float:
        """Gas used by one successful agent transaction (overhead + one swap per pool leg)."""
        legs = 1 if self.mode == "cex_dex" else 2
        return self.gas_overhead + legs * self.gas_per_swap

    @property
    def n_discrete_actions(self) -> int:
        """No-op plus every (direction, size level, bid level)."""
        return 1 + self.n_directions * len(self.size_levels) * len(self.bid_levels)

    @property
    def queue_len(self) -> int:
        """Length of the pending-transaction ring buffer (latency + 1)."""
        return self.latency + 1


@dataclass
class ScenarioBatch:
    """Scenario arrays of ``N`` envs stacked on a leading axis, plus causal derived series."""

    ref_price: np.ndarray  # (N, T)
    spread: np.ndarray  # (N, T)
    base_fee: np.ndarray  # (N, T)
    utilization: np.ndarray  # (N, T)
    native_price: np.ndarray  # (N, T)
    noise_flow: np.ndarray  # (N, T, K)
    lp_flow: np.ndarray  # (N, T, K)
    comp_u: np.ndarray  # (N, T, K+1)
    comp_z: np.ndarray  # (N, T, K+1)
    ref_ret: np.ndarray  # (N, T) log return into row t (0 at row 0)
    ewma_vol: np.ndarray  # (N, T) EWMA vol of ref_ret up to and including row t
    predictors: dict[str, np.ndarray]  # name -> (N, T, ...)

    @classmethod
    def empty(
        cls, n: int, length: int, k: int, predictor_shapes: dict[str, tuple[int, ...]]
    ) -> ScenarioBatch:
        """Zero-filled storage for ``n`` envs of ``length`` rows."""
        z = np.zeros
        return cls(
            ref_price=np.ones((n, length)),
            spread=z((n, length)),
            base_fee=np.ones((n, length)),
            utilization=z((n, length)),
            native_price=np.ones((n, length)),
            noise_flow=z((n, length, k)),
            lp_flow=z((n, length, k)),
            comp_u=z((n, length, k + 1)),
            comp_z=z((n, length, k + 1)),
            ref_ret=z((n, length)),
            ewma_vol=z((n, length)),
            predictors={
                name: z((n, length, *shape), dtype=np.float32)
                for name, shape in predictor_shapes.items()
            },
        )

    def load(
        self, i: int, scen: DefiScenario, predictors: dict[str, np.ndarray], vol0: float
    ) -> None:
        """Copy one env's scenario window (exactly ``T`` rows) into slot ``i``."""
        self.ref_price[i] = scen.ref_price
        self.spread[i] = scen.spread
        self.base_fee[i] = scen.base_fee
        self.utilization[i] = scen.utilization
        self.native_price[i] = scen.native_price
        self.noise_flow[i] = scen.noise_flow
        self.lp_flow[i] = scen.lp_flow
        self.comp_u[i] = scen.comp_u
        self.comp_z[i] = scen.comp_z
        lp = np.log(scen.ref_price)
        ret = np.concatenate([[0.0], np.diff(lp)])
        self.ref_ret[i] = ret
        # Causal EWMA of squared returns (RiskMetrics-style, lambda = 0.97): row t uses rows <= t.
        var = np.empty_like(ret)
        v = vol0 * vol0
        for t in range(ret.shape[0]):
            v = 0.97 * v + 0.03 * ret[t] * ret[t]
            var[t] = v
        self.ewma_vol[i] = np.sqrt(var)
        for name, arr in predictors.items():
            self.predictors[name][i] = arr


@dataclass
class ArbState:
    """Mutable state of ``N`` envs; every field has a leading ``N`` axis."""

    t: np.ndarray  # (N,) steps done in the episode
    row0: np.ndarray  # (N,) scenario row of step 0 (after the gas-history warm-up)
    x: np.ndarray  # (N, K) pool base reserves
    y: np.ndarray  # (N, K) pool quote reserves
    liq0: np.ndarray  # (N, K) initial sqrt(x*y)
    bal: np.ndarray  # (N, 4) cex_base, cex_quote, dex_base, dex_quote
    bal0: np.ndarray  # (N, 4)
    transit: np.ndarray  # (N, 4) amounts in transit to each balance slot
    arrival: np.ndarray  # (N,) step at which transit lands (-1: none)
    q_dx: np.ndarray  # (N, Q, S) queued signed sizes
    q_lim: np.ndarray  # (N, Q, S) queued slippage limits (max in for buys, min out for sells)
    q_lim2: np.ndarray  # (N, Q, S) DEX-DEX: min out of the second leg
    q_tip: np.ndarray  # (N, Q) queued priority fee, gwei
    last_comp_tip: np.ndarray  # (N,) highest competitor tip seen in the last block, gwei
    last_comp_took: np.ndarray  # (N,) competitor executed in the last block (0/1)
    comp_rate: np.ndarray  # (N,) EWMA of competitor presence
    cum: dict[str, np.ndarray]  # cumulative figures, each (N,)


CUM_KEYS = (
    "profit",
    "gas_spent",
    "fees_paid",
    "reverts",
    "competitor_took",
    "oracle_profit",
    "trades",
    "outbid",
    "rebalance_fees",
    "reward",
)


def init_state(cfg: ArbConfig, n: int) -> ArbState:
    """Allocate the state of ``n`` envs (reset slots with :func:`reset_slots`)."""
    k, q, s = cfg.n_pools, cfg.queue_len, cfg.n_slots
    return ArbState(
        t=np.zeros(n, np.int64),
        row0=np.full(n, cfg.gas_window, np.int64),
        x=np.ones((n, k)),
        y=np.ones((n, k)),
        liq0=np.ones((n, k)),
        bal=np.zeros((n, 4)),
        bal0=np.zeros((n, 4)),
        transit=np.zeros((n, 4)),
        arrival=np.full(n, -1, np.int64),
        q_dx=np.zeros((n, q, s)),
        q_lim=np.zeros((n, q, s)),
        q_lim2=np.zeros((n, q, s)),
        q_tip=np.zeros((n, q)),
        last_comp_tip=np.zeros(n),
        last_comp_took=np.zeros(n),
        comp_rate=np.zeros(n),
        cum={key: np.zeros(n) for key in CUM_KEYS},
    )


def reset_slots(cfg: ArbConfig, state: ArbState, scen: ScenarioBatch, idx: np.ndarray) -> None:
    """Reset envs ``idx`` to step 0 of the scenario already loaded in their slots."""
    row = state.row0[idx]
    p = scen.ref_price[idx, row]
    tvl = np.asarray(cfg.pool_tvl)[None, :]
    # Pools start at the reference price with half their value on each side.
    state.x[idx] = tvl / (2.0 * p[:, None])
    state.y[idx] = tvl / 2.0
    state.liq0[idx] = np.sqrt(state.x[idx] * state.y[idx])
    bal = np.asarray(cfg.initial_balances, dtype=np.float64)
    state.bal[idx] = bal
    state.bal0[idx] = bal
    state.t[idx] = 0
    state.transit[idx] = 0.0
    state.arrival[idx] = -1
    state.q_dx[idx] = 0.0
    state.q_lim[idx] = 0.0
    state.q_lim2[idx] = 0.0
    state.q_tip[idx] = 0.0
    state.last_comp_tip[idx] = 0.0
    state.last_comp_took[idx] = 0.0
    state.comp_rate[idx] = 0.0
    for v in state.cum.values():
        v[idx] = 0.0


# ----------------------------------------------------------------------------------------------
# Opportunities: closed-form best trades per direction, unconstrained and within constraints.


def _cex_prices(cfg: ArbConfig, p: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, ...]:
    """Net CEX prices per base unit: bid after taker fee, ask after taker fee."""
    bid = p * (1.0 - 0.5 * spread) * (1.0 - cfg.cex_fee)
    ask = p * (1.0 + 0.5 * spread) * (1.0 + cfg.cex_fee)
    return bid, ask


def _caps(
    cfg: ArbConfig,
    bal: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    ask: np.ndarray,
    gas_cost: np.ndarray,
) -> np.ndarray:
    """Largest size in base units per direction ``(N, D)`` allowed by limits and balances.

    Direction ``2*s`` buys base on the DEX side of slot ``s`` (CEX-DEX: from pool ``s``, sold on
    the CEX; DEX-DEX: from pool 0, sold into pool 1); direction ``2*s + 1`` is the mirror.
    ``gas_cost`` (quote) is reserved from the DEX quote balance, which pays for gas.
    """
    fees = np.asarray(cfg.pool_fees)[None, :]
    cex_b, cex_q, dex_b, dex_q = (bal[:, i] for i in range(4))
    budget = np.maximum(dex_q - gas_cost, 0.0)
    lim_cex, lim_dex = cfg.inventory_limits
    m = cfg.max_trade_size
    if cfg.mode == "cex_dex":
        buy = np.minimum.reduce(
            [
                np.full_like(x, m),
                cex_b[:, None] + 0.0 * x,
                amm.max_out_for_in(budget[:, None], y, x, fees),
                np.maximum(lim_dex - dex_b, 0.0)[:, None] + 0.0 * x,
            ]
        )
        sell = np.minimum.reduce(
            [
                np.full_like(x, m),
                dex_b[:, None] + 0.0 * x,
                (cex_q[:, None] / ask[:, None]) + 0.0 * x,
                np.maximum(lim_cex - cex_b, 0.0)[:, None] + 0.0 * x,
            ]
        )
        out = np.empty((x.shape[0], 2 * cfg.n_pools))
        out[:, 0::2] = buy
        out[:, 1::2] = sell
        return np.maximum(out, 0.0)
    buy01 = np.minimum(m, amm.max_out_for_in(budget, y[:, 0], x[:, 0], fees[0, 0]))
    buy10 = np.minimum(m, amm.max_out_for_in(budget, y[:, 1], x[:, 1], fees[0, 1]))
    return np.maximum(np.stack([buy01, buy10], axis=1), 0.0)


def _gross(cfg: ArbConfig, dx, x, y, bid, ask) -> np.ndarray:
    """Gross profit (before gas) of size ``dx`` ``(N, D)`` per direction."""
    fees = np.asarray(cfg.pool_fees)[None, :]
    if cfg.mode == "cex_dex":
        out = np.empty_like(dx)
        out[:, 0::2] = amm.arb_buy_x_profit(dx[:, 0::2], x, y, fees, bid[:, None])
        out[:, 1::2] = amm.arb_sell_x_profit(dx[:, 1::2], x, y, fees, ask[:, None])
        return out
    f0, f1 = cfg.pool_fees
    g01 = amm.two_pool_profit(dx[:, 0], x[:, 0], y[:, 0], f0, x[:, 1], y[:, 1], f1)
    g10 = amm.two_pool_profit(dx[:, 1], x[:, 1], y[:, 1], f1, x[:, 0], y[:, 0], f0)
    return np.stack([g01, g10], axis=1)


def _unconstrained(cfg: ArbConfig, x, y, bid, ask) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form optimal size and gross profit per direction ``(N, D)``, no constraints."""
    fees = np.asarray(cfg.pool_fees)[None, :]
    n = x.shape[0]
    size = np.empty((n, cfg.n_directions))
    gross = np.empty((n, cfg.n_directions))
    if cfg.mode == "cex_dex":
        _, dxb, pb = amm.optimal_buy_x(x, y, fees, bid[:, None])
        dxs, _, ps = amm.optimal_sell_x(x, y, fees, ask[:, None])
        size[:, 0::2], size[:, 1::2] = dxb, dxs
        gross[:, 0::2], gross[:, 1::2] = pb, ps
        return size, gross
    f0, f1 = cfg.pool_fees
    _, d01, p01 = amm.optimal_two_pool(x[:, 0], y[:, 0], f0, x[:, 1], y[:, 1], f1)
    _, d10, p10 = amm.optimal_two_pool(x[:, 1], y[:, 1], f1, x[:, 0], y[:, 0], f0)
    size[:, 0], size[:, 1], gross[:, 0], gross[:, 1] = d01, d10, p01, p10
    return size, gross


def opportunity_table(
    cfg: ArbConfig, state: ArbState, scen: ScenarioBatch, rows: np.ndarray, tip_gwei: np.ndarray
) -> dict[str, np.ndarray]:
    """Best trades per direction at the current state of every env.

    Args:
        cfg: env configuration.
        state: batched state.
        scen: batched scenario.
        rows: scenario row per env ``(N,)``.
        tip_gwei: priority fee assumed for the gas reserve ``(N,)``.

    Returns:
        dict with ``size`` (closed-form optimum clipped to the caps and the dead zone; 0 when
        nothing fits), ``gross`` (gross profit at that size), ``cap`` (largest allowed size),
        ``free_size`` and ``free_gross`` (unconstrained optimum), all ``(N, D)``, and
        ``gas_cost`` ``(N,)``: quote cost of one successful transaction at ``base + tip``.
    """
    n = np.arange(rows.shape[0])
    p = scen.ref_price[n, rows]
    bid, ask = _cex_prices(cfg, p, scen.spread[n, rows])
    native = scen.native_price[n, rows]
    base = scen.base_fee[n, rows]
    gas_cost = cfg.gas_units * (base + tip_gwei) * GWEI * native
    cap = _caps(cfg, state.bal, state.x, state.y, ask, gas_cost)
    free_size, free_gross = _unconstrained(cfg, state.x, state.y, bid, ask)
    min_size = cfg.dead_zone * cfg.max_trade_size
    size = np.clip(free_size, min_size, None)
    size = np.where((cap >= min_size) & (free_size > 0), np.minimum(size, cap), 0.0)
    gross = np.where(size > 0, _gross(cfg, size, state.x, state.y, bid, ask), 0.0)
    return {
        "size": size,
        "gross": gross,
        "cap": cap,
        "free_size": free_size,
        "free_gross": free_gross,
        "gas_cost": gas_cost,
        "bid": bid,
        "ask": ask,
    }


# ----------------------------------------------------------------------------------------------
# Actions -> intents.


def _continuous_want(cfg: ArbConfig, frac: np.ndarray, free_size: np.ndarray | None) -> np.ndarray:
    """Signed intended sizes ``(N, S)`` of continuous size actions ``frac`` (before caps), in
    the unit ``continuous_size`` names; ``free_size`` (the closed-form optima) when "optimal"."""
    if cfg.continuous_size != "optimal":
        return frac * cfg.max_trade_size
    ref = np.where(frac > 0, free_size[:, 0::2], free_size[:, 1::2])
    return frac * np.minimum(ref, cfg.max_trade_size)


def _surplus_per_gwei(cfg, want, state, scen, n, row, bid, ask) -> np.ndarray:
    """Tip (gwei) that would hand the whole expected surplus of the intended trade ``want``
    ``(N, S)`` (gross at the observed reserves minus gas at the base fee) to the block builder."""
    dx = np.zeros((want.shape[0], cfg.n_directions))
    dx[:, 0::2] = np.maximum(want, 0.0)
    dx[:, 1::2] = np.maximum(-want, 0.0)
    gross = np.where(dx > 0, _gross(cfg, dx, state.x, state.y, bid, ask), 0.0).sum(axis=1)
    gas_per_gwei = cfg.gas_units * GWEI * scen.native_price[n, row]
    surplus = np.maximum(gross - scen.base_fee[n, row] * gas_per_gwei, 0.0)
    return surplus / gas_per_gwei


def decode_actions(
    cfg: ArbConfig, actions: np.ndarray, state: ArbState, scen: ScenarioBatch
) -> tuple[np.ndarray, np.ndarray]:
    """Map actions to signed sizes per slot ``(N, S)`` (base units) and tips ``(N,)`` (gwei).

    Continuous: ``a[:S]`` in [-1, 1] is the signed fraction of ``max_trade_size`` per slot
    (positive buys base on the DEX side: from pool ``s`` in CEX-DEX, from pool 0 in DEX-DEX),
    or with ``continuous_size="optimal"`` the signed fraction of the closed-form optimal size of
    that direction at the observed state (zero when that direction is not profitable before
    gas; capped at ``max_trade_size``); ``|a| < dead_zone`` sends nothing; ``a[S]`` in [0, 1]
    is the tip as a fraction of ``max_priority_fee_gwei``, or with ``continuous_bid="surplus"``
    the share of the intended trade's expected surplus (gross at the observed reserves minus gas
    at the base fee) handed to the builder as tip (capped at the max tip). Discrete: 0 is no-op;
    ``1 + (d * n_size + s) * n_bid + b`` trades direction ``d`` at size level ``s`` (a fraction
    of the closed-form optimum at the observed state, or of ``max_trade_size``) and bid level
    ``b`` (a fraction of the max tip, or with ``bid_reference="surplus"`` a share of the
    expected surplus as above). Sizes are clipped to what the balances, inventory limits and gas
    reserve (at the chosen tip) allow: never trade what is not held.
    """
    nn = state.t.shape[0]
    n = np.arange(nn)
    slots = cfg.n_slots
    row = state.row0 + state.t
    p = scen.ref_price[n, row]
    bid, ask = _cex_prices(cfg, p, scen.spread[n, row])
    if cfg.action_mode == "continuous":
        a = np.asarray(actions, dtype=np.float64).reshape(nn, slots + 1)
        frac = np.clip(a[:, :slots], -1.0, 1.0)
        frac = np.where(np.abs(frac) < cfg.dead_zone, 0.0, frac)
        tip = np.clip(a[:, slots], 0.0, 1.0) * cfg.max_priority_fee_gwei
        free_size = None
        if cfg.continuous_size == "optimal":
            free_size, _ = _unconstrained(cfg, state.x, state.y, bid, ask)
        want = _continuous_want(cfg, frac, free_size)
        if cfg.continuous_bid == "surplus":
            per_gwei = _surplus_per_gwei(cfg, want, state, scen, n, row, bid, ask)
            tip = np.minimum(np.clip(a[:, slots], 0.0, 1.0) * per_gwei, cfg.max_priority_fee_gwei)
    else:
        a = np.asarray(actions, dtype=np.int64).reshape(nn)
        ns, nb = len(cfg.size_levels), len(cfg.bid_levels)
        code = np.maximum(a - 1, 0)
        d = code // (ns * nb)
        s = (code // nb) % ns
        b = code % nb
        level = np.asarray(cfg.size_levels)[s]
        if cfg.size_reference == "optimal":
            free_size, _ = _unconstrained(cfg, state.x, state.y, bid, ask)
            ref = free_size[n, d]
        else:
            ref = np.full(nn, cfg.max_trade_size)
        mag = np.where(a > 0, np.minimum(level * ref, cfg.max_trade_size), 0.0)
        share = np.where(a > 0, np.asarray(cfg.bid_levels)[b], 0.0)
        want = np.zeros((nn, slots))
        want[n, d // 2] = np.where(d % 2 == 0, 1.0, -1.0) * mag
        if cfg.bid_reference == "surplus":
            per_gwei = _surplus_per_gwei(cfg, want, state, scen, n, row, bid, ask)
            tip = np.minimum(share * per_gwei, cfg.max_priority_fee_gwei)
        else:
            tip = share * cfg.max_priority_fee_gwei
    gas_cost = cfg.gas_units * (scen.base_fee[n, row] + tip) * GWEI * scen.native_price[n, row]
    cap = _caps(cfg, state.bal, state.x, state.y, ask, gas_cost)
    size = np.where(want > 0, np.minimum(want, cap[:, 0::2]), -np.minimum(-want, cap[:, 1::2]))
    # A continuous trade clipped under the dead zone is not sent (the oracle's action set).
    floor = cfg.dead_zone * cfg.max_trade_size if cfg.action_mode == "continuous" else 0.0
    return np.where(np.abs(size) >= max(floor, 1e-12), size, 0.0), tip


def discrete_masks(cfg: ArbConfig, opp: dict[str, np.ndarray]) -> np.ndarray:
    """Valid discrete actions ``(N, n_actions)``: no-op always; a direction needs a positive cap."""
    n = opp["cap"].shape[0]
    per = len(cfg.size_levels) * len(cfg.bid_levels)
    ok_dir = opp["cap"] > 1e-12
    mask = np.ones((n, cfg.n_discrete_actions), dtype=bool)
    mask[:, 1:] = np.repeat(ok_dir, per, axis=1)
    return mask


def quote_limits(
    cfg: ArbConfig, state: ArbState, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Slippage limits from the reserves seen at decision time.

    Buy legs get a maximum input ``quote_in * (1 + tol)``; sell legs a minimum output
    ``quote_out * (1 - tol)``. DEX-DEX: limit 1 is the first leg's max input, limit 2 the second
    leg's min output.
    """
    fees = np.asarray(cfg.pool_fees)[None, :]
    tol = cfg.slippage_tolerance
    mag = np.abs(size)
    if cfg.mode == "cex_dex":
        q_in = amm.amount_in_for_out(mag, state.y, state.x, fees)
        q_out = amm.amount_out(mag, state.x, state.y, fees)
        lim = np.where(size > 0, q_in * (1.0 + tol), q_out * (1.0 - tol))
        return lim, np.zeros_like(lim)
    f0, f1 = cfg.pool_fees
    m = mag[:, 0]
    fwd = size[:, 0] > 0
    xb = np.where(fwd, state.x[:, 0], state.x[:, 1])
    yb = np.where(fwd, state.y[:, 0], state.y[:, 1])
    fb = np.where(fwd, f0, f1)
    xs = np.where(fwd, state.x[:, 1], state.x[:, 0])
    ys = np.where(fwd, state.y[:, 1], state.y[:, 0])
    fs = np.where(fwd, f1, f0)
    q_in = amm.amount_in_for_out(m, yb, xb, fb)
    q_out = amm.amount_out(m, xs, ys, fs)
    return (q_in * (1.0 + tol))[:, None], (q_out * (1.0 - tol))[:, None]


# ----------------------------------------------------------------------------------------------
# Step.


@dataclass
class StepResult:
    """Per-step outputs of :func:`core_step`, each ``(N,)``."""

    reward: np.ndarray
    profit: np.ndarray
    gas_spent: np.ndarray
    fees_paid: np.ndarray
    reverted: np.ndarray
    competitor_took: np.ndarray
    outbid: np.ndarray
    oracle_profit: np.ndarray
    traded: np.ndarray
    rebalance_fee: np.ndarray
    truncated: np.ndarray


def _competitors(cfg, gross, gas_cost_base, gas_per_gwei, u, z):
    """Presence and priority-fee bid (gwei) of competitors from the best gross profit."""
    surplus = np.maximum(gross - gas_cost_base, 0.0)
    present = u < -np.expm1(-surplus / cfg.competitor_scale)
    sig = cfg.competitor_bid_sigma
    bid = cfg.competitor_bid_share * surplus / gas_per_gwei * np.exp(sig * z - 0.5 * sig * sig)
    return present, np.where(present, bid, 0.0)


def _exec_competitor_cex(cfg, x, y, k, p_bid, p_ask, mask):
    """Competitor takes the full unconstrained optimum on pool ``k`` where ``mask``."""
    if not mask.any():  # most blocks: nothing to do (skipping is exact, and much faster)
        return mask
    f = cfg.pool_fees[k]
    dyb, dxb, pb = amm.optimal_buy_x(x[:, k], y[:, k], f, p_bid)
    dxs, dys, ps = amm.optimal_sell_x(x[:, k], y[:, k], f, p_ask)
    buy = mask & (pb > 0) & (pb >= ps)
    sell = mask & (ps > 0) & ~buy
    x[:, k] = np.where(buy, x[:, k] - dxb, np.where(sell, x[:, k] + dxs, x[:, k]))
    y[:, k] = np.where(buy, y[:, k] + dyb, np.where(sell, y[:, k] - dys, y[:, k]))
    return buy | sell


def _exec_competitor_pair(cfg, x, y, mask):
    """Competitor takes the full two-pool optimum where ``mask``."""
    if not mask.any():
        return mask
    f0, f1 = cfg.pool_fees
    dy01, dx01, p01 = amm.optimal_two_pool(x[:, 0], y[:, 0], f0, x[:, 1], y[:, 1], f1)
    dy10, dx10, p10 = amm.optimal_two_pool(x[:, 1], y[:, 1], f1, x[:, 0], y[:, 0], f0)
    fwd = mask & (p01 > 0) & (p01 >= p10)
    rev = mask & (p10 > 0) & ~fwd
    out01 = amm.amount_out(dx01, x[:, 1], y[:, 1], f1)
    out10 = amm.amount_out(dx10, x[:, 0], y[:, 0], f0)
    x0 = np.where(fwd, x[:, 0] - dx01, np.where(rev, x[:, 0] + dx10, x[:, 0]))
    y0 = np.where(fwd, y[:, 0] + dy01, np.where(rev, y[:, 0] - out10, y[:, 0]))
    x1 = np.where(fwd, x[:, 1] + dx01, np.where(rev, x[:, 1] - dx10, x[:, 1]))
    y1 = np.where(fwd, y[:, 1] - out01, np.where(rev, y[:, 1] + dy10, y[:, 1]))
    x[:, 0], y[:, 0], x[:, 1], y[:, 1] = x0, y0, x1, y1
    return fwd | rev


def _exec_agent_cex(cfg, st, k, size, lim, mask, p_bid, p_ask, p_mid, gas_ok, gas_rev, acc):
    """Agent's CEX-DEX transaction on pool ``k`` where ``mask``; reverts pay ``gas_rev``."""
    # Not sent when the DEX account cannot pay its gas (earlier slots of this block paid some).
    mask = mask & (st.bal[:, 3] >= np.maximum(gas_ok, gas_rev))
    if not mask.any():
        return
    f = cfg.pool_fees[k]
    x, y, bal = st.x[:, k], st.y[:, k], st.bal
    mag = np.abs(size)
    buy = size > 0
    need_in = amm.amount_in_for_out(mag, y, x, f)
    got_out = amm.amount_out(mag, x, y, f)
    cex_cost = mag * p_ask
    ok_buy = (need_in <= lim) & (need_in <= bal[:, 3] - gas_ok) & (mag <= bal[:, 0])
    ok_sell = (got_out >= lim) & (mag <= bal[:, 2]) & (cex_cost <= bal[:, 1]) & (mag < 0.5 * x)
    ok = mask & np.where(buy, ok_buy, ok_sell)
    rev = mask & ~ok
    ob, os_ = ok & buy, ok & ~buy
    st.x[:, k] = np.where(ob, x - mag, np.where(os_, x + mag, x))
    st.y[:, k] = np.where(ob, y + need_in, np.where(os_, y - got_out, y))
    cex_in = mag * p_bid
    bal[:, 0] -= np.where(ob, mag, 0.0) - np.where(os_, mag, 0.0)
    bal[:, 1] += np.where(ob, cex_in, 0.0) - np.where(os_, cex_cost, 0.0)
    bal[:, 2] += np.where(ob, mag, 0.0) - np.where(os_, mag, 0.0)
    bal[:, 3] += np.where(os_, got_out, 0.0) - np.where(ob, need_in, 0.0)
    gas = np.where(ok, gas_ok, 0.0) + np.where(rev, gas_rev, 0.0)
    bal[:, 3] -= gas
    gross = np.where(ob, cex_in - need_in, 0.0) + np.where(os_, got_out - cex_cost, 0.0)
    # Fees paid, in quote: the LP fee on the pool input plus the CEX taker fee and half spread.
    lp_fee = np.where(ob, f * need_in, 0.0) + np.where(os_, f * mag * p_mid, 0.0)
    cex_fee = np.where(ok, mag * np.abs(p_mid - np.where(buy, p_bid, p_ask)), 0.0)
    acc["profit"] += gross - gas
    acc["gas"] += gas
    acc["fees"] += lp_fee + cex_fee
    acc["reverted"] += rev
    acc["traded"] += ok


def _exec_agent_pair(cfg, st, size, lim_in, lim_out, mask, p_mid, gas_ok, gas_rev, acc):
    """Agent's atomic DEX-DEX route where ``mask``: both legs or neither."""
    mask = mask & (st.bal[:, 3] >= np.maximum(gas_ok, gas_rev))
    if not mask.any():
        return
    f0, f1 = cfg.pool_fees
    x, y, bal = st.x, st.y, st.bal
    fwd = size > 0
    mag = np.abs(size)
    bi, si = np.where(fwd, 0, 1), np.where(fwd, 1, 0)
    n = np.arange(x.shape[0])
    fb, fs = np.where(fwd, f0, f1), np.where(fwd, f1, f0)
    need_in = amm.amount_in_for_out(mag, y[n, bi], x[n, bi], fb)
    got_out = amm.amount_out(mag, x[n, si], y[n, si], fs)
    ok = mask & (need_in <= lim_in) & (got_out >= lim_out) & (need_in <= bal[:, 3] - gas_ok)
    rev = mask & ~ok
    x[n, bi] = np.where(ok, x[n, bi] - mag, x[n, bi])
    y[n, bi] = np.where(ok, y[n, bi] + need_in, y[n, bi])
    x[n, si] = np.where(ok, x[n, si] + mag, x[n, si])
    y[n, si] = np.where(ok, y[n, si] - got_out, y[n, si])
    gas = np.where(ok, gas_ok, 0.0) + np.where(rev, gas_rev, 0.0)
    gross = np.where(ok, got_out - need_in, 0.0)
    bal[:, 3] += gross - gas
    acc["profit"] += gross - gas
    acc["gas"] += gas
    acc["fees"] += np.where(ok, fb * need_in + fs * mag * p_mid, 0.0)
    acc["reverted"] += rev
    acc["traded"] += ok


def _oracle(cfg, opp_free, x, y, bal, bid, ask, base, native, comp_present, comp_bid):
    """Per-pool best net profit with perfect inclusion at the lowest winning tip, summed."""
    # Same action set as the agent: continuous sizes below the dead zone are not sendable;
    # discrete levels may be smaller, so there the oracle may use any size.
    min_size = cfg.dead_zone * cfg.max_trade_size if cfg.action_mode == "continuous" else 0.0
    tip = np.where(comp_present, comp_bid, 0.0)  # (N, S)
    gas_per_gwei = cfg.gas_units * GWEI * native
    total = np.zeros(x.shape[0])
    for s in range(cfg.n_slots):
        gas_cost = (base + tip[:, s]) * gas_per_gwei
        cap = _caps(cfg, bal, x, y, ask, gas_cost)
        best = np.zeros(x.shape[0])
        for d in (2 * s, 2 * s + 1):
            free = opp_free[:, d]
            size_d = np.where(
                (cap[:, d] >= min_size) & (free > 0),
                np.minimum(np.maximum(free, min_size), cap[:, d]),
                0.0,
            )
            dx = np.zeros_like(cap)
            dx[:, d] = size_d
            g = _gross(cfg, dx, x, y, bid, ask)[:, d]
            net = np.where(size_d > 0, g - gas_cost, 0.0)
            best = np.maximum(best, net)
        # The agent can only win with a tip below the cap of its action space.
        reachable = ~comp_present[:, s] | (comp_bid[:, s] < cfg.max_priority_fee_gwei)
        total += np.where(reachable, best, 0.0)
    return total


def core_oracle_action(cfg: ArbConfig, state: ArbState, scen: ScenarioBatch) -> np.ndarray:
    """Continuous action realising the oracle trade (latency 0): privileged, for the baseline.

    Uses the competitor's bid of the coming block (hindsight) and bids just above it.
    """
    n = np.arange(state.t.shape[0])
    row = state.row0 + state.t
    row = np.minimum(row, scen.ref_price.shape[1] - 1)
    p = scen.ref_price[n, row]
    bid, ask = _cex_prices(cfg, p, scen.spread[n, row])
    base = scen.base_fee[n, row]
    native = scen.native_price[n, row]
    gas_per_gwei = cfg.gas_units * GWEI * native
    free_size, free_gross = _unconstrained(cfg, state.x, state.y, bid, ask)
    present, cbid = _slot_competitors(cfg, free_gross, base, gas_per_gwei, scen, n, row)
    min_size = cfg.dead_zone * cfg.max_trade_size
    act = np.zeros((n.shape[0], cfg.n_slots + 1))
    tips = np.zeros(n.shape[0])
    for s in range(cfg.n_slots):
        tip = np.where(present[:, s], cbid[:, s] * (1 + 1e-6) + 1e-6, 0.0)
        gas_cost = (base + tip) * gas_per_gwei
        cap = _caps(cfg, state.bal, state.x, state.y, ask, gas_cost)
        best = np.zeros(n.shape[0])
        best_a = np.zeros(n.shape[0])
        for d, sign in ((2 * s, 1.0), (2 * s + 1, -1.0)):
            free = free_size[:, d]
            size_d = np.where(
                (cap[:, d] >= min_size) & (free > 0),
                np.minimum(np.maximum(free, min_size), cap[:, d]),
                0.0,
            )
            dx = np.zeros_like(cap)
            dx[:, d] = size_d
            net = np.where(
                size_d > 0, _gross(cfg, dx, state.x, state.y, bid, ask)[:, d] - gas_cost, 0.0
            )
            better = net > best
            best = np.where(better, net, best)
            # Express the size in the action's unit (decode_actions inverts this exactly).
            if cfg.continuous_size == "optimal":
                unit = np.minimum(free, cfg.max_trade_size)
            else:
                unit = np.full_like(free, cfg.max_trade_size)
            frac = np.minimum(size_d / np.where(unit > 0, unit, 1.0), 1.0)
            best_a = np.where(better, sign * frac, best_a)
        ok = (best > 0) & (tip < cfg.max_priority_fee_gwei)
        act[:, s] = np.where(ok, best_a, 0.0)
        tips = np.maximum(tips, np.where(ok, tip, 0.0))
    if cfg.continuous_bid == "surplus":
        # The tip as a share of the surplus decode_actions computes for these sizes.
        want = _continuous_want(cfg, act[:, :-1], free_size)
        per_gwei = _surplus_per_gwei(cfg, want, state, scen, n, row, bid, ask)
        act[:, -1] = np.minimum(tips / np.where(per_gwei > 0, per_gwei, np.inf), 1.0)
    else:
        act[:, -1] = np.minimum(tips / cfg.max_priority_fee_gwei, 1.0)
    return act


def _slot_competitors(cfg, free_gross, base, gas_per_gwei, scen, n, row):
    """Competitor presence and bids per agent slot ``(N, S)`` at scenario ``row``."""
    gas_base = base * gas_per_gwei
    if cfg.mode == "cex_dex":
        g = np.maximum(free_gross[:, 0::2], free_gross[:, 1::2])
        u = scen.comp_u[n, row, : cfg.n_pools]
        z = scen.comp_z[n, row, : cfg.n_pools]
    else:
        g = np.maximum(free_gross[:, 0], free_gross[:, 1])[:, None]
        u = scen.comp_u[n, row, cfg.n_pools :]
        z = scen.comp_z[n, row, cfg.n_pools :]
    return _competitors(cfg, g, gas_base[:, None], gas_per_gwei[:, None], u, z)


def core_step(
    cfg: ArbConfig,
    state: ArbState,
    scen: ScenarioBatch,
    size: np.ndarray,
    tip: np.ndarray,
    episode_length: int,
) -> StepResult:
    """Advance every env by one block given decoded intents (see :func:`decode_actions`).

    Mutates ``state`` in place and returns the step's figures.
    """
    nn = state.t.shape[0]
    n = np.arange(nn)
    qlen = cfg.queue_len
    # Queue the new transaction with slippage limits quoted from the reserves seen now.
    lim, lim2 = quote_limits(cfg, state, size)
    w = state.t % qlen
    state.q_dx[n, w] = size
    state.q_lim[n, w] = lim
    state.q_lim2[n, w] = lim2
    state.q_tip[n, w] = tip
    # The transaction included in this block was decided `latency` steps ago.
    r = (state.t - cfg.latency) % qlen
    due = (state.t >= cfg.latency)[:, None]
    ex_size = np.where(due, state.q_dx[n, r], 0.0)
    ex_lim = state.q_lim[n, r]
    ex_lim2 = state.q_lim2[n, r]
    ex_tip = np.where(due[:, 0], state.q_tip[n, r], 0.0)

    row = state.row0 + state.t
    p = scen.ref_price[n, row]
    bid, ask = _cex_prices(cfg, p, scen.spread[n, row])
    base = scen.base_fee[n, row]
    native = scen.native_price[n, row]
    gas_per_gwei = cfg.gas_units * GWEI * native
    gas_ok = (base + ex_tip) * gas_per_gwei
    gas_rev = cfg.revert_gas * (base + ex_tip) * GWEI * native

    free_size, free_gross = _unconstrained(cfg, state.x, state.y, bid, ask)
    present, cbid = _slot_competitors(cfg, free_gross, base, gas_per_gwei, scen, n, row)
    if (free_gross > 0).any():
        oracle = _oracle(
            cfg, free_size, state.x, state.y, state.bal, bid, ask, base, native, present, cbid
        )
    else:
        oracle = np.zeros(nn)

    acc = {k: np.zeros(nn) for k in ("profit", "gas", "fees", "reverted", "traded")}
    took = np.zeros(nn)
    outbid = np.zeros(nn)
    has_tx = ex_size != 0.0  # (N, S)
    # Gas must be affordable from the DEX quote balance, otherwise nothing is sent.
    has_tx &= (state.bal[:, 3] >= np.maximum(gas_ok, gas_rev))[:, None]
    first = has_tx & (~present | (ex_tip[:, None] > cbid))
    outbid += np.sum(has_tx & ~first, axis=1)
    for s in range(cfg.n_slots):
        if cfg.mode == "cex_dex":
            _exec_agent_cex(
                cfg,
                state,
                s,
                ex_size[:, s],
                ex_lim[:, s],
                first[:, s],
                bid,
                ask,
                p,
                gas_ok,
                gas_rev,
                acc,
            )
            took += _exec_competitor_cex(cfg, state.x, state.y, s, bid, ask, present[:, s]) & (
                ~first[:, s]
            )
            _exec_agent_cex(
                cfg,
                state,
                s,
                ex_size[:, s],
                ex_lim[:, s],
                has_tx[:, s] & ~first[:, s],
                bid,
                ask,
                p,
                gas_ok,
                gas_rev,
                acc,
            )
        else:
            _exec_agent_pair(
                cfg,
                state,
                ex_size[:, 0],
                ex_lim[:, 0],
                ex_lim2[:, 0],
                first[:, 0],
                p,
                gas_ok,
                gas_rev,
                acc,
            )
            took += _exec_competitor_pair(cfg, state.x, state.y, present[:, 0]) & ~first[:, 0]
            _exec_agent_pair(
                cfg,
                state,
                ex_size[:, 0],
                ex_lim[:, 0],
                ex_lim2[:, 0],
                has_tx[:, 0] & ~first[:, 0],
                p,
                gas_ok,
                gas_rev,
                acc,
            )
    if cfg.mode == "dex_dex":
        # Outside CEX-DEX arbitrageurs keep each pool near the reference (lower priority).
        fees = np.asarray(cfg.pool_fees)[None, :]
        g_pool = np.maximum(
            amm.optimal_buy_x(state.x, state.y, fees, bid[:, None])[2],
            amm.optimal_sell_x(state.x, state.y, fees, ask[:, None])[2],
        )
        bg, _ = _competitors(
            cfg,
            g_pool,
            (base * gas_per_gwei)[:, None],
            gas_per_gwei[:, None],
            scen.comp_u[n, row, : cfg.n_pools],
            scen.comp_z[n, row, : cfg.n_pools],
        )
        for k in range(cfg.n_pools):
            _exec_competitor_cex(cfg, state.x, state.y, k, bid, ask, bg[:, k])

    # Noise traders, then LPs (exogenous: fractions of the current reserves).
    fees = np.asarray(cfg.pool_fees)[None, :]
    flow = scen.noise_flow[n, row]
    buy_amt = np.maximum(flow, 0.0) * state.x
    sell_amt = np.maximum(-flow, 0.0) * state.x
    y_in = np.where(buy_amt > 0, amm.amount_in_for_out(buy_amt, state.y, state.x, fees), 0.0)
    y_out = amm.amount_out(sell_amt, state.x, state.y, fees)
    state.x += sell_amt - buy_amt
    state.y += y_in - y_out
    lpf = scen.lp_flow[n, row]
    if lpf.any():
        liq = np.sqrt(state.x * state.y)
        # Never let LPs drain a pool below 10% of its initial liquidity.
        lpf = np.where(liq * (1.0 + lpf) < 0.1 * state.liq0, 0.0, lpf)
        state.x *= 1.0 + lpf
        state.y *= 1.0 + lpf

    reb_fee = _rebalance(cfg, state, p) if cfg.mode == "cex_dex" else np.zeros(nn)

    profit = acc["profit"] - reb_fee
    if cfg.inventory_penalty > 0:
        dev = np.abs(state.bal[:, 0] - state.bal0[:, 0]) + np.abs(
            state.bal[:, 2] - state.bal0[:, 2]
        )
        penalty = cfg.inventory_penalty * dev * p * scen.ewma_vol[n, row]
    else:
        penalty = 0.0
    reward = (profit - penalty) * cfg.reward_scale

    comp_any = np.any(present, axis=1)
    state.last_comp_tip = np.max(cbid, axis=1)
    state.last_comp_took = (took > 0).astype(np.float64)
    state.comp_rate = 0.95 * state.comp_rate + 0.05 * comp_any
    state.t += 1
    cum = state.cum
    cum["profit"] += profit
    cum["gas_spent"] += acc["gas"]
    cum["fees_paid"] += acc["fees"]
    cum["reverts"] += acc["reverted"]
    cum["competitor_took"] += took
    cum["oracle_profit"] += oracle
    cum["trades"] += acc["traded"]
    cum["outbid"] += outbid
    cum["rebalance_fees"] += reb_fee
    cum["reward"] += reward
    return StepResult(
        reward=np.broadcast_to(np.asarray(reward, dtype=np.float64), (nn,)).copy(),
        profit=profit,
        gas_spent=acc["gas"],
        fees_paid=acc["fees"],
        reverted=acc["reverted"],
        competitor_took=took,
        outbid=outbid,
        oracle_profit=oracle,
        traded=acc["traded"],
        rebalance_fee=reb_fee,
        truncated=state.t >= episode_length,
    )


def take_rows(batch: ArbState | ScenarioBatch, idx: np.ndarray) -> Any:
    """Copy of envs ``idx`` of a batched state or scenario (every field indexed on axis 0)."""
    out = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        out[f.name] = {k: a[idx].copy() for k, a in v.items()} if isinstance(v, dict) else v[idx]
    return type(batch)(**out)


def put_rows(dst: ArbState, src: ArbState, idx: np.ndarray) -> None:
    """Copy envs ``idx`` of ``src`` into the same rows of ``dst`` (same shapes)."""
    for f in fields(dst):
        d, s = getattr(dst, f.name), getattr(src, f.name)
        if isinstance(d, dict):
            for k in d:
                d[k][idx] = s[k][idx]
        else:
            d[idx] = s[idx]


def oracle_run_profit(
    cfg: ArbConfig, state0: ArbState, scen: ScenarioBatch, episode_length: int
) -> np.ndarray:
    """Realised profit ``(N,)`` of the oracle policy replayed over whole episodes.

    From ``state0`` (the state right after reset, not modified) the oracle trade of every
    block (:func:`core_oracle_action`: the closed-form best trade per pool within the agent's
    constraints, a tip just above the competitor's bid known in hindsight) is sent and
    executed by :func:`core_step` on the same scenario rows, so competitors, gas, reverts,
    inventory and rebalancing act on it exactly as on the agent. This is the episode's
    ``oracle_profit``: unlike the per-block bound summed along a policy's own path
    (``path_oracle_profit``), it does not depend on the policy being evaluated and does not
    count a gap the policy left open once per block it stays open.
    """
    ocfg = replace(cfg, action_mode="continuous", continuous_size="max", continuous_bid="max")
    state = take_rows(state0, np.arange(state0.t.shape[0]))
    while np.any(state.t < episode_length):
        act = core_oracle_action(ocfg, state, scen)
        size, tip = decode_actions(ocfg, act, state, scen)
        core_step(ocfg, state, scen, size, tip, episode_length)
    return state.cum["profit"].copy()


def _rebalance(cfg: ArbConfig, state: ArbState, p: np.ndarray) -> np.ndarray:
    """Land transfers that arrived, then start one when a venue runs low; return fees (quote).

    A venue "runs low" on a token when its share of the token falls under
    ``rebalance_threshold``; the transfer restores the initial split and arrives after
    ``rebalance_delay`` steps. The fee (``rebalance_fee_bps`` of the moved value plus
    ``rebalance_fee_fixed``) is charged in quote on the CEX account when it can pay, else on the
    DEX account (never below zero).
    """
    nn = state.t.shape[0]
    fee = np.zeros(nn)
    landed = (state.arrival >= 0) & (state.arrival <= state.t)
    state.bal += np.where(landed[:, None], state.transit, 0.0)
    state.transit[landed] = 0.0
    state.arrival[landed] = -1
    if not cfg.rebalance:
        return fee
    idle = state.arrival < 0
    moves = np.zeros((nn, 4))
    for a, b in ((0, 2), (1, 3)):  # base on (cex, dex), quote on (cex, dex)
        total = state.bal[:, a] + state.bal[:, b]
        total0 = state.bal0[:, a] + state.bal0[:, b]
        share_a = np.where(total > 0, state.bal[:, a] / np.maximum(total, 1e-300), 0.5)
        target_a = np.where(total0 > 0, state.bal0[:, a] / np.maximum(total0, 1e-300), 0.5)
        low = (
            idle
            & (total > 0)
            & ((share_a < cfg.rebalance_threshold) | (share_a > 1.0 - cfg.rebalance_threshold))
        )
        amt = np.where(low, target_a * total - state.bal[:, a], 0.0)  # + moves b -> a
        moves[:, a] += amt
        moves[:, b] -= amt
    value = np.abs(moves[:, 0]) * p + np.abs(moves[:, 1])
    start = value > 0
    fee = np.where(start, cfg.rebalance_fee_bps * 1e-4 * value + cfg.rebalance_fee_fixed, 0.0)
    # Debit senders now, credit receivers on arrival.
    state.bal += np.where(start[:, None], np.minimum(moves, 0.0), 0.0)
    state.transit += np.where(start[:, None], np.maximum(moves, 0.0), 0.0)
    state.arrival = np.where(start, state.t + cfg.rebalance_delay, state.arrival)
    pay_cex = np.minimum(fee, state.bal[:, 1])
    state.bal[:, 1] -= pay_cex
    pay_dex = np.minimum(fee - pay_cex, state.bal[:, 3])
    state.bal[:, 3] -= pay_dex
    return pay_cex + pay_dex


# ----------------------------------------------------------------------------------------------
# Observation.


def observation_blocks(
    cfg: ArbConfig, state: ArbState, scen: ScenarioBatch, opp: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Observation block arrays ``(N, ...)`` from the state and scenario rows ``<=`` now."""
    nn = state.t.shape[0]
    n = np.arange(nn)
    row = state.row0 + state.t
    if opp is None:
        opp = opportunity_table(cfg, state, scen, row, np.zeros(nn))
    p = scen.ref_price[n, row]
    vol0 = scen.ewma_vol[n, row]
    pools = np.stack(
        [
            100.0 * np.log(state.y / state.x / p[:, None]),
            np.log(np.sqrt(state.x * state.y) / state.liq0),
            np.broadcast_to(100.0 * np.asarray(cfg.pool_fees), state.x.shape),
        ],
        axis=-1,
    )
    reference = np.stack(
        [1e4 * scen.ref_ret[n, row], 1e4 * vol0, 1e4 * scen.spread[n, row]], axis=1
    )
    w = cfg.gas_window
    hist_rows = row[:, None] - np.arange(w - 1, -1, -1)[None, :]
    gas_hist = scen.base_fee[n[:, None], hist_rows] / cfg.base_fee_ref_gwei
    gas = np.stack(
        [
            gas_hist[:, -1],
            gas_hist.mean(axis=1),
            scen.utilization[n, row - 1],
        ],
        axis=1,
    )
    competition = np.stack(
        [
            state.last_comp_tip / cfg.max_priority_fee_gwei,
            state.last_comp_took,
            state.comp_rate,
        ],
        axis=1,
    )
    native = scen.native_price[n, row]
    gas_base_cost = cfg.gas_units * scen.base_fee[n, row] * GWEI * native
    tip_cost = cfg.gas_units * cfg.max_priority_fee_gwei * GWEI * native
    opportunity = np.stack(
        [
            opp["size"] / cfg.max_trade_size,
            opp["gross"] / gas_base_cost[:, None],
            opp["gross"] / tip_cost[:, None],
        ],
        axis=-1,
    )
    x_tot = max(cfg.initial_balances[0] + cfg.initial_balances[2], 1e-12)
    q_tot = max(cfg.initial_balances[1] + cfg.initial_balances[3], 1e-12)
    inventory = np.stack(
        [
            state.bal[:, 0] / x_tot,
            state.bal[:, 1] / q_tot,
            state.bal[:, 2] / x_tot,
            state.bal[:, 3] / q_tot,
            (state.transit[:, 0] + state.transit[:, 2]) / x_tot,
            (state.transit[:, 1] + state.transit[:, 3]) / q_tot,
        ],
        axis=1,
    )
    blocks = {
        "pools": pools.reshape(nn, -1),
        "reference": reference,
        "gas": gas,
        "gas_history": gas_hist,
        "competition": competition,
        "opportunity": opportunity.reshape(nn, -1),
        "inventory": inventory,
    }
    for name, arr in scen.predictors.items():
        blocks[name] = arr[n, row]
    return blocks
