"""The Numba backend of MarketTradingVectorEnv equals the NumPy core bit for bit, or falls back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("numba")

from test_market_vector import gbm_dataset as _gbm_dataset  # tests/ is on sys.path

from envs.data.dataset import MarketDataset
from envs.errors import ConfigError
from envs.market_numba import FlatGather, unsupported_reason
from envs.observation import BlockSpec, ObservationBuilder
from envs.vector_market import MarketTradingVectorEnv

FEATURES = ("logret_1", "logret_4", "rvol_8")


def gbm_dataset(n_bars: int = 300, **kwargs: Any) -> MarketDataset:
    """test_market_vector's inline GBM dataset, 300 bars by default."""
    return _gbm_dataset(n_bars=n_bars, **kwargs)


def _assert_same(a: Any, b: Any, where: str) -> None:
    """Equal type, keys, dtypes, shapes and bits (NaN payloads and signed zeros included)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
        return
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{k}]")
        return
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype, a.shape, b.shape)
    assert np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)
    ), where


def _run_pair(num_envs: int, steps: int, seed: int, **kwargs: Any) -> dict[str, int]:
    """Step a numpy-backend and a numba-backend env with the same random actions; compare all."""
    ref = MarketTradingVectorEnv(num_envs, backend="numpy", **kwargs)
    fast = MarketTradingVectorEnv(num_envs, backend="numba", **kwargs)
    assert (ref.backend, fast.backend) == ("numpy", "numba")
    # Flat observations without predictor blocks go through the compiled gather.
    plain_flat = kwargs.get("flatten", False) and not kwargs.get("predictor_blocks")
    assert isinstance(fast._step_obs, FlatGather) == plain_flat
    _assert_same(ref.reset(seed=seed), fast.reset(seed=seed), "reset")
    rng = np.random.default_rng(seed)
    space = ref.action_space
    counts = {"terminated": 0, "truncated": 0, "episodes": 0, "trades": 0}
    for k in range(steps):
        if ref.setup.action_mode == "discrete":
            actions = rng.integers(0, ref.single_action_space.n, size=num_envs)
        else:
            actions = rng.uniform(-1.3, 1.3, size=space.shape).astype(np.float32)
        got_ref = ref.step(actions)
        got_fast = fast.step(actions)
        _assert_same(got_ref, got_fast, f"step {k}")
        counts["terminated"] += int(got_ref[2].sum())
        counts["truncated"] += int(got_ref[3].sum())
        counts["episodes"] += int(got_ref[4].get("_episode", np.zeros(1, bool)).sum())
        counts["trades"] += int(np.sum(got_ref[4]["trades"] > 0))
    for name, x, y in zip(ref.state._fields, ref.state, fast.state, strict=True):
        _assert_same(x, y, f"state.{name}")
    return counts


def test_discrete_default_costs_with_autoresets() -> None:
    counts = _run_pair(
        16, 400, seed=3, dataset=gbm_dataset(), features=FEATURES, window=8, episode_length=25
    )
    assert counts["truncated"] > 0 and counts["episodes"] > 0 and counts["trades"] > 0


def test_continuous_flat_all_costs_lot_min_notional_band() -> None:
    counts = _run_pair(
        12,
        300,
        seed=5,
        dataset=gbm_dataset(seed=1),
        features=FEATURES,
        window=6,
        episode_length=40,
        action_mode="continuous",
        flatten=True,
        max_leverage=3.0,
        taker_fee=0.002,
        half_spread=0.001,
        impact_k=2.0,
        borrow_rate=0.3,
        margin_rate=0.4,
        lot_size=0.01,
        min_notional=50.0,
        rebalance_band=0.1,
    )
    assert counts["truncated"] > 0 and counts["trades"] > 0


def test_drawdown_termination_and_no_band() -> None:
    counts = _run_pair(
        10,
        300,
        seed=7,
        dataset=gbm_dataset(seed=2, vol=0.03),
        features=FEATURES,
        window=5,
        episode_length=60,
        action_mode="continuous",
        max_leverage=2.0,
        rebalance_band=0.0,
        max_drawdown=0.05,
        allow_short=False,
        flatten=True,
    )
    assert counts["terminated"] > 0


def test_ruin_terminates_identically() -> None:
    # Violent prices and 10x leverage with heavy costs: books reach value <= 0 (ruin floor of
    # the log return, NaN-free division by a zero value in the kernel).
    counts = _run_pair(
        8,
        200,
        seed=11,
        dataset=gbm_dataset(seed=4, vol=0.15),
        features=FEATURES,
        window=4,
        episode_length=50,
        action_mode="continuous",
        max_leverage=10.0,
        taker_fee=0.01,
        impact_k=5.0,
        rebalance_band=0.0,
        flatten=True,
    )
    assert counts["terminated"] > 0


def test_flat_with_predictor_blocks_uses_the_assembler_and_matches() -> None:
    data = gbm_dataset(seed=6)
    signal = np.random.default_rng(6).normal(size=(len(data), 2))
    counts = _run_pair(
        6,
        120,
        seed=2,
        dataset=data,
        features=FEATURES,
        window=5,
        episode_length=30,
        flatten=True,
        predictor_blocks={"signal": signal},
    )
    assert counts["truncated"] > 0


def _clipping_assembler(n_bars: int = 40, window: int = 5):
    rng = np.random.default_rng(8)
    source = rng.normal(0.0, 2.0, (n_bars, 3)).astype(np.float32)
    source[7, 1] = np.nan
    specs = [
        BlockSpec("market", (window, 3), low=-1.5, high=1.5),
        BlockSpec("portfolio", (5,), low=-4.0, high=4.0),
    ]
    builder = ObservationBuilder(specs, flatten=True, clip=True)
    return builder, builder.batch_assembler("market", source, {}, "portfolio")


# 1e300 does not fit a float32: NumPy's cast warns (and gives inf, as the kernel's cast does).
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_flat_gather_equals_assembler_with_clipping_nan_and_errors() -> None:
    import pickle

    from envs.errors import DataError

    window = 5
    builder, assemble = _clipping_assembler(window=window)
    gather = FlatGather.build(assemble, builder, window)
    assert gather is not None
    rng = np.random.default_rng(9)
    t = np.array([window - 1, 11, 12, 39, 8, 20, 7, 9], dtype=np.int64)
    block = rng.normal(0.0, 6.0, (t.size, 5))
    block[0, :] = [np.nan, np.inf, -np.inf, -0.0, 4.0]
    block[1, :] = [1e300, -1e300, 1e-300, 3.9999999999, -4.0000001]
    want = assemble(t, block)
    _assert_same(gather(t, block), want, "gather")
    assert np.nanmax(np.abs(want)) == 4.0
    _assert_same(pickle.loads(pickle.dumps(gather))(t, block), want, "pickled gather")
    # Fresh arrays.
    got = gather(t, block)
    got[...] = 7.0
    _assert_same(gather(t, block), want, "fresh")
    # Bars outside the data and wrong blocks raise the assembler's errors.
    with pytest.raises(DataError, match="bars must lie in"):
        gather(np.array([window - 2, 10], dtype=np.int64), block[:2])
    with pytest.raises(DataError, match="bars must lie in"):
        gather(np.array([40, 10], dtype=np.int64), block[:2])
    with pytest.raises(DataError, match="portfolio"):
        gather(t, block[:, :-1])
    # Layouts other than market-then-portfolio, flat, are not handled.
    dict_builder = ObservationBuilder(builder.blocks, flatten=False, clip=True)
    dict_assemble = dict_builder.batch_assembler(
        "market", np.zeros((40, 3), np.float32), {}, "portfolio"
    )
    assert FlatGather.build(dict_assemble, dict_builder, window) is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(dataset=gbm_dataset(n_assets=2), action_mode="weights"), "2 assets"),
        (dict(reward="differential_sharpe"), "differential_sharpe"),
        (dict(latency=2), "latency=2"),
    ],
    ids=["multi-asset", "reward", "latency"],
)
def test_unsupported_configs_fall_back_or_raise(kwargs: dict[str, Any], named: str) -> None:
    base = dict(dataset=gbm_dataset(), features=FEATURES, window=5, episode_length=20)
    base.update(kwargs)
    auto = MarketTradingVectorEnv(4, **base)
    assert auto.backend == "numpy"
    setup = auto.setup
    assert named in unsupported_reason(setup.arrays, setup.params, setup.reward)
    with pytest.raises(ConfigError, match=named):
        MarketTradingVectorEnv(4, backend="numba", **base)
    # The fallback still steps (the NumPy core).
    auto.reset(seed=0)
    auto.step(auto.action_space.sample())


def test_backend_choice_and_errors() -> None:
    base = dict(dataset=gbm_dataset(), features=FEATURES, window=5, episode_length=20)
    assert MarketTradingVectorEnv(2, **base).backend == "numba"
    assert MarketTradingVectorEnv(2, backend="numpy", **base).backend == "numpy"
    with pytest.raises(ConfigError, match="backend"):
        MarketTradingVectorEnv(2, backend="cuda", **base)


def test_backend_numba_without_numba_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import envs.market_numba as market_numba

    monkeypatch.setattr(market_numba, "numba", None)
    base = dict(dataset=gbm_dataset(), features=FEATURES, window=5, episode_length=20)
    with pytest.raises(ConfigError, match="numba package"):
        MarketTradingVectorEnv(2, backend="numba", **base)
    assert MarketTradingVectorEnv(2, **base).backend == "numpy"


def test_fused_step_outputs_are_fresh_and_do_not_alias_the_state() -> None:
    """The fused step (FlatStep) returns arrays the caller may overwrite; results unchanged."""
    from envs.market_numba import FlatStep

    kwargs = dict(
        dataset=gbm_dataset(seed=6), features=FEATURES, window=6, episode_length=20, flatten=True
    )
    ref = MarketTradingVectorEnv(9, backend="numpy", **kwargs)
    fast = MarketTradingVectorEnv(9, backend="numba", **kwargs)
    assert isinstance(fast._fused, FlatStep)
    _assert_same(ref.reset(seed=4), fast.reset(seed=4), "reset")
    rng = np.random.default_rng(4)
    for k in range(90):
        actions = rng.integers(0, 3, size=9)
        want = ref.step(actions)
        got = fast.step(actions)
        _assert_same(want, got, f"step {k}")
        obs, rewards, terminated, truncated, info = got
        outputs = [obs, rewards, terminated, truncated] + [
            v for key, v in info.items() if key != "episode"
        ]
        outputs += list(info.get("episode", {}).values())
        for x in outputs:
            for name, field in zip(fast.state._fields[:-1], fast.state[:-1], strict=True):
                assert not np.shares_memory(x, field), (k, name)
            assert not np.shares_memory(x, fast._equity), k
        # Overwrite everything returned: the next steps must not see it.
        for x in outputs:
            x[...] = True if x.dtype == np.bool_ else 7
    for name, x, y in zip(ref.state._fields, ref.state, fast.state, strict=True):
        _assert_same(x, y, f"state.{name}")


def test_fused_step_leaves_bars_without_a_full_span_to_the_assembler() -> None:
    from envs.errors import DataError

    env = MarketTradingVectorEnv(
        4, backend="numba", dataset=gbm_dataset(), features=FEATURES, window=5, flatten=True
    )
    env.reset(seed=0)
    # A (corrupted) state whose next bars lie before the first full window.
    bad = env.state._replace(t=np.full(4, -20, dtype=np.int64))
    target = np.zeros((4, 1))
    resetting = np.zeros(4, dtype=bool)
    out = env._fused(bad, target, resetting, np.zeros_like(env._equity))
    assert out[3] is None
    env._state = bad
    with pytest.raises(DataError, match="bars must lie in"):
        env.step(np.zeros(4, dtype=np.int64))


def test_fused_step_maps_index_actions_and_rejects_bad_ones_like_numpy() -> None:
    """int64 indices are mapped in the kernel; bad ones raise the reference error, no step."""
    kwargs = dict(
        dataset=gbm_dataset(seed=8), features=FEATURES, window=4, episode_length=15, flatten=True
    )
    ref = MarketTradingVectorEnv(5, backend="numpy", **kwargs)
    fast = MarketTradingVectorEnv(5, backend="numba", **kwargs)
    _assert_same(ref.reset(seed=1), fast.reset(seed=1), "reset")
    rng = np.random.default_rng(1)
    bad_actions = [
        np.array([0, 1, 3, 2, 1], dtype=np.int64),
        np.array([0, -1, 2, 2, 1], dtype=np.int64),
    ]
    for k in range(40):
        if k % 10 == 3:
            for bad in bad_actions:
                with pytest.raises(Exception) as want:
                    ref.step(bad)
                with pytest.raises(type(want.value)) as got:
                    fast.step(bad)
                assert str(got.value) == str(want.value)
        # Lists and int32 arrays go through map_actions, int64 arrays through the kernel.
        actions = rng.integers(0, 3, size=5)
        if k % 3 == 1:
            actions = actions.astype(np.int32)
        got_ref, got_fast = ref.step(actions), fast.step(actions)
        _assert_same(got_ref, got_fast, f"step {k}")
    for name, x, y in zip(ref.state._fields, ref.state, fast.state, strict=True):
        _assert_same(x, y, f"state.{name}")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(episode_length=30),
        dict(
            episode_length=40,
            action_mode="continuous",
            max_leverage=10.0,
            taker_fee=0.01,
            impact_k=5.0,
            lot_size=0.01,
            min_notional=50.0,
            rebalance_band=0.0,
            max_drawdown=0.2,
        ),
    ],
    ids=["discrete-default", "continuous-ruin-drawdown-lot"],
)
@pytest.mark.parametrize("flatten", [True, False], ids=["fused", "dict"])
def test_vectorised_kernels_body_and_remainder_match_numpy(
    kwargs: dict[str, Any], flatten: bool
) -> None:
    """37 envs: the arithmetic loops of the fused kernel (flat) and of _step_one_asset (Dict)
    run LLVM's vector body and its scalar remainder (8 and 16 lanes both leave some), with
    ruin, drawdown, lots and autoresets."""
    from envs import market_numba

    assert market_numba._allow_vectorising_checks(market_numba._VECTORISE_CHECKS)
    counts = _run_pair(
        37,
        120,
        seed=13,
        dataset=gbm_dataset(seed=5, vol=0.08),
        features=FEATURES,
        window=4,
        flatten=flatten,
        **kwargs,
    )
    assert counts["episodes"] > 0 and counts["trades"] > 0
    if "max_drawdown" in kwargs:
        assert counts["terminated"] > 0


def test_fused_step_lazy_state_pickles_and_reads_like_the_reference() -> None:
    """Common fused steps leave the new CoreState unbuilt; reading, pickling or resuming from
    it gives the reference state and trajectory."""
    import pickle

    from envs import vector_market

    kwargs = dict(
        dataset=gbm_dataset(seed=9), features=FEATURES, window=5, episode_length=12, flatten=True
    )
    ref = MarketTradingVectorEnv(11, backend="numpy", **kwargs)
    fast = MarketTradingVectorEnv(11, backend="numba", **kwargs)
    _assert_same(ref.reset(seed=2), fast.reset(seed=2), "reset")
    rng = np.random.default_rng(2)
    lazy = 0
    for k in range(30):
        actions = rng.integers(0, 3, size=11)
        _assert_same(ref.step(actions), fast.step(actions), f"step {k}")
        if k % 7 == 3:  # mid-episode: pickle the lazy state, continue from both copies
            lazy += fast._state is vector_market._LATEST
            clone = pickle.loads(pickle.dumps(fast))
            for name, x, y in zip(ref.state._fields, ref.state, clone.state, strict=True):
                _assert_same(x, y, f"clone state.{name} at {k}")
            nxt = rng.integers(0, 3, size=11)
            want = ref.step(nxt)
            _assert_same(want, clone.step(nxt), f"clone step {k}")
            _assert_same(want, fast.step(nxt), f"step {k}+1")
    for name, x, y in zip(ref.state._fields, ref.state, fast.state, strict=True):
        _assert_same(x, y, f"state.{name}")
    assert lazy > 0
