"""The single env's per-step shortcuts equal the general code they stand in for (issue 3).

``ScalarActions.map_function`` returns specialised mappings for int/np.int64 discrete actions
and one-asset continuous arrays; ``_BarAssembler`` copies the flat observation from a strided
span of the source and writes a 5-value portfolio block item by item, and reads the Dict window
from a strided view. Each must give exactly what ``ScalarActions.map`` and
``ObservationBuilder.build`` give, fall back to them for everything else, and raise or warn the
same way.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from obs_checks import is_fresh_block
from test_market_fast import FEATURES, volatile_dataset  # tests/ is on sys.path

from envs.execution import ExecutionConfig
from envs.market_env import MarketTradingEnv
from envs.market_fast import ScalarActions


def same(a: object, b: object) -> bool:
    """Equal values and types (None, lists of floats), NaN-aware and sign-of-zero aware."""
    if a is None or b is None:
        return a is b
    assert isinstance(a, list) and isinstance(b, list)
    return len(a) == len(b) and all(
        type(x) is type(y) and np.float64(x).tobytes() == np.float64(y).tobytes()
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("allow_short", [True, False])
def test_discrete_shortcut_equals_map(allow_short: bool) -> None:
    cfg = ExecutionConfig(allow_short=allow_short)
    actions = ScalarActions("discrete", np.array([-1.0, -0.5, 0.0, 1.0]), cfg, (), 1)
    fast = actions.map_function()
    assert fast != actions.map
    odd = [True, False, 1.0, 2.5, "1", None, np.int32(1), np.uint8(3), np.bool_(True)]
    odd += [np.array(1), np.array([1]), np.float64(1.0)]
    for action in [*range(-6, 7), *np.arange(-6, 7), *odd]:
        assert same(fast(action), actions.map(action)), action
    first, second = fast(np.int64(3)), fast(np.int64(3))
    assert first is not second  # a fresh list each call (the state keeps it)


@pytest.mark.parametrize("allow_short", [True, False])
@pytest.mark.parametrize("leverage", [1.0, 2.5, 0.3])
def test_continuous_one_asset_shortcut_equals_map(allow_short: bool, leverage: float) -> None:
    cfg = ExecutionConfig(allow_short=allow_short, max_leverage=leverage)
    actions = ScalarActions("continuous", None, cfg, (1,), 1)
    fast = actions.map_function()
    assert fast != actions.map
    rng = np.random.default_rng(0)
    values = [*rng.uniform(-3.0, 3.0, 200), -1.0, -0.0, 0.0, 1.0, 1e-310, -1e-310, 7e300]
    values += [np.nan, np.inf, -np.inf]
    for v in values:
        for dtype in (np.float32, np.float64):
            with np.errstate(over="ignore"):  # 7e300 as float32 is inf: also a case
                action = np.array([v], dtype=dtype)
            assert same(fast(action), actions.map(action)), (v, dtype)
    for action in (np.array([1]), np.zeros((1, 1)), np.zeros(2), [0.5], 0.5, np.float32(0.5)):
        assert same(fast(action), actions.map(action)), action
    # Two assets, or weights mode: the general mapping itself.
    assert ScalarActions("continuous", None, cfg, (2,), 2).map_function().__name__ == "map"
    assert ScalarActions("weights", None, cfg, (2,), 1).map_function().__name__ == "map"


def assembler_cases() -> list[tuple[MarketTradingEnv, dict[str, np.ndarray]]]:
    out = []
    for n_assets, with_rows in ((1, False), (1, True), (2, False), (2, True)):
        ds = volatile_dataset(n_bars=60, n_assets=n_assets)
        rows = {}
        if with_rows:
            rows = {
                "forecast": np.arange(len(ds) * 6, dtype=np.float32).reshape(len(ds), 2, 3),
                "score": np.linspace(-1, 1, len(ds)).astype(np.float32)[:, None],
            }
        for flatten in (True, False):
            env = MarketTradingEnv(
                dataset=ds,
                features=FEATURES,
                window=8,
                action_mode="continuous",
                predictor_blocks=rows or None,
                flatten=flatten,
            )
            out.append((env, rows))
    return out


def test_assembler_shortcuts_equal_build_at_every_bar() -> None:
    for env, rows in assembler_cases():
        builder = env.observation_builder
        feats = env.setup.arrays.features
        assemble = builder.bar_assembler("market", feats, rows, "portfolio")
        clone = pickle.loads(pickle.dumps(assemble))
        width = builder.blocks[-1].shape[0]
        given = [0.5, -0.25, 1.0 / 3.0, 1e-45, -7.0, 0.1, 99.9][:width]
        for t in range(7, len(feats)):  # every bar, the last ones (no full span) included
            want = builder.build(
                {
                    "market": feats[t - 7 : t + 1],
                    **{name: arr[t] for name, arr in rows.items()},
                    "portfolio": np.asarray(given),
                }
            )
            for fn in (assemble, clone, assemble.__call__):
                got = fn(t, given)
                np.testing.assert_equal(got, want)
                blocks = got.values() if isinstance(got, dict) else [got]
                for block in blocks:
                    assert block.dtype == np.float32 and is_fresh_block(block)
                    assert block.flags.writeable and block.flags.c_contiguous


def test_assembler_shortcuts_raise_and_warn_like_build() -> None:
    for env, rows in assembler_cases():
        builder = env.observation_builder
        feats = env.setup.arrays.features
        assemble = builder.bar_assembler("market", feats, rows, "portfolio")
        width = builder.blocks[-1].shape[0]
        for t in (7, 30, len(feats) - 1):
            if builder.flatten:  # (the Dict path never checked the length, and still does not)
                with pytest.raises(ValueError):
                    assemble(t, [0.5] * (width + 1))
                with pytest.raises(ValueError):
                    assemble(t, [0.5] * (width - 1))
            # A value beyond float32 becomes inf with NumPy's overflow warning, as in build.
            big = [1e300] + [0.0] * (width - 1)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with pytest.raises(RuntimeWarning, match="overflow"):
                    assemble(t, big)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = assemble(t, big)
            if isinstance(got, dict):
                portfolio = got["portfolio"]
            else:
                portfolio = got[builder.flat_slices["portfolio"]]
            assert np.isposinf(portfolio[0]) and not np.any(portfolio[1:])


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_env_info_position_is_a_fresh_float64_array(backend: str) -> None:
    if backend == "numba":
        pytest.importorskip("numba")
    env = MarketTradingEnv(dataset=volatile_dataset(), features=FEATURES, window=8, backend=backend)
    assert env.backend == backend
    _, info = env.reset(seed=0)
    seen = [info["position"]]
    for action in (2, 0, 1, 2):
        _, _, _, _, info = env.step(np.int64(action))
        position = info["position"]
        assert type(position) is np.ndarray and position.dtype == np.float64
        assert position.shape == (1,) and position.flags.owndata
        assert all(not np.shares_memory(position, other) for other in seen)
        np.testing.assert_equal(position, np.array([env._core.portfolio(env._scalar)[1][0]]))
        seen.append(position)
