"""Fixed-size experience replay for online updates of forecasters (preallocated torch ring buffer).

Online learning on a stream forgets quickly when each step sees only the newest samples; mixing in
a random draw of older samples (experience replay, Lin 1992; Rolnick et al. 2019 for continual
learning) keeps the model close to what it learnt before while it adapts.

The buffer holds float32 tensors on the model's device, allocated once: a draw is one
``index_select`` per field straight into the step's batch, with no NumPy-to-tensor copy of the
replayed windows on every online step (issue 6: the online step must stay under 2 ms).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from envs.errors import DataError


class ReplayBuffer:
    """Ring buffer of scaled ``(window, target, weight)`` samples.

    Args:
        capacity: maximum samples kept; the oldest are overwritten.
        window: bars per window.
        n_features: features per bar.
        n_outputs: outputs per target vector.
        device: where the tensors live (the model's device).
    """

    def __init__(
        self,
        capacity: int,
        window: int,
        n_features: int,
        n_outputs: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.capacity = int(capacity)
        self.windows = torch.zeros((self.capacity, window, n_features), device=device)
        self.targets = torch.zeros((self.capacity, n_outputs), device=device)
        self.weights = torch.ones(self.capacity, device=device)
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def push(
        self,
        windows: np.ndarray | torch.Tensor,
        targets: np.ndarray | torch.Tensor,
        weights: np.ndarray | torch.Tensor,
    ) -> None:
        """Append a batch (only the newest ``capacity`` are kept when it is larger)."""
        n = int(windows.shape[0])
        if n == 1:
            # The bar-by-bar online step pushes one sample: one row copy per field into its
            # slot, the same values as the general path in about half its time (issue 6).
            pos = self.pos
            self.windows[pos].copy_(torch.as_tensor(windows[0]))
            self.targets[pos].copy_(torch.as_tensor(targets[0]))
            self.weights[pos] = float(weights[0])  # float32 -> float -> float32: exact
            self.pos = (pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)
            return
        if n > self.capacity:
            windows, targets, weights = (
                windows[-self.capacity :],
                targets[-self.capacity :],
                weights[-self.capacity :],
            )
            n = self.capacity
        dev = self.windows.device
        w_t = torch.as_tensor(windows, dtype=torch.float32, device=dev)
        y_t = torch.as_tensor(targets, dtype=torch.float32, device=dev)
        s_t = torch.as_tensor(weights, dtype=torch.float32, device=dev)
        first = min(n, self.capacity - self.pos)  # contiguous part up to the end of the ring
        self.windows[self.pos : self.pos + first] = w_t[:first]
        self.targets[self.pos : self.pos + first] = y_t[:first]
        self.weights[self.pos : self.pos + first] = s_t[:first]
        if first < n:  # wrap around to the start
            self.windows[: n - first] = w_t[first:]
            self.targets[: n - first] = y_t[first:]
            self.weights[: n - first] = s_t[first:]
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample_indices(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` slots drawn uniformly with replacement (the generator keeps draws reproducible)."""
        idx = rng.integers(0, self.size, size=n)
        return torch.from_numpy(idx).to(self.windows.device)

    def sample(
        self, n: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples uniformly with replacement: ``(windows, targets, weights)``."""
        idx = self.sample_indices(n, rng)
        return self.windows[idx], self.targets[idx], self.weights[idx]

    # --- persistence (issue 6: a reloaded predictor continues exactly as in training) ----------
    def state_dict(self) -> dict[str, Any]:
        """The ring's contents and positions as tensors and ints (``torch.load(weights_only)``
        safe): only the filled slots are stored, in slot order."""
        n = self.size
        return {
            "capacity": self.capacity,
            "size": n,
            "pos": self.pos,
            "windows": self.windows[:n].detach().cpu().clone(),
            "targets": self.targets[:n].detach().cpu().clone(),
            "weights": self.weights[:n].detach().cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any], where: str = "replay") -> None:
        """Restore :meth:`state_dict` into this (same-shaped) buffer.

        Raises:
            DataError: capacity, sizes or tensor shapes that do not fit this buffer.
        """
        try:
            capacity, size, pos = int(state["capacity"]), int(state["size"]), int(state["pos"])
            windows, targets, weights = state["windows"], state["targets"], state["weights"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: malformed replay state ({exc!r})") from exc
        if capacity != self.capacity or not 0 <= size <= capacity or not 0 <= pos < capacity:
            raise DataError(
                f"{where}: replay capacity {capacity}, size {size}, pos {pos}; expected "
                f"capacity {self.capacity}, 0 <= size <= capacity, 0 <= pos < capacity"
            )
        expected = [
            ("windows", windows, (size, *self.windows.shape[1:])),
            ("targets", targets, (size, *self.targets.shape[1:])),
            ("weights", weights, (size,)),
        ]
        for name, tensor, shape in expected:
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
                raise DataError(f"{where}: replay {name} has shape {got}, expected {shape}")
        dev = self.windows.device
        self.windows[:size] = windows.to(dev, torch.float32)
        self.targets[:size] = targets.to(dev, torch.float32)
        self.weights[:size] = weights.to(dev, torch.float32)
        self.size, self.pos = size, pos


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A NumPy generator's bit-generator state as JSON-able plain values (big ints as strings,
    so the state survives JSON and the restricted unpickler alike)."""
    return _stringify(rng.bit_generator.state)


def restore_rng(state: Mapping[str, Any], where: str = "rng") -> np.random.Generator:
    """A generator in the state :func:`rng_state` recorded (only NumPy's own bit generators).

    Raises:
        DataError: an unknown bit generator or a malformed state.
    """
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    if name not in ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"):
        raise DataError(f"{where}: unknown bit generator {name!r}")
    bit_gen = getattr(np.random, str(name))()
    try:
        bit_gen.state = _unstringify(state)
    except (TypeError, ValueError, KeyError) as exc:
        raise DataError(f"{where}: malformed {name} state ({exc})") from exc
    return np.random.Generator(bit_gen)


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _stringify(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__array__": [str(int(v)) for v in value.ravel()], "dtype": str(value.dtype)}
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return {"__int__": str(int(value))}
    return value


def _unstringify(value: Any) -> Any:
    if isinstance(value, dict):
        if "__int__" in value:
            return int(value["__int__"])
        if "__array__" in value:
            return np.array([int(v) for v in value["__array__"]], dtype=np.dtype(value["dtype"]))
        return {k: _unstringify(v) for k, v in value.items()}
    return value
