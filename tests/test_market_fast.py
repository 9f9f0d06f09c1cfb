"""The scalar fast path (envs.market_fast) equals the batched reference step_core bit for bit.

``envs.market_core.step_core`` is the reference for the accounting; the single env runs
``envs.market_fast.ScalarCore``. These seeded sweeps pin the two together over every action
mode, reward, latency, leverage, short/borrow, lot-size/min-notional, band and drawdown setting,
and check the env glue (observation, info, episode end) against the reference too.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from obs_checks import is_fresh_block

from envs.data.dataset import MarketDataset
from envs.execution import ActionError
from envs.market_core import initial_state, portfolio_block, step_core
from envs.market_env import MarketTradingEnv, build_market_setup
from envs.market_fast import MAX_FAST_ASSETS, ScalarActions, ScalarCore
from envs.rewards import DifferentialSharpeReward, Reward, RewardContext, RewardState

HOUR_NS = 3600 * 10**9
FEATURES = ("logret_1", "rvol_8")
REWARDS = (
    "log_return",
    "differential_sharpe",
    "sortino",
    "drawdown",
    "turnover",
    "excess_buy_and_hold",
)


def volatile_dataset(n_bars: int = 160, n_assets: int = 1, seed: int = 0) -> MarketDataset:
    """GBM bars with 4% moves, occasional jumps and some zero-volume bars (carried forward)."""
    rng = np.random.default_rng(seed)
    rets = rng.normal(0.0, 0.04, (n_bars, n_assets))
    rets[rng.random((n_bars, n_assets)) < 0.03] *= 8.0  # jumps: ruin and drawdown stops happen
    close = 100.0 * np.exp(np.cumsum(rets, axis=0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.01, (n_bars, n_assets)))
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    volume = rng.lognormal(6.0, 1.0, (n_bars, n_assets))
    volume[rng.random((n_bars, n_assets)) < 0.05] = 0.0
    return MarketDataset(
        timestamps=np.arange(n_bars, dtype=np.int64) * HOUR_NS,
        symbols=tuple(f"A{i}" for i in range(n_assets)),
        ohlcv=np.stack([open_, high, low, close, volume], axis=-1),
        source="<volatile test>",
    )


def quadratic_cost(ctx: RewardContext) -> np.ndarray:
    """A custom (generic-path) reward: log return minus a quadratic exposure penalty."""
    return ctx.log_return - 0.01 * (ctx.exposure**2).sum(axis=1) - ctx.cost / ctx.prev_value


class CountingReward(Reward):
    """A stateful custom reward (generic path): log return plus a decaying trade counter."""

    name = "counting"

    def init_state(self, batch: int) -> RewardState:
        return {"n": np.zeros(batch)}

    def __call__(self, ctx: RewardContext, state: RewardState) -> tuple[np.ndarray, RewardState]:
        n = 0.9 * state["n"] + (ctx.turnover > 0)
        return ctx.log_return - 1e-4 * n, {"n": n}


class TunedSharpe(DifferentialSharpeReward):
    """A subclass of a library reward: must take the generic path, not the scalar twin."""


def random_config(rng: np.random.Generator, n_assets: int) -> dict:
    mode = (
        "discrete"
        if n_assets == 1 and rng.random() < 0.4
        else str(rng.choice(["continuous", "weights"]))
    )
    lev = float(rng.choice([0.5, 1.0, 2.5]))
    reward: object = str(rng.choice(REWARDS))
    roll = rng.random()
    if roll < 0.08:
        reward = quadratic_cost
    elif roll < 0.16:
        reward = CountingReward()
    elif roll < 0.2:
        reward = TunedSharpe(eta=0.05)
    cfg = dict(
        action_mode=mode,
        max_leverage=lev,
        allow_short=bool(rng.random() < 0.75),
        latency=int(rng.choice([1, 1, 2, 3])),
        taker_fee=float(rng.choice([0.0, 0.001])),
        half_spread=float(rng.choice([0.0, 0.0003])),
        impact_k=float(rng.choice([0.0, 0.5, 2.0])),
        borrow_rate=float(rng.choice([0.0, 0.08, 3.0])),
        margin_rate=float(rng.choice([0.0, 0.05, 2.0])),
        lot_size=float(rng.choice([0.0, 0.0, 0.7])),
        min_notional=float(rng.choice([0.0, 0.0, 400.0])),
        rebalance_band=float(rng.choice([0.0, 0.05, 0.2])),
        max_drawdown=[None, None, 0.15][int(rng.integers(3))],
        reward=reward,
    )
    if mode == "discrete":
        cfg["positions"] = tuple(p * lev for p in (-1.0, -0.5, 0.0, 0.3, 1.0))
    if isinstance(reward, str) and rng.random() < 0.5:
        kwargs = {
            "differential_sharpe": {"eta": 0.1},
            "sortino": {"downside_coef": 2.0},
            "drawdown": {"drawdown_coef": 3.0},
            "turnover": {"turnover_coef": 0.01},
        }
        cfg["reward_kwargs"] = kwargs.get(reward, {})
    return cfg


def random_action(space, rng: np.random.Generator):
    """Actions that hit every branch: exact zeros, out-of-range values, tiny changes."""
    if space.shape == ():
        return rng.integers(0, space.n) if rng.random() < 0.7 else int(rng.integers(0, space.n))
    roll = rng.random()
    if roll < 0.15:
        return np.zeros(space.shape, np.float32)
    if roll < 0.3:
        return rng.choice([-1.0, 0.0, 1.0], size=space.shape).astype(np.float32)
    dtype = np.float32 if rng.random() < 0.7 else np.float64
    return rng.uniform(-1.6, 1.6, space.shape).astype(dtype)


def assert_same_state(scalar_core: ScalarCore, scalar, core) -> None:
    got = scalar_core.to_core_state(scalar)
    for name in core._fields[:-1]:
        np.testing.assert_array_equal(getattr(got, name), getattr(core, name), err_msg=name)
    assert got.reward_state.keys() == core.reward_state.keys()
    for key, arr in core.reward_state.items():
        np.testing.assert_array_equal(got.reward_state[key], arr, err_msg=key)


def run_pinned(kwargs: dict, seed: int, steps: int) -> int:
    """Step the scalar and the batched core side by side; return the episodes finished."""
    setup = build_market_setup(**kwargs)
    fast = ScalarCore(setup.arrays, setup.params, setup.reward)
    actions = ScalarActions(
        setup.action_mode,
        setup.positions,
        setup.params.execution,
        setup.action_space.shape,
        setup.arrays.n_assets,
    )
    rng = np.random.default_rng(seed)
    episodes = 0
    scalar = core = None
    for _ in range(steps):
        if scalar is None:
            start, end = setup.draw_start(rng)
            core = initial_state(
                setup.arrays, setup.params, setup.reward, np.array([start]), np.array([end])
            )
            scalar = fast.initial_state(start, end)
            assert_same_state(fast, scalar, core)
            block, exposure = fast.portfolio(scalar)
            np.testing.assert_array_equal(block, portfolio_block(core, setup.arrays, 8)[0])
        action = random_action(setup.action_space, rng)
        target = setup.map_actions(action, 1)
        mapped = actions.map(action)
        if mapped is not None:
            np.testing.assert_array_equal(mapped, target[0])
        core, out = step_core(setup.arrays, setup.params, setup.reward, core, target)
        reward, term, trunc, cost, block, exposure = fast.step(scalar, target[0].tolist())
        assert reward == out.reward[0] or (np.isnan(reward) and np.isnan(out.reward[0]))
        assert (term, trunc) == (out.terminated[0], out.truncated[0])
        assert cost == out.step_cost[0]
        assert_same_state(fast, scalar, core)
        np.testing.assert_array_equal(block, portfolio_block(core, setup.arrays, 8)[0])
        value = core.value[0] if abs(core.value[0]) > 1e-12 else 1e-12
        close = setup.arrays.close[core.t[0]]
        np.testing.assert_array_equal(exposure, core.units[0] * close / value)
        if term or trunc:
            episodes += 1
            scalar = None
    return episodes


@pytest.mark.parametrize("n_assets", [1, 2, 3, MAX_FAST_ASSETS])
def test_scalar_step_equals_step_core_on_random_configs(n_assets: int) -> None:
    rng = np.random.default_rng(100 + n_assets)
    dataset = volatile_dataset(n_assets=n_assets, seed=n_assets)
    episodes = 0
    for i in range(14 if n_assets == 1 else 6):
        kwargs = dict(dataset=dataset, features=FEATURES, window=8, episode_length=40)
        kwargs.update(random_config(rng, n_assets))
        episodes += run_pinned(kwargs, seed=i, steps=90)
    assert episodes >= 10  # the sweep crossed many episode ends (truncation, stops, ruin)


def test_every_setting_is_covered_once() -> None:
    """One pinned run per reward x latency x action mode, with every cost and limit on."""
    dataset = volatile_dataset(n_assets=1, seed=7)
    modes = ["discrete", "continuous", "weights"]
    for k, (reward, latency, mode) in enumerate(itertools.product(REWARDS, (1, 2), modes)):
        kwargs = dict(
            dataset=dataset,
            features=FEATURES,
            window=8,
            episode_length=25,
            action_mode=mode,
            reward=reward,
            latency=latency,
            max_leverage=2.0,
            borrow_rate=1.0,
            margin_rate=1.0,
            lot_size=0.3,
            min_notional=150.0,
            max_drawdown=0.3,
        )
        if mode == "discrete":
            kwargs["positions"] = (-2.0, 0.0, 1.0, 2.0)
        run_pinned(kwargs, seed=k, steps=30)


def test_large_books_step_through_step_core() -> None:
    """Above MAX_FAST_ASSETS the sums would differ in order: the core runs step_core itself."""
    n = MAX_FAST_ASSETS + 2
    kwargs = dict(
        dataset=volatile_dataset(n_assets=n, seed=3),
        features=FEATURES,
        window=8,
        episode_length=20,
        action_mode="weights",
        reward="differential_sharpe",
        latency=2,
    )
    assert not ScalarCore(*_parts(kwargs)).fast
    assert run_pinned(kwargs, seed=0, steps=45) >= 2


def _parts(kwargs: dict):
    setup = build_market_setup(**kwargs)
    return setup.arrays, setup.params, setup.reward


def test_ruin_and_drawdown_paths_are_pinned() -> None:
    """Leveraged shorts into a squeeze: ruin (log floor) and the drawdown stop, both paths."""
    ds = volatile_dataset(seed=11)
    ohlcv = ds.ohlcv.copy()
    ohlcv[60:, :, :4] *= 4.0
    squeeze = MarketDataset(ds.timestamps, ds.symbols, ohlcv, source="<squeeze>")
    for reward, drawdown in (
        ("log_return", None),
        ("drawdown", 0.5),
        ("differential_sharpe", None),
    ):
        kwargs = dict(
            dataset=squeeze,
            features=FEATURES,
            window=8,
            episode_length=None,
            random_start=False,
            action_mode="discrete",
            positions=(-3.0, 0.0, 3.0),
            max_leverage=3.0,
            reward=reward,
            max_drawdown=drawdown,
        )
        setup = build_market_setup(**kwargs)
        fast = ScalarCore(setup.arrays, setup.params, setup.reward)
        start, end = setup.draw_start(np.random.default_rng(0))
        core = initial_state(
            setup.arrays, setup.params, setup.reward, np.array([start]), np.array([end])
        )
        scalar = fast.initial_state(start, end)
        while True:
            target = np.array([[-3.0]])
            core, out = step_core(setup.arrays, setup.params, setup.reward, core, target)
            reward_f, term, trunc, *_ = fast.step(scalar, [-3.0])
            assert reward_f == out.reward[0] and term == out.terminated[0]
            assert_same_state(fast, scalar, core)
            if term or trunc:
                break
        assert term


ENV_CASES = [
    dict(action_mode="discrete", reward="differential_sharpe", latency=2),
    dict(action_mode="discrete", flatten=True, predictor_blocks="yes", max_drawdown=0.1),
    dict(action_mode="continuous", max_leverage=2.0, lot_size=0.5, reward="sortino"),
    dict(action_mode="weights", n_assets=3, flatten=True, reward="drawdown"),
    dict(action_mode="weights", n_assets=2, predictor_blocks="yes", reward=quadratic_cost),
    # The numba backend (auto where supported): the kernel's flat observation, then Dict.
    dict(action_mode="discrete", flatten=True, lot_size=0.3, backend="numba"),
    dict(action_mode="continuous", max_leverage=2.0, max_drawdown=0.2, backend="numba"),
    dict(action_mode="discrete", flatten=True, backend="python"),
]


def _case_id(case: dict) -> str:
    # Names, not reprs: a function's repr holds its address, which differs between pytest-xdist
    # workers and makes them collect different test ids.
    return "-".join(getattr(v, "__name__", str(v)) for v in case.values())


@pytest.mark.parametrize("case", ENV_CASES, ids=_case_id)
def test_env_step_equals_reference_built_from_step_core(case: dict) -> None:
    """Observation (bits and freshness), reward, flags and info of env.step vs the reference."""
    case = dict(case)
    n_assets = case.pop("n_assets", 1)
    ds = volatile_dataset(n_assets=n_assets, seed=5)
    if case.pop("predictor_blocks", None):
        forecast = np.random.default_rng(1).normal(size=(len(ds), 2, 3)).astype(np.float32)
        case["predictor_blocks"] = {"forecast": forecast}
    kwargs = dict(dataset=ds, features=FEATURES, window=8, episode_length=30, **case)
    if case.get("backend") == "numba":
        pytest.importorskip("numba")
    env = MarketTradingEnv(**kwargs)
    setup = env.setup
    rng = np.random.default_rng(3)
    obs, info = env.reset(seed=0)
    prev_obs = obs
    equity: list[float] = []
    for _ in range(100):
        before = env.state
        equity = equity or [float(before.value[0])]
        action = random_action(env.action_space, rng)
        target = setup.map_actions(action, 1)
        core, out = step_core(setup.arrays, setup.params, setup.reward, before, target)
        obs, reward, term, trunc, info = env.step(action)
        t = int(core.t[0])
        values = {"market": setup.arrays.features[t - 7 : t + 1]}
        for name, arr in setup.arrays.blocks.items():
            values[name] = arr[t]
        values["portfolio"] = portfolio_block(core, setup.arrays, 8)[0]
        want = setup.builder.build(values)
        np.testing.assert_equal(obs, want)
        for block in obs.values() if isinstance(obs, dict) else [obs]:
            assert is_fresh_block(block) and block.dtype == np.float32  # not a source view
        for a, b in zip(
            obs.values() if isinstance(obs, dict) else [obs],
            prev_obs.values() if isinstance(prev_obs, dict) else [prev_obs],
            strict=True,
        ):
            assert not np.shares_memory(a, b)
        prev_obs = obs
        assert type(reward) is float and reward == out.reward[0]
        assert type(term) is bool and type(trunc) is bool
        assert (term, trunc) == (out.terminated[0], out.truncated[0])
        value = float(core.value[0])
        assert info["portfolio_value"] == value and info["cash"] == core.cash[0]
        for key in ("fees", "spread", "impact", "funding", "traded_notional"):
            if key in info:
                assert info[key] == getattr(core, key)[0]
        assert info["trades"] == core.trades[0] and info["step_cost"] == out.step_cost[0]
        denom = value if abs(value) > 1e-12 else 1e-12
        close = setup.arrays.close[t]
        np.testing.assert_array_equal(info["position"], core.units[0] * close / denom)
        assert info["position"].dtype == np.float64
        equity.append(value)
        if term or trunc:
            from envs.metrics import episode_metrics

            want_ep = episode_metrics(
                np.asarray(equity),
                setup.arrays.bars_per_year,
                turnover=float(core.traded_notional[0]) / setup.params.initial_cash,
            )
            assert info["episode"] == want_ep
            obs, info = env.reset()
            prev_obs = obs
            equity = []
        else:
            assert "episode" not in info


def test_unusual_actions_take_the_validating_path() -> None:
    env = MarketTradingEnv(
        dataset=volatile_dataset(), features=FEATURES, window=8, episode_length=30
    )
    env.reset(seed=0)
    assert env._actions.map(np.int64(2)) == [1.0]
    # A bool is an int to both paths: True is index 1, as np.asarray(True) gives.
    assert env._actions.map(True) == env.setup.map_actions(True, 1)[0].tolist() == [0.0]
    for action in (2.0, np.array(2), np.array([2]), [2]):
        assert env._actions.map(action) is None
        env.step(action)  # accepted by the NumPy mapping, as before
    for bad in (3, -1, np.int8(-1), 1.5):
        assert env._actions.map(bad) is None
        with pytest.raises(ActionError):
            env.step(bad)
    cont = ScalarActions("continuous", None, env.setup.params.execution, (2,), 2)
    assert cont.map(np.array([np.nan, 0.0])) is None  # the NumPy path raises the ActionError
    assert cont.map(np.array([1, 0])) is None  # integer arrays: NumPy path
    assert cont.map(np.zeros((1, 2))) is None  # batch-shaped: NumPy path


def test_bar_assembler_equals_build_fresh_arrays_and_checks_once() -> None:
    import pickle

    from envs.errors import DataError

    ds = volatile_dataset(n_assets=2)
    forecast = np.arange(len(ds) * 6, dtype=np.float32).reshape(len(ds), 2, 3)
    score = np.linspace(-1, 1, len(ds)).astype(np.float32)[:, None]
    for flatten in (False, True):
        env = MarketTradingEnv(
            dataset=ds,
            features=FEATURES,
            window=8,
            action_mode="weights",
            predictor_blocks={"forecast": forecast, "score": score},
            flatten=flatten,
        )
        builder = env.observation_builder
        feats = env.setup.arrays.features
        rows = {"forecast": forecast, "score": score}
        assemble = builder.bar_assembler("market", feats, rows, "portfolio")
        clone = pickle.loads(pickle.dumps(assemble))
        given = [0.5, -0.25, 0.75, 0.1, 0.2, 0.3, 1.0 / 3.0]
        for t in (7, 50, len(ds) - 1):
            want = builder.build(
                {
                    "market": feats[t - 7 : t + 1],
                    "forecast": forecast[t],
                    "score": score[t],
                    "portfolio": np.asarray(given),
                }
            )
            got = assemble(t, given)
            np.testing.assert_equal(got, want)
            np.testing.assert_equal(clone(t, given), want)
            if not flatten:
                assert list(got) == list(want)  # the Dict keys keep the block order
            for block in got.values() if isinstance(got, dict) else [got]:
                assert block.dtype == np.float32 and is_fresh_block(block)
                block[...] = -7777.5
        assert not np.any(feats == -7777.5) and not np.any(forecast == -7777.5)
        with pytest.raises(DataError, match="do not match"):
            builder.bar_assembler("market", feats, {"forecast": forecast}, "portfolio")
        with pytest.raises(DataError, match="forecast"):
            builder.bar_assembler("market", feats, {**rows, "forecast": score}, "portfolio")
        with pytest.raises(DataError, match="market"):
            builder.bar_assembler("market", feats[:, :3], rows, "portfolio")


@pytest.mark.parametrize("n_assets", [1, 3])
def test_random_states_including_near_ruin_and_the_last_bar(n_assets: int) -> None:
    """One step from random books: values near 0 (portfolio clip), negative cash, the last bar."""
    rng = np.random.default_rng(40 + n_assets)
    dataset = volatile_dataset(n_assets=n_assets, seed=9)
    for _ in range(6):
        kwargs = dict(dataset=dataset, features=FEATURES, window=8, episode_length=40)
        kwargs.update(random_config(rng, n_assets))
        setup = build_market_setup(**kwargs)
        fast = ScalarCore(setup.arrays, setup.params, setup.reward)
        last = setup.arrays.n_bars - 1
        lat = setup.params.execution.latency
        for _ in range(25):
            t = int(rng.choice([last, last - 1, rng.integers(setup.arrays.first_decision, last)]))
            base = initial_state(
                setup.arrays, setup.params, setup.reward, np.array([t]), np.array([last])
            )
            close = setup.arrays.close[t]
            units = rng.normal(0.0, 60.0, (1, n_assets)) * (rng.random((1, n_assets)) < 0.8)
            held = float((units * close).sum())
            value = float(rng.choice([1e-3, 0.5, 50.0, 1e4, -20.0]))
            pending = rng.uniform(-1.5, 1.5, (1, lat - 1, n_assets))
            pending[rng.random(pending.shape) < 0.3] = np.nan
            core = base._replace(
                cash=np.array([value - held]),
                units=units,
                entry_price=close * rng.uniform(0.8, 1.2, (1, n_assets)) * (units != 0),
                value=np.array([abs(value)]),
                peak=np.array([abs(value) * rng.uniform(1.0, 1.5)]),
                time_in_trade=np.array([int(rng.integers(0, 50))]),
                last_target=rng.uniform(-1, 1, (1, n_assets)),
                pending=pending,
            )
            scalar = fast.from_core_state(core)
            block, _ = fast.portfolio(scalar)
            np.testing.assert_array_equal(block, portfolio_block(core, setup.arrays, 8)[0])
            target = setup.map_actions(random_action(setup.action_space, rng), 1)
            new, out = step_core(setup.arrays, setup.params, setup.reward, core, target)
            reward, term, trunc, cost, block, _ = fast.step(scalar, target[0].tolist())
            assert reward == out.reward[0] or (np.isnan(reward) and np.isnan(out.reward[0]))
            assert (term, trunc, cost) == (out.terminated[0], out.truncated[0], out.step_cost[0])
            assert_same_state(fast, scalar, new)
            np.testing.assert_array_equal(block, portfolio_block(new, setup.arrays, 8)[0])


def test_scalar_state_copy_and_pickle() -> None:
    import pickle

    setup = build_market_setup(
        dataset=volatile_dataset(), features=FEATURES, window=8, reward="differential_sharpe"
    )
    fast = ScalarCore(setup.arrays, setup.params, setup.reward)
    state = fast.initial_state(20, 60)
    fast.step(state, [1.0])
    twin = state.copy()
    clone_core, clone_state = pickle.loads(pickle.dumps((fast, state)))
    fast.step(state, [-0.5])
    assert twin.units != state.units and twin.t == 21  # the copy did not move
    for other_core, other in ((fast, twin), (clone_core, clone_state)):
        other_core.step(other, [-0.5])  # the same step again: the same state
        assert_same_state(other_core, other, fast.to_core_state(state))


@pytest.mark.slow
@pytest.mark.parametrize("n_assets", [1, 2, 5])
def test_scalar_step_long_sweep(n_assets: int) -> None:
    """The same pin over many more configurations and seeds (``pytest -m slow``)."""
    rng = np.random.default_rng(1000 + n_assets)
    for i in range(60):
        dataset = volatile_dataset(n_assets=n_assets, seed=int(rng.integers(1 << 30)))
        kwargs = dict(dataset=dataset, features=FEATURES, window=8, episode_length=30)
        kwargs.update(random_config(rng, n_assets))
        run_pinned(kwargs, seed=i, steps=150)
