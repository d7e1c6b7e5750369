"""Measure the quantized-artifact metrics on good and deliberately broken artifacts.

The thresholds of ``kexport.check.tolerance.QUANTIZED`` come from this run
(docs/verification.md, "Quantized artifacts"). For each model and LiteRT
quantization mode it prints, on held-out data, the pooled SQNR, the worst and
mean cosine per sample, top-1 agreement and top-5 overlap of the artifact
against the float Keras model, and the verdict of the old elementwise check
(``atol = rtol = 0.25``) and of the mode's thresholds (``new check``):

- ``good``: the model quantized as it is;
- ``scaled``: the artifact of a model whose last layer's outputs are 0.5x;
- ``wrong layer``: the artifact of a model with random weights in one hidden layer.

Models: a digits MLP (scikit-learn ``load_digits``, trained a few epochs,
logits), the same with its logits scaled 100x and 0.01x, and a small CNN whose
BatchNorm statistics are set from data.

Run: ``KERAS_BACKEND=tensorflow python benchmarks/quantized_checks.py``
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import kexport
from kexport.check.compare import compare, judge, quality
from kexport.check.tolerance import QUANTIZED

MODES = ("float16", "dynamic_int8", "int8")


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return x[:1400], y[:1400], x[1400:], y[1400:]


def mlp(scale: float = 1.0) -> keras.Model:
    i = keras.Input((64,), name="x")
    h = keras.layers.Dense(64, activation="relu", name="h1")(i)
    h = keras.layers.Dense(32, activation="relu", name="h2")(h)
    o = keras.layers.Dense(10, name="logits")(h)
    if scale != 1.0:
        o = keras.layers.Rescaling(scale, name="scale")(o)
    return keras.Model(i, o)


def cnn(x: np.ndarray) -> keras.Model:
    i = keras.Input((8, 8, 1), name="x")
    h = keras.layers.Conv2D(16, 3, padding="same", name="c1")(i)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", name="c2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    o = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(i, o)
    # BatchNorm statistics set from the data, as training would leave them
    for bn, upto in (("bn1", "c1"), ("bn2", "c2")):
        feats = keras.Model(i, model.get_layer(upto).output)(x[:512]).numpy()
        layer = model.get_layer(bn)
        layer.moving_mean.assign(feats.mean(axis=(0, 1, 2)))
        layer.moving_variance.assign(feats.var(axis=(0, 1, 2)))
        # the next conv sees normalised inputs from here on
    return model


def broken(model: keras.Model, how: str, layer: str) -> keras.Model:
    bad = keras.models.clone_model(model)
    bad.set_weights(model.get_weights())
    if how == "wrong layer":
        w = bad.get_layer(layer).kernel
        w.assign(np.random.default_rng(3).normal(0, float(np.std(w.numpy())),
                                                 w.shape).astype("float32"))
    else:  # scaled: the last layer's outputs halved
        last = [la for la in bad.layers if hasattr(la, "kernel")][-1]
        last.kernel.assign(last.kernel.numpy() * 0.5)
        last.bias.assign(last.bias.numpy() * 0.5)
    return bad


def run(name: str, model: keras.Model, train: np.ndarray, test: np.ndarray,
        layer: str, tmp: str) -> None:
    ref = model.predict(test, verbose=0)
    calibration = [train[i:i + 1] for i in range(0, 400, 2)]
    for mode in MODES:
        for how in ("good", "scaled", "wrong layer"):
            source = model if how == "good" else broken(model, how, layer)
            path = os.path.join(tmp, f"{name}-{mode}-{how.replace(' ', '_')}.tflite")
            kexport.export_litert(source, path, verbose=False, quantization=mode,
                                  representative_dataset=calibration if mode == "int8" else None)
            artifact = kexport.load(path)
            out = next(iter(artifact({"x": test}).values()))
            q = quality(ref, out, scores=True)
            old = compare(ref, out, 0.25, 0.25)[2]
            top5 = f"{q.top5:.3f}" if q.top5 is not None else "-"
            print(f"| {name} | {mode} | {how} | {q.sqnr_db:.1f} | {q.cosine_min:.4f} | "
                  f"{q.cosine_mean:.4f} | {q.top1:.3f} | {top5} | "
                  f"{'pass' if old else 'FAIL'} | {'FAIL' if judge(q, QUANTIZED[mode]) else 'pass'}"
                  " |", flush=True)


def main() -> int:
    keras.utils.set_random_seed(0)
    xtr, ytr, xte, yte = digits()
    print("| model | mode | artifact | SQNR dB | cos min | cos mean | top-1 | top-5 | "
          "old 0.25 allclose | new check |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        model = mlp()
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(xtr, ytr, epochs=15, batch_size=32, verbose=0)
        acc = float(np.mean(np.argmax(model.predict(xte, verbose=0), 1) == yte))
        print(f"<!-- digits MLP test accuracy {acc:.3f} -->", file=sys.stderr)
        run("digits MLP", model, xtr, xte, "h2", tmp)
        for scale in (100.0, 0.01):
            scaled = mlp(scale)
            for layer in ("h1", "h2", "logits"):
                scaled.get_layer(layer).set_weights(model.get_layer(layer).get_weights())
            run(f"digits MLP, logits x{scale:g}", scaled, xtr, xte, "h2", tmp)
        images_tr, images_te = xtr.reshape(-1, 8, 8, 1), xte.reshape(-1, 8, 8, 1)
        run("CNN, BN stats from data", cnn(images_tr), images_tr, images_te, "c2", tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
