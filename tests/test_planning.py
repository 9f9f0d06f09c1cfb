"""CEM and MPPI planners: they find the optimum of known toy problems, respect the bounds,
warm-start by shifting the last plan, and reject bad settings."""

from __future__ import annotations

import pytest
import torch

from agents.planning import CEMPlanner, MPPIPlanner
from envs.errors import ConfigError

HORIZON, ACTION_DIM = 6, 2
TARGET = torch.stack(
    [0.6 * torch.sin(torch.arange(HORIZON) * 0.7), torch.linspace(-0.5, 0.5, HORIZON)], dim=-1
)


def _quadratic(seqs: torch.Tensor) -> torch.Tensor:
    """Maximised exactly at ``TARGET`` (inside the bounds)."""
    return -(seqs - TARGET).square().sum(dim=(1, 2))


def test_cem_finds_the_optimum_of_a_quadratic() -> None:
    planner = CEMPlanner(
        ACTION_DIM,
        HORIZON,
        population=300,
        num_elites=30,
        iterations=8,
        generator=torch.Generator().manual_seed(0),
    )
    plan = planner.plan(_quadratic)
    assert plan.shape == (HORIZON, ACTION_DIM)
    assert float((plan - TARGET).abs().max()) < 0.05
    assert planner.last_score > -0.05


def test_mppi_finds_the_optimum_of_a_quadratic() -> None:
    planner = MPPIPlanner(
        ACTION_DIM,
        HORIZON,
        population=400,
        iterations=10,
        temperature=50.0,
        noise_std=0.12,
        beta=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    # MPPI keeps its sampling noise fixed, so its precision is a fraction of ``noise_std``.
    plan = planner.plan(_quadratic)
    assert float((plan - TARGET).abs().max()) < 0.1
    assert float(_quadratic(plan[None])) > -0.02


def _point_mass_return(seqs: torch.Tensor) -> torch.Tensor:
    """x_{t+1} = x_t + 0.25 a_t from x_0 = -1; reward -(x - 1)^2: optimum is full throttle."""
    x = torch.full((seqs.shape[0],), -1.0)
    total = torch.zeros(seqs.shape[0])
    for t in range(seqs.shape[1]):
        x = x + 0.25 * seqs[:, t, 0]
        total -= (x - 1.0).square()
    return total


@pytest.mark.parametrize("kind", ["cem", "mppi"])
def test_planners_solve_a_bounded_control_problem(kind: str) -> None:
    gen = torch.Generator().manual_seed(1)
    if kind == "cem":
        planner = CEMPlanner(1, 5, population=200, num_elites=20, iterations=10, generator=gen)
    else:
        planner = MPPIPlanner(1, 5, population=300, iterations=10, temperature=20.0, generator=gen)
    plan = planner.plan(_point_mass_return)
    # Moving right at the bound (a = 1) is optimal for all 5 steps (x only reaches 0.25 < 1).
    best = float(_point_mass_return(torch.ones(1, 5, 1)))
    assert float(_point_mass_return(plan[None])) > best - 0.2  # within 2.5 % of the optimum
    assert float(plan[:3].min()) > 0.9 and float(plan.max()) <= 1.0


def test_warm_start_shifts_the_plan() -> None:
    planner = CEMPlanner(1, 4, population=50, num_elites=5, iterations=2)
    planner.mean = torch.tensor([[0.1], [0.2], [0.3], [0.4]])
    planner.advance()
    assert planner.mean.flatten().tolist() == pytest.approx([0.2, 0.3, 0.4, 0.0])
    planner.reset()
    assert planner.mean.abs().sum() == 0


def test_planners_reject_bad_settings() -> None:
    with pytest.raises(ConfigError, match="num_elites"):
        CEMPlanner(1, 5, population=10, num_elites=20)
    with pytest.raises(ConfigError, match="momentum"):
        CEMPlanner(1, 5, momentum=1.0)
    with pytest.raises(ConfigError, match="horizon"):
        MPPIPlanner(1, 0)
    with pytest.raises(ConfigError, match="beta"):
        MPPIPlanner(1, 5, beta=0.0)
