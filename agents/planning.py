"""Sampling-based trajectory optimisers for model-predictive control: CEM and MPPI.

Both optimise a ``(horizon, action_dim)`` action sequence in ``[lower, upper]`` against a batched
objective ``(P, H, A) -> (P,)`` (for PETS: the mean imagined return over particles) and keep their
last solution so the next call is warm-started by shifting it one step (PETS, Chua et al. 2018;
mbrl-lib's ``TrajectoryOptimizer``): after acting on the first action, :meth:`advance` drops it
and appends the middle of the action range.

* :class:`CEMPlanner`, the cross-entropy method (Rubinstein 1999; as in PETS / mbrl-lib's
  ``CEMOptimizer``): sample a population around the mean with a standard deviation capped so
  two sigmas stay inside the bounds, refit mean and std to the top ``num_elites``, blend with
  ``momentum`` on the old values.
* :class:`MPPIPlanner`, model-predictive path integral control with reward-weighted averaging
  and temporally smoothed noise (Williams et al. 2017; the variant of Nagabandi et al. 2019
  "PDDM" used by mbrl-lib's ``MPPIOptimizer``): ``weights = softmax(temperature * returns)``,
  noise ``n_t = beta * eps_t + (1 - beta) * n_{t-1}``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from envs.errors import ConfigError

__all__ = ["CEMPlanner", "MPPIPlanner", "Objective"]

# (P, H, A) candidate action sequences -> (P,) score to maximise.
Objective = Callable[[torch.Tensor], torch.Tensor]


class _Planner:
    """Shared state: bounds, the warm-start mean, the generator."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        population: int,
        iterations: int,
        lower: float = -1.0,
        upper: float = 1.0,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        for name, value in (
            ("action_dim", action_dim),
            ("horizon", horizon),
            ("population", population),
            ("iterations", iterations),
        ):
            if int(value) < 1:
                raise ConfigError(f"planner.{name}: expected >= 1, got {value}")
        if not lower < upper:
            raise ConfigError(f"planner bounds: expected lower < upper, got {lower}, {upper}")
        self.action_dim, self.horizon = int(action_dim), int(horizon)
        self.population, self.iterations = int(population), int(iterations)
        self.lower, self.upper = float(lower), float(upper)
        self.device = torch.device(device)
        self.generator = generator
        self.mean = torch.empty(0)
        self.last_score = float("nan")  # best objective value of the last plan (for logging)
        self.reset()

    def _randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)

    def reset(self) -> None:
        """Forget the warm start: the mean becomes the middle of the action range."""
        mid = 0.5 * (self.lower + self.upper)
        self.mean = torch.full((self.horizon, self.action_dim), mid, device=self.device)

    def advance(self) -> None:
        """Shift the kept plan one step after its first action was executed (warm start)."""
        mid = 0.5 * (self.lower + self.upper)
        self.mean = torch.cat(
            [self.mean[1:], torch.full((1, self.action_dim), mid, device=self.device)]
        )


class CEMPlanner(_Planner):
    """Cross-entropy method over action sequences.

    Args:
        action_dim: action width.
        horizon: planning horizon H.
        population: sequences sampled per iteration.
        num_elites: best sequences used to refit the sampling distribution.
        iterations: refits per call.
        momentum: weight of the OLD mean/std in the update (mbrl-lib's ``alpha``, 0.1).
        init_std: initial standard deviation (in action units).
        lower: lower action bound.
        upper: upper action bound.
        device: torch device of the samples.
        generator: torch generator for the samples.
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        population: int = 400,
        num_elites: int = 40,
        iterations: int = 5,
        momentum: float = 0.1,
        init_std: float = 0.5,
        lower: float = -1.0,
        upper: float = 1.0,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        if not 1 <= num_elites <= population:
            raise ConfigError(
                f"planner.num_elites: expected in [1, population={population}], got {num_elites}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"planner.momentum: expected in [0, 1), got {momentum}")
        if init_std <= 0:
            raise ConfigError(f"planner.init_std: expected > 0, got {init_std}")
        self.num_elites, self.momentum, self.init_std = int(num_elites), momentum, init_std
        super().__init__(
            action_dim, horizon, population, iterations, lower, upper, device, generator
        )

    @torch.no_grad()
    def plan(self, objective: Objective) -> torch.Tensor:
        """Optimise from the warm-started mean; returns the ``(H, A)`` plan (also kept)."""
        mean = self.mean.clone()
        std = torch.full_like(mean, self.init_std)
        best_score, best_seq = -float("inf"), mean.clone()
        for _ in range(self.iterations):
            # Cap std so mean +- 2 std stays within the bounds (PETS / mbrl-lib constrained var).
            room = torch.minimum(mean - self.lower, self.upper - mean).clamp_min(0.0)
            sample_std = torch.minimum(std, 0.5 * room + 1e-6)
            noise = self._randn((self.population, self.horizon, self.action_dim))
            samples = (mean + sample_std * noise).clamp(self.lower, self.upper)
            scores = objective(samples)
            scores = torch.nan_to_num(scores, nan=-1e10, neginf=-1e10)
            top = torch.topk(scores, self.num_elites).indices
            elites = samples[top]
            if float(scores[top[0]]) > best_score:
                best_score, best_seq = float(scores[top[0]]), samples[top[0]].clone()
            mean = self.momentum * mean + (1.0 - self.momentum) * elites.mean(dim=0)
            std = self.momentum * std + (1.0 - self.momentum) * elites.std(dim=0, unbiased=False)
        del best_seq  # the mean is smoother to execute than the single best sample
        self.mean = mean
        self.last_score = best_score
        return mean.clone()


class MPPIPlanner(_Planner):
    """MPPI with reward-weighted averaging and smoothed noise.

    Args:
        action_dim: action width.
        horizon: planning horizon H.
        population: sequences sampled per iteration.
        iterations: reweighting rounds per call.
        temperature: inverse temperature ``kappa`` of ``softmax(kappa * returns)``.
        noise_std: standard deviation of the exploration noise.
        beta: smoothing of the noise through time (1 = white noise).
        lower: lower action bound.
        upper: upper action bound.
        device: torch device of the samples.
        generator: torch generator for the samples.
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        population: int = 400,
        iterations: int = 3,
        temperature: float = 10.0,
        noise_std: float = 0.5,
        beta: float = 0.6,
        lower: float = -1.0,
        upper: float = 1.0,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"planner.temperature: expected > 0, got {temperature}")
        if noise_std <= 0:
            raise ConfigError(f"planner.noise_std: expected > 0, got {noise_std}")
        if not 0.0 < beta <= 1.0:
            raise ConfigError(f"planner.beta: expected in (0, 1], got {beta}")
        self.temperature, self.noise_std, self.beta = temperature, noise_std, beta
        super().__init__(
            action_dim, horizon, population, iterations, lower, upper, device, generator
        )

    @torch.no_grad()
    def plan(self, objective: Objective) -> torch.Tensor:
        """Optimise from the warm-started mean; returns the ``(H, A)`` plan (also kept)."""
        mean = self.mean.clone()
        best_score = -float("inf")
        for _ in range(self.iterations):
            eps = self.noise_std * self._randn((self.population, self.horizon, self.action_dim))
            noise = torch.empty_like(eps)
            noise[:, 0] = self.beta * eps[:, 0]
            for t in range(1, self.horizon):
                noise[:, t] = self.beta * eps[:, t] + (1.0 - self.beta) * noise[:, t - 1]
            samples = (mean + noise).clamp(self.lower, self.upper)
            scores = torch.nan_to_num(objective(samples), nan=-1e10, neginf=-1e10)
            best_score = max(best_score, float(scores.max()))
            weights = torch.softmax(self.temperature * (scores - scores.max()), dim=0)
            mean = (weights.view(-1, 1, 1) * samples).sum(dim=0)
        self.mean = mean
        self.last_score = best_score
        return mean.clone()
