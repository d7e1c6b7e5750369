"""Code written for ``keras.export.ExportArchive`` works unchanged with kexport.

The patterns of Keras's export guide, on user-style models (subclassed, defined
inside the test, no ``get_config``, ``call`` without a ``training`` argument):
the archive's variable lists after ``track()`` (live and reloaded), function
aliases in ``SaveOptions``, and Keras's built-in error types. Artifacts are
reloaded in a fresh process (``fresh_archive_parity.py``) and compared with the
live model at two batch sizes.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from conftest import BACKEND
from models import assert_close, np_out, rng

L = keras.layers
SPEC10 = [keras.InputSpec(shape=(None, 10), dtype="float32")]


def bn_model(sample_shape: tuple[int, ...] = (2, 10)) -> keras.Model:
    """Dense -> BatchNormalization -> Dense, subclassed, defined in a function: 8 variables,
    6 trainable, 2 non-trainable (the batch-norm statistics), as in Keras's own test."""

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(4, activation="relu")
            self.bn = L.BatchNormalization()
            self.head = L.Dense(3)

        def call(self, x):
            return self.head(self.bn(self.dense(x)))

    model = Net()
    model(np.zeros(sample_shape, "float32"))
    _set_statistics(model)
    return model


def _set_statistics(model: keras.Model) -> None:
    bn = model.layers[1]
    bn.moving_mean.assign(np.linspace(-1.0, 1.0, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))


def any_backend_model() -> keras.Model:
    """The same layers as :func:`bn_model`; on PyTorch as a Sequential model, since the
    PyTorch archive re-hosts tracked models by their config (classes defined inside a
    function: issue #14, item 9, see CHANGELOG)."""
    if BACKEND != "torch":
        return bn_model()
    model = keras.Sequential([keras.Input((10,)), L.Dense(4, activation="relu"),
                              L.BatchNormalization(), L.Dense(3)])
    _set_statistics(model)
    return model


def _np(v):
    if isinstance(v, keras.Variable):
        return np.asarray(keras.ops.convert_to_numpy(v.value))
    return np.asarray(v.numpy())  # a tf.Variable


def _same_values(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(_np(g), _np(w))


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_archive_variables_after_track():
    model = any_backend_model()
    archive = kexport.ExportArchive()
    assert archive.variables == [] and archive.non_trainable_variables == []
    archive.track(model)
    assert len(archive.variables) == 8
    assert len(archive.trainable_variables) == 6
    assert len(archive.non_trainable_variables) == 2
    _same_values(archive.variables, model.variables)
    _same_values(archive.trainable_variables, model.trainable_variables)
    _same_values(archive.non_trainable_variables, [model.layers[1].moving_mean,
                                                      model.layers[1].moving_variance])
    if BACKEND == "jax":  # as Keras: the tf.Variable copies the SavedModel holds
        import tensorflow as tf

        assert all(isinstance(v, tf.Variable) for v in archive.variables)
    else:  # the model's own Keras variables
        assert all(a is m for a, m in zip(archive.variables, model.variables))
    archive.track(model.layers[1])  # a layer inside a tracked model: its variables only once
    assert len(archive.variables) == 8 and len(archive.non_trainable_variables) == 2


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_frozen_layer_variables_are_non_trainable():
    model = any_backend_model()
    model.layers[0].trainable = False
    archive = kexport.ExportArchive()
    archive.track(model)
    assert len(archive.trainable_variables) == 4
    assert len(archive.non_trainable_variables) == 4
    _same_values(archive.non_trainable_variables, model.non_trainable_variables)


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_reloaded_object_exposes_tracked_variables(tmp_path, fresh_process):
    model = any_backend_model()
    model.layers[0].trainable = False  # a frozen layer: its variables are non-trainable
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, SPEC10)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    xs = [rng(1).random((3, 10), dtype="float32"), rng(2).random((7, 10), dtype="float32")]
    got = fresh_process("fresh_archive_parity:reloaded_variables", path, xs)
    for attr in ("variables", "trainable_variables", "non_trainable_variables"):
        want = getattr(model, attr)
        assert len(got[attr]) == len(want), attr
        for (value, _), w in zip(got[attr], want):
            np.testing.assert_array_equal(value, _np(w))
    for x, out in zip(xs, got["serve"]):
        assert_close(out, np_out(model(x)))


@pytest.mark.backends("tensorflow", "jax")
def test_function_aliases_are_callable_after_reload(tmp_path, fresh_process):
    import tensorflow as tf

    model = bn_model()
    archive = kexport.ExportArchive()
    archive.track(model)
    fn = archive.add_endpoint("serve", model.call, SPEC10)
    doubled = archive.add_endpoint("doubled", lambda x: model(x) * 2.0, SPEC10)
    path = str(tmp_path / "a")
    aliases = {"call_alias": fn, "doubled_alias": doubled.get_concrete_function()}
    options = tf.saved_model.SaveOptions(function_aliases=aliases)
    archive.write_out(path, options, verbose=False)
    assert options.function_aliases == aliases  # the user's options are left as given
    xs = [rng(1).random((3, 10), dtype="float32"), rng(2).random((6, 10), dtype="float32")]
    got = fresh_process("fresh_archive_parity:function_alias_calls", path,
                        ["call_alias", "doubled_alias"], xs)
    for alias, scale in (("call_alias", 1.0), ("doubled_alias", 2.0)):
        assert got[alias]["callable"], got[alias]["type"]
        for x, out in zip(xs, got[alias]["outputs"]):
            assert out.shape == (len(x), 3)
            assert_close(out, scale * np_out(model(x)))
    for x, out in zip(xs, got["serve"]):
        assert_close(out, np_out(model(x)))


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_keras_builtin_error_types_on_every_backend():
    """What Keras raises is what kexport raises, with the kexport class too."""
    model = any_backend_model()
    archive = kexport.ExportArchive()
    with pytest.raises(TypeError, match=r"Expected each leaf of `input_signature`.*"
                       r"Received: 123 \(of type int\)") as info:
        archive.add_endpoint("serve", model.call, input_signature=(123,))
    assert isinstance(info.value, kexport.SignatureTypeError)
    assert isinstance(info.value, ValueError)  # still a SignatureError
    with pytest.raises(ValueError, match=r"Expected a Keras layer") as info:
        archive.track(object())
    assert isinstance(info.value, kexport.CaptureValueError)
    with pytest.raises(ValueError, match=r"Expected a built layer or model") as info:
        archive.track(L.Dense(2))
    assert isinstance(info.value, kexport.CaptureValueError)
    with pytest.raises(ValueError, match=r"Expected at least one endpoint") as info:
        archive.write_out("never-written")
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(ValueError, match=r"are unknown") as info:
        archive.add_endpoint("serve", model.call)
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(TypeError, match=r"Expected `fn` to be callable") as info:
        archive.add_endpoint("serve", 3, SPEC10)
    assert isinstance(info.value, kexport.SignatureTypeError)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments .*'frobnicate'") as info:
        archive.add_endpoint("serve", model.call, SPEC10, frobnicate=True)
    assert isinstance(info.value, kexport.SignatureTypeError)
    archive.track(model)
    archive.add_endpoint("serve", model.call, SPEC10)
    with pytest.raises(ValueError, match=r"Endpoint name 'serve' is already taken") as info:
        archive.add_endpoint("serve", model.call, SPEC10)
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(ValueError, match=r"Did you mean 'tf_saved_model'\?") as info:
        archive.write_out("never-written", format="saved_model")
    assert isinstance(info.value, kexport.UnknownFormatError)
    with pytest.raises(ValueError, match=r"Received: format='onxx'") as info:
        kexport.export_model(model, "never-written", format="onxx")
    assert isinstance(info.value, kexport.UnsupportedRouteError)


@pytest.mark.backends("jax")
def test_jax_option_types():
    model = bn_model()
    archive = kexport.ExportArchive()
    archive.track(model)
    with pytest.raises(TypeError, match=r"Expected `is_static` to be a bool") as info:
        archive.add_endpoint("serve", model.call, SPEC10, is_static="no")
    assert isinstance(info.value, kexport.SignatureTypeError)
    with pytest.raises(TypeError, match=r"Expected `jax2tf_kwargs` to be a dict") as info:
        archive.add_endpoint("serve", model.call, SPEC10, jax2tf_kwargs=5)
    assert isinstance(info.value, kexport.SignatureTypeError)


# -- JAX: endpoints written with jax2tf (#14 item 6) ---------------------------

def tagger() -> keras.Model:
    """(batch, time, 8) -> (batch, time, 3): the same subclassed Dense -> BatchNormalization
    -> Dense, built on a sequence sample; 6 trainable variables (the head's bias last),
    2 non-trainable."""
    return bn_model((2, 5, 8))


def _seq(seed, batch, time):
    return rng(seed).random((batch, time, 8), dtype="float32")


@pytest.mark.backends("jax")
def test_jax2tf_tf_function_endpoints_as_in_keras_guide(tmp_path, fresh_process):
    """``jax2tf.convert(model_call, polymorphic_shapes=...)`` inside a ``tf.function`` with
    its own input_signature, added with and without an ``input_signature``; a second
    converted function over two inputs whose time dims are free."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    model = tagger()

    def model_call(x):
        return model(x)

    def pair_call(x, y):  # x's frames shifted by y's mean frame: t and s are independent
        return model(x) + keras.ops.mean(model(y), axis=1, keepdims=True)

    converted = jax2tf.convert(model_call, polymorphic_shapes=["(b, t, 8)"])
    converted_pair = jax2tf.convert(pair_call, polymorphic_shapes=["(b, t, 8)", "(b, s, 8)"])

    @tf.function(input_signature=[tf.TensorSpec(shape=(None, None, 8), dtype=tf.float32)],
                 autograph=False)
    def infer_fn(x):
        return converted(x)

    @tf.function(autograph=False)
    def pair_fn(x, y):
        return converted_pair(x, y)

    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", infer_fn)  # the tf.function's own signature
    archive.add_endpoint("call", infer_fn,
                         input_signature=[keras.InputSpec(shape=(None, None, 8))])
    spec = tf.TensorSpec(shape=(None, None, 8), dtype=tf.float32)
    archive.add_endpoint("pair", pair_fn, input_signature=[spec, spec])
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)

    sizes = [(2, 3, 5), (5, 7, 2)]  # batch, t, s: two batch sizes, a second size of t and s
    calls = []
    for i, (b, t, s) in enumerate(sizes):
        x, y = _seq(i, b, t), _seq(10 + i, b, s)
        calls += [("serve", [x]), ("call", [x]), ("pair", [x, y])]
    got = fresh_process("fresh_archive_parity:call_endpoints", path, calls)
    for (name, args), out in zip(calls, got["outputs"]):
        want = model_call(*args) if name != "pair" else pair_call(*args)
        assert_close(out, np_out(want))
    assert len(archive.variables) == 8 and len(archive.non_trainable_variables) == 2
    assert all(isinstance(v, tf.Variable) for v in archive.variables)


@pytest.mark.backends("jax")
def test_jax2tf_stateless_endpoints_over_variable_collections(tmp_path, fresh_process):
    """A stateless function of the variables, converted with jax2tf, called in endpoints on
    the ``tf.Variable`` objects of ``add_variable_collection`` (``archive.<name>``) and on a
    ``tf.Variable`` of the user's: the SavedModel holds them as variables, so assigning one
    after reloading moves the outputs."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    model = tagger()
    archive = kexport.ExportArchive()
    archive.add_variable_collection("trainable", model.trainable_variables)
    archive.add_variable_collection("non_trainable", model.non_trainable_variables)
    trainable, non_trainable = archive.trainable, archive.non_trainable
    assert all(isinstance(v, tf.Variable) for v in trainable + non_trainable)
    scale = tf.Variable(2.0)
    archive.add_variable_collection("scale", [scale])

    def stateless_fn(trainable_values, non_trainable_values, x):
        y, _ = model.stateless_call(trainable_values, non_trainable_values, x)
        return y

    def pooled_fn(trainable_values, non_trainable_values, x):
        return keras.ops.mean(stateless_fn(trainable_values, non_trainable_values, x), axis=1)

    serve_tf = jax2tf.convert(stateless_fn, polymorphic_shapes=[None, None, "(b, t, 8)"])
    pooled_tf = jax2tf.convert(pooled_fn, polymorphic_shapes=[None, None, "(b, t, 8)"])

    @tf.function(autograph=False)
    def serve(x):
        return serve_tf(trainable, non_trainable, x)

    spec = [tf.TensorSpec(shape=(None, None, 8), dtype=tf.float32)]
    archive.add_endpoint("serve", serve, input_signature=spec)
    # Plain functions (no tf.function) of the converted ones are TensorFlow code too.
    archive.add_endpoint("pooled", lambda x: pooled_tf(trainable, non_trainable, x),
                         input_signature=spec)
    archive.add_endpoint("scaled", lambda x: serve_tf(trainable, non_trainable, x) * scale,
                         input_signature=spec)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)

    calls = []
    for i, (b, t) in enumerate([(2, 3), (5, 6)]):
        x = _seq(i, b, t)
        calls += [("serve", [x]), ("pooled", [x]), ("scaled", [x])]
    got = fresh_process("fresh_archive_parity:call_endpoints", path, calls,
                        ("trainable", 5, 1.0))  # the head's bias + 1
    for (name, (x,)), out, bumped in zip(calls, got["outputs"], got["bumped"]):
        want = np_out(model(x))
        want = {"serve": want, "pooled": want.mean(axis=1), "scaled": 2.0 * want}[name]
        assert_close(out, want)
        assert_close(bumped, want + (2.0 if name == "scaled" else 1.0))


@pytest.mark.backends("jax")
def test_jax2tf_endpoint_errors_are_typed():
    import tensorflow as tf
    from jax.experimental import jax2tf

    model = tagger()
    converted = jax2tf.convert(lambda x: model(x), polymorphic_shapes=["(b, t, 8)"])
    archive = kexport.ExportArchive()
    spec = [tf.TensorSpec(shape=(None, None, 8), dtype=tf.float32)]
    with pytest.raises(TypeError, match=r"converted with jax2tf.convert already.*"
                       r"Received: jax2tf_kwargs=") as info:
        archive.add_endpoint("serve", lambda x: converted(x), spec,
                             jax2tf_kwargs={"polymorphic_shapes": ["(b, t, 8)"]})
    assert isinstance(info.value, kexport.SignatureTypeError)
    with pytest.raises(ValueError, match=r"list/tuple/set of keras.Variable or tf.Variable"):
        archive.add_variable_collection("weights", [np.zeros(3)])


# -- tf.function endpoints with their own input_signature (any backend with TF functions)

@pytest.mark.backends("tensorflow")
def test_tf_function_with_its_own_signature(tmp_path, fresh_process):
    import tensorflow as tf

    model = bn_model()

    @tf.function(input_signature=[tf.TensorSpec(shape=(None, None), dtype=tf.float32)])
    def serve(x):
        return model(x)

    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=SPEC10)  # fits (None, None)

    @tf.function(input_signature=[tf.TensorSpec(shape=(None, 10), dtype=tf.float32)])
    def doubled(x):
        return model(x) * 2.0

    archive.add_endpoint("doubled", doubled)  # never called: its own signature is used
    offset = tf.Variable(np.ones(3, "float32"))
    archive.add_variable_collection("offset", [offset])
    assert archive.offset == [offset]
    with pytest.raises(TypeError, match=r"own input_signature.*Expected inputs that fit "
                       r"\[\(None, None\) float32\]. Received: \[\(None, 10\) int32\]") as info:
        archive.add_endpoint("ints", serve, [keras.InputSpec(shape=(None, 10), dtype="int32")])
    assert isinstance(info.value, kexport.SignatureTypeError)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    xs = [rng(1).random((3, 10), dtype="float32"), rng(2).random((6, 10), dtype="float32")]
    got = fresh_process("fresh_archive_parity:call_endpoints", path,
                        [(name, [x]) for x in xs for name in ("serve", "doubled")])
    for i, x in enumerate(xs):
        assert_close(got["outputs"][2 * i], np_out(model(x)))
        assert_close(got["outputs"][2 * i + 1], 2.0 * np_out(model(x)))


# -- JAX: user polymorphic_shapes with shared and free dims (#14 item 5) ----------

@pytest.mark.backends("jax")
def test_user_polymorphic_shapes_shared_and_free_dims(tmp_path, fresh_process):
    """The user's strings are kept: ``(b, n, n)`` where the model forces two axes equal,
    ``(b, tq, 8)`` / ``(b, tv, 8)`` where they are free; one string for every argument;
    ``None`` and ``_`` left to kexport; a constant fixes the signature's dimension."""
    ops = keras.ops

    class Gram(keras.Model):  # x @ x: the last two axes must be equal
        def __init__(self):
            super().__init__()
            self.scale = self.add_weight(shape=(), initializer="ones")

        def call(self, x):
            return ops.matmul(x, x) * self.scale

    class Attend(keras.Model):  # query and value lengths are independent
        def __init__(self):
            super().__init__()
            self.q = L.Dense(8)
            self.k = L.Dense(8)

        def call(self, inputs):
            query, value = inputs["query"], inputs["value"]
            scores = ops.matmul(self.q(query), ops.transpose(self.k(value), (0, 2, 1)))
            return ops.matmul(ops.softmax(scores), value)

    gram, attend = Gram(), Attend()
    gram(np.zeros((2, 3, 3), "float32"))
    attend({"query": np.zeros((2, 3, 8), "float32"), "value": np.zeros((2, 4, 8), "float32")})

    def gram_plus(x, offsets):  # offsets: (b, 5), its mean added to every entry
        return gram(x) + ops.mean(offsets, axis=1)[:, None, None]

    any3 = keras.InputSpec(shape=(None, None, None))
    seq = keras.InputSpec(shape=(None, None, 8))
    archive = kexport.ExportArchive()
    archive.track(gram)
    archive.track(attend)
    archive.add_endpoint("gram", gram.call, [any3],
                         jax2tf_kwargs={"polymorphic_shapes": ["(b, n, n)"]})
    archive.add_endpoint("attend", attend.call, [{"query": seq, "value": seq}],
                         jax2tf_kwargs={"polymorphic_shapes": [{"query": "(b, tq, 8)",
                                                                "value": "(b, tv, 8)"}]})
    archive.add_endpoint("self_attend", lambda q, v: attend({"query": q, "value": v}),
                         [seq, seq], jax2tf_kwargs={"polymorphic_shapes": "(b, t, 8)"})
    fn = archive.add_endpoint(
        "gram_plus", gram_plus, [any3, keras.InputSpec(shape=(None, None))],
        jax2tf_kwargs={"polymorphic_shapes": ["(b, n, n)", "(_, 5)"]})
    assert fn.input_signature[1].shape.as_list() == [None, 5]
    archive.add_endpoint("gram_plus_none", gram_plus, [any3, keras.InputSpec(shape=(None, 5))],
                         jax2tf_kwargs={"polymorphic_shapes": ["(b, n, n)", None]})
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)

    calls, wants = [], []
    for i, (b, n, tq, tv) in enumerate([(2, 3, 3, 5), (5, 6, 7, 2)]):
        x = rng(i).random((b, n, n), dtype="float32")
        q, v = _seq(10 + i, b, tq), _seq(20 + i, b, tv)
        offsets = rng(30 + i).random((b, 5), dtype="float32")
        calls += [("gram", [x]), ("attend", [{"query": q, "value": v}]),
                  ("self_attend", [q, q]), ("gram_plus", [x, offsets]),
                  ("gram_plus_none", [x, offsets])]
        wants += [gram(x), attend({"query": q, "value": v}), attend({"query": q, "value": q}),
                  gram_plus(x, offsets), gram_plus(x, offsets)]
    got = fresh_process("fresh_archive_parity:call_endpoints", path, calls)
    for out, want in zip(got["outputs"], wants):
        assert_close(out, np_out(want))


@pytest.mark.backends("jax")
def test_user_polymorphic_shapes_that_do_not_fit_are_typed_errors():
    model = tagger()
    archive = kexport.ExportArchive()
    archive.track(model)
    seq = [keras.InputSpec(shape=(None, None, 8))]
    with pytest.raises(ValueError, match=r"one entry per positional argument of `fn` \(1, "
                       r"as the input_signature\)\. Received 2") as info:
        archive.add_endpoint("serve", model.call, seq,
                             jax2tf_kwargs={"polymorphic_shapes": ["(b, t, 8)", "(b, t)"]})
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(ValueError, match=r"argument 0: expected a polymorphic shape with 3 "
                       r"dimension\(s\)") as info:
        archive.add_endpoint("serve", model.call, seq,
                             jax2tf_kwargs={"polymorphic_shapes": ["(b, t)"]})
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(ValueError, match=r"gives axis 2 size 4, the input_signature 8") as info:
        archive.add_endpoint("serve", model.call, seq,
                             jax2tf_kwargs={"polymorphic_shapes": ["(b, t, 4)"]})
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(TypeError, match=r"polymorphic_shapes'\] to be a string or a list") as info:
        archive.add_endpoint("serve", model.call, seq, jax2tf_kwargs={"polymorphic_shapes": 3})
    assert isinstance(info.value, kexport.SignatureTypeError)


@pytest.mark.backends("jax")
def test_user_polymorphic_shapes_drive_the_check(tmp_path, fresh_process):
    """``verify=True`` with the user's ``"(b, n, n)"``: the check gives both axes named
    ``n`` one size (was: every dynamic axis its own size, which the model refuses)."""
    ops = keras.ops

    class Gram(keras.Model):
        def __init__(self):
            super().__init__()
            self.scale = self.add_weight(shape=(), initializer="ones")

        def call(self, x):
            return ops.matmul(x, x) * self.scale

    gram = Gram()
    gram(np.zeros((2, 3, 3), "float32"))
    path = str(tmp_path / "gram")
    kexport.export_model(gram, path, verbose=False, verify=True,
                         input_signature=[keras.InputSpec(shape=(None, None, None))],
                         jax2tf_kwargs={"polymorphic_shapes": ["(b, n, n)"]})
    x = rng(3).random((4, 6, 6), dtype="float32")
    got = fresh_process("fresh_archive_parity:call_endpoints", path, [("serve", [x])])
    assert_close(got["outputs"][0], np_out(gram(x)))
