"""Measure every (Keras quantization mode x format) cell on this process's backend.

Usage (once per backend)::

    KERAS_BACKEND=jax python scripts/measure_keras_quantized.py [modes] [formats]

Builds a small subclassed model (Embedding -> EinsumDense -> Dense -> Dense),
quantizes it with ``model.quantize(mode)``, exports it with
``kexport.export_model(..., verify=True)`` (reloaded in a fresh process and
compared with the quantized model) and prints one line per cell: ``OK`` with
the route used, or the error's type and message. The route table's
``refuses`` (src/kexport/routing/table.py) and the table of
docs/quantization.md ("Models quantized by Keras") follow these results.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

import kexport
from kexport.artifact import FORMATS

SUFFIX = {"onnx": ".onnx", "litert": ".tflite", "torch": ".pt2"}


def quantized_block(mode: str | None, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)

    class Block(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.emb = keras.layers.Embedding(50, 16)
            self.proj = keras.layers.EinsumDense("btd,dh->bth", output_shape=(None, 32),
                                                 bias_axes="h")
            self.d1 = keras.layers.Dense(32, activation="relu")
            self.out = keras.layers.Dense(5)

        def call(self, ids: object) -> object:
            x = self.d1(self.proj(self.emb(ids)))
            return self.out(keras.ops.mean(x, axis=1))

    model = Block()
    model(np.zeros((2, 6), "int32"))
    if mode is not None:
        model.quantize(mode)
    return model


def main() -> None:
    modes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["int8", "float8", "int4"]
    formats = sys.argv[2].split(",") if len(sys.argv) > 2 else list(FORMATS)
    backend = keras.backend.backend()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            for fmt in formats:
                path = Path(tmp) / f"{backend}_{mode}{SUFFIX.get(fmt, '')}"
                start = time.time()
                try:
                    kexport.export_model(quantized_block(mode), path, format=fmt,
                                         verify=True, overwrite=True, verbose=False)
                    result = "OK"
                except Exception as e:  # every outcome is a row of the table
                    result = f"{type(e).__name__}: {str(e)[:400]}"
                print(f"{backend} {mode} {fmt} [{time.time() - start:.0f}s] {result}",
                      flush=True)


if __name__ == "__main__":
    main()
