"""SAC's hand-written gradient step (agents/sac_explicit.py) against the autograd reference:
same gradients, statistics and parameters to float rounding; clamp and tie edge cases; the fast
acting path draws and returns exactly what the actor module does; fallbacks."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from agents.replay import ReplayBatch
from agents.sac import SAC, SACConfig
from agents.sac_explicit import ExplicitSACUpdate, FusedAdamStep, squashed_sample

OBS_SPACE = spaces.Box(-5.0, 5.0, (3,), np.float32)
ACT_SPACE = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))


def _pair(**overrides) -> tuple[SAC, SAC]:
    """Two agents with the same seed: hand-written gradients and autograd."""
    base = {"net_arch": [32, 24], "batch_size": 64, "learning_rate": 1e-3, "seed": 7}
    base.update(overrides)
    explicit = SAC(OBS_SPACE, ACT_SPACE, SACConfig(**base, explicit_gradients=True))
    reference = SAC(OBS_SPACE, ACT_SPACE, SACConfig(**base, explicit_gradients=False))
    assert explicit._explicit is not None and reference._explicit is None
    return explicit, reference


def _batch(n: int = 64, seed: int = 0, terminal_share: float = 0.3) -> ReplayBatch:
    rng = np.random.default_rng(seed)
    discounts = np.where(rng.uniform(size=n) < terminal_share, 0.0, 0.99)
    return ReplayBatch(
        torch.as_tensor(rng.normal(size=(n, 3)), dtype=torch.float32),
        torch.as_tensor(rng.uniform(-1, 1, (n, 2)), dtype=torch.float32),
        torch.as_tensor(rng.normal(size=n), dtype=torch.float32),
        torch.as_tensor(rng.normal(size=(n, 3)), dtype=torch.float32),
        torch.as_tensor(discounts, dtype=torch.float32),
    )


def _grads(agent: SAC) -> list[torch.Tensor]:
    params = [*agent.actor.parameters(), *agent.critic.parameters()]
    out = [p.grad.clone() for p in params]
    if agent.log_alpha.grad is not None:
        out.append(agent.log_alpha.grad.clone())
    return out


def _state(agent: SAC) -> list[torch.Tensor]:
    mods = (agent.actor, agent.critic, agent.critic_target)
    return [t.detach().clone() for m in mods for t in m.state_dict().values()] + [
        agent.log_alpha.detach().clone()
    ]


def _assert_steps_match(explicit: SAC, reference: SAC, steps: int = 3) -> None:
    for step in range(steps):
        batch = _batch(seed=step)
        explicit.update(batch)
        reference.update(batch)
        for got, want in zip(_grads(explicit), _grads(reference), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        # Parameters after Adam: tiny gradient differences can move a near-zero entry's first
        # Adam step by up to 2 * lr, so compare with an absolute tolerance tied to lr.
        for got, want in zip(_state(explicit), _state(reference), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=2e-3 * (step + 1))
        got_stats, want_stats = explicit.train_stats(), reference.train_stats()
        assert set(got_stats) == set(want_stats)
        for name, value in want_stats.items():
            assert got_stats[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_explicit_step_matches_autograd() -> None:
    _assert_steps_match(*_pair())


def test_explicit_step_matches_autograd_with_polyak_every_second_update() -> None:
    # The explicit step runs the Polyak update itself (after the critics' Adam step): the
    # target critics must move on the same updates, by the same amounts, as the reference's.
    explicit, reference = _pair(target_update_interval=2, tau=0.3)
    before = [t.clone() for t in explicit.critic_target.state_dict().values()]
    _assert_steps_match(explicit, reference, steps=1)
    after_one = list(explicit.critic_target.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(before, after_one, strict=True))
    _assert_steps_match(explicit, reference, steps=3)


def test_explicit_step_matches_autograd_three_critics_fixed_alpha() -> None:
    _assert_steps_match(*_pair(n_critics=3, autotune_entropy=False, ent_coef_init=0.3))


def test_explicit_step_matches_autograd_with_active_log_std_clamp() -> None:
    # A narrow clamp makes many log-std entries sit outside it: their gradient must be zero.
    explicit, reference = _pair(log_std_min=-0.3, log_std_max=0.3, net_arch=[16])
    head = explicit.actor.net(_batch().observations)[:, 2:]
    outside = ((head < -0.3) | (head > 0.3)).float().mean()
    assert 0.2 < outside < 0.95
    _assert_steps_match(explicit, reference, steps=2)


def test_explicit_step_splits_ties_in_the_critic_minimum_like_amin() -> None:
    explicit, reference = _pair()
    for agent in (explicit, reference):
        with torch.no_grad():  # identical members: every minimum is a two-way tie
            for p in agent.critic.parameters():
                p[1:].copy_(p[:1].expand_as(p[1:]))
            agent.critic_target.load_state_dict(agent.critic.state_dict())
    _assert_steps_match(explicit, reference, steps=1)


class _Drift(gym.Env):
    """1-D: obs is the position, the action moves it, reward -|position|, 10-step episodes."""

    observation_space = spaces.Box(-10.0, 10.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = float(self.np_random.uniform(-2, 2)), 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += 0.5 * float(action[0])
        self.t += 1
        return np.array([self.x], np.float32), -abs(self.x), False, self.t >= 10, {}


def test_training_runs_match_autograd_through_the_replay_path() -> None:
    # learn() drives sampling, the explicit step and Polyak; with learning starting at once the
    # short runs stay numerically close to the autograd ones.
    runs = []
    for explicit in (True, False):
        env = _Drift()
        cfg = SACConfig(
            net_arch=[32, 32],
            batch_size=32,
            learning_starts=40,
            explicit_gradients=explicit,
            seed=1,
        )
        agent = SAC(env.observation_space, env.action_space, cfg)
        agent.learn(env, 45)
        runs.append(_state(agent))
    for got, want in zip(*runs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-2)


def test_fast_acting_path_equals_the_actor_module() -> None:
    agent = SAC(OBS_SPACE, ACT_SPACE, SACConfig(net_arch=[32, 32]))
    assert agent._actor_layers is not None
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    for deterministic in (True, False):
        agent.generator.manual_seed(11)
        fast = agent.policy_unit_action(obs, deterministic)
        agent.generator.manual_seed(11)
        with torch.no_grad():
            module, _ = agent.actor(torch.from_numpy(obs), agent.generator, deterministic)
        np.testing.assert_array_equal(fast, module.numpy())
        # Both consumed the same number of draws.
        agent.generator.manual_seed(11)
        agent.policy_unit_action(obs, deterministic)
        after_fast = agent.generator.get_state()
        agent.generator.manual_seed(11)
        agent.actor(torch.from_numpy(obs), agent.generator, deterministic)
        assert torch.equal(after_fast, agent.generator.get_state())


def test_unsupported_networks_fall_back_to_autograd() -> None:
    agent = SAC(OBS_SPACE, ACT_SPACE, SACConfig(net_arch=[16]))
    assert ExplicitSACUpdate.supports(agent)
    agent.actor.net[1] = nn.Tanh()  # not a ReLU MLP any more
    assert not ExplicitSACUpdate.supports(agent)
    with pytest.raises(ValueError, match="plain ReLU"):
        ExplicitSACUpdate(agent)
    assert SAC(OBS_SPACE, ACT_SPACE, SACConfig(explicit_gradients=False))._explicit is None
    # A checkpoint written before the field existed still loads (the default fills it in).
    assert SACConfig.from_dict({"seed": 3}).explicit_gradients is True


def test_zero_grad_between_steps_does_not_break_the_explicit_step() -> None:
    explicit, reference = _pair()
    explicit.update(_batch())
    reference.update(_batch())
    for opt in (explicit.actor_optimizer, explicit.critic_optimizer, explicit.alpha_optimizer):
        opt.zero_grad(set_to_none=True)
    explicit.update(_batch(seed=1))
    reference.update(_batch(seed=1))
    for got, want in zip(_grads(explicit), _grads(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_batch_size_changes_between_steps() -> None:
    # MBPO mixes real and model batches; the workspace must follow a new batch size.
    explicit, reference = _pair()
    for n, seed in ((64, 0), (40, 1), (64, 2)):
        batch = _batch(n=n, seed=seed)
        explicit.update(batch)
        reference.update(batch)
        for got, want in zip(_grads(explicit), _grads(reference), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def _adam_pair(lr: float = 1e-3) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    shapes = [(5, 4), (4,), ()]
    params = [torch.randn(s, generator=gen) for s in shapes]
    return [p.clone().requires_grad_() for p in params], [
        p.clone().requires_grad_() for p in params
    ]


def test_fused_adam_step_is_optimizer_step_bit_for_bit(tmp_path: Path) -> None:
    # Two optimisers in one kernel call (as the actor's and log_alpha's), against .step(): the
    # first step (state not created yet), a learning-rate change, a state_dict round trip and a
    # step hook (fallback) must all give identical parameters and states.
    fast_params, ref_params = _adam_pair()
    fast_opts = [
        torch.optim.Adam(fast_params[:2], lr=1e-3, fused=True),
        torch.optim.Adam(fast_params[2:], lr=1e-3, fused=True),
    ]
    ref_opts = [
        torch.optim.Adam(ref_params[:2], lr=1e-3, fused=True),
        torch.optim.Adam(ref_params[2:], lr=1e-3, fused=True),
    ]
    grads = [torch.empty_like(p) for p in fast_params]
    step = FusedAdamStep(
        [(fast_opts[0], fast_params[:2], grads[:2]), (fast_opts[1], fast_params[2:], grads[2:])]
    )
    gen = torch.Generator().manual_seed(5)
    for i in range(8):
        new_grads = [torch.randn(p.shape, generator=gen) for p in fast_params]
        for g, new in zip(grads, new_grads, strict=True):
            g.copy_(new)
        for p, new in zip(ref_params, new_grads, strict=True):
            p.grad = new.clone()
        if i == 3:
            for opt in (*fast_opts, *ref_opts):
                opt.param_groups[0]["lr"] = 5e-4
        if i == 4:
            for opts, name in ((fast_opts, "fast"), (ref_opts, "ref")):
                torch.save([o.state_dict() for o in opts], tmp_path / f"{name}.pt")
                for o, sd in zip(opts, torch.load(tmp_path / f"{name}.pt"), strict=True):
                    o.load_state_dict(sd)
        hook = None
        if i == 6:
            hook = fast_opts[0].register_step_post_hook(lambda *_: None)
        if i == 7:
            hook = register_optimizer_step_post_hook(lambda *_: None)
        with torch.no_grad():
            step.step()
        for opt in ref_opts:
            opt.step()
        if hook is not None:
            hook.remove()
        for got, want in zip(fast_params, ref_params, strict=True):
            assert torch.equal(got, want), i
        for fast_opt, ref_opt in zip(fast_opts, ref_opts, strict=True):
            for p_fast, p_ref in zip(
                fast_opt.param_groups[0]["params"], ref_opt.param_groups[0]["params"], strict=True
            ):
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    assert torch.equal(fast_opt.state[p_fast][key], ref_opt.state[p_ref][key])
    assert step._key is not None  # the direct kernel call was used


def test_fused_adam_step_counts_steps_in_one_flat_tensor() -> None:
    # The optimisers' step counts become views of one flat tensor (one add per step); a
    # fallback .step() (hook registered) increments the same views, and a state_dict round
    # trip gives fresh tensors that are flattened again on the next direct step.
    fast_params, _ = _adam_pair()
    opts = [
        torch.optim.Adam(fast_params[:2], lr=1e-3, fused=True),
        torch.optim.Adam(fast_params[2:], lr=1e-3, fused=True),
    ]
    grads = [torch.ones_like(p) for p in fast_params]
    step = FusedAdamStep(
        [(opts[0], fast_params[:2], grads[:2]), (opts[1], fast_params[2:], grads[2:])]
    )

    def counts() -> list[torch.Tensor]:
        return [o.state[p]["step"] for o in opts for p in o.param_groups[0]["params"]]

    with torch.no_grad():
        for _ in range(3):  # the first one is .step() (no state yet), then direct calls
            step.step()
        assert step._flat_steps is not None
        base = step._flat_steps.untyped_storage().data_ptr()
        assert all(c.untyped_storage().data_ptr() == base for c in counts())
        assert [float(c) for c in counts()] == [3.0] * 3
        hook = opts[1].register_step_post_hook(lambda *_: None)
        step.step()  # fallback: each optimiser's .step()
        hook.remove()
        assert [float(c) for c in counts()] == [4.0] * 3
        for o in opts:
            o.load_state_dict(o.state_dict())
        step.step()
        assert [float(c) for c in counts()] == [5.0] * 3
        assert all(c.dtype == torch.float32 and c.dim() == 0 for c in counts())


def test_fused_adam_step_falls_back_for_other_settings() -> None:
    # Weight decay is not what the direct call reproduces: .step() runs instead, same result.
    fast_params, ref_params = _adam_pair()
    fast = torch.optim.Adam(fast_params, lr=1e-3, fused=True, weight_decay=0.1)
    ref = torch.optim.Adam(ref_params, lr=1e-3, fused=True, weight_decay=0.1)
    grads = [torch.ones_like(p) for p in fast_params]
    step = FusedAdamStep([(fast, fast_params, grads)])
    for p in ref_params:
        p.grad = torch.ones_like(p)
    for _ in range(3):
        with torch.no_grad():
            step.step()
        ref.step()
    assert step._key is None  # never took the direct path
    for got, want in zip(fast_params, ref_params, strict=True):
        assert torch.equal(got, want)


def test_statistics_read_late_are_the_last_steps() -> None:
    # Statistics are computed when read: reading after two steps gives the second step's.
    explicit, reference = _pair()
    for seed in (0, 1):
        explicit.update(_batch(seed=seed))
        reference.update(_batch(seed=seed))
    got, want = explicit.train_stats(), reference.train_stats()
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_per_member_critic_backward_equals_the_all_rows_path() -> None:
    # The actor's backward through the critics on each member's minimum rows gives the same
    # bits as the batched all-rows path (a tie sends rows to both members).
    agent = SAC(OBS_SPACE, ACT_SPACE, SACConfig(net_arch=[64, 64], seed=2))
    update = agent._explicit
    gen = torch.Generator().manual_seed(0)
    hidden = [torch.randn((2, 256, 64), generator=gen).relu_() for _ in range(2)]
    is_min = torch.rand((2, 256), generator=gen) < 0.5
    is_min[1] = ~is_min[0]
    is_min[:, :10] = True  # ties
    grad_out = (is_min.float() / is_min.float().sum(0) * (-1.0 / 256)).unsqueeze(-1)
    with torch.no_grad():
        assert update._member_rows(is_min) is not None
        per_member = update._ensemble_input_backward(hidden, grad_out, is_min).clone()
        update._member_rows = lambda _: None  # force the all-rows path
        all_rows = update._ensemble_input_backward(hidden, grad_out, is_min)
    assert torch.equal(per_member, all_rows)


def test_per_member_critic_backward_leaves_nan_rows_to_the_all_rows_path() -> None:
    agent = SAC(OBS_SPACE, ACT_SPACE, SACConfig(net_arch=[64, 64], seed=2))
    is_min = torch.zeros((2, 256), dtype=torch.bool)
    is_min[0, :128], is_min[1, 128:255] = True, True  # row 255: no minimum (NaN Q-values)
    assert agent._explicit._member_rows(is_min) is None
    is_min[1, 255] = True
    assert agent._explicit._member_rows(is_min) is not None


def test_per_member_critic_backward_only_on_one_thread() -> None:
    # With two intra-op threads the all-rows batched matmul is the faster path (issue 5).
    agent = SAC(OBS_SPACE, ACT_SPACE, SACConfig(net_arch=[64, 64], seed=2))
    is_min = torch.zeros((2, 256), dtype=torch.bool)
    is_min[0, :128], is_min[1, 128:] = True, True
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert agent._explicit._member_rows(is_min) is not None
        torch.set_num_threads(2)
        assert agent._explicit._member_rows(is_min) is None
    finally:
        torch.set_num_threads(threads)


def _drift_agent(seed: int = 1) -> SAC:
    env = _Drift()
    cfg = SACConfig(net_arch=[32, 32], batch_size=64, learning_starts=64, seed=seed)
    return SAC(env.observation_space, env.action_space, cfg)


def test_checkpoint_loaded_into_a_trained_agent_continues_bit_for_bit(tmp_path: Path) -> None:
    # The step reuses views of the parameters and its buffers: loading a checkpoint into an
    # agent that has already stepped (load_state_dict copies into the same tensors) must give
    # the uninterrupted run's bits.
    agent = _drift_agent()
    agent.learn(_Drift(), 120)
    agent.save_checkpoint(tmp_path / "ckpt.pt", include_buffer=True)
    agent.learn(_Drift(), 200)
    other = _drift_agent()
    other.learn(_Drift(), 90)  # a different state, its views and buffers made before the load
    assert other._explicit is not None and other._explicit._param_views is not None
    other.load_checkpoint(tmp_path / "ckpt.pt")
    other.learn(_Drift(), 200)
    assert all(torch.equal(a, b) for a, b in zip(_state(agent), _state(other), strict=True))


def test_replaced_parameter_storage_is_noticed() -> None:
    # A .data swap (as a module .to(device) does) gives the weights new storage: the cached
    # views must be made again, not read from the old storage.
    agent, twin = _drift_agent(), _drift_agent()
    for a in (agent, twin):
        a.learn(_Drift(), 80)
    with torch.no_grad():
        for module in (agent.actor, agent.critic, agent.critic_target):
            for p in module.parameters():
                p.data = p.data.clone()
    for a in (agent, twin):
        a.learn(_Drift(), 120)
    assert all(torch.equal(a, b) for a, b in zip(_state(agent), _state(twin), strict=True))


def test_buffered_squashed_sample_is_squashed_sample_bit_for_bit() -> None:
    # The step's in-place version on its buffers against the reference function, with log
    # stds on both sides of the clamp and pre-tanh values where softplus switches to linear.
    agent = SAC(OBS_SPACE, ACT_SPACE, SACConfig(net_arch=[32, 24], seed=2))
    update = agent._explicit
    obs = torch.zeros((64, 3))
    _, bufs = update._views(obs)
    gen = torch.Generator().manual_seed(0)
    lo, hi = agent.actor.log_std_min, agent.actor.log_std_max
    for scale in (0.1, 3.0, 30.0):
        bufs.head.copy_(torch.randn(bufs.head.shape, generator=gen) * scale)
        bufs.noise.copy_(torch.randn(bufs.noise.shape, generator=gen))
        want = squashed_sample(bufs.head.clone(), bufs.noise.clone(), lo, hi)
        update._squashed_sample(bufs, lo, hi)
        assert torch.equal(bufs.action, want[0])
        assert torch.equal(bufs.log_prob, want[1])
        assert torch.equal(bufs.log_std, want[2])
        assert torch.equal(bufs.std, want[3])
