"""A one-layer GRU for CPU whose training step costs a few tensor operations per time step.

PyTorch runs ``nn.LSTM`` on CPU through oneDNN's fused RNN kernels (``aten::mkldnn_rnn_layer``
forward and backward), but ``nn.GRU`` through a per-time-step cell of about twenty small autograd
operations, each recorded in the graph and replayed in backward. Issue 6's profile of one online
step (batch 33, 32 bars, hidden 32, one thread): the GRU's forward and backward took 1.7 ms
against the LSTM's 0.9 ms, which put the GRU forecaster's online step above the 2 ms goal.

``FastGRU`` is an ``nn.GRU`` (same parameters, names, shapes, initialisation and r/z/n gate order,
so state dicts load both ways) whose CPU forward is one ``torch.autograd.Function``:

* the input projection of all time steps is one matrix product;
* the recurrence is six in-place/``out=`` operations per step, writing into preallocated buffers
  (the gates, the candidate and the hidden states) that backward reads;
* backward is hand-written (the GRU equations of Cho et al. 2014 in PyTorch's form, below): every
  factor that does not depend on the incoming gradient is computed for all steps at once, so the
  backward recurrence is three operations per step, and the weight gradients are two matrix
  products over all steps.

With ``h' = (1 - z) * n + z * h``, ``r = sigmoid(a_r)``, ``z = sigmoid(a_z)``,
``n = tanh(gi_n + r * gh_n)``, ``a_{r,z} = gi_{r,z} + gh_{r,z}``, ``gi = W_ih x + b_ih`` and
``gh = W_hh h + b_hh``, a gradient ``g = dL/dh'`` gives

* ``dL/d gi_n = g * (1 - z) * (1 - n^2)``  (call the factor ``A``),
* ``dL/d gh_n = g * A * r``,
* ``dL/d a_z = g * (h - n) * z * (1 - z)``,
* ``dL/d a_r = g * A * gh_n * r * (1 - r)``,
* ``dL/dh = g * z + [dL/d a_r, dL/d a_z, dL/d gh_n] @ W_hh``.

Elsewhere (CUDA, packed sequences, several layers, bidirectional) it is plain ``nn.GRU``. The
arithmetic equals ``nn.GRU``'s up to floating-point rounding; the tests check the outputs and the
gradients against ``nn.GRU`` and against finite differences (``gradcheck``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _input_gates(
    x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """All steps' input projection, laid out for the recurrence.

    Returns ``pre (T, B, 3H)`` holding ``[gi_r + b_hr, gi_z + b_hz, b_hn]`` (the recurrence adds
    ``h W_hh^T`` in place, which leaves ``[a_r, a_z, gh_n]``) and ``gi_n (T, B, H)``. Folding
    ``b_hh`` in here, once for all steps, saves an addition per step.
    """
    steps, batch, _ = x.shape
    hidden = w_ih.shape[0] // 3
    gi = torch.addmm(b_ih, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, 3 * hidden)
    gi_n = gi[..., 2 * hidden :].clone()
    gi[..., : 2 * hidden] += b_hh[: 2 * hidden]
    gi[..., 2 * hidden :] = b_hh[2 * hidden :]
    return gi, gi_n


def _recur(
    pre: torch.Tensor, gi_n: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor
) -> torch.Tensor:
    """The GRU recurrence, in place in ``pre`` and ``gi_n``: five tensor operations per step.

    Args:
        pre: ``(T, B, 3H)`` from ``_input_gates``; step ``t`` turns ``pre[t]`` into
            ``[r, z, gh_n]`` (what backward needs).
        gi_n: ``(T, B, H)`` input part of the candidate; step ``t`` turns it into the
            candidate ``n`` (what backward needs).
        h0: ``(B, H)`` initial state.
        w_hh: ``(3H, H)`` recurrent weights.

    Returns:
        ``hs (T + 1, B, H)``: ``hs[0] = h0`` and ``hs[t + 1]`` the state after step ``t``.
    """
    steps, batch, hidden = gi_n.shape
    hs = gi_n.new_empty((steps + 1, batch, hidden))
    hs[0].copy_(h0)
    # Inference mode drops the autograd and view-tracking dispatch from every operation of
    # the loop (about a tenth of its cost); the buffers are ordinary tensors written in place,
    # which inference mode allows, so they can still leave as autograd outputs.
    with torch.inference_mode():
        w_hh_t = w_hh.t()
        h_all = hs.unbind(0)
        # One unbind per buffer instead of slicing inside the loop: each slice is a
        # dispatcher call.
        per_step = zip(
            pre.unbind(0),
            pre[..., : 2 * hidden].unbind(0),
            pre[..., :hidden].unbind(0),
            pre[..., hidden : 2 * hidden].unbind(0),
            pre[..., 2 * hidden :].unbind(0),
            gi_n.unbind(0),
            strict=True,
        )
        for t, (pre_t, rz_t, r_t, z_t, gh_n_t, n_t) in enumerate(per_step):
            h_t = h_all[t]
            pre_t.addmm_(h_t, w_hh_t)  # [a_r, a_z, gh_n]
            rz_t.sigmoid_()  # [r, z, gh_n]
            n_t.addcmul_(r_t, gh_n_t).tanh_()  # n = tanh(gi_n + r * gh_n)
            torch.lerp(n_t, h_t, z_t, out=h_all[t + 1])  # (1 - z) n + z h = n + z (h - n)
    return hs


class _GRUFunction(torch.autograd.Function):
    """One GRU layer over a time-major sequence, with a hand-written, optionally truncated,
    backward (``grad_steps``: only the last steps carry gradients; see ``gru_sequence``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        h0: torch.Tensor,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        grad_steps: int,
    ) -> torch.Tensor:
        pre, n = _input_gates(x, w_ih, b_ih, b_hh)
        hs = _recur(pre, n, h0, w_hh)
        # hs is the output: saved through save_for_backward (no reference cycle); the gate and
        # candidate buffers are intermediates no one else holds.
        ctx.save_for_backward(x, w_ih, w_hh, hs)
        ctx.buffers = (pre, n)
        ctx.grad_steps = grad_steps
        return hs

    @staticmethod
    def backward(ctx: Any, grad_hs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, w_ih, w_hh, hs = ctx.saved_tensors
        gates, n = ctx.buffers
        total, batch, _ = x.shape
        # Steps [cut, total) carry gradients; hs[cut] (the state they start from) and everything
        # before it count as constants (truncated BPTT; cut = 0: the whole sequence, with h0).
        cut = total - ctx.grad_steps
        steps, hidden = total - cut, w_hh.shape[1]
        gates, n, h_prev = gates[cut:], n[cut:], hs[cut:-1]
        r, z, gh_n = gates[..., :hidden], gates[..., hidden : 2 * hidden], gates[..., 2 * hidden :]
        # Factors of the incoming gradient that do not depend on it, for all steps at once
        # (module docstring): the rows r, z, n of d(a_r, a_z, gh_n)/dh' are [E, D, C]; gi_n's
        # is A.
        a = (1 - z) * (1 - n * n)
        factors = torch.cat(
            [a * gh_n * r * (1 - r), (h_prev - n) * z * (1 - z), a * r], dim=-1
        ).view(steps, batch, 3, hidden)
        # dhs[t] accumulates dL/d hs[cut + t]: the output's own gradient plus what flows back.
        dhs = grad_hs[cut:].clone(memory_format=torch.contiguous_format)
        d_gh = torch.empty_like(factors)
        per_step = list(
            zip(
                factors.unbind(0),
                d_gh.unbind(0),
                d_gh.view(steps, batch, 3 * hidden).unbind(0),
                z.unbind(0),
                dhs[1:].unsqueeze(2).unbind(0),
                dhs[1:].unbind(0),
                dhs[:-1].unbind(0),
                strict=True,
            )
        )
        with torch.inference_mode():  # as in _recur: in place on ordinary tensors
            for t in range(steps - 1, -1, -1):
                fac_t, d_gh_t, d_gh_2d, z_t, dh_3d, dh_t, dh_prev = per_step[t]
                torch.mul(fac_t, dh_3d, out=d_gh_t)
                if t > 0 or cut == 0:  # the gradient of hs[cut] is only wanted as dL/dh0
                    dh_prev.addcmul_(dh_t, z_t).addmm_(d_gh_2d, w_hh)
        d_gh = d_gh.view(steps * batch, 3 * hidden)
        d_gi = d_gh.clone()
        d_gi[:, 2 * hidden :] = (a * dhs[1:]).view(steps * batch, hidden)
        x_cut = x[cut:].reshape(steps * batch, -1)
        need = ctx.needs_input_grad
        dx = dh0 = dw_ih = dw_hh = db_ih = db_hh = None
        if need[0]:
            dx = x.new_zeros(x.shape) if cut else None
            part = (d_gi @ w_ih).view(steps, batch, -1)
            dx = part if dx is None else dx.index_copy_(0, torch.arange(cut, total), part)
        if need[1]:
            dh0 = dhs[0] if cut == 0 else torch.zeros_like(dhs[0])
        if need[2]:
            dw_ih = d_gi.t() @ x_cut
        if need[3]:
            dw_hh = d_gh.t() @ h_prev.reshape(steps * batch, hidden)
        if need[4]:
            db_ih = d_gi.sum(0)
        if need[5]:
            db_hh = d_gh.sum(0)
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None


def gru_sequence(
    x: torch.Tensor,
    h0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
    grad_steps: int = 0,
) -> torch.Tensor:
    """Hidden states ``(T + 1, B, H)`` (``[0]`` is ``h0``) of one GRU layer over ``x``.

    Args:
        x: time-major inputs ``(T, B, I)``.
        h0: initial state ``(B, H)``.
        w_ih, w_hh, b_ih, b_hh: ``nn.GRU``'s ``weight_ih_l0`` ``(3H, I)``, ``weight_hh_l0``
            ``(3H, H)``, ``bias_ih_l0`` and ``bias_hh_l0`` ``(3H,)``, gates in r, z, n order.
        grad_steps: truncated back-propagation through time (Williams & Peng 1990): when
            ``0 < grad_steps < T`` only the last ``grad_steps`` steps carry gradients; the state
            they start from and every earlier input and output count as constants (the
            gradient of a layer restarted at the cut from a detached state). ``0``: all steps.

    Returns:
        The states; differentiable through the hand-written backward when autograd records.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, h0, w_ih, w_hh, b_ih, b_hh)
    )
    if needs_grad:
        steps = x.shape[0]
        kept = steps if not 0 < grad_steps < steps else int(grad_steps)
        return _GRUFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, kept)
    pre, n = _input_gates(x, w_ih, b_ih, b_hh)
    return _recur(pre, n, h0, w_hh)


class FastGRU(nn.GRU):
    """``nn.GRU`` plus ``forward_fused``: the same layer through this module's CPU kernel.

    Same constructor, parameters (names, shapes, initialisation, r/z/n order), state dict and
    ``forward`` as ``nn.GRU``, so ``fit`` and batched inference are exactly what they were. The
    online step calls ``forward_fused`` (``RecurrentGaussianNet.encode`` with ``grad_steps``),
    which equals ``forward`` up to floating-point rounding and is cheaper for small batches.
    """

    def fusable(self, x: Any) -> bool:
        """Whether ``forward_fused`` runs this module's kernel for ``x`` (else ``forward``):
        one unidirectional, batch-first layer with biases and no projection, on the CPU."""
        return (
            isinstance(x, torch.Tensor)
            and x.device.type == "cpu"
            and x.dim() == 3
            and self.num_layers == 1
            and not self.bidirectional
            and self.bias
            and self.batch_first
            and self.proj_size == 0
        )

    def forward_fused(
        self, input: torch.Tensor, hx: torch.Tensor | None = None, grad_steps: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s ``(output (B, T, H), h_n (1, B, H))`` through ``gru_sequence``.

        ``grad_steps``: ``gru_sequence``'s truncation (0: none). Needs ``fusable(input)``;
        the caller keeps ``nn.GRU``'s kernels otherwise (CUDA: cuDNN).
        """
        if not self.fusable(input):
            raise ValueError("FastGRU.forward_fused: input not fusable (see FastGRU.fusable)")
        batch = input.shape[0]
        if hx is None:
            h0 = input.new_zeros((batch, self.hidden_size))
        else:
            h0 = hx.reshape(batch, self.hidden_size)
        hs = gru_sequence(
            input.transpose(0, 1).contiguous(),
            h0,
            self.weight_ih_l0,
            self.weight_hh_l0,
            self.bias_ih_l0,
            self.bias_hh_l0,
            grad_steps,
        )
        return hs[1:].transpose(0, 1), hs[-1:]
