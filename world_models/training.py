"""Fit a :class:`~world_models.ensemble.GaussianEnsemble`: bootstrap, Gaussian NLL, early
stopping on held-out transitions, elites by validation error (PETS, Chua et al. 2018; MBPO,
Janner et al. 2019; mbrl-lib's ``ModelTrainer``).

One call of :func:`train_ensemble`:

1. refits the input/target normalisers on all the data given;
2. holds out ``holdout_ratio`` of the transitions (at most ``max_holdout``) for validation;
3. draws one bootstrap sample (with replacement) of the remaining indices per member, so members
   disagree where data is thin (PETS section 4.1);
4. trains all members together (one batched forward per minibatch) on the sum of their Gaussian
   NLLs plus the log-variance bound penalty;
5. after every epoch (one pass over each member's bootstrap, repeated until at least
   ``min_epoch_updates`` gradient steps) measures each member's held-out MSE of the mean
   (normalised units), keeps a copy of each member's best weights, and stops when no member
   improved by more than ``improvement_threshold`` (relative) for ``patience`` epochs (MBPO's
   ``max_epochs_since_update`` = 5);
6. restores each member's best weights and marks the ``num_elites`` best members as elites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from envs.errors import ConfigError, DataError, check_known_fields
from world_models.ensemble import EnsembleLinear, GaussianEnsemble

__all__ = ["EnsembleTrainConfig", "FitResult", "train_ensemble"]


@dataclass
class EnsembleTrainConfig:
    """Optimisation settings for one ensemble fit (defaults follow MBPO / mbrl-lib)."""

    learning_rate: float = 1e-3  # Adam step size
    weight_decay: float = 5e-5  # L2 penalty (Adam's weight_decay), keeps extrapolation tame
    batch_size: int = 256  # transitions per member per gradient step
    holdout_ratio: float = 0.2  # share of transitions held out for early stopping and elites
    max_holdout: int = 5000  # cap on held-out transitions (MBPO)
    patience: int = 5  # epochs without improvement of any member before stopping
    improvement_threshold: float = 0.01  # relative held-out MSE drop that counts as improvement
    max_epochs: int = 200  # hard cap on epochs per fit
    min_epoch_updates: int = 20  # an epoch repeats passes until this many gradient steps
    bootstrap: bool = True  # resample training indices per member (False: all see all data)

    def validate(self, prefix: str = "model_training") -> None:
        """Raise ``ConfigError`` naming the first field whose value cannot work."""
        positive = ("learning_rate", "batch_size", "max_holdout", "patience", "max_epochs")
        for name in (*positive, "min_epoch_updates"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{prefix}.{name}: expected > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"{prefix}.weight_decay: expected >= 0, got {self.weight_decay}")
        if not 0.0 < self.holdout_ratio < 1.0:
            raise ConfigError(
                f"{prefix}.holdout_ratio: expected in (0, 1), got {self.holdout_ratio}"
            )
        if self.improvement_threshold < 0:
            raise ConfigError(
                f"{prefix}.improvement_threshold: expected >= 0, got {self.improvement_threshold}"
            )

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], prefix: str = "model_training"
    ) -> EnsembleTrainConfig:
        """Build from a plain dict; unknown keys are a ``ConfigError``."""
        check_known_fields(cls, values, prefix)
        config = cls(**values)
        config.validate(prefix)
        return config


@dataclass
class FitResult:
    """What one fit did.

    Attributes:
        epochs: epochs run before early stopping (or the cap).
        train_loss: mean training loss of the last epoch (sum over members).
        holdout_mse: best held-out MSE per member (normalised target units).
        elites: indices of the elite members.
        n_train: transitions used for training (before bootstrapping).
        n_holdout: held-out transitions.
    """

    epochs: int
    train_loss: float
    holdout_mse: list[float]
    elites: list[int]
    n_train: int
    n_holdout: int

    @property
    def elite_mse(self) -> float:
        """Mean held-out MSE of the elites."""
        return float(sum(self.holdout_mse[i] for i in self.elites) / len(self.elites))


def make_optimizer(model: GaussianEnsemble, config: EnsembleTrainConfig) -> torch.optim.Optimizer:
    """Adam over the ensemble's parameters (created once and kept across fits, as mbrl-lib)."""
    return torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )


@torch.no_grad()
def _holdout_mse(
    model: GaussianEnsemble, z_in: torch.Tensor, z_target: torch.Tensor
) -> torch.Tensor:
    mean, _ = model(z_in)  # shared input: (K, H, out)
    return (mean - z_target).square().mean(dim=(1, 2))


def train_ensemble(
    model: GaussianEnsemble,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: EnsembleTrainConfig | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> FitResult:
    """Fit ``model`` on ``(inputs, targets)`` with bootstrapping and early stopping.

    Args:
        model: the ensemble (its normalisers are refitted on all of ``inputs``/``targets``).
        inputs: ``(n, in_dim)`` raw inputs.
        targets: ``(n, out_dim)`` raw targets.
        config: optimisation settings.
        optimizer: an optimiser over ``model``'s parameters (made here when None).
        generator: torch generator for the split, bootstrap and minibatch order.

    Returns:
        A :class:`FitResult`; the model holds each member's best weights and the elites.

    Raises:
        DataError: for mismatched shapes, non-finite values, or fewer than 2 transitions.
    """
    cfg = config if config is not None else EnsembleTrainConfig()
    cfg.validate()
    device = next(model.parameters()).device
    inputs = torch.as_tensor(inputs, dtype=torch.float32, device=device)
    targets = torch.as_tensor(targets, dtype=torch.float32, device=device)
    n = inputs.shape[0]
    if inputs.dim() != 2 or inputs.shape[1] != model.in_dim:
        raise DataError(
            f"ensemble fit: inputs shape {tuple(inputs.shape)}, expected (n, {model.in_dim})"
        )
    if targets.shape != (n, model.out_dim):
        raise DataError(
            f"ensemble fit: targets shape {tuple(targets.shape)}, expected ({n}, {model.out_dim})"
        )
    if n < 2:
        raise DataError(f"ensemble fit: got {n} transitions, need at least 2")
    for name, t in (("inputs", inputs), ("targets", targets)):
        bad = (~torch.isfinite(t)).any(dim=1).nonzero()
        if bad.numel():
            raise DataError(f"ensemble fit: {name} row {int(bad[0])} has NaN or infinite values")
    if optimizer is None:
        optimizer = make_optimizer(model, cfg)
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def randperm(k: int) -> torch.Tensor:
        return torch.randperm(k, generator=generator, device=gen_device).to(device)

    model.input_normalizer.fit(inputs)
    model.target_normalizer.fit(targets)
    z_in = model.input_normalizer.normalize(inputs)
    z_target = model.target_normalizer.normalize(targets)

    n_holdout = max(1, min(int(n * cfg.holdout_ratio), cfg.max_holdout))
    order = randperm(n)
    hold_idx, train_idx = order[:n_holdout], order[n_holdout:]
    n_train = train_idx.numel()
    k = model.ensemble_size
    if cfg.bootstrap:
        draws = torch.randint(n_train, (k, n_train), generator=generator, device=gen_device)
        member_idx = train_idx[draws.to(device)]  # (K, n_train)
    else:
        member_idx = train_idx.unsqueeze(0).expand(k, -1)
    hold_in, hold_target = z_in[hold_idx], z_target[hold_idx]

    # Per-member best snapshot: parameters shaped (K, ...) are copied member-wise.
    params = dict(model.named_parameters())
    member_params = {
        f"{mod_name}.{p_name}": p
        for mod_name, module in model.named_modules()
        if isinstance(module, EnsembleLinear)
        for p_name, p in module.named_parameters(recurse=False)
    }
    best_state = {name: p.detach().clone() for name, p in params.items()}
    best_mse = _holdout_mse(model, hold_in, hold_target)
    epochs_since_update, epoch, train_loss = 0, 0, float("nan")
    batch = min(cfg.batch_size, n_train)

    while epoch < cfg.max_epochs:
        model.train()
        total, steps = torch.zeros((), device=device), 0
        # With little data one pass is a handful of steps and patience would run out before
        # the model has moved; repeat passes up to ``min_epoch_updates`` steps per epoch.
        while steps < cfg.min_epoch_updates:
            perm = member_idx.gather(1, torch.stack([randperm(n_train) for _ in range(k)]))
            for start in range(0, n_train, batch):
                idx = perm[:, start : start + batch]  # (K, b)
                loss = model.loss(z_in[idx], z_target[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
                steps += 1
        epoch += 1
        train_loss = float(total) / max(steps, 1)
        model.eval()
        mse = _holdout_mse(model, hold_in, hold_target)
        improved = (best_mse - mse) / best_mse.clamp_min(1e-12) > cfg.improvement_threshold
        if bool(improved.any()):
            with torch.no_grad():
                for name, p in member_params.items():
                    best_state[name][improved] = p.detach()[improved]
                # Shared parameters (log-variance bounds) follow the latest improving epoch.
                for name, p in params.items():
                    if name not in member_params:
                        best_state[name].copy_(p.detach())
            best_mse = torch.where(improved, mse, best_mse)
            epochs_since_update = 0
        else:
            epochs_since_update += 1
        if epochs_since_update >= cfg.patience:
            break

    with torch.no_grad():
        for name, p in params.items():
            p.copy_(best_state[name])
    model.eval()
    elites = torch.argsort(best_mse)[: model.num_elites]
    model.set_elites(elites)
    return FitResult(
        epochs=epoch,
        train_loss=train_loss,
        holdout_mse=[float(v) for v in best_mse.cpu()],
        elites=sorted(int(i) for i in elites.cpu()),
        n_train=int(n_train),
        n_holdout=int(n_holdout),
    )
