"""Market regime detection: bullish / bearish / ranging / volatile / trending, by rules or learned.

Both detectors read causal features from ``regime_features`` (value at bar ``t`` uses bars
``<= t``) and implement the ``Predictor`` interface, so their labels and scores become observation
blocks through ``WalkForwardProvider``.

* ``RuleRegimeDetector`` (kind ``regime_rules``): no labels needed. Volatility score = realised
  volatility over ``long`` bars / a reference volatility (the median over the training bars,
  optionally tracking new bars online); trend = t-statistic of the mean log return over ``long``
  bars, ``sum r / (sigma sqrt(n))``; trend strength = its absolute value. Rules, in order:
  ``volatile`` when the volatility score exceeds ``volatile_above``; ``trending`` when the trend
  strength exceeds ``trending_above`` (a drift significant at about the 5% level for 2.0);
  ``ranging`` when the volatility score is below ``ranging_below`` and the trend is weak;
  otherwise ``bullish`` or ``bearish`` by the sign of the trend.
* ``LearnedRegimeDetector`` (kind ``regime_learned``): a small MLP over the last ``window`` bars of
  the same features, trained on labelled bars (e.g. ``MarketDataset.regimes`` of the synthetic
  regime-switching generator, Hamilton 1989) with cross-entropy and early stopping.

``to_generator_labels`` maps the five rule labels onto a generator's names (``bull`` / ``bear`` /
``ranging`` / ``volatile``; ``trending`` goes to bull or bear by the trend's sign) so both detectors
can be scored against the labels the generator recorded.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from predictors.base import (
    Prediction,
    Predictor,
    PredictorStats,
    PreparedSeries,
    SampleBatch,
    SeriesData,
    as_window_batch,
    config_from_kwargs,
    names_or_default,
    register_predictor,
)
from predictors.metadata import FORMAT_VERSION, read_metadata, utc_timestamp, write_metadata
from predictors.rolling import rolling_mean, rolling_std
from predictors.window_model import ClassifierConfig, WindowClassifier
from predictors.windows import as_matrix, check_finite, sample_rows

RULE_REGIMES = ("bullish", "bearish", "ranging", "volatile", "trending")
# Generator names (envs.data.synthetic.DEFAULT_REGIMES) and other common spellings -> rule names.
SYNONYMS = {
    "bull": "bullish",
    "bullish": "bullish",
    "bear": "bearish",
    "bearish": "bearish",
    "ranging": "ranging",
    "range": "ranging",
    "sideways": "ranging",
    "volatile": "volatile",
    "trending": "trending",
}


# --- features ------------------------------------------------------------------------------------
def regime_features(close: np.ndarray, short: int = 24, long: int = 96) -> PreparedSeries:
    """Causal regime features from a close-price series (targets: empty, fill in labels).

    Args:
        close: ``(T,)`` positive closes.
        short: bars of the short-horizon statistics.
        long: bars of the long-horizon statistics (the rules use these).

    Returns:
        Features ``logret, vol_{short}, vol_{long}, vol_ratio, trend_{short}, trend_{long},
        efficiency_{long}`` with ``trend_n = sum r / (vol_n sqrt(n))`` (a t-statistic of the drift)
        and ``efficiency_n = |sum r| / sum |r|`` (Kaufman's efficiency ratio); targets ``(T, 0)``.
    """
    px = np.asarray(close, dtype=np.float64)
    if px.ndim != 1:
        raise DataError(f"close: expected a (T,) series, got shape {px.shape}")
    bad = ~np.isfinite(px) | (px <= 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"close: expected finite prices > 0, got {px[row]} at row {row}")
    if not 2 <= short <= long:
        raise ConfigError(f"regime features: need 2 <= short ({short}) <= long ({long})")
    r = np.zeros_like(px)
    r[1:] = np.diff(np.log(px))
    cols, names = [r], ["logret"]
    vols = {}
    for n in (short, long):
        vols[n] = np.maximum(rolling_std(r, n), 1e-12)
        cols.append(vols[n])
        names.append(f"vol_{n}")
    cols.append(vols[short] / vols[long])
    names.append("vol_ratio")
    for n in (short, long):
        count = np.minimum(np.arange(1, len(r) + 1), n)
        cols.append(rolling_mean(r, n) * count / (vols[n] * np.sqrt(count)))
        names.append(f"trend_{n}")
    abs_sum = rolling_mean(np.abs(r), long)
    cols.append(np.abs(rolling_mean(r, long)) / np.maximum(abs_sum, 1e-12))
    names.append(f"efficiency_{long}")
    return PreparedSeries(np.stack(cols, axis=1), np.zeros((len(px), 0)), names, [])


def dataset_regime_series(
    dataset: MarketDataset, short: int = 24, long: int = 96, asset: int = 0
) -> PreparedSeries:
    """``regime_features`` of one asset's closes, with the recorded regime labels as the target.

    Raises:
        DataError: the dataset records no regimes.
    """
    if dataset.regimes is None:
        raise DataError(f"{dataset.source}: dataset has no regime labels (regimes is None)")
    feats = regime_features(dataset.close[:, asset], short, long)
    return PreparedSeries(
        feats.features, dataset.regimes[:, None].astype(np.float64), feats.feature_names, ["regime"]
    )


def to_generator_labels(
    rule_labels: np.ndarray, trend: np.ndarray, names: Sequence[str]
) -> np.ndarray:
    """Map rule labels (indices into ``RULE_REGIMES``) onto a generator's label indices.

    ``trending`` becomes ``bullish`` or ``bearish`` by the sign of ``trend``; a rule regime the
    generator lacks maps to -1 (counted as wrong).
    """
    lookup = {SYNONYMS.get(str(n).lower(), str(n).lower()): i for i, n in enumerate(names)}
    rule = np.asarray(rule_labels, dtype=np.int64)
    trend_dir = np.where(np.asarray(trend) >= 0, RULE_REGIMES.index("bullish"), 1)
    rule = np.where(rule == RULE_REGIMES.index("trending"), trend_dir, rule)
    table = np.array([lookup.get(name, -1) for name in RULE_REGIMES])
    return table[rule]


class RegimeOutput(NamedTuple):
    """Labels and scores of a regime detector for a batch of windows."""

    labels: np.ndarray
    """``(B,)`` int class indices."""
    names: list[str]
    """Class names (index = label)."""
    probabilities: np.ndarray
    """``(B, K)`` class probabilities (one-hot for rules)."""
    trend: np.ndarray
    """``(B,)`` signed trend t-statistic."""
    trend_strength: np.ndarray
    """``(B,)`` absolute trend t-statistic."""
    volatility: np.ndarray
    """``(B,)`` volatility score (1 = typical)."""


def _fields(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)}


# --- rules ---------------------------------------------------------------------------------------
@dataclass
class RuleConfig:
    """Thresholds of the rule-based detector (every field JSON-serialisable)."""

    short: int = 24
    """Bars of the short-horizon features."""
    long: int = 96
    """Bars of the volatility and trend statistics the rules use."""
    volatile_above: float = 2.0
    """Volatility score above which the regime is volatile."""
    ranging_below: float = 0.75
    """Volatility score below which a weak-trend regime is ranging."""
    trending_above: float = 2.0
    """Trend strength (|t-statistic| of the drift) above which the regime is trending."""
    reference_decay: float = 0.0
    """Online: weight of each new bar in an exponential average of the reference log-volatility
    (0: the reference stays as fitted on the training split)."""


@register_predictor("regime_rules")
class RuleRegimeDetector(Predictor):
    """Rule-based regime detector over ``regime_features``; no labels needed.

    Args:
        **config: ``RuleConfig`` fields.
    """

    version = 1
    config_class: ClassVar[type] = RuleConfig

    def __init__(self, **config: Any) -> None:
        self.config = config_from_kwargs(RuleConfig, "regime_rules", config)
        c = self.config
        if (
            not 2 <= c.short <= c.long
            or c.volatile_above <= c.ranging_below
            or not (0.0 <= c.reference_decay < 1.0)
        ):
            raise ConfigError(
                "predictor 'regime_rules': expected 2 <= short <= long, volatile_above > "
                f"ranging_below, reference_decay in [0, 1); got {_fields(c)}"
            )
        self.feature_names: list[str] = []
        self.vol_reference: float | None = None
        self.metrics: dict[str, float] = {}
        self._stats = PredictorStats()

    @property
    def window(self) -> int:
        """Rules read the newest bar's features only."""
        return 1

    @property
    def target_delay(self) -> int:
        """No targets."""
        return 0

    @property
    def fitted(self) -> bool:
        """Whether the reference volatility is known."""
        return self.vol_reference is not None

    def block_columns(self) -> list[str]:
        """``is_{regime}`` for the five regimes, ``trend``, ``trend_strength``, ``volatility``."""
        return [f"is_{r}" for r in RULE_REGIMES] + ["trend", "trend_strength", "volatility"]

    def prepare(self, close: np.ndarray) -> PreparedSeries:
        """``regime_features`` with this detector's horizons."""
        return regime_features(close, self.config.short, self.config.long)

    def _cols(self) -> tuple[int, int]:
        c = self.config
        need = [f"vol_{c.long}", f"trend_{c.long}"]
        missing = [n for n in need if n not in self.feature_names]
        if missing:
            raise DataError(
                f"predictor 'regime_rules': features {missing} missing from {self.feature_names}"
            )
        return self.feature_names.index(need[0]), self.feature_names.index(need[1])

    def fit(
        self,
        train: SeriesData | tuple[np.ndarray, Any],
        val: SeriesData | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Set the reference volatility to the median long-horizon volatility of ``train``.

        Labels are not used (``val`` and targets are ignored); the first ``long`` bars, whose
        statistics are still expanding, are left out of the median.
        """
        feats = as_matrix(train[0], "train features")
        self.feature_names = names_or_default(feature_names, feats.shape[1], "f", "feature_names")
        if feature_names is None and feats.shape[1] == 7:
            self.feature_names = self.prepare(np.ones(2) * 1.0).feature_names
        check_finite(feats, "train features", self.feature_names)
        j_vol, _ = self._cols()
        body = (
            feats[self.config.long :, j_vol]
            if len(feats) > 2 * self.config.long
            else feats[:, j_vol]
        )
        self.vol_reference = float(np.median(body))
        self.metrics = {"vol_reference": self.vol_reference, "n_train": float(len(feats))}
        self._stats = PredictorStats(fit_metrics=dict(self.metrics))
        return dict(self.metrics)

    def update(self, batch: SampleBatch) -> float:
        """Track the reference volatility online (when ``reference_decay`` > 0); returns 0.0."""
        if self.vol_reference is None:
            raise DataError("predictor 'regime_rules': update called before fit or load")
        windows = as_window_batch(batch.windows, len(self.feature_names), 1)
        a = self.config.reference_decay
        if a > 0:
            log_ref = math.log(self.vol_reference)
            for v in windows[:, -1, self._cols()[0]]:
                log_ref = (1 - a) * log_ref + a * math.log(max(float(v), 1e-12))
            self.vol_reference = math.exp(log_ref)
        self._stats.updates += 1
        self._stats.samples_seen += len(windows)
        return 0.0

    def samples(
        self, features: np.ndarray, targets: np.ndarray | None, rows: np.ndarray
    ) -> SampleBatch:
        """One-bar windows at ``rows`` (no targets)."""
        feats = as_matrix(features, "features")
        rows = np.asarray(rows, dtype=np.int64)
        return SampleBatch(feats[rows][:, None, :], np.zeros((len(rows), 0)))

    def classify_features(self, last: np.ndarray) -> RegimeOutput:
        """Apply the rules to ``(B, F)`` newest-bar features."""
        if self.vol_reference is None:
            raise DataError("predictor 'regime_rules': predict called before fit or load")
        c = self.config
        j_vol, j_trend = self._cols()
        vol = last[:, j_vol] / self.vol_reference
        trend = last[:, j_trend]
        strength = np.abs(trend)
        labels = np.where(trend >= 0, 0, 1)  # bullish / bearish
        labels = np.where((vol < c.ranging_below) & (strength <= c.trending_above), 2, labels)
        labels = np.where(strength > c.trending_above, 4, labels)
        labels = np.where(vol > c.volatile_above, 3, labels)
        probs = np.eye(len(RULE_REGIMES), dtype=np.float32)[labels]
        return RegimeOutput(labels, list(RULE_REGIMES), probs, trend, strength, vol)

    def classify(self, window: np.ndarray) -> RegimeOutput:
        """Rules on raw ``(W, F)`` / ``(B, W, F)`` windows (the newest bar is used)."""
        arr = np.asarray(window, dtype=np.float64)
        arr = arr[None] if arr.ndim == 2 else arr
        if arr.ndim != 3 or arr.shape[-1] != len(self.feature_names):
            raise DataError(
                f"predict: expected windows of {len(self.feature_names)} features, got {arr.shape}"
            )
        return self.classify_features(arr[:, -1])

    def predict(self, window: np.ndarray) -> Prediction:
        """One-hot regime indicators (rules are deterministic: std 0)."""
        out = self.classify(window)
        return Prediction(out.probabilities, np.zeros_like(out.probabilities))

    def predict_block(self, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Indicators and scores at bars ``rows`` (each row reads its own bar's features)."""
        feats = as_matrix(features, "features")
        rows = np.asarray(rows, dtype=np.int64)
        if len(feats) and feats.shape[1] != len(self.feature_names):
            raise DataError(
                f"features: {feats.shape[1]} columns, the detector was fitted on "
                f"{len(self.feature_names)} ({self.feature_names})"
            )
        if rows.size == 0:
            return np.zeros((0, len(self.block_columns())), dtype=np.float32)
        last = feats[rows]
        check_finite(last, "features", self.feature_names)
        out = self.classify_features(last)
        scores = np.stack([out.trend, out.trend_strength, out.volatility], axis=1)
        return np.concatenate([out.probabilities, scores], axis=1).astype(np.float32)

    def stats(self) -> PredictorStats:
        """Updates and bars seen (the rules have no loss)."""
        s = copy.copy(self._stats)
        s.fit_metrics = dict(self.metrics)
        return s

    def save(self, directory: str | Path) -> None:
        """Write ``metadata.json`` (config, names, reference volatility); rules have no weights."""
        if self.vol_reference is None:
            raise DataError("predictor 'regime_rules': save called before fit")
        write_metadata(
            directory,
            {
                "kind": self.kind,
                "version": self.version,
                "format_version": FORMAT_VERSION,
                "config": self.config_dict(),
                "feature_names": self.feature_names,
                "output_names": self.block_columns(),
                "block_columns": self.block_columns(),
                "scaler": {},
                "state": {"vol_reference": self.vol_reference},
                "metrics": {k: v if math.isfinite(v) else None for k, v in self.metrics.items()},
                "timestamp": utc_timestamp(),
            },
        )

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> RuleRegimeDetector:
        """Rebuild from ``save`` (``device`` is ignored: no network)."""
        meta = read_metadata(directory)
        if meta["kind"] != cls.kind:
            raise DataError(f"{directory}: saved kind {meta['kind']!r}, expected {cls.kind!r}")
        obj = cls(**meta["config"])
        obj.feature_names = list(meta["feature_names"])
        obj.vol_reference = float(meta["state"]["vol_reference"])
        obj.metrics = {k: math.nan if v is None else float(v) for k, v in meta["metrics"].items()}
        obj._cols()
        return obj


# --- learned -------------------------------------------------------------------------------------
class RegimeMLP(nn.Module):
    """MLP over a flattened window of regime features -> class logits."""

    def __init__(self, n_in: int, n_classes: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, W, F) -> (B, K)`` logits."""
        return self.net(x.flatten(1))


@dataclass
class LearnedRegimeConfig(ClassifierConfig):
    """``ClassifierConfig`` plus the class names and which features carry the scores."""

    window: int = 4
    """Bars of features per sample (the features already summarise ``long`` bars)."""
    class_names: tuple[str, ...] = ()
    """Names of the labels (index = label); empty: ``regime0 ..``."""
    n_classes: int = 0
    """Classes; 0: one more than the largest training label (or len(class_names))."""
    trend_feature: str = "trend_96"
    """Feature copied into the block as ``trend`` (and its absolute value as ``trend_strength``)."""
    volatility_feature: str = "vol_96"
    """Feature whose ratio to its training median becomes the block's ``volatility`` score."""


@register_predictor("regime_learned")
class LearnedRegimeDetector(WindowClassifier):
    """MLP regime classifier over windows of ``regime_features``, trained on labelled bars.

    The label of bar ``t`` is the target at ``t`` (``target_delay`` 0): in synthetic data the
    generator's regime is known at ``t``; with real data give labels from another source (or use
    the provider with ``online=False``).

    Args:
        **config: ``LearnedRegimeConfig`` fields.
    """

    config_class = LearnedRegimeConfig
    version = 1

    @property
    def target_delay(self) -> int:
        """The label of bar ``t`` is the target at ``t``."""
        return 0

    def block_columns(self) -> list[str]:
        """``p_{class}``, ``confidence``, ``trend``, ``trend_strength``, ``volatility``."""
        return [*super().block_columns(), "trend", "trend_strength", "volatility"]

    def prepare(self, close: np.ndarray, short: int = 24, long: int = 96) -> PreparedSeries:
        """``regime_features``; horizons must match ``trend_feature`` / ``volatility_feature``."""
        return regime_features(close, short, long)

    def _check_names(self) -> None:
        c = self.config
        missing = [
            n for n in (c.trend_feature, c.volatility_feature) if n not in self.feature_names
        ]
        if missing:
            raise DataError(
                f"predictor 'regime_learned': features {missing} missing from {self.feature_names}"
            )

    def _labels_at(self, targets: np.ndarray, rows: np.ndarray, n: int | None) -> np.ndarray:
        if targets.shape[1] == 0:
            raise DataError("predictor 'regime_learned': targets need a regime label column")
        lab = targets[rows, 0]
        bad = (lab != np.round(lab)) | (lab < 0) | ((lab >= n) if n is not None else False)
        if np.any(bad):
            i = int(np.argmax(bad))
            want = "integers >= 0" if n is None else f"integers in [0, {n})"
            raise DataError(
                f"predictor 'regime_learned': label {lab[i]} at row {int(rows[i])}; expected {want}"
            )
        return lab.astype(np.int64)

    def _fit_targets(self, targets: np.ndarray, rows: np.ndarray) -> None:
        c = self.config
        labels = self._labels_at(targets, rows, None)
        n = max(c.n_classes, len(c.class_names), int(labels.max()) + 1)
        names = list(c.class_names) or [f"regime{k}" for k in range(n)]
        if len(names) < n:
            raise DataError(f"predictor 'regime_learned': {len(names)} class_names for {n} labels")
        self.state["classes"] = names
        self._set_class_weights(labels)
        j = self.feature_names.index(c.volatility_feature)
        # The scaler's mean is fitted on the same training bars; the median is more robust.
        self.state["vol_reference"] = float(np.median(self._train_vol[:, j]))

    def fit(
        self,
        train: SeriesData | tuple[np.ndarray, np.ndarray | None],
        val: SeriesData | tuple[np.ndarray, np.ndarray | None] | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """``WindowClassifier.fit``; unnamed 7-column features get ``regime_features`` names."""
        feats = as_matrix(train[0], "train features")
        if feature_names is None and feats.shape[1] == 7:
            feature_names = regime_features(np.ones(2)).feature_names
        self._train_vol = feats
        try:
            return super().fit(train, val, feature_names=feature_names, target_names=target_names)
        finally:
            del self._train_vol

    def _sample_targets(self, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self._labels_at(targets, rows, self.n_classes).astype(np.float32)[:, None]

    def _build_net(self) -> RegimeMLP:
        c = self.config
        n_in = c.window * len(self.feature_names)
        return RegimeMLP(n_in, self.n_classes, c.hidden_size, c.dropout)

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        base = super()._outputs(x)
        jt = self.feature_names.index(c.trend_feature)
        jv = self.feature_names.index(c.volatility_feature)
        mean = torch.as_tensor(self.feature_scaler.mean, dtype=torch.float32, device=x.device)
        scale = torch.as_tensor(self.feature_scaler.scale, dtype=torch.float32, device=x.device)
        last = x[:, -1] * scale + mean  # back to raw units
        trend = last[:, jt : jt + 1]
        vol = last[:, jv : jv + 1] / float(self.state["vol_reference"])
        return torch.cat([base, trend, trend.abs(), vol], dim=-1)

    def classify(self, window: np.ndarray) -> RegimeOutput:
        """Labels, probabilities and scores for raw ``(W, F)`` / ``(B, W, F)`` windows."""
        block = self._block_for_windows(window)
        k = self.n_classes
        probs = block[:, :k]
        return RegimeOutput(
            probs.argmax(axis=1),
            self.class_names,
            probs,
            block[:, k + 1],
            block[:, k + 2],
            block[:, k + 3],
        )


def regime_accuracy(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of predicted label indices and the majority-class baseline on the same bars."""
    pred = np.asarray(predicted, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    if pred.shape != lab.shape or lab.size == 0:
        raise DataError(f"regime_accuracy: shapes {pred.shape} and {lab.shape} differ or are empty")
    majority = np.bincount(lab).argmax()
    return {"accuracy": float(np.mean(pred == lab)), "majority": float(np.mean(lab == majority))}


def valid_rows(n_bars: int, long: int, window: int = 1) -> np.ndarray:
    """Bars whose long-horizon statistics cover ``long`` full bars and a full window."""
    return sample_rows(n_bars, max(window, long + 1), 0)
