"""Fixed-size experience replay for online updates of forecasters (NumPy ring buffer).

Online learning on a stream forgets quickly when each step sees only the newest samples; mixing in
a random draw of older samples (experience replay, Lin 1992; Rolnick et al. 2019 for continual
learning) keeps the model close to what it learnt before while it adapts.
"""

from __future__ import annotations

import numpy as np


class ReplayBuffer:
    """Ring buffer of scaled ``(window, target, weight)`` samples.

    Args:
        capacity: maximum samples kept; the oldest are overwritten.
        window: bars per window.
        n_features: features per bar.
        n_outputs: outputs per target vector.
    """

    def __init__(self, capacity: int, window: int, n_features: int, n_outputs: int) -> None:
        self.capacity = int(capacity)
        self.windows = np.zeros((self.capacity, window, n_features), dtype=np.float32)
        self.targets = np.zeros((self.capacity, n_outputs), dtype=np.float32)
        self.weights = np.ones(self.capacity, dtype=np.float32)
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def push(self, windows: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> None:
        """Append a batch (only the newest ``capacity`` are kept when it is larger)."""
        n = windows.shape[0]
        if n > self.capacity:
            windows, targets, weights = (
                windows[-self.capacity :],
                targets[-self.capacity :],
                weights[-self.capacity :],
            )
            n = self.capacity
        idx = (self.pos + np.arange(n)) % self.capacity
        self.windows[idx] = windows
        self.targets[idx] = targets
        self.weights[idx] = weights
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` samples uniformly with replacement."""
        idx = rng.integers(0, self.size, size=n)
        return self.windows[idx], self.targets[idx], self.weights[idx]
