"""The one exception type users see for bad input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


class DataError(ValueError):
    """Bad input data or configuration, with a message naming where and what was expected.

    Raised by loaders, validators and env constructors. The message always names the file (when
    there is one), the column or field, the row when it applies, and what was expected, so no raw
    pandas or NumPy traceback reaches the user.
    """


class ConfigError(ValueError):
    """A configuration value that cannot work, named by its field and the expected range."""


def check_known_fields(cls: type, values: Mapping[str, Any], section: str) -> None:
    """Raise ``ConfigError`` naming the keys of ``values`` that are not fields of dataclass
    ``cls``, and the fields that are.

    Args:
        cls: a dataclass type (a config or limits schema).
        values: the mapping about to be passed to ``cls(**values)``.
        section: how the message names the config section (``"sac config"``, ``"guards"``).
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown fields {unknown}; known: {sorted(known)}")
