"""Feature scalers fitted on the training split and saved with the run as JSON.

Both scalers work on the last (feature) axis and pool every other axis (time, asset). They are
saved as plain JSON, never pickle, so loading a run directory cannot execute code; floats are
written with Python's shortest round-trip ``repr``, so a loaded scaler transforms bit-identically.

Fit on the training split only (``fit(features.values[train])``), skipping the warm-up rows whose
neutral fill would bias the statistics (``warmup=features.warmup``); then transform every split with
the same parameters, as in scikit-learn's preprocessing and the walk-forward rule in DESIGN.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from envs.errors import ConfigError, DataError

FORMAT = "marketrl.scaler"
FORMAT_VERSION = 1


def _float_list(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


class _Scaler:
    """Shared machinery: ``y = (x - center) / scale + shift`` per feature."""

    kind: ClassVar[str] = ""

    def __init__(self) -> None:
        self.center_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.feature_names: tuple[str, ...] | None = None
        self.n_samples_: int = 0

    # --- fitting --------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``from_dict``) has set the parameters."""
        return self.center_ is not None

    @property
    def n_features(self) -> int:
        """Number of features the scaler was fitted on."""
        return int(self._params()[0].shape[0])

    @property
    def _shift(self) -> float:
        return 0.0

    def _stats(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fit(
        self,
        values: np.ndarray,
        warmup: int = 0,
        feature_names: Sequence[str] | None = None,
    ) -> _Scaler:
        """Fit on training values only.

        Args:
            values: ``(T, F)`` or ``(T, N, F)`` training-split features (time first).
            warmup: leading rows to ignore (``FeatureSet.warmup``: their values are fill).
            feature_names: optional names of the ``F`` features, checked on later use.

        Returns:
            ``self``.

        Raises:
            DataError: wrong shape, no rows left after the warm-up, or non-finite values.
        """
        arr = np.asarray(values)
        if arr.ndim < 2:
            raise DataError(
                f"{type(self).__name__}.fit: values must be (T, F) or (T, N, F), got {arr.shape}"
            )
        if warmup < 0:
            raise ConfigError(f"{type(self).__name__}.fit: warmup must be >= 0, got {warmup}")
        n_features = arr.shape[-1]
        if feature_names is not None and len(feature_names) != n_features:
            raise DataError(
                f"{type(self).__name__}.fit: {len(feature_names)} feature names for "
                f"{n_features} feature columns"
            )
        rows = arr[warmup:].reshape(-1, n_features).astype(np.float64, copy=False)
        if rows.shape[0] == 0:
            raise DataError(
                f"{type(self).__name__}.fit: no rows to fit after skipping {warmup} warm-up rows "
                f"of {arr.shape[0]}"
            )
        bad = ~np.isfinite(rows)
        if bad.any():
            flat_row, col = np.argwhere(bad)[0]
            per_t = int(np.prod(arr.shape[1:-1], dtype=np.int64))
            row = warmup + flat_row // per_t
            name = feature_names[col] if feature_names is not None else f"#{col}"
            raise DataError(
                f"{type(self).__name__}.fit: feature {name} is not finite at row {row}; "
                "expected finite values"
            )
        center, scale = self._stats(rows)
        # A constant column carries no spread to normalise: keep scale 1 (scikit-learn does too).
        scale = np.where(scale > 0, scale, 1.0)
        self.center_ = center
        self.scale_ = scale
        self.feature_names = None if feature_names is None else tuple(feature_names)
        self.n_samples_ = int(rows.shape[0])
        return self

    # --- applying -------------------------------------------------------------------------
    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        if self.center_ is None or self.scale_ is None:
            raise ConfigError(
                f"{type(self).__name__} is not fitted: call fit(train_values) or load a saved "
                "scaler before transform"
            )
        return self.center_, self.scale_

    def _checked(self, values: np.ndarray, op: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        center, scale = self._params()
        arr = np.asarray(values)
        if arr.ndim == 0 or arr.shape[-1] != center.shape[0]:
            names = f" ({', '.join(self.feature_names)})" if self.feature_names else ""
            raise DataError(
                f"{type(self).__name__}.{op}: expected {center.shape[0]} features on the last "
                f"axis{names}, got shape {arr.shape}"
            )
        return arr, center, scale

    @staticmethod
    def _out_dtype(arr: np.ndarray) -> np.dtype:
        return arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale ``values`` (any leading shape, features last); keeps float32/float64 dtype."""
        arr, center, scale = self._checked(values, "transform")
        out = (arr.astype(np.float64) - center) / scale + self._shift
        return out.astype(self._out_dtype(arr), copy=False)

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        """Undo ``transform``."""
        arr, center, scale = self._checked(values, "inverse_transform")
        out = (arr.astype(np.float64) - self._shift) * scale + center
        return out.astype(self._out_dtype(arr), copy=False)

    # --- persistence ----------------------------------------------------------------------
    def _extra_dict(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters: ``format``, ``version``, ``type``, ``center``, ``scale``,
        ``feature_names``, ``n_samples`` (and ``feature_range`` for min-max)."""
        center, scale = self._params()
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "type": self.kind,
            "center": _float_list(center),
            "scale": _float_list(scale),
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "n_samples": self.n_samples_,
            **self._extra_dict(),
        }

    @classmethod
    def _from_fields(cls, data: dict[str, Any], where: str) -> _Scaler:
        return cls()

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "<dict>") -> _Scaler:
        """Rebuild a scaler from ``to_dict`` output; ``where`` names the source in errors."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{where}: not a scaler file (field 'format' must be {FORMAT!r})")
        if data.get("version") != FORMAT_VERSION:
            raise DataError(
                f"{where}: field 'version' is {data.get('version')!r}, expected {FORMAT_VERSION}"
            )
        kind = data.get("type")
        target = _SCALERS.get(kind) if cls is _Scaler else cls
        if target is None or kind != target.kind:
            expected = sorted(_SCALERS) if cls is _Scaler else [cls.kind]
            raise DataError(f"{where}: field 'type' is {kind!r}, expected one of {expected}")
        arrays = {}
        for key in ("center", "scale"):
            raw = data.get(key)
            try:
                arr = np.asarray(raw, dtype=np.float64)
            except (TypeError, ValueError):
                arr = np.empty((0, 0))
            if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
                raise DataError(
                    f"{where}: field {key!r} must be a non-empty list of finite numbers"
                )
            arrays[key] = arr
        if arrays["center"].shape != arrays["scale"].shape:
            raise DataError(f"{where}: fields 'center' and 'scale' have different lengths")
        if (arrays["scale"] <= 0).any():
            raise DataError(f"{where}: field 'scale' must be positive")
        names = data.get("feature_names")
        if names is not None and (
            not isinstance(names, list)
            or len(names) != arrays["center"].shape[0]
            or not all(isinstance(n, str) for n in names)
        ):
            raise DataError(
                f"{where}: field 'feature_names' must be null or a list of "
                f"{arrays['center'].shape[0]} strings"
            )
        scaler = target._from_fields(data, where)
        scaler.center_ = arrays["center"]
        scaler.scale_ = arrays["scale"]
        scaler.feature_names = None if names is None else tuple(names)
        scaler.n_samples_ = int(data.get("n_samples", 0))
        return scaler

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the parameters as JSON to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> _Scaler:
        """Read a scaler saved by ``save`` (JSON only: loading never executes code)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DataError(f"{path}: scaler file not found") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        return cls.from_dict(data, where=str(path))

    def __repr__(self) -> str:
        state = f"{self.n_features} features" if self.is_fitted else "not fitted"
        return f"{type(self).__name__}({state})"


class StandardScaler(_Scaler):
    """Zero mean, unit (population) variance per feature; constant features get scale 1.

    Example:
        >>> scaler = StandardScaler().fit(features.values[:train_end], warmup=features.warmup)
        >>> obs_values = scaler.transform(features.values)
    """

    kind: ClassVar[str] = "standard"

    def _stats(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        center = rows.mean(axis=0)
        scale = np.sqrt(((rows - center) ** 2).mean(axis=0))  # two-pass: no cancellation
        return center, scale

    def fit(
        self,
        values: np.ndarray,
        warmup: int = 0,
        feature_names: Sequence[str] | None = None,
    ) -> StandardScaler:
        """Fit on training values only; see ``_Scaler.fit`` (returns ``self``)."""
        super().fit(values, warmup, feature_names)
        return self


class MinMaxScaler(_Scaler):
    """Map each feature's training range onto ``feature_range`` (default ``(0, 1)``).

    Values outside the training range map outside ``feature_range`` (no clipping), so a regime
    shift stays visible. Constant features get scale 1 and map to ``feature_range[0]``.

    Args:
        feature_range: target ``(low, high)`` with ``low < high``.
    """

    kind: ClassVar[str] = "minmax"

    def __init__(self, feature_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        low, high = (float(v) for v in feature_range)
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ConfigError(
                f"MinMaxScaler: feature_range must be finite (low, high) with low < high, "
                f"got {feature_range}"
            )
        self.feature_range = (low, high)

    @property
    def _shift(self) -> float:
        return self.feature_range[0]

    def _stats(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low, high = self.feature_range
        minimum = rows.min(axis=0)
        return minimum, (rows.max(axis=0) - minimum) / (high - low)

    def fit(
        self,
        values: np.ndarray,
        warmup: int = 0,
        feature_names: Sequence[str] | None = None,
    ) -> MinMaxScaler:
        """Fit on training values only; see ``_Scaler.fit`` (returns ``self``)."""
        super().fit(values, warmup, feature_names)
        return self

    def _extra_dict(self) -> dict[str, Any]:
        return {"feature_range": list(self.feature_range)}

    @classmethod
    def _from_fields(cls, data: dict[str, Any], where: str) -> MinMaxScaler:
        raw = data.get("feature_range")
        if not (isinstance(raw, list) and len(raw) == 2):
            raise DataError(f"{where}: field 'feature_range' must be [low, high]")
        try:
            return cls((raw[0], raw[1]))
        except (ConfigError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: field 'feature_range': {exc}") from exc


_SCALERS: dict[str, type[_Scaler]] = {
    StandardScaler.kind: StandardScaler,
    MinMaxScaler.kind: MinMaxScaler,
}

Scaler = StandardScaler | MinMaxScaler


def scaler_from_dict(data: dict[str, Any], where: str = "<dict>") -> Scaler:
    """Rebuild whichever scaler ``data`` describes (field ``type``)."""
    return _Scaler.from_dict(data, where)  # type: ignore[return-value]


def load_scaler(path: str | os.PathLike[str]) -> Scaler:
    """Load whichever scaler type was saved at ``path``."""
    return _Scaler.load(path)  # type: ignore[return-value]
