"""Small network building blocks shared by our agents: MLPs and batched ensembles.

An ensemble of K equally shaped MLPs (SAC's twin critics, a Q-learning ensemble, a dynamics
ensemble) is evaluated as ONE network whose linear layers hold weights of shape ``(K, in, out)``
and compute ``torch.baddbmm(bias, x, weight)``: one batched matmul per layer for all members,
instead of K small matmuls and K Python calls (the same trick as mbrl-lib's and TD-MPC2's
ensembles, without ``torch.func.vmap``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BatchedLinear", "EnsembleMLP", "mlp"]


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A plain MLP ``in -> hidden... -> out`` with ``activation`` between layers (none at the end).

    Args:
        in_dim: input width.
        hidden: widths of the hidden layers (may be empty: a single linear layer).
        out_dim: output width.
        activation: activation class placed after every hidden layer.
    """
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers += [nn.Linear(last, int(width)), activation()]
        last = int(width)
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


class BatchedLinear(nn.Module):
    """K independent linear layers applied in one ``baddbmm``.

    Input ``(K, B, in)`` gives ``(K, B, out)``; a ``(B, in)`` input is shared by all members.
    Initialised like ``nn.Linear`` per member: uniform in ``±1/sqrt(in)`` for weights and biases.

    Args:
        n_members: K, the number of independent layers.
        in_features: input width.
        out_features: output width.
    """

    def __init__(self, n_members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.n_members, self.in_features, self.out_features = n_members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_members, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform ``±1/sqrt(in)``, the bound ``nn.Linear``'s default init works out to."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every member to its slice of ``x`` (or all members to a shared ``(B, in)``)."""
        if x.dim() == 2:
            # Shared input: (B, in) @ (K, in, out) broadcasts to (K, B, out) in one matmul.
            return torch.matmul(x, self.weight) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, in={self.in_features}, out={self.out_features}"


class EnsembleMLP(nn.Module):
    """K MLPs of identical shape evaluated together; output ``(K, B, out)``.

    Args:
        n_members: K.
        in_dim: input width.
        hidden: hidden widths.
        out_dim: output width.
        activation: activation class between layers.
    """

    def __init__(
        self,
        n_members: int,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.n_members = n_members
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [BatchedLinear(n_members, last, int(width)), activation()]
            last = int(width)
        layers.append(BatchedLinear(n_members, last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in)`` shared by all members, or ``(K, B, in)`` one slice per member."""
        return self.layers(x)
