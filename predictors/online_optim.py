"""Adam with gradient-norm clipping over one flat buffer: the optimiser of online steps.

An online step of a small forecaster updates about ten parameter tensors of a few thousand
numbers in all. ``torch.optim.Adam`` (even ``foreach``) plus ``clip_grad_norm_`` cost about a
millisecond per step on one CPU thread, nearly all of it per-tensor Python and dispatch overhead
(issue 6 profile: 0.6 ms Adam + 0.45 ms clipping of a 5 ms step). Here the gradients are gathered
into one vector, clipped and fed through Adam as one tensor (about ten tensor operations in all),
and the update is added back with one ``_foreach_add_``.

The arithmetic is ``torch.optim.Adam``'s (Kingma & Ba 2015, with PyTorch's bias-correction
order), without weight decay or AMSGrad, after ``clip_grad_norm_``'s clipping: same numbers up to
floating-point rounding (tested against both). Parameters stay ordinary separate tensors, so
``deepcopy``, ``state_dict`` and ``load_state_dict`` of the network behave as usual.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from envs.errors import DataError

FORMAT = "flat_adam/1"


class FlatAdam:
    """Clip-then-Adam over a fixed list of parameters, with flat moment buffers.

    Args:
        params: the parameters to train (their order fixes the flat layout).
        lr: learning rate.
        betas: Adam's moment decays.
        eps: Adam's denominator guard.
        max_grad_norm: clip the global gradient norm to this (``clip_grad_norm_``; 0 disables).
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_grad_norm: float = 0.0,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise DataError("FlatAdam: no trainable parameters")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.max_grad_norm = float(max_grad_norm)
        self.sizes = [p.numel() for p in self.params]
        n = sum(self.sizes)
        ref = self.params[0]
        self.exp_avg = torch.zeros(n, dtype=ref.dtype, device=ref.device)
        self.exp_avg_sq = torch.zeros(n, dtype=ref.dtype, device=ref.device)
        self.steps = 0
        self._denom: torch.Tensor | None = None
        self._update: torch.Tensor | None = None
        self._update_views: list[torch.Tensor] | None = None
        self._grad: torch.Tensor | None = None
        self._grad_views: list[torch.Tensor] | None = None

    def zero_grad(self) -> None:
        """Drop the gradients (autograd allocates fresh ones on the next backward)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> float:
        """Clip the gradients' global norm, take one Adam step; return the pre-clip norm.

        A parameter without a gradient (not reached by the loss) counts as a zero gradient.
        """
        grads = [p.grad for p in self.params]
        if all(grad is not None for grad in grads):
            # One foreach copy into a flat buffer kept between steps: the same vector as
            # concatenating the flattened gradients, without a view per parameter (issue 6).
            if self._grad_views is None:
                self._grad = torch.empty_like(self.exp_avg)
                chunks = self._grad.split(self.sizes)
                self._grad_views = [c.view_as(p) for c, p in zip(chunks, self.params, strict=True)]
            torch._foreach_copy_(self._grad_views, grads)
            g = self._grad
        else:
            g = torch.cat(
                [
                    grad.reshape(-1) if grad is not None else p.new_zeros(p.numel())
                    for grad, p in zip(grads, self.params, strict=True)
                ]
            )
        norm = float(torch.linalg.vector_norm(g))
        if self.max_grad_norm > 0:
            coef = clip_coefficient(self.max_grad_norm, norm)
            if coef < 1.0:  # clip_grad_norm_ multiplies by exactly 1.0 otherwise
                g.mul_(coef)
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(g, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - beta1**self.steps
        bias2_sqrt = math.sqrt(1 - beta2**self.steps)
        # The same operations as before, written into buffers kept between steps, whose
        # per-parameter views are made once (issue 6: each view or allocation is a dispatcher
        # call on a sub-2 ms step).
        if self._update_views is None:
            self._denom = torch.empty_like(self.exp_avg)
            self._update = torch.empty_like(self.exp_avg)
            chunks = self._update.split(self.sizes)
            self._update_views = [u.view_as(p) for u, p in zip(chunks, self.params, strict=True)]
        torch.sqrt(self.exp_avg_sq, out=self._denom).div_(bias2_sqrt).add_(self.eps)
        torch.div(self.exp_avg, self._denom, out=self._update).mul_(-self.lr / bias1)
        torch._foreach_add_(self.params, self._update_views)
        return norm

    def __getstate__(self) -> dict[str, Any]:
        # Copies rebuild the scratch buffers and views on their first step (a deep copy's
        # views would otherwise depend on how the copy treats aliasing).
        state = dict(self.__dict__)
        state.update(_denom=None, _update=None, _update_views=None, _grad=None, _grad_views=None)
        return state

    # --- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "format": FORMAT,
            "steps": self.steps,
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "max_grad_norm": self.max_grad_norm,
            "sizes": list(self.sizes),
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``, or the state of a ``torch.optim.Adam`` over the same params.

        The second form reads files saved before this optimiser existed: their per-parameter
        moments are concatenated in parameter order, which is exactly this optimiser's layout.
        """
        if state.get("format") == FORMAT:
            if list(state["sizes"]) != self.sizes:
                raise DataError(
                    f"online optimiser state: parameter sizes {list(state['sizes'])}, expected "
                    f"{self.sizes}"
                )
            self.steps = int(state["steps"])
            self.exp_avg.copy_(state["exp_avg"])
            self.exp_avg_sq.copy_(state["exp_avg_sq"])
            return
        per_param = state.get("state", {})
        groups = state.get("param_groups", [])
        ids = [i for g in groups for i in g.get("params", [])]
        if len(ids) != len(self.params):
            raise DataError(
                f"online optimiser state: {len(ids)} parameters saved, expected {len(self.params)}"
            )
        if not per_param:  # an optimiser that never stepped
            return
        self.steps = int(float(per_param[ids[0]]["step"]))
        self.exp_avg.copy_(torch.cat([per_param[i]["exp_avg"].reshape(-1) for i in ids]))
        self.exp_avg_sq.copy_(torch.cat([per_param[i]["exp_avg_sq"].reshape(-1) for i in ids]))


def clip_coefficient(max_norm: float, norm: float) -> float:
    """``clip_grad_norm_``'s factor ``min(max_norm / (norm + 1e-6), 1)``, in its float32 steps.

    PyTorch computes it on a float32 tensor as ``reciprocal(norm + 1e-6) * max_norm``; the same
    float32 operations on scalars give the same bits without four tensor operations per step.

    Args:
        max_norm: the clipping threshold.
        norm: the global gradient norm (a float32 value).
    """
    f32 = np.float32
    coef = (f32(1.0) / (f32(norm) + f32(1e-6))) * f32(max_norm)
    return float(min(coef, f32(1.0)))
