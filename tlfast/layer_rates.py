"""Discriminative learning rates for fine-tuning: lower blocks learn slower.

fastai's `fine_tune` (after ULMFiT) gives each layer group its own rate, the
lowest groups the smallest: their generic features need the least change,
and large updates there undo what the higher blocks build on. Keras 3's
optimizers take one rate; `LayerwiseAdam` scales it per variable, through
`update_step`, the method Keras optimizers are extended by.

With `--fine_tune_lr_decay=d`, the head and the top backbone block train at
the full rate, the block below at d times it, the next at d**2, and so on.
"""

import keras


@keras.saving.register_keras_serializable(package="tlfast")
class LayerwiseAdam(keras.optimizers.Adam):
    """Adam whose rate is scaled per variable.

    Args:
      multipliers: {variable path: factor}; variables not named use 1.
      **kwargs: For `keras.optimizers.Adam`.
    """

    def __init__(self, multipliers=None, **kwargs):
        super().__init__(**kwargs)
        self.multipliers = dict(multipliers or {})
        self._factors = {}

    def build(self, var_list):
        super().build(var_list)
        # `update_step` gets the backend's variable (a tf.Variable under
        # TensorFlow), which has no Keras path: the factors are keyed the
        # way the optimizer itself finds a variable's slots (`_var_key`,
        # not public API; Adam's own `update_step` relies on it too).
        self._factors = {self._var_key(v): self.multipliers.get(v.path, 1.0)
                         for v in var_list}

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors.get(self._var_key(variable), 1.0)
        if factor != 1.0:
            learning_rate = keras.ops.multiply(
                keras.ops.cast(learning_rate, variable.dtype), factor)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "multipliers": self.multipliers}


def block_multipliers(backbone_model, spec, decay):
    """{variable path: decay ** depth} for the backbone's trainable variables.

    Args:
      backbone_model: From `tlfast.backbones.create_backbone`, with its top
        blocks unfrozen.
      spec: Its `BackboneSpec`.
      decay: Factor per block below the top one, in (0, 1].

    Returns:
      The multipliers for `LayerwiseAdam` ({} for decay 1).
    """
    from tlfast import backbones

    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1]. Received: decay={decay!r}")
    if decay == 1:
        return {}
    depths = backbones.block_depths(backbone_model, spec)
    inner = backbones.get_inner_model(backbone_model)
    multipliers = {}
    for layer in inner.layers:
        for variable in layer.trainable_weights:
            multipliers[variable.path] = float(decay ** depths.get(layer.name, 0))
    return multipliers
