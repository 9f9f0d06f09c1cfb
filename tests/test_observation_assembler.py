"""The bar assembler with several row (predictor) blocks equals ``build`` and returns fresh arrays.

Issue 6 merged row blocks that are adjacent in the flat layout into one copy (the Dict layout
keeps one owning copy per block). These tests pin both layouts to
:meth:`ObservationBuilder.build` (the general path) bit for bit, for adjacent and non-adjacent
blocks, window first or not, and check that nothing returned aliases the sources, the
assembler's derived arrays, another block or another observation.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from obs_checks import is_fresh_block

from envs.observation import BlockSpec, ObservationBuilder

T, W, F = 40, 4, 3
# Flattening orders: row blocks adjacent after the window (the market envs' layout), split by
# the given block, before the window (no spans), a single row block, none.
LAYOUTS = {
    "adjacent": ["market", "a", "b", "c", "portfolio"],
    "split": ["market", "a", "portfolio", "b", "c"],
    "window_not_first": ["a", "market", "b", "portfolio", "c"],
    "one_block": ["market", "b", "portfolio"],
    "no_blocks": ["market", "portfolio"],
}
SHAPES = {"market": (W, F), "a": (2,), "b": (2, 3), "c": (5,), "portfolio": (5,)}


def _sources(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    market = rng.normal(size=(T, F)).astype(np.float32)
    rows = {k: rng.normal(size=(T, *SHAPES[k])).astype(np.float32) for k in ("a", "b", "c")}
    return market, rows


def _assembler(layout: str, flatten: bool, rng: np.random.Generator):
    names = LAYOUTS[layout]
    builder = ObservationBuilder([BlockSpec(n, SHAPES[n]) for n in names], flatten=flatten)
    market, rows = _sources(rng)
    rows = {k: v for k, v in rows.items() if k in names}
    return builder, builder.bar_assembler("market", market, rows, "portfolio"), market, rows


def _reference(builder, market, rows, t, given):
    values = {"market": market[t - W + 1 : t + 1], "portfolio": np.asarray(given)}
    values.update({k: v[t] for k, v in rows.items()})
    return builder.build(values)


def _assert_same(got, want) -> None:
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == np.float32 and got[key].shape == want[key].shape
            assert np.array_equal(got[key], want[key]), key
    else:
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want)


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_assembler_equals_build_at_every_bar(layout, flatten):
    rng = np.random.default_rng(len(layout) + flatten)
    builder, assemble, market, rows = _assembler(layout, flatten, rng)
    for t in range(W - 1, T):  # the last bars take the flat layout's general path
        given = rng.normal(size=5).tolist()
        _assert_same(assemble(t, given), _reference(builder, market, rows, t, given))
    # A pickled assembler rebuilds its merged sources and views and gives the same values.
    state = assemble.__getstate__()
    assert "row_plan" not in state and "spans" not in state and "dict_source" not in state
    clone = pickle.loads(pickle.dumps(assemble))
    for t in (W - 1, T // 2, T - 1):
        _assert_same(clone(t, [0.5] * 5), assemble(t, [0.5] * 5))


def test_adjacent_flat_row_blocks_are_one_copy():
    rng = np.random.default_rng(0)
    plans = {
        layout: len(_assembler(layout, True, rng)[1].row_plan)
        for layout in ("adjacent", "split", "window_not_first", "one_block", "no_blocks")
    }
    assert plans == {
        "adjacent": 1,
        "split": 2,
        "window_not_first": 3,
        "one_block": 1,
        "no_blocks": 0,
    }


@pytest.mark.parametrize("flatten", [False, True])
def test_returned_blocks_are_fresh(flatten):
    rng = np.random.default_rng(5)
    builder, assemble, market, rows = _assembler("adjacent", flatten, rng)
    internals = [market, *rows.values()]
    internals += [arr for _, arr in assemble.row_plan]
    if assemble.dict_source is not None:  # Dict layout: the blocks' joint rows
        internals.append(assemble.dict_source)
    t = T // 2
    first = assemble(t, [1.0] * 5)
    second = assemble(t, [1.0] * 5)
    arrays = list(first.values()) if isinstance(first, dict) else [first]
    others = list(second.values()) if isinstance(second, dict) else [second]
    for i, arr in enumerate(arrays):
        assert is_fresh_block(arr) and arr.flags.c_contiguous
        assert not any(np.shares_memory(arr, src) for src in internals)
        assert not any(np.shares_memory(arr, other) for other in others)
        assert not any(np.shares_memory(arr, o) for j, o in enumerate(arrays) if j != i)
    want = _reference(builder, market, rows, t, [1.0] * 5)
    for arr in arrays:  # scribbling on one observation changes nothing else
        arr[...] = -7.0
    _assert_same(second, want)
    _assert_same(assemble(t, [1.0] * 5), want)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("layout", ["adjacent", "split", "window_not_first"])
def test_batch_assembler_equals_build_batch(layout, flatten, clip):
    rng = np.random.default_rng(11)
    names = LAYOUTS[layout]
    specs = [BlockSpec(n, SHAPES[n], low=-1.5, high=1.5) for n in names]
    builder = ObservationBuilder(specs, flatten=flatten, clip=clip)
    market, rows = _sources(rng)
    rows = {k: v for k, v in rows.items() if k in names}
    assemble = builder.batch_assembler("market", market, rows, "portfolio")
    t = rng.integers(W - 1, T, size=9)
    given = rng.normal(size=(9, 5)).astype(np.float32)
    values = {
        "market": np.stack([market[b - W + 1 : b + 1] for b in t]),
        "portfolio": given,
        **{k: v[t] for k, v in rows.items()},
    }
    _assert_same(assemble(t, given), builder.build_batch(values))
    clone = pickle.loads(pickle.dumps(assemble))
    _assert_same(clone(t, given), assemble(t, given))
    # The single-bar joint Dict rows are not kept by a batch assembler (memory).
    assert assemble.bar.dict_source is None and clone.bar.dict_source is None
