"""A preallocated circular replay buffer that stores a per-transition discount.

Every transition stores ``discount = gamma**k * (1 - terminated)`` instead of a ``done`` flag, so
the learner's target is always ``reward + discount * V(next_observation)``:

* 1-step SAC / DQN: ``discount = gamma * (1 - terminated)``. Time-limit truncation keeps
  ``discount = gamma`` and the real final observation, so the target bootstraps through it
  (Pardo et al. 2018, "Time Limits in Reinforcement Learning"); only termination cuts it.
* n-step Q-learning: ``reward`` is the discounted n-step return and ``discount = gamma**k`` with
  ``k <= n`` the steps actually taken, or ``0`` if the episode terminated inside the window.

Storage is float32 torch tensors (integer actions for ``Discrete`` action spaces), allocated once
on the buffer's device, so on a GPU sampling never leaves the device. On the CPU, ``add`` writes
through NumPy views of the same memory, which keeps the per-step cost of a single env loop low.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from agents.base import get_device
from agents.spaces import ObservationFlattener
from envs.errors import ConfigError, DataError

__all__ = ["ReplayBatch", "ReplayBuffer"]


class ReplayBatch(NamedTuple):
    """A sampled batch; every tensor lives on the buffer's device.

    Attributes:
        observations: float32 ``(B, obs_dim)`` flat observations.
        actions: float32 ``(B, action_dim)`` for Box actions, int64 ``(B,)`` for Discrete.
        rewards: float32 ``(B,)`` rewards (the discounted n-step return for n-step learners).
        next_observations: float32 ``(B, obs_dim)`` observations to bootstrap from.
        discounts: float32 ``(B,)`` ``gamma**k * (1 - terminated)`` to multiply the bootstrap by.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    discounts: torch.Tensor


class ReplayBuffer:
    """Circular buffer of ``(obs, action, reward, next_obs, discount)`` transitions.

    Args:
        observation_space: Box or Dict of Box; Dict observations are flattened in the space's key
            order and the block names are kept (``flattener.block_names``).
        action_space: Box (stored as float32 vectors) or Discrete (stored as int64 indices).
        capacity: number of transitions kept; the oldest are overwritten first.
        device: where the storage lives (``"auto"`` picks CUDA when available).

    Raises:
        ConfigError: for a non-positive capacity or unsupported spaces.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        capacity: int,
        device: str | torch.device = "cpu",
    ) -> None:
        if int(capacity) < 1:
            raise ConfigError(
                f"replay buffer capacity: expected a positive integer, got {capacity}"
            )
        self.capacity = int(capacity)
        self.device = get_device(device)
        self.flattener = ObservationFlattener(observation_space)
        self.obs_dim = self.flattener.dim
        if isinstance(action_space, spaces.Box):
            self.discrete_actions = False
            self.action_shape: tuple[int, ...] = (int(np.prod(action_space.shape)),)
            action_dtype = torch.float32
        elif isinstance(action_space, spaces.Discrete):
            self.discrete_actions = True
            self.action_shape = ()
            action_dtype = torch.int64
        else:
            raise ConfigError(
                f"replay buffer action_space: got {type(action_space).__name__}, "
                "expected Box or Discrete"
            )
        kw = {"device": self.device}
        # torch.empty: pages of a large CPU buffer are only touched when written.
        self.observations = torch.empty((self.capacity, self.obs_dim), dtype=torch.float32, **kw)
        self.next_observations = torch.empty_like(self.observations)
        self.actions = torch.empty((self.capacity, *self.action_shape), dtype=action_dtype, **kw)
        self.rewards = torch.empty((self.capacity,), dtype=torch.float32, **kw)
        self.discounts = torch.empty((self.capacity,), dtype=torch.float32, **kw)
        self.pos = 0
        self.size = 0
        self._on_cpu = self.device.type == "cpu"
        if self._on_cpu:
            # NumPy views share memory with the tensors: cheap writes from the env loop.
            self._np = {name: t.numpy() for name, t in self._storage().items()}

    def _storage(self) -> dict[str, torch.Tensor]:
        return {
            "observations": self.observations,
            "actions": self.actions,
            "rewards": self.rewards,
            "next_observations": self.next_observations,
            "discounts": self.discounts,
        }

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the storage (whole capacity, filled or not)."""
        return sum(t.numel() * t.element_size() for t in self._storage().values())

    def __len__(self) -> int:
        return self.size

    def describe(self) -> str:
        """One line: capacity, fill, widths, observation blocks, device and memory footprint."""
        blocks = ", ".join(
            f"{n}[{s.start}:{s.stop}]" for n, s in self.flattener.block_slices.items()
        )
        act = "discrete" if self.discrete_actions else f"{self.action_shape[0]} float32"
        return (
            f"ReplayBuffer(capacity={self.capacity}, size={self.size}, obs_dim={self.obs_dim} "
            f"float32 [{blocks}], action={act}, device={self.device}, "
            f"memory={self.nbytes / 2**20:.1f} MiB)"
        )

    def add(
        self,
        obs: Any,
        action: Any,
        reward: Any,
        next_obs: Any,
        discount: Any,
    ) -> None:
        """Store one transition, or a batch of them (leading batch axis on every argument).

        Args:
            obs: observation (array, or dict of block arrays for Dict spaces).
            action: the action as the learner wants it back (e.g. SAC's squashed action in
                ``[-1, 1]``; the Discrete index for Q-learning).
            reward: scalar reward (or ``(n,)``), the n-step discounted return for n-step learners.
            next_obs: observation to bootstrap from; on truncation the real final observation.
            discount: ``gamma**k * (1 - terminated)`` per transition.

        Raises:
            DataError: when shapes do not match the spaces or the batch sizes disagree.
        """
        flat_obs, batched = self.flattener.flatten(obs)
        flat_next, batched_next = self.flattener.flatten(next_obs)
        n = flat_obs.shape[0]
        if batched_next != batched or flat_next.shape[0] != n:
            raise DataError(
                f"replay add: obs batch {flat_obs.shape[0]} and next_obs batch "
                f"{flat_next.shape[0]} differ"
            )
        act_np = np.asarray(action)
        if self.discrete_actions:
            act_np = act_np.astype(np.int64).reshape(n)
        else:
            if act_np.size != n * self.action_shape[0]:
                raise DataError(
                    f"replay add: action has {act_np.size} elements, expected "
                    f"{n} x {self.action_shape[0]}"
                )
            act_np = act_np.astype(np.float32).reshape(n, self.action_shape[0])
        rew_np = np.asarray(reward, dtype=np.float32).reshape(-1)
        disc_np = np.asarray(discount, dtype=np.float32).reshape(-1)
        if rew_np.shape[0] != n or disc_np.shape[0] != n:
            raise DataError(
                f"replay add: expected {n} rewards and discounts, got {rew_np.shape[0]} and "
                f"{disc_np.shape[0]}"
            )
        if n > self.capacity:  # only the newest `capacity` transitions can survive
            flat_obs, flat_next = flat_obs[-self.capacity :], flat_next[-self.capacity :]
            act_np, rew_np, disc_np = (
                act_np[-self.capacity :],
                rew_np[-self.capacity :],
                disc_np[-self.capacity :],
            )
            self.pos = (self.pos + n - self.capacity) % self.capacity
            n = self.capacity
        values = {
            "observations": flat_obs,
            "actions": act_np,
            "rewards": rew_np,
            "next_observations": flat_next,
            "discounts": disc_np,
        }
        if n == 1:
            i = self.pos
            self._write(slice(i, i + 1), values)
        else:
            idx = (self.pos + np.arange(n)) % self.capacity
            self._write(idx, values)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def _write(self, where: slice | np.ndarray, values: dict[str, np.ndarray]) -> None:
        if self._on_cpu:
            for name, v in values.items():
                self._np[name][where] = v
            return
        if isinstance(where, np.ndarray):
            where = torch.as_tensor(where, device=self.device)
        storage = self._storage()
        for name, v in values.items():
            storage[name][where] = torch.as_tensor(v).to(self.device, non_blocking=True)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ReplayBatch:
        """Draw ``batch_size`` transitions uniformly with replacement.

        Args:
            batch_size: number of transitions.
            generator: torch generator for the indices (on the buffer's device or the CPU);
                ``None`` uses torch's global generator.

        Raises:
            DataError: when the buffer is empty.
        """
        if self.size == 0:
            raise DataError("replay sample: the buffer is empty; add transitions first")
        gen_device = generator.device if generator is not None else self.device
        idx = torch.randint(self.size, (batch_size,), generator=generator, device=gen_device)
        if idx.device != self.device:
            idx = idx.to(self.device, non_blocking=True)
        return ReplayBatch(
            self.observations.index_select(0, idx),
            self.actions.index_select(0, idx),
            self.rewards.index_select(0, idx),
            self.next_observations.index_select(0, idx),
            self.discounts.index_select(0, idx),
        )

    def state_dict(self) -> dict[str, Any]:
        """Contents and counters as tensors and numbers (safe for ``torch.load(weights_only)``).

        Only the filled part is stored, in storage order, with the write position.
        """
        state: dict[str, Any] = {
            name: t[: self.size].detach().cpu().clone() for name, t in self._storage().items()
        }
        state.update(
            capacity=self.capacity,
            pos=self.pos,
            size=self.size,
            obs_dim=self.obs_dim,
            block_names=list(self.flattener.block_names),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            DataError: when the state does not fit this buffer's capacity or widths.
        """
        try:
            size, pos = int(state["size"]), int(state["pos"])
            if int(state["capacity"]) != self.capacity or int(state["obs_dim"]) != self.obs_dim:
                raise DataError(
                    f"replay state: capacity {state['capacity']} / obs_dim {state['obs_dim']} "
                    f"do not match this buffer ({self.capacity} / {self.obs_dim})"
                )
            if not 0 <= size <= self.capacity or not 0 <= pos < self.capacity:
                raise DataError(f"replay state: size {size} / pos {pos} out of range")
            for name, t in self._storage().items():
                src = state[name]
                if tuple(src.shape) != (size, *t.shape[1:]):
                    raise DataError(
                        f"replay state field {name!r}: expected shape {(size, *t.shape[1:])}, "
                        f"got {tuple(src.shape)}"
                    )
                t[:size].copy_(src.to(device=self.device, dtype=t.dtype))
        except KeyError as exc:
            raise DataError(f"replay state: missing field {exc}") from exc
        self.size, self.pos = size, pos
