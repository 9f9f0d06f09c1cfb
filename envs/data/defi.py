"""Seeded exogenous series for the arbitrage environment (an ETH/USDC-like chain and CEX).

One :class:`DefiScenario` holds everything the environment does not control, block by block:

- the reference (CEX) mid price and its spread: a stochastic-volatility GBM by default (log-vol
  AR(1), annual vol about 70% at 12 s blocks), or any price path (e.g. a ``MarketDataset`` close);
- the EIP-1559 base fee: ``base[t+1] = base[t] * (1 + (1/8) * (used[t] - target) / target)``
  with ``target = limit / 2`` (EIP-1559; DOMAIN.md: Gas under EIP-1559). Block fullness comes from
  an elastic demand level, so the base fee tracks demand; congestion spikes arrive more often when
  volatility is high and when the price has just jumped (liquidation and arbitrage rushes);
- noise-trader swaps per pool (fractions of the pool's X reserve, signed), heavier in volatile
  periods, with rare whale swaps; LP adds and removes (relative liquidity changes);
- the native-token price (gas is paid in it; ETH = the reference price by default);
- uniform and normal draws for competing arbitrageurs, so the env's step stays pure arithmetic
  and a scenario fully determines an episode given the agent's actions.

Everything is generated from a ``numpy.random.Generator``: same seed, same scenario.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError

__all__ = [
    "DefiScenario",
    "ScenarioParams",
    "eip1559_next_base_fee",
    "generate_gas",
    "generate_scenario",
    "reference_from_dataset",
]

SECONDS_PER_YEAR = 365.25 * 24 * 3600


def eip1559_next_base_fee(base_fee: np.ndarray | float, utilization: np.ndarray | float):
    """Next block's base fee from this block's fullness ``gas_used / gas_limit`` (EIP-1559).

    The target is half the limit, so ``(used - target) / target = 2 * utilization - 1`` and the
    base fee moves by at most 12.5% per block.
    """
    return base_fee * (1.0 + 0.125 * (2.0 * np.asarray(utilization) - 1.0))


@dataclass(frozen=True)
class ScenarioParams:
    """Parameters of the synthetic DeFi scenario (defaults: ETH/USDC-like on Ethereum mainnet).

    Attributes:
        initial_price: reference price at the first block (quote per base token).
        annual_vol: long-run annualised volatility of the reference log price.
        block_seconds: seconds per block (12 on Ethereum since the Merge).
        vol_persistence: AR(1) coefficient of log volatility per block.
        vol_of_vol: stationary standard deviation of log volatility.
        spread_bps: CEX full bid-ask spread in basis points at the long-run volatility.
        base_fee_gwei: long-run base fee level in gwei.
        min_base_fee_gwei: floor on the base fee (keeps the process away from zero).
        demand_elasticity: how strongly block fullness reacts to (demand level - log base fee).
        utilization_noise: standard deviation of block fullness around its demand level.
        spike_rate: congestion spikes per block at long-run volatility (scales with vol).
        spike_size: mean log jump of demand in a spike (e.g. 1.2 = about 3.3x the base fee).
        spike_decay: per-block persistence of congestion.
        jump_congestion: extra demand per unit of |return| beyond 3 sigma (price-jump rushes).
        max_congestion: cap on the log demand above its level (3.0: about 20x the base fee,
            the order of the largest mainnet spikes, e.g. 20 gwei -> 400+ gwei).
        noise_rate: expected noise-trader swaps per block and pool.
        noise_size: median noise swap as a fraction of the pool's X reserve.
        noise_size_sigma: log-normal dispersion of noise swap sizes.
        whale_prob: probability per block and pool of a whale swap.
        whale_size: median whale swap as a fraction of the X reserve.
        lp_event_prob: probability per block and pool of an LP add or remove.
        lp_event_size: maximum relative liquidity change of one LP event.
    """

    initial_price: float = 2500.0
    annual_vol: float = 0.7
    block_seconds: float = 12.0
    vol_persistence: float = 0.998
    vol_of_vol: float = 0.5
    spread_bps: float = 2.0
    base_fee_gwei: float = 20.0
    min_base_fee_gwei: float = 1.0
    demand_elasticity: float = 1.0
    utilization_noise: float = 0.15
    spike_rate: float = 0.002
    spike_size: float = 1.2
    spike_decay: float = 0.97
    jump_congestion: float = 0.3
    max_congestion: float = 3.0
    noise_rate: float = 1.0
    noise_size: float = 0.001
    noise_size_sigma: float = 1.0
    whale_prob: float = 0.01
    whale_size: float = 0.006
    lp_event_prob: float = 0.002
    lp_event_size: float = 0.2

    def __post_init__(self) -> None:
        positive = (
            "initial_price",
            "annual_vol",
            "block_seconds",
            "base_fee_gwei",
            "min_base_fee_gwei",
            "noise_size",
            "whale_size",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"ScenarioParams.{name} must be > 0, got {getattr(self, name)}")
        for name in ("vol_persistence", "spike_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"ScenarioParams.{name} must be in [0, 1)")
        for name in ("whale_prob", "lp_event_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"ScenarioParams.{name} must be a probability in [0, 1]")
        if not 0 <= self.lp_event_size < 1:
            raise ConfigError("ScenarioParams.lp_event_size must be in [0, 1)")
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigError(f"ScenarioParams.{f.name} must be >= 0")

    @property
    def vol_per_block(self) -> float:
        """Long-run standard deviation of the log price per block."""
        return self.annual_vol * math.sqrt(self.block_seconds / SECONDS_PER_YEAR)


@dataclass(frozen=True)
class DefiScenario:
    """Exogenous series of one arbitrage episode (or a long history to window), block by block.

    Row ``t`` describes block ``t``: the state the agent sees before the block and the exogenous
    events inside it. ``T`` blocks, ``K`` pools, ``C = K + 1`` competitor slots (one per pool for
    pool-vs-reference arbitrage, one for the pool pair).

    Attributes:
        ref_price: ``(T,)`` reference (CEX) mid price, quote per base token.
        spread: ``(T,)`` CEX full relative bid-ask spread.
        volatility: ``(T,)`` latent per-block volatility of the reference log price.
        base_fee: ``(T,)`` base fee of block ``t`` in gwei (known before the block: EIP-1559).
        utilization: ``(T,)`` fullness of block ``t``, which sets ``base_fee[t + 1]``.
        native_price: ``(T,)`` price of the gas token in quote.
        noise_flow: ``(T, K)`` noise-trader net flow in block ``t`` as a fraction of the pool's
            X reserve; positive = traders buy X from the pool (pool price up).
        lp_flow: ``(T, K)`` relative liquidity change at the end of block ``t`` (+ add, - remove).
        comp_u: ``(T, C)`` uniforms deciding whether a competitor shows up.
        comp_z: ``(T, C)`` standard normals scattering competitor bids.
    """

    ref_price: np.ndarray
    spread: np.ndarray
    volatility: np.ndarray
    base_fee: np.ndarray
    utilization: np.ndarray
    native_price: np.ndarray
    noise_flow: np.ndarray
    lp_flow: np.ndarray
    comp_u: np.ndarray
    comp_z: np.ndarray

    def __post_init__(self) -> None:
        n = np.shape(self.ref_price)[0] if np.ndim(self.ref_price) == 1 else -1
        if n < 2:
            raise DataError(
                f"DefiScenario.ref_price: expected shape (T,) with T >= 2, got "
                f"{np.shape(self.ref_price)}"
            )
        k = np.shape(self.noise_flow)[1] if np.ndim(self.noise_flow) == 2 else -1
        if k < 1:
            raise DataError(
                f"DefiScenario.noise_flow: expected shape (T, K) with K >= 1 pools, "
                f"got {np.shape(self.noise_flow)}"
            )
        want = {
            "ref_price": (n,),
            "spread": (n,),
            "volatility": (n,),
            "base_fee": (n,),
            "utilization": (n,),
            "native_price": (n,),
            "noise_flow": (n, k),
            "lp_flow": (n, k),
            "comp_u": (n, k + 1),
            "comp_z": (n, k + 1),
        }
        for name, shape in want.items():
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.float64)
            if arr.shape != shape:
                raise DataError(f"DefiScenario.{name}: expected shape {shape}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                row = int(np.argwhere(~np.isfinite(arr))[0][0])
                raise DataError(f"DefiScenario.{name}: non-finite value at row {row}")
            object.__setattr__(self, name, arr)
        for name in ("ref_price", "base_fee", "native_price"):
            bad = np.flatnonzero(getattr(self, name) <= 0)
            if bad.size:
                raise DataError(f"DefiScenario.{name}: must be > 0, row {int(bad[0])}")
        if np.any(self.spread < 0) or np.any(self.spread >= 1):
            raise DataError("DefiScenario.spread: expected relative spreads in [0, 1)")
        if np.any(self.lp_flow <= -1):
            row = int(np.argwhere(self.lp_flow <= -1)[0][0])
            raise DataError(f"DefiScenario.lp_flow: removals must be > -1, row {row}")
        if np.any(np.abs(self.noise_flow) >= 0.5):
            row = int(np.argwhere(np.abs(self.noise_flow) >= 0.5)[0][0])
            raise DataError(f"DefiScenario.noise_flow: |flow| must be < 0.5 of reserves, row {row}")

    def __len__(self) -> int:
        return int(self.ref_price.shape[0])

    @property
    def n_pools(self) -> int:
        """Number of pools ``K``."""
        return int(self.noise_flow.shape[1])

    def window(self, start: int, stop: int) -> DefiScenario:
        """Rows ``[start, stop)`` as a new scenario (arrays are views)."""
        if not 0 <= start < stop <= len(self):
            raise DataError(f"DefiScenario.window: [{start}, {stop}) outside [0, {len(self)})")
        return DefiScenario(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})


def _sv_log_returns(
    rng: np.random.Generator, n: int, p: ScenarioParams
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic-volatility log returns: ``log sigma_t = log sigma0 + h_t``, ``h`` an AR(1)."""
    phi = p.vol_persistence
    eps_h = rng.standard_normal(n) * p.vol_of_vol * math.sqrt(1.0 - phi * phi)
    h = np.empty(n)
    h_prev = rng.standard_normal() * p.vol_of_vol
    for t in range(n):  # AR(1) recursion; n is a few thousand, cheap in Python floats
        h_prev = phi * h_prev + eps_h[t]
        h[t] = h_prev
    # Normalise so E[sigma^2] equals the long-run variance (log-normal correction).
    sigma = p.vol_per_block * np.exp(h - p.vol_of_vol**2)
    rets = sigma * rng.standard_normal(n) - 0.5 * sigma**2
    return rets, sigma


def generate_gas(
    rng: np.random.Generator,
    volatility: np.ndarray,
    log_returns: np.ndarray,
    params: ScenarioParams,
) -> tuple[np.ndarray, np.ndarray]:
    """EIP-1559 base fee and block fullness driven by demand with volatility-linked spikes.

    Demand (log gwei) is the long-run level plus congestion. Congestion decays geometrically and
    jumps by an exponential amount at spikes, whose rate scales with ``volatility / long-run vol``,
    and grows with price moves beyond 3 sigma. Block fullness is ``0.5 + elasticity * (demand -
    log base) + noise`` clipped to [0, 1]; the base fee then follows EIP-1559 exactly.

    Returns:
        ``(base_fee_gwei, utilization)``, both ``(T,)``; ``base_fee[t+1]`` follows from
        ``base_fee[t]`` and ``utilization[t]``.
    """
    p = params
    n = volatility.shape[0]
    vol_ratio = volatility / p.vol_per_block
    spike = rng.random(n) < np.minimum(p.spike_rate * vol_ratio, 1.0)
    spike_mag = rng.exponential(p.spike_size, n) * spike
    jumps = p.jump_congestion * np.maximum(np.abs(log_returns) / p.vol_per_block - 3.0, 0.0)
    jumps = np.minimum(jumps, p.spike_size)  # one price jump is at most a typical spike
    shocks = spike_mag + jumps
    u_noise = rng.standard_normal(n) * p.utilization_noise
    level = math.log(p.base_fee_gwei)
    base = np.empty(n)
    util = np.empty(n)
    b = p.base_fee_gwei * math.exp(0.3 * rng.standard_normal())
    c = 0.0
    floor = p.min_base_fee_gwei
    for t in range(n):  # EIP-1559 is a recursion on the previous block: inherently sequential
        c = min(p.spike_decay * c + float(shocks[t]), p.max_congestion)
        u = 0.5 + p.demand_elasticity * (level + c - math.log(b)) + float(u_noise[t])
        u = min(max(u, 0.0), 1.0)
        base[t] = b
        util[t] = u
        b = max(b * (1.0 + 0.125 * (2.0 * u - 1.0)), floor)
    return base, util


def reference_from_dataset(dataset: MarketDataset, symbol: str | None = None) -> np.ndarray:
    """Close prices of one symbol of a ``MarketDataset`` as a reference price path."""
    if symbol is None:
        if dataset.n_assets != 1:
            raise DataError(
                f"{dataset.source}: {dataset.n_assets} symbols; pass symbol= one of "
                f"{list(dataset.symbols)}"
            )
        idx = 0
    else:
        if symbol not in dataset.symbols:
            raise DataError(f"{dataset.source}: symbol {symbol!r} not in {list(dataset.symbols)}")
        idx = dataset.symbols.index(symbol)
    close = np.asarray(dataset.close[:, idx], dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(close) & (close > 0)))
    if bad.size:
        raise DataError(f"{dataset.source}: column close has a non-positive value at row {bad[0]}")
    return close


def generate_scenario(
    rng: np.random.Generator,
    n_steps: int,
    n_pools: int = 1,
    params: ScenarioParams | None = None,
    ref_price: np.ndarray | None = None,
) -> DefiScenario:
    """Generate ``n_steps`` blocks of exogenous DeFi dynamics for ``n_pools`` pools.

    Args:
        rng: source of all randomness (pass ``env.np_random`` for reproducible episodes).
        n_steps: number of blocks ``T``.
        n_pools: number of AMM pools ``K``.
        params: scenario parameters; ETH/USDC-like defaults.
        ref_price: optional ``(T,)`` reference price path (e.g. a dataset's close) used instead
            of the GBM, one row per block; its volatility is estimated causally (EWMA of squared
            log returns) and gas, spreads and flows follow its volatility relative to the
            path's own long-run level (so hourly bars do not read as a permanent crisis).

    Returns:
        A validated :class:`DefiScenario`.
    """
    p = params or ScenarioParams()
    if n_steps < 2:
        raise ConfigError(f"generate_scenario: n_steps must be >= 2, got {n_steps}")
    if n_pools < 1:
        raise ConfigError(f"generate_scenario: n_pools must be >= 1, got {n_pools}")
    if ref_price is None:
        rets, vol = _sv_log_returns(rng, n_steps, p)
        # price[0] is the start; the return of block t moves price t -> t+1.
        log_p = math.log(p.initial_price) + np.concatenate([[0.0], np.cumsum(rets[:-1])])
        price = np.exp(log_p)
    else:
        price = np.asarray(ref_price, dtype=np.float64)
        if price.shape != (n_steps,):
            raise DataError(
                f"generate_scenario: ref_price has shape {price.shape}, expected ({n_steps},)"
            )
        if np.any(~np.isfinite(price) | (price <= 0)):
            raise DataError("generate_scenario: ref_price must be finite and > 0")
        rets = np.diff(np.log(price), append=np.log(price[-1]))
        # Causal EWMA variances (returns up to t-1 for block t): a short one for the current
        # level and a long one as the path's own normal level, so a path sampled hourly (not per
        # block) drives gas and flows by its *relative* volatility, not by its bar size.
        var_s = np.empty(n_steps)
        var_l = np.empty(n_steps)
        first = float(np.mean(rets[: min(24, n_steps - 1)] ** 2)) or p.vol_per_block**2
        vs = vl = first
        for t in range(n_steps):
            var_s[t], var_l[t] = vs, vl
            r2 = float(rets[t]) ** 2
            vs = 0.97 * vs + 0.03 * r2
            vl = 0.999 * vl + 0.001 * r2
        vol = np.sqrt(var_s)
        scale = p.vol_per_block / np.sqrt(np.maximum(var_l, 1e-30))
        base, util = generate_gas(rng, vol * scale, rets * scale, p)
    if ref_price is None:
        base, util = generate_gas(rng, vol, rets, p)
        vol_ratio = vol / p.vol_per_block
    else:
        vol_ratio = vol * scale / p.vol_per_block
    spread = np.clip(p.spread_bps * 1e-4 * np.sqrt(vol_ratio), 0.0, 0.05)

    # Noise flow: Poisson count of swaps with random sign and log-normal size; heavier when
    # volatility is high (more traders active), plus occasional whales.
    k = n_pools
    counts = rng.poisson(p.noise_rate * np.sqrt(vol_ratio)[:, None] * np.ones((1, k)))
    # Sum of `count` signed log-normal swaps, approximated by a normal with the same variance
    # (exact mean 0), which keeps the draw vectorised.
    second_moment = (p.noise_size**2) * np.exp(2.0 * p.noise_size_sigma**2)
    flow = rng.standard_normal((n_steps, k)) * np.sqrt(counts * second_moment)
    whale = rng.random((n_steps, k)) < p.whale_prob
    whale_amt = p.whale_size * np.exp(0.5 * rng.standard_normal((n_steps, k)))
    flow = flow + whale * whale_amt * rng.choice([-1.0, 1.0], size=(n_steps, k))
    flow = np.clip(flow, -0.2, 0.2)

    lp_event = rng.random((n_steps, k)) < p.lp_event_prob
    lp = lp_event * rng.uniform(-p.lp_event_size, p.lp_event_size, (n_steps, k))

    comp_u = rng.random((n_steps, k + 1))
    comp_z = rng.standard_normal((n_steps, k + 1))
    return DefiScenario(
        ref_price=price,
        spread=spread,
        volatility=vol,
        base_fee=base,
        utilization=util,
        native_price=price.copy(),
        noise_flow=flow,
        lp_flow=lp,
        comp_u=comp_u,
        comp_z=comp_z,
    )
