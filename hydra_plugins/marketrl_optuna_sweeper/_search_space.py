"""The sweeper's search space: Hydra override grammar -> Optuna distributions, values -> overrides.

The leading underscore keeps Hydra's plugin scan (which imports every public module of
``hydra_plugins`` whenever any Hydra app starts) from importing Optuna and our packages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna.distributions as dists
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)

from envs.errors import ConfigError

_PRIMITIVE = (str, int, float, bool, type(None))
_SPEC_KEYS = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}


@dataclass
class SearchSpace:
    """What every trial of a sweep shares and what it samples.

    Attributes:
        fixed: overrides passed unchanged to every trial (``key=value``, command-line order).
        distributions: Optuna distributions sampled through ``study.ask``, keyed by override key.
        raw_choices: per key, the categorical choices that are already override text (lists and
            dicts in a ``choice(...)``, which Optuna's categorical distribution cannot hold).
        agent_space: ``search_space`` entries of the agent config (spec format of
            ``agents/tuning.py``), sampled with ``agents.tuning.suggest`` when no other dimension
            is given.
    """

    fixed: list[str] = field(default_factory=list)
    distributions: dict[str, Any] = field(default_factory=dict)
    raw_choices: dict[str, set[str]] = field(default_factory=dict)
    agent_space: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.distributions) + len(self.agent_space)

    def trial_overrides(self, trial: Any) -> list[str]:
        """The overrides of one trial asked with ``study.ask(self.distributions)``.

        ``agent_space`` entries are drawn here, through the same ``suggest`` the direct Optuna
        tuner (``scripts/tune_agent.py``) uses, so both read one spec format.
        """
        from agents.tuning import suggest

        overrides = list(self.fixed)
        for key in self.distributions:
            value = trial.params[key]
            raw = value in self.raw_choices.get(key, ()) and isinstance(value, str)
            overrides.append(f"{key}={value if raw else format_value(key, value)}")
        for path, spec in self.agent_space.items():
            overrides.append(f"{path}={format_value(path, suggest(trial, path, spec))}")
        return overrides


def format_value(key: str, value: Any) -> str:
    """Override text for ``value`` that Hydra's parser reads back as the same value and type.

    Strings that would read back as something else (``'1'``, ``'true'``) or that the unquoted
    grammar cannot hold (``it's``) are single-quoted with backslash escapes.
    """
    parser = OverridesParser.create()
    candidates = [Transformer.str(value)]
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        candidates.append(f"'{escaped}'")
        # Hydra's quoted strings treat a backslash as an escape only before a quote or at the
        # end of the string: double just those runs, escape the quotes, keep the rest as is.
        candidates.append("'" + _QUOTE_RUN.sub(_escape_run, value) + "'")
    for text in candidates:
        try:
            back = parser.parse_overrides([f"k={text}"])[0].value()
        except Exception:  # any parse failure means: try the next spelling
            continue
        if type(back) is type(value) and (back == value or _both_nan(back, value)):
            return text
    raise ConfigError(f"hydra.sweeper: value {value!r} of {key!r} has no override spelling")


_QUOTE_RUN = re.compile(r"(\\*)('|$)")


def _escape_run(match: re.Match[str]) -> str:
    return match.group(1) * 2 + ("\\'" if match.group(2) else "")


def _both_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``params`` with nested mappings joined into dotted keys.

    A command-line ``+hydra.sweeper.params.agent.params.gamma=...`` arrives nested
    (``{agent: {params: {gamma: ...}}}``); the YAML form ``agent.params.gamma: ...`` arrives flat.
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat


def distribution_from_override(override: Override) -> tuple[Any, set[str]]:
    """The Optuna distribution of a sweep override, and its choices that are raw override text.

    ``choice(a, b)`` and ``a,b`` -> categorical; ``interval(lo, hi)`` -> float (int when both
    ends are ints, e.g. ``int(interval(1, 8))``), log-scaled with ``tag(log, ...)``;
    ``range(start, stop, step)`` -> int or float with that step over the values Hydra's
    ``range`` yields (``stop`` excluded, as in the basic sweeper); ``shuffle(...)`` -> categorical.
    """
    key = override.get_key_element()
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices: list[Any] = []
        raw: set[str] = set()
        for item in override.sweep_iterator(transformer=Transformer.identity):
            if isinstance(item, _PRIMITIVE):
                choices.append(item)
            else:  # a list or dict choice: Optuna keeps only primitives, so keep its override text
                text = Transformer.str(item)
                choices.append(text)
                raw.add(text)
        if not choices:
            raise ConfigError(f"hydra.sweeper: {override.input_line!r} has no choices")
        return dists.CategoricalDistribution(choices), raw
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator(transformer=Transformer.identity))
        if not values or value.step is None or value.step <= 0:
            raise ConfigError(
                f"hydra.sweeper: {override.input_line!r}: expected an increasing, non-empty range"
            )
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            low, high, step = int(values[0]), int(values[-1]), int(value.step)
            return dists.IntDistribution(low, high, step=step), set()
        return dists.FloatDistribution(
            float(values[0]), float(values[-1]), step=float(value.step)
        ), set()
    if isinstance(value, IntervalSweep):
        if value.start is None or value.end is None or not value.start < value.end:
            raise ConfigError(
                f"hydra.sweeper: {override.input_line!r}: expected interval(low, high), low < high"
            )
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return dists.IntDistribution(value.start, value.end, log=log), set()
        return dists.FloatDistribution(float(value.start), float(value.end), log=log), set()
    raise ConfigError(f"hydra.sweeper: {key!r}: unsupported sweep {override.input_line!r}")


def build_search_space(
    params: Mapping[str, Any], arguments: list[str], agent_space: Mapping[str, Any] | None
) -> SearchSpace:
    """Combine ``hydra.sweeper.params``, the command-line overrides and the agent's space.

    Args:
        params: ``hydra.sweeper.params`` (flat or nested); values in Hydra's override grammar.
        arguments: the task overrides of the multirun command line; a sweep there
            (``agent.params.tau=interval(0.002,0.02)``, ``seed=0,1``) is a search dimension, a
            plain value is fixed for every trial. A key given both ways takes the command line.
        agent_space: the composed config's ``agent.search_space``, used only when neither
            ``params`` nor ``arguments`` holds a sweep. Paths fixed on the command line are left
            out of it (what the user pins stays pinned).

    Returns:
        The search space; empty when nothing at all is searched.
    """
    parser = OverridesParser.create()
    lines = [
        f"{key}={value if isinstance(value, str) else format_value(key, value)}"
        for key, value in flatten_params(params).items()
    ]
    space = SearchSpace()
    fixed: dict[str, str] = {}
    for override in parser.parse_overrides([*lines, *arguments]):
        key = override.get_key_element()
        if override.is_sweep_override():
            fixed.pop(key, None)
            space.distributions[key], raw = distribution_from_override(override)
            space.raw_choices[key] = raw
        else:
            space.distributions.pop(key, None)
            space.raw_choices.pop(key, None)
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
    space.fixed = list(fixed.values())
    if not space.distributions and agent_space:
        pinned = {key.lstrip("+~") for key in fixed}
        for path, spec in agent_space.items():
            check_agent_spec(path, spec)
            if path not in pinned:
                space.agent_space[path] = dict(spec)
    return space


def check_agent_spec(path: str, spec: Any) -> None:
    """Reject an ``agent.search_space`` entry ``agents.tuning.suggest`` cannot draw from."""
    if not isinstance(spec, Mapping) or spec.get("type") not in _SPEC_KEYS:
        raise ConfigError(
            f"agent.search_space[{path!r}]: expected a mapping with type float, int or "
            f"categorical, got {spec!r}"
        )
    missing = [k for k in _SPEC_KEYS[spec["type"]] if k not in spec]
    if missing:
        raise ConfigError(f"agent.search_space[{path!r}]: missing {missing} for {spec['type']}")
