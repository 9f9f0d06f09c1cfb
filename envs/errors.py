"""The one exception type users see for bad input."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or configuration, with a message naming where and what was expected.

    Raised by loaders, validators and env constructors. The message always names the file (when
    there is one), the column or field, the row when it applies, and what was expected, so no raw
    pandas or NumPy traceback reaches the user.
    """


class ConfigError(ValueError):
    """A configuration value that cannot work, named by its field and the expected range."""
