"""Causal, vectorised transforms on ``(T, N)`` arrays (time first, one column per asset).

Every function here is causal: the output at row ``t`` depends only on input rows ``<= t``, and it
is computed by an algorithm whose arithmetic for row ``t`` does not change when later rows change
(block boundaries sit at fixed offsets from row 0, and ``np.cumsum`` accumulates in order), so the
values up to ``t`` are bit-identical whatever comes after. Rows where a statistic is not yet
defined are ``NaN``; the pipeline fills them with a neutral value.

No SciPy or Numba (neither is a dependency): exponential recursions are solved in closed form over
fixed-length blocks with cumulative sums, and rolling moments use cumulative sums of deviations
from a per-block anchor, which keeps them numerically stable over millions of bars.
"""

from __future__ import annotations

import numpy as np

# Largest power of 1/decay we allow inside one EMA block: far from float64 overflow (1e308) and
# its reciprocal far from the subnormal range, so the closed form keeps full relative precision.
_MAX_LOG_GROWTH = 200.0
_MAX_EMA_BLOCK = 4096
# Rolling-moment block length: anchors are refreshed this often (or every ``window`` rows).
_MOMENT_BLOCK = 1024


def _as_2d(x: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return x[:, None], True
    if x.ndim != 2:
        raise ValueError(f"expected a (T,) or (T, N) array, got shape {x.shape}")
    return x, False


def _restore(y: np.ndarray, was_1d: bool) -> np.ndarray:
    return y[:, 0] if was_1d else y


def ema(x: np.ndarray, alpha: float, init: np.ndarray | float | None = None) -> np.ndarray:
    """Exponential moving average ``y_t = alpha * x_t + (1 - alpha) * y_{t-1}`` along axis 0.

    Solved without a per-row Python loop: inside a block of ``L`` rows the recursion started
    from zero is ``y_j = alpha * r**j * cumsum_k(r**-k * x_k)`` with ``r = 1 - alpha``; the state
    carried across blocks adds ``r**(j+1) * y_prev``, which needs one loop step per block only.
    ``L`` is chosen so ``r**-L`` stays below ``e**200``, so no term overflows and rounding stays at
    the level of a sequential recursion (error ~ eps * EMA(|x|)).

    Args:
        x: ``(T,)`` or ``(T, N)`` input, finite.
        alpha: smoothing factor in ``(0, 1]`` (``2 / (span + 1)`` for a span, ``1 / n`` for
            Wilder's smoothing).
        init: the state before row 0 (``y_{-1}``), per column or scalar. ``None`` seeds with the
            first row (``y_0 = x_0``, the ``adjust=False`` convention of pandas ``ewm``).

    Returns:
        Float64 array shaped like ``x``.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"ema alpha must be in (0, 1], got {alpha}")
    x2, was_1d = _as_2d(x)
    n_rows, n_cols = x2.shape
    if n_rows == 0:
        return _restore(np.empty_like(x2), was_1d)
    if init is None:
        carry = x2[0].copy()
    else:
        carry = np.broadcast_to(np.asarray(init, dtype=np.float64), (n_cols,)).copy()
    decay = 1.0 - alpha
    if decay == 0.0:
        return _restore(x2.copy(), was_1d)
    growth = -np.log(decay)
    block = int(max(1, min(_MAX_EMA_BLOCK, _MAX_LOG_GROWTH // growth)))
    n_blocks = -(-n_rows // block)
    padded = np.zeros((n_blocks * block, n_cols))
    padded[:n_rows] = x2
    xb = padded.reshape(n_blocks, block, n_cols)
    j = np.arange(block, dtype=np.float64)
    rise = np.exp(j * growth)[None, :, None]  # r**-j
    fall = np.exp(-j * growth)[None, :, None]  # r**j
    local = np.cumsum(xb * rise, axis=1)
    local *= fall
    local *= alpha
    carry_weight = (fall[0, :, 0] * decay)[:, None]  # r**(j+1)
    out = np.empty_like(local)
    for b in range(n_blocks):  # one step per block, not per row
        out[b] = local[b] + carry_weight * carry
        carry = out[b, -1]
    return _restore(out.reshape(-1, n_cols)[:n_rows], was_1d)


def wilder(x: np.ndarray, period: int, first: int = 0) -> np.ndarray:
    """Wilder's smoothing (RMA) as in RSI and ATR (Wilder 1978; TA-Lib's seeding).

    The average is seeded at row ``first + period - 1`` with the simple mean of rows
    ``first .. first + period - 1`` and continued with ``y_t = y_{t-1} + (x_t - y_{t-1}) / period``.
    Rows before the seed are ``NaN``.

    Args:
        x: ``(T,)`` or ``(T, N)`` input; rows before ``first`` are ignored.
        period: smoothing length ``n >= 1``.
        first: first row holding a valid input (1 for quantities built on a previous bar).

    Returns:
        Float64 array shaped like ``x``.
    """
    if period < 1:
        raise ValueError(f"wilder period must be >= 1, got {period}")
    x2, was_1d = _as_2d(x)
    out = np.full(x2.shape, np.nan)
    seed_row = first + period - 1
    if seed_row < x2.shape[0]:
        seed = x2[first : seed_row + 1].mean(axis=0)
        out[seed_row] = seed
        if seed_row + 1 < x2.shape[0]:
            out[seed_row + 1 :] = ema(x2[seed_row + 1 :], 1.0 / period, init=seed)
    return _restore(out, was_1d)


def rolling_mean_var(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Rolling mean and population variance over the last ``window`` rows (inclusive).

    Stable cumulative sums: rows are cut into blocks of ``B >= window`` rows; inside a block we
    accumulate deviations from the block's first value (its anchor), so the sums stay small even
    for price levels of 1e5 over 1e6 bars. A window spans at most two blocks; the older part is
    re-expressed around the newer anchor with the exact shift identities
    ``sum(x - c) = sum(x - a) + m (a - c)`` and
    ``sum((x - c)^2) = sum((x - a)^2) + 2 (a - c) sum(x - a) + m (a - c)^2``.
    Rounding error of the variance is about ``eps * B * spread**2`` (``spread`` being the
    deviation from the anchor), independent of the series length and of the price level.

    Args:
        x: ``(T,)`` or ``(T, N)`` finite input.
        window: window length ``>= 1``.

    Returns:
        ``(mean, var)`` float64 arrays shaped like ``x``; rows ``< window - 1`` are ``NaN``.
    """
    if window < 1:
        raise ValueError(f"rolling window must be >= 1, got {window}")
    x2, was_1d = _as_2d(x)
    n_rows, n_cols = x2.shape
    if n_rows < window:
        return _restore(np.full(x2.shape, np.nan), was_1d), _restore(
            np.full(x2.shape, np.nan), was_1d
        )
    block = max(window, _MOMENT_BLOCK)
    n_blocks = -(-n_rows // block)
    n_pad = n_blocks * block
    # Work in place on few arrays: at 1e6 rows, fresh temporaries cost more than arithmetic.
    s1 = np.empty((n_pad, n_cols))
    s1[:n_rows] = x2
    s1[n_rows:] = x2[-1]  # padding sits after every real row: it never reaches them
    s1b = s1.reshape(n_blocks, block, n_cols)
    anchor = s1b[:, 0, :].copy()  # (n_blocks, N)
    s1b -= anchor[:, None, :]  # deviations from the block anchor
    s2 = np.square(s1)
    s2b = s2.reshape(n_blocks, block, n_cols)
    np.cumsum(s1b, axis=1, out=s1b)
    np.cumsum(s2b, axis=1, out=s2b)
    tot1 = s1b[:, -1, :]
    tot2 = s2b[:, -1, :]

    # Output row t holds the window (t - window, t]. Bulk: sum = S[t] - S[t - window] with both
    # in t's block; the rows whose window reaches a block start (about window / block of them)
    # are fixed up on their indices alone.
    mean = np.empty((n_pad, n_cols))
    var = np.empty((n_pad, n_cols))
    mean[: window - 1] = np.nan
    var[: window - 1] = np.nan
    # The padding rows are discarded, but the anchor is added to them below: give them a value so
    # no uninitialised memory (possibly NaN/inf bit patterns) meets arithmetic.
    mean[n_rows:] = 0.0
    var[n_rows:] = 0.0
    sum1 = mean[window - 1 : n_rows]
    sum2 = var[window - 1 : n_rows]
    np.subtract(s1[window:n_rows], s1[: n_rows - window], out=sum1[1:])
    np.subtract(s2[window:n_rows], s2[: n_rows - window], out=sum2[1:])
    sum1[0] = s1[window - 1]
    sum2[0] = s2[window - 1]
    starts = np.arange(n_blocks)[:, None] * block
    edge = (starts + np.arange(window)[None, :]).ravel()  # t with (t mod block) < window
    edge = edge[(edge >= window - 1) & (edge < n_rows)]
    sum1[edge - (window - 1)] = s1[edge]  # window starts at the block start, or earlier
    sum2[edge - (window - 1)] = s2[edge]
    # Windows spanning the previous block: its tail there, shifted to this block's anchor.
    pos = edge % block
    spans = edge[pos < window - 1]
    if spans.size:
        bs = spans // block
        m = (window - 1 - spans % block)[:, None].astype(np.float64)
        prev1 = tot1[bs - 1] - s1[spans - window]
        prev2 = tot2[bs - 1] - s2[spans - window]
        delta = anchor[bs - 1] - anchor[bs]
        sum1[spans - (window - 1)] += prev1 + m * delta
        sum2[spans - (window - 1)] += prev2 + 2.0 * delta * prev1 + m * delta * delta

    sum1 /= window  # now the mean deviation from the anchor
    sum2 /= window
    sum2 -= np.square(sum1)
    np.maximum(sum2, 0.0, out=sum2)
    mean.reshape(n_blocks, block, n_cols)[...] += anchor[:, None, :]
    return _restore(mean[:n_rows], was_1d), _restore(var[:n_rows], was_1d)


def lag_log_return(close: np.ndarray, lag: int) -> np.ndarray:
    """Log return ``log(close_t / close_{t-lag})``; the first ``lag`` rows are ``NaN``."""
    if lag < 1:
        raise ValueError(f"log return lag must be >= 1, got {lag}")
    c2, was_1d = _as_2d(close)
    out = np.full(c2.shape, np.nan)
    if c2.shape[0] > lag:
        out[lag:] = np.log(c2[lag:] / c2[:-lag])
    return _restore(out, was_1d)


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Wilder's true range ``max(h - l, |h - c_{t-1}|, |l - c_{t-1}|)``; row 0 is ``h - l``."""
    h2, was_1d = _as_2d(high)
    l2, _ = _as_2d(low)
    c2, _ = _as_2d(close)
    tr = h2 - l2
    if tr.shape[0] > 1:
        prev = c2[:-1]
        tr[1:] = np.maximum(tr[1:], np.maximum(np.abs(h2[1:] - prev), np.abs(l2[1:] - prev)))
    return _restore(tr, was_1d)
