"""Flatten Box / Dict-of-Box observations into one float32 vector, and describe spaces.

Agents and replay buffers work on flat float32 vectors. A Dict observation is flattened in the
space's key order, exactly like ``gymnasium.spaces.flatten`` (note that ``gymnasium.spaces.Dict``
sorts the keys of a plain dict unless ``sort_keys=False``), and the block names and slices are
kept so a buffer or a log can say which columns came from which block.

Spaces are also turned into plain dicts (lists, strings, numbers) so checkpoints never need
pickled Python objects to rebuild an agent (see ``agents/checkpoint.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.errors import ConfigError, DataError

__all__ = ["ObservationFlattener", "space_from_dict", "space_to_dict"]


class ObservationFlattener:
    """Turn observations of a Box or Dict-of-Box space into ``(n, dim)`` float32 arrays.

    Args:
        space: the observation space; a ``Box`` or a ``Dict`` whose values are all ``Box``.

    Attributes:
        dim: length of the flat vector.
        block_names: names of the blocks in flattening order (``("obs",)`` for a Box space).
        block_slices: slice of the flat vector occupied by each block.
        block_shapes: shape of each block for one observation (no batch dimension).
    """

    def __init__(self, space: spaces.Space) -> None:
        if isinstance(space, spaces.Box):
            self.is_dict = False
            shapes = {"obs": tuple(space.shape)}
        elif isinstance(space, spaces.Dict):
            bad = [k for k, s in space.spaces.items() if not isinstance(s, spaces.Box)]
            if bad or not space.spaces:
                raise ConfigError(
                    f"observation_space: Dict blocks {bad} are not Box spaces; expected a Dict "
                    "of Box spaces (at least one)"
                )
            self.is_dict = True
            shapes = {str(k): tuple(s.shape) for k, s in space.spaces.items()}
        else:
            raise ConfigError(
                f"observation_space: got {type(space).__name__}, expected Box or Dict of Box"
            )
        self.space = space
        self.block_names: tuple[str, ...] = tuple(shapes)
        self.block_shapes: dict[str, tuple[int, ...]] = shapes
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes.values()]
        offsets = np.cumsum([0, *sizes])
        self.block_slices: dict[str, slice] = {
            name: slice(int(offsets[i]), int(offsets[i + 1]))
            for i, name in enumerate(self.block_names)
        }
        self.dim = int(offsets[-1])

    def flatten(self, obs: Any) -> tuple[np.ndarray, bool]:
        """Flatten one observation or a batch.

        Args:
            obs: an array shaped like the Box (optionally with a leading batch axis), or a
                mapping with one such array per block. An already-flat ``(dim,)`` or
                ``(n, dim)`` array is accepted for every space.

        Returns:
            ``(flat, batched)``: a C-contiguous float32 array of shape ``(n, dim)`` and whether
            the input had a batch axis.

        Raises:
            DataError: when a block is missing or has the wrong shape.
        """
        if isinstance(obs, Mapping):
            if not self.is_dict:
                raise DataError("observation: got a dict, expected an array for a Box space")
            missing = [k for k in self.block_names if k not in obs]
            if missing:
                raise DataError(
                    f"observation: missing blocks {missing}; expected {self.block_names}"
                )
            first = np.asarray(obs[self.block_names[0]])
            batched = first.ndim == len(self.block_shapes[self.block_names[0]]) + 1
            n = first.shape[0] if batched else 1
            out = np.empty((n, self.dim), dtype=np.float32)
            for name in self.block_names:
                block = np.asarray(obs[name])
                want = (n, *self.block_shapes[name]) if batched else self.block_shapes[name]
                if block.shape != want:
                    raise DataError(
                        f"observation block {name!r}: expected shape {want}, got {block.shape}"
                    )
                out[:, self.block_slices[name]] = block.reshape(n, -1)
            return out, batched
        arr = np.asarray(obs, dtype=np.float32)
        if not self.is_dict:
            box_shape = self.block_shapes["obs"]
            if arr.shape == box_shape:
                return np.ascontiguousarray(arr.reshape(1, self.dim)), False
            if arr.ndim == len(box_shape) + 1 and arr.shape[1:] == box_shape:
                return np.ascontiguousarray(arr.reshape(arr.shape[0], self.dim)), True
        # Already-flat input, (dim,) or (n, dim): what an agent hands back after flattening.
        if arr.shape == (self.dim,):
            return arr.reshape(1, self.dim), False
        if arr.ndim == 2 and arr.shape[1] == self.dim:
            return np.ascontiguousarray(arr), True
        want = self.block_shapes["obs"] if not self.is_dict else "a dict of blocks"
        raise DataError(
            f"observation: expected {want} (optionally batched) or a flat ({self.dim},) vector, "
            f"got an array of shape {arr.shape}"
        )

    def flat_names(self) -> list[str]:
        """One name per flat column: ``block[i]`` in C order within each block."""
        return [
            f"{name}[{i}]"
            for name in self.block_names
            for i in range(self.block_slices[name].stop - self.block_slices[name].start)
        ]


def _box_to_dict(box: spaces.Box) -> dict[str, Any]:
    return {
        "type": "Box",
        "shape": list(box.shape),
        "low": np.asarray(box.low, dtype=np.float64).ravel().tolist(),
        "high": np.asarray(box.high, dtype=np.float64).ravel().tolist(),
        "dtype": str(np.dtype(box.dtype)),
    }


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """Describe a Box, Discrete or Dict-of-Box space with plain lists, strings and numbers.

    Raises:
        ConfigError: for other space types.
    """
    if isinstance(space, spaces.Box):
        return _box_to_dict(space)
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Dict):
        return {
            "type": "Dict",
            "keys": [str(k) for k in space.spaces],
            "blocks": [space_to_dict(s) for s in space.spaces.values()],
        }
    raise ConfigError(
        f"space: cannot describe {type(space).__name__}; expected Box, Discrete, Dict"
    )


def space_from_dict(desc: Mapping[str, Any]) -> spaces.Space:
    """Rebuild a space described by :func:`space_to_dict` (key order is preserved).

    Raises:
        DataError: when the description is malformed.
    """
    try:
        kind = desc["type"]
        if kind == "Box":
            shape = tuple(int(s) for s in desc["shape"])
            dtype = np.dtype(desc.get("dtype", "float32"))
            low = np.asarray(desc["low"], dtype=np.float64).reshape(shape).astype(dtype)
            high = np.asarray(desc["high"], dtype=np.float64).reshape(shape).astype(dtype)
            return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(desc["n"]), start=int(desc.get("start", 0)))
        if kind == "Dict":
            items = [
                (str(k), space_from_dict(b))
                for k, b in zip(desc["keys"], desc["blocks"], strict=True)
            ]
            return spaces.Dict(items)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"space description: malformed ({exc}); got {dict(desc)!r:.200}") from exc
    raise DataError(f"space description: unknown type {kind!r}; expected Box, Discrete or Dict")
