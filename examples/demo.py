"""kexport demo: build a small model, export it, reload it in a fresh process, compare.

Run from the repository root: ``scripts/setup.sh && .venv/bin/python examples/demo.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RELOAD = """
import json, sys, numpy as np, tensorflow as tf
path, data = sys.argv[1], np.load(sys.argv[2])
loaded = tf.saved_model.load(path)
sig = loaded.signatures["serving_default"]
out = sig(**{k: tf.constant(data[k]) for k in sig.structured_input_signature[1]})
np.save(sys.argv[3], next(iter(out.values())).numpy())
print(json.dumps({"outputs": list(out)}))
"""


def main() -> int:
    import keras
    import numpy as np

    import kexport

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = keras.Input((16,), name="features")
    h = keras.layers.Dense(32, activation="relu")(inputs)
    h = keras.layers.Dropout(0.5)(h)
    h = keras.layers.BatchNormalization()(h)
    outputs = keras.layers.Dense(4, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, outputs)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int32")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model_savedmodel")
        start = time.perf_counter()
        kexport.export_model(model, path, verbose=True)
        seconds = time.perf_counter() - start
        sample = rng.normal(size=(7, 16)).astype("float32")
        np.savez(os.path.join(tmp, "in.npz"), features=sample)
        out_file = os.path.join(tmp, "out.npy")
        proc = subprocess.run([sys.executable, "-c", RELOAD, path, os.path.join(tmp, "in.npz"),
                               out_file], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return 1
        reloaded = np.load(out_file)
        live = keras.ops.convert_to_numpy(model(sample, training=False))
        err = float(np.max(np.abs(reloaded - live)))
    print(json.dumps({"backend": keras.backend.backend(), "format": "tf_saved_model",
                      "export_s": round(seconds, 2), "max_abs_err": err}))
    ok = err <= 1e-5
    print("demo:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
