"""Fine-tuning across `multi_worker` workers, with a training loop of its own.

Keras 3's `fit` cannot run under `MultiWorkerMirroredStrategy`
(tensorflow/tensorflow#72388), so `--distribution=multi_worker` fine-tunes
through `fit_across_workers`, data-parallel:

    worker k of K, each step                   all workers, each step
    ────────────────────────                   ──────────────────────
    a batch of batch_size / K images  ─┐
    from its shard of the training     │  gradient sums and batch sizes
    set (examples i, i % K == k)       ├─ all-reduced by the strategy's
    gradients on its copy of the model ┘  collectives (`strategy.run`)
                                           -> mean gradient of the global
                                              batch, applied by every
                                              worker's own optimizer

Every copy starts from the chief's weights (broadcast once) and applies the
same mean gradients, so the copies stay equal; a global batch has as many
images as a one-process step, so the learning-rate schedule is the same.
Validation is sharded too: each worker evaluates its part, and the loss and
accuracy sums are all-reduced, so every worker logs the same numbers and
takes the same early-stopping decision (a worker stopping alone would leave
the others waiting in a collective).

The model is built outside the strategy's scope (every worker trains the
head alike first), and only the gradient exchange runs under `strategy.run`:
the variables stay plain per-worker variables, which Keras' optimizers and
callbacks handle as in one process.
"""

import numpy as np
import tensorflow as tf

from tlfast import distribute
from tlfast import epoch_loop
from tlfast import head_epochs


def broadcast_from_chief(strategy, model, is_chief):
    """Sets every worker's `model` weights to the chief's."""
    weights = model.weights
    mine = [tf.convert_to_tensor(w) if is_chief else tf.zeros_like(w)
            for w in weights]

    def replica():
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, mine)

    summed = strategy.run(replica)
    for w, value in zip(weights, summed):
        w.assign(strategy.experimental_local_results(value)[0])


def _local(strategy, values):
    return [strategy.experimental_local_results(v)[0] for v in values]


def _train_step(model, strategy, class_weights, label_matrix):
    """A compiled step: (images, labels) -> (loss sum, correct, count) of
    the global batch, after applying its mean gradient."""
    variables = model.trainable_variables
    optimizer = model.optimizer
    weights = None if class_weights is None else tf.constant(
        class_weights, tf.float32)

    def replica(images, labels):
        sample_weight = None if weights is None else tf.gather(weights, labels)
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            loss = model.compute_loss(x=images, y=labels, y_pred=probs,
                                      sample_weight=sample_weight,
                                      training=True)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        n = tf.cast(tf.shape(labels)[0], tf.float32)
        # Sums weighted by the batch part's size: a worker's last part may
        # be shorter, and the mean is over the global batch.
        sums = [tf.zeros_like(v) if g is None else tf.cast(g, v.dtype) * n
                for g, v in zip(grads, variables)]
        sums += [n, tf.cast(loss, tf.float32) * n,
                 head_epochs.count_correct(labels, probs, label_matrix)]
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, sums)

    @tf.function
    def step(images, labels):
        sums = _local(strategy, strategy.run(replica, args=(images, labels)))
        count = sums[-3]
        optimizer.apply([g / count for g in sums[:-3]], variables)
        return sums[-2], sums[-1], count

    return step


def _evaluation(model, label_matrix):
    @tf.function
    def sums(images, labels):
        probs = model(images, training=False)
        loss = model.compute_loss(x=images, y=labels, y_pred=probs,
                                  training=False)
        n = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.stack([tf.cast(loss, tf.float32) * n,
                         head_epochs.count_correct(labels, probs, label_matrix), n])

    return sums


def fit_across_workers(model, strategy, workers, train_ds, val_ds, *,
                       steps_per_epoch, epochs, callbacks=(),
                       class_weights=None, label_matrix=None):
    """Trains a compiled `model` data-parallel over the strategy's workers.

    Args:
      model: A compiled `keras.Model`, built outside the strategy's scope,
        the same on every worker.
      strategy: The `MultiWorkerMirroredStrategy`.
      workers: Its `distribute.Workers`.
      train_ds: This worker's shard of the training set: batches of
        {"image", "label"} of batch_size / workers images, shuffled each
        pass; repeated here as needed.
      val_ds: This worker's shard of the validation set, batched.
      steps_per_epoch: Global steps an epoch (the same on every worker).
      epochs: Epochs.
      callbacks: Keras callbacks; their train and epoch hooks run, with the
        epoch's logs ("loss", "accuracy", "val_loss", "val_accuracy").
      class_weights: Optional float [C] weighting each example's loss.
      label_matrix: Multi-label, as for `head.train_head`.

    Returns:
      The history dict (metric -> per-epoch list), as `fit`'s.
    """
    broadcast_from_chief(strategy, model, workers.is_chief)
    step = _train_step(model, strategy, class_weights, label_matrix)
    evaluate = _evaluation(model, label_matrix)
    batches = iter(train_ds.repeat())

    def epoch_logs(epoch):
        train = np.zeros(3)
        for _ in range(steps_per_epoch):
            batch = next(batches)
            train += [float(x) for x in step(batch["image"], batch["label"])]
        local = sum((evaluate(b["image"], b["label"]).numpy() for b in val_ds),
                    np.zeros(3))
        val = distribute.all_sum(strategy, local)
        return {"loss": train[0] / train[2], "accuracy": train[1] / train[2],
                "val_loss": val[0] / val[2], "val_accuracy": val[1] / val[2]}

    return epoch_loop.run_epochs(model, callbacks, epochs, steps_per_epoch,
                                 epoch_logs)
