"""World models: batched ensemble, soft-bounded NLL, training with early stopping and elites,
normalisers in the state dict, and the imagined-rollout env's trajectory sampling modes."""

from __future__ import annotations

import math

import pytest
import torch

from envs.errors import ConfigError, DataError
from world_models import (
    EnsembleConfig,
    EnsembleDynamics,
    EnsembleLinear,
    EnsembleTrainConfig,
    GaussianEnsemble,
    ModelEnv,
    Normalizer,
    gaussian_nll,
    train_ensemble,
)


def _sine_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen) * 2.0 - 1.0
    y = torch.sin(3.0 * x) + 0.05 * torch.randn(n, 1, generator=gen)
    return x, y


def test_ensemble_learns_1d_dynamics_and_variance_grows_off_data() -> None:
    torch.manual_seed(0)
    x, y = _sine_data(400)
    model = GaussianEnsemble(1, 1, EnsembleConfig(ensemble_size=5, num_elites=3, hidden=[64, 64]))
    fit = train_ensemble(
        model, x, y, EnsembleTrainConfig(max_epochs=40), generator=torch.Generator().manual_seed(0)
    )
    assert fit.epochs >= 2 and len(fit.elites) == 3
    grid = torch.linspace(-0.95, 0.95, 101).unsqueeze(1)
    mean, var_in = model.predictive_distribution(grid)
    rmse = float((mean - torch.sin(3.0 * grid)).square().mean().sqrt())
    assert rmse < 0.1, rmse  # noise std is 0.05; the function's range is [-1, 1]
    # Predicted noise level on the data is about the true one (variance 0.0025).
    assert 0.0005 < float(var_in.mean()) < 0.02
    far = torch.linspace(3.0, 4.0, 11).unsqueeze(1)
    _, var_out = model.predictive_distribution(far)
    assert float(var_out.mean()) > 10.0 * float(var_in.mean())


def test_elites_are_the_best_holdout_members() -> None:
    x, y = _sine_data(300, seed=1)
    model = GaussianEnsemble(1, 1, EnsembleConfig(ensemble_size=4, num_elites=2, hidden=[16]))
    fit = train_ensemble(model, x, y, EnsembleTrainConfig(max_epochs=5))
    order = sorted(range(4), key=lambda i: fit.holdout_mse[i])
    assert fit.elites == sorted(order[:2])
    assert model.elite_indices.tolist() == fit.elites


def test_batched_members_match_independent_layers() -> None:
    torch.manual_seed(0)
    layer = EnsembleLinear(3, 4, 2)
    x = torch.randn(3, 5, 4)
    out = layer(x)
    for k in range(3):
        torch.testing.assert_close(out[k], x[k] @ layer.weight[k] + layer.bias[k])
    shared = torch.randn(5, 4)
    torch.testing.assert_close(layer(shared)[1], shared @ layer.weight[1] + layer.bias[1])
    sub = layer(x[:2], torch.tensor([2, 0]))
    torch.testing.assert_close(sub[0], x[0] @ layer.weight[2] + layer.bias[2])


def test_logvar_soft_bounds_and_loss_formula() -> None:
    model = GaussianEnsemble(2, 1, EnsembleConfig(ensemble_size=2, num_elites=1, hidden=[8]))
    with torch.no_grad():
        model.head.bias[..., 1:] = 1e3  # raw log-variance far above the bound
        _, hi = model(torch.zeros(4, 2))
        model.head.bias[..., 1:] = -1e3
        _, lo = model(torch.zeros(4, 2))
    assert float(hi.max()) <= model.config.max_logvar + 1e-4
    assert float(lo.min()) >= model.config.min_logvar - 1e-4
    mean, logvar, target = torch.zeros(1, 1, 1), torch.full((1, 1, 1), 0.5), torch.ones(1, 1, 1)
    expected = 1.0 * math.exp(-0.5) + 0.5  # (mu - y)^2 * exp(-lv) + lv
    assert float(gaussian_nll(mean, logvar, target)) == pytest.approx(expected)


def test_normalisers_and_elites_round_trip_through_state_dict() -> None:
    x, y = _sine_data(200)
    y = 5.0 + 3.0 * y  # targets far from standard scale: normalisation matters
    cfg = EnsembleConfig(ensemble_size=3, num_elites=2, hidden=[16])
    model = GaussianEnsemble(1, 1, cfg)
    train_ensemble(model, x, y, EnsembleTrainConfig(max_epochs=3))
    clone = GaussianEnsemble(1, 1, cfg)
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.predict(x[:7])[0], model.predict(x[:7])[0])
    assert clone.elite_indices.tolist() == model.elite_indices.tolist()
    norm = Normalizer(2)
    data = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    norm.fit(data)
    torch.testing.assert_close(norm.denormalize(norm.normalize(data)), data)


def test_bad_inputs_are_clear_errors() -> None:
    model = GaussianEnsemble(1, 1, EnsembleConfig(ensemble_size=2, num_elites=1, hidden=[4]))
    with pytest.raises(DataError, match="targets shape"):
        train_ensemble(model, torch.zeros(5, 1), torch.zeros(4, 1))
    bad = torch.zeros(5, 1)
    bad[3, 0] = float("nan")
    with pytest.raises(DataError, match="inputs row 3"):
        train_ensemble(model, bad, torch.zeros(5, 1))
    with pytest.raises(ConfigError, match="num_elites"):
        EnsembleConfig(ensemble_size=2, num_elites=3).validate()
    with pytest.raises(ConfigError, match="unknown fields"):
        EnsembleConfig.from_dict({"members": 3})
    with pytest.raises(ConfigError, match="holdout_ratio"):
        EnsembleTrainConfig(holdout_ratio=1.5).validate()


@pytest.fixture(scope="module")
def dyn() -> EnsembleDynamics:
    return _fitted_dynamics()


def _fitted_dynamics(seed: int = 0) -> EnsembleDynamics:
    """x' = x + 0.5 a, reward -x'^2: a 1-D system the ensemble learns quickly."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.rand(400, 1, generator=gen) * 2 - 1
    act = torch.rand(400, 1, generator=gen) * 2 - 1
    nxt = obs + 0.5 * act
    rew = -nxt.square().squeeze(-1)
    torch.manual_seed(seed)
    dyn = EnsembleDynamics(
        1,
        1,
        EnsembleConfig(ensemble_size=4, num_elites=3, hidden=[32, 32]),
        EnsembleTrainConfig(max_epochs=25),
    )
    dyn.fit(obs, act, rew, nxt, generator=gen)
    return dyn


def test_model_env_propagation_modes(dyn: EnsembleDynamics) -> None:
    obs = torch.full((10, 1), 0.2)  # 10 rows: not a multiple of the 3 elites (padding path)
    act = torch.full((10, 1), 0.4)
    for mode in ("ts1", "tsinf", "expectation"):
        env = ModelEnv(dyn, mode, generator=torch.Generator().manual_seed(0))
        env.reset(obs)
        next_obs, reward, terminated = env.step(act)
        assert next_obs.shape == (10, 1) and reward.shape == (10,) and not terminated.any()
        assert torch.allclose(next_obs, torch.full((10, 1), 0.4), atol=0.1), mode
        assert torch.allclose(reward, torch.full((10,), -0.16), atol=0.1), mode
    # Expectation is deterministic; sampled modes are not (aleatoric noise per row).
    env = ModelEnv(dyn, "expectation")
    env.reset(obs)
    first = env.step(act)[0]
    assert torch.equal(first, first[:1].expand(10, 1))
    # TS-inf keeps each row's elite: without noise, identical rows stay identical per elite and
    # the assignment is the same every step.
    env = ModelEnv(dyn, "tsinf", sample=False, generator=torch.Generator().manual_seed(1))
    env.reset(obs)
    a = env.step(act)[0]
    env2_order = env._order.clone()
    env.step(act)
    assert torch.equal(env._order, env2_order)
    assert len(torch.unique(a)) <= 3


def test_model_env_termination_and_sequence_scores(dyn: EnsembleDynamics) -> None:
    env = ModelEnv(dyn, "ts1", termination_fn=lambda o, a, n: n[:, 0] > 0.3, sample=False)
    env.reset(torch.tensor([[0.0], [0.2]]))
    _, _, terminated = env.step(torch.tensor([[0.0], [1.0]]))
    assert terminated.tolist() == [False, True]
    _, reward, _ = env.step(torch.tensor([[0.0], [0.0]]))
    assert float(reward[1]) == 0.0  # no reward after termination
    # Moving to 0 beats moving away from it.
    plans = torch.stack([torch.full((4, 1), -0.4), torch.full((4, 1), 1.0)])
    scores = ModelEnv(dyn, "tsinf").evaluate_action_sequences(torch.tensor([0.8]), plans, 4)
    assert scores.shape == (2,) and scores[0] > scores[1]
    with pytest.raises(ConfigError, match="propagation"):
        ModelEnv(dyn, "ts2")
    with pytest.raises(DataError, match="reset"):
        ModelEnv(dyn).step(torch.zeros(1, 1))
