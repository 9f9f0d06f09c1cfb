"""The validated, time-indexed market dataset every environment consumes.

Arrays are contiguous NumPy (pandas only at the edges: loaders and ``to_frame``). One object serves
real and synthetic data, single and multi-asset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.errors import DataError

OHLCV = ("open", "high", "low", "close", "volume")
SECONDS_PER_YEAR = 365.25 * 24 * 3600


@dataclass(frozen=True)
class MarketDataset:
    """OHLCV bars (plus extra named numeric columns) for one or more symbols on one time index.

    Attributes:
        timestamps: ``(T,)`` int64 nanoseconds since the Unix epoch, UTC, strictly increasing.
        symbols: names of the assets, length ``N``.
        ohlcv: ``(T, N, 5)`` float64 array of open, high, low, close, volume.
        extra: ``(T, N, E)`` float64 array of extra numeric columns (funding rate, sentiment, ...).
        extra_names: names of the ``E`` extra columns.
        regimes: optional ``(T,)`` int64 regime labels recorded by a synthetic generator.
        regime_names: names of the regime label values (index = label).
        source: where the data came from (file path or generator description), for messages.
    """

    timestamps: np.ndarray
    symbols: tuple[str, ...]
    ohlcv: np.ndarray
    extra: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    extra_names: tuple[str, ...] = ()
    regimes: np.ndarray | None = None
    regime_names: tuple[str, ...] = ()
    source: str = "<memory>"

    def __post_init__(self) -> None:
        ts = np.ascontiguousarray(self.timestamps, dtype=np.int64)
        ohlcv = np.ascontiguousarray(self.ohlcv, dtype=np.float64)
        if ohlcv.ndim == 2:  # single asset given as (T, 5)
            ohlcv = ohlcv[:, None, :]
        if ohlcv.ndim != 3 or ohlcv.shape[2] != 5:
            raise DataError(f"{self.source}: ohlcv must have shape (T, N, 5), got {ohlcv.shape}")
        n_bars, n_assets = ohlcv.shape[:2]
        if ts.shape != (n_bars,):
            raise DataError(
                f"{self.source}: timestamps must have shape ({n_bars},), got {ts.shape}"
            )
        if len(self.symbols) != n_assets:
            raise DataError(
                f"{self.source}: {n_assets} assets in ohlcv but {len(self.symbols)} symbols"
            )
        extra = np.asarray(self.extra, dtype=np.float64)
        if extra.size == 0 and not self.extra_names:
            extra = np.zeros((n_bars, n_assets, 0))
        if extra.ndim == 2:
            extra = extra[:, None, :]
        if extra.shape != (n_bars, n_assets, len(self.extra_names)):
            raise DataError(
                f"{self.source}: extra must have shape "
                f"({n_bars}, {n_assets}, {len(self.extra_names)}), got {extra.shape}"
            )
        if n_bars > 1 and np.any(np.diff(ts) <= 0):
            row = int(np.argmax(np.diff(ts) <= 0)) + 1
            raise DataError(f"{self.source}: timestamps not strictly increasing at row {row}")
        object.__setattr__(self, "timestamps", ts)
        object.__setattr__(self, "ohlcv", ohlcv)
        object.__setattr__(self, "extra", np.ascontiguousarray(extra))
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "extra_names", tuple(self.extra_names))
        if self.regimes is not None:
            regimes = np.ascontiguousarray(self.regimes, dtype=np.int64)
            if regimes.shape != (n_bars,):
                raise DataError(f"{self.source}: regimes must have shape ({n_bars},)")
            object.__setattr__(self, "regimes", regimes)

    # --- shape -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def n_assets(self) -> int:
        """Number of symbols."""
        return int(self.ohlcv.shape[1])

    # --- columns (views, no copies) -------------------------------------------------------
    @property
    def open(self) -> np.ndarray:
        """``(T, N)`` open prices (a view)."""
        return self.ohlcv[:, :, 0]

    @property
    def high(self) -> np.ndarray:
        """``(T, N)`` high prices (a view)."""
        return self.ohlcv[:, :, 1]

    @property
    def low(self) -> np.ndarray:
        """``(T, N)`` low prices (a view)."""
        return self.ohlcv[:, :, 2]

    @property
    def close(self) -> np.ndarray:
        """``(T, N)`` close prices (a view)."""
        return self.ohlcv[:, :, 3]

    @property
    def volume(self) -> np.ndarray:
        """``(T, N)`` volumes (a view)."""
        return self.ohlcv[:, :, 4]

    def column(self, name: str) -> np.ndarray:
        """Return the ``(T, N)`` array of an OHLCV or extra column by name."""
        if name in OHLCV:
            return self.ohlcv[:, :, OHLCV.index(name)]
        if name in self.extra_names:
            return self.extra[:, :, self.extra_names.index(name)]
        raise DataError(
            f"{self.source}: no column {name!r}; have {list(OHLCV) + list(self.extra_names)}"
        )

    # --- time ------------------------------------------------------------------------------
    @property
    def bar_seconds(self) -> float:
        """Median spacing between bars in seconds (1.0 when there are fewer than two bars)."""
        if len(self) < 2:
            return 1.0
        return float(np.median(np.diff(self.timestamps))) / 1e9

    @property
    def bars_per_year(self) -> float:
        """Bars per year at the data's median frequency, for annualising Sharpe and returns."""
        return SECONDS_PER_YEAR / self.bar_seconds

    # --- slicing ---------------------------------------------------------------------------
    def slice(self, start: int, stop: int) -> MarketDataset:
        """Return bars ``[start, stop)`` as a new dataset sharing memory where NumPy allows."""
        if not 0 <= start < stop <= len(self):
            raise DataError(f"{self.source}: bad slice [{start}, {stop}) of {len(self)} bars")
        return MarketDataset(
            timestamps=self.timestamps[start:stop],
            symbols=self.symbols,
            ohlcv=self.ohlcv[start:stop],
            extra=self.extra[start:stop],
            extra_names=self.extra_names,
            regimes=None if self.regimes is None else self.regimes[start:stop],
            regime_names=self.regime_names,
            source=self.source,
        )

    def select(self, symbols: list[str] | tuple[str, ...]) -> MarketDataset:
        """Return a dataset with only the named symbols, in the given order."""
        missing = [s for s in symbols if s not in self.symbols]
        if missing:
            raise DataError(f"{self.source}: unknown symbols {missing}; have {list(self.symbols)}")
        idx = [self.symbols.index(s) for s in symbols]
        return MarketDataset(
            timestamps=self.timestamps,
            symbols=tuple(symbols),
            ohlcv=self.ohlcv[:, idx],
            extra=self.extra[:, idx],
            extra_names=self.extra_names,
            regimes=self.regimes,
            regime_names=self.regime_names,
            source=self.source,
        )

    def to_frame(self):  # -> pandas.DataFrame, imported lazily: pandas stays at the edges
        """Return a long-format pandas DataFrame (index: timestamp, symbol) for inspection."""
        import pandas as pd

        frames = []
        for i, sym in enumerate(self.symbols):
            cols = {name: self.ohlcv[:, i, j] for j, name in enumerate(OHLCV)}
            cols.update({name: self.extra[:, i, j] for j, name in enumerate(self.extra_names)})
            frame = pd.DataFrame(cols, index=pd.to_datetime(self.timestamps, utc=True))
            frame.index.name = "timestamp"
            frame["symbol"] = sym
            frames.append(frame)
        return pd.concat(frames).set_index("symbol", append=True).sort_index()
