"""OnlineLSTM and its GRU variant: recurrent Gaussian forecasters that keep learning online.

Both are ``GaussianForecaster`` with a recurrent cell: residual skip connections between layers and
from the last bar's inputs to the head, dropout, a Gaussian NLL head (mean and variance), early
stopping on validation NLL in ``fit``, experience replay and gradient clipping in ``update``, a
performance monitor in ``stats()``, device ``auto``. The GRU has fewer parameters (3 gates instead
of 4, Cho et al. 2014); PyTorch has no fused CPU kernel for it, so its online step runs
``predictors.gru``'s (fit and inference keep ``nn.GRU``'s).
"""

from __future__ import annotations

from typing import Any

from envs.errors import ConfigError
from predictors.base import register_predictor
from predictors.forecaster import GaussianForecaster


@register_predictor("lstm")
class OnlineLSTM(GaussianForecaster):
    """LSTM forecaster of ``targets`` at ``horizons`` bars ahead, with uncertainty.

    Args:
        **config: ``ForecasterConfig`` fields (``window``, ``horizons``, ``hidden_size``, ...).

    Example:
        >>> model = OnlineLSTM(window=32, horizons=[1, 5])  # doctest: +SKIP
        >>> model.fit((features, targets))  # doctest: +SKIP
        >>> mean, std = model.predict(features[-32:])  # doctest: +SKIP
    """

    version = 1

    def __init__(self, **config: Any) -> None:
        config.setdefault("cell", "lstm")
        super().__init__(**config)


@register_predictor("gru")
class OnlineGRU(OnlineLSTM):
    """The GRU variant of ``OnlineLSTM`` (same interface, ``cell="gru"``)."""

    version = 1

    def __init__(self, **config: Any) -> None:
        if config.get("cell", "gru") != "gru":
            raise ConfigError(
                f"predictor 'gru': config field 'cell' = {config['cell']!r}, expected 'gru'"
            )
        config["cell"] = "gru"
        super().__init__(**config)
