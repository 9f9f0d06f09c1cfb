"""Arbitrage predictor blocks computed online from block snapshots (issue 8).

Training computes an arbitrage run's predictor blocks once, walk-forward over a fixed scenario
(``agents.predictor_blocks``, ``predictors.provider.WalkForwardProvider``): the predictor is
fitted on the training rows; the validation and test rows are predicted chunk by chunk
(``update_every`` rows per chunk, every row of a chunk with the model as it stood at the chunk's
first row), and after each chunk one online ``update`` learns from the samples whose targets
arrived during it. :class:`OnlineDefiPredictor` runs the same protocol one snapshot at a time:

* **Inputs** per row, as the trainer's input builders (``defi_series``) feed them: ``defi_gas``
  reads the snapshot's ``base_fee``; ``defi_liquidity`` reads the reserves of its pool and the
  pool's traded volume in quote during the last block (snapshot field ``volumes``, one per pool).
  Training used the *passive* pool path (reserves as if our agent never traded, see
  ``passive_pool_path``); live, the on-chain reserves are all there is.
* **Features** of the newest row come from the predictor's own ``prepare`` over the last
  ``lookback`` raw rows (at least the longest rolling window of its features plus one), so they
  are the training features up to float rounding (training's rolling means are cumulative sums
  over the whole scenario, here over the buffer).
* **Warm-up**: the first prediction is at row ``lookback + window - 1 + target_delay`` (every
  feature row it or the first update reads had ``lookback`` raw rows behind it); before it the
  block is ``fill_value`` with ``valid = 0``, as the provider's rows without a prediction
  (default gas predictor: 97 + 31 + 12 = 140 blocks, about 28 minutes of 12 s blocks).
* **Predict, then learn**: chunks are anchored at the first predicted row. After the row that
  closes a chunk, an update is *pending*; it runs in :meth:`OnlineDefiPredictor.maintain`, which
  the runner calls between snapshots (``ArbitrageRunner.maintain``) or, at the latest, before the
  next prediction. Same result as the provider's walk, but the 2-5 ms gradient step is off the
  decision's critical path (issue 8: on_bar p99 under load).

A saved predictor carries its online state (the replay buffer its fit seeded and the replay
RNG), so a loaded predictor learns exactly as the training walk did. What remains is float
rounding: the walk predicts a chunk as one batch, the runner one row at a time (float32 matrix
products round differently by batch size; about 1e-9 on values of 1e-3).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from agents.runner.online_walk import OnlineWalk
from envs.errors import ConfigError

__all__ = ["OnlineDefiPredictor", "feature_lookback", "load_arbitrage_predictors"]

DEFI_INPUTS = ("defi_gas", "defi_liquidity")


def feature_lookback(predictor: Any) -> int:
    """Raw rows the predictor's ``prepare`` needs for its newest feature row to be exact: the
    longest ``*_window``/``*_windows`` field of its config (rolling means, volatility) plus one
    (the log difference reads the row before)."""
    config = getattr(predictor, "config", None)
    longest = 1
    if config is not None and is_dataclass(config):
        for f in fields(config):
            if f.name == "window" or "window" not in f.name:
                continue
            value = getattr(config, f.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, int) and not isinstance(v, bool):
                    longest = max(longest, v)
    return longest + 1


class OnlineDefiPredictor(OnlineWalk):
    """One arbitrage predictor block, computed row by row from snapshots.

    Args:
        predictor: a fitted (loaded) forecaster with ``prepare``, ``predict_block``, ``samples``
            and ``update`` (``predictors.gas`` / ``predictors.liquidity``).
        name: predictor config name; the observation block is ``pred_<name>``.
        inputs: ``defi_gas`` or ``defi_liquidity``.
        input_kwargs: ``{"pool": k}`` for liquidity.
        columns: block column names (the run manifest's; default from the predictor).
        online: learn from targets as they arrive (the provider's ``online``).
        update_every: rows per predict-then-learn chunk (the provider's ``update_every``).
        fill_value: block value before the first prediction.
        lookback: raw rows kept for the features (default :func:`feature_lookback`).
    """

    def __init__(
        self,
        predictor: Any,
        name: str,
        inputs: str,
        input_kwargs: Mapping[str, Any] | None = None,
        columns: list[str] | None = None,
        online: bool = True,
        update_every: int = 32,
        fill_value: float = 0.0,
        lookback: int | None = None,
    ) -> None:
        if inputs not in DEFI_INPUTS:
            raise ConfigError(
                f"predictor {name!r}: inputs {inputs!r}, expected one of {DEFI_INPUTS}"
            )
        if int(update_every) < 1:
            raise ConfigError(f"predictor {name!r}: update_every {update_every}, expected >= 1")
        self.name = str(name)
        self.block = f"pred_{name}"
        self.inputs = inputs
        kw = dict(input_kwargs or {})
        self.pool = int(kw.pop("pool", 0)) if inputs == "defi_liquidity" else 0
        if kw:
            raise ConfigError(f"predictor {name!r}: unknown input_kwargs {sorted(kw)}")
        self.columns = list(
            columns
            if columns is not None
            else [f"pred_{name}_{c}" for c in predictor.block_columns()] + [f"pred_{name}_valid"]
        )
        expected = len(predictor.block_columns()) + 1
        if len(self.columns) != expected:
            raise ConfigError(
                f"predictor {name!r}: {len(self.columns)} block columns given, the predictor "
                f"makes {expected} ({predictor.block_columns()} + validity)"
            )
        self.online = bool(online)
        self.update_every = int(update_every)
        self.fill_value = float(fill_value)
        self.window = int(predictor.window)
        self.delay = int(predictor.target_delay)
        self.lookback = int(feature_lookback(predictor) if lookback is None else lookback)
        if self.lookback < 1:
            raise ConfigError(f"predictor {name!r}: lookback {lookback}, expected >= 1")
        # First prediction once every feature row it or the first update reads (back to
        # delay + window - 1 rows before it) had ``lookback`` raw rows behind it.
        self.warmup = self.lookback + self.window - 1 + self.delay
        # History of feature/target rows: the newest chunk's samples reach back
        # update_every + delay rows, and each sample's window another window - 1.
        self.history = self.update_every + self.delay + self.window + 1
        self._pristine = predictor
        self.n_raw = 1 if inputs == "defi_gas" else 3
        self.reset()

    @property
    def n_columns(self) -> int:
        """Columns of the block (validity last)."""
        return len(self.columns)

    def reset(self) -> None:
        """Back to the predictor as loaded (online state discarded) and no history."""
        self.predictor = copy.deepcopy(self._pristine)
        self._raw = np.zeros((self.lookback, self.n_raw))
        self._feats: np.ndarray | None = None
        self._targs: np.ndarray | None = None
        self._rows = 0
        self._pending: np.ndarray | None = None
        self.updates = 0
        self.last_row = np.full(self.n_columns, self.fill_value, dtype=np.float32)
        self.last_row[-1] = 0.0

    def raw_inputs(self, snapshot: Mapping[str, Any]) -> np.ndarray:
        """The predictor's raw inputs of one parsed snapshot."""
        if self.inputs == "defi_gas":
            return np.array([snapshot["base_fee"]], dtype=np.float64)
        res = snapshot["reserves"][self.pool]
        return np.array([res[0], res[1], snapshot["volumes"][self.pool]], dtype=np.float64)

    def needs_volume(self) -> bool:
        """Whether snapshots must carry ``volumes`` (liquidity inputs)."""
        return self.inputs == "defi_liquidity"

    def _prepare_last(self) -> tuple[np.ndarray, np.ndarray]:
        m = min(self._rows, self.lookback)
        raw = self._raw[-m:]
        if self.inputs == "defi_gas":
            series = self.predictor.prepare(raw[:, 0])
        else:
            series = self.predictor.prepare(raw[:, 0], raw[:, 1], raw[:, 2])
        return np.asarray(series.features[-1]), np.asarray(series.targets[-1])

    def push(self, raw: np.ndarray) -> np.ndarray:
        """Ingest one row's raw inputs; return the block row ``(C,)`` float32 (validity last).

        Runs a pending update first (if :meth:`maintain` was not called since the chunk
        closed), so predictions always use the model the provider's walk would use.
        """
        self.maintain()
        self._raw[:-1] = self._raw[1:]
        self._raw[-1] = raw
        self._rows += 1
        feat, targ = self._prepare_last()
        if self._feats is None:
            self._feats = np.zeros((self.history, feat.shape[0]))
            self._targs = np.zeros((self.history, targ.shape[0]))
        assert self._targs is not None
        self._feats[:-1] = self._feats[1:]
        self._feats[-1] = feat
        self._targs[:-1] = self._targs[1:]
        self._targs[-1] = targ
        r = self._rows - 1  # index of this row since the reset
        if r < self.warmup:
            return self.last_row
        row = self._predict_row()
        k = r - self.warmup  # rows predicted before this one
        if self.online and (k + 1) % self.update_every == 0:
            self._close_chunk(r)
        return row

    def uncertainty(self) -> float | None:
        """Largest predicted std of the last row (None before the first prediction)."""
        if self.last_row[-1] == 0.0:
            return None
        values = [
            abs(float(v))
            for c, v in zip(self.columns[:-1], self.last_row[:-1], strict=True)
            if "std" in c
        ]
        return max(values) if values else None


def load_arbitrage_predictors(
    run_dir: Any, config: Mapping[str, Any], device: str = "auto"
) -> dict[str, OnlineDefiPredictor]:
    """Online blocks of the predictors an arbitrage run lists, in the config's order (the env's
    block order).

    Raises:
        ConfigError: a predictor whose inputs are not arbitrage inputs, or a malformed entry.
        DataError: a listed predictor whose saved directory or manifest is missing.
    """
    import json
    from pathlib import Path

    from agents.predictor_blocks import MANIFEST, parse_spec
    from envs.errors import DataError
    from predictors.base import load_predictor

    listed = config.get("predictors") or {}
    if not isinstance(listed, Mapping):
        raise ConfigError(f"{run_dir}: config field 'predictors' must be a mapping, got {listed!r}")
    directory = Path(run_dir) / "predictors"
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{run_dir}: the run lists predictors but {manifest_path} is missing")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")).get("predictors", {})
    out: dict[str, OnlineDefiPredictor] = {}
    for name, node in listed.items():
        spec = parse_spec(str(name), node)
        if spec.inputs not in DEFI_INPUTS:
            raise ConfigError(
                f"{run_dir}: predictor {name!r} reads {spec.inputs!r}; an arbitrage runner "
                f"computes {DEFI_INPUTS} from snapshots"
            )
        entry = manifest.get(name)
        if entry is None:
            raise DataError(f"{manifest_path}: no entry for predictor {name!r}")
        sub = directory / str(entry.get("directory", name))
        if not sub.is_dir():
            raise DataError(f"{run_dir}: predictor {name!r} listed but {sub} is missing")
        provider = dict(spec.provider)
        fill = float(provider.get("fill_value", 0.0))
        if not math.isfinite(fill):
            raise ConfigError(f"predictors.{name}.provider.fill_value: expected a finite number")
        out[spec.block] = OnlineDefiPredictor(
            load_predictor(sub, device=device),
            spec.name,
            spec.inputs,
            spec.input_kwargs,
            columns=list(entry["columns"]),
            online=bool(provider.get("online", True)),
            update_every=int(provider.get("update_every", 32)),
            fill_value=fill,
        )
    return out
