"""Scalers: fit on train only, warm-up skipped, exact JSON round trip, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.errors import ConfigError, DataError
from envs.features import MinMaxScaler, StandardScaler, load_scaler, scaler_from_dict

NAMES = ("a", "b", "flat")


@pytest.fixture()
def values() -> np.ndarray:
    rng = np.random.default_rng(0)
    v = rng.normal([1.0, -3.0, 0.0], [2.0, 0.1, 1.0], (500, 2, 3)).astype(np.float32)
    v[..., 2] = 7.0  # zero-variance column
    v[:10] = 0.0  # warm-up fill
    return v


def test_standard_fits_train_split_only(values: np.ndarray) -> None:
    train = values[:300]
    scaler = StandardScaler().fit(train, warmup=10, feature_names=NAMES)
    rows = train[10:].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(scaler.center_, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(scaler.scale_[:2], rows[:, :2].std(0), rtol=1e-12)
    assert scaler.scale_[2] == 1.0  # constant column keeps scale 1
    assert scaler.n_samples_ == 290 * 2
    # Changing the test split leaves the fitted parameters alone.
    other = values.copy()
    other[300:] += 100.0
    again = StandardScaler().fit(other[:300], warmup=10)
    np.testing.assert_array_equal(again.center_, scaler.center_)
    z = scaler.transform(train[10:])
    assert z.dtype == np.float32 and z.shape == train[10:].shape
    np.testing.assert_allclose(z[..., :2].reshape(-1, 2).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[..., :2].reshape(-1, 2).std(0), 1.0, atol=1e-5)
    assert (z[..., 2] == 0).all()


def test_warmup_rows_change_the_fit_when_not_skipped(values: np.ndarray) -> None:
    with_fill = StandardScaler().fit(values[:300])
    without = StandardScaler().fit(values[:300], warmup=10)
    assert not np.allclose(with_fill.center_, without.center_)


def test_minmax_maps_train_range(values: np.ndarray) -> None:
    scaler = MinMaxScaler((-1.0, 1.0)).fit(values[:300], warmup=10)
    y = scaler.transform(values[10:300])
    np.testing.assert_allclose(y[..., :2].reshape(-1, 2).min(0), -1.0, atol=1e-6)
    np.testing.assert_allclose(y[..., :2].reshape(-1, 2).max(0), 1.0, atol=1e-6)
    assert (y[..., 2] == -1.0).all()  # constant column -> low end of the range
    beyond = scaler.transform(np.full((1, 3), 1e3, np.float32))
    assert beyond[0, 0] > 1.0  # no clipping: out-of-range stays visible


@pytest.mark.parametrize("make", [StandardScaler, lambda: MinMaxScaler((-2.0, 3.0))])
def test_inverse_and_exact_json_round_trip(values: np.ndarray, make, tmp_path: Path) -> None:
    scaler = make().fit(values[:300], warmup=10, feature_names=NAMES)
    x64 = values.astype(np.float64)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(x64)), x64, atol=1e-12)
    path = scaler.save(tmp_path / "run" / "scaler.json")
    text = path.read_text()
    assert "pickle" not in text and json.loads(text)["type"] == scaler.kind
    for loaded in (type(scaler).load(path), load_scaler(path), scaler_from_dict(scaler.to_dict())):
        assert type(loaded) is type(scaler)
        np.testing.assert_array_equal(loaded.center_, scaler.center_)
        np.testing.assert_array_equal(loaded.scale_, scaler.scale_)
        assert loaded.feature_names == NAMES
        assert loaded.transform(values).tobytes() == scaler.transform(values).tobytes()
        assert loaded.to_dict() == scaler.to_dict()


def test_errors_before_fit_and_on_mismatch(values: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not fitted"):
        StandardScaler().transform(values)
    with pytest.raises(ConfigError, match="not fitted"):
        MinMaxScaler().to_dict()
    scaler = StandardScaler().fit(values, feature_names=NAMES)
    with pytest.raises(DataError, match=r"expected 3 features.*a, b, flat.*\(500, 2, 4\)"):
        scaler.transform(np.zeros((500, 2, 4)))
    with pytest.raises(DataError, match="expected 3 features"):
        scaler.inverse_transform(np.zeros(2))
    with pytest.raises(DataError, match="no rows"):
        StandardScaler().fit(values[:5], warmup=5)
    bad = values.copy()
    bad[42, 1, 1] = np.nan
    with pytest.raises(DataError, match="feature b is not finite at row 42"):
        StandardScaler().fit(bad, feature_names=NAMES)
    with pytest.raises(DataError, match="2 feature names"):
        StandardScaler().fit(values, feature_names=("a", "b"))
    with pytest.raises(ConfigError, match="feature_range"):
        MinMaxScaler((1.0, 1.0))


def test_load_rejects_bad_files(values: np.ndarray, tmp_path: Path) -> None:
    good = StandardScaler().fit(values).to_dict()
    with pytest.raises(DataError, match="not found"):
        load_scaler(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json.*not valid JSON"):
        load_scaler(broken)
    cases = {
        "format": ({**good, "format": "other"}, "format"),
        "type": ({**good, "type": "robust"}, "'type'"),
        "scale": ({**good, "scale": [1.0, 0.0, 1.0]}, "positive"),
        "center": ({**good, "center": ["x", 1, 2]}, "'center'"),
        "length": ({**good, "center": [1.0]}, "different lengths"),
    }
    for key, (data, fragment) in cases.items():
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(DataError, match=fragment):
            load_scaler(path)
    with pytest.raises(DataError, match="expected one of \\['minmax'\\]"):
        MinMaxScaler.from_dict(good)
