"""Safe checkpoint IO: atomic writes, plain-data round trip, and refusal of code-running pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.checkpoint import CheckpointError, atomic_torch_save, safe_torch_load
from envs.errors import DataError


class _CreatesMarker:
    """Unpickling this object calls ``Path.touch`` on the marker: code execution on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_round_trip_plain_contents(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    obj = {
        "weights": {"w": torch.randn(3, 4), "b": torch.zeros(4)},
        "config": {"lr": 3e-4, "net": [256, 256], "name": "sac", "flag": True, "none": None},
        "torch_rng": torch.Generator().manual_seed(5).get_state(),
        "numpy_rng": rng.bit_generator.state,  # dict with 128-bit Python ints
        "steps": 12345,
    }
    path = tmp_path / "sub" / "ckpt.pt"
    atomic_torch_save(obj, path)
    out = safe_torch_load(path)
    assert torch.equal(out["weights"]["w"], obj["weights"]["w"])
    assert out["config"] == obj["config"]
    assert torch.equal(out["torch_rng"], obj["torch_rng"])
    assert out["numpy_rng"] == obj["numpy_rng"]
    assert out["steps"] == 12345
    # No temporary files are left next to the checkpoint.
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]


def test_overwrite_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"v": 1}, path)
    atomic_torch_save({"v": 2}, path)
    assert safe_torch_load(path)["v"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_failed_save_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"v": Unpicklable()}, path)
    assert safe_torch_load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "raw_pickle"])
def test_code_running_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"weights": torch.ones(2), "evil": _CreatesMarker(marker)}
    if writer == "torch_zip":
        torch.save(payload, path)
    elif writer == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match=r"evil\.pt") as info:
        safe_torch_load(path)
    if writer != "raw_pickle":  # a bare pickle fails earlier, at torch's file-format check
        assert "refused to load" in str(info.value)
    assert not marker.exists()
    # The same file under an unrestricted loader does run code: the test payload is real.
    if writer == "raw_pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        safe_torch_load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(bad)
    assert isinstance(info.value, DataError)
    assert "bad.pt" in str(info.value)
