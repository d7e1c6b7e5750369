"""Fresh-process checks for re-hosted artifacts (TensorFlow runtime only)."""

from __future__ import annotations

import os

import numpy as np


def saved_model_report(path, args, train_args):
    """Signatures, endpoint outputs, state and raw bytes facts of a SavedModel."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    sigs = {}
    for key, fn in loaded.signatures.items():
        _, kw = fn.structured_input_signature
        sigs[key] = {"inputs": sorted(kw), "outputs": sorted(fn.structured_outputs)}
    out = {"signatures": sigs}
    out["non_trainable"] = [np.asarray(v.numpy()) for v in loaded.non_trainable_variables]
    out["serve"] = [loaded.serve(tf.constant(a)).numpy() for a in args]
    out["default"] = [
        {k: v.numpy() for k, v in loaded.signatures["serving_default"](
            **{sigs["serving_default"]["inputs"][0]: tf.constant(a)}).items()} for a in args]
    out["train"] = [loaded.train(tf.constant(train_args)).numpy() for _ in range(2)]
    out["features"] = [loaded.features(tf.constant(a)).numpy() for a in args]
    out["collection"] = [np.asarray(v.numpy()) for v in loaded.head_vars]
    blobs = b""
    for root, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                blobs += fh.read()
    out["bytes"] = blobs
    return out
