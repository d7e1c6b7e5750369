"""Fresh-process checks for Keras-style ExportArchive code (TensorFlow runtime only).

Nothing here imports Keras or kexport: the SavedModel is reloaded the way a
user's server or notebook does, with ``tf.saved_model.load``.
"""

from __future__ import annotations

import numpy as np


def reloaded_variables(path, args):
    """The reloaded object's variable lists (values, trainable flags) and ``serve`` outputs."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    out = {}
    for attr in ("variables", "trainable_variables", "non_trainable_variables"):
        out[attr] = [(np.asarray(v.numpy()), bool(v.trainable)) for v in getattr(loaded, attr)]
    out["serve"] = [loaded.serve(tf.constant(a)).numpy() for a in args]
    return out


def function_alias_calls(path, aliases, args):
    """Load with ``experimental_load_function_aliases`` and call each alias on each input."""
    import tensorflow as tf

    loaded = tf.saved_model.load(
        path, options=tf.saved_model.LoadOptions(experimental_load_function_aliases=True))
    out = {}
    for alias in aliases:
        fn = loaded.function_aliases[alias]
        out[alias] = {"type": type(fn).__name__, "callable": callable(fn),
                      "outputs": [np.asarray(fn(tf.constant(a))) for a in args]}
    out["serve"] = [loaded.serve(tf.constant(a)).numpy() for a in args]
    return out
