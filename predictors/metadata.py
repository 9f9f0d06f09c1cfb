"""Predictor metadata and atomic file writes, readable without torch.

A saved predictor is a directory with ``metadata.json`` (kind, version, config, feature and output
names, scaler parameters, training metrics, timestamp) and ``weights.pt`` (a ``state_dict`` loaded
with ``torch.load(weights_only=True)``, so no code is ever unpickled). This module imports only the
standard library, so a run directory can be inspected (by the policy runner, a dashboard, a test)
without importing torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from envs.errors import DataError

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "weights.pt"
# Version of the on-disk layout (bumped when metadata keys or the weights layout change).
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "kind",
    "version",
    "format_version",
    "config",
    "feature_names",
    "output_names",
    "scaler",
    "metrics",
    "timestamp",
)


def utc_timestamp() -> str:
    """Return the current UTC time as an ISO-8601 string (seconds precision)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, then ``os.replace``.

    A reader never sees a half-written file, and a crash leaves the previous version intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_metadata(directory: str | Path, metadata: dict[str, Any]) -> Path:
    """Validate and atomically write ``metadata.json`` into ``directory``; return its path."""
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise DataError(f"predictor metadata: missing keys {missing}")
    path = Path(directory) / METADATA_FILE
    text = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    return path


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """Read a saved predictor's ``metadata.json`` with only the json module (no torch import).

    Args:
        directory: the predictor's directory (as given to ``save``).

    Returns:
        The metadata dict (kind, version, format_version, config, feature_names, output_names,
        scaler, metrics, timestamp, ...).

    Raises:
        DataError: the file is missing, not JSON, or lacks a required key.
    """
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise DataError(f"{path}: predictor metadata file not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object at top level")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise DataError(f"{path}: missing keys {missing}")
    if meta["format_version"] > FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {meta['format_version']} is newer than supported "
            f"({FORMAT_VERSION})"
        )
    return meta
