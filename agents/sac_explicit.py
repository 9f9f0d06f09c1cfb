"""SAC's gradient step with hand-written backward passes: autograd's arithmetic, less overhead.

With SAC's small networks ([256, 256], batch 256) on one CPU thread, a gradient step is about
600 MFLOP of matmuls, and autograd's bookkeeping (graph nodes, saved tensors, per-op dispatch
through the engine, ``zero_grad``) and the elementwise ops around it cost about as much again
(profile in issue 5). The networks here are plain ReLU MLPs, so their gradients are short to
write out by hand: per linear layer ``dW = x^T g``, ``db = sum_b g``, ``dx = g W^T`` and a
``threshold_backward`` for each ReLU, the kernels autograd would call (the one-wide Q head
uses a multiply-and-sum instead of a GEMM with one column, same multiply-adds). This module
does that, with the gradients written into preallocated ``.grad`` buffers and the activations
into a reused :class:`Workspace`, and hands the gradients to the agent's own Adam optimisers, so
checkpoints, ``state_dict`` s and the algorithm stay those of ``agents/sac.py``:

* same update order as SB3's ``SAC.train`` and ``SAC.update``: entropy coefficient, critics
  (clipped double-Q soft Bellman target), actor through the *updated* critics, Polyak (run
  right after the critics' Adam step, which is the same update: nothing after it changes the
  critics or reads the targets);
* same random draws in the same order from the agent's generator (the policy noise for
  ``obs``, then for ``next_obs``), so one step matches the autograd step to float rounding
  (``tests/test_sac_explicit.py``);
* the actor's two forward passes (``obs`` with gradients, ``next_obs`` without) run as one
  forward on the stacked batch: the same multiply-adds in one matmul per layer;
* the actor's loss reads ``min_k Q_k``, so each row's gradient flows through one critic (two on
  a tie): on the CPU with one intra-op thread each critic's backward runs on its own rows only
  (for twin critics half of that 256x256 matmul), with the bits of the all-rows batched matmul
  (with more threads the all-rows matmul is faster, see ``_member_rows``);
* the Adam steps call ``torch._fused_adam_`` directly (:class:`FusedAdamStep`) on the
  optimisers' own state, with their step counts as views of one flat tensor (one ``add_``
  per call), ``log_alpha``'s step shares the actor's call, and the logged statistics are
  computed when read (:meth:`ExplicitSACUpdate.stats`);
* the three ensemble passes of a step (target, critic, critic at the policy's actions) share
  one set of hidden-activation and gradient buffers, which stays warmer in the caches;
* every view a step reads (weight transposes, per-member weights, batch halves, flattened
  rows, broadcast inputs) is made once, per parameter storage and per batch size
  (:class:`_ParamViews`, :class:`_StepBuffers`), and the small elementwise chains (squashed
  sample, Bellman target, the actor head's gradient) run in place on those buffers with the
  same ops in the same order (issue 5: ~75 view calls of ~5 us each per step before).

Issue 5 profile (Pendulum, 1 thread, loaded 2-core machine, in-step wall time per op kind):
the 15 256x256x256-equivalent products are ~6.4-7 ms of a ~9.3 ms step (~345 us each when
their operands are in cache, ~425 us here); the rest is ~150 small ops: ReLU forward and
backward (~0.4 ms), the one-wide Q heads' multiply-and-sum and bias sums (~0.4 ms), the two
fused Adam calls (~0.28 ms), row gathers/scatters of the per-member backward (~0.2 ms), bias
broadcasts into the products' outputs, views, and the env side (acting, env step, replay
write and sample, ~0.1 ms when measured alone).

Derivatives used (``u = mu + sigma * eps``, ``a = tanh(u)``, ``sigma = exp(clamp(s))``):
``d log pi / du = 2 a`` (the derivative of ``-log(1 - tanh(u)^2)``, Haarnoja et al. 2018,
appendix C), ``d log pi / d s = -1`` inside the clamp, ``da/du = 1 - a^2``; ``min_k Q_k`` sends
its gradient to the minimum, split evenly between ties as ``torch.amin`` does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import optimizer as _torch_optimizer

from agents.networks import BatchedLinear, EnsembleMLP

if TYPE_CHECKING:
    from agents.replay import ReplayBatch
    from agents.sac import SAC

__all__ = [
    "ExplicitSACUpdate",
    "FusedAdamStep",
    "Workspace",
    "actor_action",
    "actor_layers",
    "squashed_sample",
]

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_relu_backward_out = torch.ops.aten.threshold_backward.grad_input


def squashed_sample(
    head: torch.Tensor, noise: torch.Tensor, log_std_min: float, log_std_max: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tanh-squashed Gaussian sample from the actor head ``[mean | log_std]`` and unit noise.

    Returns ``(action, log_prob, log_std (clamped), std)``; ``log_prob`` carries the change of
    variables ``log|d tanh(u)/du| = 2 * (log 2 - u - softplus(-2u))`` (Haarnoja et al. 2018,
    appendix C; the numerically stable form of CleanRL and Spinning Up).
    """
    mean, log_std = head.chunk(2, dim=-1)
    log_std = log_std.clamp(log_std_min, log_std_max)
    std = log_std.exp()
    pre_tanh = mean + std * noise  # reparameterisation trick
    log_prob = (
        -0.5 * noise.square()
        - log_std
        - _HALF_LOG_2PI
        - 2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))
    ).sum(-1)
    return torch.tanh(pre_tanh), log_prob, log_std, std


def actor_layers(net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``[(weight, bias)]`` of an ``nn.Sequential`` alternating Linear and ReLU (ending with a
    Linear, no hooks), as ``agents.networks.mlp`` builds it; None for anything else."""
    if not isinstance(net, nn.Sequential) or len(net) % 2 == 0:
        return None
    layers = []
    for i, module in enumerate(net):
        if module._forward_hooks or module._forward_pre_hooks:
            return None
        expected = nn.Linear if i % 2 == 0 else nn.ReLU
        if type(module) is not expected or (expected is nn.ReLU and module.inplace):
            return None
        if expected is nn.Linear:
            layers.append((module.weight, module.bias))
    return layers


def _ensemble_layers(net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``[(weight (K, in, out), bias (K, 1, out))]`` of a ReLU ``EnsembleMLP``; else None."""
    if not isinstance(net, EnsembleMLP) or net._forward_hooks or net._forward_pre_hooks:
        return None
    layers = []
    for i, module in enumerate(net.layers):
        if module._forward_hooks or module._forward_pre_hooks:
            return None
        expected = BatchedLinear if i % 2 == 0 else nn.ReLU
        if type(module) is not expected or (expected is nn.ReLU and module.inplace):
            return None
        if expected is BatchedLinear:
            layers.append((module.weight, module.bias))
    return layers if len(net.layers) % 2 == 1 else None


class Workspace:
    """Named scratch tensors reused from step to step (reallocated when a shape changes).

    Allocating and freeing a few MB of activations per step made glibc hand pages back to the
    OS and fault them in again (~450 minor page faults per step, about 10% of the step on one
    CPU thread; issue 5 profile); writing into the same buffers with ``out=`` avoids that.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """The buffer ``name`` with ``shape`` and ``like``'s dtype and device (contents stale)."""
        buf = self._buffers.get(name)
        if (
            buf is None
            or buf.shape != shape
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf


def _relu_backward_(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``grad *= (output > 0)`` in place: the kernel autograd runs for ReLU's backward."""
    return _relu_backward_out(grad, output, 0, grad_input=grad)


def _batched_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor,
    out: torch.Tensor,
    prod: torch.Tensor | None,
) -> torch.Tensor:
    """``x @ weight + bias`` per member into ``out``: ``(K, B, in) x (K, in, out)``.

    ``weight_t`` is ``weight.transpose(1, 2)`` and ``prod`` a ``x``-shaped buffer (a one-wide
    layer only), both made once by the caller.
    """
    if weight.shape[-1] == 1:
        # A one-wide layer (the Q head) is a matrix-vector product per member; a batched GEMM
        # with one output column runs about 5x slower than this multiply-and-sum on one CPU
        # thread (issue 5 profile), for the same multiply-adds.
        prod = torch.mul(x, weight_t, out=prod) if prod is not None else torch.mul(x, weight_t)
        return torch.sum(prod, -1, keepdim=True, out=out).add_(bias)
    return torch.baddbmm(bias, x, weight, out=out)


def _batched_input_grad(
    grad: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``grad @ weight^T`` per member into ``out``: ``(K, B, out) x (K, in, out) -> (K, B, in)``
    (``weight_t`` is ``weight.transpose(1, 2)``)."""
    if weight.shape[-1] == 1:
        # A one-wide layer (the critics' Q head) makes this an outer product; a broadcast
        # multiply does the same multiplications without a batched GEMM of inner size 1, which
        # BLAS handles poorly.
        return torch.mul(grad, weight_t, out=out)
    return torch.bmm(grad, weight_t, out=out)


class _ParamViews:
    """Views of the parameters that every step reads: transposes, per-member slices, the action
    columns of the critics' first layer.

    Creating a view costs a few microseconds of dispatch on the CPU, and a step used ~75 of
    them (issue 5 profile, ~0.37 ms a step). The parameters are updated in place (Adam,
    Polyak, ``load_state_dict`` copies into them), so views made once stay valid as long as
    each weight keeps its storage; :meth:`valid` checks that on every step (a ``.data`` swap or
    a module ``.to(device)`` gives new storage, and the views are made again).
    """

    def __init__(
        self,
        actor: list[tuple[torch.Tensor, torch.Tensor]],
        critic: list[tuple[torch.Tensor, torch.Tensor]],
        target: list[tuple[torch.Tensor, torch.Tensor]],
        obs_dim: int,
    ) -> None:
        self.weights = [w for layers in (actor, critic, target) for w, _ in layers]
        self.ptrs = [w.data_ptr() for w in self.weights]
        self.actor_t = [w.t() for w, _ in actor]
        self.critic_t = [w.transpose(1, 2) for w, _ in critic]
        self.target_t = [w.transpose(1, 2) for w, _ in target]
        # Member k's (in, out) weights, transposed, for the per-member backward.
        self.member_t = [[w[k].t() for w, _ in critic] for k in range(critic[0][0].shape[0])]
        # (K, hidden, A): the action inputs of the critics' first layer, transposed.
        self.action_cols_t = critic[0][0][:, obs_dim:, :].transpose(1, 2)

    def valid(self) -> bool:
        """Whether every weight still has the storage the views were made from."""
        return [w.data_ptr() for w in self.weights] == self.ptrs


class _StepBuffers:
    """The step's inputs, activations and gradients for one batch size, from a
    :class:`Workspace`, with the views of them that every step reads (row halves of the
    stacked actor batch, member-flattened rows, the ensembles' broadcast inputs, squeezed
    outputs): made once per batch size instead of once per step (see :class:`_ParamViews`).
    """

    def __init__(
        self,
        ws: Workspace,
        like: torch.Tensor,
        n: int,
        actor: list[tuple[torch.Tensor, torch.Tensor]],
        critic: list[tuple[torch.Tensor, torch.Tensor]],
        obs_dim: int,
        action_dim: int,
    ) -> None:
        self.key = (n, like.dtype, like.device)
        n_members = critic[0][0].shape[0]
        # Actor: one forward on [obs; next_obs], backward on the obs half.
        self.noise = ws.get("noise", (2 * n, action_dim), like)
        self.noise_lo, self.noise_hi = self.noise[:n], self.noise[n:]
        self.stacked = ws.get("actor.in", (2 * n, obs_dim), like)
        self.actor_h = [
            ws.get(f"actor.h{i}", (2 * n, w.shape[0]), like) for i, (w, _) in enumerate(actor[:-1])
        ]
        self.head = ws.get("actor.head", (2 * n, actor[-1][0].shape[0]), like)
        self.log_std_raw_lo = self.head[:n, action_dim:]
        # Layer i's input on the obs rows, its transpose, and the gradient arriving at layer i.
        self.actor_in = [self.stacked[:n], *(h[:n] for h in self.actor_h)]
        self.actor_in_t = [x.t() for x in self.actor_in]
        self.grad_head = ws.get("actor.grad_head", (n, actor[-1][0].shape[0]), like)
        self.actor_grad = [
            ws.get(f"actor.g{i}", (n, actor[i - 1][0].shape[0]), like) for i in range(1, len(actor))
        ] + [self.grad_head]
        self.actor_grad_t = [g.t() for g in self.actor_grad]
        # The squashed sample's intermediates on both halves, and their obs / next_obs halves.
        self.head_mean = self.head[:, :action_dim]
        self.head_log_std = self.head[:, action_dim:]
        sample = (2 * n, action_dim)
        self.log_std = ws.get("sample.log_std", sample, like)
        self.std = ws.get("sample.std", sample, like)
        self.pre_tanh = ws.get("sample.pre_tanh", sample, like)
        self.log_prob_terms = ws.get("sample.terms", sample, like)
        self.softplus = ws.get("sample.softplus", sample, like)
        self.tanh_terms = ws.get("sample.tanh_terms", sample, like)
        self.log_prob = ws.get("sample.log_prob", (2 * n,), like)
        self.action = ws.get("sample.action", sample, like)
        self.std_lo = self.std[:n]
        self.log_prob_lo, self.log_prob_hi = self.log_prob[:n], self.log_prob[n:]
        self.action_lo, self.action_hi = self.action[:n], self.action[n:]
        # The actor head's gradient terms (obs half).
        half = (n, action_dim)
        self.squash_grad = ws.get("grad.squash", half, like)
        self.entropy_grad = ws.get("grad.entropy", half, like)
        self.grad_head_pre = self.grad_head[:, :action_dim]
        self.grad_head_log_std = self.grad_head[:, action_dim:]
        self.above_min = torch.empty(half, dtype=torch.bool, device=like.device)
        self.below_max = torch.empty(half, dtype=torch.bool, device=like.device)
        # Critic ensembles: three passes share the hidden and gradient buffers.
        width_in = obs_dim + action_dim
        self.ens_in = {
            t: ws.get(f"{t}.in", (n, width_in), like) for t in ("target", "critic", "pi")
        }
        self.ens_in_k = {t: x.expand(n_members, n, width_in) for t, x in self.ens_in.items()}
        self.ens_h = [
            ws.get(f"ens.h{i}", (n_members, n, w.shape[-1]), like)
            for i, (w, _) in enumerate(critic[:-1])
        ]
        self.ens_h_flat = [h.view(n_members * n, -1) for h in self.ens_h]
        # Layer i's input in the critic pass (transposed for the weight gradient).
        self.critic_layer_in = [self.ens_in_k["critic"], *self.ens_h]
        self.critic_layer_in_t = [x.transpose(1, 2) for x in self.critic_layer_in]
        width_out = critic[-1][0].shape[-1]
        self.ens_out = {t: ws.get(f"{t}.out", (n_members, n, width_out), like) for t in self.ens_in}
        self.ens_out_sq = {t: x.squeeze(-1) for t, x in self.ens_out.items()}
        # Multiply-and-sum buffers of one-wide layers (the Q head), shaped like their input.
        self.ens_prod = [
            ws.get("head.prod" if i == len(critic) - 1 else f"ens.prod{i}", x.shape, like)
            if w.shape[-1] == 1
            else None
            for i, ((w, _), x) in enumerate(zip(critic, self.critic_layer_in, strict=True))
        ]
        self.ens_g = [
            None,
            *(ws.get(f"ens.g{i + 1}", h.shape, like) for i, h in enumerate(self.ens_h)),
        ]
        self.ens_g1_flat = self.ens_g[1].view(n_members * n, -1) if len(self.ens_g) > 1 else None
        self.next_v = ws.get("next_v", (n,), like)
        self.next_entropy = ws.get("next_entropy", (n,), like)
        self.target_q = ws.get("target_q", (n,), like)
        self.min_q_pi = ws.get("min_q_pi", (n,), like)
        self.td = ws.get("td", (n_members, n), like)
        self.td_col = self.td.unsqueeze(-1)
        self.is_min_mask = torch.empty((n_members, n), dtype=torch.bool, device=like.device)
        self.grad_q = ws.get("grad_q", (n_members, n), like)
        self.grad_q_col = self.grad_q.unsqueeze(-1)
        self.grad_q_flat = self.grad_q.view(n_members * n, 1)


# Adam settings the direct kernel call below reproduces; anything else goes through .step().
_ADAM_DEFAULTS = {
    "amsgrad": False,
    "weight_decay": 0,
    "maximize": False,
    "capturable": False,
    "differentiable": False,
    "fused": True,
    "decoupled_weight_decay": False,
}


_GLOBAL_STEP_HOOKS = (
    None
    if not hasattr(torch, "_fused_adam_")
    or not hasattr(_torch_optimizer, "_global_optimizer_pre_hooks")
    or not hasattr(_torch_optimizer, "_global_optimizer_post_hooks")
    else (
        _torch_optimizer._global_optimizer_pre_hooks,
        _torch_optimizer._global_optimizer_post_hooks,
    )
)


class FusedAdamStep:
    """``torch.optim.Adam(fused=True).step()`` for given parameters, as one direct kernel call.

    ``Optimizer.step`` spends more time in Python (profiler and hook wrappers, ``_init_group``
    rebuilding its lists, grouping tensors by device) than the fused kernel spends updating
    SAC's ~200k parameters (issue 5 profile: ~0.1 ms of wrappers per call, three calls per
    gradient step). This calls ``torch._fused_adam_`` itself with the arguments
    ``torch.optim.adam._fused_adam`` would pass: the optimiser's own state tensors (so
    ``state_dict``, checkpoints and resume are untouched), its current hyper-parameters, and
    gradient buffers given up front (the ``.grad`` the optimiser would read). The kernel treats
    every tensor on its own, so several optimisers with equal hyper-parameters share one call.

    Falls back to each optimiser's ``step()`` (which reads ``.grad``) whenever the shortcut
    would not be the same update: other Adam settings, step hooks, AMP grad scaling, optimiser
    state not created yet (first step), or several parameter groups. The state tensors are
    looked up again after ``load_state_dict`` or a settings change; a state tensor swapped by
    hand inside the same state dict is not noticed, and a ``step`` patched onto the optimiser
    instance is not called.

    Args:
        entries: ``(optimizer, params, grads)`` per optimiser; ``params`` must be exactly the
            optimiser's (single) parameter group, in order, and ``grads`` their gradients.
    """

    def __init__(
        self, entries: list[tuple[torch.optim.Optimizer, list[torch.Tensor], list[torch.Tensor]]]
    ) -> None:
        self.entries = entries
        self.params = [p for _, params, _ in entries for p in params]
        self.grads = [g for _, _, grads in entries for g in grads]
        self._key: tuple[object, ...] | None = None
        self._lists: tuple[list[torch.Tensor], ...] = ()
        self._flat_steps: torch.Tensor | None = None
        self._hyper: dict[str, float] = {}
        self._alive: list[object] = []

    def step(self) -> None:
        """Update the parameters from the gradient buffers (the optimisers' step counts too)."""
        key = self._current_key()
        if key is None or (key != self._key and not self._build(key)):
            self._fallback()
            return
        # One add on the flat counter the optimisers' step tensors are views of (see _build):
        # the same increments as Adam's ``_foreach_add_(state_steps, 1)``, in one kernel.
        self._flat_steps.add_(1)  # type: ignore[union-attr]  # set by _build with _key
        torch._fused_adam_(
            self.params,
            self.grads,
            self._lists[0],
            self._lists[1],
            [],
            self._lists[2],
            amsgrad=False,
            lr=self._hyper["lr"],
            beta1=self._hyper["beta1"],
            beta2=self._hyper["beta2"],
            weight_decay=0.0,
            eps=self._hyper["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def _current_key(self) -> tuple[object, ...] | None:
        """Identity of the optimisers' state and settings; None when the shortcut cannot apply."""
        # Hook registries are private torch attributes: a torch without them (None here) is
        # one whose step this class was not checked against, so it falls back.
        if _GLOBAL_STEP_HOOKS is None or any(_GLOBAL_STEP_HOOKS):
            return None
        key: list[object] = []
        for opt, _, _ in self.entries:
            pre = getattr(opt, "_optimizer_step_pre_hooks", None)
            post = getattr(opt, "_optimizer_step_post_hooks", None)
            if (
                type(opt) is not torch.optim.Adam
                or len(opt.param_groups) != 1
                or pre is None
                or post is None
                or pre
                or post
                or getattr(opt, "grad_scale", None) is not None
                or getattr(opt, "found_inf", None) is not None
            ):
                return None
            group = opt.param_groups[0]
            # The group dict and state dict are replaced by load_state_dict; the group's
            # settings may be edited in place (a learning-rate schedule): all are in the key.
            params = group["params"]
            key += [id(group), id(opt.state), id(params), len(params)]
            key += [value for name, value in group.items() if name != "params"]
        return tuple(key)

    def _build(self, key: tuple[object, ...]) -> bool:
        exp_avgs, exp_avg_sqs, steps = [], [], []
        hyper: dict[str, float] | None = None
        for opt, params, _ in self.entries:
            group = opt.param_groups[0]
            if any(group[k] != v for k, v in _ADAM_DEFAULTS.items()):
                return False
            if isinstance(group["lr"], torch.Tensor) or len(group["params"]) != len(params):
                return False
            if any(p is not q for p, q in zip(group["params"], params, strict=True)):
                return False
            beta1, beta2 = group["betas"]
            these = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"]}
            if hyper is not None and these != hyper:
                return False
            hyper = these
            for p in params:
                state = opt.state.get(p)
                if not state or "exp_avg" not in state:  # created by the first .step()
                    return False
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
        tensors = [*self.params, *self.grads, *exp_avgs, *exp_avg_sqs, *steps]
        first = self.params[0]
        if any(t.device != first.device or t.dtype != first.dtype for t in tensors):
            return False
        # Every parameter's step count becomes a view of one flat tensor, so one add_ counts
        # a step for all of them (torch's fused Adam bumps each 0-d tensor on its own, a per-
        # tensor loop on the CPU, ~30 us for 13 tensors). The optimisers' state dicts hold
        # the views: same values and dtype, saved and loaded like the tensors they replace.
        flat = torch.stack([step.detach() for step in steps])
        views = list(flat.unbind())
        i = 0
        for opt, params, _ in self.entries:
            for p in params:
                opt.state[p]["step"] = views[i]
                i += 1
        self._flat_steps = flat
        self._key, self._lists, self._hyper = key, (exp_avgs, exp_avg_sqs, views), hyper or {}
        # The key holds ids: keep the objects alive so no new group or state can reuse one.
        self._alive = [
            (opt.param_groups[0], opt.param_groups[0]["params"], opt.state)
            for opt, _, _ in self.entries
        ]
        return True

    def _fallback(self) -> None:
        for opt, params, grads in self.entries:
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            opt.step()


class ExplicitSACUpdate:
    """One SAC gradient step on an agent's networks with hand-written backward passes.

    Args:
        agent: the :class:`~agents.sac.SAC` whose actor, critics, ``log_alpha``, optimisers and
            generator are used (and updated in place).

    Raises:
        ValueError: when the networks are not the plain ReLU MLPs this step knows how to
            differentiate (check with :meth:`supports` first).
    """

    def __init__(self, agent: SAC) -> None:
        actor = actor_layers(agent.actor.net)
        critic = _ensemble_layers(agent.critic)
        target = _ensemble_layers(agent.critic_target)
        if actor is None or critic is None or target is None:
            raise ValueError("explicit SAC update: networks are not plain ReLU MLPs")
        self.agent = agent
        self.actor_layers, self.critic_layers, self.target_layers = actor, critic, target
        # Preallocated gradient buffers, written in place by the backward passes below.
        self.actor_grads = [(torch.empty_like(w), torch.empty_like(b)) for w, b in actor]
        self.critic_grads = [(torch.empty_like(w), torch.empty_like(b)) for w, b in critic]
        self.alpha_grad = torch.empty_like(agent.log_alpha)
        self.workspace = Workspace()
        critic_params = [t for layer in critic for t in layer]
        actor_params = [t for layer in actor for t in layer]
        critic_grads = [t for layer in self.critic_grads for t in layer]
        actor_grads = [t for layer in self.actor_grads for t in layer]
        self._critic_adam = FusedAdamStep([(agent.critic_optimizer, critic_params, critic_grads)])
        actor_entries = [(agent.actor_optimizer, actor_params, actor_grads)]
        if agent.config.autotune_entropy:  # log_alpha's step and the actor's in one call
            actor_entries.append((agent.alpha_optimizer, [agent.log_alpha], [self.alpha_grad]))
        self._actor_adam = FusedAdamStep(actor_entries)
        self._critic_params = list(agent.critic.parameters())
        self._target_params = list(agent.critic_target.parameters())
        self._stat_inputs: tuple[torch.Tensor, ...] | None = None
        self._stat_alpha: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        # Views made once and reused by every step (see _ParamViews and _StepBuffers).
        self._param_views: _ParamViews | None = None
        self._buffers: _StepBuffers | None = None
        # (K, 1, in) views of the critics' weight gradients, for one-wide layers' row sums.
        self._critic_grad_rows = [g.view(b.shape[0], 1, -1) for g, b in self.critic_grads]

    @staticmethod
    def supports(agent: SAC) -> bool:
        """Whether the agent's networks are plain ReLU MLPs (``agents.networks`` builds them so)."""
        return (
            actor_layers(agent.actor.net) is not None
            and _ensemble_layers(agent.critic) is not None
            and _ensemble_layers(agent.critic_target) is not None
        )

    @staticmethod
    def _attach(
        params: list[tuple[torch.Tensor, torch.Tensor]],
        grads: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        # Only when needed (someone may have called zero_grad(set_to_none=True)); the fused
        # kernel call below reads our buffers, .grad is kept for inspection and the fallback.
        if params[0][0].grad is grads[0][0]:
            return
        for (weight, bias), (grad_w, grad_b) in zip(params, grads, strict=True):
            weight.grad, bias.grad = grad_w, grad_b

    def _views(self, obs: torch.Tensor) -> tuple[_ParamViews, _StepBuffers]:
        """The parameter views and this batch size's buffers, made again when stale."""
        views = self._param_views
        if views is None or not views.valid():
            views = self._param_views = _ParamViews(
                self.actor_layers, self.critic_layers, self.target_layers, self.agent.obs_dim
            )
        bufs = self._buffers
        if bufs is None or bufs.key != (obs.shape[0], obs.dtype, obs.device):
            bufs = self._buffers = _StepBuffers(
                self.workspace,
                obs,
                obs.shape[0],
                self.actor_layers,
                self.critic_layers,
                self.agent.obs_dim,
                self.agent.action_dim,
            )
        return views, bufs

    @torch.no_grad()
    def step(self, batch: ReplayBatch, polyak_tau: float | None = None) -> None:
        """Apply one gradient step; :meth:`stats` then returns its statistics.

        Args:
            batch: the sampled transitions.
            polyak_tau: when given, also move the target critics towards the critics by this
                coefficient (``target += tau * (critic - target)``), right after the critics'
                Adam step: nothing later in the step changes the critics, so the result is that
                of the Polyak update after the step, with the critics' parameters still in the
                cache.
        """
        agent = self.agent
        cfg = agent.config
        obs, actions, rewards, next_obs, discounts = batch
        n = obs.shape[0]
        actor = agent.actor
        gen = agent.generator
        views, bufs = self._views(obs)

        # --- actor on obs (kept for its backward) and next_obs, one forward, SB3's draw order.
        bufs.noise_lo.normal_(generator=gen)
        bufs.noise_hi.normal_(generator=gen)
        x = torch.cat([obs, next_obs], out=bufs.stacked)
        for (_, bias), weight_t, out in zip(
            self.actor_layers[:-1], views.actor_t, bufs.actor_h, strict=False
        ):
            x = torch.addmm(bias, x, weight_t, out=out).relu_()  # = F.linear, into the buffer
        torch.addmm(self.actor_layers[-1][1], x, views.actor_t[-1], out=bufs.head)
        self._squashed_sample(bufs, actor.log_std_min, actor.log_std_max)
        pi_actions, next_actions = bufs.action_lo, bufs.action_hi
        log_prob, next_log_prob = bufs.log_prob_lo, bufs.log_prob_hi

        # --- entropy coefficient: J(alpha) = E[-log_alpha * (log pi + target_entropy)].
        log_alpha = agent.log_alpha
        alpha = log_alpha.exp()  # the pre-step value is used below, as in SB3
        neg_log_alpha = entropy_gap = None
        if cfg.autotune_entropy:
            entropy_gap = (log_prob + agent.target_entropy).mean()
            neg_log_alpha = -log_alpha  # kept for the loss statistic (log_alpha moves below)
            torch.neg(entropy_gap, out=self.alpha_grad)
            # log_alpha's Adam step runs with the actor's at the end: nothing in between reads
            # log_alpha (alpha above is the pre-step value, as in SB3), so the result is the same.

        # --- critics: soft Bellman target with the clipped double-Q minimum (no gradient).
        torch.cat([next_obs, next_actions], 1, out=bufs.ens_in["target"])
        self._ensemble_forward(self.target_layers, views.target_t, bufs, "target")
        # Into the step's buffers; alpha * x and x * alpha, r + d * v and d * v + r round alike.
        next_v = torch.amin(bufs.ens_out_sq["target"], 0, out=bufs.next_v)
        next_v.sub_(torch.mul(next_log_prob, alpha, out=bufs.next_entropy))
        target_q = torch.mul(discounts, next_v, out=bufs.target_q).add_(rewards)
        torch.cat([obs, actions], 1, out=bufs.ens_in["critic"])
        q = self._ensemble_forward(self.critic_layers, views.critic_t, bufs, "critic")
        torch.sub(bufs.ens_out_sq["critic"], target_q, out=bufs.td)  # (K, B)
        # d/dq of 0.5 * sum_k mean_b td^2 is td / B.
        self._ensemble_backward(bufs.td_col.div_(n), views, bufs)
        self._attach(self.critic_layers, self.critic_grads)
        self._critic_adam.step()
        if polyak_tau is not None:
            # All tensors in one multi-tensor kernel call.
            torch._foreach_lerp_(self._target_params, self._critic_params, polyak_tau)

        # --- actor through the updated critics: input gradients only, no critic weight grads.
        torch.cat([obs, pi_actions], 1, out=bufs.ens_in["pi"])
        self._ensemble_forward(self.critic_layers, views.critic_t, bufs, "pi")
        q_pi = bufs.ens_out_sq["pi"]
        min_q_pi = torch.amin(q_pi, 0, out=bufs.min_q_pi)
        is_min_mask = torch.eq(q_pi, min_q_pi, out=bufs.is_min_mask)
        is_min = bufs.grad_q.copy_(is_min_mask)  # 0/1, as .to(dtype)
        is_min.div_(is_min.sum(0)).mul_(-1.0 / n)  # d loss / d Q_k, in bufs.grad_q_col
        grad_action = self._ensemble_input_backward(
            bufs.ens_h, bufs.grad_q_col, is_min_mask
        )  # (B, A)
        a, std, eps = pi_actions, bufs.std_lo, bufs.noise_lo
        # d loss / du = dL/da * (1 - a^2) + dL/dlogpi * 2a, with dL/dlogpi = alpha / B; the
        # in-place chains on the step's buffers round like the fresh-tensor expressions
        # (1 - x is -x + 1, the same single rounding).
        one_minus_a2 = torch.square(a, out=bufs.squash_grad).neg_().add_(1.0)
        entropy_term = torch.mul(a, alpha * (2.0 / n), out=bufs.entropy_grad)
        # Written straight into the head gradient's columns (no concatenation afterwards).
        grad_pre = torch.mul(grad_action, one_minus_a2, out=bufs.grad_head_pre)
        grad_pre.add_(entropy_term)
        log_std_raw = bufs.log_std_raw_lo
        in_clamp = torch.ge(log_std_raw, actor.log_std_min, out=bufs.above_min).bitwise_and_(
            torch.le(log_std_raw, actor.log_std_max, out=bufs.below_max)
        )
        grad_log_std = torch.mul(grad_pre, std, out=bufs.grad_head_log_std)
        grad_log_std.mul_(eps).sub_(alpha / n).mul_(in_clamp)
        self._mlp_backward(bufs)
        self._attach(self.actor_layers, self.actor_grads)
        if cfg.autotune_entropy:
            log_alpha.grad = self.alpha_grad
        self._actor_adam.step()
        # Statistics are computed from these only when read (logging steps): the tensors are
        # not written again before the next step (q is the critic's workspace output).
        self._stat_inputs = (q, target_q, alpha, log_prob, min_q_pi)
        self._stat_alpha = (neg_log_alpha, entropy_gap)

    def stats(self) -> dict[str, torch.Tensor]:
        """The last step's statistics as device tensors (the losses SB3 logs, ``q_mean``,
        ``ent_coef``), computed now with the same ops as the autograd reference."""
        if self._stat_inputs is None:
            return {}
        q, target_q, alpha, log_prob, min_q_pi = self._stat_inputs
        neg_log_alpha, entropy_gap = self._stat_alpha
        stats: dict[str, torch.Tensor] = {}
        if neg_log_alpha is not None:
            stats["ent_coef_loss"] = neg_log_alpha * entropy_gap
        td = q.squeeze(-1) - target_q
        stats["critic_loss"] = 0.5 * td.square().mean(dim=1).sum()
        stats["q_mean"] = q.mean()
        stats["actor_loss"] = (alpha * log_prob - min_q_pi).mean()
        stats["ent_coef"] = alpha
        return stats

    @staticmethod
    def _squashed_sample(bufs: _StepBuffers, log_std_min: float, log_std_max: float) -> None:
        """:func:`squashed_sample` of ``bufs.head`` and ``bufs.noise`` into the step's buffers:
        the same ops in the same order, as in-place chains (no fresh (2B, A) tensors)."""
        noise = bufs.noise
        log_std = torch.clamp(bufs.head_log_std, log_std_min, log_std_max, out=bufs.log_std)
        std = torch.exp(log_std, out=bufs.std)
        pre_tanh = torch.mul(std, noise, out=bufs.pre_tanh).add_(bufs.head_mean)
        # -0.5 * eps^2 - log_std - log(2 pi) / 2 - 2 * (log 2 - u - softplus(-2u)), left to right
        terms = torch.square(noise, out=bufs.log_prob_terms).mul_(-0.5)
        terms.sub_(log_std).sub_(_HALF_LOG_2PI)
        softplus = torch.mul(pre_tanh, -2.0, out=bufs.softplus)
        torch._C._nn.softplus(softplus, 1.0, 20.0, out=softplus)  # F.softplus's defaults
        tanh_terms = torch.neg(pre_tanh, out=bufs.tanh_terms).add_(_LOG_2)  # log 2 - u
        terms.sub_(tanh_terms.sub_(softplus).mul_(2.0))
        torch.sum(terms, -1, out=bufs.log_prob)
        torch.tanh(pre_tanh, out=bufs.action)

    @staticmethod
    def _ensemble_forward(
        layers: list[tuple[torch.Tensor, torch.Tensor]],
        weights_t: list[torch.Tensor],
        bufs: _StepBuffers,
        tag: str,
    ) -> torch.Tensor:
        """Output ``(K, B, out)`` of a ReLU ensemble on ``bufs.ens_in[tag]``, into
        ``bufs.ens_out[tag]``; the hidden activations go to ``bufs.ens_h``.

        The three ensemble passes of a step (target, critic, critic at the policy's actions)
        never need two sets of hidden activations at once, and one set (2 x 512 KB for twin
        [256, 256] critics) stays warmer in the caches than three.
        """
        x = bufs.ens_in_k[tag]
        last = len(layers) - 1
        for i, (weight, bias) in enumerate(layers):
            out = bufs.ens_out[tag] if i == last else bufs.ens_h[i]
            x = _batched_linear(x, weight, weights_t[i], bias, out, bufs.ens_prod[i])
            if i < last:
                x.relu_()
        return x

    def _mlp_backward(self, bufs: _StepBuffers) -> None:
        """Weight and bias gradients of the actor MLP into ``self.actor_grads``, from the
        head's gradient in ``bufs.grad_head`` and the obs half of the forward's activations."""
        inputs, inputs_t = bufs.actor_in, bufs.actor_in_t
        for i in range(len(self.actor_layers) - 1, -1, -1):
            grad, grad_t = bufs.actor_grad[i], bufs.actor_grad_t[i]
            grad_w, grad_b = self.actor_grads[i]
            if grad_w.shape[1] < grad_w.shape[0]:
                # Narrow input (the observation layer): BLAS is ~5x faster on x^T g than on
                # g^T x with a handful of output columns; transpose the small result instead.
                grad_w.copy_(torch.mm(inputs_t[i], grad).t())
            else:
                torch.mm(grad_t, inputs[i], out=grad_w)  # nn.Linear stores (out, in)
            torch.sum(grad, 0, out=grad_b)
            if i > 0:
                weight = self.actor_layers[i][0]
                _relu_backward_(torch.mm(grad, weight, out=bufs.actor_grad[i - 1]), inputs[i])

    def _ensemble_backward(
        self, grad_out: torch.Tensor, views: _ParamViews, bufs: _StepBuffers
    ) -> None:
        """Weight and bias gradients of the critic ensemble in the critic pass (its input and
        activations in ``bufs``) into ``self.critic_grads``."""
        layers, grads = self.critic_layers, self.critic_grads
        grad = grad_out
        for i in range(len(layers) - 1, -1, -1):
            weight, _ = layers[i]
            grad_w, grad_b = grads[i]
            if weight.shape[-1] == 1:
                # One output column: the weight gradient is sum_b x * g per member (see
                # _batched_linear); (K, in, 1) and (K, 1, in) share one memory layout.
                prod = torch.mul(bufs.critic_layer_in[i], grad, out=bufs.ens_prod[i])
                torch.sum(prod, 1, keepdim=True, out=self._critic_grad_rows[i])
            else:
                torch.bmm(bufs.critic_layer_in_t[i], grad, out=grad_w)
            torch.sum(grad, 1, keepdim=True, out=grad_b)
            if i > 0:
                grad = _relu_backward_(
                    _batched_input_grad(grad, weight, views.critic_t[i], bufs.ens_g[i]),
                    bufs.ens_h[i - 1],
                )

    def _ensemble_input_backward(
        self, hidden: list[torch.Tensor], grad_out: torch.Tensor, is_min: torch.Tensor
    ) -> torch.Tensor:
        """Gradient w.r.t. the action columns of the critics' shared input, summed over K.

        ``is_min`` (K, B) marks where ``grad_out`` can be non-zero: the actor's loss reads
        ``min_k Q_k``, so each row sends gradient to its minimum member only (both on a tie).
        On the CPU with one intra-op thread, each member's backward then runs on its own rows
        only, which halves the 256x256 matmul here for twin critics; the rows it skips would
        contribute exact zeros (see :meth:`_member_rows` for when this path is taken).
        """
        layers = self.critic_layers
        views = self._param_views
        if views is None or not views.valid():
            views = self._param_views = _ParamViews(
                self.actor_layers, self.critic_layers, self.target_layers, self.agent.obs_dim
            )
        n_flat = is_min.numel()
        bufs = self._buffers
        if bufs is not None and hidden is bufs.ens_h and grad_out is bufs.grad_q_col:
            grad_bufs, hidden_flat = bufs.ens_g, bufs.ens_h_flat
            grad_flat = bufs.grad_q_flat
        else:  # called on other tensors (tests): fresh buffers and views
            grad_bufs = [None, *(torch.empty_like(h) for h in hidden)]
            hidden_flat = [h.reshape(n_flat, -1) for h in hidden]
            grad_flat = grad_out.reshape(n_flat, -1)
        rows = self._member_rows(is_min) if len(layers) > 1 else None
        if rows is None:
            grad_first = grad_out
            for i in range(len(layers) - 1, 0, -1):
                grad_first = _relu_backward_(
                    _batched_input_grad(grad_first, layers[i][0], views.critic_t[i], grad_bufs[i]),
                    hidden[i - 1],
                )
        else:
            # The rows are flat indices into (K * B): one gather per tensor serves all members
            # (member k's rows are the k-th contiguous run), one scatter writes them back.
            flat_idx, sizes = rows
            grad_first = grad_bufs[1].zero_()
            grad_first_flat = grad_first.view(n_flat, -1)
            # Member k's runs of the gathered rows: one split per tensor (views).
            grad_parts = grad_flat.index_select(0, flat_idx).split(sizes)  # (n_k, 1) each
            hidden_parts = [h.index_select(0, flat_idx).split(sizes) for h in hidden_flat]
            idx_parts = flat_idx.split(sizes)
            for k, grad in enumerate(grad_parts):
                member_t = views.member_t[k]
                for i in range(len(layers) - 1, 0, -1):
                    if layers[i][0].shape[-1] == 1:
                        # outer product, see _batched_input_grad
                        grad = torch.mul(grad, member_t[i])
                    else:
                        grad = torch.mm(grad, member_t[i])
                    grad = _relu_backward_(grad, hidden_parts[i - 1][k])
                grad_first_flat.index_copy_(0, idx_parts[k], grad)
        # The last product (width A) runs on all rows in both cases: BLAS rounds its narrow
        # output differently on a row subset, and it is cheap.
        return torch.bmm(grad_first, views.action_cols_t).sum(0)

    @staticmethod
    def _member_rows(is_min: torch.Tensor) -> tuple[torch.Tensor, list[int]] | None:
        """Flat row indices into ``(K * B)`` where ``is_min`` holds (member by member, in
        order) and each member's row count; None to use the all-rows path.

        CPU only (the counts are read on the host, a sync on a GPU). Below ~8 rows BLAS
        switches to a matrix-vector kernel whose rounding differs from the batched matmul's, so
        a member with fewer than 16 rows also takes the all-rows path.

        One intra-op thread only: with more, the all-rows batched matmul splits across the
        threads while the gathers, the half-height products (about as slow as full ones at two
        threads) and the scatter do not, so the split loses. Issue 5, Pendulum, twin [256, 256]
        critics, whole update, same process, interleaved: at 1 thread the per-member path
        7.68 vs 8.17 ms (all rows); at 2 threads 5.80 vs 5.08 ms.
        """
        if is_min.device.type != "cpu" or is_min.shape[1] < 64 or torch.get_num_threads() > 1:
            return None
        sizes = is_min.sum(1).tolist()
        if min(sizes) < 16:
            return None
        if not bool(is_min.any(0).all()):
            return None  # a row without a minimum (NaN Q-values): the all-rows path keeps NaN
        return torch.nonzero(is_min.view(-1)).view(-1), sizes


def actor_action(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    obs: torch.Tensor,
    generator: torch.Generator | None,
    log_std_min: float,
    log_std_max: float,
) -> torch.Tensor:
    """The actor's action in ``[-1, 1]``: ``tanh(mean)`` without a generator, else a sample.

    The same kernels and the same draw from ``generator`` as ``SquashedGaussianActor.forward``,
    without the log-probability; call it under ``torch.no_grad``.
    """
    # In-place ops on the fresh intermediates: called once per env step, where per-op cost
    # (allocation, dispatch) is most of the time on a single observation.
    x = obs
    for weight, bias in layers[:-1]:
        x = F.linear(x, weight, bias).relu_()
    head = F.linear(x, *layers[-1])
    action_dim = head.shape[-1] // 2
    mean = head[..., :action_dim]
    if generator is None:
        return torch.tanh(mean)
    noise = torch.randn(mean.shape, generator=generator, device=head.device, dtype=head.dtype)
    std = head[..., action_dim:].clamp_(log_std_min, log_std_max).exp_()
    # std * noise + mean: the same rounded product and sum as mean + std * noise.
    return std.mul_(noise).add_(mean).tanh_()
