"""One observation builder for every environment and the policy runner.

An observation is a set of named float32 blocks (market window, predictor outputs, portfolio or
inventory state). The builder owns the Gymnasium space, validates shapes, returns fresh arrays,
and can flatten the blocks into one Box vector whose index names are exposed
(``flat_feature_names``) so users know which column is what. The env and the policy runner call
the same builder, so a live observation is bit-identical to a backtest one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.errors import ConfigError, DataError


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


def block_column_names(
    columns: Mapping[str, Sequence[str]] | None, name: str, shape: tuple[int, ...]
) -> tuple[str, ...]:
    """Validated names along the last axis of block ``name`` (``()`` when none are given).

    Args:
        columns: ``{block name: column names}`` as the envs' ``predictor_columns`` argument.
        name: the block.
        shape: the block's per-row shape.

    Raises:
        ConfigError: the names do not match the block's last axis, or name an unknown block.
    """
    given = (columns or {}).get(name)
    if given is None:
        return ()
    names = tuple(str(c) for c in given)
    width = shape[-1] if shape else 1
    if len(names) != width:
        raise ConfigError(
            f"predictor_columns[{name!r}]: {len(names)} names for a block of width {width}"
        )
    return names


def check_column_blocks(columns: Mapping[str, Sequence[str]] | None, blocks: Sequence[str]) -> None:
    """Raise ``ConfigError`` when ``columns`` names a block that is not in ``blocks``."""
    unknown = sorted(set(columns or {}) - set(blocks))
    if unknown:
        raise ConfigError(
            f"predictor_columns names unknown blocks {unknown}; blocks: {list(blocks)}"
        )


class ObservationBuilder:
    """Assemble named blocks into a Dict observation, or a flat Box vector.

    Args:
        blocks: the blocks in the order they are flattened.
        flatten: return one float32 vector instead of a dict.
        clip: clip every built observation into its blocks' bounds, so an env can declare
            finite bounds (Gymnasium's checker warns on infinite ones) and stay inside them.
    """

    def __init__(
        self, blocks: Sequence[BlockSpec], flatten: bool = False, clip: bool = False
    ) -> None:
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
        self.clip = bool(clip)
        self._by_name = {b.name: b for b in self.blocks}
        offsets = np.cumsum([0] + [b.size for b in self.blocks])
        self.flat_slices: dict[str, slice] = {
            b.name: slice(int(offsets[i]), int(offsets[i + 1])) for i, b in enumerate(self.blocks)
        }
        self.flat_dim = int(offsets[-1])
        self._flat_low = np.concatenate(
            [np.full(b.size, b.low, np.float32) for b in self.blocks] or [np.zeros(0, np.float32)]
        )
        self._flat_high = np.concatenate(
            [np.full(b.size, b.high, np.float32) for b in self.blocks] or [np.zeros(0, np.float32)]
        )
        # A list of pairs keeps the blocks' order (a plain dict would be sorted by Gymnasium), so
        # flattening the Dict space in its key order (what agents and gymnasium.spaces.flatten
        # do) gives exactly the layout of ``flat_slices`` / ``to_flat``.
        dict_space = spaces.Dict(
            [
                (b.name, spaces.Box(low=b.low, high=b.high, shape=b.shape, dtype=np.float32))
                for b in self.blocks
            ]
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
            return self._clipped(out)
        return self._clipped(
            {b.name: np.array(values[b.name], dtype=np.float32, copy=True) for b in self.blocks}
        )

    def _clipped(self, out: Any) -> Any:
        """Clip a freshly built observation (flat or dict, single or batch) in place."""
        if not self.clip:
            return out
        if isinstance(out, np.ndarray):
            np.clip(out, self._flat_low, self._flat_high, out=out)
            return out
        for b in self.blocks:
            np.clip(out[b.name], b.low, b.high, out=out[b.name])
        return out

    def bar_assembler(
        self,
        window_block: str,
        window_source: np.ndarray,
        row_sources: Mapping[str, np.ndarray],
        given_block: str,
    ) -> Callable[[int, Sequence[float]], dict[str, np.ndarray] | np.ndarray]:
        """A trusted builder (picklable callable) for observations read at a bar ``t``.

        The returned ``assemble(t, given)`` equals ``build(values)`` with
        ``values[window_block] = window_source[t - W + 1 : t + 1]`` (``W`` the block's first
        dimension), ``values[name] = row_sources[name][t]`` for the other blocks and
        ``values[given_block] = given``; the sources are checked once here, so each call only
        copies (fresh arrays, as :meth:`build`: they share memory with no source and no other
        call's result; in the Dict layout, two or more row blocks are non-overlapping views of
        one fresh row, see ``_BarAssembler._derive``). The env's step uses it.

        Args:
            window_block: the block holding the last ``W`` rows of ``window_source``.
            window_source: ``(T, ...)`` array whose rows have the block's trailing shape.
            row_sources: one ``(T, ...)`` array per remaining block except ``given_block``.
            given_block: the block passed to each call (a flat sequence of floats).

        Raises:
            DataError: the blocks or the sources' shapes do not match the specs.
        """
        return self._bar_assembler(
            window_block, window_source, row_sources, given_block, joint_rows=True
        )

    def _bar_assembler(
        self,
        window_block: str,
        window_source: np.ndarray,
        row_sources: Mapping[str, np.ndarray],
        given_block: str,
        joint_rows: bool,
    ) -> _BarAssembler:
        """:meth:`bar_assembler`; ``joint_rows=False`` leaves out the Dict layout's joint row
        source (``_BarAssembler._derive``), which only single-bar calls read."""
        spec = self._by_name.get(window_block)
        names = {window_block, given_block, *row_sources}
        if spec is None or names != set(self._by_name) or len(names) != len(self.blocks):
            raise DataError(
                f"bar_assembler: blocks {sorted(names)} do not match the observation blocks "
                f"{list(self._by_name)}"
            )
        if len(self._by_name[given_block].shape) != 1:
            raise DataError(f"bar_assembler: given block {given_block!r} must be 1-D")
        window = spec.shape[0]
        source = np.ascontiguousarray(window_source, dtype=np.float32)
        if source.shape[1:] != spec.shape[1:]:
            raise DataError(
                f"bar_assembler: rows of {window_block!r} source have shape {source.shape[1:]}, "
                f"expected {spec.shape[1:]}"
            )
        rows: dict[str, np.ndarray] = {}
        for name, arr in row_sources.items():
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            if arr.shape[1:] != self._by_name[name].shape:
                raise DataError(
                    f"bar_assembler: rows of {name!r} have shape {arr.shape[1:]}, expected "
                    f"{self._by_name[name].shape}"
                )
            rows[name] = arr
        order = tuple(b.name for b in self.blocks)
        return _BarAssembler(
            flatten=self.flatten,
            window=window,
            window_block=window_block,
            window_source=source,
            rows=rows,
            given_block=given_block,
            flat_slices=self.flat_slices,
            flat_dim=self.flat_dim,
            in_order=order == (window_block, *rows, given_block),
            order=order,
            joint_rows=joint_rows,
        )

    def batch_assembler(
        self,
        window_block: str,
        window_source: np.ndarray,
        row_sources: Mapping[str, np.ndarray],
        given_block: str,
    ) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray] | np.ndarray]:
        """The batched counterpart of :meth:`bar_assembler`, for vector envs.

        The returned ``assemble(t, given)`` takes ``(B,)`` integer bars and a ``(B, ...)`` array
        for ``given_block`` and equals :meth:`build_batch` of the blocks read at each row's bar
        (clipping included); the arrays it returns are fresh. The window block is gathered as
        one contiguous run per row from a sliding-window view of the source, instead of ``B * W``
        separate rows, and written straight into the output. Bars outside ``W - 1 <= t < T``
        raise :class:`~envs.errors.DataError`.

        Args:
            window_block: the block holding the last ``W`` rows of ``window_source``.
            window_source: ``(T, ...)`` array whose rows have the block's trailing shape.
            row_sources: one ``(T, ...)`` array per remaining block except ``given_block``.
            given_block: the block passed to each call, ``(B, *shape)``.

        Raises:
            DataError: the blocks or the sources' shapes do not match the specs.
        """
        # Same checks (and the same trusted, float32 sources) as the single-bar assembler; no
        # joint Dict rows (this class gathers each block per batch), so a vector env does not
        # hold the blocks twice.
        bar = self._bar_assembler(
            window_block, window_source, row_sources, given_block, joint_rows=False
        )
        return _BatchAssembler(self, bar)

    def build_batch(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | np.ndarray:
        """Build a batch of observations; every array has a leading batch dimension."""
        batch = int(np.shape(next(iter(values.values())))[0])
        self._check(values, batch)
        if self.flatten:
            out = np.empty((batch, self.flat_dim), dtype=np.float32)
            for b in self.blocks:
                out[:, self.flat_slices[b.name]] = np.reshape(values[b.name], (batch, -1))
            return self._clipped(out)
        return self._clipped(
            {b.name: np.array(values[b.name], dtype=np.float32, copy=True) for b in self.blocks}
        )

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


def _merge_row_blocks(
    blocks: Iterable[tuple[slice, np.ndarray]], merge: bool = True
) -> tuple[tuple[slice, np.ndarray], ...]:
    """Row blocks as ``(flat slice, (T, width) source)`` pairs, adjacent ones merged.

    Args:
        blocks: ``(flat slice, (T, ...) source)`` per row block.
        merge: join blocks whose slices touch into one pair whose source is their columns
            concatenated (one copy per bar instead of one per block); False: one pair each.

    Returns:
        The pairs in flat order; a single block's source is a view of its own array.
    """
    pairs = sorted(
        ((sl, arr.reshape(arr.shape[0], -1)) for sl, arr in blocks), key=lambda p: p[0].start
    )
    runs: list[list[tuple[slice, np.ndarray]]] = []
    for sl, arr in pairs:
        if merge and runs and runs[-1][-1][0].stop == sl.start:
            runs[-1].append((sl, arr))
        else:
            runs.append([(sl, arr)])
    return tuple(
        run[0]
        if len(run) == 1
        else (slice(run[0][0].start, run[-1][0].stop), np.concatenate([a for _, a in run], axis=1))
        for run in runs
    )


class _BarAssembler:
    """``assemble(t, given)`` of :meth:`ObservationBuilder.bar_assembler` (a class to pickle)."""

    joint_rows = True  # the default for assemblers pickled before the attribute existed

    def __init__(
        self,
        *,
        flatten: bool,
        window: int,
        window_block: str,
        window_source: np.ndarray,
        rows: dict[str, np.ndarray],
        given_block: str,
        flat_slices: dict[str, slice],
        flat_dim: int,
        in_order: bool,
        order: tuple[str, ...],
        joint_rows: bool = True,
    ) -> None:
        self.flatten = flatten
        self.joint_rows = joint_rows
        self.lo = window - 1
        self.window_block = window_block
        self.source = window_source
        self.rows = rows
        self.given_block = given_block
        self.in_order = in_order
        self.order = order
        self.flat_slices = flat_slices
        self.dim = flat_dim
        self._derive()

    def _derive(self) -> None:
        # Flat layout: the window is one contiguous run of the flattened source. These views
        # are rebuilt after unpickling rather than pickled (a view would pickle as a copy).
        self.row_size = int(np.prod(self.source.shape[1:], dtype=np.int64))
        self.flat_source = self.source.reshape(-1)
        self.win_slice = self.flat_slices[self.window_block]
        self.given_slice = self.flat_slices[self.given_block]
        self.row_plan = self._merged_row_plan(merge=self.flatten)
        # Dict layout with two or more row blocks (one per predictor, say): the blocks' values
        # at bar ``t`` are one row of ``dict_source`` (their columns side by side), and a call
        # copies that row once and hands out non-overlapping views of the copy, one per block.
        # Every block is still a fresh array (it shares memory with no source, no state and no
        # other observation; ``block.base`` is the observation's own row, so ``owndata`` is
        # False). Issue 6: four models' blocks as four ``arr[t].copy()`` cost a reset ~+10%
        # (``MarketTradingEnv``, ~20 us); the single copy reads one cache line pair instead
        # of four cold rows, and a view costs ~0.13 us against ~0.25 us for a copy. Costs T x
        # the blocks' width of float32 more memory while the env lives; rebuilt after
        # unpickling, never pickled. One row block: its own copy (the same cost). Not built
        # for a batch assembler's bar (``joint_rows`` False), which never reads it.
        self.dict_source = None
        self.dict_parts: tuple[tuple[str, slice, tuple[int, ...] | None], ...] = ()
        if self.joint_rows and not self.flatten and len(self.rows) > 1:
            flat_rows = [arr.reshape(arr.shape[0], -1) for arr in self.rows.values()]
            self.dict_source = np.concatenate(flat_rows, axis=1)
            parts, start = [], 0
            for (name, arr), flat in zip(self.rows.items(), flat_rows, strict=True):
                stop = start + flat.shape[1]
                parts.append((name, slice(start, stop), arr.shape[1:] if arr.ndim != 2 else None))
                start = stop
            self.dict_parts = tuple(parts)
        # Fast paths (issue 3: the single env's step). Flat, window block first: row ``r`` of
        # ``spans`` is the ``dim`` source values from the window's first row on, so one copy
        # of it is the fresh output with the window in place; the later blocks (rows, then
        # ``given``) then overwrite the source values past the window. That copy costs about
        # a third of ``empty`` + slice assignment. Bars whose span would run past the end of
        # the source (the last few) take the general path. Dict: ``windows[r]`` is the window
        # block ending at bar ``r + W - 1`` (a strided view; indexing it beats slicing).
        # Both are views: rebuilt after unpickling, never pickled.
        size = self.row_size
        flat_n = self.flat_source.shape[0]
        self.spans = None
        if self.flatten and self.win_slice.start == 0 and flat_n >= self.dim and size > 0:
            self.spans = np.lib.stride_tricks.sliding_window_view(self.flat_source, self.dim)
            self.spans = self.spans[::size]
        self.n_spans = 0 if self.spans is None else self.spans.shape[0]
        self.n_windows = max(self.source.shape[0] - self.lo, 0)
        self.windows = np.lib.stride_tricks.as_strided(
            self.source,
            shape=(self.n_windows, self.lo + 1, *self.source.shape[1:]),
            strides=(self.source.strides[0], *self.source.strides),
            writeable=False,
        )
        # A given block of 5 (one asset's portfolio block, the common case) is written item by
        # item: a list assigned to a float32 slice first becomes a float64 array (~0.1 us
        # more). Each float is cast (C double -> float) and warns on overflow the same way.
        self.given_items = tuple(range(self.given_slice.start, self.given_slice.stop))
        # Bars served by the shortest path: flat, window and a 5-value given block only (the
        # single-asset env without predictor blocks); 0 when the layout is anything else.
        short = not self.row_plan and len(self.given_items) == 5
        self.n_short = self.n_spans if short else 0

    def _merged_row_plan(self, merge: bool) -> tuple[tuple[slice, np.ndarray], ...]:
        """``(flat slice, (T, width) source)`` pairs that fill the row blocks of the flat layout.

        Row blocks adjacent in the flat layout (the market envs put every predictor block
        between the window and the portfolio) are merged into one run whose source is their
        columns concatenated, so a bar's row blocks are one copy instead of one per block
        (issue 6: four models' blocks cost an env reset +17% as four copies); see
        :func:`_merge_row_blocks`. The merged sources are rebuilt after unpickling, never pickled
        (``T`` x the runs' width of float32 more memory while the env lives). ``merge=False``
        (the Dict layout, which does not read the plan): one pair per block.
        """
        return _merge_row_blocks(
            ((self.flat_slices[name], arr) for name, arr in self.rows.items()), merge
        )

    def __getstate__(self) -> dict:
        views = (
            "row_size",
            "flat_source",
            "win_slice",
            "given_slice",
            "row_plan",
            "spans",
            "n_spans",
            "windows",
            "n_windows",
            "given_items",
            "n_short",
            "dict_source",
            "dict_parts",
        )
        return {k: v for k, v in self.__dict__.items() if k not in views}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._derive()

    def __call__(self, t: int, given: Sequence[float]) -> dict[str, np.ndarray] | np.ndarray:
        lo = self.lo
        r = t - lo
        if 0 <= r < self.n_short:  # the branch below, for the common layout, in fewer steps
            out = self.spans[r].copy()
            g0, g1, g2, g3, g4 = given
            i0, i1, i2, i3, i4 = self.given_items
            out[i0] = g0
            out[i1] = g1
            out[i2] = g2
            out[i3] = g3
            out[i4] = g4
            return out
        if self.flatten:
            if 0 <= r < self.n_spans:
                out = self.spans[r].copy()
                for sl, arr in self.row_plan:
                    out[sl] = arr[t]
                items = self.given_items
                if len(items) == 5:
                    g0, g1, g2, g3, g4 = given  # a wrong length raises, as the slice does
                    i0, i1, i2, i3, i4 = items
                    out[i0] = g0
                    out[i1] = g1
                    out[i2] = g2
                    out[i3] = g3
                    out[i4] = g4
                else:
                    out[self.given_slice] = given
                return out
            size = self.row_size
            out = np.empty(self.dim, dtype=np.float32)
            out[self.win_slice] = self.flat_source[(t - lo) * size : (t + 1) * size]
            for sl, arr in self.row_plan:
                out[sl] = arr[t]
            out[self.given_slice] = given
            return out
        if 0 <= r < self.n_windows:
            window = self.windows[r].copy()
        else:
            window = self.source[t - lo : t + 1].copy()
        parts = {self.window_block: window}
        joint = self.dict_source
        if joint is not None:  # see _derive
            row = joint[t].copy()
            for name, sl, shape in self.dict_parts:
                parts[name] = row[sl] if shape is None else row[sl].reshape(shape)
        else:
            for name, arr in self.rows.items():
                parts[name] = arr[t].copy()
        parts[self.given_block] = np.array(given, np.float32)
        return parts if self.in_order else {name: parts[name] for name in self.order}


class _BatchAssembler:
    """``assemble(t, given)`` of :meth:`ObservationBuilder.batch_assembler` (a class to pickle).

    Performance (issue 3): with the window block first in the flat layout (as the market envs
    build it), row ``r`` of ``spans`` is the ``D`` values of the (zero-padded) flat source from
    the first row of the window ending at bar ``r + W - 1`` on; one fancy index of it gathers
    every output row as one contiguous run, window in place, and the later blocks then
    overwrite the values past the window (bars after ``t``: they never reach the result). That
    is one pass over the output where a gathered window temporary copied into it was two.
    Other layouts gather the window in chunks from a sliding-window view. Clipping is
    elementwise with per-block bounds, so the sources are clipped once here and only the given
    block per call: the same bits as clipping every gathered batch.
    """

    def __init__(self, builder: ObservationBuilder, bar: _BarAssembler) -> None:
        self.builder = builder
        self.bar = bar
        self._derive()

    def _derive(self) -> None:
        # Derived arrays are rebuilt after unpickling rather than pickled (a view would pickle
        # as a copy).
        bar = self.bar
        builder = self.builder
        size = bar.row_size
        width = (bar.lo + 1) * size
        self.window_shape = builder._by_name[bar.window_block].shape
        self.given_shape = builder._by_name[bar.given_block].shape
        clip = builder.clip

        def clipped(name: str, arr: np.ndarray) -> np.ndarray:
            spec = builder._by_name[name]
            return np.clip(arr, np.float32(spec.low), np.float32(spec.high)) if clip else arr

        self.rows = {name: clipped(name, arr) for name, arr in bar.rows.items()}
        # Adjacent row blocks of the flat layout: one gather per run (issue 6), as the bar's.
        self.row_plan = _merge_row_blocks(
            ((bar.flat_slices[name], arr) for name, arr in self.rows.items()), bar.flatten
        )
        source = clipped(bar.window_block, bar.flat_source)
        # Row ``r`` of ``windows`` is the flattened window ending at bar ``r + W - 1``: a strided
        # view of the source (no copy), so gathering a window is one contiguous run per row.
        self.windows = np.lib.stride_tricks.sliding_window_view(source, width)[::size]
        self.n_rows = self.windows.shape[0]
        # ``padded_source`` is the 1-D array ``spans`` views (row r starts at r * row_size);
        # envs.market_numba.FlatGather reads it directly.
        self.spans = self.padded_source = None
        if bar.flatten and bar.win_slice.start == 0:
            padded = np.zeros(source.shape[0] + bar.dim - width, dtype=np.float32)
            padded[: source.shape[0]] = source
            self.padded_source = padded
            self.spans = np.lib.stride_tricks.sliding_window_view(padded, bar.dim)[::size]
        gspec = builder._by_name[bar.given_block]
        self.given_bounds = (np.float32(gspec.low), np.float32(gspec.high)) if clip else None
        # The chunked gather needs a temporary before the copy into the output; in chunks of
        # ~512 KB it stays in cache and is reused by the allocator, where one (B, W * F)
        # temporary of several MB is mapped afresh (page faults) each step.
        self.chunk_rows = max(1, (1 << 19) // (width * self.windows.itemsize))

    def __getstate__(self) -> dict:
        return {"builder": self.builder, "bar": self.bar}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._derive()

    def __call__(self, t: np.ndarray, given: np.ndarray) -> dict[str, np.ndarray] | np.ndarray:
        bar = self.bar
        t = np.asarray(t)
        batch = t.shape[0]
        given = np.asarray(given)
        if given.shape != (batch, *self.given_shape):
            raise DataError(
                f"observation block {bar.given_block!r}: expected shape "
                f"{(batch, *self.given_shape)}, got {given.shape}"
            )
        rows = t - bar.lo
        # A negative row would silently wrap around to the end of the data (fancy indexing).
        # Seen as unsigned, a negative int64 row is huge: one comparison checks both ends.
        if rows.dtype == np.int64:
            bad = np.count_nonzero(rows.view(np.uint64) >= self.n_rows) > 0
        else:
            bad = batch > 0 and (rows.min() < 0 or rows.max() >= self.n_rows)
        if bad:
            raise DataError(
                f"batch_assembler: bars must lie in [{bar.lo}, {self.n_rows + bar.lo}), "
                f"got {t.min()}..{t.max()}"
            )
        bounds = self.given_bounds
        if bar.flatten:
            if self.spans is not None:
                out = self.spans[rows]
            else:
                out = np.empty((batch, bar.dim), dtype=np.float32)
                market = out[:, bar.win_slice]
                step = self.chunk_rows
                for lo in range(0, batch, step):
                    market[lo : lo + step] = self.windows[rows[lo : lo + step]]
            for sl, arr in self.row_plan:
                out[:, sl] = arr[t]
            part = out[:, bar.given_slice]
            part[...] = given.reshape(batch, -1)
            if bounds is not None:
                np.clip(part, *bounds, out=part)
            return out
        parts = {bar.window_block: self.windows[rows].reshape(batch, *self.window_shape)}
        for name, arr in self.rows.items():
            parts[name] = arr[t]
        own = np.array(given, dtype=np.float32, copy=True)
        if bounds is not None:
            np.clip(own, *bounds, out=own)
        parts[bar.given_block] = own
        return {name: parts[name] for name in bar.order}
