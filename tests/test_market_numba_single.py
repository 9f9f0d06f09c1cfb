"""The single env's numba backend equals its python backend bit for bit, or falls back (issue 3).

``MarketTradingEnv(backend="numba")`` steps through :mod:`envs.market_numba_single` (one
compiled call per step, state in a float64 array); ``backend="python"`` through
:mod:`envs.market_fast`. Every step's observation bytes, reward, flags, info values (types
included), episode metrics and the state must be the same.
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pytest

pytest.importorskip("numba")

from obs_checks import is_fresh_block
from test_market_fast import (  # tests/ is on sys.path
    FEATURES,
    random_action,
    random_config,
    volatile_dataset,
)

from envs.data.dataset import MarketDataset
from envs.errors import ConfigError
from envs.market_env import MarketTradingEnv
from envs.market_numba_single import STATE_FIELDS, SingleKernel


def _same(a: Any, b: Any, where: str) -> None:
    """Equal types, keys, dtypes, shapes and bits (NaN payloads and signed zeros included)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
        return
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{k}]")
        return
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), (where, a, b)
        return
    if isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes(), (where, a, b)
        return
    assert a == b, (where, a, b)


def _same_state(ref: MarketTradingEnv, fast: MarketTradingEnv, where: str) -> None:
    _same(ref._scalar.__getstate__(), fast._scalar.__getstate__(), f"{where} scalar")
    for name, x, y in zip(ref.state._fields, ref.state, fast.state, strict=True):
        _same(x, y, f"{where} state.{name}")
    _same(ref._equity, fast._equity, f"{where} equity")
    _same(ref._fills, fast._fills, f"{where} fills")


def _fresh(obs: Any) -> None:
    for block in obs.values() if isinstance(obs, dict) else [obs]:
        assert is_fresh_block(block) and block.flags.writeable and block.dtype == np.float32


def run_pair(steps: int, seed: int, pickle_at: int | None = None, **kwargs: Any) -> dict[str, int]:
    """Step a python- and a numba-backend env with the same actions; compare everything."""
    ref = MarketTradingEnv(backend="python", **kwargs)
    fast = MarketTradingEnv(backend="numba", **kwargs)
    assert (ref.backend, fast.backend) == ("python", "numba")
    # Which observations the kernel fills itself: flat ones without predictor blocks (in
    # place of the assembler's span copy) and the Dict of just market and portfolio.
    plain = not kwargs.get("predictor_blocks")
    flat = kwargs.get("flatten", False)
    assert (fast._kernel.obs_size > 0) == (plain and flat)
    assert (fast._kernel.window_shape is not None) == (plain and not flat)
    _same(ref.reset(seed=seed), fast.reset(seed=seed), "reset")
    rng = np.random.default_rng(seed)
    counts = {"terminated": 0, "truncated": 0, "trades": 0, "assembler": 0}

    def count_assembler(env: MarketTradingEnv) -> None:
        # The step's observations the kernel leaves to the assembler (counted).
        assemble = env._assemble.__call__

        def observe(t: int, block: list[float]) -> Any:
            counts["assembler"] += 1
            return assemble(t, block)

        env._observe = observe

    count_assembler(fast)
    for k in range(steps):
        if k == pickle_at:
            fast._observe = fast._assemble.__call__  # (the counting closure does not pickle)
            fast = pickle.loads(pickle.dumps(fast))
            count_assembler(fast)
            assert fast.backend == "numba" and fast._fast is not None
            _same_state(ref, fast, f"unpickled at {k}")
        action = random_action(ref.action_space, rng)
        got_ref = ref.step(action)
        got_fast = fast.step(action)
        _same(got_ref, got_fast, f"step {k}")
        _fresh(got_fast[0])
        counts["terminated"] += got_ref[2]
        counts["truncated"] += got_ref[3]
        counts["trades"] += got_ref[4]["trades"] > 0
        if k % 7 == 0 or got_ref[2] or got_ref[3]:
            _same_state(ref, fast, f"step {k}")
        if got_ref[2] or got_ref[3]:
            assert "episode" in got_fast[4]
            _same(ref.reset(), fast.reset(), f"reset after {k}")
    _same_state(ref, fast, "end")
    if plain:  # only bars whose flat span runs past the data's end
        assert counts["assembler"] <= steps // 10, counts
    else:
        assert counts["assembler"] == steps
    return counts


def squeeze_dataset(seed: int = 11) -> MarketDataset:
    """The volatile bars with prices x4 from bar 60 on: leveraged shorts get ruined."""
    ds = volatile_dataset(seed=seed)
    ohlcv = ds.ohlcv.copy()
    ohlcv[60:, :, :4] *= 4.0
    return MarketDataset(ds.timestamps, ds.symbols, ohlcv, source="<squeeze>")


BASE = dict(features=FEATURES, window=8, episode_length=25)


def test_discrete_flat_default_costs_with_resets() -> None:
    counts = run_pair(300, seed=1, dataset=volatile_dataset(seed=1), flatten=True, **BASE)
    assert counts["truncated"] >= 5 and counts["trades"] > 50


def test_discrete_dict_obs_no_shorts_leverage_positions() -> None:
    counts = run_pair(
        250,
        seed=2,
        dataset=volatile_dataset(seed=2),
        positions=(-2.0, -0.5, 0.0, 1.0, 2.0),
        max_leverage=2.0,
        allow_short=False,
        **BASE,
    )
    assert counts["truncated"] >= 5 and counts["trades"] > 20


def test_continuous_raised_costs_lot_min_notional_band() -> None:
    counts = run_pair(
        300,
        seed=3,
        dataset=volatile_dataset(seed=3),
        action_mode="continuous",
        flatten=True,
        max_leverage=3.0,
        taker_fee=0.004,
        half_spread=0.002,
        impact_k=3.0,
        borrow_rate=2.0,
        margin_rate=3.0,
        lot_size=0.7,
        min_notional=400.0,
        rebalance_band=0.2,
        **BASE,
    )
    assert counts["truncated"] >= 5 and counts["trades"] > 20


def test_continuous_drawdown_stops_no_band_no_shorts() -> None:
    counts = run_pair(
        300,
        seed=4,
        dataset=volatile_dataset(seed=4),
        action_mode="continuous",
        max_leverage=2.5,
        rebalance_band=0.0,
        allow_short=False,
        max_drawdown=0.1,
        **BASE,
    )
    assert counts["terminated"] >= 3


@pytest.mark.parametrize("flatten", [True, False])
def test_ruin_to_the_last_bar_and_pickling_mid_episode(flatten: bool) -> None:
    # Leveraged shorts into a squeeze: ruin (the log floor, value <= 0); without an episode
    # length the episodes also run into the last bars, whose spans end past the data (the
    # assembler's general path, through the block the kernel leaves in the state array).
    counts = run_pair(
        260,
        seed=5,
        pickle_at=37,
        dataset=squeeze_dataset(),
        features=FEATURES,
        window=8,
        episode_length=None,
        random_start=True,
        action_mode="continuous",
        max_leverage=10.0,
        taker_fee=0.01,
        impact_k=5.0,
        rebalance_band=0.0,
        flatten=flatten,
    )
    assert counts["terminated"] >= 1 and counts["truncated"] >= 1


def test_predictor_blocks_take_the_assembler_and_match() -> None:
    ds = volatile_dataset(seed=6)
    forecast = np.random.default_rng(6).normal(size=(len(ds), 2, 3)).astype(np.float32)
    for flatten in (True, False):
        counts = run_pair(
            120,
            seed=6,
            pickle_at=50,
            dataset=ds,
            predictor_blocks={"forecast": forecast},
            flatten=flatten,
            **BASE,
        )
        assert counts["truncated"] >= 2


def _sweep(n_configs: int, steps: int, seed: int) -> int:
    """run_pair over random supported configurations (every execution setting varies)."""
    rng = np.random.default_rng(seed)
    ends = 0
    for i in range(n_configs):
        cfg = random_config(rng, 1)
        cfg.update(reward="log_return", latency=1)
        cfg.pop("reward_kwargs", None)
        counts = run_pair(
            steps,
            seed=i,
            pickle_at=int(rng.integers(steps)),
            dataset=volatile_dataset(seed=int(rng.integers(1 << 20))),
            features=FEATURES,
            window=8,
            episode_length=int(rng.choice([15, 40])),
            flatten=bool(rng.random() < 0.6),
            **cfg,
        )
        ends += counts["terminated"] + counts["truncated"]
    return ends


def test_random_supported_configs() -> None:
    assert _sweep(8, 120, seed=20) >= 10


@pytest.mark.slow
# Extreme episodes overflow the annualised return in episode_metrics (on both backends alike).
@pytest.mark.filterwarnings("ignore:overflow encountered in scalar power:RuntimeWarning")
def test_random_supported_configs_long() -> None:
    """The same over many more configurations (``pytest -m slow``)."""
    assert _sweep(80, 300, seed=21) >= 100


def test_state_pickle_round_trip_and_materialised_views() -> None:
    kwargs = dict(dataset=volatile_dataset(seed=7), flatten=True, **BASE)
    env = MarketTradingEnv(backend="numba", **kwargs)
    assert env.state is None and env._scalar is None
    env.reset(seed=7)
    for action in (2, 0, 0, 1, 2, 2):
        env.step(action)
    snap = env._scalar
    assert snap.t == int(env._st[0]) and snap.units == [float(env._st[4])]
    assert SingleKernel.unpack(SingleKernel.pack(snap), snap).__getstate__() == (
        snap.__getstate__()
    )
    # The state array layout market_env reads by index (_ST_T, _ST_UNITS, _ST_NOTIONAL,
    # _ST_BLOCK).
    from envs.market_env import _ST_BLOCK, _ST_NOTIONAL, _ST_T, _ST_UNITS
    from envs.market_numba import SINGLE_BLOCK, SINGLE_STATE_SIZE

    assert STATE_FIELDS[_ST_T] == "t" and STATE_FIELDS[_ST_UNITS] == "units"
    assert STATE_FIELDS[_ST_NOTIONAL] == "traded_notional"
    assert _ST_BLOCK == SINGLE_BLOCK and SINGLE_BLOCK.stop == SINGLE_STATE_SIZE == env._st.size
    snap.units[0] = 123.0  # a snapshot: changing it leaves the episode alone
    assert env._scalar.units != [123.0]
    clone = pickle.loads(pickle.dumps(env))
    _same(env.state, clone.state, "state")
    for action in (0, 2, 1):
        _same(env.step(action), clone.step(action), "after unpickling")


def test_unpickled_without_numba_continues_on_python(monkeypatch: pytest.MonkeyPatch) -> None:
    import envs.market_numba as market_numba

    kwargs = dict(dataset=volatile_dataset(seed=8), flatten=True, **BASE)
    env = MarketTradingEnv(backend="numba", **kwargs)
    ref = MarketTradingEnv(backend="python", **kwargs)
    _same(env.reset(seed=8), ref.reset(seed=8), "reset")
    for action in (2, 1, 0, 2):
        _same(env.step(action), ref.step(action), "step")
    blob = pickle.dumps(env)
    monkeypatch.setattr(market_numba, "numba", None)
    clone = pickle.loads(blob)
    assert clone.backend == "python" and clone._st is None
    for action in (0, 2, 2, 1):
        _same(clone.step(action), ref.step(action), "continued")


def test_render_matches() -> None:
    kwargs = dict(dataset=volatile_dataset(seed=9), **BASE)
    for mode in ("ansi", "rgb_array"):
        ref = MarketTradingEnv(backend="python", render_mode=mode, **kwargs)
        fast = MarketTradingEnv(backend="numba", render_mode=mode, **kwargs)
        ref.reset(seed=9)
        fast.reset(seed=9)
        for action in (2, 2, 0, 1, 0, 2):
            ref.step(action)
            fast.step(action)
        _same(ref._fills, fast._fills, "fills")
        if mode == "ansi":
            assert ref.render() == fast.render()
        else:  # fill markers are recorded for rgb_array only
            assert ref._fills


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(dataset=volatile_dataset(n_assets=2), action_mode="weights"), "2 assets"),
        (dict(reward="sortino"), "sortino"),
        (dict(latency=2), "latency=2"),
    ],
    ids=["multi-asset", "reward", "latency"],
)
def test_unsupported_configs_fall_back_or_raise(kwargs: dict[str, Any], named: str) -> None:
    base = dict(dataset=volatile_dataset(), features=FEATURES, window=8, episode_length=20)
    base.update(kwargs)
    auto = MarketTradingEnv(**base)
    assert auto.backend == "python" and auto._entry is None and auto._fast is None
    with pytest.raises(ConfigError, match=named):
        MarketTradingEnv(backend="numba", **base)
    auto.reset(seed=0)
    auto.step(auto.action_space.sample())


def test_backend_choice_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import envs.market_numba as market_numba

    base = dict(dataset=volatile_dataset(), features=FEATURES, window=8, episode_length=20)
    assert MarketTradingEnv(**base).backend == "numba"
    assert MarketTradingEnv(backend="python", **base).backend == "python"
    with pytest.raises(ConfigError, match="backend"):
        MarketTradingEnv(backend="cuda", **base)
    monkeypatch.setattr(market_numba, "numba", None)
    with pytest.raises(ConfigError, match="numba package"):
        MarketTradingEnv(backend="numba", **base)
    assert MarketTradingEnv(**base).backend == "python"


@pytest.mark.parametrize("case", ["discrete-flat", "continuous-dict"])
def test_check_env_passes_on_numba(case: str) -> None:
    from gymnasium.utils.env_checker import check_env

    mode, obs = case.split("-")
    env = MarketTradingEnv(
        backend="numba",
        dataset=volatile_dataset(),
        features=FEATURES,
        window=8,
        episode_length=20,
        action_mode=mode,
        flatten=obs == "flat",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)


def test_bad_actions_raise_as_on_python() -> None:
    from envs.execution import ActionError

    kwargs = dict(dataset=volatile_dataset(), **BASE)
    for backend in ("python", "numba"):
        env = MarketTradingEnv(backend=backend, **kwargs)
        with pytest.raises(RuntimeError, match="before reset"):
            env.step(0)
        env.reset(seed=0)
        for bad in (3, -1, np.int8(-1), 1.5, np.nan):
            with pytest.raises(ActionError):
                env.step(bad)
        env.step(np.array([2]))  # accepted by the NumPy mapping
