"""Recurrent Gaussian forecasting network and its loss.

The network maps a ``(B, W, F)`` window to a Gaussian mean and variance per output. The variance
goes through a softplus plus a floor, so it stays positive and the negative log-likelihood stays
finite (Nix & Weigend 1994; Lakshminarayanan et al. 2017 use the same mean-variance head).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import _VF, nn
from torch.nn import functional as F

from predictors.gru import FastGRU, gru_sequence


class RecurrentGaussianNet(nn.Module):
    """LSTM or GRU stack with residual skips and a Gaussian (mean, variance) head.

    Args:
        n_features: input features per bar.
        n_outputs: outputs (targets x horizons).
        hidden_size: width of the recurrent layers.
        num_layers: recurrent layers; each adds its output to its input (residual skip, He et al.
            2016), so a deeper stack starts close to the shallower one.
        cell: ``"lstm"`` or ``"gru"`` (``FastGRU``: ``nn.GRU`` plus the online step's kernel).
        dropout: dropout on each layer's output before the residual sum.
        input_skip: feed the last bar's raw features straight to the head as well; a linear path
            makes persistence-like forecasts easy to represent, the recurrent part learns the rest.
        min_var: variance floor in scaled target units.
    """

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        hidden_size: int = 32,
        num_layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.0,
        input_skip: bool = True,
        min_var: float = 1e-4,
    ) -> None:
        super().__init__()
        # FastGRU is nn.GRU (same parameters and forward) with a cheaper online-step kernel.
        rnn_cls = {"lstm": nn.LSTM, "gru": FastGRU}[cell]
        self.input_proj = nn.Linear(n_features, hidden_size)
        self.layers = nn.ModuleList(
            [rnn_cls(hidden_size, hidden_size, batch_first=True) for _ in range(num_layers)]
        )
        self.dropout = nn.Dropout(dropout)
        self.input_skip = bool(input_skip)
        head_in = hidden_size + (n_features if input_skip else 0)
        self.head = nn.Linear(head_in, 2 * n_outputs)
        self.min_var = float(min_var)
        self.n_outputs = int(n_outputs)
        self.fused_online = True
        """Run truncated (online-step) encodes of a GRU stack on the CPU through
        ``predictors.gru``'s kernel; False: through ``nn.GRU`` (for comparisons; not saved)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, var)``, each ``(B, n_outputs)``, for windows ``x`` of ``(B, W, F)``."""
        return self.decode(self.encode(x))

    def encode(self, x: torch.Tensor, grad_steps: int = 0) -> torch.Tensor:
        """The head's input: last hidden state (plus the last bar's features with input_skip).

        Args:
            x: ``(B, W, F)`` windows.
            grad_steps: truncated back-propagation through time (Williams & Peng 1990): when
                ``0 < grad_steps < W`` the first ``W - grad_steps`` bars run without autograd and
                only the last ``grad_steps`` carry gradients. Each layer restarts from the state
                it reached at the cut, so the output equals the full forward's; only the
                gradient is truncated (and backward is about ``grad_steps / W`` as costly).
                A GRU stack on the CPU runs this through ``FastGRU.forward_fused`` (same
                numbers up to rounding); ``grad_steps=0`` (fit, inference) is ``nn.GRU``'s.
        """
        steps = x.shape[1]
        truncate = 0 < grad_steps < steps and torch.is_grad_enabled()
        if truncate and self._fused(x):
            return self._encode_fused(x, grad_steps)
        elif truncate:
            cut = steps - grad_steps
            # Inference mode is cheaper than no_grad for the recurrent kernels on CPU; its
            # tensors may not enter autograd, so the carried states are cloned out of it.
            with torch.inference_mode():
                h = self.input_proj(x[:, :cut])
                states = []
                for k, rnn in enumerate(self.layers, start=1):
                    out, state = _run_rnn(rnn, h, None)
                    states.append(state)
                    # The last layer's residual sum before the cut is never read (only its
                    # state is); dropout still draws its mask, so the random stream is kept.
                    if k < len(self.layers):
                        h = h + self._drop(out)
                    elif self.dropout.p > 0:
                        self._drop(out)
            h = self.input_proj(x[:, cut:])
            for rnn, state in zip(self.layers, states, strict=True):
                # LSTM states are (h, c) pairs, GRU states one tensor.
                carried = (
                    tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()
                )
                out, _ = _run_rnn(rnn, h, carried)
                h = h + self._drop(out)
        else:
            h = self.input_proj(x)
            for rnn in self.layers:
                out, _ = rnn(h)
                h = h + self._drop(out)
        last = h[:, -1]
        if self.input_skip:
            last = torch.cat([last, x[:, -1]], dim=-1)
        return last

    def _encode_fused(self, x: torch.Tensor, grad_steps: int) -> torch.Tensor:
        """``encode`` with truncation for a GRU stack on the CPU: the online step's path.

        PyTorch's CPU GRU is a per-step cell of many small autograd operations (issue 6), so
        every layer runs FastGRU's loop kernel (``predictors.gru``) once over the whole window;
        the kernel truncates the gradient itself. Steps before the cut then get no gradient
        from any layer, so neither do ``input_proj`` and the residual sums there: the gradient
        is the split path's. Time-major throughout (no transposed copies). The first layer's
        input gates come from the raw features through ``W_ih W_proj`` (``F`` columns instead
        of ``hidden_size``): ``W_ih (W_proj x + b_proj) + b_ih`` regrouped, equal up to
        rounding. Only the last bar of the last residual sum is formed.
        """
        x_tm = x.transpose(0, 1)
        proj, first = self.input_proj, self.layers[0]
        w_fold = first.weight_ih_l0 @ proj.weight
        b_fold = torch.addmv(first.bias_ih_l0, first.weight_ih_l0, proj.bias)
        if len(self.layers) == 1:
            state = gru_sequence(
                x_tm, None, w_fold, first.weight_hh_l0, b_fold, first.bias_hh_l0, grad_steps, True
            )
            last = proj(x[:, -1]) + self._drop(state)
        else:
            out = gru_sequence(
                x_tm, None, w_fold, first.weight_hh_l0, b_fold, first.bias_hh_l0, grad_steps
            )[1:]
            h = proj(x_tm) + self._drop(out)
            for k, rnn in enumerate(self.layers[1:], start=2):
                out = gru_sequence(
                    h,
                    None,
                    rnn.weight_ih_l0,
                    rnn.weight_hh_l0,
                    rnn.bias_ih_l0,
                    rnn.bias_hh_l0,
                    grad_steps,
                )[1:]
                if k < len(self.layers):
                    h = h + self._drop(out)
            last = h[-1] + self._drop(out[-1])
        if self.input_skip:
            last = torch.cat([last, x[:, -1]], dim=-1)
        return last

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        # Dropout with p = 0 is the identity; skipping the module call saves a few microseconds
        # of the online step (issue 6).
        return self.dropout(h) if self.dropout.p > 0 else h

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether every recurrent layer can run FastGRU's kernel on ``x``'s device."""
        return self.fused_online and all(
            isinstance(rnn, FastGRU) and rnn.fusable(x) for rnn in self.layers
        )

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian head: mean and variance (softplus plus floor) from ``encode``'s output."""
        mean, raw_var = self.head(z).chunk(2, dim=-1)
        var = F.softplus(raw_var) + self.min_var
        return mean, var


def _run_rnn(rnn: nn.Module, h: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """``rnn(h, state)`` for a one-layer batch-first ``nn.LSTM``: the module's own ``_VF.lstm``
    call without the Python around it in ``nn.LSTM.forward`` (argument checks, zero states,
    re-packing), the same kernel on the same arguments, so the same bits (tested). Issue 6:
    the two calls of a truncated online step's encode cost 50-80 us less this way (interleaved
    medians, forward and backward of the step's second half). Other modules, and inputs the
    shortcut does not cover, go through ``rnn(h, state)``.
    """
    if (
        type(rnn) is not nn.LSTM
        or h.dim() != 3
        or not rnn.batch_first
        or rnn.num_layers != 1
        or rnn.proj_size
        or rnn.bidirectional
    ):
        return rnn(h, state)
    rnn._update_flat_weights()  # what forward does first (re-reads replaced weights)
    if state is None:
        zeros = torch.zeros((1, h.shape[0], rnn.hidden_size), dtype=h.dtype, device=h.device)
        state = (zeros, zeros)
    out, h_n, c_n = _VF.lstm(
        h, state, rnn._flat_weights, rnn.bias, 1, rnn.dropout, rnn.training, False, True
    )
    return out, (h_n, c_n)


def gaussian_nll(
    mean: torch.Tensor,
    var: torch.Tensor,
    target: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
    output_weight: torch.Tensor | None = None,
    *,
    normalised: bool = False,
) -> torch.Tensor:
    """Weighted Gaussian negative log-likelihood ``0.5 * (log var + (y - mu)^2 / var)``.

    Args:
        mean, var, target: ``(B, O)`` tensors.
        sample_weight: optional ``(B,)`` weights (e.g. expensive gas periods count more); the loss
            is the weighted mean over samples.
        output_weight: optional ``(O,)`` weights of the output components (e.g. liquidity, volume,
            impact); normalised to mean 1 so the loss scale does not depend on them.
        normalised: ``output_weight`` is already ``w / w.mean()`` (the online step computes it
            once instead of twice per step; the same tensor, so the same bits).

    Returns:
        A scalar tensor (constant ``0.5 * log(2 pi)`` omitted).
    """
    per = 0.5 * (torch.log(var) + (target - mean) ** 2 / var)
    if output_weight is not None:
        per = per * (output_weight if normalised else output_weight / output_weight.mean())
    per_sample = per.mean(dim=-1)
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight).sum() / sample_weight.sum()
