"""Transformer forecaster and bidirectional-LSTM-with-attention direction classifier.

The seeds' alternatives to the plain LSTM (issue 6):

* ``TransformerForecaster`` (kind ``transformer``): a causal transformer encoder over the window
  (sinusoidal positional encoding, Vaswani et al. 2017; causal mask so token ``i`` reads tokens
  ``<= i``) with the LSTM's Gaussian mean/variance head, early stopping, online replay and
  save/load — everything except the network is ``GaussianForecaster``.
* ``DirectionClassifier`` (kind ``direction``): buy / sell / hold over the next ``horizon`` bars
  from a BiLSTM with additive attention pooling (Att-BLSTM, Zhou et al. 2016; attention of
  Bahdanau et al. 2015). The "bidirectional" pass runs inside the window of bars ``<= t``, so it is
  causal with respect to ``t``. Its block holds the class probabilities and a confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from envs.errors import ConfigError, DataError
from predictors.attention import SinusoidalPositionalEncoding, causal_mask
from predictors.base import register_predictor
from predictors.forecaster import ForecasterConfig, GaussianForecaster
from predictors.window_model import ClassifierConfig, WindowClassifier

DIRECTIONS = ("sell", "hold", "buy")


# --- transformer forecaster ----------------------------------------------------------------------
class TransformerGaussianNet(nn.Module):
    """Causal transformer encoder with a Gaussian (mean, variance) head on the newest token.

    Args:
        n_features: input features per bar.
        n_outputs: outputs (targets x horizons).
        dim: model width.
        n_heads: attention heads (``dim`` divisible by it).
        num_layers: encoder layers.
        ff_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout inside the encoder layers.
        input_skip: feed the last bar's raw features to the head too (a linear path, as in
            ``RecurrentGaussianNet``).
        min_var: variance floor (scaled units).
        max_len: longest window supported by the positional encoding.
    """

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        dim: int = 32,
        n_heads: int = 4,
        num_layers: int = 1,
        ff_mult: int = 2,
        dropout: float = 0.0,
        input_skip: bool = True,
        min_var: float = 1e-4,
        max_len: int = 4096,
    ) -> None:
        super().__init__()
        self.input_proj = nn.Linear(n_features, dim)
        self.pos = SinusoidalPositionalEncoding(dim, max_len)
        layer = nn.TransformerEncoderLayer(
            dim, n_heads, ff_mult * dim, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.input_skip = bool(input_skip)
        self.head = nn.Linear(dim + (n_features if input_skip else 0), 2 * n_outputs)
        self.min_var = float(min_var)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, W, F) -> (B, W, dim)``; output ``i`` depends on bars ``<= i`` of the window."""
        h = self.pos(self.input_proj(x))
        mask = causal_mask(x.shape[1], x.device)
        return self.norm(self.encoder(h, mask=mask, is_causal=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, var)``, each ``(B, n_outputs)``, for windows ``x`` of ``(B, W, F)``."""
        last = self.sequence(x)[:, -1]
        if self.input_skip:
            last = torch.cat([last, x[:, -1]], dim=-1)
        mean, raw_var = self.head(last).chunk(2, dim=-1)
        return mean, F.softplus(raw_var) + self.min_var


@dataclass
class TransformerConfig(ForecasterConfig):
    """``ForecasterConfig`` plus the transformer's shape (``hidden_size`` is the model width)."""

    n_heads: int = 4
    """Attention heads; ``hidden_size`` must be a multiple."""
    ff_mult: int = 2
    """Feed-forward width as a multiple of ``hidden_size``."""


@register_predictor("transformer")
class TransformerForecaster(GaussianForecaster):
    """Causal-transformer forecaster of ``targets`` at ``horizons`` bars ahead, with uncertainty.

    Args:
        **config: ``TransformerConfig`` fields (``window``, ``horizons``, ``hidden_size``,
            ``num_layers``, ``n_heads``, ``ff_mult``, ``dropout``, ...).

    Example:
        >>> model = TransformerForecaster(window=32, horizons=[1], hidden_size=32)  # doctest: +SKIP
        >>> model.fit((features, targets))  # doctest: +SKIP
    """

    config_class = TransformerConfig
    version = 1

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        c = self.config
        if c.n_heads < 1 or c.hidden_size % c.n_heads or c.ff_mult < 1:
            raise ConfigError(
                f"predictor 'transformer': config fields 'hidden_size' = {c.hidden_size}, "
                f"'n_heads' = {c.n_heads}, 'ff_mult' = {c.ff_mult}; expected hidden_size a "
                "multiple of n_heads >= 1 and ff_mult >= 1"
            )

    def _build_net(self) -> TransformerGaussianNet:  # type: ignore[override]
        c = self.config
        return TransformerGaussianNet(
            n_features=len(self.feature_names),
            n_outputs=self.n_outputs,
            dim=c.hidden_size,
            n_heads=c.n_heads,
            num_layers=c.num_layers,
            ff_mult=c.ff_mult,
            dropout=c.dropout,
            input_skip=c.input_skip,
            min_var=c.min_var,
            max_len=max(c.window, 1),
        ).to(self.device)


# --- BiLSTM-attention direction classifier -------------------------------------------------------
class BiLSTMAttentionNet(nn.Module):
    """Bidirectional LSTM over the window, additive attention pooling, linear class head.

    Attention (Bahdanau et al. 2015; Zhou et al. 2016): ``e_i = v . tanh(W h_i)``,
    ``alpha = softmax(e)``, context ``sum_i alpha_i h_i``. The newest bar's features join the
    context (a direct path for the most recent move).

    Args:
        n_features: features per bar.
        n_classes: classes.
        hidden_size: LSTM width per direction.
        num_layers: stacked BiLSTM layers.
        dropout: dropout on the context.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int = 3,
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            n_features, hidden_size, num_layers, batch_first=True, bidirectional=True
        )
        self.attn_proj = nn.Linear(2 * hidden_size, hidden_size)
        self.attn_v = nn.Linear(hidden_size, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_size + n_features, n_classes)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ``(B, 2H)`` context and the ``(B, W)`` attention weights."""
        h, _ = self.lstm(x)
        alpha = torch.softmax(self.attn_v(torch.tanh(self.attn_proj(h)))[..., 0], dim=-1)
        return (alpha[..., None] * h).sum(dim=1), alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, W, F) -> (B, n_classes)`` logits."""
        context, _ = self.attention(x)
        return self.head(torch.cat([self.dropout(context), x[:, -1]], dim=-1))


@dataclass
class DirectionConfig(ClassifierConfig):
    """``ClassifierConfig`` plus the labelling of moves and the BiLSTM's depth."""

    horizon: int = 1
    """Bars ahead of the move that is classified."""
    hold_fraction: float = 1.0 / 3.0
    """Share of training samples labelled hold: the dead band is this quantile of ``|move|``."""
    threshold: float = -1.0
    """Fixed dead band on ``|move|`` in target units; negative: fitted from ``hold_fraction``."""
    num_layers: int = 1
    """Stacked BiLSTM layers."""
    target: str = ""
    """Target column holding the (log) price level; empty: the first target column."""


@register_predictor("direction")
class DirectionClassifier(WindowClassifier):
    """Buy / sell / hold classifier of the move ``y[t + horizon] - y[t]`` of a (log) price.

    Labels: ``buy`` when the move exceeds the dead band, ``sell`` below minus the dead band,
    ``hold`` in between. The dead band is fitted on the training samples (``hold_fraction``) unless
    ``threshold`` fixes it. ``target_delay`` is ``horizon``.

    Args:
        **config: ``DirectionConfig`` fields.

    Example:
        >>> clf = DirectionClassifier(window=16, horizon=1)  # doctest: +SKIP
        >>> clf.fit((returns[:, None], log_close[:, None]))  # doctest: +SKIP
        >>> clf.predict(returns[-16:, None]).mean  # p_sell, p_hold, p_buy  # doctest: +SKIP
    """

    config_class = DirectionConfig
    version = 1

    def _config_checks(self) -> list[tuple[str, bool, str]]:
        c = self.config
        return [
            *super()._config_checks(),
            ("horizon", isinstance(c.horizon, int) and c.horizon >= 1, "an int >= 1"),
            ("hold_fraction", 0.0 <= c.hold_fraction < 1.0, "in [0, 1)"),
            ("num_layers", c.num_layers >= 1, ">= 1"),
        ]

    @property
    def target_delay(self) -> int:
        """The move of sample ``t`` is known at ``t + horizon``."""
        return int(self.config.horizon)

    def _target_column(self) -> int:
        name = self.config.target
        if not name:
            return 0
        if name not in self.target_names:
            raise DataError(
                f"predictor 'direction': target column {name!r} not among {self.target_names}"
            )
        return self.target_names.index(name)

    def _moves(self, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        y = targets[:, self._target_column()]
        return y[rows + self.config.horizon] - y[rows]

    def _fit_targets(self, targets: np.ndarray, rows: np.ndarray) -> None:
        c = self.config
        if targets.shape[1] == 0:
            raise DataError("predictor 'direction': targets need a (log) price column")
        moves = self._moves(targets, rows)
        band = (
            c.threshold if c.threshold >= 0 else float(np.quantile(np.abs(moves), c.hold_fraction))
        )
        self.state["threshold"] = float(band)
        self.state["classes"] = list(DIRECTIONS)
        self._set_class_weights(self._labels(moves))

    def _labels(self, moves: np.ndarray) -> np.ndarray:
        band = float(self.state["threshold"])
        return np.where(moves > band, 2, np.where(moves < -band, 0, 1)).astype(np.float32)

    def _sample_targets(self, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if "threshold" not in self.state:
            raise DataError("predictor 'direction': samples need a fitted dead band (fit first)")
        return self._labels(self._moves(targets, rows))[:, None]

    def labels(self, targets: np.ndarray, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Integer labels (0 sell, 1 hold, 2 buy) of samples ``rows`` with the fitted dead band."""
        return self._sample_targets(
            np.asarray(targets, dtype=np.float64).reshape(len(targets), -1),
            np.asarray(rows, dtype=np.int64),
        )[:, 0].astype(np.int64)

    def _build_net(self) -> BiLSTMAttentionNet:
        c = self.config
        return BiLSTMAttentionNet(
            len(self.feature_names), len(DIRECTIONS), c.hidden_size, c.num_layers, c.dropout
        )
