"""Keras's epoch protocol around a training loop of our own.

`head.train_head` (one compiled call an epoch) and
`worker_fit.fit_across_workers` (all-reduced steps across workers) train
without `fit`, yet Keras callbacks (early stopping, progress, TensorBoard)
must see every epoch as `fit` would show it.
"""

import keras


def run_epochs(model, callbacks, epochs, steps, epoch_logs):
    """Runs `epoch_logs(epoch)` for each epoch inside the callbacks' hooks.

    Args:
      model: The `keras.Model` trained; the callbacks see it, and its
        `stop_training` (set by e.g. `EarlyStopping`) ends the loop.
      callbacks: Keras callbacks; their train and epoch hooks run, no batch
        hooks.
      epochs: Most epochs.
      steps: Steps an epoch (what the callbacks are told).
      epoch_logs: `epoch_logs(epoch)` trains one epoch and returns its logs,
        a dict of metric name -> number.

    Returns:
      The history dict (metric -> per-epoch list of floats), as `fit`'s.
    """
    history = {}
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), model=model, epochs=epochs, verbose=0, steps=steps)
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(epochs):
        callback_list.on_epoch_begin(epoch)
        logs = {k: float(v) for k, v in epoch_logs(epoch).items()}
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end()
    return history
