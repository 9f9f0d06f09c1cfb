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
from envs.data.splits import (
    chronological_split,
    split_indices,
    walk_forward_datasets,
    walk_forward_folds,
)
from envs.data.synthetic import gbm, jump_diffusion, ornstein_uhlenbeck, regime_switching
from envs.data.validation import validate_dataset

__all__ = [
    "OHLCV",
    "MarketDataset",
    "align_datasets",
    "available_samples",
    "chronological_split",
    "gbm",
    "infer_time_unit",
    "jump_diffusion",
    "load_csv",
    "load_dataset",
    "load_file",
    "load_parquet",
    "load_sample",
    "ornstein_uhlenbeck",
    "regime_switching",
    "split_indices",
    "validate_dataset",
    "walk_forward_datasets",
    "walk_forward_folds",
]
