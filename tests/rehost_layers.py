"""Custom Keras classes in an importable module, for the re-host tests.

A child process that rebuilds a model imports this module by name (the test
folder is on ``sys.path``), which registers the classes.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kexport_tests")
class NoisyScale(keras.layers.Layer):
    """Per-feature scale with its own weight and RNG (noise only when training)."""

    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
        self.seed = keras.random.SeedGenerator(7)

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x, training=False):
        y = x * self.scale * self.factor
        if training:
            y = y + 0.5 * keras.random.normal(ops.shape(y), seed=self.seed)
        return y

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="kexport_tests")
class BackendSkew(keras.layers.Layer):
    """Computes something different on the PyTorch backend (a cross-backend bug)."""

    def call(self, x):
        return x + (0.5 if keras.backend.backend() == "torch" else 0.0)


@keras.saving.register_keras_serializable(package="kexport_tests")
class ForgetsConfig(keras.layers.Layer):
    """Its get_config() drops a required argument, so it cannot be rebuilt."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def call(self, x):
        return x * float(self.units)

    def get_config(self):
        return keras.layers.Layer.get_config(self) | {"name": self.name}


@keras.saving.register_keras_serializable(package="kexport_tests")
class Centered(keras.layers.Layer):
    """Subtracts a per-feature center that ``calibrate(data)`` computes after
    construction and keeps as a plain tensor attribute, not a variable: its
    config (and so a rebuild from it) does not have it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.center = None

    def calibrate(self, data):
        self.center = ops.mean(ops.convert_to_tensor(data), axis=0)

    def call(self, x):
        return x if self.center is None else x - self.center


def stateful_classifier():
    """A Functional model with a custom layer (weight + RNG), Dense, BatchNorm and
    Dropout, its BatchNorm statistics and seed states moved away from their
    defaults by a few training-mode calls."""
    import numpy as np

    L = keras.layers
    i = keras.Input((6,), name="feat")
    h = NoisyScale(name="noisy")(i)
    h = L.Dense(8, activation="relu", name="hidden")(h)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Dropout(0.5, seed=3)(h)
    model = keras.Model(i, L.Dense(3, name="probs")(h))
    x = np.random.default_rng(1).standard_normal((16, 6)).astype("float32")
    for _ in range(3):
        model(x, training=True)
    return model

