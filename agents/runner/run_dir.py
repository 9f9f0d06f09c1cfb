"""Rebuild what a runner needs from a run directory alone (no training code, Hydra or TensorBoard).

Read: ``.hydra/config.yaml`` (plain YAML through OmegaConf, no code), the JSON feature scaler in
``artifacts/feature_scaler.json``, and the policy file through the agent class's ``load``, which
uses ``torch.load(weights_only=True)``: a file crafted to run code when unpickled is refused with
a ``CheckpointError`` before anything in it runs.

Predictors: a run may list ``predictors`` in its config with saved predictors under
``predictors/<name>/`` and their inputs in ``predictors/manifest.json``; each is loaded with
``predictors.load_predictor`` (its online state included: the replay buffer its fit seeded) and
wrapped in :class:`OnlinePredictorBlock`, which computes the predictor's own input features from
the bars and follows the training walk's predict-then-learn protocol one bar at a time.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.runner.online_walk import OnlineWalk
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


def attach_run(
    runner: Any, agent: Any, run: RunFiles, env_kwargs: dict[str, Any], what: str
) -> None:
    """Check that ``runner`` builds observations as wide as ``agent`` expects, then record the
    agent, run directory, config and env kwargs on it (what both runners' ``from_run`` end with).

    Raises:
        ConfigError: the widths differ (``what`` names the runner in the message).
    """
    obs_dim = int(agent.flattener.dim) if hasattr(agent, "flattener") else None
    if obs_dim is not None and runner.builder.flat_dim != obs_dim:
        raise ConfigError(
            f"{run.policy_path}: policy expects observations of width {obs_dim}, the "
            f"{what} builds {runner.builder.flat_dim}"
        )
    runner.agent = agent
    runner.run_dir = run.run_dir
    runner.config = run.config
    runner.env_kwargs = env_kwargs


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


class OnlinePredictorBlock(OnlineWalk):
    """A loaded market predictor producing one observation row per bar, online as in training.

    Follows the training walk (``predictors.provider.WalkForwardProvider._walk``) one bar at a
    time, as :class:`agents.runner.arb_predictors.OnlineDefiPredictor` does for arbitrage:

    * **Inputs** (``agents.predictor_blocks.market_series``): ``market_features``: the
      predictor's own features (the ``feature_names`` it was fitted with, from the run's
      ``predictors/manifest.json``), computed from the bars by a
      :class:`~agents.runner.features.StreamingFeatures` of its own (the online twin of
      ``envs.features.compute_features``), for asset ``asset``; the target is the bar's log
      return ``log(c_t / c_{t-1})`` (``target: log_return``) or nothing (``target: none``).
      ``market_regime``: the predictor's ``prepare(close, **prepare_kwargs)`` over the last
      ``long + 1`` closes (its longest rolling statistic plus the return's previous close), so
      equal to the walk's features up to float rounding; no targets (the learned detector's
      recorded regime labels do not exist live, so it cannot learn online here).
    * **Predict**: from the first bar whose window holds ``window`` defined feature rows; the
      row at bar ``t`` is ``predict_block`` on the last ``window`` feature rows with the model
      as of ``t``'s chunk. Before that the row is ``fill_value`` with ``valid = 0``.
    * **Learn**: chunks of ``update_every`` bars are anchored at the first bar after the fit
      range (``fit_end_ns``, the manifest's last fitted timestamp; training's walk starts its
      chunks at the first row after the fit range too) that has ``delay`` more defined rows
      behind its window. After the bar that closes a chunk, one ``update`` from the samples
      whose targets arrived during the chunk is *pending*; it runs in :meth:`maintain` (the
      runner's ``maintain``, between bars) or at the latest before the next bar's prediction.
      Bars up to the fit end are predicted with the saved model and never learnt from (the fit
      has seen them).

    Args:
        predictor: a fitted (loaded) forecaster with ``predict_block``, ``samples``, ``update``.
        name: observation block name (``pred_<config name>``).
        feature_names: the predictor's input features (default: ``predictor.feature_names``).
        asset: which asset's features and returns feed it.
        target: ``log_return`` or ``none``.
        columns: block column names (the manifest's; default from the predictor).
        online: learn from targets as they arrive (the provider's ``online``).
        update_every: bars per predict-then-learn chunk (the provider's ``update_every``).
        fill_value: block value before the first prediction.
        fit_end_ns: timestamp (ns) of the last fitted bar; None: chunks start at the first
            bar that can be learnt from.
        extra_names: extra columns the bars carry (for ``extra:`` features).
        inputs: ``market_features`` or ``market_regime``.
        prepare_kwargs: ``market_regime`` only: arguments of ``prepare`` (``short``, ``long``).
    """

    def __init__(
        self,
        predictor: Any,
        name: str,
        *,
        feature_names: Sequence[str] | None = None,
        asset: int = 0,
        target: str = "log_return",
        columns: Sequence[str] | None = None,
        online: bool = True,
        update_every: int = 32,
        fill_value: float = 0.0,
        fit_end_ns: int | None = None,
        extra_names: Sequence[str] = (),
        inputs: str = "market_features",
        prepare_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        from agents.runner.features import StreamingFeatures

        if inputs not in ("market_features", "market_regime"):
            raise ConfigError(
                f"predictor block {name!r}: inputs {inputs!r}; the market runner computes "
                "'market_features' and 'market_regime'"
            )
        self.inputs = inputs
        self.prepare_kwargs = dict(prepare_kwargs or {})

        self.name = str(name)
        self.predictor = predictor
        names = list(predictor.feature_names if feature_names is None else feature_names)
        if list(predictor.feature_names) != names:
            raise ConfigError(
                f"predictor block {name!r}: the manifest lists features {names}, the saved "
                f"predictor was fitted on {list(predictor.feature_names)}"
            )
        self.feature_names = names
        self.extra_names = tuple(extra_names)
        if inputs == "market_regime":
            if online and predictor.kind == "regime_learned":
                raise ConfigError(
                    f"predictor block {name!r}: a learned regime detector learns online from the "
                    "dataset's recorded regime labels, which live bars do not carry; train it "
                    "with provider.online=false to run it"
                )
            config = getattr(predictor, "config", None)
            longest = int(self.prepare_kwargs.get("long", getattr(config, "long", 96)))
            self.lookback = longest + 1
            target = "none"
        else:
            # Checked here (a ConfigError naming the feature), used per bar.
            StreamingFeatures(names, 1, tuple(extra_names))
            self.lookback = 0
        if target not in ("log_return", "none"):
            raise ConfigError(
                f"predictor block {name!r}: target {target!r}, expected 'log_return' or 'none'"
            )
        self.target = target
        self.asset = int(asset)
        if self.asset < 0:
            raise ConfigError(f"predictor block {name!r}: asset {asset}, expected >= 0")
        self.columns = list(
            columns
            if columns is not None
            else [f"{name}_{c}" for c in predictor.block_columns()] + [f"{name}_valid"]
        )
        if len(self.columns) != len(predictor.block_columns()) + 1:
            raise ConfigError(
                f"predictor block {name!r}: {len(self.columns)} columns given, the predictor "
                f"makes {len(predictor.block_columns())} + validity"
            )
        if int(update_every) < 1:
            raise ConfigError(
                f"predictor block {name!r}: update_every {update_every}, expected >= 1"
            )
        self.online = bool(online)
        self.update_every = int(update_every)
        self.fill_value = float(fill_value)
        self.fit_end_ns = None if fit_end_ns is None else int(fit_end_ns)
        self.window = int(predictor.window)
        self.delay = int(predictor.target_delay)
        # Rows kept: the newest chunk's samples reach back update_every + delay rows, and each
        # sample's window another window - 1 (as OnlineDefiPredictor.history).
        self.history = self.update_every + self.delay + self.window + 1
        self._pristine = predictor
        self.reset()

    def reset(self) -> None:
        """Back to the predictor as loaded (online learning discarded) and no history."""
        self.predictor = copy.deepcopy(self._pristine)
        self._features: Any = None
        self._closes = np.zeros(self.lookback)
        self._feats = np.zeros((self.history, len(self.feature_names)))
        self._targs = np.zeros((self.history, 1 if self.target == "log_return" else 0))
        self._prev_close: float | None = None
        self._rows = 0
        self._anchor: int | None = None
        self._pending: np.ndarray | None = None
        self.last_ts: int | None = None
        self.updates = 0
        self.last_row = np.full(len(self.columns), self.fill_value, dtype=np.float32)
        self.last_row[-1] = 0.0

    @property
    def warmup_left(self) -> int:
        """Bars before the block's first prediction (0 once it predicts)."""
        if self.last_row[-1] == 1.0:
            return 0
        ready = self._ready()
        if ready is None:  # extra columns not seen yet: at least the fixed warm-up
            ready = 0 if self._features is None else self._features.warmup
        return max(1, int(ready) + self.window - self._rows)

    def _ready(self) -> int | None:
        """First bar whose features are all defined (None: not known yet)."""
        if self.inputs == "market_regime":
            return 0  # regime_features are defined from the first close (expanding at first)
        return None if self._features is None else self._features.ready_from

    def _feature_row(self, timestamp: int, ohlcv: np.ndarray, extra: np.ndarray | None) -> Any:
        from agents.runner.features import StreamingFeatures

        if not 0 <= self.asset < ohlcv.shape[0]:
            raise ConfigError(
                f"predictor block {self.name!r}: asset {self.asset} outside the bars' "
                f"{ohlcv.shape[0]} assets"
            )
        if self.inputs == "market_regime":
            self._closes[:-1] = self._closes[1:]
            self._closes[-1] = ohlcv[self.asset, 3]
            m = min(self._rows + 1, self.lookback)
            series = self.predictor.prepare(self._closes[-m:], **self.prepare_kwargs)
            return np.asarray(series.features[-1], dtype=np.float64)
        if self._features is None:
            self._features = StreamingFeatures(self.feature_names, ohlcv.shape[0], self.extra_names)
        return self._features.push(int(timestamp), ohlcv, extra)[self.asset]

    def on_bar(
        self, timestamp: int, ohlcv: np.ndarray, extra: np.ndarray | None = None
    ) -> tuple[np.ndarray, float | None]:
        """Ingest one bar (``(N, 5)`` OHLCV, ``(N, E)`` extra) and return ``(row, uncertainty)``.

        Runs a pending update first, so the prediction uses the model the walk would use.
        """
        self.maintain()
        ohlcv = np.asarray(ohlcv, dtype=np.float64)
        row = self._feature_row(int(timestamp), ohlcv, extra)
        close = float(ohlcv[self.asset, 3])
        self._feats[:-1] = self._feats[1:]
        self._feats[-1] = row
        if self._targs.shape[1]:
            self._targs[:-1] = self._targs[1:]
            # agents.predictor_blocks.next_bar_log_return: 0 at the first bar.
            prev = self._prev_close
            self._targs[-1, 0] = 0.0 if prev is None else float(np.diff(np.log([prev, close]))[0])
        self._prev_close = close
        self._rows += 1
        self.last_ts = int(timestamp)
        r = self._rows - 1  # this bar's index since the reset
        ready = self._ready()
        if ready is None or r < ready + self.window - 1:
            return self.last_row, None
        out = self._predict_row()
        # The manifest's fit end is an ISO time from a float of seconds (microseconds, rounded),
        # so a bar counts as after the fit from 1 ms past it (bars are seconds apart or more).
        after_fit = self.fit_end_ns is None or int(timestamp) > self.fit_end_ns + 1_000_000
        warm = r >= ready + self.window - 1 + self.delay
        if self._anchor is None and self.online and warm and after_fit:
            self._anchor = r
        if self._anchor is not None and (r - self._anchor + 1) % self.update_every == 0:
            self._close_chunk(r)
        return out, self.uncertainty()

    def step(self, features_row: np.ndarray, ohlcv: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Deprecated protocol (the runner's own feature row): not enough to compute this
        block's inputs; use :meth:`on_bar`."""
        raise ConfigError(
            f"predictor block {self.name!r} computes its own features: call on_bar(timestamp, "
            "ohlcv, extra)"
        )

    def uncertainty(self) -> float | None:
        """Largest predicted std (or anomaly score) of the last row (None before the first)."""
        if self.last_row[-1] != 1.0:
            return None
        values = [
            abs(float(v))
            for c, v in zip(self.columns[:-1], self.last_row[:-1], strict=True)
            if "std" in c or "anomaly" in c
        ]
        return max(values) if values else None


def iso_to_ns(text: str, where: str) -> int:
    """Nanoseconds since the epoch of an ISO-8601 time (naive times are UTC)."""
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(str(text))
    except ValueError as exc:
        raise DataError(f"{where}: not an ISO-8601 time ({text!r})") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def load_predictor_blocks(
    run: RunFiles, device: str, extra_names: Sequence[str] = ()
) -> dict[str, OnlinePredictorBlock]:
    """Online blocks of the predictors a market run lists, keyed ``pred_<name>`` in the
    config's order (the env's block order), each with the inputs and provider settings it was
    trained with (``predictors/manifest.json``, ``agents.predictor_blocks.parse_spec``).

    Raises:
        ConfigError: a malformed entry, or inputs the market runner does not compute.
        DataError: a listed predictor whose directory or manifest entry is missing.
    """
    import json

    from agents.predictor_blocks import MANIFEST, parse_spec
    from predictors.base import load_predictor

    listed = run.config.get("predictors") or {}
    if isinstance(listed, list):  # older spelling: a list of names without configs
        listed = {str(e if isinstance(e, str) else (e or {}).get("name")): {} for e in listed}
    if not isinstance(listed, Mapping):
        raise ConfigError(f"{run.run_dir}: config field 'predictors' must be a mapping")
    if not listed:
        return {}
    directory = run.run_dir / "predictors"
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{run.run_dir}: the run lists predictors but {manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))["predictors"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{manifest_path}: expected a JSON object with 'predictors' ({exc})"
        ) from exc
    blocks: dict[str, OnlinePredictorBlock] = {}
    for name, node in listed.items():
        entry = manifest.get(name)
        if not isinstance(entry, Mapping):
            raise DataError(f"{manifest_path}: no entry for predictor {name!r}")
        spec = parse_spec(
            str(name), node or {k: entry[k] for k in ("kind", "inputs") if k in entry}
        )
        inputs = entry.get("inputs", spec.inputs)
        if inputs not in ("market_features", "market_regime"):
            raise ConfigError(
                f"{run.run_dir}: predictor {name!r} reads {inputs!r}; the market runner "
                "computes 'market_features' and 'market_regime' inputs"
            )
        sub = directory / str(entry.get("directory", name))
        if not sub.is_dir():
            raise DataError(f"{run.run_dir}: predictor {name!r} listed but {sub} is missing")
        kw = dict(entry.get("input_kwargs") or spec.input_kwargs)
        provider = dict(entry.get("provider") or spec.provider)
        fill = float(provider.get("fill_value", 0.0))
        if not math.isfinite(fill):
            raise ConfigError(f"predictors.{name}.provider.fill_value: expected a finite number")
        fit_time = entry.get("fit_range_time")
        fit_end = None if not fit_time else iso_to_ns(fit_time[1], f"{manifest_path}: {name}")
        predictor = load_predictor(sub, device=device)
        asset = int(kw.pop("asset", 0))
        target = str(kw.pop("target", "log_return"))
        blocks[spec.block] = OnlinePredictorBlock(
            predictor,
            spec.block,
            feature_names=entry.get("feature_names"),
            asset=asset,
            target=target,
            columns=entry.get("columns"),
            online=bool(provider.get("online", True)),
            update_every=int(provider.get("update_every", 32)),
            fill_value=fill,
            fit_end_ns=fit_end,
            extra_names=extra_names,
            inputs=str(inputs),
            prepare_kwargs=kw if inputs == "market_regime" else None,
        )
    return blocks
