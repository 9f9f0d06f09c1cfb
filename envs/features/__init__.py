"""Causal features, scalers and windowing over a :class:`~envs.data.dataset.MarketDataset`.

``compute_features`` turns a dataset into a ``(T, N, F)`` float32 :class:`FeatureSet`; scalers are
fitted on the training split and saved as JSON; ``sliding_windows`` / ``window_at`` cut the
look-back windows observations are built from.
"""

from __future__ import annotations

from envs.features.pipeline import (
    DEFAULT_FEATURES,
    VALID_PATTERNS,
    FeatureSet,
    compute_features,
    parse_feature,
)
from envs.features.scaling import (
    MinMaxScaler,
    Scaler,
    StandardScaler,
    load_scaler,
    scaler_from_dict,
)
from envs.features.windows import sliding_windows, window_at, windows_at

__all__ = [
    "DEFAULT_FEATURES",
    "VALID_PATTERNS",
    "FeatureSet",
    "MinMaxScaler",
    "Scaler",
    "StandardScaler",
    "compute_features",
    "load_scaler",
    "parse_feature",
    "scaler_from_dict",
    "sliding_windows",
    "window_at",
    "windows_at",
]
