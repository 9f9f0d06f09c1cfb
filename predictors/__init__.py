"""Predictors: forecasters (and, later, encoders) whose outputs become observation blocks.

Every predictor implements ``predictors.base.Predictor`` (fit with early stopping, online
``update``, ``predict`` returning a mean and a standard deviation, ``save``/``load`` with a
``metadata.json`` readable without torch, ``stats``). ``WalkForwardProvider`` turns any of them
into aligned float32 arrays over a dataset without look-ahead.

Programmatic entry point (for ``scripts/train_predictor.py``)::

    from predictors import build_predictor, predictor_kinds, load_predictor
    model = build_predictor("gas", window=48, horizons=[1, 12])
"""

from __future__ import annotations

import importlib
from typing import Any

# Exports are resolved lazily (PEP 562) so that ``import predictors.metadata`` (to inspect a run
# directory) does not import torch through this package's ``__init__``.
_EXPORTS = {
    "Encoding": "predictors.base",
    "Prediction": "predictors.base",
    "Predictor": "predictors.base",
    "PredictorStats": "predictors.base",
    "PreparedSeries": "predictors.base",
    "SampleBatch": "predictors.base",
    "SeriesData": "predictors.base",
    "build_predictor": "predictors.base",
    "load_predictor": "predictors.base",
    "predictor_class": "predictors.base",
    "predictor_kinds": "predictors.base",
    "register_predictor": "predictors.base",
    "resolve_device": "predictors.base",
    "ForecasterConfig": "predictors.forecaster",
    "GaussianForecaster": "predictors.forecaster",
    "GasConfig": "predictors.gas",
    "GasPricePredictor": "predictors.gas",
    "gas_features": "predictors.gas",
    "LiquidityConfig": "predictors.liquidity",
    "LiquidityPredictor": "predictors.liquidity",
    "liquidity_features": "predictors.liquidity",
    "read_metadata": "predictors.metadata",
    "OnlineGRU": "predictors.online_lstm",
    "OnlineLSTM": "predictors.online_lstm",
    "WalkForwardProvider": "predictors.provider",
    "AttentionForecaster": "predictors.attention",
    "CrossMarketAttention": "predictors.attention",
    "HierarchicalTimeAttention": "predictors.attention",
    "MultiScaleAttention": "predictors.attention",
    "TemporalDecayAttention": "predictors.attention",
    "DirectionClassifier": "predictors.transformer",
    "TransformerForecaster": "predictors.transformer",
    "ConditionalMarketVAE": "predictors.vae",
    "HierarchicalMarketVAE": "predictors.vae",
    "MarketVAE": "predictors.vae",
    "LearnedRegimeDetector": "predictors.regimes",
    "RuleRegimeDetector": "predictors.regimes",
    "regime_features": "predictors.regimes",
    "block_spec": "predictors.provider",
    "stack_blocks": "predictors.provider",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'predictors' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
