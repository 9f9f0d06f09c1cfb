"""Market data: the validated dataset, loaders, validation, synthetic generators and splits."""

from __future__ import annotations

from envs.data.dataset import OHLCV, MarketDataset
from envs.data.samples import available_samples, load_sample

__all__ = ["OHLCV", "MarketDataset", "available_samples", "load_sample"]
