"""Functions run in the fresh reload process (see conftest.FreshProcess).

Nothing here imports Keras or kexport: artifacts are reloaded with the
format's own runtime only, as a user's server would.
"""

from __future__ import annotations

import numpy as np


def _np(structure):
    if isinstance(structure, dict):
        return {k: _np(v) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return [_np(v) for v in structure]
    return np.asarray(structure.numpy() if hasattr(structure, "numpy") else structure)


def saved_model_call(path, attr, args, calls=1):
    """Load a SavedModel and call ``loaded.<attr>(*args)`` ``calls`` times."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    fn = getattr(loaded, attr)
    outs = [_np(fn(*[tf.nest.map_structure(tf.constant, a) for a in args])) for _ in range(calls)]
    return outs[0] if calls == 1 else outs


def saved_model_signature(path, key, inputs):
    """Call serving signature ``key`` with keyword inputs; return dict of arrays."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    out = loaded.signatures[key](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def saved_model_info(path):
    """Signature keys with input/output names, and root attribute facts."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    sigs = {}
    for key, fn in loaded.signatures.items():
        _, kw = fn.structured_input_signature
        sigs[key] = {
            "inputs": {k: (s.shape.as_list(), s.dtype.name) for k, s in kw.items()},
            "outputs": {k: (s.shape.as_list(), s.dtype.name) for k, s in fn.structured_outputs.items()},
        }
    facts = {}
    for attr in ("variables", "trainable_variables", "non_trainable_variables"):
        if hasattr(loaded, attr):
            facts[attr] = [np.asarray(v.numpy()) for v in getattr(loaded, attr)]
    return {"signatures": sigs, "attrs": facts}


def saved_model_collection(path, name):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    return [np.asarray(v.numpy()) for v in getattr(loaded, name)]


def saved_model_function_aliases(path):
    """Function aliases recorded in the SavedModel's MetaGraphDef."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(f"{path}/saved_model.pb", "rb") as f:
        sm.ParseFromString(f.read())
    return dict(sm.meta_graphs[0].meta_info_def.function_aliases)


def saved_model_call_kwargs(path, attr, kwargs):
    """Load a SavedModel and call ``loaded.<attr>(**kwargs)`` (inputs by parameter name)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    return _np(getattr(loaded, attr)(**{k: tf.constant(v) for k, v in kwargs.items()}))
