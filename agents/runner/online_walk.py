"""The walk-forward protocol a runner's online predictor block follows, bar by bar.

Training's ``predictors.provider.WalkForwardProvider`` predicts each chunk of ``update_every``
rows with the model as it stood at the chunk's start, then learns once from the samples whose
targets arrived in the chunk. Live, a block predicts one row at a time and, when a chunk closes,
queues that update for :meth:`OnlineWalk.maintain` (the bot calls it between rows; otherwise the
next row runs it first). The market (``run_dir.OnlinePredictorBlock``) and arbitrage
(``arb_predictors.OnlineDefiPredictor``) blocks differ in their inputs only; both keep the last
``history`` rows of features ``_feats`` and targets ``_targs`` and use this class for the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["OnlineWalk"]


class OnlineWalk:
    """Prediction rows and queued online updates over a rolling feature/target history.

    Subclasses set ``predictor``, ``window``, ``delay``, ``update_every``, ``history``,
    ``columns``, ``_feats``, ``_targs``, ``_rows``, ``_pending``, ``updates`` and ``last_row``.
    """

    predictor: Any
    window: int
    delay: int
    update_every: int
    history: int
    columns: list[str]
    _feats: np.ndarray | None
    _targs: np.ndarray | None
    _rows: int
    _pending: np.ndarray | None
    updates: int
    last_row: np.ndarray

    @property
    def rows_seen(self) -> int:
        """Rows pushed since the last reset."""
        return self._rows

    @property
    def update_pending(self) -> bool:
        """Whether a chunk closed and its online update has not run yet."""
        return self._pending is not None

    def _predict_row(self) -> np.ndarray:
        """Predict the newest row from the last ``window`` rows: the block row ``(C,)`` float32
        with validity 1 last (also kept as ``last_row``)."""
        pred = self.predictor.predict_block(
            self._feats[-self.window :], np.array([self.window - 1])
        )[0]
        row = np.empty(len(self.columns), dtype=np.float32)
        row[:-1] = pred
        row[-1] = 1.0
        self.last_row = row
        return row

    def _close_chunk(self, r: int) -> None:
        """Queue the update of the chunk ending at row ``r`` (since the reset): the samples whose
        targets arrived in it (provider._walk: ``s + delay`` in ``[start, end)``), in history
        coordinates."""
        end = r + 1
        lo, hi = end - self.update_every - self.delay, end - self.delay
        if hi > lo:
            offset = r - (self.history - 1)  # row of history index 0
            self._pending = np.arange(lo, hi) - offset

    def maintain(self) -> bool:
        """Run the pending online update, if any (between rows). True when one ran."""
        if self._pending is None:
            return False
        rows, self._pending = self._pending, None
        self.predictor.update(self.predictor.samples(self._feats, self._targs, rows))
        self.updates += 1
        return True
