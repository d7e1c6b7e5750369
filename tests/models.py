"""Small models shared by the tests (built fresh for each use)."""

from __future__ import annotations

import keras
import numpy as np

L = keras.layers


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def mlp() -> keras.Model:
    i = keras.Input((8,), name="x")
    h = L.Dense(16, activation="relu")(i)
    return keras.Model(i, L.Dense(3, name="probs")(h))


def sequential() -> keras.Model:
    return keras.Sequential([keras.Input((6,), name="feat"), L.Dense(5, activation="tanh"),
                             L.Dense(2, name="score")])


def two_inputs_two_outputs() -> keras.Model:
    a = keras.Input((3,), name="a")
    b = keras.Input((4,), name="b")
    h = L.Concatenate()([a, b * 2.0])
    return keras.Model([a, b], [L.Dense(2, name="y1")(h), L.Dense(1, name="y2")(h)])


def dict_model() -> keras.Model:
    a = keras.Input((3,), name="a")
    b = keras.Input((4,), name="b")
    h = L.Concatenate()([a, b - 1.0])
    return keras.Model({"a": a, "b": b}, {"score": L.Dense(2)(h), "aux": L.Dense(1)(h)})


def sequence_model() -> keras.Model:
    i = keras.Input((None, 5), name="seq")
    h = L.Conv1D(4, 3, padding="same", activation="relu")(i)
    return keras.Model(i, L.Dense(2, name="y")(L.GlobalAveragePooling1D()(h)))


def stochastic_model() -> keras.Model:
    """Dropout(0.9), random noise augmentation and BatchNorm: all inert when training=False."""
    i = keras.Input((8,), name="x")
    h = L.GaussianNoise(1.0)(i)
    h = L.Dense(16, activation="relu")(h)
    h = L.Dropout(0.9)(h)
    h = L.BatchNormalization()(h)
    return keras.Model(i, L.Dense(3, name="y")(h))


class Subclassed(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.d1 = L.Dense(6, activation="relu")
        self.d2 = L.Dense(2)

    def call(self, x, training=None):
        return self.d2(self.d1(x))


class TwoArgLayer(L.Layer):
    """A layer whose call takes two positional tensors and keyword arguments."""

    def build(self, x_shape, y_shape=None):
        self.w = self.add_weight(shape=(x_shape[-1], 3), initializer="glorot_uniform")

    def call(self, x, y, scale=1.0, training=None):
        return keras.ops.matmul(x, self.w) * scale + y


class NoisyLayer(L.Layer):
    """Adds noise drawn from a SeedGenerator on every call (state advances)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seed_gen = keras.random.SeedGenerator(7)

    def call(self, x):
        return x + keras.random.normal(keras.ops.shape(x), seed=self.seed_gen)


def np_out(x):
    """Keras output structure -> NumPy structure."""
    if isinstance(x, dict):
        return {k: np_out(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [np_out(v) for v in x]
    return np.asarray(keras.ops.convert_to_numpy(x))


def assert_close(got, want, atol=1e-5):
    if isinstance(want, dict):
        assert set(got) == set(want), (sorted(got), sorted(want))
        for k in want:
            assert_close(got[k], want[k], atol)
        return
    if isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_close(g, w, atol)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-5)
