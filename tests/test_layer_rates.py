"""tlfast.layer_rates: per-block fine-tuning rates."""

import keras
import numpy as np
import pytest

from tlfast import backbones
from tlfast import layer_rates


def test_multipliers_fall_a_block_down():
    model = backbones.create_backbone("mobilenet_025", None, 32)
    spec = backbones.get_backbone_spec("mobilenet_025")
    backbones.unfreeze_top_blocks(model, spec, 3)
    multipliers = layer_rates.block_multipliers(model, spec, 0.5)
    # Only trainable variables: the top 3 blocks' convolutions (BN frozen).
    assert set(multipliers.values()) == {1.0, 0.5, 0.25}
    assert multipliers["conv_pw_13/kernel"] == 1.0
    assert multipliers["conv_pw_12/kernel"] == 0.5
    assert multipliers["conv_dw_11/kernel"] == 0.25
    assert layer_rates.block_multipliers(model, spec, 1.0) == {}
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        layer_rates.block_multipliers(model, spec, 0.0)


def test_a_variable_at_half_rate_moves_half_as_far():
    a, b = keras.Variable(np.zeros(3), name="a"), keras.Variable(np.zeros(3), name="b")
    optimizer = layer_rates.LayerwiseAdam({b.path: 0.5}, learning_rate=0.1)
    grads = [keras.ops.ones(3), keras.ops.ones(3)]
    optimizer.apply(grads, [a, b])
    # Adam's first step moves each weight by the rate (the sign of its
    # gradient): 0.1 and 0.05.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a), -0.1, rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(b), -0.05, rtol=1e-4)
    again = layer_rates.LayerwiseAdam.from_config(optimizer.get_config())
    assert again.multipliers == {b.path: 0.5}
