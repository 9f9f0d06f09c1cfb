"""Rebuild what a runner needs from a run directory alone (no training code, Hydra or TensorBoard).

Read: ``.hydra/config.yaml`` (plain YAML through OmegaConf, no code), the JSON feature scaler in
``artifacts/feature_scaler.json``, and the policy file through the agent class's ``load``, which
uses ``torch.load(weights_only=True)``: a file crafted to run code when unpickled is refused with
a ``CheckpointError`` before anything in it runs.

Predictors: a run may list ``predictors`` in its config with saved predictors under
``predictors/<name>/``; each is loaded with ``predictors.load_predictor`` and wrapped in
:class:`OnlinePredictorBlock`, which computes its observation row at every bar from the runner's
raw feature history with ``predict_block`` (the provider's batched inference on one row).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.errors import ConfigError, DataError

__all__ = ["OnlinePredictorBlock", "RunFiles", "load_run_files", "market_kwargs"]

# build_market_setup arguments the runner needs (the rest only shape training episodes).
_RUNNER_KWARGS = (
    "features",
    "window",
    "action_mode",
    "positions",
    "max_leverage",
    "allow_short",
    "initial_cash",
    "taker_fee",
    "half_spread",
    "impact_k",
    "borrow_rate",
    "margin_rate",
    "latency",
    "lot_size",
    "min_notional",
    "rebalance_band",
    "vol_lookback",
    "obs_clip",
    "flatten",
    "max_drawdown",
)


@dataclass
class RunFiles:
    """The parsed contents of a run directory.

    Attributes:
        run_dir: the directory.
        config: the resolved config as plain dicts and lists.
        env_kind: ``market`` or ``arbitrage`` (``env.kind``).
        policy_path: the policy file to load.
    """

    run_dir: Path
    config: dict[str, Any]
    env_kind: str
    policy_path: Path


def load_run_files(run_dir: str | Path, policy: str = "policy") -> RunFiles:
    """Read and check a run directory's config and locate its policy file.

    Args:
        run_dir: ``runs/<env>/<agent>/<timestamp>/``.
        policy: ``policy`` (final), ``best`` (best validation) or a file path.

    Raises:
        ConfigError: the directory, its config or the policy file is missing or malformed.
    """
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"run directory {run_dir}: no .hydra/config.yaml (not a training run?)")
    try:
        config = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    except Exception as exc:
        raise ConfigError(f"{cfg_path}: cannot read the config ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("env"), dict):
        raise ConfigError(f"{cfg_path}: expected an 'env' group (kind, id, kwargs)")
    if not isinstance(config.get("agent"), dict):
        raise ConfigError(f"{cfg_path}: expected an 'agent' group (kind, params)")
    kind = config["env"].get("kind")
    if kind not in ("market", "arbitrage"):
        raise ConfigError(f"{cfg_path}: env.kind must be 'market' or 'arbitrage', got {kind!r}")
    if policy == "policy":
        path = run_dir / "policy.pt"
    elif policy == "best":
        path = run_dir / "best_policy.pt"
    else:
        path = Path(policy)
    if not path.is_file():
        raise ConfigError(f"run directory {run_dir}: policy file {path} not found")
    return RunFiles(run_dir=run_dir, config=config, env_kind=str(kind), policy_path=path)


def market_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The market env arguments of a run, defaults filled from ``build_market_setup``.

    ``action_mode: null`` resolves as the trainer does (``agents.tasks``): the agent config's
    preferred mode, else the env's default.
    """
    from envs.market_env import build_market_setup

    defaults = {
        name: p.default
        for name, p in inspect.signature(build_market_setup).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    kwargs = dict(config["env"].get("kwargs") or {})
    if kwargs.get("action_mode") is None:
        preferred = config["agent"].get("action_mode")
        kwargs["action_mode"] = preferred if preferred is not None else defaults["action_mode"]
    out = {name: kwargs.get(name, defaults[name]) for name in _RUNNER_KWARGS}
    if not isinstance(out["window"], int) or out["window"] < 1:
        raise ConfigError(f"env.kwargs.window: expected an integer >= 1, got {out['window']!r}")
    return out


class OnlinePredictorBlock:
    """A loaded predictor producing one observation row per bar from the raw feature history.

    The predictor reads a ``(W, F)`` window of the env's raw (unscaled) features, as the
    walk-forward provider does over the whole dataset; the row at bar ``t`` is
    ``predict_block(history, [t])``. Its ``valid`` column is 0 until a full window exists.

    Args:
        predictor: a fitted :class:`predictors.base.Predictor`.
        name: block name in the observation.
        fill_value: value of the row before the first full window.
    """

    def __init__(self, predictor: Any, name: str, fill_value: float = 0.0) -> None:
        self.predictor = predictor
        self.name = name
        self.fill_value = float(fill_value)
        self.columns = [f"pred_{name}_{c}" for c in predictor.block_columns()] + [
            f"pred_{name}_valid"
        ]
        self._history: list[np.ndarray] = []

    def step(self, features_row: np.ndarray, ohlcv: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Append the bar's ``(N, F)`` features and return ``(row, uncertainty)``."""
        self._history.append(np.asarray(features_row, dtype=np.float64).reshape(-1))
        w = int(self.predictor.window)
        if len(self._history) > w + 1:
            del self._history[0]
        if len(self._history) < w:
            return np.full(len(self.columns), self.fill_value, dtype=np.float32), None
        hist = np.stack(self._history)
        row = self.predictor.predict_block(hist, np.array([hist.shape[0] - 1]))[0]
        names = self.columns[:-1]
        unc = [
            float(abs(v)) for n, v in zip(names, row, strict=True) if "std" in n or "anomaly" in n
        ]
        return np.append(row, 1.0).astype(np.float32), (max(unc) if unc else None)


def load_predictor_blocks(run: RunFiles, device: str) -> dict[str, OnlinePredictorBlock]:
    """Load the predictors a run lists (``predictors:`` names or ``{name: ...}`` entries)."""
    listed = run.config.get("predictors") or []
    if isinstance(listed, Mapping):
        names = list(listed)
    elif isinstance(listed, list):
        names = [e if isinstance(e, str) else (e or {}).get("name") for e in listed]
    else:
        raise ConfigError(f"{run.run_dir}: config field 'predictors' must be a list or mapping")
    blocks: dict[str, OnlinePredictorBlock] = {}
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{run.run_dir}: every predictors entry needs a name, got {listed!r}")
        directory = run.run_dir / "predictors" / name
        if not directory.is_dir():
            raise DataError(f"{run.run_dir}: predictor {name!r} listed but {directory} is missing")
        from predictors.base import load_predictor

        blocks[name] = OnlinePredictorBlock(load_predictor(directory, device=device), name)
    return blocks
