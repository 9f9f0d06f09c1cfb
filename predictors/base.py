"""The interface every predictor implements, its result types, the device helper and the registry.

A predictor turns market history into numbers an agent can observe: forecasters return a mean and
a standard deviation per output (``Prediction``); encoders (the VAEs of issue 6, later) return a
latent and an anomaly score (``Encoding``). Both expose the same block interface
(``block_columns`` / ``predict_block`` / ``samples`` / ``target_delay``) so one
``WalkForwardProvider`` turns any of them into aligned observation blocks.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from envs.errors import ConfigError, DataError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA when available, else CPU; pass anything else through.

    Same rule as ``agents.base.get_device``; duplicated because ``predictors`` must not import
    ``agents`` (DESIGN.md: imports point one way).
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class SeriesData(NamedTuple):
    """A chronological slice: causal features and the targets they forecast.

    Attributes:
        features: ``(T, F)`` float features; row ``t`` uses only bars ``<= t``.
        targets: ``(T, K)`` float targets; row ``t`` is known at bar ``t``.
    """

    features: np.ndarray
    targets: np.ndarray


class PreparedSeries(NamedTuple):
    """Features and targets built from raw series, with their column names."""

    features: np.ndarray
    targets: np.ndarray
    feature_names: list[str]
    target_names: list[str]

    @property
    def data(self) -> SeriesData:
        """``(features, targets)`` for ``fit`` and the provider."""
        return SeriesData(self.features, self.targets)


class SampleBatch(NamedTuple):
    """Supervised samples: input windows and their (multi-horizon) targets, in data units.

    Attributes:
        windows: ``(B, W, F)`` raw feature windows; ``windows[i, -1]`` is bar ``t_i``.
        targets: ``(B, O)`` raw targets (``O = len(horizons) * K`` for forecasters).
    """

    windows: np.ndarray
    targets: np.ndarray


class Prediction(NamedTuple):
    """A forecaster's output: Gaussian mean and standard deviation per output, in data units."""

    mean: np.ndarray
    std: np.ndarray


class Encoding(NamedTuple):
    """An encoder's output: a latent vector and a scalar (anomaly) score per window."""

    latent: np.ndarray
    score: np.ndarray


@dataclass
class PredictorStats:
    """Online performance monitor of a predictor.

    Attributes:
        updates: online gradient steps taken since the last fit or load.
        samples_seen: online samples scored (each scored before it is learnt from).
        loss_mean: exponential moving average of the per-sample loss on new samples.
        mse_mean: exponential moving average of the squared error (scaled units).
        coverage_90: share of new targets inside ``mean +- 1.645 std`` (running, all outputs).
        degraded: the loss average exceeds ``degrade_factor`` times the validation loss of the fit.
        fit_metrics: metrics of the last ``fit`` (validation loss, epochs, time ...).
    """

    updates: int = 0
    samples_seen: int = 0
    loss_mean: float = float("nan")
    mse_mean: float = float("nan")
    coverage_90: float = float("nan")
    degraded: bool = False
    fit_metrics: dict[str, float] = field(default_factory=dict)


def config_from_kwargs(cls: type, kind: str, kwargs: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from keyword arguments; unknown keys raise a ConfigError."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(
            f"predictor {kind!r}: unknown config fields {unknown}; known: {sorted(names)}"
        )
    values = dict(kwargs)
    for f in fields(cls):
        # JSON and Hydra give lists where the dataclass wants tuples.
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


class Predictor(abc.ABC):
    """What every predictor provides.

    Subclasses set ``kind`` (registry name) and ``version`` (bumped when the saved weights of the
    kind change meaning), and accept their config as keyword arguments.
    """

    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1
    config: Any

    # --- learning -------------------------------------------------------------------------
    @abc.abstractmethod
    def fit(
        self,
        train: SeriesData,
        val: SeriesData | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Fit from scratch on ``train`` with early stopping on ``val``; return training metrics.

        ``feature_names`` / ``target_names`` name the columns (stored in the metadata); the
        walk-forward provider passes them through.
        """

    @abc.abstractmethod
    def update(self, batch: SampleBatch) -> float:
        """Take one online step with samples whose targets just became known; return the loss."""

    # --- inference ------------------------------------------------------------------------
    @abc.abstractmethod
    def predict(self, window: np.ndarray) -> Prediction | Encoding:
        """Predict from one ``(W, F)`` window or a ``(B, W, F)`` batch of raw feature windows."""

    @property
    @abc.abstractmethod
    def window(self) -> int:
        """Bars in one input window."""

    @property
    @abc.abstractmethod
    def target_delay(self) -> int:
        """Bars after ``t`` until sample ``t``'s targets are known (0 for encoders)."""

    @property
    @abc.abstractmethod
    def fitted(self) -> bool:
        """Whether the predictor can predict (fitted or loaded)."""

    @abc.abstractmethod
    def block_columns(self) -> list[str]:
        """Suffixes of the observation columns ``predict_block`` returns, e.g. ``mean_h1``."""

    @abc.abstractmethod
    def predict_block(self, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Batched inference at bars ``rows`` of a ``(T, F)`` feature matrix.

        Returns:
            ``(len(rows), len(block_columns()))`` float32; row ``i`` uses bars
            ``(rows[i] - W, rows[i]]`` only.
        """

    @abc.abstractmethod
    def samples(self, features: np.ndarray, targets: np.ndarray, rows: np.ndarray) -> SampleBatch:
        """Supervised samples built at bars ``rows`` (targets ``target_delay`` bars later)."""

    # --- persistence and monitoring -------------------------------------------------------
    @abc.abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write ``metadata.json`` and ``weights.pt`` into ``directory`` atomically."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: str | Path, device: str = "auto") -> Predictor:
        """Rebuild a predictor saved by ``save``; never executes code stored in the files."""

    @abc.abstractmethod
    def stats(self) -> PredictorStats:
        """Online monitoring figures (loss mean, updates, calibration)."""

    def fresh(self) -> Predictor:
        """A new, unfitted predictor with the same config (for walk-forward refits)."""
        return type(self)(**self.config_dict())

    def config_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready values."""
        from dataclasses import asdict

        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()}


# --- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Predictor]] = {}


def register_predictor(kind: str) -> Callable[[type[Predictor]], type[Predictor]]:
    """Class decorator: ``build_predictor(kind)`` and ``load_predictor`` find the class."""

    def deco(cls: type[Predictor]) -> type[Predictor]:
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise ConfigError(f"predictor kind {kind!r} registered twice")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


def _import_models() -> None:
    """Import the modules that register the built-in kinds (idempotent, lazy: no import cycle)."""
    import importlib

    for module in (
        "predictors.online_lstm",
        "predictors.gas",
        "predictors.liquidity",
        *("predictors.transformer", "predictors.attention", "predictors.vae", "predictors.regimes"),
    ):
        importlib.import_module(module)


def predictor_kinds() -> list[str]:
    """Registered predictor kinds, sorted."""
    _import_models()
    return sorted(_REGISTRY)


def predictor_class(kind: str) -> type[Predictor]:
    """The class registered under ``kind``."""
    _import_models()
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown predictor kind {kind!r}; known: {predictor_kinds()}")
    return _REGISTRY[kind]


def build_predictor(kind: str, **config: Any) -> Predictor:
    """Create an unfitted predictor of a registered kind from config keyword arguments.

    Example:
        ``build_predictor("gas", window=32, horizons=[1, 12])``
    """
    return predictor_class(kind)(**config)


def load_predictor(directory: str | Path, device: str = "auto") -> Predictor:
    """Load any saved predictor; its kind is read from ``metadata.json``."""
    from predictors.metadata import read_metadata

    meta = read_metadata(directory)
    cls = predictor_class(meta["kind"])
    if meta["version"] > cls.version:
        raise DataError(
            f"{directory}: saved {meta['kind']!r} version {meta['version']} is newer than this "
            f"code's version {cls.version}"
        )
    return cls.load(directory, device=device)


def as_window_batch(window: np.ndarray, n_features: int, window_len: int) -> np.ndarray:
    """Return ``(B, W, F)`` float64 from a ``(W, F)`` or ``(B, W, F)`` array, checking shapes."""
    arr = np.asarray(window, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (window_len, n_features):
        raise DataError(
            f"predict: expected a window of shape ({window_len}, {n_features}) or a batch "
            f"(B, {window_len}, {n_features}), got {np.shape(window)}"
        )
    return arr


def names_or_default(names: Sequence[str] | None, n: int, prefix: str, what: str) -> list[str]:
    """Given names (checked against ``n``) or ``prefix0 .. prefix{n-1}``."""
    if names is None:
        return [f"{prefix}{i}" for i in range(n)]
    names = [str(x) for x in names]
    if len(names) != n:
        raise DataError(f"{what}: {len(names)} names for {n} columns")
    return names
