"""Probabilistic ensemble: K Gaussian MLPs evaluated as ONE batched network (PETS, Chua et al.
2018; mbrl-lib's ``GaussianMLP``).

Every linear layer holds weights shaped ``(members, in, out)`` and computes
``torch.baddbmm(bias, x, weight)``: one batched matmul per layer for all members, no Python loop
over members. Each member outputs a mean and a log-variance per target; the log-variance is
softly bounded by learned limits (Chua et al. 2018, appendix A.1; mbrl-lib ``GaussianMLP``)::

    logvar = max_logvar - softplus(max_logvar - raw)
    logvar = min_logvar + softplus(logvar - min_logvar)

and the training loss (``gaussian_nll``) adds ``0.01 * (sum max_logvar - sum min_logvar)`` so the
bounds tighten around what the data supports. Inputs and targets are standardised by
:class:`~world_models.normalization.Normalizer` buffers that live in the ``state_dict``.

Elites (the members with the lowest held-out error, ``world_models.training``) are recorded in the
``elite_indices`` buffer; predictions used for planning and rollouts draw from them only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from envs.errors import ConfigError, check_known_fields
from world_models.normalization import Normalizer

__all__ = ["EnsembleConfig", "EnsembleLinear", "GaussianEnsemble", "gaussian_nll"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,  # "swish", what PETS and MBPO use
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}


@dataclass
class EnsembleConfig:
    """Shape of a probabilistic ensemble (defaults follow PETS / MBPO)."""

    ensemble_size: int = 7  # members, each trained on its own bootstrap of the data
    num_elites: int = 5  # members with the best held-out error used for predictions
    hidden: list[int] = field(default_factory=lambda: [200, 200, 200, 200])  # hidden widths
    activation: str = "silu"  # one of silu, relu, tanh, elu
    min_logvar: float = -10.0  # initial soft lower bound of the log-variance (normalised units)
    max_logvar: float = 0.5  # initial soft upper bound of the log-variance (normalised units)

    def validate(self, prefix: str = "ensemble") -> None:
        """Raise ``ConfigError`` naming the first field whose value cannot work."""
        if self.ensemble_size < 1:
            raise ConfigError(f"{prefix}.ensemble_size: expected >= 1, got {self.ensemble_size}")
        if not 1 <= self.num_elites <= self.ensemble_size:
            raise ConfigError(
                f"{prefix}.num_elites: expected in [1, ensemble_size={self.ensemble_size}], "
                f"got {self.num_elites}"
            )
        if not self.hidden or any(int(w) < 1 for w in self.hidden):
            raise ConfigError(f"{prefix}.hidden: expected positive widths, got {self.hidden}")
        if self.activation not in _ACTIVATIONS:
            raise ConfigError(
                f"{prefix}.activation: expected one of {sorted(_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        if not self.min_logvar < self.max_logvar:
            raise ConfigError(
                f"{prefix}.min_logvar: expected < max_logvar ({self.max_logvar}), "
                f"got {self.min_logvar}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], prefix: str = "ensemble") -> EnsembleConfig:
        """Build from a plain dict; unknown keys are a ``ConfigError``."""
        check_known_fields(cls, values, prefix)
        values = dict(values)
        if "hidden" in values:
            values["hidden"] = [int(w) for w in values["hidden"]]
        config = cls(**values)
        config.validate(prefix)
        return config


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers computed by one ``baddbmm``.

    Input ``(K, B, in)`` gives ``(K, B, out)``; a ``(B, in)`` input is shared by all members.
    ``members`` (a LongTensor of member indices) selects a subset of the layers, e.g. the elites.

    Args:
        n_members: number of members K.
        in_features: input width.
        out_features: output width.
    """

    def __init__(self, n_members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.n_members, self.in_features, self.out_features = n_members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n_members, 1, out_features))
        # Truncated normal with std 1/(2 sqrt(in)), as mbrl-lib's ``truncated_normal_init``.
        std = 1.0 / (2.0 * math.sqrt(in_features))
        nn.init.trunc_normal_(self.weight, std=std, a=-2.0 * std, b=2.0 * std)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """Apply every (selected) member to its slice of ``x``, or all to a shared ``(B, in)``."""
        weight, bias = self.weight, self.bias
        if members is not None:
            weight, bias = weight.index_select(0, members), bias.index_select(0, members)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(weight.shape[0], -1, -1)
        return torch.baddbmm(bias, x, weight)

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, in={self.in_features}, out={self.out_features}"


def gaussian_nll(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """Per-member Gaussian NLL without constants: ``mean((mu - y)^2 * exp(-lv) + lv)``.

    Args:
        mean: ``(K, B, out)`` predicted means.
        logvar: ``(K, B, out)`` predicted log-variances.
        target: ``(K, B, out)`` targets (or ``(B, out)`` shared).

    Returns:
        ``(K,)`` loss per member (PETS eq. 2 up to the factor 1/2 and the constant).
    """
    return ((mean - target).square() * torch.exp(-logvar) + logvar).mean(dim=(-2, -1))


class GaussianEnsemble(nn.Module):
    """K MLPs ``in -> hidden... -> 2 * out`` giving a Gaussian per target, evaluated together.

    Args:
        in_dim: input width.
        out_dim: target width.
        config: sizes, activation and initial log-variance bounds.

    Attributes:
        input_normalizer: standardises inputs (fitted by the trainer, saved in the state dict).
        target_normalizer: standardises targets; predictions are mapped back to data units.
        elite_indices: LongTensor of the elite members (all members until a fit selects them).
    """

    def __init__(self, in_dim: int, out_dim: int, config: EnsembleConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else EnsembleConfig()
        self.config.validate()
        cfg = self.config
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.ensemble_size = cfg.ensemble_size
        self.hidden_layers = nn.ModuleList()
        last = self.in_dim
        for width in cfg.hidden:
            self.hidden_layers.append(EnsembleLinear(cfg.ensemble_size, last, int(width)))
            last = int(width)
        self.activation = _ACTIVATIONS[cfg.activation]()
        # One head gives mean and raw log-variance together: one matmul instead of two.
        self.head = EnsembleLinear(cfg.ensemble_size, last, 2 * self.out_dim)
        self.min_logvar = nn.Parameter(torch.full((self.out_dim,), float(cfg.min_logvar)))
        self.max_logvar = nn.Parameter(torch.full((self.out_dim,), float(cfg.max_logvar)))
        self.input_normalizer = Normalizer(self.in_dim)
        self.target_normalizer = Normalizer(self.out_dim)
        self.register_buffer("elite_indices", torch.arange(cfg.num_elites, dtype=torch.long))

    @property
    def num_elites(self) -> int:
        """Number of elite members."""
        return int(self.elite_indices.numel())

    def set_elites(self, indices: Sequence[int] | torch.Tensor) -> None:
        """Record which members are elites (sorted, unique, in range)."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten().unique(sorted=True)
        if idx.numel() != self.num_elites or idx.min() < 0 or idx.max() >= self.ensemble_size:
            raise ConfigError(
                f"ensemble elites: expected {self.num_elites} distinct members in "
                f"[0, {self.ensemble_size}), got {idx.tolist()}"
            )
        self.elite_indices.copy_(idx.to(self.elite_indices.device))

    def forward(
        self, z: torch.Tensor, members: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and soft-bounded log-variance in NORMALISED units.

        Args:
            z: normalised inputs ``(B, in)`` shared by all selected members, or ``(M, B, in)``
                one slice per selected member.
            members: LongTensor of member indices to evaluate (default: all K).

        Returns:
            ``(mean, logvar)``, each ``(M, B, out)``.
        """
        h = z
        for layer in self.hidden_layers:
            h = self.activation(layer(h, members))
        mean, raw_logvar = self.head(h, members).chunk(2, dim=-1)
        # Soft bounds (Chua et al. 2018, appendix A.1): smooth, with gradients at the limits.
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def loss(self, z_in: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
        """Training loss on normalised ``(K, B, in)`` inputs and ``(K, B, out)`` targets.

        Sum over members of the Gaussian NLL plus ``0.01 * (sum max_logvar - sum min_logvar)``
        (PETS / mbrl-lib), which keeps the learned log-variance bounds tight.
        """
        mean, logvar = self(z_in)
        nll = gaussian_nll(mean, logvar, z_target).sum()
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    def predict(
        self, x: torch.Tensor, members: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance in DATA units for raw inputs (shapes as :meth:`forward`)."""
        mean_z, logvar_z = self(self.input_normalizer.normalize(x), members)
        return (
            self.target_normalizer.denormalize(mean_z),
            self.target_normalizer.denormalize_logvar(logvar_z),
        )

    @torch.no_grad()
    def predictive_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Moment-matched mixture over the elites for shared inputs ``(B, in)``.

        Returns:
            ``(mean, variance)`` each ``(B, out)``: the mean of the elites' means, and the
            mean aleatoric variance plus the variance of the means (epistemic disagreement,
            which is what grows away from the training data).
        """
        mean, logvar = self.predict(x, self.elite_indices)
        mixture_mean = mean.mean(dim=0)
        aleatoric = logvar.exp().mean(dim=0)
        epistemic = mean.var(dim=0, unbiased=False)
        return mixture_mean, aleatoric + epistemic
