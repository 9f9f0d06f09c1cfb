"""The shared observation builder: spaces, fresh arrays, flatten layout and names."""

import numpy as np
import pytest

from envs.errors import DataError
from envs.observation import BlockSpec, ObservationBuilder


def _builder(flatten: bool) -> ObservationBuilder:
    return ObservationBuilder(
        [
            BlockSpec("market", (3, 2), feature_names=("ret", "vol")),
            BlockSpec("portfolio", (2,), low=-1.0, high=1.0, feature_names=("pos", "cash")),
        ],
        flatten=flatten,
    )


def _values() -> dict[str, np.ndarray]:
    return {"market": np.arange(6.0).reshape(3, 2), "portfolio": np.array([0.5, -0.5])}


def test_dict_observation_is_fresh_and_in_space() -> None:
    builder = _builder(flatten=False)
    values = _values()
    obs = builder.build(values)
    assert builder.observation_space.contains(obs)
    assert obs["market"].dtype == np.float32
    values["market"][0, 0] = 99.0
    assert obs["market"][0, 0] == 0.0  # no aliasing of the caller's arrays


def test_flat_layout_matches_names_and_round_trips() -> None:
    builder = _builder(flatten=True)
    flat = builder.build(_values())
    assert builder.observation_space.contains(flat)
    names = builder.flat_feature_names()
    assert len(names) == flat.shape[0] == builder.flat_dim
    assert names[0] == "market[t-2,ret]" and names[5] == "market[t-0,vol]"
    assert names[-1] == "portfolio[cash]"
    back = builder.from_flat(flat)
    np.testing.assert_array_equal(back["market"], _values()["market"])
    dict_obs = _builder(flatten=False).build(_values())
    np.testing.assert_array_equal(builder.to_flat(dict_obs), flat)


def test_batch_build_equals_single_builds() -> None:
    builder = _builder(flatten=True)
    batch = {k: np.stack([v, v + 1]) for k, v in _values().items()}
    out = builder.build_batch(batch)
    assert out.shape == (2, builder.flat_dim)
    np.testing.assert_array_equal(out[1], builder.build({k: v + 1 for k, v in _values().items()}))


def test_bad_blocks_are_named() -> None:
    builder = _builder(flatten=False)
    with pytest.raises(DataError, match="market"):
        builder.build({"market": np.zeros((2, 2)), "portfolio": np.zeros(2)})
    with pytest.raises(DataError, match="missing"):
        builder.build({"market": np.zeros((3, 2))})
    with pytest.raises(DataError, match="duplicate"):
        ObservationBuilder([BlockSpec("a", (1,)), BlockSpec("a", (1,))])


def test_dict_space_keeps_block_order_so_flatten_layouts_agree() -> None:
    from gymnasium.spaces import flatten

    builder = ObservationBuilder([BlockSpec("zeta", (2,)), BlockSpec("alpha", (1,))], flatten=False)
    assert list(builder.observation_space.spaces) == ["zeta", "alpha"]
    obs = builder.build({"zeta": np.array([1.0, 2.0]), "alpha": np.array([3.0])})
    np.testing.assert_array_equal(flatten(builder.observation_space, obs), builder.to_flat(obs))


def test_clip_keeps_observations_inside_finite_bounds() -> None:
    builder = ObservationBuilder([BlockSpec("x", (3,), -1.0, 1.0)], flatten=True, clip=True)
    np.testing.assert_array_equal(builder.build({"x": np.array([-5.0, 0.5, 5.0])}), [-1, 0.5, 1])
    batch = builder.build_batch({"x": np.array([[2.0, -2.0, 0.0]])})
    np.testing.assert_array_equal(batch, [[1, -1, 0]])
