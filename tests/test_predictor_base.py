"""Predictor interface: registry, config errors, alignment, bad input, save/load, metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.errors import ConfigError, DataError
from predictors import (
    GasPricePredictor,
    OnlineGRU,
    OnlineLSTM,
    SampleBatch,
    build_predictor,
    load_predictor,
    predictor_kinds,
    read_metadata,
)
from predictors.metadata import METADATA_FILE, WEIGHTS_FILE
from predictors.toy_series import ar1, gas_like

TINY = {"window": 6, "hidden_size": 8, "max_epochs": 2, "batch_size": 64}
REPO = Path(__file__).resolve().parents[1]


def ar_data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = ar1(n, seed=seed)
    return np.stack([x, np.abs(x)], axis=1), x[:, None]


def test_registry_lists_kinds_and_builds():
    assert {"lstm", "gru", "gas", "liquidity"} <= set(predictor_kinds())
    assert isinstance(build_predictor("lstm", window=4), OnlineLSTM)
    gru = build_predictor("gru", window=4)
    assert isinstance(gru, OnlineGRU) and gru.config.cell == "gru"
    assert isinstance(build_predictor("gas"), GasPricePredictor)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown predictor kind 'nope'"):
        build_predictor("nope")
    with pytest.raises(ConfigError, match="unknown config fields \\['hiden_size'\\]"):
        build_predictor("lstm", hiden_size=3)
    with pytest.raises(ConfigError, match="'horizons'"):
        build_predictor("lstm", horizons=[0])
    with pytest.raises(ConfigError, match="'window'"):
        build_predictor("lstm", window=0)
    with pytest.raises(ConfigError, match="'cell'"):
        build_predictor("gru", cell="lstm")
    with pytest.raises(ConfigError, match="component_weights"):
        build_predictor("liquidity", component_weights=[-1.0, 1.0, 1.0])


def test_anchor_features_are_checked():
    feats, targs = ar_data()
    with pytest.raises(ConfigError, match="2 anchor_features for 1 targets"):
        OnlineLSTM(anchor_features=("x", "abs_x"), **TINY).fit(
            (feats, targs), feature_names=["x", "abs_x"]
        )
    with pytest.raises(DataError, match="anchor feature 'level' not among"):
        OnlineLSTM(anchor_features=("level",), **TINY).fit(
            (feats, targs), feature_names=["x", "abs_x"]
        )
    model = OnlineLSTM(anchor_features=("x",), **TINY)
    model.fit((feats, targs), feature_names=["x", "abs_x"])
    # The net forecasts y[t+1] - x[t]; the returned mean adds x[t] back.
    rows = np.arange(10, 20)
    raw_mean = model.target_scaler.inverse_mean(
        model._forward_batched(
            np.stack([model.feature_scaler.transform(feats[t - 5 : t + 1]) for t in rows])
        )[0]
    )
    np.testing.assert_allclose(
        model.predict_block(feats, rows)[:, 0], raw_mean[:, 0] + feats[rows, 0], rtol=1e-5
    )


def test_json_lists_become_tuples():
    model = build_predictor("lstm", horizons=[1, 5])
    assert model.config.horizons == (1, 5)
    assert model.config_dict()["horizons"] == [1, 5]


def test_sample_alignment_window_ends_at_t_target_is_t_plus_h():
    feats = np.arange(40, dtype=float).reshape(20, 2)
    targs = 100 + np.arange(20, dtype=float)[:, None]
    model = OnlineLSTM(window=4, horizons=(1, 3))
    rows = np.array([3, 10, 16])
    batch = model.samples(feats, targs, rows)
    for i, t in enumerate(rows):
        np.testing.assert_array_equal(batch.windows[i], feats[t - 3 : t + 1])
        np.testing.assert_array_equal(batch.targets[i], [targs[t + 1, 0], targs[t + 3, 0]])
    assert model.target_delay == 3
    with pytest.raises(DataError, match="rows must lie in"):
        model.samples(feats, targs, np.array([17]))  # 17 + 3 is past the end
    with pytest.raises(DataError, match="rows must lie in"):
        model.samples(feats, targs, np.array([2]))  # no full window


def test_bad_input_is_a_clear_data_error():
    feats, targs = ar_data()
    feats[123, 1] = np.nan
    with pytest.raises(DataError, match="row 123, column 'f1'"):
        OnlineLSTM(**TINY).fit((feats, targs))
    feats, targs = ar_data()
    with pytest.raises(DataError, match="features have 600 rows but targets have 599"):
        OnlineLSTM(**TINY).fit((feats, targs[:-1]))
    with pytest.raises(DataError, match="give more bars"):
        OnlineLSTM(**TINY).fit((feats[:12], targs[:12]))
    with pytest.raises(DataError, match="before fit"):
        OnlineLSTM(**TINY).predict(feats[:6])
    model = OnlineLSTM(**TINY)
    model.fit((feats, targs))
    with pytest.raises(DataError, match="expected a window of shape \\(6, 2\\)"):
        model.predict(feats[:5])
    with pytest.raises(DataError, match="3 feature columns"):
        model.predict_block(np.ones((30, 3)), np.arange(10, 20))
    with pytest.raises(DataError, match=r"base_fee: .* > 0, got -1\.0 at row 7"):
        fee = np.ones(20)
        fee[7] = -1.0
        GasPricePredictor().prepare(fee)


def test_predict_shapes_and_single_window():
    feats, targs = ar_data()
    model = OnlineLSTM(horizons=(1, 2), **TINY)
    metrics = model.fit((feats, targs), target_names=["x"])
    assert metrics["epochs"] >= 1 and np.isfinite(metrics["val_loss"])
    one = model.predict(feats[-6:])
    assert one.mean.shape == (1, 2) and one.std.shape == (1, 2)
    assert one.mean.dtype == np.float32 and np.all(one.std > 0)
    batch = model.predict(np.stack([feats[i : i + 6] for i in range(10)]))
    block = model.predict_block(feats, np.arange(5, 15))
    np.testing.assert_array_equal(block[:, :2], batch.mean)
    np.testing.assert_array_equal(block[:, 2:], batch.std)
    assert model.block_columns() == ["mean_h1", "mean_h2", "std_h1", "std_h2"]
    assert model.output_names == ["x_h1", "x_h2"]


def test_update_learns_and_monitors():
    feats, targs = ar_data()
    model = OnlineLSTM(**TINY)
    model.fit((feats[:400], targs[:400]))
    before = [p.detach().clone() for p in model.net.parameters()]
    rows = np.arange(400, 432)
    loss = model.update(model.samples(feats, targs, rows))
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters(), strict=True))
    stats = model.stats()
    assert stats.updates == 1 and stats.samples_seen == 32
    assert 0.0 <= stats.coverage_90 <= 1.0 and np.isfinite(stats.loss_mean)
    assert stats.fit_metrics["val_loss"] == model.metrics["val_loss"]
    with pytest.raises(DataError, match="targets have 2 columns, expected 1"):
        model.update(SampleBatch(feats[None, :6], np.ones((1, 2))))


def test_head_scope_online_step_trains_only_the_head():
    feats, targs = ar_data()
    model = OnlineLSTM(online_scope="head", **TINY)
    model.fit((feats[:400], targs[:400]))
    encoder = {k: v.clone() for k, v in model.net.state_dict().items() if not k.startswith("head")}
    head = model.net.head.weight.detach().clone()
    model.update(model.samples(feats, targs, np.arange(400, 432)))
    for k, v in encoder.items():
        assert torch.equal(model.net.state_dict()[k], v), k
    assert not torch.equal(model.net.head.weight, head)
    with pytest.raises(ConfigError, match="online_scope"):
        OnlineLSTM(online_scope="encoder")


@pytest.mark.parametrize("kind", ["lstm", "gru", "gas"])
def test_save_load_reproduces_predictions_exactly(tmp_path, kind):
    if kind == "gas":
        fee, ts = gas_like(700, seed=3)
        model = build_predictor("gas", horizons=[1, 3], **TINY)
        series = model.prepare(fee, ts)
        feats, targs = series.features, series.targets
        model.fit((feats, targs), feature_names=series.feature_names)
    else:
        feats, targs = ar_data()
        model = build_predictor(kind, dropout=0.1, num_layers=2, **TINY)
        model.fit((feats, targs), feature_names=["x", "abs_x"], target_names=["x"])
    model.update(model.samples(feats, targs, np.arange(100, 110)))
    model.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [METADATA_FILE, WEIGHTS_FILE]
    loaded = load_predictor(tmp_path / "p", device="cpu")
    assert type(loaded) is type(model)
    rows = np.arange(model.window - 1, len(feats))
    np.testing.assert_array_equal(
        loaded.predict_block(feats, rows), model.predict_block(feats, rows)
    )
    assert loaded.config == model.config.__class__(**{**model.config.__dict__, "device": "cpu"})
    assert loaded.feature_names == model.feature_names
    meta = read_metadata(tmp_path / "p")
    assert meta["kind"] == kind and meta["version"] == 1
    assert meta["feature_names"] == model.feature_names
    assert meta["scaler"]["features"]["mean"] == pytest.approx(model.feature_scaler.mean.tolist())
    assert meta["metrics"]["val_loss"] == pytest.approx(model.metrics["val_loss"])
    assert meta["timestamp"].endswith("+00:00")


def test_metadata_is_readable_without_torch(tmp_path):
    feats, targs = ar_data()
    model = OnlineLSTM(**TINY)
    model.fit((feats, targs))
    model.save(tmp_path / "p")
    code = (
        "import sys, json\n"
        "from predictors.metadata import read_metadata\n"
        f"meta = read_metadata({str(tmp_path / 'p')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps({'kind': meta['kind'], 'config': meta['config']}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    parsed = json.loads(out.stdout)
    assert parsed["kind"] == "lstm" and parsed["config"]["window"] == 6
    # And it is plain JSON any tool can read.
    raw = json.loads((tmp_path / "p" / METADATA_FILE).read_text())
    assert raw["output_names"] == ["y0_h1"]


def test_save_is_atomic_and_load_rejects_bad_files(tmp_path):
    feats, targs = ar_data()
    model = OnlineLSTM(**TINY)
    model.fit((feats, targs))
    model.save(tmp_path / "p")
    model.save(tmp_path / "p")  # overwrite in place
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(DataError, match="metadata file not found"):
        load_predictor(tmp_path / "missing")
    (tmp_path / "p" / METADATA_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_metadata(tmp_path / "p")
    model.save(tmp_path / "p")
    (tmp_path / "p" / WEIGHTS_FILE).unlink()
    with pytest.raises(DataError, match="weights file not found"):
        load_predictor(tmp_path / "p")
