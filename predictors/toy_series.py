"""Small seeded series with known structure, for predictor tests and the benchmark (NumPy).

Not a market simulator (that is ``envs.data.synthetic`` / ``envs.data.defi``): each series here has
a known optimal forecast and noise level, so tests can check that a model learns and that its
intervals are calibrated.
"""

from __future__ import annotations

import numpy as np

BARS_PER_DAY_5MIN = 288
FIVE_MIN_NS = 300 * 10**9


def ar1(n: int, phi: float = 0.7, noise: float = 1.0, seed: int = 0) -> np.ndarray:
    """``x_t = phi * x_{t-1} + noise * e_t`` with standard normal ``e``; optimal 1-step MSE
    is ``noise**2`` and the 90% interval is ``phi * x_t +- 1.645 * noise``."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, noise, n)
    x = np.zeros(n)
    x[0] = e[0] / np.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def gas_like(
    n: int,
    seed: int = 0,
    phi: float = 0.8,
    noise: float = 0.08,
    spike_prob: float = 0.01,
    spike_size: float = 0.8,
    daily_amplitude: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """A base-fee-like series on 5-minute bars: ``log fee = 3 + daily cycle + OU + spikes``.

    The OU deviation has AR coefficient ``phi`` per bar; a spike adds ``spike_size`` to it (then
    decays with ``phi``), so spikes are sudden and mean-reverting like congestion.

    Returns:
        ``(base_fee (n,), timestamps (n,) int64 ns)``.
    """
    rng = np.random.default_rng(seed)
    ts = np.int64(1_700_006_400) * 10**9 + np.arange(n, dtype=np.int64) * FIVE_MIN_NS
    phase = 2 * np.pi * ((ts / 1e9) % 86_400.0) / 86_400.0
    cycle = daily_amplitude * np.sin(phase)
    jumps = (rng.random(n) < spike_prob) * spike_size
    e = rng.normal(0.0, noise, n)
    d = np.zeros(n)
    for t in range(1, n):
        d[t] = phi * d[t - 1] + e[t] + jumps[t]
    return np.exp(3.0 + cycle + d), ts


def pool_like(
    n: int, seed: int = 0, liquidity_phi: float = 0.7, volume_phi: float = 0.6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Constant-product pool reserves and volume with mean-reverting liquidity and volume.

    log liquidity: OU around ``log 1e6`` (LPs add and remove); price: random walk; log volume:
    AR(1) plus a daily cycle on 5-minute bars. Reserves ``x = L / sqrt(p)``, ``y = L sqrt(p)``.

    Returns:
        ``(reserve_x, reserve_y, volume)``, each ``(n,)``.
    """
    rng = np.random.default_rng(seed)
    log_l = np.zeros(n)
    log_v = np.zeros(n)
    for t in range(1, n):
        log_l[t] = liquidity_phi * log_l[t - 1] + rng.normal(0.0, 0.05)
        log_v[t] = volume_phi * log_v[t - 1] + rng.normal(0.0, 0.5)
    cycle = 0.5 * np.sin(2 * np.pi * np.arange(n) / BARS_PER_DAY_5MIN)
    liquidity = 1e6 * np.exp(log_l)
    price = 2000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.002, n)))
    volume = 5e4 * np.exp(log_v + cycle)
    return liquidity / np.sqrt(price), liquidity * np.sqrt(price), volume
