"""Ask a loaded agent for its action and a confidence in ``[0, 1]``.

* Q-learning: ``act_with_confidence`` (softmax of the Q-values at the agent's temperature).
* SAC (squashed Gaussian): the deterministic action ``tanh(mu)`` and the probability that a
  sampled pre-tanh action has the sign of the mean, rescaled to ``[0, 1]``:
  ``2 * Phi(mean_i(|mu_i| / sigma_i)) - 1``: 0 when the policy is as likely to go either way,
  near 1 when the mean is many standard deviations from zero.
* Anything else: ``act`` with confidence 1 (the agent exposes no distribution).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["PolicyAdapter"]


class PolicyAdapter:
    """One forward pass per decision: ``decide(obs) -> (action, confidence)``.

    Args:
        agent: a loaded :class:`agents.base.Agent`.
    """

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        from agents.qlearning import QLearningAgent
        from agents.sac import SAC

        if isinstance(agent, SAC) and not agent.config.compile:
            self._decide = self._sac
        elif isinstance(agent, QLearningAgent):
            self._decide = self._qlearning
        else:
            self._decide = self._plain

    def decide(self, obs: Any) -> tuple[np.ndarray, float]:
        """Deterministic action for one observation and its confidence in ``[0, 1]``."""
        return self._decide(obs)

    def _plain(self, obs: Any) -> tuple[np.ndarray, float]:
        return np.asarray(self.agent.act(obs, deterministic=True)), 1.0

    def _qlearning(self, obs: Any) -> tuple[np.ndarray, float]:
        action, confidence = self.agent.act_with_confidence(obs, deterministic=True)
        return np.asarray(action), float(confidence)

    def _sac(self, obs: Any) -> tuple[np.ndarray, float]:
        agent = self.agent
        flat, _ = agent.flattener.flatten(obs)
        with torch.inference_mode():
            # The same network call as SquashedGaussianActor.forward(deterministic=True), which
            # returns tanh(mean); the log-std head comes from the same matmul for free.
            mean, log_std = agent.actor.net(torch.from_numpy(flat).to(agent.device)).chunk(
                2, dim=-1
            )
            unit = torch.tanh(mean).cpu().numpy()
            log_std = log_std.clamp(agent.actor.log_std_min, agent.actor.log_std_max)
            z = (mean.abs() / log_std.exp()).mean().item()
        action = agent._scale_action(unit)[0]
        confidence = math.erf(z / math.sqrt(2.0))  # = 2 * Phi(z) - 1
        return action, float(confidence)
