"""Streaming (one bar at a time) twin of :func:`envs.features.compute_features`.

``compute_features`` works on whole arrays; its exponential averages are solved in closed form
over blocks of up to ~2600 rows, so even a 64-bar tail costs milliseconds and a tail recompute
would not meet the runner's latency budget. This module keeps, per feature, the small state the
definition needs (last closes, EMA values, Wilder averages, the last ``w`` values of rolling
windows) and advances it with the defining recursion, vectorised over assets:

* ``logret_k``: a ring of the last ``k + 1`` closes.
* ``rvol_w`` / ``bb_*_w`` / ``volz_w``: a ring of the last ``w`` values, population moments by
  two passes over the ring (mean, then mean squared deviation).
* ``rsi_n`` / ``atr_n``: Wilder's RMA seeded with the mean of the first ``n`` inputs (TA-Lib, as
  in ``envs.features.transforms.wilder``), then ``y = a * x + (1 - a) * y_prev``.
* ``macd*``: EMAs of close seeded with the first close (pandas ``adjust=False``), signal EMA
  seeded with the first MACD value.
* calendar features: the same NumPy expressions as the pipeline on one timestamp.
* ``extra:<col>``: causal forward fill, 0 before the first value.

Warm-up semantics are the pipeline's: a feature is 0 (its neutral value) before its warm-up, and
``warmup`` of the set is the largest one. Values are cast to float32 like the pipeline's output.

Agreement with the array pipeline: the recursions are the same mathematics in a different order
of floating-point operations (the pipeline's block closed form, anchored cumulative sums), so the
float64 values agree to ~1e-12 relative and the float32 features are identical except for rare
one-ulp rounding flips. ``tests/test_runner_features.py`` pins this on real and synthetic data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from envs.errors import ConfigError
from envs.features.pipeline import DEFAULT_FEATURES, parse_feature

__all__ = ["StreamingFeatures"]

_NS_PER_SECOND = 1_000_000_000
_SECONDS_PER_DAY = 86_400
# (t, ohlcv, ret, lines, timestamp) -> (N,) value or 0.0 while warming up
ValueFn = Callable[[int, np.ndarray, Any, dict, int], Any]
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0), as in envs.features.pipeline


class _Ring:
    """The last ``size`` rows of an ``(N,)`` series; ``full`` once ``size`` rows were pushed."""

    __slots__ = ("_moments", "buf", "count", "pos", "size")

    def __init__(self, size: int, n: int) -> None:
        self.size = size
        self.buf = np.zeros((size, n))
        self.pos = 0
        self.count = 0
        self._moments: tuple[np.ndarray, np.ndarray] | None = None

    def push(self, row: np.ndarray) -> None:
        self.buf[self.pos] = row
        self.pos = (self.pos + 1) % self.size
        self.count += 1
        self._moments = None

    @property
    def full(self) -> bool:
        return self.count >= self.size

    def ago(self, k: int) -> np.ndarray:
        """Row pushed ``k`` pushes ago (0 = the last one)."""
        return self.buf[(self.pos - 1 - k) % self.size]

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Population mean and variance of the ring (two passes: stable, no cancellation)."""
        if self._moments is None:  # shared by bb_pos/bb_width of one window within a bar
            buf = self.buf
            mean = np.add.reduce(buf, axis=0) / self.size
            dev = buf - mean
            self._moments = (mean, np.add.reduce(dev * dev, axis=0) / self.size)
        return self._moments


class _Ema:
    """``y_t = alpha * x_t + (1 - alpha) * y_{t-1}``, ``y_{-1} = x_0`` (pandas ``adjust=False``)."""

    __slots__ = ("alpha", "decay", "value")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.decay = 1.0 - alpha
        self.value: np.ndarray | None = None

    def push(self, x: np.ndarray) -> np.ndarray:
        prev = x if self.value is None else self.value
        self.value = self.alpha * x + self.decay * prev
        return self.value


class _Wilder:
    """Wilder's RMA: seeded at input ``period`` (counting from ``first``) with a simple mean."""

    __slots__ = ("alpha", "decay", "period", "seed_rows", "value")

    def __init__(self, period: int) -> None:
        self.period = period
        self.alpha = 1.0 / period
        self.decay = 1.0 - self.alpha
        self.seed_rows: list[np.ndarray] = []
        self.value: np.ndarray | None = None

    def push(self, x: np.ndarray) -> np.ndarray | None:
        if self.value is None:
            self.seed_rows.append(np.array(x, dtype=np.float64))
            if len(self.seed_rows) == self.period:
                self.value = np.stack(self.seed_rows).mean(axis=0)
                self.seed_rows = []
            return self.value
        self.value = self.alpha * x + self.decay * self.value
        return self.value


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (flat window), as the pipeline's ``_safe_ratio``."""
    pos = den > 0
    return np.divide(num, den, out=np.zeros(np.shape(den)), where=pos)


class StreamingFeatures:
    """Compute the named features one bar at a time, equal to ``compute_features`` row by row.

    Args:
        names: feature specs (``None`` = ``DEFAULT_FEATURES``), validated like the pipeline.
        n_assets: number of assets ``N`` per bar.
        extra_names: names of the extra columns each bar carries (for ``extra:<col>``).

    Attributes:
        names: the feature names in column order.
        warmup: bars before every feature is defined (``extra:`` features add their own
            data-dependent warm-up, reported by :attr:`ready_from`).
        bars: bars pushed so far.
    """

    def __init__(
        self,
        names: Sequence[str] | None,
        n_assets: int,
        extra_names: Sequence[str] = (),
    ) -> None:
        names = tuple(DEFAULT_FEATURES if names is None else names)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"features: expected distinct feature names, got {list(names)}")
        self.names = names
        self.n = int(n_assets)
        self.extra_names = tuple(extra_names)
        parsed = [parse_feature(name) for name in names]
        self._parsed = parsed
        lags = [p[0] for pat, p in parsed if pat == "logret_<k>"]
        self._closes = _Ring(max(lags, default=1) + 1, self.n)
        self._rings: dict[tuple[str, int], _Ring] = {}
        self._emas: dict[tuple, _Ema] = {}
        self._wilders: dict[tuple[str, int], _Wilder] = {}
        self._extra_last: dict[str, np.ndarray] = {}
        self._extra_seen: dict[str, np.ndarray] = {}
        self._extra_warm: dict[str, int | None] = {}
        warm = 0
        for name, (pattern, p) in zip(names, parsed, strict=True):
            if pattern.startswith("rvol_"):
                self._rings.setdefault(("ret", p[0]), _Ring(p[0], self.n))
                warm = max(warm, p[0])
            elif pattern.startswith(("bb_pos_", "bb_width_")):
                self._rings.setdefault(("close", p[0]), _Ring(p[0], self.n))
                warm = max(warm, p[0] - 1)
            elif pattern.startswith("volz_"):
                self._rings.setdefault(("volume", p[0]), _Ring(p[0], self.n))
                warm = max(warm, p[0] - 1)
            elif pattern.startswith("rsi_"):
                self._wilders.setdefault(("gain", p[0]), _Wilder(p[0]))
                self._wilders.setdefault(("loss", p[0]), _Wilder(p[0]))
                warm = max(warm, p[0])
            elif pattern.startswith("atr_"):
                self._wilders.setdefault(("tr", p[0]), _Wilder(p[0]))
                warm = max(warm, p[0])
            elif pattern.startswith("macd"):
                fast, slow = p[0], p[1]
                self._emas.setdefault(("close", fast), _Ema(2.0 / (fast + 1)))
                self._emas.setdefault(("close", slow), _Ema(2.0 / (slow + 1)))
                if len(p) > 2:
                    self._emas.setdefault(("signal", fast, slow, p[2]), _Ema(2.0 / (p[2] + 1)))
                warm = max(warm, slow + (p[2] if len(p) > 2 else 0))
            elif pattern.startswith("logret_"):
                warm = max(warm, p[0])
            elif pattern == "extra:<column>":
                col = name[len("extra:") :]
                if col not in self.extra_names:
                    raise ConfigError(
                        f"feature {name!r}: bars carry no extra column {col!r}; extra columns "
                        f"are {list(self.extra_names)}"
                    )
                self._extra_last[col] = np.zeros(self.n)
                self._extra_seen[col] = np.zeros(self.n, dtype=bool)
                self._extra_warm[col] = None
        self.warmup = warm
        self._calendar_cache: dict[tuple[int, bool], np.ndarray] = {}
        self._value_fns = [
            self._compile(name, pattern, p)
            for name, (pattern, p) in zip(names, parsed, strict=True)
        ]
        self.bars = 0
        self._prev_close: np.ndarray | None = None
        self._out = np.zeros((self.n, len(names)), dtype=np.float32)

    @property
    def ready_from(self) -> int | None:
        """Bar index from which every feature is defined (None: an extra column not seen yet)."""
        warm = self.warmup
        for value in self._extra_warm.values():
            if value is None:
                return None
            warm = max(warm, value)
        return warm

    @property
    def history_bars(self) -> int:
        """Bars of raw history the state summarises (the longest ring); EMAs carry all bars."""
        sizes = [r.size for r in self._rings.values()] + [self._closes.size]
        return max(sizes)

    def push(
        self,
        timestamp: int,
        ohlcv: np.ndarray,
        extra: np.ndarray | None = None,
    ) -> np.ndarray:
        """Advance by one bar and return its ``(N, F)`` float32 feature row (a fresh array).

        Args:
            timestamp: bar time, int nanoseconds since the epoch (UTC).
            ohlcv: ``(N, 5)`` open, high, low, close, volume (already validated: finite,
                prices > 0, volume >= 0).
            extra: ``(N, E)`` extra columns (NaN = missing), in ``extra_names`` order.
        """
        t = self.bars
        high, low, close, volume = ohlcv[:, 1], ohlcv[:, 2], ohlcv[:, 3], ohlcv[:, 4]
        prev = self._prev_close
        self._closes.push(close)
        ret = None if prev is None else np.log(close / prev)
        if ret is not None:
            for (src, _), ring in self._rings.items():
                if src == "ret":
                    ring.push(ret)
        for (src, _), ring in self._rings.items():
            if src == "close":
                ring.push(close)
            elif src == "volume":
                ring.push(volume)
        for key, ema in self._emas.items():
            if key[0] == "close":
                ema.push(close)
        if prev is not None:
            diff = close - prev
            gain, loss = np.maximum(diff, 0.0), np.maximum(-diff, 0.0)
            tr = np.maximum(high - low, np.maximum(np.abs(high - prev), np.abs(low - prev)))
            for (src, _), wild in self._wilders.items():
                wild.push(gain if src == "gain" else loss if src == "loss" else tr)
        lines: dict[tuple[int, int], np.ndarray] = {}
        for key, ema in self._emas.items():
            if key[0] == "signal":
                fast, slow = key[1], key[2]
                line = self._macd_line(fast, slow, lines)
                ema.push(line)
        if extra is not None:
            for col in self._extra_last:
                values = extra[:, self.extra_names.index(col)]
                finite = np.isfinite(values)
                self._extra_last[col] = np.where(finite, values, self._extra_last[col])
                self._extra_seen[col] |= finite
                if self._extra_warm[col] is None and self._extra_seen[col].all():
                    self._extra_warm[col] = t
        out = self._out
        for f, value in enumerate(self._value_fns):
            out[:, f] = value(t, ohlcv, ret, lines, timestamp)
        self._prev_close = close.copy()
        self.bars = t + 1
        return out.copy()

    def _macd_line(
        self, fast: int, slow: int, lines: dict[tuple[int, int], np.ndarray]
    ) -> np.ndarray:
        if (fast, slow) not in lines:
            slow_ema = self._emas[("close", slow)].value
            lines[(fast, slow)] = (self._emas[("close", fast)].value - slow_ema) / slow_ema
        return lines[(fast, slow)]

    def _compile(self, name: str, pattern: str, p: tuple[int, ...]) -> ValueFn:
        """The value function of one feature, resolved once at construction so the per-bar
        loop does no string matching. Each returns the ``(N,)`` value (or 0.0 while warming
        up) with exactly the arithmetic of ``envs.features.compute_features`` (tested)."""
        if pattern == "logret_<k>":
            k = p[0]
            closes = self._closes

            def logret(t, ohlcv, ret, lines, ts):
                return np.log(ohlcv[:, 3] / closes.ago(k)) if t >= k else 0.0

            return logret
        if pattern.startswith("rvol_"):
            k, ring = p[0], self._rings[("ret", p[0])]

            def rvol(t, ohlcv, ret, lines, ts):
                return np.sqrt(ring.moments()[1]) if t >= k else 0.0

            return rvol
        if pattern.startswith("rsi_"):
            k = p[0]
            gain, loss = self._wilders[("gain", k)], self._wilders[("loss", k)]

            def rsi(t, ohlcv, ret, lines, ts):
                if t < k:
                    return 0.0
                g, lo = gain.value, loss.value
                return _safe_ratio(g - lo, g + lo)

            return rsi
        if pattern.startswith("macd"):
            fast, slow = p[0], p[1]
            warm = slow + (p[2] if len(p) > 2 else 0)
            macd_line = self._macd_line
            if pattern.startswith("macd_"):

                def macd(t, ohlcv, ret, lines, ts):
                    return macd_line(fast, slow, lines) if t >= warm else 0.0

                return macd
            signal_ema = self._emas[("signal", fast, slow, p[2])]
            is_signal = pattern.startswith("macdsignal")

            def macd_signal(t, ohlcv, ret, lines, ts):
                if t < warm:
                    return 0.0
                line = macd_line(fast, slow, lines)
                signal = signal_ema.value
                return signal if is_signal else line - signal

            return macd_signal
        if pattern.startswith(("bb_pos_", "bb_width_")):
            k, ring = p[0], self._rings[("close", p[0])]
            is_pos = pattern.startswith("bb_pos_")

            def bollinger(t, ohlcv, ret, lines, ts):
                if t < k - 1:
                    return 0.0
                mean, var = ring.moments()
                std = np.sqrt(var)
                if is_pos:
                    return _safe_ratio(ohlcv[:, 3] - mean, 2.0 * std)
                return 4.0 * std / mean

            return bollinger
        if pattern.startswith("atr_"):
            k, wilder = p[0], self._wilders[("tr", p[0])]

            def atr(t, ohlcv, ret, lines, ts):
                return wilder.value / ohlcv[:, 3] if t >= k else 0.0

            return atr
        if pattern.startswith("volz_"):
            k, ring = p[0], self._rings[("volume", p[0])]

            def volz(t, ohlcv, ret, lines, ts):
                if t < k - 1:
                    return 0.0
                mean, var = ring.moments()
                return _safe_ratio(ohlcv[:, 4] - mean, np.sqrt(var))

            return volz
        if pattern in ("hour_sin", "hour_cos", "dow_sin", "dow_cos"):
            fn = np.sin if pattern.endswith("sin") else np.cos
            hourly = pattern.startswith("hour")
            cache = self._calendar_cache  # sin and cos of a bar share one angle

            def calendar(t, ohlcv, ret, lines, ts):
                key = (ts, hourly)
                angle = cache.get(key)
                if angle is None:
                    stamp = np.asarray([ts], dtype=np.int64)
                    if hourly:
                        phase = np.mod(stamp, _SECONDS_PER_DAY * _NS_PER_SECOND) / _NS_PER_SECOND
                        phase = phase / _SECONDS_PER_DAY
                        period = 1.0
                    else:
                        days = np.floor_divide(stamp, _SECONDS_PER_DAY * _NS_PER_SECOND)
                        phase = np.mod(days + _EPOCH_WEEKDAY, 7).astype(np.float64)
                        period = 7.0
                    angle = 2.0 * np.pi * phase / period
                    if len(cache) >= 4:
                        cache.clear()
                    cache[key] = angle
                return fn(angle)[0]

            return calendar
        if pattern == "extra:<column>":
            col = name[len("extra:") :]
            last, warm_at = self._extra_last, self._extra_warm

            def extra(t, ohlcv, ret, lines, ts):
                warm = warm_at[col]
                return last[col] if warm is not None and t >= warm else 0.0

            return extra
        raise ConfigError(f"streaming features: no streaming rule for {name!r}")
