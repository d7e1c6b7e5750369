"""Model kinds and live references for the LiteRT / OpenVINO / .pt2 tests.

The same six kinds as the ONNX tests and ``kx_matrix``: MLP, CNN with
BatchNorm, LSTM, two inputs (list), dict inputs and self-attention.
"""

from __future__ import annotations

import keras
import numpy as np

L = keras.layers
KINDS = ("mlp", "cnn", "lstm", "multi", "dict", "attn")
BATCHES = (3, 7)


def build(kind: str) -> tuple[keras.Model, dict[str, tuple[int, ...]]]:
    """A small model of ``kind`` and its inputs (name -> shape without batch)."""
    if kind == "mlp":
        i = keras.Input((8,), name="x")
        return keras.Model(i, L.Dense(3, name="y")(L.Dense(16, activation="relu")(i))), {"x": (8,)}
    if kind == "cnn":
        i = keras.Input((12, 12, 3), name="img")
        h = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(i))
        h = L.GlobalAveragePooling2D()(L.MaxPooling2D()(h))
        m = keras.Model(i, L.Dense(5, activation="softmax", name="probs")(h))
        bn = next(la for la in m.layers if isinstance(la, L.BatchNormalization))
        bn.moving_mean.assign(np.linspace(0.1, 0.5, 4).astype("float32"))
        bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
        return m, {"img": (12, 12, 3)}
    if kind == "lstm":
        i = keras.Input((6, 5), name="seq")
        return keras.Model(i, L.Dense(2, name="y")(L.LSTM(7)(i))), {"seq": (6, 5)}
    if kind == "multi":
        a, b = keras.Input((3,), name="a"), keras.Input((4,), name="b")
        return keras.Model([a, b], L.Dense(2, name="y")(L.Concatenate()([a, b * 2.0]))), \
            {"a": (3,), "b": (4,)}
    if kind == "dict":
        a, b = keras.Input((3,), name="a"), keras.Input((4,), name="b")
        return keras.Model({"b": b, "a": a}, L.Dense(2, name="y")(L.Concatenate()([a, b - 1.0]))), \
            {"a": (3,), "b": (4,)}
    if kind == "attn":
        i = keras.Input((5, 8), name="tok")
        h = L.LayerNormalization()(L.MultiHeadAttention(2, 4)(i, i) + i)
        return keras.Model(i, L.Dense(4, name="y")(L.GlobalAveragePooling1D()(h))), {"tok": (5, 8)}
    raise ValueError(kind)


def inputs(spec: dict[str, tuple[int, ...]], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + batch)
    return {k: rng.random((batch, *s)).astype("float32") for k, s in spec.items()}


def live(model: keras.Model, kind: str, xs: dict[str, np.ndarray]) -> np.ndarray:
    """The live model's output on named inputs (how the Keras model takes them)."""
    if kind == "dict":
        arg = xs
    elif len(xs) > 1:
        arg = [xs[k] for k in ("a", "b")]
    else:
        arg = next(iter(xs.values()))
    return np.asarray(keras.ops.convert_to_numpy(model(arg, training=False)))


def cases(model: keras.Model, kind: str, spec: dict[str, tuple[int, ...]]) -> list[tuple]:
    """``[(inputs by name, live output)]`` at each test batch size."""
    out = []
    for b in BATCHES:
        xs = inputs(spec, b)
        out.append((xs, live(model, kind, xs)))
    return out
