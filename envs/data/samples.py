"""Small real datasets shipped inside the package, so examples and tests run without downloads.

``btc_usd_hourly``: the most recent 17,500 hourly BTC/USD bars (2020-03-01 21:00 to 2022-03-01
00:00 UTC) of the ``BTC_USD-Hourly.csv`` file published in the examples of the MIT-licensed
Gym-Trading-Env project by Clement Perroud (exchange data in the CryptoDataDownload layout). See
``envs/data/samples/README.md``.

The shipped file is already clean (ascending, base-asset volume in ``volume``); ``build_btc_sample``
is the exact recipe that produced it from the raw file, kept here so the sample can be rebuilt and
audited: ``python -m envs.data.samples /path/to/BTC_USD-Hourly.csv``.
"""

from __future__ import annotations

import gzip
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from envs.data.dataset import MarketDataset
from envs.errors import DataError

SAMPLES: dict[str, str] = {"btc_usd_hourly": "btc_usd_hourly.csv.gz"}
SAMPLE_SYMBOLS: dict[str, str] = {"btc_usd_hourly": "BTC/USD"}
BTC_SAMPLE_BARS = 17_500


def available_samples() -> list[str]:
    """Return the names accepted by :func:`load_sample`."""
    return sorted(SAMPLES)


def sample_path(name: str = "btc_usd_hourly") -> Path:
    """Return the filesystem path of a shipped sample file.

    Args:
        name: sample name, one of :func:`available_samples`.

    Raises:
        DataError: unknown name or the file is missing from the installation.
    """
    if name not in SAMPLES:
        raise DataError(f"load_sample: unknown sample {name!r}; available: {available_samples()}")
    path = Path(str(resources.files("envs.data").joinpath("samples", SAMPLES[name])))
    if not path.is_file():
        raise DataError(
            f"load_sample: sample file {path} is missing from the installation; "
            "package data '*.csv.gz' should ship with envs.data"
        )
    return path


def load_sample(name: str = "btc_usd_hourly") -> MarketDataset:
    """Load a sample dataset shipped with the package.

    Args:
        name: sample name; ``"btc_usd_hourly"`` is 17,500 hourly BTC/USD bars ending 2022-03-01.

    Returns:
        A validated single-asset :class:`MarketDataset` (symbol ``"BTC/USD"``, no extra columns).
    """
    from envs.data.loaders import load_csv  # samples is imported by envs.data before loaders

    return load_csv(sample_path(name), symbol=SAMPLE_SYMBOLS[name])


def fix_swapped_volume(
    base: np.ndarray, quote: np.ndarray, close: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put base-asset volume in ``base`` and quote volume in ``quote``, row by row.

    CryptoDataDownload exports have the base and quote volume columns swapped in some rows (in the
    BTC/USD file the swapped rows are interleaved with correct ones between 2018-11 and 2020-07, so
    no single cut-off date works). On a correct row ``base * close ~= quote``; on a swapped row
    ``quote * close ~= base``. A row is swapped when the second identity holds better in log terms
    (the two log errors differ by ``2*log(close)``, so the choice is unambiguous for prices far
    from 1). Rows with zero volume stay as they are.

    Returns:
        ``(base, quote, swapped)``: corrected copies and the boolean mask of rows that were swapped.
    """
    base = np.asarray(base, dtype=np.float64).copy()
    quote = np.asarray(quote, dtype=np.float64).copy()
    close = np.asarray(close, dtype=np.float64)
    valid = (base > 0) & (quote > 0) & (close > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        err_as_is = np.abs(np.log(base * close / quote))
        err_swapped = np.abs(np.log(quote * close / base))
    swapped = valid & (err_swapped < err_as_is)
    base[swapped], quote[swapped] = quote[swapped], base[swapped].copy()
    return base, quote, swapped


def build_btc_sample(src: str | Path, dst: str | Path, n_bars: int = BTC_SAMPLE_BARS) -> int:
    """Rebuild ``btc_usd_hourly.csv.gz`` from the raw CryptoDataDownload-layout file.

    Steps: read ``unix,date,symbol,open,high,low,close,volume,Volume USD``; sort ascending (the raw
    file is newest first); keep the last ``n_bars`` rows; fix swapped volume columns with
    :func:`fix_swapped_volume`; write ``unix,open,high,low,close,volume`` (base volume, BTC) with
    a deterministic gzip header (mtime 0) so rebuilding gives identical bytes.

    Returns:
        The number of rows whose volume columns were swapped back.
    """
    import pandas as pd

    frame = pd.read_csv(src)
    frame = frame.sort_values("unix", kind="stable").tail(n_bars).reset_index(drop=True)
    base, _quote, swapped = fix_swapped_volume(
        frame["volume"].to_numpy(), frame["Volume USD"].to_numpy(), frame["close"].to_numpy()
    )
    out = pd.DataFrame(
        {
            "unix": frame["unix"].astype("int64"),
            "open": frame["open"],
            "high": frame["high"],
            "low": frame["low"],
            "close": frame["close"],
            "volume": np.round(base, 8),
        }
    )
    text = out.to_csv(index=False, lineterminator="\n")
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(text.encode())
    return int(swapped.sum())


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    source = sys.argv[1] if len(sys.argv) > 1 else "BTC_USD-Hourly.csv"
    target = Path(__file__).with_name("samples") / SAMPLES["btc_usd_hourly"]
    n_swapped = build_btc_sample(source, target)
    print(f"wrote {target} ({BTC_SAMPLE_BARS} bars, {n_swapped} rows had volume columns swapped)")
