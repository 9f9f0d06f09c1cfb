"""Fixed-size experience replay for online updates of forecasters (preallocated torch ring buffer).

Online learning on a stream forgets quickly when each step sees only the newest samples; mixing in
a random draw of older samples (experience replay, Lin 1992; Rolnick et al. 2019 for continual
learning) keeps the model close to what it learnt before while it adapts.

The buffer holds float32 tensors on the model's device, allocated once: a draw is one
``index_select`` per field straight into the step's batch, with no NumPy-to-tensor copy of the
replayed windows on every online step (issue 6: the online step must stay under 2 ms).
"""

from __future__ import annotations

import numpy as np
import torch


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
