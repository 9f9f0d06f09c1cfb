"""Trading-aware dynamics on a tiny synthetic market: the ensemble learns only the exogenous
return process, the known accounting gives the position and the reward exactly."""

from __future__ import annotations

import pytest
import torch

from agents.planning import CEMPlanner
from envs.errors import ConfigError, DataError
from world_models import (
    EnsembleConfig,
    EnsembleTrainConfig,
    ModelEnv,
    StateSplit,
    TradingAwareDynamics,
)

COST = 0.01  # proportional cost per unit of position change
PHI = 0.9  # AR(1) coefficient of the exogenous return


def accounting(obs: torch.Tensor, action: torch.Tensor, next_exo: torch.Tensor):
    """Known bookkeeping: new position = action, reward = position * next return - cost."""
    position = obs[..., 1]
    target = action[..., 0]
    next_return = next_exo[..., 0]
    reward = target * next_return - COST * (target - position).abs()
    return torch.stack([next_return, target], dim=-1), reward


def _transitions(n: int, seed: int = 0):
    """obs = [return r_t, position]; r_{t+1} = PHI r_t + 0.01 noise (exogenous)."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(n, generator=gen) - 0.5
    pos = torch.rand(n, generator=gen) * 2 - 1
    act = torch.rand(n, 1, generator=gen) * 2 - 1
    obs = torch.stack([r, pos], dim=-1)
    next_r = PHI * r + 0.01 * torch.randn(n, generator=gen)
    next_obs, reward = accounting(obs, act, next_r.unsqueeze(-1))
    return obs, act, reward, next_obs


def _fitted(seed: int = 0) -> TradingAwareDynamics:
    torch.manual_seed(seed)
    model = TradingAwareDynamics(
        StateSplit(obs_dim=2, exogenous=(0,)),
        accounting,
        action_dim=1,
        config=EnsembleConfig(ensemble_size=4, num_elites=3, hidden=[32, 32]),
        train_config=EnsembleTrainConfig(max_epochs=25),
    )
    model.fit(*_transitions(300, seed), generator=torch.Generator().manual_seed(seed))
    return model


def test_state_split_from_blocks_and_errors() -> None:
    split = StateSplit.from_blocks({"market": slice(0, 4), "portfolio": slice(4, 7)}, ["market"])
    assert split.obs_dim == 7
    assert split.exogenous == (0, 1, 2, 3) and split.endogenous == (4, 5, 6)
    with pytest.raises(ConfigError, match="not in the observation"):
        StateSplit.from_blocks({"market": slice(0, 4)}, ["prices"])
    with pytest.raises(ConfigError, match="strictly increasing"):
        StateSplit(obs_dim=3, exogenous=(1, 1))
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        StateSplit(obs_dim=3, exogenous=(0, 3))


def test_market_part_is_learned_and_accounting_is_exact() -> None:
    model = _fitted()
    assert model.ensemble.in_dim == 1 and model.ensemble.out_dim == 1  # market only
    obs, act, _, _ = _transitions(64, seed=5)
    for grouped in (False, True):
        if grouped:  # (E, M, d): one block of rows per elite, the trajectory-sampling layout
            o = obs.reshape(1, 64, 2).expand(3, 64, 2)
            a = act.reshape(1, 64, 1).expand(3, 64, 1)
        else:
            o, a = obs, act
        next_obs, reward = model.step(o, a, sample=False)
        assert next_obs.shape == (3, 64, 2) and reward.shape == (3, 64)
        # The agent's part is the known accounting, bit for bit.
        assert torch.equal(next_obs[..., 1], a[..., 0].expand(3, 64))
        expected = a[..., 0] * next_obs[..., 0] - COST * (a[..., 0] - o[..., 1]).abs()
        torch.testing.assert_close(reward, expected)
        # The market part is learned: close to PHI * r.
        err = (next_obs[..., 0] - PHI * o[..., 0]).abs().max()
        assert float(err) < 0.05, float(err)


def test_planning_through_the_trading_model_follows_the_signal() -> None:
    model = _fitted(seed=1)
    env = ModelEnv(model, "expectation")
    for r in (-0.4, 0.4):
        planner = CEMPlanner(1, 3, population=64, num_elites=8, iterations=4)
        start = torch.tensor([r, 0.0])
        plan = planner.plan(lambda seqs, s=start: env.evaluate_action_sequences(s, seqs))
        # Expected next return PHI * r dominates the cost: go long on up-drift, short on down.
        assert float(plan[0, 0]) * r > 0.3 * abs(r)


def test_fit_checks_shapes() -> None:
    model = TradingAwareDynamics(StateSplit(2, (0,)), accounting, 1)
    obs, act, rew, nxt = _transitions(10)
    with pytest.raises(DataError, match="actions has shape"):
        model.fit(obs, act[:, 0], rew, nxt)
