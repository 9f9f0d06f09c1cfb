"""Replay buffer: wraparound, batch adds, sampling, dtypes, Dict observations, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.replay import ReplayBatch, ReplayBuffer
from agents.spaces import ObservationFlattener, space_from_dict, space_to_dict
from envs.errors import ConfigError, DataError

BOX_OBS = spaces.Box(-np.inf, np.inf, (3,), np.float32)
BOX_ACT = spaces.Box(-1.0, 1.0, (2,), np.float32)


def _fill(buf: ReplayBuffer, start: int, n: int) -> None:
    for i in range(start, start + n):
        buf.add(np.full(3, i), np.full(2, i / 100), float(i), np.full(3, i + 0.5), 0.99)


def test_preallocated_float32_and_nbytes() -> None:
    buf = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=10)
    assert buf.observations.dtype == torch.float32 and buf.observations.shape == (10, 3)
    assert buf.actions.dtype == torch.float32 and buf.actions.shape == (10, 2)
    assert buf.rewards.shape == (10,) and buf.discounts.shape == (10,)
    assert buf.nbytes == 10 * (3 + 3 + 2 + 1 + 1) * 4
    text = buf.describe()
    assert "capacity=10" in text and "MiB" in text and "obs[0:3]" in text
    assert len(buf) == 0


def test_wraparound_keeps_newest() -> None:
    buf = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=5)
    _fill(buf, 0, 7)
    assert len(buf) == 5 and buf.pos == 2
    # Slots 0,1 were overwritten by transitions 5,6; slots 2..4 hold 2..4.
    np.testing.assert_array_equal(buf.rewards.numpy(), [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buf.next_observations[:, 0].numpy(), [5.5, 6.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(buf.discounts.numpy(), 0.99)


def test_batch_add_matches_single_adds_with_wrap() -> None:
    single = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=6)
    batch = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=6)
    _fill(single, 0, 4)
    _fill(batch, 0, 4)
    _fill(single, 4, 5)
    i = np.arange(4, 9)
    batch.add(
        np.repeat(i[:, None], 3, 1), np.repeat(i[:, None] / 100, 2, 1), i.astype(float),
        np.repeat(i[:, None] + 0.5, 3, 1), np.full(5, 0.99),
    )  # fmt: skip
    assert single.pos == batch.pos and len(single) == len(batch)
    for name in ("observations", "actions", "rewards", "next_observations", "discounts"):
        assert torch.equal(getattr(single, name), getattr(batch, name)), name


def test_batch_larger_than_capacity() -> None:
    buf = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=4)
    _fill(buf, 0, 1)
    i = np.arange(1, 11)
    buf.add(np.repeat(i[:, None], 3, 1), np.zeros((10, 2)), i, np.zeros((10, 3)), np.ones(10))
    ref = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=4)
    for k in range(11):
        ref.add(np.full(3, k), np.zeros(2), k, np.zeros(3), 1.0)
    assert torch.equal(buf.rewards, ref.rewards) and buf.pos == ref.pos and len(buf) == 4


def test_sample_shapes_dtypes_and_reproducible() -> None:
    buf = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=100)
    _fill(buf, 0, 30)
    b1 = buf.sample(64, torch.Generator().manual_seed(1))
    b2 = buf.sample(64, torch.Generator().manual_seed(1))
    assert isinstance(b1, ReplayBatch)
    assert b1.observations.shape == (64, 3) and b1.next_observations.shape == (64, 3)
    assert b1.actions.shape == (64, 2) and b1.rewards.shape == (64,) and b1.discounts.shape == (64,)
    assert all(t.dtype == torch.float32 for t in b1)
    assert all(torch.equal(a, b) for a, b in zip(b1, b2, strict=True))
    # Rows stay aligned: every field of a sampled row comes from the same transition.
    r = b1.rewards
    assert torch.all(r < 30)
    torch.testing.assert_close(b1.observations[:, 0], r)
    torch.testing.assert_close(b1.actions[:, 1], r / 100)
    torch.testing.assert_close(b1.next_observations[:, 2], r + 0.5)


def test_sampling_is_roughly_uniform_over_filled_part() -> None:
    buf = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=50)
    _fill(buf, 0, 10)
    rewards = buf.sample(20_000, torch.Generator().manual_seed(0)).rewards.numpy()
    counts = np.bincount(rewards.astype(int), minlength=10)
    assert counts.size == 10  # never samples unfilled slots
    assert counts.min() > 1700 and counts.max() < 2300


def test_discrete_actions_are_int64() -> None:
    buf = ReplayBuffer(BOX_OBS, spaces.Discrete(4), capacity=8)
    buf.add(np.zeros(3), 3, 1.0, np.zeros(3), 0.99**3)
    buf.add(np.zeros((2, 3)), np.array([0, 2]), [0.0, 1.0], np.zeros((2, 3)), [0.0, 0.5])
    batch = buf.sample(16, torch.Generator().manual_seed(0))
    assert batch.actions.dtype == torch.int64 and batch.actions.shape == (16,)
    assert set(batch.actions.tolist()) <= {0, 2, 3}
    torch.testing.assert_close(buf.discounts[:3], torch.tensor([0.99**3, 0.0, 0.5]))


def test_dict_observations_flatten_in_space_key_order() -> None:
    obs_space = spaces.Dict(
        {"portfolio": spaces.Box(-1, 1, (2,)), "market": spaces.Box(-1, 1, (2, 3))}
    )
    buf = ReplayBuffer(obs_space, BOX_ACT, capacity=4)
    assert buf.flattener.block_names == ("market", "portfolio")  # gymnasium sorts dict keys
    obs = {"market": np.arange(6.0).reshape(2, 3), "portfolio": np.array([10.0, 11.0])}
    buf.add(obs, np.zeros(2), 0.0, obs, 0.99)
    expected = spaces.flatten(obs_space, obs)
    np.testing.assert_array_equal(buf.observations[0].numpy(), expected)
    assert "market[0:6]" in buf.describe() and "portfolio[6:8]" in buf.describe()
    batched = {k: np.stack([v, v + 1]) for k, v in obs.items()}
    flat, is_batch = buf.flattener.flatten(batched)
    assert is_batch and flat.shape == (2, 8)
    np.testing.assert_array_equal(flat[1], expected + 1)


def test_state_dict_round_trip_continues_identically() -> None:
    buf = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=8)
    _fill(buf, 0, 11)
    state = buf.state_dict()
    assert all(isinstance(state[k], torch.Tensor) for k in ("observations", "rewards"))
    other = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=8)
    other.load_state_dict(state)
    assert other.pos == buf.pos and len(other) == len(buf)
    _fill(buf, 11, 3)
    _fill(other, 11, 3)
    for name in ("observations", "actions", "rewards", "next_observations", "discounts"):
        assert torch.equal(getattr(buf, name), getattr(other, name)), name
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(buf.sample(32, g1).rewards, other.sample(32, g2).rewards)


def test_state_dict_of_partial_buffer_and_mismatch() -> None:
    buf = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=8)
    _fill(buf, 0, 3)
    state = buf.state_dict()
    assert state["rewards"].shape == (3,)
    with pytest.raises(DataError, match="capacity"):
        ReplayBuffer(BOX_OBS, BOX_ACT, capacity=9).load_state_dict(state)
    del state["discounts"]
    with pytest.raises(DataError, match="discounts"):
        ReplayBuffer(BOX_OBS, BOX_ACT, capacity=8).load_state_dict(state)


def test_bad_input_errors() -> None:
    with pytest.raises(ConfigError, match="capacity"):
        ReplayBuffer(BOX_OBS, BOX_ACT, capacity=0)
    with pytest.raises(ConfigError, match="action_space"):
        ReplayBuffer(BOX_OBS, spaces.MultiBinary(3), capacity=4)
    buf = ReplayBuffer(BOX_OBS, BOX_ACT, capacity=4)
    with pytest.raises(DataError, match="empty"):
        buf.sample(2)
    with pytest.raises(DataError, match="observation"):
        buf.add(np.zeros(4), np.zeros(2), 0.0, np.zeros(4), 0.99)
    with pytest.raises(DataError, match="action"):
        buf.add(np.zeros(3), np.zeros(3), 0.0, np.zeros(3), 0.99)


def test_space_description_round_trip() -> None:
    space = spaces.Dict({"b": spaces.Box(-2.0, 3.0, (2, 2)), "a": BOX_ACT})
    desc = space_to_dict(space)
    rebuilt = space_from_dict(desc)
    assert list(rebuilt.spaces) == list(space.spaces)
    assert rebuilt == space
    assert space_from_dict(space_to_dict(spaces.Discrete(5))) == spaces.Discrete(5)
    assert ObservationFlattener(rebuilt).dim == 6
