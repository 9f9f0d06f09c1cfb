"""Ask a loaded agent for its action and a confidence in ``[0, 1]``.

* Q-learning: ``act_with_confidence`` (softmax of the Q-values at the agent's temperature).
* SAC (squashed Gaussian): the deterministic action ``tanh(mu)`` and the probability that a
  sampled pre-tanh action has the sign of the mean, rescaled to ``[0, 1]``:
  ``2 * Phi(mean_i(|mu_i| / sigma_i)) - 1``: 0 when the policy is as likely to go either way,
  near 1 when the mean is many standard deviations from zero.
* Every SB3 / sb3-contrib algorithm: ``SB3Agent.act_with_confidence`` (the action is exactly
  ``act``'s, RecurrentPPO's LSTM state carried from snapshot to snapshot): probability of the
  chosen action (PPO, A2C, MaskablePPO, RecurrentPPO discrete), the sign-agreement measure above
  on the Gaussian (PPO/A2C/RecurrentPPO continuous, SAC, TQC), ``softmax(Q)`` of the chosen
  action (DQN; QRDQN on quantile means), and for the deterministic TD3/DDPG the sign measure of
  the unit action against TD3's fixed target-policy noise (see
  ``agents.sb3_adapter.policy_confidence``).
* Anything else (our MBPO/PETS planners): ``act`` with confidence 1 (no distribution exposed;
  the runner's confidence threshold does not apply to them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PolicyAdapter"]


_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def _plain_mlp_layers(net: Any) -> list[tuple[str, Any, Any]] | None:
    """``[(kind, weight, bias)]`` of an ``nn.Sequential`` of Linear/ReLU/Tanh without hooks
    (``agents.networks.mlp``), or None when the network is anything else."""
    if not isinstance(net, nn.Sequential):
        return None
    layers: list[tuple[str, Any, Any]] = []
    for module in net:
        if module._forward_hooks or module._forward_pre_hooks:
            return None
        if type(module) is nn.Linear:
            layers.append(("linear", module.weight, module.bias))
        elif type(module) is nn.ReLU and not module.inplace:
            layers.append(("relu", None, None))
        elif type(module) is nn.Tanh:
            layers.append(("tanh", None, None))
        else:
            return None
    return layers


class PolicyAdapter:
    """One forward pass per decision: ``decide(obs) -> (action, confidence)``.

    Args:
        agent: a loaded :class:`agents.base.Agent`.
    """

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        from agents.qlearning import QLearningAgent
        from agents.sac import SAC
        from agents.sb3_adapter import SB3Agent

        self._layers: list[tuple[str, Any, Any]] | None = None
        if isinstance(agent, SAC) and not agent.config.compile:
            self._decide = self._sac
            self._layers = _plain_mlp_layers(agent.actor.net)
        elif isinstance(agent, QLearningAgent):
            self._decide = self._qlearning
        elif isinstance(agent, SB3Agent):
            self._decide = self._sb3
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

    def _sb3(self, obs: Any) -> tuple[np.ndarray, float]:
        action, confidence = self.agent.act_with_confidence(obs)
        return action, float(confidence)

    def reset(self) -> None:
        """Start a new episode: RecurrentPPO's LSTM state back to zeros (no-op otherwise)."""
        reset_state = getattr(self.agent, "reset_state", None)
        if callable(reset_state):
            reset_state()

    def _sac(self, obs: Any) -> tuple[np.ndarray, float]:
        agent = self.agent
        flat, _ = agent.flattener.flatten(obs)
        with torch.inference_mode():
            # The same network call as SquashedGaussianActor.forward(deterministic=True), which
            # returns tanh(mean); the log-std head comes from the same matmul for free.
            x = torch.from_numpy(flat).to(agent.device)
            if self._layers is None:
                x = agent.actor.net(x)
            else:
                # The same kernels as nn.Sequential's forward, without its per-module Python
                # dispatch (hooks, __call__): about a third of the policy's time on one row.
                for kind, weight, bias in self._layers:
                    x = F.linear(x, weight, bias) if kind == "linear" else _ACTIVATIONS[kind](x)
            mean, log_std = x.chunk(2, dim=-1)
            unit = torch.tanh(mean).cpu().numpy()
            log_std = log_std.clamp(agent.actor.log_std_min, agent.actor.log_std_max)
            z = (mean.abs() / log_std.exp()).mean().item()
        action = agent.scale_action(unit)[0]
        confidence = math.erf(z / math.sqrt(2.0))  # = 2 * Phi(z) - 1
        return action, float(confidence)
