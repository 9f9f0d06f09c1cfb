"""Walk-forward provider: no look-ahead, alignment, the exact online protocol, names and errors."""

from __future__ import annotations

import numpy as np
import pytest

from envs.errors import ConfigError, DataError
from envs.observation import ObservationBuilder
from predictors import OnlineLSTM, WalkForwardProvider, block_spec, stack_blocks
from predictors.toy_series import ar1

TINY = {"window": 6, "hidden_size": 8, "max_epochs": 2, "batch_size": 64, "seed": 3}


def series(n: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = ar1(n, phi=0.7, seed=seed)
    return np.stack([x, np.abs(x)], axis=1), x[:, None]


def test_no_look_ahead_perturbing_after_t_leaves_rows_up_to_t_unchanged():
    feats, targs = series()
    fit_range = (0, 600)  # refit folds start at 200 and 400; the final model predicts 600 on
    provider = WalkForwardProvider(
        OnlineLSTM(horizons=(1, 3), **TINY), refit_folds=2, update_every=16
    )
    base = provider.blocks(feats, targs, fit_range)
    rng = np.random.default_rng(1)
    for t in (200, 333, 400, 599, 731):  # fold edges, inside a fold, end of training, online
        f2, y2 = feats.copy(), targs.copy()
        f2[t + 1 :] += rng.normal(0, 3.0, f2[t + 1 :].shape)
        y2[t + 1 :] += rng.normal(0, 3.0, y2[t + 1 :].shape)
        pert = WalkForwardProvider(
            OnlineLSTM(horizons=(1, 3), **TINY), refit_folds=2, update_every=16
        ).blocks(f2, y2, fit_range)
        for name, col in base.items():
            np.testing.assert_array_equal(
                pert[name][: t + 1], col[: t + 1], err_msg=f"{name} t={t}"
            )
        # Sanity: the perturbation does reach the predicted rows after t.
        if t >= 200:
            assert not np.array_equal(
                pert["pred_lstm_mean_h1"][t + 1 :], base["pred_lstm_mean_h1"][t + 1 :]
            )


def test_names_dtype_alignment_and_warmup():
    feats, targs = series()
    provider = WalkForwardProvider(OnlineLSTM(horizons=(1, 2), **TINY), name="ar", refit_folds=2)
    blocks = provider.blocks(feats, targs, fit_range=(0, 600))
    assert list(blocks) == [
        "pred_ar_mean_h1",
        "pred_ar_mean_h2",
        "pred_ar_std_h1",
        "pred_ar_std_h2",
        "pred_ar_valid",
    ]
    assert list(blocks) == provider.column_names()
    for col in blocks.values():
        assert col.dtype == np.float32 and col.shape == (900,)
    valid = blocks["pred_ar_valid"]
    assert provider.report["first_valid_row"] == 200
    assert np.all(valid[:200] == 0) and np.all(valid[200:] == 1)
    assert np.all(blocks["pred_ar_mean_h1"][:200] == 0) and np.all(
        blocks["pred_ar_std_h1"][200:] > 0
    )
    assert [s["rows"] for s in provider.report["segments"]] == [[200, 400], [400, 600], [600, 900]]
    assert [s["fitted_on"] for s in provider.report["segments"]] == [[0, 200], [0, 400], [0, 600]]


def test_caller_predictor_stays_as_fitted_on_the_training_range():
    feats, targs = series()
    model = OnlineLSTM(**TINY)
    WalkForwardProvider(model, refit_folds=1, update_every=8).blocks(feats, targs, (0, 600))
    reference = OnlineLSTM(**TINY)
    reference.fit((feats[:600], targs[:600]))
    rows = np.arange(600, 900)
    np.testing.assert_array_equal(
        model.predict_block(feats, rows), reference.predict_block(feats, rows)
    )
    assert model.stats().updates == 0


def test_update_every_one_is_the_exact_bar_by_bar_protocol():
    feats, targs = series(400)
    model = OnlineLSTM(horizons=(2,), **TINY)
    model.fit((feats[:250], targs[:250]))
    blocks = WalkForwardProvider(model, update_every=1).blocks(feats[250:], targs[250:])
    # By hand: at each bar t predict first, then learn from the sample whose target arrived at t.
    import copy

    manual = copy.deepcopy(model)
    f, y = feats[250:], targs[250:]
    means = np.zeros(len(f), dtype=np.float32)
    for t in range(manual.window - 1, len(f)):
        means[t] = manual.predict_block(f, np.array([t]))[0, 0]
        s = t - manual.target_delay
        if s >= manual.window - 1:
            manual.update(manual.samples(f, y, np.array([s])))
    np.testing.assert_array_equal(blocks["pred_lstm_mean_h2"], means)
    assert manual.stats().updates == len(f) - manual.window + 1 - manual.target_delay


def test_offline_mode_is_plain_batched_inference():
    feats, targs = series(500)
    model = OnlineLSTM(**TINY)
    model.fit((feats[:300], targs[:300]))
    blocks = WalkForwardProvider(model, online=False).blocks(feats)
    rows = np.arange(5, 500)
    expect = model.predict_block(feats, rows)
    np.testing.assert_array_equal(blocks["pred_lstm_mean_h1"][5:], expect[:, 0])
    np.testing.assert_array_equal(blocks["pred_lstm_std_h1"][5:], expect[:, 1])
    assert np.all(blocks["pred_lstm_valid"][:5] == 0)


def test_blocks_feed_the_observation_builder():
    feats, targs = series(500)
    model = OnlineLSTM(**TINY)
    model.fit((feats[:300], targs[:300]))
    blocks = WalkForwardProvider(model, online=False).blocks(feats)
    matrix, names = stack_blocks(blocks)
    assert matrix.shape == (500, 3) and names[-1] == "pred_lstm_valid"
    builder = ObservationBuilder([block_spec("pred_lstm", names)])
    obs = builder.build({"pred_lstm": matrix[42]})
    np.testing.assert_array_equal(obs["pred_lstm"], matrix[42])
    with pytest.raises(DataError, match="no columns"):
        stack_blocks(blocks, ["pred_lstm_nope"])


def test_provider_errors():
    feats, targs = series(300)
    with pytest.raises(ConfigError, match="update_every"):
        WalkForwardProvider(OnlineLSTM(**TINY), update_every=0)
    with pytest.raises(DataError, match="not fitted"):
        WalkForwardProvider(OnlineLSTM(**TINY), online=False).blocks(feats)
    with pytest.raises(DataError, match="fit_range"):
        WalkForwardProvider(OnlineLSTM(**TINY)).blocks(feats, targs, (0, 400))
    with pytest.raises(DataError, match="targets are needed"):
        WalkForwardProvider(OnlineLSTM(**TINY)).blocks(feats, None, (0, 200))
    with pytest.raises(DataError, match="refit fold 1 on bars \\[0, 10\\)"):
        WalkForwardProvider(OnlineLSTM(**TINY), refit_folds=29).blocks(feats, targs, (0, 300))
