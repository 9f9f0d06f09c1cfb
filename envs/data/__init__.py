"""Market data: the validated dataset, loaders, validation, synthetic generators and splits."""

from __future__ import annotations

from envs.data.dataset import OHLCV, MarketDataset
from envs.data.loaders import (
    align_datasets,
    infer_time_unit,
    load_csv,
    load_dataset,
    load_file,
    load_parquet,
)
from envs.data.samples import available_samples, load_sample
from envs.data.validation import validate_dataset

__all__ = [
    "OHLCV",
    "MarketDataset",
    "align_datasets",
    "available_samples",
    "infer_time_unit",
    "load_csv",
    "load_dataset",
    "load_file",
    "load_parquet",
    "load_sample",
    "validate_dataset",
]
