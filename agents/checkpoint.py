"""Atomic, code-free checkpoint files.

``atomic_torch_save`` writes to a temporary file in the destination directory, flushes and fsyncs
it, then ``os.replace``s it over the target, so a crash mid-write never leaves a truncated
checkpoint where a good one was (os.replace is atomic on POSIX and Windows within one volume).

``safe_torch_load`` uses ``torch.load(weights_only=True)``: the restricted unpickler accepts only
tensors, numbers, strings, bools, None, lists, tuples and dicts, so loading a file never imports or
runs code (a pickle can otherwise call any function on load; see the ``torch.load`` docs' warning).
Checkpoints therefore hold configs as plain dicts and RNG states as tensors or numbers.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from agents.base import get_device
from envs.errors import DataError

__all__ = ["CheckpointError", "atomic_torch_save", "load_training_checkpoint", "safe_torch_load"]


class CheckpointError(DataError):
    """A checkpoint file that is missing, corrupt, or would need to execute code to load."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with ``torch.save`` so ``path`` holds either the old or the new file.

    Args:
        obj: tensors, numbers, strings, lists and dicts only (what ``safe_torch_load`` accepts).
        path: destination; parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # Persist the rename itself (the directory entry); not possible on every platform.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def safe_torch_load(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """Load a file written by :func:`atomic_torch_save` without executing any code from it.

    Args:
        path: the checkpoint file.
        device: where tensors are mapped (``"auto"`` picks CUDA when available).

    Returns:
        The stored object (dicts, lists, tensors, numbers, strings).

    Raises:
        CheckpointError: when the file is missing, not a torch file, or contains objects that
            would run code on load (anything beyond tensors and plain containers).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        return torch.load(path, map_location=get_device(device), weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's restricted unpickler refuses globals it does not allow (e.g. os.system).
        raise CheckpointError(
            f"checkpoint {path}: refused to load, it contains objects that are not plain "
            f"tensors/numbers/strings/lists/dicts and could execute code on load ({exc})"
        ) from exc
    except Exception as exc:  # the restricted unpickler raises various types on garbage
        raise CheckpointError(
            f"checkpoint {path}: not a readable torch checkpoint ({exc})"
        ) from exc


def load_training_checkpoint(
    path: str | Path,
    device: str | torch.device,
    file_format: str,
    kind: str,
    expected: dict[str, Any],
) -> dict[str, Any]:
    """Load a learner's training checkpoint and check its format tag and recorded values.

    Args:
        path: the checkpoint file.
        device: where tensors are mapped.
        file_format: the ``format`` tag the learner writes (e.g. ``marketrl.sac.checkpoint``).
        kind: the learner named with its article, for messages (``a SAC``, ``an MBPO``).
        expected: entries that must equal the agent's own (e.g. its spaces as plain dicts).

    Raises:
        CheckpointError: unreadable file, another kind of file, or a differing entry.
    """
    state = safe_torch_load(path, device)
    if not isinstance(state, dict) or state.get("format") != file_format:
        raise CheckpointError(f"checkpoint {path}: not {kind} training checkpoint")
    for key, mine in expected.items():
        if state[key] != mine:
            raise CheckpointError(f"checkpoint {path}: {key} {state[key]} differs from {mine}")
    return state
