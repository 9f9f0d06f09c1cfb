"""Seeded synthetic markets with known statistical shape, returned as :class:`MarketDataset`.

Every generator has the signature ``(n_bars, seed, ...) -> MarketDataset``; the same seed gives the
same data (all randomness comes from one ``np.random.default_rng(seed)``). Drift, volatility and
intensity parameters are **annual**, converted with ``dt = bar_seconds / SECONDS_PER_YEAR``
(365.25-day year), so changing the bar size keeps the process the same.

Bars are built from a close-price path the same way for every model:

- ``open_t = close_{t-1} * exp(open_noise * s_t * z)`` (the first open uses the initial price), so
  the open is the previous close plus a small gap, with ``s_t`` the bar's model volatility
  ``sigma_t * sqrt(dt)``;
- ``high_t = max(open_t, close_t) * exp(wick * s_t * |z'|)`` and
  ``low_t = min(open_t, close_t) * exp(-wick * s_t * |z''|)``, so ``low <= open, close <= high``;
- ``volume_t = base_volume * (1 + volume_beta * |r_t| / s_t) * exp(volume_noise * z''' -
  volume_noise**2 / 2)``: positive and increasing in the absolute log return ``r_t`` (busy bars
  trade more, the usual volume-volatility relation; Karpoff 1987).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.data.dataset import SECONDS_PER_YEAR, MarketDataset
from envs.errors import ConfigError

DEFAULT_START = "2020-01-01T00:00:00"
REGIME_NAMES = ("bull", "bear", "ranging", "volatile")
# Annual (drift, volatility) per regime: a crypto-like scale where "volatile" has the highest vol.
DEFAULT_REGIMES: dict[str, tuple[float, float]] = {
    "bull": (0.8, 0.45),
    "bear": (-0.8, 0.6),
    "ranging": (0.0, 0.25),
    "volatile": (0.0, 1.4),
}


def gbm(
    n_bars: int,
    seed: int | None = None,
    *,
    mu: float | Sequence[float] = 0.05,
    sigma: float | Sequence[float] = 0.5,
    initial_price: float | Sequence[float] = 100.0,
    n_assets: int | None = None,
    correlation: np.ndarray | Sequence[Sequence[float]] | None = None,
    symbols: Sequence[str] | None = None,
    bar_seconds: float = 3600.0,
    start: str | int = DEFAULT_START,
    base_volume: float = 1000.0,
    volume_beta: float = 1.0,
    volume_noise: float = 0.3,
    open_noise: float = 0.05,
    wick: float = 0.5,
) -> MarketDataset:
    """Geometric Brownian motion, one or several correlated assets.

    Log returns per bar are ``(mu - sigma^2/2) dt + sigma sqrt(dt) z`` with ``z ~ N(0, C)`` for a
    correlation matrix ``C`` (Cholesky factor), the exact discretisation of
    ``dS = mu S dt + sigma S dW``.

    Args:
        n_bars: number of bars (>= 2).
        seed: seed of ``np.random.default_rng``.
        mu: annual drift, scalar or one per asset.
        sigma: annual volatility, scalar or one per asset.
        initial_price: price before the first bar, scalar or one per asset.
        n_assets: number of assets; default from ``correlation``, ``symbols`` or 1.
        correlation: ``(N, N)`` correlation matrix (symmetric, unit diagonal, positive
            semi-definite); default identity.
        symbols: asset names; default ``GBM`` or ``GBM0..GBM{N-1}``.
        bar_seconds: bar length in seconds (sets ``dt`` and the timestamps).
        start: first timestamp (ISO text, UTC, or int ns).
        base_volume: typical volume of a quiet bar.
        volume_beta: volume increase per unit of ``|r_t| / s_t``.
        volume_noise: log-normal noise of volume.
        open_noise: open-gap noise in units of bar volatility.
        wick: high/low wick size in units of bar volatility.

    Returns:
        The dataset; ``source`` records the generator and its parameters.

    Raises:
        ConfigError: a parameter outside its range, named.
    """
    n = _resolve_n_assets(n_assets, correlation, symbols, mu, sigma, initial_price)
    dt = _dt(n_bars, bar_seconds)
    mu_v = _per_asset(mu, n, "mu")
    sigma_v = _per_asset(sigma, n, "sigma", lower=0.0)
    price0 = _per_asset(initial_price, n, "initial_price", lower=0.0, strict=True)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_bars, n))
    if correlation is not None:
        z = z @ _cholesky(correlation, n).T
    log_ret = (mu_v - 0.5 * sigma_v**2) * dt + sigma_v * np.sqrt(dt) * z
    bar_vol = np.broadcast_to(sigma_v * np.sqrt(dt), (n_bars, n))
    names = _symbols(symbols, n, "GBM")
    desc = f"gbm(n_bars={n_bars}, seed={seed}, mu={_fmt(mu)}, sigma={_fmt(sigma)}, n_assets={n})"
    return _assemble(
        rng, log_ret, bar_vol, price0, names, bar_seconds, start, desc,
        base_volume, volume_beta, volume_noise, open_noise, wick,
    )  # fmt: skip


def regime_switching(
    n_bars: int,
    seed: int | None = None,
    *,
    regimes: dict[str, tuple[float, float]] | None = None,
    transition: np.ndarray | Sequence[Sequence[float]] | None = None,
    stay_probability: float = 0.995,
    initial_regime: int | str | None = None,
    initial_price: float = 100.0,
    symbol: str = "REGIME",
    bar_seconds: float = 3600.0,
    start: str | int = DEFAULT_START,
    base_volume: float = 1000.0,
    volume_beta: float = 1.0,
    volume_noise: float = 0.3,
    open_noise: float = 0.05,
    wick: float = 0.5,
) -> MarketDataset:
    """GBM whose drift and volatility follow a hidden Markov chain of market regimes.

    A Markov-switching model in the sense of Hamilton (1989): the regime ``k_t`` follows a Markov
    chain with transition matrix ``P`` (``P[i, j] = Pr(k_{t+1}=j | k_t=i)``) and the bar's log
    return is GBM with that regime's ``(mu, sigma)``. The labels are stored in ``regimes`` and the
    names in ``regime_names`` (label ``i`` is ``regime_names[i]``).

    Args:
        n_bars: number of bars (>= 2).
        seed: seed of ``np.random.default_rng``.
        regimes: ``{name: (annual mu, annual sigma)}`` in label order; default bull / bear /
            ranging / volatile (:data:`DEFAULT_REGIMES`).
        transition: ``(K, K)`` row-stochastic matrix; default stays with ``stay_probability``
            and otherwise moves to another regime uniformly.
        stay_probability: diagonal of the default transition matrix (expected regime length
            ``1 / (1 - p)`` bars: 200 bars at 0.995).
        initial_regime: label or name of the first regime; default drawn from the stationary
            distribution of ``P``.
        initial_price: price before the first bar.
        symbol: asset name.
        bar_seconds, start, base_volume, volume_beta, volume_noise, open_noise, wick: as in
            :func:`gbm`.

    Returns:
        Single-asset dataset with ``regimes`` and ``regime_names`` set.

    Raises:
        ConfigError: a parameter outside its range, named.
    """
    dt = _dt(n_bars, bar_seconds)
    regimes = dict(DEFAULT_REGIMES if regimes is None else regimes)
    if not regimes:
        raise ConfigError("regime_switching: regimes is empty; expected {name: (mu, sigma)}")
    names = tuple(regimes)
    k = len(names)
    params = np.array([regimes[n] for n in names], dtype=np.float64)
    if params.shape != (k, 2) or np.any(params[:, 1] < 0):
        raise ConfigError("regime_switching: regimes values must be (mu, sigma) with sigma >= 0")
    if transition is None:
        if not 0.0 <= stay_probability <= 1.0:
            raise ConfigError(
                f"regime_switching: stay_probability={stay_probability}; expected in [0, 1]"
            )
        off = (1.0 - stay_probability) / (k - 1) if k > 1 else 0.0
        p = np.full((k, k), off)
        np.fill_diagonal(p, stay_probability if k > 1 else 1.0)
    else:
        p = np.asarray(transition, dtype=np.float64)
        if p.shape != (k, k) or np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0):
            raise ConfigError(
                f"regime_switching: transition must be a ({k}, {k}) matrix of non-negative rows "
                f"summing to 1; got shape {p.shape}"
            )
    rng = np.random.default_rng(seed)
    if initial_regime is None:
        state = int(rng.choice(k, p=_stationary(p)))
    elif isinstance(initial_regime, str):
        if initial_regime not in names:
            raise ConfigError(f"regime_switching: initial_regime {initial_regime!r} not in {names}")
        state = names.index(initial_regime)
    else:
        if not 0 <= int(initial_regime) < k:
            raise ConfigError(
                f"regime_switching: initial_regime={initial_regime}; expected 0..{k - 1}"
            )
        state = int(initial_regime)
    # Sample the chain by inverse CDF: one uniform per bar, drawn up front for reproducibility.
    # next_state[i, t] is where state i moves on uniform u[t]; the loop then only follows pointers.
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0
    u = rng.random(n_bars)
    next_state = [np.searchsorted(cum[i], u, side="right").tolist() for i in range(k)]
    label_list = [0] * n_bars
    for t in range(n_bars):
        label_list[t] = state
        state = next_state[state][t]
    labels = np.asarray(label_list, dtype=np.int64)
    mu_t = params[labels, 0][:, None]
    sigma_t = params[labels, 1][:, None]
    z = rng.standard_normal((n_bars, 1))
    log_ret = (mu_t - 0.5 * sigma_t**2) * dt + sigma_t * np.sqrt(dt) * z
    desc = f"regime_switching(n_bars={n_bars}, seed={seed}, regimes={list(names)})"
    ds = _assemble(
        rng, log_ret, sigma_t * np.sqrt(dt), np.array([initial_price], dtype=np.float64),
        (symbol,), bar_seconds, start, desc, base_volume, volume_beta, volume_noise,
        open_noise, wick,
    )  # fmt: skip
    return MarketDataset(
        timestamps=ds.timestamps,
        symbols=ds.symbols,
        ohlcv=ds.ohlcv,
        regimes=labels,
        regime_names=names,
        source=ds.source,
    )


def jump_diffusion(
    n_bars: int,
    seed: int | None = None,
    *,
    mu: float = 0.05,
    sigma: float = 0.4,
    jump_intensity: float = 25.0,
    jump_mean: float = -0.01,
    jump_std: float = 0.04,
    initial_price: float = 100.0,
    symbol: str = "MERTON",
    bar_seconds: float = 3600.0,
    start: str | int = DEFAULT_START,
    base_volume: float = 1000.0,
    volume_beta: float = 1.0,
    volume_noise: float = 0.3,
    open_noise: float = 0.05,
    wick: float = 0.5,
) -> MarketDataset:
    """Merton (1976) jump diffusion: GBM plus compound-Poisson log-normal jumps.

    Per bar, ``N_t ~ Poisson(lambda dt)`` jumps with log sizes ``Y ~ N(jump_mean, jump_std^2)``;
    the log return is ``(mu - sigma^2/2 - lambda kappa) dt + sigma sqrt(dt) z + sum Y`` with
    ``kappa = exp(jump_mean + jump_std^2/2) - 1``, the compensator that keeps the expected price
    growth at ``mu``. Jumps give fat tails (excess kurtosis of returns).

    Args:
        n_bars: number of bars (>= 2).
        seed: seed of ``np.random.default_rng``.
        mu: annual drift of the price (jumps compensated).
        sigma: annual diffusion volatility.
        jump_intensity: expected jumps per year (``lambda``).
        jump_mean: mean log jump size.
        jump_std: standard deviation of the log jump size.
        initial_price: price before the first bar.
        symbol: asset name.
        bar_seconds, start, base_volume, volume_beta, volume_noise, open_noise, wick: as in
            :func:`gbm`.

    Returns:
        Single-asset dataset.

    Raises:
        ConfigError: a parameter outside its range, named.
    """
    dt = _dt(n_bars, bar_seconds)
    _check_nonneg(sigma=sigma, jump_intensity=jump_intensity, jump_std=jump_std)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_bars, 1))
    n_jumps = rng.poisson(jump_intensity * dt, size=(n_bars, 1))
    # Sum of n iid N(m, s^2) is N(n m, n s^2): one normal draw per bar, exact.
    jumps = n_jumps * jump_mean + np.sqrt(n_jumps) * jump_std * rng.standard_normal((n_bars, 1))
    kappa = np.exp(jump_mean + 0.5 * jump_std**2) - 1.0
    log_ret = (mu - 0.5 * sigma**2 - jump_intensity * kappa) * dt + sigma * np.sqrt(dt) * z + jumps
    bar_vol = np.full((n_bars, 1), sigma * np.sqrt(dt))
    desc = (
        f"jump_diffusion(n_bars={n_bars}, seed={seed}, mu={mu}, sigma={sigma}, "
        f"jump_intensity={jump_intensity}, jump_mean={jump_mean}, jump_std={jump_std})"
    )
    return _assemble(
        rng, log_ret, bar_vol, np.array([initial_price], dtype=np.float64), (symbol,),
        bar_seconds, start, desc, base_volume, volume_beta, volume_noise, open_noise, wick,
    )  # fmt: skip


def ornstein_uhlenbeck(
    n_bars: int,
    seed: int | None = None,
    *,
    theta: float = 50.0,
    mean_price: float = 100.0,
    sigma: float = 0.3,
    initial_price: float | None = None,
    symbol: str = "OU",
    bar_seconds: float = 3600.0,
    start: str | int = DEFAULT_START,
    base_volume: float = 1000.0,
    volume_beta: float = 1.0,
    volume_noise: float = 0.3,
    open_noise: float = 0.05,
    wick: float = 0.5,
) -> MarketDataset:
    """Mean-reverting log price: an Ornstein-Uhlenbeck process on ``x = log(close)``.

    ``dx = theta (log(mean_price) - x) dt + sigma dW``, sampled exactly (Uhlenbeck & Ornstein
    1930; exact discretisation as in Gillespie 1996): ``x_{t+1} = m + (x_t - m) phi +
    sigma sqrt((1 - phi^2) / (2 theta)) z`` with ``phi = exp(-theta dt)``, so the log price is an
    AR(1) with coefficient ``phi < 1`` and half-life ``log 2 / theta`` years.

    Args:
        n_bars: number of bars (>= 2).
        seed: seed of ``np.random.default_rng``.
        theta: annual mean-reversion speed (> 0); 50/year is a half-life of about 5 days.
        mean_price: the level the price reverts to.
        sigma: annual volatility of the log price.
        initial_price: price before the first bar; default ``mean_price``.
        symbol: asset name.
        bar_seconds, start, base_volume, volume_beta, volume_noise, open_noise, wick: as in
            :func:`gbm`.

    Returns:
        Single-asset dataset.

    Raises:
        ConfigError: a parameter outside its range, named.
    """
    dt = _dt(n_bars, bar_seconds)
    if not theta > 0:
        raise ConfigError(f"ornstein_uhlenbeck: theta={theta}; expected > 0 (per year)")
    if not mean_price > 0:
        raise ConfigError(f"ornstein_uhlenbeck: mean_price={mean_price}; expected > 0")
    _check_nonneg(sigma=sigma)
    p0 = mean_price if initial_price is None else initial_price
    if not p0 > 0:
        raise ConfigError(f"ornstein_uhlenbeck: initial_price={p0}; expected > 0")
    rng = np.random.default_rng(seed)
    phi = np.exp(-theta * dt)
    step_sd = sigma * np.sqrt((1.0 - phi**2) / (2.0 * theta))
    m = np.log(mean_price)
    shocks = (step_sd * rng.standard_normal(n_bars)).tolist()
    dev = float(np.log(p0) - m)
    path = [dev] * (n_bars + 1)
    for t in range(n_bars):  # AR(1) recursion on Python floats: about 0.2 s per million bars
        dev = dev * phi + shocks[t]
        path[t + 1] = dev
    log_ret = np.diff(np.asarray(path))[:, None]
    bar_vol = np.full((n_bars, 1), max(step_sd, 1e-12))
    desc = (
        f"ornstein_uhlenbeck(n_bars={n_bars}, seed={seed}, theta={theta}, "
        f"mean_price={mean_price}, sigma={sigma})"
    )
    return _assemble(
        rng, log_ret, bar_vol, np.array([p0], dtype=np.float64), (symbol,), bar_seconds,
        start, desc, base_volume, volume_beta, volume_noise, open_noise, wick,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# shared construction
# --------------------------------------------------------------------------------------------
def _assemble(
    rng: np.random.Generator,
    log_ret: np.ndarray,
    bar_vol: np.ndarray,
    price0: np.ndarray,
    symbols: tuple[str, ...],
    bar_seconds: float,
    start: str | int,
    source: str,
    base_volume: float,
    volume_beta: float,
    volume_noise: float,
    open_noise: float,
    wick: float,
) -> MarketDataset:
    """Close path -> consistent OHLCV bars (see the module docstring for the construction)."""
    _check_nonneg(
        base_volume=base_volume,
        volume_beta=volume_beta,
        volume_noise=volume_noise,
        open_noise=open_noise,
        wick=wick,
    )
    if not base_volume > 0:
        raise ConfigError(f"{source}: base_volume={base_volume}; expected > 0")
    n_bars, n = log_ret.shape
    bar_vol = np.broadcast_to(bar_vol, (n_bars, n))
    log_close = np.log(price0)[None, :] + np.cumsum(log_ret, axis=0)
    log_prev = np.vstack([np.log(price0)[None, :], log_close[:-1]])
    z_open, z_high, z_low, z_vol = rng.standard_normal((4, n_bars, n))
    log_open = log_prev + open_noise * bar_vol * z_open
    log_high = np.maximum(log_open, log_close) + wick * bar_vol * np.abs(z_high)
    log_low = np.minimum(log_open, log_close) - wick * bar_vol * np.abs(z_low)
    with np.errstate(divide="ignore", invalid="ignore"):
        activity = np.where(bar_vol > 0, np.abs(log_ret) / bar_vol, 0.0)
    volume = (
        base_volume
        * (1.0 + volume_beta * activity)
        * np.exp(volume_noise * z_vol - 0.5 * volume_noise**2)
    )
    ohlcv = np.stack(
        [np.exp(log_open), np.exp(log_high), np.exp(log_low), np.exp(log_close), volume], axis=-1
    )
    return MarketDataset(
        timestamps=_timestamps(n_bars, bar_seconds, start),
        symbols=symbols,
        ohlcv=ohlcv,
        source=source,
    )


def _timestamps(n_bars: int, bar_seconds: float, start: str | int) -> np.ndarray:
    if isinstance(start, (int, np.integer)):
        t0 = int(start)
    else:
        try:
            t0 = int(np.datetime64(str(start).rstrip("Z"), "ns").astype(np.int64))
        except ValueError:
            raise ConfigError(f"start={start!r}; expected ISO-8601 text or int ns") from None
    step = round(bar_seconds * 1e9)
    return t0 + np.arange(n_bars, dtype=np.int64) * step


def _dt(n_bars: int, bar_seconds: float) -> float:
    if not isinstance(n_bars, (int, np.integer)) or n_bars < 2:
        raise ConfigError(f"n_bars={n_bars!r}; expected an integer >= 2")
    if not bar_seconds > 0:
        raise ConfigError(f"bar_seconds={bar_seconds!r}; expected > 0")
    return bar_seconds / SECONDS_PER_YEAR


def _check_nonneg(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ConfigError(f"{name}={value!r}; expected >= 0")


def _per_asset(
    value: float | Sequence[float], n: int, name: str, lower: float | None = None, strict=False
) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
    if arr.shape != (n,):
        raise ConfigError(f"{name}: expected a scalar or {n} values")
    if lower is not None and (np.any(arr <= lower) if strict else np.any(arr < lower)):
        raise ConfigError(f"{name}={value!r}; expected {'>' if strict else '>='} {lower}")
    return arr


def _resolve_n_assets(n_assets, correlation, symbols, *per_asset) -> int:
    candidates = set()
    if n_assets is not None:
        if int(n_assets) < 1:
            raise ConfigError(f"n_assets={n_assets}; expected >= 1")
        candidates.add(int(n_assets))
    if correlation is not None:
        candidates.add(int(np.asarray(correlation).shape[0]))
    if symbols is not None:
        candidates.add(len(symbols))
    for value in per_asset:
        if np.ndim(value) == 1:
            candidates.add(len(value))
    if len(candidates) > 1:
        raise ConfigError(
            f"gbm: inconsistent number of assets {sorted(candidates)} from n_assets, "
            "correlation, symbols and per-asset parameters"
        )
    return candidates.pop() if candidates else 1


def _cholesky(correlation, n: int) -> np.ndarray:
    c = np.asarray(correlation, dtype=np.float64)
    if c.shape != (n, n):
        raise ConfigError(f"correlation: expected shape ({n}, {n}), got {c.shape}")
    if not np.allclose(c, c.T) or not np.allclose(np.diag(c), 1.0) or np.any(np.abs(c) > 1):
        raise ConfigError("correlation: expected a symmetric matrix with unit diagonal, |c| <= 1")
    eig = np.linalg.eigvalsh(c)
    if eig.min() < -1e-10:
        raise ConfigError(
            f"correlation: not positive semi-definite (smallest eigenvalue {eig.min():.3g})"
        )
    # Eigen-decomposition factor works for singular (perfectly correlated) matrices too.
    w, v = np.linalg.eigh(c)
    return v * np.sqrt(np.clip(w, 0.0, None))


def _stationary(p: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eig(p.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1.0))])
    pi = np.clip(pi / pi.sum(), 0.0, None)
    return pi / pi.sum()


def _symbols(symbols: Sequence[str] | None, n: int, prefix: str) -> tuple[str, ...]:
    if symbols is None:
        return (prefix,) if n == 1 else tuple(f"{prefix}{i}" for i in range(n))
    if len(set(symbols)) != len(symbols):
        raise ConfigError(f"symbols: duplicates in {list(symbols)}")
    return tuple(str(s) for s in symbols)


def _fmt(value) -> str:
    return str(np.round(np.asarray(value, dtype=float), 6).tolist())
