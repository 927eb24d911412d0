import gc
import os
import tracemalloc

import keras
import numpy as np
import pytest

from tlfast import head as head_lib
from tlfast import head_epochs
from tlfast import host_arrays


def _blobs(n=200, d=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, d))
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(0, 1, (n, d))).astype("float32"), y


def test_head_shapes_and_float32_output_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = head_lib.build_head(16, 3, head_lib.HeadConfig(hidden_units=8))
        out = head(np.zeros((2, 16), "float16"))
        assert out.shape == (2, 3)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert all(l.dtype_policy.name == "float32" for l in head.layers)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_train_head_learns_and_is_seeded():
    (x, y), (vx, vy) = _blobs(seed=0), _blobs(seed=0, n=100)
    results = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        head = head_lib.build_head(16, 3, head_lib.HeadConfig(seed=1))
        config = head_lib.HeadConfig(epochs=15, seed=1, learning_rate=0.02)
        head_lib.train_head(head, (x, y), (vx, vy), config)
        results.append(head.predict(vx, verbose=0))
    accuracy = (results[0].argmax(1) == vy).mean()
    assert accuracy > 0.9
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def test_early_stopping_restores_the_best_epoch():
    x, y = _blobs()
    vx, vy = _blobs(seed=5)  # Different centres: val loss gets worse.
    head = head_lib.build_head(16, 3)
    config = head_lib.HeadConfig(epochs=40, patience=2, learning_rate=0.05)
    history = head_lib.train_head(head, (x, y), (vx, vy), config)
    losses = history.history["val_loss"]
    assert len(losses) < 40
    best = min(losses)
    final = head.evaluate(vx, vy, verbose=0, return_dict=True)["loss"]
    assert final == pytest.approx(best, rel=1e-3)


def test_epoch_logs_are_means_over_the_whole_epoch():
    # No dropout and a vanishing learning rate: every step sees the same
    # weights, so the epoch's loss must equal the loss over all examples; a
    # value from the last step only (or summed over epochs) would not. 200
    # examples in steps of 64 end with a smaller batch of 8.
    x, y = _blobs()
    vx, vy = _blobs(seed=3, n=50)
    config = head_lib.HeadConfig(epochs=3, batch_size=64, dropout=0.0,
                                 learning_rate=1e-12, patience=0)
    head = head_lib.build_head(16, 3, config)
    history = head_lib.train_head(head, (x, y), (vx, vy), config).history
    train = head.evaluate(x, y, verbose=0, return_dict=True)
    val = head.evaluate(vx, vy, verbose=0, return_dict=True)
    for epoch in range(3):
        assert history["loss"][epoch] == pytest.approx(train["loss"], rel=1e-4)
        assert history["accuracy"][epoch] == pytest.approx(train["accuracy"])
        assert history["val_loss"][epoch] == pytest.approx(val["loss"], rel=1e-4)
        assert history["val_accuracy"][epoch] == pytest.approx(val["accuracy"])
    # The model's own reset_metrics is back after training.
    assert "reset_metrics" not in vars(head)


def test_label_smoothing_compiles_and_trains():
    x, y = _blobs()
    head = head_lib.build_head(16, 3)
    config = head_lib.HeadConfig(epochs=3, label_smoothing=0.1)
    history = head_lib.train_head(head, (x, y), None, config)
    assert len(history.history["loss"]) == 3


@pytest.mark.parametrize("kwargs", [{"dropout": 1.0}, {"learning_rate": 0},
                                    {"epochs": 0}, {"batch_size": 0},
                                    {"hidden_units": -1}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError, match="Received: "):
        head_lib.HeadConfig(**kwargs)


@pytest.mark.parametrize("train,validation", [
    ((np.zeros((0, 16), "float32"), np.zeros(0, int)), None),
    ((np.zeros((4, 16), "float32"), np.zeros(3, int)), None),
    ((np.zeros((4, 16), "float32"), np.zeros(4, int)),
     (np.zeros((0, 16), "float32"), np.zeros(0, int))),
])
def test_empty_or_mismatched_examples_are_refused(train, validation):
    head = head_lib.build_head(16, 3)
    with pytest.raises(ValueError, match="Received: "):
        head_lib.train_head(head, train, validation, head_lib.HeadConfig())


def test_predict_head_matches_keras_predict():
    x, _ = _blobs(n=50)
    head = head_lib.build_head(16, 3)
    expected = head.predict(x, verbose=0)
    got = head_lib.predict_head(head, x, batch_size=16)  # 4 chunks.
    assert got.dtype == np.float32 and got.shape == (50, 3)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert head_lib.predict_head(head, x[:0]).shape == (0, 3)


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("hidden_units,label_smoothing,policy", [
    (0, 0.0, "float32"), (8, 0.1, "float32"),
    # Under mixed_float16 compile wraps Adam in a LossScaleOptimizer.
    (0, 0.0, "mixed_float16")], indirect=["policy"])
def test_compiled_epochs_match_the_train_on_batch_loop(
        monkeypatch, hidden_units, label_smoothing, policy):
    # Same steps, same dropout draws, same Keras loss and optimizer: the
    # one-call-per-epoch path must give what train_on_batch gives, step for
    # step (200 examples in batches of 64: a short last batch too).
    (x, y), (vx, vy) = _blobs(), _blobs(seed=3, n=50)
    # Validation in chunks of 16 (a short last one) on the compiled path.
    monkeypatch.setattr(head_epochs, "EVAL_CHUNK", 16)
    config = head_lib.HeadConfig(epochs=4, batch_size=64, patience=0,
                                 hidden_units=hidden_units, dropout=0.3,
                                 label_smoothing=label_smoothing)

    def train():
        keras.utils.set_random_seed(0)
        head = head_lib.build_head(16, 3, config)
        history = head_lib.train_head(head, (x, y), (vx, vy), config).history
        return history, head.get_weights(), type(head.optimizer).__name__

    compiled_history, compiled_weights, optimizer = train()
    monkeypatch.setattr(head_epochs, "compiled_epochs", lambda *a, **k: None)
    loop_history, loop_weights, _ = train()
    if policy == "mixed_float16":
        assert optimizer == "LossScaleOptimizer"
    assert set(compiled_history) == set(loop_history) == {
        "loss", "accuracy", "val_loss", "val_accuracy"}
    for key, values in loop_history.items():
        np.testing.assert_allclose(compiled_history[key], values, rtol=1e-5,
                                   err_msg=key)
    for got, expected in zip(compiled_weights, loop_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_training_again_and_again_does_not_keep_the_features():
    # Captured as graph constants, the features stayed referenced from
    # TensorFlow's gradient registry after every call: memory grew by their
    # size per call. 40,000 x 640 float32 is 100 MiB.
    def rss_mib():
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) / 1024

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc (Linux)")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40_000, 640), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    config = head_lib.HeadConfig(epochs=1, batch_size=4096, patience=0)
    sizes = []
    for _ in range(5):
        head_lib.train_head(head_lib.build_head(640, 10, config), (x, y),
                            (x[:1000], y[:1000]), config)
        gc.collect()
        sizes.append(rss_mib())
    assert sizes[-1] - sizes[1] < 100, sizes


def test_float16_validation_features_are_read_in_place():
    # A float32 copy of 40k validation features and that copy's tensor were
    # 78 MiB of a 200k-image run's peak. NumPy reports its buffers to
    # tracemalloc: the 24 MiB a float32 copy of these would take must not
    # appear (TensorFlow wraps the aligned float16 buffer instead).
    rng = np.random.default_rng(0)
    vx = host_arrays.zeros((100_000, 64), "float16")
    vx[:] = rng.standard_normal(vx.shape)
    vy = rng.integers(0, 3, len(vx))
    x, y = vx[:300].astype("float32"), vy[:300]
    config = head_lib.HeadConfig(epochs=2, batch_size=64, patience=0)
    head = head_lib.build_head(64, 3, config)
    tracemalloc.start()
    try:
        history = head_lib.train_head(head, (x, y), (vx, vy), config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(history.history["val_loss"]) == 2
    assert peak < vx.nbytes, peak / 2**20


def test_label_smoothing_loss_is_saved_with_the_model(tmp_path):
    head = head_lib.build_head(16, 3)
    head_lib.compile_classifier(head, 1e-3, label_smoothing=0.2)
    x, y = _blobs(n=8)
    path = str(tmp_path / "head.keras")
    head.save(path)
    loaded = keras.models.load_model(path)  # compile=True: the loss too.
    probs = np.asarray(head(x))
    smoothed = np.eye(3)[y] * 0.8 + 0.2 / 3
    expected = -(smoothed * np.log(np.clip(probs, 1e-7, 1))).sum(1).mean()
    got = float(loaded.compute_loss(x=x, y=y, y_pred=loaded(x)))
    assert got == pytest.approx(expected, rel=1e-4)


def test_small_sets_get_enough_steps():
    # 244 images (hymenoptera) at the default 256: 10 steps an epoch at 50
    # epochs, and 100 steps in all at 3 epochs.
    assert head_lib.step_batch_size(244, 256, 50) == 25
    assert head_lib.step_batch_size(244, 256, 3) == 8
    assert head_lib.step_batch_size(100_000, 256, 50) == 256
    assert head_lib.step_batch_size(5, 256, 50) == 8


def test_balanced_class_weights_are_inverse_frequency():
    weights = head_lib.balanced_class_weights([0, 0, 0, 1, 2, 2], 4)
    np.testing.assert_allclose(weights, [6 / 9, 2.0, 1.0, 0.0])
    counts = np.bincount([0, 0, 0, 1, 2, 2], minlength=4)
    assert (weights * counts).sum() == pytest.approx(6.0)  # Same total weight.


def test_balanced_weights_raise_the_recall_of_a_rare_class():
    rng = np.random.default_rng(0)
    # Overlapping classes, 20:1: unweighted, the rare class is mostly lost.
    x = np.concatenate([rng.normal(0, 1, (400, 8)), rng.normal(0.8, 1, (20, 8))])
    y = np.array([0] * 400 + [1] * 20)
    vx = np.concatenate([rng.normal(0, 1, (200, 8)), rng.normal(0.8, 1, (200, 8))])
    vy = np.array([0] * 200 + [1] * 200)
    recall = {}
    for name, weights in (("none", None),
                          ("balanced", head_lib.balanced_class_weights(y, 2))):
        keras.utils.set_random_seed(0)
        config = head_lib.HeadConfig(epochs=30, patience=0, dropout=0.0)
        head = head_lib.build_head(8, 2, config)
        head_lib.train_head(head, (x.astype("float32"), y), None, config,
                            class_weights=weights)
        predicted = head_lib.predict_head(head, vx.astype("float32")).argmax(1)
        recall[name] = (predicted[vy == 1] == 1).mean()
    assert recall["balanced"] > recall["none"] + 0.2, recall


def test_class_weights_weigh_the_loss_on_both_paths(monkeypatch):
    (x, y), (vx, vy) = _blobs(), _blobs(seed=3, n=50)
    weights = np.array([0.5, 1.0, 3.0], np.float32)
    config = head_lib.HeadConfig(epochs=3, batch_size=64, patience=0, dropout=0.0)

    def train():
        keras.utils.set_random_seed(0)
        head = head_lib.build_head(16, 3, config)
        history = head_lib.train_head(head, (x, y), (vx, vy), config,
                                      class_weights=weights).history
        return history, head.get_weights()

    compiled, compiled_weights = train()
    monkeypatch.setattr(head_epochs, "compiled_epochs", lambda *a, **k: None)
    loop, loop_weights = train()
    # Training accuracy is unweighted on the compiled path only.
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(compiled[key], loop[key], rtol=1e-5, err_msg=key)
    for got, expected in zip(compiled_weights, loop_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_lr_find_sweeps_and_suggests_a_rate_that_trains():
    (x, y), (vx, vy) = _blobs(seed=0), _blobs(seed=0, n=100)
    config = head_lib.HeadConfig(seed=1, patience=0, epochs=10)
    rates, losses, suggested = head_lib.lr_find(16, 3, (x, y), config)
    assert len(rates) == len(losses) > 20 and rates[0] == pytest.approx(1e-5)
    assert np.all(np.diff(rates) > 0) and 1e-5 <= suggested <= 1.0
    assert losses.min() < losses[0]  # The loss fell somewhere in the sweep.
    keras.utils.set_random_seed(1)
    tuned = head_lib.HeadConfig(seed=1, patience=0, epochs=10,
                                learning_rate=suggested)
    head = head_lib.build_head(16, 3, tuned)
    head_lib.train_head(head, (x, y), None, tuned)
    assert (head_lib.predict_head(head, vx).argmax(1) == vy).mean() > 0.8


@pytest.mark.parametrize("compiled", [True, False])
def test_rows_into_float16_features_train_as_their_float32_copy(
        monkeypatch, compiled):
    # Views served in place: features stored once as float16, examples
    # picked by rows, give what the materialised float32 examples give;
    # float16 validation features as their float32 copy.
    (x, y), (vx, vy) = _blobs(n=60), _blobs(seed=3, n=30)
    stored, stored_vx = x.astype("float16"), vx.astype("float16")
    rows = np.concatenate([np.arange(60)[::-1], np.arange(0, 60, 2)])
    labels = y[rows]
    config = head_lib.HeadConfig(epochs=3, batch_size=16, patience=0)
    if not compiled:
        monkeypatch.setattr(head_epochs, "compiled_epochs", lambda *a, **k: None)

    def train(train_set, validation, **kwargs):
        keras.utils.set_random_seed(0)
        head = head_lib.build_head(16, 3, config)
        history = head_lib.train_head(head, train_set, validation, config,
                                      **kwargs).history
        return history, head.get_weights()

    served, served_weights = train((stored, labels), (stored_vx, vy),
                                   rows=rows)
    copied, copied_weights = train((stored[rows].astype("float32"), labels),
                                   (stored_vx.astype("float32"), vy))
    assert set(served) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key in copied:
        np.testing.assert_allclose(served[key], copied[key], rtol=1e-5)
    for got, expected in zip(served_weights, copied_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rows must index"):
        head_lib.train_head(head_lib.build_head(16, 3), (stored, labels),
                            config=config, rows=rows + 1)
    rates, losses, _ = head_lib.lr_find(16, 3, (stored, labels), config,
                                        steps=5, rows=rows)
    assert len(rates) == len(losses) == 5 and np.isfinite(losses).all()
