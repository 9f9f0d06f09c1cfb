"""Per-column standard scaling fitted on the training split only (NumPy, no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.errors import DataError


class StandardScaler:
    """``z = (x - mean) / scale`` per column; constant columns get scale 1.

    Attributes:
        mean: ``(C,)`` column means (float64), None until fitted.
        scale: ``(C,)`` column standard deviations (float64), None until fitted.
    """

    def __init__(self, mean: np.ndarray | None = None, scale: np.ndarray | None = None) -> None:
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` (or ``from_dict``) has set the parameters."""
        return self.mean is not None

    def fit(self, x: np.ndarray, what: str = "data") -> StandardScaler:
        """Fit on ``x`` of shape ``(N, C)``; ``what`` names the data in error messages."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise DataError(
                f"{what}: expected a non-empty (N, C) array to fit a scaler, got {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            row, col = np.argwhere(~np.isfinite(x))[0]
            raise DataError(f"{what}: non-finite value at row {row}, column {col}")
        self.mean = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale = np.where(scale > 1e-12, scale, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Return the scaled array as float32."""
        if not self.fitted:
            raise DataError("scaler used before fit")
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)

    def inverse_mean(self, z: np.ndarray) -> np.ndarray:
        """Map scaled values back to data units."""
        return np.asarray(z, dtype=np.float64) * self.scale + self.mean

    def inverse_std(self, s: np.ndarray) -> np.ndarray:
        """Map scaled standard deviations back to data units (scale only, no shift)."""
        return np.asarray(s, dtype=np.float64) * self.scale

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters (lists of floats)."""
        return {
            "mean": None if self.mean is None else self.mean.tolist(),
            "scale": None if self.scale is None else self.scale.tolist(),
        }

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> StandardScaler:
        """Rebuild from ``to_dict`` output."""
        return cls(params.get("mean"), params.get("scale"))
