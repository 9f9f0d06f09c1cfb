"""One call that seeds everything a run touches."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int, deterministic_torch: bool = False) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and CUDA).

    Envs are seeded separately through ``reset(seed=...)`` (Gymnasium's rule: randomness only
    through ``self.np_random``), and agents seed their own generators from their config.

    Args:
        seed: the run's seed.
        deterministic_torch: also ask torch for deterministic kernels (slower on GPU).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (libraries such as SB3 draw from it)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic_torch:
        torch.use_deterministic_algorithms(True, warn_only=True)
