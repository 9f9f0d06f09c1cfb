"""Block snapshots as CSV: the feed format of the arbitrage paper loop (``scripts/run_policy.py``).

One row per block, oldest first, header in the first line. Columns (names are case-sensitive;
other columns are ignored, so a recorder may add its own):

==========================  ========  ==========================================================
column                      required  meaning
==========================  ========  ==========================================================
``timestamp``               yes       block time: ISO-8601 (``2024-05-01T12:00:00Z``) or epoch
                                      integer in s / ms / us / ns (by magnitude), or float seconds
``block``                   no        block number (duplicates, gaps and reordering are checked
                                      on it when present, else on ``timestamp``)
``ref_price``               yes       reference (CEX) mid price, quote per base
``spread``                  no        relative CEX bid-ask spread (default 0)
``base_fee``                yes       EIP-1559 base fee of the block the transaction targets, gwei
``utilization``             no        fullness of the last block in [0, 1] (default 0.5)
``native_price``            no        gas-token price in quote (default ``ref_price``)
``pool{k}_base``            yes       pool ``k``'s base reserve after the last block, per pool
``pool{k}_quote``           yes       pool ``k``'s quote reserve after the last block, per pool
``pool{k}_volume``          no        quote traded on pool ``k`` in the last block (runs with a
                                      liquidity predictor need it)
``competitor_present``      no        0/1: a competing arbitrage showed up in the last block
``competitor_tip``          no        highest competing priority fee in the last block, gwei
``competitor_took``         no        0/1: a competitor took the last block's opportunity
==========================  ========  ==========================================================

A *malformed file* (missing, empty, no header, a required column missing, a duplicated column,
a row with more or fewer fields than the header) raises :class:`~envs.errors.DataError` naming
the file, column and line. *Bad values* (empty cells, text where a number belongs, NaN,
negative prices or reserves) are passed through as they are: the runner answers such a row
with a HOLD that names the field, as it would a bad live snapshot; the loop never raises.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.errors import DataError

__all__ = ["load_snapshot_csv", "save_snapshot_csv", "snapshot_columns"]

OPTIONAL = (
    "block",
    "spread",
    "utilization",
    "native_price",
    "competitor_present",
    "competitor_tip",
    "competitor_took",
)


def snapshot_columns(n_pools: int, volumes: bool = False) -> list[str]:
    """Column names of a snapshot CSV for ``n_pools`` pools (required first, then optional)."""
    cols = ["timestamp", "block", "ref_price", "spread", "base_fee", "utilization", "native_price"]
    for k in range(n_pools):
        cols += [f"pool{k}_base", f"pool{k}_quote"] + ([f"pool{k}_volume"] if volumes else [])
    return [*cols, "competitor_present", "competitor_tip", "competitor_took"]


def _number(cell: str) -> Any:
    """A float for a numeric cell, None for an empty one, the text itself otherwise (so the
    runner's message names the field)."""
    text = cell.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _timestamp(cell: str) -> Any:
    """Epoch integers by magnitude (s / ms / us / ns, as ``envs.data`` loaders read them), float
    seconds, ISO-8601 (time zones converted to UTC) as int ns; anything else stays text, which
    the runner answers with a HOLD naming the timestamp."""
    text = cell.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        try:
            seconds = float(text)
        except ValueError:
            return _iso_ns(text)
        return seconds if math.isfinite(seconds) else text
    magnitude = abs(value)
    if magnitude < 10**11:
        return value * 1_000_000_000
    if magnitude < 10**14:
        return value * 1_000_000
    if magnitude < 10**17:
        return value * 1_000
    return value


def _iso_ns(text: str) -> Any:
    import pandas as pd

    try:
        ts = pd.Timestamp(text)
        if ts is pd.NaT:
            return text
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        return int(ts.value)
    except (ValueError, TypeError, OverflowError):  # e.g. year 1: outside int64 nanoseconds
        return text


def load_snapshot_csv(path: str | Path, n_pools: int) -> list[dict[str, Any]]:
    """Read a snapshot CSV into the mappings ``ArbitrageRunner.on_snapshot`` takes.

    Args:
        path: the CSV file (columns in the module docstring).
        n_pools: pools of the run (``runner.cfg.n_pools``): ``pool0_*`` .. ``pool{n-1}_*``.

    Returns:
        One dict per row with ``timestamp``, ``reserves`` (``[[base, quote], ...]``), the other
        present fields and ``volumes`` when every pool has a ``_volume`` column. Each dict also
        carries ``_line``, its line number in the file.

    Raises:
        DataError: a malformed file (see the module docstring), naming file, column and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: snapshot file not found")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = _read_rows(path, csv.reader(handle), n_pools)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the snapshot file ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: no snapshot rows after the header")
    return rows


def _read_rows(path: Path, reader: Any, n_pools: int) -> list[dict[str, Any]]:
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file; expected a header line") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path}, line 1: unreadable header ({exc})") from exc
    header = [h.strip() for h in header]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}, line 1: column {name!r} appears twice")
        seen.add(name)
    required = ["timestamp", "ref_price", "base_fee"]
    required += [f"pool{k}_{side}" for k in range(n_pools) for side in ("base", "quote")]
    missing = [c for c in required if c not in seen]
    if missing:
        raise DataError(
            f"{path}, line 1: missing column(s) {missing}; a snapshot CSV for {n_pools} "
            f"pool(s) needs {required} (optional: {list(OPTIONAL)}, pool<k>_volume)"
        )
    index = {name: i for i, name in enumerate(header)}
    has_volume = all(f"pool{k}_volume" in index for k in range(n_pools))
    rows: list[dict[str, Any]] = []
    line = 1
    try:
        for record in reader:
            line = reader.line_num
            if not record or all(not c.strip() for c in record):
                continue  # blank line
            if len(record) != len(header):
                raise DataError(
                    f"{path}, line {line}: {len(record)} fields, the header has "
                    f"{len(header)} ({header})"
                )
            snap: dict[str, Any] = {"_line": line}
            snap["timestamp"] = _timestamp(record[index["timestamp"]])
            for name in ("ref_price", "base_fee", *OPTIONAL):
                if name in index:
                    value = _number(record[index[name]])
                    if value is not None:
                        snap[name] = value
            snap["reserves"] = [
                [_number(record[index[f"pool{k}_{side}"]]) for side in ("base", "quote")]
                for k in range(n_pools)
            ]
            if has_volume:
                snap["volumes"] = [
                    _number(record[index[f"pool{k}_volume"]]) for k in range(n_pools)
                ]
            rows.append(snap)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path}, line {line + 1}: unreadable row ({exc})") from exc
    return rows


def save_snapshot_csv(
    path: str | Path, snapshots: Iterable[Mapping[str, Any]], n_pools: int
) -> Path:
    """Write snapshots (``on_snapshot`` mappings) as a snapshot CSV (e.g. to record a feed).

    Timestamps are written as ISO-8601 UTC with nanoseconds (exact, and unambiguous where small
    epoch integers would be read as seconds); missing optional fields as empty cells.
    """
    from agents.runner.market import to_ns

    snapshots = list(snapshots)
    volumes = any("volumes" in s for s in snapshots)
    columns = snapshot_columns(n_pools, volumes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for snap in snapshots:
            res = np.asarray(snap["reserves"], dtype=float).reshape(n_pools, 2)
            vol: Sequence[float] | None = snap.get("volumes")
            iso = np.datetime_as_string(np.datetime64(to_ns(snap["timestamp"]), "ns"))
            cells: dict[str, Any] = {"timestamp": iso + "Z"}
            for name in ("ref_price", "base_fee", *OPTIONAL):
                if snap.get(name) is not None:
                    cells[name] = repr(float(snap[name])) if name != "block" else int(snap[name])
            for k in range(n_pools):
                cells[f"pool{k}_base"] = repr(float(res[k, 0]))
                cells[f"pool{k}_quote"] = repr(float(res[k, 1]))
                if volumes and vol is not None:
                    cells[f"pool{k}_volume"] = repr(float(vol[k]))
            writer.writerow([cells.get(c, "") for c in columns])
    return path
