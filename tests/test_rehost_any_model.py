"""Re-hosting any model: classes defined in a function, no get_config, lists of layers.

A model re-hosted onto another backend (PyTorch -> SavedModel / LiteRT,
TensorFlow or JAX -> .pt2) is rebuilt in a child process. Models are written
here the way users write them: classes defined inside the test function, no
``get_config``, a constructor taking a list of layers, ``call`` without a
``training`` argument. Each artifact is reloaded in a fresh process and
compared with the live model at two batch sizes.
"""

from __future__ import annotations

import pickle
import threading

import keras
import numpy as np
import pytest

import kexport
import rehost_layers
from kexport import rehost, routing
from kexport.errors import RouteRefused, UnsupportedRouteError
from kexport.rehost import pairing, recipe, state

BACKEND = keras.backend.backend()
L = keras.layers
BATCHES = (1, 4)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _inputs(features=5):
    rng = np.random.default_rng(11)
    return {n: rng.standard_normal((n, features)).astype("float32") for n in BATCHES}


def _stack_model():
    """A subclassed model built from a list of layers, one a nested custom layer."""

    class Scale(L.Layer):  # nested custom layer: weight made in build, constant in __init__
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal")

        def call(self, x):
            return x * self.w * self.factor

    class Block(L.Layer):
        def __init__(self, units, activation):
            super().__init__()
            self.dense = L.Dense(units)
            self.scale = Scale(1.5)
            self.activation = activation  # a function, carried by value

        def call(self, x):
            return self.activation(self.scale(self.dense(x)))

    class Stack(keras.Model):  # no get_config; the constructor takes a list of layers
        def __init__(self, blocks):
            super().__init__()
            self.blocks = blocks
            self.head = L.Dense(3)

        def call(self, inputs):
            x = inputs
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    model = Stack([Block(8, lambda t: keras.ops.tanh(t)), L.Dense(6, activation="relu"),
                   Block(4, keras.activations.sigmoid)])
    model(_inputs()[1])
    return model


def test_model_defined_in_a_function_is_no_longer_refused_by_route_resolution():
    model = _stack_model()
    with pytest.raises(NotImplementedError):  # what the config route alone could not do
        keras.saving.serialize_keras_object(model)
    assert rehost.rehost_problem(model) == ""
    found = routing.resolve("torch", "tf_saved_model", model)
    assert found.kind == "rehost" and found.host == "tensorflow"


def test_what_cannot_travel_is_refused_naming_the_layer_and_attribute():
    class Guarded(keras.Model):  # no config (a list argument), and a lock in its state
        def __init__(self, parts):
            super().__init__(name="guarded")
            self.parts = parts
            self.lock = threading.Lock()

        def call(self, x):
            with self.lock:
                return self.parts[0](x)

    model = Guarded([L.Dense(2)])
    model(_inputs()[1])
    problem = rehost.rehost_problem(model)
    assert "attribute 'lock' of layer 'guarded'" in problem and "cannot be pickled" in problem
    with pytest.raises(UnsupportedRouteError, match=r"rehost \(re-host on tensorflow.*'lock'"):
        routing.resolve("torch", "tf_saved_model", model)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("fmt", ["tf_saved_model", "litert"])
def test_torch_model_without_config_reaches_saved_model_and_litert(fmt, tmp_path, fresh_process):
    model = _stack_model()
    xs = _inputs()
    path = tmp_path / ("sm" if fmt == "tf_saved_model" else "m.tflite")
    spec = [keras.InputSpec(shape=(None, 5), dtype="float32", name="feat")]
    kexport.export_model(model, path, format=fmt, verbose=False, input_signature=spec)
    if fmt == "tf_saved_model":
        outs = [fresh_process("saved_model_call", str(path), "serve", [xs[n]]) for n in BATCHES]
    else:
        (res,) = fresh_process("fresh_formats:litert_run", [
            (str(path), "serve", [{"feat": xs[n]} for n in BATCHES])])
        assert res["signatures"]["serve"]["inputs"] == ["feat"]
        outs = [next(iter(out.values())) for out in res["outputs"]]
    for n, got in zip(BATCHES, outs, strict=True):
        want = _np(model(xs[n]))
        assert np.shape(got) == (n, 3)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.backends("tensorflow", "jax")
def test_model_without_config_reaches_torch_program(tmp_path, fresh_process):
    model = _stack_model()
    xs = _inputs()
    path = tmp_path / "m.pt2"
    kexport.export_model(model, path, format="torch", verbose=False)
    (res,) = fresh_process("fresh_formats:torch_run", [(str(path), [[xs[n]] for n in BATCHES])])
    for n, (got,) in zip(BATCHES, res["outputs"], strict=True):
        np.testing.assert_allclose(got, _np(model(xs[n])), atol=1e-5, rtol=1e-5)


@pytest.mark.backends("torch")
def test_torch_archive_of_local_classes_with_seed_state_and_collection(tmp_path, fresh_process):
    class Noisy(L.Layer):  # RNG state made in __init__, weight in build, no training arg
        def __init__(self, rate):
            super().__init__(name="noisy")
            self.rate = rate
            self.seed = keras.random.SeedGenerator(5)

        def build(self, shape):
            self.gain = self.add_weight(shape=(shape[-1],), initializer="ones", name="gain")

        def call(self, x):
            return x * self.gain * self.rate

    class Net(keras.Model):
        def __init__(self, parts):
            super().__init__(name="net")
            self.parts = parts

        def call(self, x):
            for p in self.parts:
                x = p(x)
            return x

    model = Net([L.Dense(4, name="d0"), Noisy(0.5), L.BatchNormalization(name="bn"),
                 L.Dense(2, name="d1")])
    x = _inputs()[4]
    model(x)
    model.get_layer("noisy").gain.assign(np.arange(1, 5, dtype="float32"))
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full((4,), 0.3, "float32"))
    bn.moving_variance.assign(np.full((4,), 2.0, "float32"))
    keras.random.normal((2,), seed=model.get_layer("noisy").seed)  # move the seed state
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model, [keras.InputSpec(shape=(None, 5), dtype="float32")])
    archive.add_variable_collection("gain", [model.get_layer("noisy").gain])
    path = tmp_path / "sm"
    archive.write_out(path, verbose=False)
    for n, xn in _inputs().items():
        got = fresh_process("saved_model_call", str(path), "serve", [xn])
        np.testing.assert_allclose(got, _np(model(xn)), atol=1e-5, rtol=1e-5)
        assert got.shape == (n, 2)
    (gain,) = fresh_process("saved_model_collection", str(path), "gain")
    np.testing.assert_array_equal(gain, np.arange(1, 5, dtype="float32"))


# -- the by-value description itself (any backend, no child process) ----------------------------
def test_description_rebuilds_the_same_model_in_process():
    model = _stack_model()
    blob = recipe.describe_model(model)
    rebuilt = recipe.rebuild_model(blob)
    assert type(rebuilt).__qualname__ == type(model).__qualname__
    values = [_np(v.value) for v in model.variables]
    pairing.assign_values(rebuilt, pairing.variable_paths(model), values)
    for x in _inputs().values():
        np.testing.assert_allclose(_np(rebuilt(x)), _np(model(x)), atol=1e-6)
    assert b"get_config" not in pickle.dumps(pairing.variable_paths(model))


def test_functional_model_holding_a_custom_layer_without_config_rebuilds_by_value():
    class Residual(L.Layer):  # a list argument: no automatic config
        def __init__(self, inner):
            super().__init__(name="residual")
            self.inner = inner

        def call(self, x):
            y = x
            for layer in self.inner:
                y = layer(y)
            return x + y

    i = keras.Input((5,), name="feat")
    model = keras.Model(i, L.Dense(2, name="out")(Residual([L.Dense(5), L.Dense(5)])(i)))
    with pytest.raises(NotImplementedError):
        keras.saving.serialize_keras_object(model)
    rebuilt = recipe.rebuild_model(recipe.describe_model(model))
    assert [type(x).__name__ for x in rebuilt.layers] == ["InputLayer", "Residual", "Dense"]
    pairing.assign_values(rebuilt, pairing.variable_paths(model),
                         [_np(v.value) for v in model.variables])
    for x in _inputs().values():
        np.testing.assert_allclose(_np(rebuilt(x)), _np(model(x)), atol=1e-6)


def test_variables_are_matched_by_path_when_the_rebuilt_order_differs():
    class Pair(L.Layer):
        def __init__(self):
            super().__init__(name="pair")
            self.a = L.Dense(3, name="a")
            self.b = L.Dense(3, name="b")

        def call(self, x):
            return self.a(x) - self.b(x)

    class Swapped(L.Layer):  # the same layers, tracked in the other order
        def __init__(self):
            super().__init__(name="pair")
            self.b = L.Dense(3, name="b")
            self.a = L.Dense(3, name="a")

        def call(self, x):
            return self.a(x) - self.b(x)

    x = _inputs()[4]
    source, target = Pair(), Swapped()
    source(x), target(x)
    paths = pairing.variable_paths(source)
    assert paths != pairing.variable_paths(target)  # the order differs ...
    assert sorted(paths) == sorted(pairing.variable_paths(target))  # ... the paths do not
    ordered = pairing.assign_values(target, paths, [_np(v.value) for v in source.variables])
    assert [v.path for v in ordered] == paths
    np.testing.assert_allclose(_np(target(x)), _np(source(x)), atol=1e-6)


def test_variables_that_cannot_be_matched_are_refused_naming_them():
    a, b = L.Dense(3, name="a"), L.Dense(4, name="a")
    a(_inputs()[1]), b(_inputs()[1])
    with pytest.raises(RouteRefused, match=r"source variables without a rebuilt one: 'a/kernel' "
                                           r"\(5, 3\), 'a/bias' \(3,\); rebuilt variables "
                                           r"without a source one: 'a/kernel' \(5, 4\), "
                                           r"'a/bias' \(4,\)"):
        pairing.assign_values(b, pairing.variable_paths(a), [_np(v.value) for v in a.variables])


def _built_out_of_order():
    """A model whose sub-layers are built in another order than they were created, and
    whose own weights are created in another order than they are set as attributes."""

    class Gate(L.Layer):
        def build(self, shape):
            first = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="a")
            second = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="b")
            self.b, self.a = second, first  # attribute order: b, a; creation order: a, b

        def call(self, x):
            return x * self.a + self.b

    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.late = L.Dense(4, name="late")  # created first, built (called) last
            self.gate = Gate(name="gate")
            self.early = L.Dense(4, name="early")

        def call(self, x):
            return self.late(self.gate(self.early(x)))

    model = Net()
    model(_inputs()[1])
    return model


def test_variables_built_out_of_order_are_matched_by_path():
    model = _built_out_of_order()
    rebuilt = recipe.rebuild_model(recipe.describe_model(model))
    paths = pairing.variable_paths(model)
    assert pairing.variable_paths(rebuilt) != paths  # the rebuild lists them in another order
    assert sorted(pairing.variable_paths(rebuilt)) == sorted(paths)
    ordered = pairing.assign_values(rebuilt, paths, [_np(v.value) for v in model.variables])
    assert [v.path for v in ordered] == paths
    for x in _inputs().values():
        np.testing.assert_allclose(_np(rebuilt(x)), _np(model(x)), atol=1e-6)


def test_path_pairing_falls_back_to_order_only_for_what_paths_cannot_tell():
    same = lambda i, j: True  # noqa: E731
    # unique full paths pair whatever their order; the renamed ones pair in order
    assert pairing.pair_by_path(["m/x/k", "m/dense_3/k", "m/dense_4/k"],
                              ["m/dense/k", "m/x/k", "m/dense_1/k"], same) == {
        0: 1, 1: 0, 2: 2}
    # a model renamed at the top still pairs by the rest of the path
    assert pairing.pair_by_path(["a/x/k", "a/y/k"], ["b/y/k", "b/x/k"], same) == {0: 1, 1: 0}
    # shapes (or classes) that do not fit are never paired, even in order
    shapes = [(3,), (4,)], [(4,), (2,)]
    assert pairing.pair_by_path(["p", "q"], ["r", "s"],
                              lambda i, j: shapes[0][i] == shapes[1][j]) == {1: 0}

    # auto-numbered names (seed generators numbered per process: T5 after other models)
    # pair in order among themselves even when repeated paths of the same shape sit
    # between them in another order on the rebuilt side
    theirs = ["t/att/embeddings", "seed_generator_16/state", "t/att/embeddings",
              "seed_generator_17/state"]
    ours = ["seed_generator/state", "t/att/embeddings", "seed_generator_3/state",
            "t/att/embeddings"]
    assert pairing.pair_by_path(theirs, ours, same) == {0: 1, 1: 0, 2: 3, 3: 2}


# -- state besides variables: tensors and arrays held by layers ----------------------------------
def _calibrated_model():
    """A Functional model whose config rebuilds neither its calibrated center (set after
    construction, a plain tensor) nor, without its variables, its statistics."""
    x = np.random.default_rng(5).normal(3.0, 2.0, (64, 5)).astype("float32")
    i = keras.Input((5,), name="feat")
    centered = rehost_layers.Centered(name="centered")
    given = L.Normalization(mean=[1.0, 2.0, 3.0, 4.0, 5.0], variance=[1.0, 4.0, 9.0, 1.0, 4.0],
                            name="given")
    adapted = L.Normalization(name="adapted")
    bn = L.BatchNormalization(name="bn")
    model = keras.Model(i, L.Dense(3, name="out")(bn(adapted(given(centered(i))))))
    centered.calibrate(x)
    adapted.adapt(_np(given(centered(x))))
    bn.moving_mean.assign(np.linspace(-1.0, 1.0, 5).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 5).astype("float32"))
    return model, x


def test_layer_state_outside_variables_is_carried_by_path():
    model, x = _calibrated_model()
    entries, arrays = state.layer_state(model)
    held = {(e["layer"].split("/")[-1], e["attribute"]): e for e in entries}
    assert {"centered", "given", "adapted"} == {k[0] for k in held}
    assert held[("centered", "center")]["shape"] == [5] and held[("centered", "center")]["tensor"]
    rebuilt = keras.Model.from_config(model.get_config())
    pairing.assign_values(rebuilt, pairing.variable_paths(model),
                         [_np(v.value) for v in model.variables])
    assert rebuilt.get_layer("centered").center is None  # what the config could not carry
    assert np.abs(_np(rebuilt(x)) - _np(model(x))).max() > 0.1
    assert state.restore_layer_state(rebuilt, entries, arrays) == len(entries)
    center = rebuilt.get_layer("centered").center
    assert keras.ops.is_tensor(center) and not isinstance(center, np.ndarray)
    np.testing.assert_allclose(_np(center), x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(_np(rebuilt(x)), _np(model(x)), atol=1e-5)


def test_a_tensor_attribute_travelling_by_value_comes_back_as_a_tensor():
    class Masked(L.Layer):  # a tensor set after construction, in a list too
        def call(self, x):
            return x * self.mask + self.offsets[1]

    layer = Masked(name="masked")
    layer.mask = keras.ops.convert_to_tensor(np.array([1, 0, 1, 1, 0], "float32"))
    layer.offsets = [0.0, keras.ops.ones((5,)) * 2.0]
    x = _inputs()[4]
    want = _np(layer(x))
    entries, arrays = state.layer_state(layer)
    assert [(e["attribute"], e["item"]) for e in entries] == [("mask", None), ("offsets", 1)]
    rebuilt = recipe.rebuild_model(recipe.describe_model(layer))
    assert isinstance(rebuilt.mask, np.ndarray)  # the pickle carries the values as NumPy
    state.restore_layer_state(rebuilt, entries, arrays)
    assert not isinstance(rebuilt.mask, np.ndarray) and keras.ops.is_tensor(rebuilt.mask)
    assert keras.ops.is_tensor(rebuilt.offsets[1]) and rebuilt.offsets[0] == 0.0
    np.testing.assert_allclose(_np(rebuilt(x)), want, atol=1e-6)


def test_layer_state_that_cannot_be_carried_is_refused_naming_layer_and_attribute():
    model, _ = _calibrated_model()
    entries, arrays = state.layer_state(model)
    i = keras.Input((5,), name="feat")  # rebuilt without the calibrated layer
    other = keras.Model(i, L.Dense(3, name="out")(i), name=model.name)
    with pytest.raises(RouteRefused, match=r"attribute 'center' of layer '[^']*/centered' "
                                           r"\(class Centered\) holds an array of shape \(5,\)"
                                           r".*has no layer of class Centered"):
        state.restore_layer_state(other, entries, arrays)
    wide = keras.Model.from_config(model.get_config())
    wide.get_layer("centered").center = keras.ops.zeros((7,))  # built for other inputs
    with pytest.raises(RouteRefused, match=r"attribute 'center' of layer '[^']*/centered' "
                                           r"\(class Centered\) has shape \(7,\) once rebuilt"):
        state.restore_layer_state(wide, entries, arrays)

    class Holder(L.Layer):
        def call(self, x):
            return x

    holder = Holder(name="holder")
    holder.names = np.array(["a", object()], dtype=object)
    with pytest.raises(RouteRefused, match=r"attribute 'names' of layer 'holder' \(class "
                                           r"Holder\) holds an array of Python objects"):
        state.layer_state(holder)


# -- the same, end to end: rebuilt in the child, reloaded in a fresh process ---------------------
_OTHER = {"tensorflow": "jax", "jax": "tensorflow", "torch": "tensorflow"}


def _saved_model_rehosted(model, path):
    """A SavedModel re-hosted from this backend (on PyTorch through export_model's own route)."""
    if BACKEND == "torch":
        kexport.export_model(model, path, format="tf_saved_model", verbose=False)
    else:
        rehost.rehost_export(model, path, "tf_saved_model", _OTHER[BACKEND], verbose=False)


def test_rehosted_artifact_keeps_state_its_config_loses(tmp_path, fresh_process):
    model, _ = _calibrated_model()  # Functional, importable classes: rebuilt from its config
    path = tmp_path / "sm"
    _saved_model_rehosted(model, path)
    for n, x in _inputs().items():
        got = fresh_process("saved_model_signature", str(path), "serving_default", {"feat": x})
        assert got["out"].shape == (n, 3)
        np.testing.assert_allclose(got["out"], _np(model(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.backends("torch")
def test_torch_model_built_out_of_order_with_tensor_state_reaches_saved_model(tmp_path,
                                                                             fresh_process):
    class Shifted(keras.Model):  # by value: defined here, no get_config
        def __init__(self, inner):
            super().__init__(name="shifted")
            self.inner = inner
            self.norm = L.Normalization(mean=[0.5] * 4, variance=[4.0] * 4)
            # built here: built inside the model's symbolic build, its mean and variance
            # would be PyTorch meta tensors, which have no values (the live model too)
            self.norm.build((None, 4))

        def call(self, x):
            return self.norm(self.inner(x)) * self.scale

    model = Shifted(_built_out_of_order())
    model.scale = keras.ops.convert_to_tensor(np.array([1.0, -2.0, 3.0, 0.5], "float32"))
    model(_inputs()[1])
    path = tmp_path / "sm"
    _saved_model_rehosted(model, path)
    for n, x in _inputs().items():
        got = fresh_process("saved_model_call", str(path), "serve", [x])
        assert got.shape == (n, 4)
        np.testing.assert_allclose(got, _np(model(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.backends("torch")
def test_whisper_backbone_reaches_saved_model_from_torch(tmp_path, fresh_process):
    keras_hub = pytest.importorskip("keras_hub")
    model = keras_hub.models.WhisperBackbone(  # variables built in another order per backend
        vocabulary_size=97, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        num_mels=8, max_encoder_sequence_length=16, max_decoder_sequence_length=8)
    path = tmp_path / "sm"
    _saved_model_rehosted(model, path)
    rng = np.random.default_rng(3)
    for n in BATCHES:
        feed = {"encoder_features": rng.standard_normal((n, 16, 8)).astype("float32"),
                "decoder_token_ids": rng.integers(1, 97, (n, 8)).astype("int32"),
                "decoder_padding_mask": np.ones((n, 8), "int32")}
        feed["decoder_padding_mask"][:, 6:] = 0  # real padding, a suffix
        got = fresh_process("saved_model_signature", str(path), "serving_default", feed)
        live = model({k: keras.ops.convert_to_tensor(v) for k, v in feed.items()})
        for name, want in live.items():
            np.testing.assert_allclose(got[name], _np(want), atol=1e-4, rtol=1e-4)


def test_rehost_refuses_state_it_cannot_carry_before_writing(tmp_path):
    class Tagged(keras.Model):  # a per-feature tag array of Python objects
        def __init__(self):
            super().__init__(name="tagged")
            self.dense = L.Dense(2, name="dense")

        def call(self, x):
            return self.dense(x)

    model = Tagged()
    model(_inputs()[1])
    model.tags = np.array([{"unit": "m"}, None], dtype=object)
    target = tmp_path / "sm"
    with pytest.raises(RouteRefused, match=r"attribute 'tags' of layer 'tagged' \(class Tagged\) "
                                           r"holds an array of Python objects"):
        _saved_model_rehosted(model, target)
    assert not target.exists()


def _lambda_model():
    """A Functional model with a Lambda whose function uses a module's name (``keras``):
    its Keras config keeps the code, not the name, so the host cannot infer its shape."""
    i = keras.Input((5,), name="feat")
    h = L.Dense(3, name="d")(i)
    joined = L.Lambda(lambda t: keras.ops.concatenate([t, keras.ops.tanh(t) * 2.0], axis=-1),
                      name="join")(h)
    return keras.Model(i, L.Dense(2, name="out")(joined))


def test_lambda_travels_by_value_with_the_output_shape_the_source_graph_knew():
    model = _lambda_model()
    assert "Lambda layer 'join'" in rehost.eligibility.config_json(model)[1]
    rebuilt = recipe.rebuild_model(recipe.describe_model(model))
    join = rebuilt.get_layer("join")
    assert isinstance(join, L.Lambda) and join._output_shape == (6,)
    pairing.assign_values(rebuilt, pairing.variable_paths(model),
                          [v.numpy() for v in model.variables])
    x = _inputs()[4]
    np.testing.assert_allclose(_np(rebuilt(x)), _np(model(x)), atol=1e-6)


def test_functional_model_with_lambda_is_rehosted_and_runs_in_a_fresh_process(tmp_path,
                                                                              fresh_process):
    model = _lambda_model()
    xs = _inputs()
    if BACKEND == "torch":
        path = tmp_path / "sm"
        kexport.export_model(model, path, format="tf_saved_model", verbose=False)
        outs = [fresh_process("saved_model_signature", str(path), "serving_default",
                              {"feat": xs[n]})["out"] for n in BATCHES]
    else:
        path = tmp_path / "m.pt2"
        kexport.export_model(model, path, format="torch", verbose=False)
        (res,) = fresh_process("fresh_formats:torch_run",
                               [(str(path), [[xs[n]] for n in BATCHES])])
        outs = [got for (got,) in res["outputs"]]
    for n, got in zip(BATCHES, outs, strict=True):
        assert np.shape(got) == (n, 2)
        np.testing.assert_allclose(got, _np(model(xs[n])), atol=1e-5, rtol=1e-5)
