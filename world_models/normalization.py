"""Per-feature standardisation kept inside the model's ``state_dict``.

The ensemble sees ``(x - mean) / std`` and predicts normalised targets; both statistics are
registered buffers, so they are saved and loaded with the weights and a reloaded model predicts
exactly what the trained one did (mbrl-lib keeps its ``input_normalizer`` next to the model for
the same reason).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Normalizer"]


class Normalizer(nn.Module):
    """Feature-wise mean/std standardisation with statistics stored as buffers.

    Args:
        dim: number of features.
        eps: floor on the standard deviation, so constant features do not divide by zero.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = int(dim)
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))

    @torch.no_grad()
    def fit(self, data: torch.Tensor) -> None:
        """Set mean and std from ``data`` shaped ``(n, dim)`` (population std, floored)."""
        data = data.reshape(-1, self.dim).to(self.mean.dtype)
        self.mean.copy_(data.mean(dim=0))
        std = data.std(dim=0, unbiased=False) if data.shape[0] > 1 else torch.ones_like(self.std)
        self.std.copy_(std.clamp_min(self.eps))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` over the last axis."""
        return (x - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: ``z * std + mean``."""
        return z * self.std + self.mean

    def denormalize_logvar(self, logvar: torch.Tensor) -> torch.Tensor:
        """Map a log-variance in normalised units back to data units (``+ 2 log std``)."""
        return logvar + 2.0 * torch.log(self.std)
