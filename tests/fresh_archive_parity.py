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


def _tf_args(tf, args):
    if isinstance(args, dict):
        return {k: tf.nest.map_structure(tf.constant, v) for k, v in args.items()}
    return [tf.nest.map_structure(tf.constant, a) for a in args]


def call_endpoints(path, calls, bump=None):
    """Call reloaded endpoints: ``calls`` is a list of ``(endpoint, args)``, ``args`` a list
    of positional arrays or a dict of keyword arrays. With ``bump=(collection, index,
    delta)``, add ``delta`` to that variable of the reloaded collection and call the
    endpoints again (``out["bumped"]``): a variable the SavedModel holds (not a baked
    constant) moves the outputs."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    out = {"outputs": []}
    for name, args in calls:
        fn = getattr(loaded, name)
        args = _tf_args(tf, args)
        result = fn(**args) if isinstance(args, dict) else fn(*args)
        out["outputs"].append(tf.nest.map_structure(lambda t: np.asarray(t), result))
    if bump is not None:
        collection, index, delta = bump
        variable = getattr(loaded, collection)[index]
        variable.assign(variable + delta)
        out["bumped"] = []
        for name, args in calls:
            args = _tf_args(tf, args)
            fn = getattr(loaded, name)
            result = fn(**args) if isinstance(args, dict) else fn(*args)
            out["bumped"].append(tf.nest.map_structure(lambda t: np.asarray(t), result))
    return out
