"""Walk-forward provider: any predictor -> aligned, named float32 observation blocks.

The env never calls a network inside ``step``; it indexes the arrays this module computes once per
dataset. What is exact and what is batched:

* **Out-of-sample everywhere.** With ``fit_range=(a, b)``, the rows inside the fit range are not
  predicted by the model fitted on all of it (that model has seen their future). The range is cut
  into ``refit_folds + 1`` equal segments; segment 0 is warm-up (no model yet), segment ``k``
  is predicted by a fresh model fitted on ``[a, start of segment k)`` only (expanding-window
  walk-forward, as in scikit-learn's ``TimeSeriesSplit``). Rows from ``b`` on are predicted by a
  copy of the caller's predictor fitted on ``[a, b)``; the caller's predictor itself is left as
  fitted on ``[a, b)`` (so it can be saved without any knowledge of later bars).
* **Predict, then learn** (DOMAIN.md, walk-forward). Bars are processed in chunks of
  ``update_every``. For a chunk ``[c, c + U)`` every row is predicted in one batch with the model
  as it stood at bar ``c``; then, for online models, one ``update`` learns from the samples whose
  targets became known during the chunk (sample ``s`` is known at ``s + target_delay``). So the
  prediction at bar ``t`` depends on features at bars ``<= t`` and on targets at bars ``< c <= t``
  only. With ``update_every=1`` this is the exact bar-by-bar online protocol; a larger chunk is the
  same protocol with less frequent updates (still causal, just slower to adapt).
* **Neutral fill.** Rows without a prediction (before the first full window, in the warm-up
  segment, before ``a``) hold ``fill_value`` (0.0) in every column and 0 in ``pred_{name}_valid``
  (1 where a prediction was made). ``report["first_valid_row"]`` is the warm-up length.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from envs.errors import ConfigError, DataError
from envs.observation import BlockSpec
from predictors.base import Predictor, SeriesData
from predictors.windows import as_matrix


class WalkForwardProvider:
    """Compute a predictor's observation blocks walk-forward over a dataset.

    Args:
        predictor: any ``Predictor`` (fitted already when ``blocks`` gets no ``fit_range``).
        name: block name stem; columns are ``pred_{name}_{column}`` (default: the kind).
        refit_folds: segments of the fit range predicted by models refitted on the bars before
            them (0: the whole fit range is warm-up).
        online: learn from each target once it is known (``update``), or only predict.
        update_every: bars per predict-then-learn chunk (1 = exact bar-by-bar protocol).
        fill_value: value of rows without a prediction.
    """

    def __init__(
        self,
        predictor: Predictor,
        name: str | None = None,
        refit_folds: int = 2,
        online: bool = True,
        update_every: int = 32,
        fill_value: float = 0.0,
    ) -> None:
        if refit_folds < 0:
            raise ConfigError(f"provider: refit_folds = {refit_folds}, expected >= 0")
        if update_every < 1:
            raise ConfigError(f"provider: update_every = {update_every}, expected >= 1")
        self.predictor = predictor
        self.name = name or predictor.kind
        self.refit_folds = int(refit_folds)
        self.online = bool(online)
        self.update_every = int(update_every)
        self.fill_value = float(fill_value)
        self.report: dict[str, Any] = {}

    # --- names --------------------------------------------------------------------------------
    @property
    def valid_name(self) -> str:
        """Name of the 0/1 validity column."""
        return f"pred_{self.name}_valid"

    def column_names(self) -> list[str]:
        """Names of the prediction columns, e.g. ``pred_gas_mean_h1`` (validity column last)."""
        return [f"pred_{self.name}_{c}" for c in self.predictor.block_columns()] + [self.valid_name]

    # --- the walk -----------------------------------------------------------------------------
    def blocks(
        self,
        features: np.ndarray,
        targets: np.ndarray | None = None,
        fit_range: tuple[int, int] | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Walk forward over the whole series and return one ``(T,)`` float32 array per column.

        Args:
            features: ``(T, F)`` causal features of the dataset.
            targets: ``(T, K)`` targets (needed to fit and for online updates).
            fit_range: ``(a, b)`` bars the predictor is fitted on (the training split); None
                uses the predictor as it is (it must be fitted, on data the caller knows to be
                earlier than these bars).
            feature_names: names of the feature columns (passed to ``fit``).
            target_names: names of the target columns (passed to ``fit``).

        Returns:
            ``{column name: (T,) float32}`` for every name in ``column_names()``.
        """
        t0 = time.perf_counter()
        feats = as_matrix(features, "features")
        n = len(feats)
        targs = None if targets is None else as_matrix(targets, "targets")
        if targs is not None and len(targs) != n:
            raise DataError(f"provider: features have {n} rows, targets {len(targs)}")
        if (fit_range is not None or self.online) and targs is None:
            raise DataError("provider: targets are needed to fit or to learn online")
        names = {"feature_names": feature_names, "target_names": target_names}
        n_cols = len(self.predictor.block_columns()) if self.predictor.fitted else None
        out: np.ndarray | None = None if n_cols is None else np.full((n, n_cols), self.fill_value)
        valid = np.zeros(n, dtype=bool)
        segments: list[dict[str, Any]] = []
        updates = 0

        if fit_range is None:
            if not self.predictor.fitted:
                raise DataError("provider: predictor is not fitted and no fit_range was given")
            model = copy.deepcopy(self.predictor)
            assert out is not None
            updates += self._walk(model, feats, targs, 0, n, out, valid)
            segments.append({"rows": [0, n], "fitted_on": None})
        else:
            a, b = (int(v) for v in fit_range)
            if not 0 <= a < b <= n:
                raise DataError(f"provider: fit_range {fit_range} outside [0, {n}]")
            assert targs is not None
            edges = [a + (b - a) * k // (self.refit_folds + 1) for k in range(self.refit_folds + 2)]
            fitted: list[tuple[Predictor, int, int]] = []
            for k in range(1, self.refit_folds + 1):
                fold = self.predictor.fresh()
                try:
                    fold.fit(SeriesData(feats[a : edges[k]], targs[a : edges[k]]), None, **names)
                except DataError as exc:
                    raise DataError(
                        f"provider: refit fold {k} on bars [{a}, {edges[k]}) failed ({exc}); "
                        "lower refit_folds or give a longer fit range"
                    ) from exc
                fitted.append((fold, edges[k], edges[k + 1]))
            self.predictor.fit(SeriesData(feats[a:b], targs[a:b]), None, **names)
            fitted.append((copy.deepcopy(self.predictor), b, n))
            out = np.full((n, len(self.predictor.block_columns())), self.fill_value)
            for model, start, stop in fitted:
                if stop > start:
                    updates += self._walk(model, feats, targs, start, stop, out, valid)
                    segments.append(
                        {"rows": [start, stop], "fitted_on": [a, start], "metrics": model.metrics}
                    )

        blocks = {
            name: np.ascontiguousarray(out[:, j], dtype=np.float32)
            for j, name in enumerate(self.column_names()[:-1])
        }
        blocks[self.valid_name] = valid.astype(np.float32)
        self.report = {
            "first_valid_row": int(np.argmax(valid)) if valid.any() else n,
            "valid_rows": int(valid.sum()),
            "segments": segments,
            "online_updates": updates,
            "seconds": time.perf_counter() - t0,
        }
        return blocks

    def _walk(
        self,
        model: Predictor,
        feats: np.ndarray,
        targs: np.ndarray | None,
        start: int,
        stop: int,
        out: np.ndarray,
        valid: np.ndarray,
    ) -> int:
        """Predict rows ``[start, stop)`` chunk by chunk, learning after each chunk."""
        first = max(start, model.window - 1)
        if first >= stop:
            return 0
        if not self.online:
            rows = np.arange(first, stop)
            out[rows] = model.predict_block(feats, rows)
            valid[rows] = True
            return 0
        assert targs is not None
        delay, updates, t = model.target_delay, 0, first
        while t < stop:
            end = min(t + self.update_every, stop)
            rows = np.arange(t, end)
            out[rows] = model.predict_block(feats, rows)
            valid[rows] = True
            # Samples whose last target arrived at a bar in [t, end): s + delay in [t, end).
            lo = max(t - delay, model.window - 1)
            hi = end - delay
            if hi > lo:
                model.update(model.samples(feats, targs, np.arange(lo, hi)))
                updates += 1
            t = end
        return updates


def stack_blocks(
    blocks: Mapping[str, np.ndarray], names: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Stack named ``(T,)`` columns into one ``(T, C)`` float32 matrix for an observation block.

    Returns:
        The matrix and the column names in order (for ``BlockSpec.feature_names``).
    """
    names = tuple(names if names is not None else blocks)
    missing = [k for k in names if k not in blocks]
    if missing:
        raise DataError(f"stack_blocks: no columns {missing}; have {sorted(blocks)}")
    return np.stack([blocks[k] for k in names], axis=1).astype(np.float32), names


def block_spec(name: str, column_names: Sequence[str]) -> BlockSpec:
    """A ``BlockSpec`` for one bar of stacked predictor columns (shape ``(C,)``)."""
    return BlockSpec(name=name, shape=(len(column_names),), feature_names=tuple(column_names))
