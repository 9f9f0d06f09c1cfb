"""Scalars every learner writes under the same stable names (SB3's convention)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from agents.base import ScalarWriter


def write_rollout_scalars(
    writer: ScalarWriter,
    step: int,
    episode_returns: Sequence[float],
    episode_lengths: Sequence[int],
    start_time: float,
    start_steps: int,
) -> None:
    """Write ``rollout/ep_rew_mean``, ``rollout/ep_len_mean`` and ``time/fps`` at ``step``.

    Args:
        writer: where scalars go (a TensorBoard ``SummaryWriter`` or anything like it).
        step: the learner's ``num_timesteps``.
        episode_returns: returns of the recent episodes (e.g. the last 100); none: no rollout
            scalars yet.
        episode_lengths: lengths of the same episodes.
        start_time: ``time.perf_counter()`` when this ``learn`` call started.
        start_steps: ``num_timesteps`` when this ``learn`` call started.
    """
    if len(episode_returns):
        writer.add_scalar("rollout/ep_rew_mean", float(np.mean(episode_returns)), step)
        writer.add_scalar("rollout/ep_len_mean", float(np.mean(episode_lengths)), step)
    elapsed = max(time.perf_counter() - start_time, 1e-9)
    writer.add_scalar("time/fps", (step - start_steps) / elapsed, step)
