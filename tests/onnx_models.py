"""Small models for the ONNX tests (importable, so re-hosting can load them)."""

from __future__ import annotations

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="kexport_tests")
class TwoTower(keras.Model):
    """A subclassed model: two dense towers, summed."""

    def __init__(self, units=6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.a = keras.layers.Dense(units, activation="tanh")
        self.b = keras.layers.Dense(units)
        self.drop = keras.layers.Dropout(0.5)

    def call(self, x, training=False):
        return self.a(self.drop(x, training=training)) + self.b(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _bn_stats(model):
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(
                rng.uniform(0.5, 2.0, size=layer.moving_variance.shape).astype("float32"))
    return model


def mlp():
    i = keras.Input((8,), name="features")
    x = keras.layers.Dense(16, activation="relu")(i)
    x = keras.layers.Dropout(0.5)(x)
    return keras.Model(i, keras.layers.Dense(3, activation="softmax", name="probs")(x))


def cnn():
    i = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(i)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return _bn_stats(keras.Model(i, keras.layers.Dense(4, name="logits")(x)))


def _rnn(layer):
    i = keras.Input((None, 4), name="sequence")
    x = layer(i)
    return keras.Model(i, keras.layers.Dense(2, name="score")(x))


def lstm():
    return _rnn(keras.layers.LSTM(8))


def gru():
    return _rnn(keras.layers.GRU(8, return_sequences=True))


def bilstm():
    return _rnn(keras.layers.Bidirectional(keras.layers.LSTM(5)))


def transformer():
    i = keras.Input((None, 16), name="tokens")
    x = keras.layers.MultiHeadAttention(2, 8)(i, i)
    x = keras.layers.LayerNormalization()(x + i)
    y = keras.layers.Dense(32, activation="gelu")(x)
    y = keras.layers.Dense(16)(y)
    x = keras.layers.LayerNormalization(name="encoded")(x + y)
    return keras.Model(i, x)


def embedding():
    i = keras.Input((None,), dtype="int32", name="ids")
    x = keras.layers.Embedding(50, 8)(i)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(i, keras.layers.Dense(2, name="head")(x))


def multi_io():
    a = keras.Input((5,), name="left")
    b = keras.Input((3,), name="right")
    x = keras.layers.Concatenate()([a, b])
    h = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model([a, b], [keras.layers.Dense(1, name="price")(h),
                                keras.layers.Dense(4, activation="softmax", name="kind")(h)])


def dict_inputs():
    age = keras.Input((1,), name="age")
    tags = keras.Input((6,), name="tags")
    x = keras.layers.Concatenate()([age, tags * 2.0])
    return keras.Model({"tags": tags, "age": age}, keras.layers.Dense(2, name="out")(x))


def subclassed():
    m = TwoTower(6)
    m(np.zeros((2, 5), "float32"))
    return m


def preprocessing():
    i = keras.Input((4,), name="raw")
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(1).normal(3.0, 2.0, size=(64, 4)).astype("float32"))
    x = keras.layers.Rescaling(0.5, offset=1.0)(norm(i))
    return keras.Model(i, keras.layers.Dense(2, name="y")(x))


ZOO = {
    "mlp": mlp, "cnn": cnn, "lstm": lstm, "gru": gru, "bilstm": bilstm,
    "transformer": transformer, "embedding": embedding, "multi_io": multi_io,
    "dict_inputs": dict_inputs, "subclassed": subclassed, "preprocessing": preprocessing,
}


@keras.saving.register_keras_serializable(package="kexport_tests")
class BatchScaled(keras.layers.Layer):
    """Scales by the batch size read as a Python float in user code (PyTorch only):
    a trace would freeze it, so the traced strategy must refuse it."""

    def call(self, x):
        return x * float(keras.ops.shape(x)[0])


def batch_scaled():
    i = keras.Input((4,), name="x")
    return keras.Model(i, keras.layers.Dense(3, name="y")(BatchScaled()(i)))
