"""Ask a loaded agent for its action and a confidence in ``[0, 1]``.

* Q-learning: ``act_with_confidence`` (softmax of the Q-values at the agent's temperature).
* SAC (squashed Gaussian): the deterministic action ``tanh(mu)`` and the probability that a
  sampled pre-tanh action has the sign of the mean, rescaled to ``[0, 1]``:
  ``2 * Phi(mean_i(|mu_i| / sigma_i)) - 1``: 0 when the policy is as likely to go either way,
  near 1 when the mean is many standard deviations from zero.
* SB3 actor-critic policies (PPO, A2C; not recurrent or maskable): ``act`` (SB3's ``predict``,
  so the action is exactly the agent's) and the confidence from the same observation's
  ``policy.get_distribution``: discrete (Categorical) -> the probability of the chosen action;
  continuous (diagonal Gaussian, possibly squashed) -> ``2 * Phi(mean_i(|mu_i| / sigma_i)) - 1``
  on the Gaussian's mean and std, the same sign-agreement measure as SAC's.
* SB3 SAC: the actor's mean and log-std (``actor.get_action_dist_params``), same measure.
* Anything else (our MBPO/PETS planners, SB3 DQN/TD3, recurrent or maskable SB3 policies):
  ``act`` with confidence 1 (no distribution exposed).
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


def _sign_confidence(mean: torch.Tensor, std: torch.Tensor) -> float:
    """``2 * Phi(z) - 1`` with ``z = mean_i(|mu_i| / sigma_i)``: the probability mass on the
    mean's side of zero, rescaled to ``[0, 1]``."""
    z = (mean.abs() / std.clamp_min(1e-12)).mean().item()
    return float(math.erf(z / math.sqrt(2.0)))


def _sb3_confidence_kind(agent: Any) -> str | None:
    """``distribution`` / ``sac_actor`` when an SB3 agent exposes its action distribution."""
    model = getattr(agent, "model", None)
    policy = getattr(model, "policy", None)
    if policy is None or type(agent).__name__ != "SB3Agent":
        return None
    if getattr(agent, "is_recurrent", False) or getattr(agent, "uses_action_masks", False):
        return None
    if hasattr(policy, "get_distribution"):
        return "distribution"
    actor = getattr(policy, "actor", None)
    if actor is not None and hasattr(actor, "get_action_dist_params"):
        return "sac_actor"
    return None


class PolicyAdapter:
    """One forward pass per decision: ``decide(obs) -> (action, confidence)``.

    Args:
        agent: a loaded :class:`agents.base.Agent`.
    """

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        from agents.qlearning import QLearningAgent
        from agents.sac import SAC

        self._layers: list[tuple[str, Any, Any]] | None = None
        if isinstance(agent, SAC) and not agent.config.compile:
            self._decide = self._sac
            self._layers = _plain_mlp_layers(agent.actor.net)
        elif isinstance(agent, QLearningAgent):
            self._decide = self._qlearning
        elif _sb3_confidence_kind(agent) is not None:
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
        agent = self.agent
        action = np.asarray(agent.act(obs, deterministic=True))
        policy = agent.model.policy
        with torch.inference_mode():
            tensor, _ = policy.obs_to_tensor(obs)
            if _sb3_confidence_kind(agent) == "sac_actor":
                mean, log_std, _ = policy.actor.get_action_dist_params(tensor)
                return action, _sign_confidence(mean, log_std.exp())
            dist = policy.get_distribution(tensor).distribution
            if isinstance(dist, torch.distributions.Categorical):
                chosen = torch.as_tensor(action, device=dist.probs.device).reshape(-1)
                prob = dist.probs.reshape(-1, dist.probs.shape[-1])[0, chosen[0].long()]
                return action, float(prob.item())
            if isinstance(dist, torch.distributions.Normal):
                return action, _sign_confidence(dist.mean, dist.stddev)
        return action, 1.0

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
