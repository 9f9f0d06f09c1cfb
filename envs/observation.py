"""One observation builder for every environment and the policy runner.

An observation is a set of named float32 blocks (market window, predictor outputs, portfolio or
inventory state). The builder owns the Gymnasium space, validates shapes, returns fresh arrays,
and can flatten the blocks into one Box vector whose index names are exposed
(``flat_feature_names``) so users know which column is what. The env and the policy runner call
the same builder, so a live observation is bit-identical to a backtest one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.errors import DataError


@dataclass(frozen=True)
class BlockSpec:
    """Shape, bounds and element names of one observation block.

    Attributes:
        name: key of the block in the Dict observation (``market``, ``portfolio`` ...).
        shape: shape of the block for one env (no batch dimension).
        low: lower bound of every element (``-inf`` when unbounded).
        high: upper bound of every element (``inf`` when unbounded).
        feature_names: names along the last axis, used to name flattened columns.
    """

    name: str
    shape: tuple[int, ...]
    low: float = -np.inf
    high: float = np.inf
    feature_names: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of scalar elements in the block."""
        return int(np.prod(self.shape, dtype=np.int64))

    def element_names(self) -> list[str]:
        """Names of the block's elements in C order, e.g. ``market[t-1,close_ret]``."""
        names = list(self.feature_names) or [
            str(i) for i in range(self.shape[-1] if self.shape else 1)
        ]
        if len(self.shape) <= 1:
            return [f"{self.name}[{n}]" for n in names]
        lead = list(np.ndindex(*self.shape[:-1]))
        out = []
        for idx in lead:
            # The first axis of a multi-dimensional block is time; label it relative to now.
            prefix = f"t-{self.shape[0] - 1 - idx[0]}"
            rest = "".join(f",{i}" for i in idx[1:])
            out.extend(f"{self.name}[{prefix}{rest},{n}]" for n in names)
        return out


class ObservationBuilder:
    """Assemble named blocks into a Dict observation, or a flat Box vector.

    Args:
        blocks: the blocks in the order they are flattened.
        flatten: return one float32 vector instead of a dict.
    """

    def __init__(self, blocks: Sequence[BlockSpec], flatten: bool = False) -> None:
        names = [b.name for b in blocks]
        if len(set(names)) != len(names):
            raise DataError(f"observation blocks have duplicate names: {names}")
        for b in blocks:
            if b.feature_names and len(b.feature_names) != (b.shape[-1] if b.shape else 1):
                raise DataError(
                    f"observation block {b.name!r}: {len(b.feature_names)} feature names for "
                    f"last axis of size {b.shape[-1] if b.shape else 1}"
                )
        self.blocks: tuple[BlockSpec, ...] = tuple(blocks)
        self.flatten = bool(flatten)
        self._by_name = {b.name: b for b in self.blocks}
        offsets = np.cumsum([0] + [b.size for b in self.blocks])
        self.flat_slices: dict[str, slice] = {
            b.name: slice(int(offsets[i]), int(offsets[i + 1])) for i, b in enumerate(self.blocks)
        }
        self.flat_dim = int(offsets[-1])
        dict_space = spaces.Dict(
            {
                b.name: spaces.Box(low=b.low, high=b.high, shape=b.shape, dtype=np.float32)
                for b in self.blocks
            }
        )
        if self.flatten:
            low = np.concatenate([np.full(b.size, b.low, np.float32) for b in self.blocks])
            high = np.concatenate([np.full(b.size, b.high, np.float32) for b in self.blocks])
            self.observation_space: spaces.Space = spaces.Box(low, high, dtype=np.float32)
        else:
            self.observation_space = dict_space
        self.dict_space = dict_space

    @property
    def block_names(self) -> tuple[str, ...]:
        """Names of the blocks, in flattening order."""
        return tuple(b.name for b in self.blocks)

    def flat_feature_names(self) -> list[str]:
        """One name per element of the flat vector, in order."""
        return [n for b in self.blocks for n in b.element_names()]

    def _check(self, values: Mapping[str, np.ndarray], batch: int | None) -> None:
        missing = [n for n in self._by_name if n not in values]
        extra = [n for n in values if n not in self._by_name]
        if missing or extra:
            raise DataError(f"observation blocks: missing {missing}, unexpected {extra}")
        for name, spec in self._by_name.items():
            shape = np.shape(values[name])
            want = spec.shape if batch is None else (batch, *spec.shape)
            if shape != want:
                raise DataError(f"observation block {name!r}: expected shape {want}, got {shape}")

    def build(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | np.ndarray:
        """Build one observation from block arrays; the result never aliases the inputs.

        Args:
            values: one array per block, shaped as the block's spec.

        Returns:
            A dict of fresh float32 arrays, or one float32 vector when ``flatten``.
        """
        self._check(values, None)
        if self.flatten:
            out = np.empty(self.flat_dim, dtype=np.float32)
            for b in self.blocks:
                out[self.flat_slices[b.name]] = np.ravel(values[b.name])
            return out
        return {b.name: np.array(values[b.name], dtype=np.float32, copy=True) for b in self.blocks}

    def build_trusted(self, values: Mapping[str, Any]) -> dict[str, np.ndarray] | np.ndarray:
        """:meth:`build` without the shape checks, for callers whose blocks are right by
        construction (the env's hot path); same result, same fresh arrays.

        Args:
            values: one array (or flat sequence of floats) per block, every block present and
                shaped as its spec; nothing is validated, so use :meth:`build` for anything
                coming from outside.

        Returns:
            A dict of fresh float32 arrays, or one float32 vector when ``flatten``.
        """
        if self.flatten:
            out = np.empty(self.flat_dim, dtype=np.float32)
            for name, sl in self.flat_slices.items():
                block = values[name]
                out[sl] = block.ravel() if type(block) is np.ndarray else block
            return out
        return {name: np.array(values[name], dtype=np.float32) for name in self.flat_slices}

    def build_batch(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | np.ndarray:
        """Build a batch of observations; every array has a leading batch dimension."""
        batch = int(np.shape(next(iter(values.values())))[0])
        self._check(values, batch)
        if self.flatten:
            out = np.empty((batch, self.flat_dim), dtype=np.float32)
            for b in self.blocks:
                out[:, self.flat_slices[b.name]] = np.reshape(values[b.name], (batch, -1))
            return out
        return {b.name: np.array(values[b.name], dtype=np.float32, copy=True) for b in self.blocks}

    def to_flat(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Flatten a Dict observation (single or batched) into the flat layout."""
        first = np.asarray(obs[self.blocks[0].name])
        batched = first.ndim == len(self.blocks[0].shape) + 1
        if batched:
            return np.concatenate(
                [np.reshape(obs[b.name], (first.shape[0], -1)) for b in self.blocks], axis=1
            ).astype(np.float32)
        return np.concatenate([np.ravel(obs[b.name]) for b in self.blocks]).astype(np.float32)

    def from_flat(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector (or batch of vectors) back into named blocks."""
        flat = np.asarray(flat, dtype=np.float32)
        lead = flat.shape[:-1]
        return {
            b.name: flat[..., self.flat_slices[b.name]].reshape(*lead, *b.shape).copy()
            for b in self.blocks
        }
