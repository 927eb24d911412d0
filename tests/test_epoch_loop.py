import keras
import numpy as np

from tlfast import epoch_loop


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append(("begin", self.params.get("steps")))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.events.append(("done",))


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


def test_callbacks_see_every_epoch_and_history_has_floats():
    recorder = _Recorder()
    history = epoch_loop.run_epochs(
        _model(), [recorder], 3, 7,
        lambda epoch: {"loss": np.float32(epoch), "val_loss": 10 - epoch})
    assert history == {"loss": [0.0, 1.0, 2.0], "val_loss": [10.0, 9.0, 8.0]}
    assert all(type(v) is float for v in history["loss"])
    assert recorder.events[0] == ("begin", 7)
    assert recorder.events[-1] == ("done",)
    assert [e for e in recorder.events if e[0] == "end"][1] == (
        "end", 1, {"loss": 1.0, "val_loss": 9.0})


def test_early_stopping_ends_the_loop_and_restores_the_best_weights():
    model = _model()
    best = [w.copy() for w in model.get_weights()]
    losses = [3.0, 1.0, 2.0, 4.0, 5.0, 6.0]
    calls = []

    def epoch_logs(epoch):
        calls.append(epoch)
        # Each epoch "trains": the weights move on.
        model.set_weights([w + 1 for w in model.get_weights()])
        if epoch == 1:
            best[:] = [w.copy() for w in model.get_weights()]
        return {"val_loss": losses[epoch]}

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2,
                                         restore_best_weights=True)
    history = epoch_loop.run_epochs(model, [stop], 6, 1, epoch_logs)
    assert calls == [0, 1, 2, 3] and len(history["val_loss"]) == 4
    for got, expected in zip(model.get_weights(), best):
        np.testing.assert_array_equal(got, expected)
