"""Trading-aware dynamics on a tiny synthetic market: the ensemble learns only the exogenous
return process, the known accounting gives the position and the reward exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.planning import CEMPlanner
from envs.data.dataset import MarketDataset
from envs.errors import ConfigError, DataError
from envs.market_accounting import accounting_spec, auxiliary_inputs
from envs.market_env import MarketTradingEnv
from world_models import (
    EnsembleConfig,
    EnsembleTrainConfig,
    MarketAccounting,
    ModelEnv,
    StateSplit,
    TradingAwareDynamics,
    market_trading_dynamics,
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


# --- MarketTrading-v0: the known accounting against the env ----------------------------------

HOUR_NS = 3600 * 10**9


def _gbm(n_bars: int = 260, seed: int = 0) -> MarketDataset:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (n_bars, 1)), axis=0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.003, (n_bars, 1)))
    volume = rng.lognormal(6.0, 0.5, (n_bars, 1))  # thin: impact is a visible cost
    return MarketDataset(
        timestamps=np.arange(n_bars, dtype=np.int64) * HOUR_NS,
        symbols=("A",),
        ohlcv=np.stack(
            [open_, np.maximum(open_, close), np.minimum(open_, close), close, volume], -1
        ),
        source="<gbm trading-aware test>",
    )


def _market_env(**kwargs) -> MarketTradingEnv:
    base = dict(
        dataset=_gbm(),
        features=("logret_1", "rvol_8"),
        window=4,
        episode_length=60,
        action_mode="continuous",
        flatten=True,
        max_leverage=2.0,  # leverage: negative cash pays margin, shorts pay borrow
        borrow_rate=0.5,
        margin_rate=0.8,
        impact_k=1.0,
    )
    base.update(kwargs)
    return MarketTradingEnv(**base)


def _unit_actions(n: int, seed: int, flat: float) -> np.ndarray:
    """Random unit actions with holds (rebalance band), exact flats (unit action ``flat``)."""
    rng = np.random.default_rng(seed)
    acts = rng.uniform(-1.0, 1.0, n)
    acts[rng.random(n) < 0.3] = flat  # target exactly 0: closes the position
    hold = rng.random(n) < 0.3
    for i in np.flatnonzero(hold)[1:]:
        acts[i] = acts[i - 1] + rng.normal(0, 0.01)  # inside the band: no trade
    return np.clip(acts, -1.0, 1.0)


def _collect(env: MarketTradingEnv, steps: int, seed: int):
    """Real transitions with the auxiliary inputs, acting through SAC's action scaling."""
    low = float(env.action_space.low[0])
    obs, _ = env.reset(seed=seed)
    rows = {k: [] for k in ("obs", "act", "aux", "next", "rew")}
    for u in _unit_actions(steps, seed, flat=-1.0 if low == 0.0 else 0.0):
        aux = auxiliary_inputs(env)
        env_action = np.clip(low + (u + 1.0) * 0.5 * (1.0 - low), low, 1.0).astype(np.float32)
        nxt, reward, terminated, truncated, _ = env.step(env_action.reshape(1))
        for k, v in zip(rows, (obs, [u], aux, nxt, reward), strict=True):
            rows[k].append(v)
        obs = nxt
        if terminated or truncated:
            obs, _ = env.reset()
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in rows.items()}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(allow_short=False, max_leverage=1.0),
        dict(reward="sortino", reward_kwargs={"downside_coef": 2.0}),
        dict(reward="turnover", reward_kwargs={"turnover_coef": 0.05}, rebalance_band=0.0),
        dict(
            reward="excess_buy_and_hold",
            predictor_blocks={"pred": np.linspace(0, 1, 520).reshape(260, 2)},
        ),
    ],
)
def test_market_accounting_reproduces_the_env(kwargs: dict) -> None:
    env = _market_env(**kwargs)
    spec = accounting_spec(env)
    data = _collect(env, 150, seed=len(kwargs))
    exo = torch.tensor(spec.exogenous)
    next_exogenous = torch.cat([data["next"][:, exo], data["aux"]], dim=-1)
    next_obs, reward = MarketAccounting(spec)(data["obs"], data["act"], next_exogenous)
    # The data covers what the accounting must get right: fills with impact, holds inside the
    # rebalance band, closes to flat, and (with shorts and 2x leverage) borrow and margin.
    port = data["next"][:, spec.portfolio]
    moved = (port[:, 0] - data["obs"][:, spec.portfolio][:, 0]).abs()
    assert int((moved > 0.05).sum()) > 20 and int((port[:, 0] == 0).sum()) > 5
    assert float(data["aux"][:, 2].min()) > 0  # impact on every fill
    if spec.action_low == -1.0 and spec.max_leverage == 2.0:
        assert bool((port[:, 0] < -0.1).any() and (port[:, 1] < 0).any())
    torch.testing.assert_close(next_obs[:, spec.portfolio], port, rtol=0, atol=2e-6)
    torch.testing.assert_close(next_obs, data["next"], rtol=0, atol=2e-6)
    torch.testing.assert_close(reward, data["rew"], rtol=0, atol=2e-6)


def test_market_accounting_costs_matter() -> None:
    """Dropping the impact input breaks the match: the auxiliary input is really used."""
    env = _market_env()
    spec = accounting_spec(env)
    data = _collect(env, 80, seed=3)
    aux = data["aux"].clone()
    aux[:, 2] = 0.0
    exo = torch.tensor(spec.exogenous)
    _, reward = MarketAccounting(spec)(
        data["obs"], data["act"], torch.cat([data["next"][:, exo], aux], dim=-1)
    )
    assert float((reward - data["rew"]).abs().max()) > 1e-4


def test_market_trading_dynamics_learns_market_and_auxiliary() -> None:
    env = _market_env(episode_length=100)
    torch.manual_seed(0)
    model = market_trading_dynamics(
        env,
        EnsembleConfig(ensemble_size=3, num_elites=2, hidden=[32, 32]),
        EnsembleTrainConfig(max_epochs=10),
    )
    spec = accounting_spec(env)
    assert model.n_auxiliary == 3 and model.ensemble.out_dim == len(spec.exogenous) + 3
    data = _collect(env, 200, seed=1)
    with pytest.raises(DataError, match="auxiliary"):
        model.fit(data["obs"], data["act"], data["rew"], data["next"])
    fit = model.fit(
        data["obs"],
        data["act"],
        data["rew"],
        data["next"],
        generator=torch.Generator().manual_seed(0),
        auxiliary=data["aux"],
    )
    assert fit.epochs >= 1
    next_obs, reward = model.step(data["obs"][:16], data["act"][:16], sample=False)
    assert next_obs.shape == (2, 16, spec.obs_dim) and reward.shape == (2, 16)
    assert bool(torch.isfinite(next_obs).all() and torch.isfinite(reward).all())
    # The last target is the action mapped exactly, whatever the market model says.
    target = data["act"][:16, 0] * 2.0
    torch.testing.assert_close(next_obs[..., spec.portfolio.stop - 1], target.expand(2, 16))
