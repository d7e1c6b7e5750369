"""The bad-input catalogue: one row per bad input, each a typed error with a clear message.

Every row of ``CATALOGUE`` is also a row of the table in docs/reliability.md
(``test_docs_table_lists_every_row`` keeps them in step). Property-based tests
generate signature structures and CLI argument lists and show that only
typed kexport errors (or a usage exit code) ever escape.

Backend-independent: runs in the TensorFlow run only.
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kexport
from kexport import routing
from kexport.signature import Spec, normalize, normalize_for_model

pytestmark = pytest.mark.backends("tensorflow")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def mlp() -> keras.Model:
    i = keras.Input((3,), name="x")
    return keras.Model(i, keras.layers.Dense(2, name="y")(i))


def archive_with(endpoint: str | None = "serve") -> kexport.ExportArchive:
    archive = kexport.ExportArchive()
    model = mlp()
    archive.track(model)
    if endpoint:
        archive.add_endpoint(endpoint, model.call, [keras.InputSpec(shape=(None, 3))])
    return archive


class Unbuilt(keras.Model):
    def call(self, x):
        return x


class Tensorish:
    """A tensor-like object with any dtype (Keras's own specs validate theirs)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __repr__(self):
        return f"Tensorish({self.shape}, {self.dtype!r})"


def spec(*shape, dtype="float32"):
    return keras.InputSpec(shape=shape, dtype=dtype)


def declared_tf_function():
    """A ``tf.function`` with its own input_signature: (None, 3) float32."""
    import tensorflow as tf

    return tf.function(lambda x: x * 2.0,
                       input_signature=[tf.TensorSpec((None, 3), tf.float32)])


# (id, function, call, expected type, message pattern)
CATALOGUE = [
    ("export: model is not a Keras model", "export_model",
     lambda p: kexport.export_model("model.keras", p), kexport.SignatureTypeError,
     r"Expected `model` to be a Keras model or layer\. Received: 'model.keras' \(of type str\)"),
    ("export: filepath of the wrong type", "export_model",
     lambda p: kexport.export_model(mlp(), 42), kexport.SignatureTypeError,
     r"Expected `filepath` to be a non-empty str or pathlib\.Path\. Received: 42 \(of type int\)"),
    ("export: empty filepath", "export_model",
     lambda p: kexport.export_model(mlp(), ""), kexport.SignatureError,
     r"Expected `filepath` to be a non-empty str"),
    ("export: verbose not a bool", "export_model",
     lambda p: kexport.export_model(mlp(), p, verbose="yes"), kexport.SignatureTypeError,
     r"Expected `verbose` to be True, False or None\. Received: 'yes'"),
    ("export: overwrite not a bool", "export_model",
     lambda p: kexport.export_model(mlp(), p, overwrite=1), kexport.SignatureTypeError,
     r"Expected `overwrite` to be True or False\. Received: 1 \(of type int\)"),
    ("export: unknown format, did-you-mean", "export_model",
     lambda p: kexport.export_model(mlp(), p, format="onxx"), kexport.UnknownFormatError,
     r"Expected `format` to be one of \[.*\]\. Received: format='onxx'\. Did you mean 'onnx'\?"),
    ("export: format not a str", "export_model",
     lambda p: kexport.export_model(mlp(), p, format=None), kexport.UnknownFormatError,
     r"Expected `format` to be one of .* Received: format=None"),
    ("export: unbuilt subclassed model", "export_model",
     lambda p: kexport.export_model(Unbuilt(), p), kexport.SignatureError,
     r"Cannot infer the input signature of Unbuilt .*never called or built"),
    ("export: signature does not match the inputs", "export_model",
     lambda p: kexport.export_model(mlp(), p, input_signature=[spec(None, 3), spec(None, 4)]),
     kexport.SignatureError, r"Expected `input_signature` to match the inputs of model"),
    ("export: signature leaf not a spec", "export_model",
     lambda p: kexport.export_model(mlp(), p, input_signature=["x"]), kexport.SignatureTypeError,
     r"Expected each leaf of `input_signature` to be a keras\.InputSpec.*Received: 'x'"),
    ("export: unknown dtype", "export_model",
     lambda p: kexport.export_model(mlp(), p, input_signature=[Tensorish((2, 3), "float99")]),
     kexport.SignatureError, r"Expected a tensor dtype\. Received: dtype='float99'"),
    ("export: negative dimension", "export_model",
     lambda p: kexport.export_model(mlp(), p, input_signature=[Spec((None, -3))]),
     kexport.SignatureError, r"non-negative int or None\. Received: shape=\(None, -3\)"),
    ("export: spec without a shape", "export_model",
     lambda p: kexport.export_model(mlp(), p, input_signature=[keras.InputSpec(ndim=2)]),
     kexport.SignatureError, r"Expected keras\.InputSpec with a full `shape`"),
    ("export: empty signature", "export_model",
     lambda p: kexport.export_model(mlp(), p, input_signature=[]), kexport.SignatureError,
     r"Expected a non-empty `input_signature`"),
    ("export: unknown keyword argument", "export_model",
     lambda p: kexport.export_model(mlp(), p, frobnicate=True), kexport.SignatureTypeError,
     r"unexpected keyword arguments .*\['frobnicate'\]"),
    ("export: invalid ONNX opset", "export_onnx",
     lambda p: kexport.export_onnx(mlp(), p + ".onnx", opset_version=3), kexport.SignatureError,
     r"opset"),
    ("export: target holds other data", "export_model",
     lambda p: (Path(p).write_text("mine"), kexport.export_model(mlp(), p)),
     kexport.TargetExistsError, r"which is a file that is not a kexport artifact.*overwrite=True"),
    ("export: a parent of filepath is a file", "export_model",
     lambda p: (Path(p).write_text("mine"), kexport.export_model(mlp(), p + "/a/model")),
     kexport.WriteError, r"Expected every path component above the artifact to be a folder\. "
     r"Received: filepath='.*/out/a/model' where '.*/out' is a file, not a folder"),
    ("archive: empty endpoint name", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint("", mlp().call, [spec(None, 3)]),
     kexport.SignatureError, r"Expected the endpoint `name` to be a non-empty str\. Received: ''"),
    ("archive: endpoint name escaping the folder (../x)", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint("../x", mlp().call, [spec(None, 3)]),
     kexport.SignatureError, r"Python identifier .*no path separators.*Received: '\.\./x'"),
    ("archive: absolute endpoint name (/etc/x)", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint("/etc/x", mlp().call, [spec(None, 3)]),
     kexport.SignatureError, r"Python identifier .*Received: '/etc/x'"),
    ("archive: duplicate endpoint name", "ExportArchive.add_endpoint",
     lambda p: archive_with("serve").add_endpoint("serve", mlp().call, [spec(None, 3)]),
     kexport.SignatureError, r"Endpoint name 'serve' is already taken"),
    ("archive: endpoint name not a str", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint(7, mlp().call, [spec(None, 3)]),
     kexport.SignatureTypeError, r"non-empty str\. Received: 7 \(of type int\)"),
    ("archive: fn not callable", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint("serve", 3, [spec(None, 3)]),
     kexport.SignatureTypeError, r"Expected `fn` to be callable\. Received: 3"),
    ("archive: unknown input shapes", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint("serve", mlp().call), kexport.SignatureError,
     r"the shapes and dtypes of the inputs of `fn` are unknown"),
    ("archive: signature arity does not match fn", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint("serve", lambda a, b: a, [spec(None, 3)]),
     kexport.SignatureTypeError, r"one entry per positional argument of `fn` \(a, b\)"),
    ("archive: signature does not fit the tf.function's own", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint("serve", declared_tf_function(), [spec(None, 4)]),
     kexport.SignatureTypeError,
     r"own input_signature.*Expected inputs that fit \[\(None, 3\) float32\]\. "
     r"Received: \[\(None, 4\) float32\]"),
    ("archive: reserved endpoint name", "ExportArchive.add_endpoint",
     lambda p: archive_with(None).add_endpoint("variables", mlp().call, [spec(None, 3)]),
     kexport.SignatureError, r"reserved"),
    ("archive: track something untrackable", "ExportArchive.track",
     lambda p: archive_with(None).track(object()), kexport.CaptureValueError,
     r"Expected a Keras layer/model or a TensorFlow trackable resource"),
    ("archive: track an unbuilt layer", "ExportArchive.track",
     lambda p: archive_with(None).track(keras.layers.Dense(2)), kexport.CaptureValueError,
     r"Expected a built layer or model"),
    ("archive: collection of non-variables", "ExportArchive.add_variable_collection",
     lambda p: archive_with().add_variable_collection("extra", [1, 2]), kexport.SignatureError,
     r"Expected `variables` to be a list/tuple/set of keras\.Variable or tf\.Variable"),
    ("archive: collection name escaping (a/b)", "ExportArchive.add_variable_collection",
     lambda p: archive_with().add_variable_collection("a/b", []), kexport.SignatureError,
     r"Python identifier"),
    ("archive: write_out with no endpoint", "ExportArchive.write_out",
     lambda p: archive_with(None).write_out(p), kexport.SignatureError,
     r"Expected at least one endpoint before write_out\(\)"),
    ("archive: write_out unknown format", "ExportArchive.write_out",
     lambda p: archive_with().write_out(p, format="saved_model"), kexport.UnknownFormatError,
     r"Did you mean 'tf_saved_model'\?"),
    ("archive: write_out bad options", "ExportArchive.write_out",
     lambda p: archive_with().write_out(p, options={"a": 1}, verbose=False),
     kexport.SignatureTypeError, r"Expected `options` to be a tf\.saved_model\.SaveOptions"),
    ("load: path that does not exist", "load",
     lambda p: kexport.load(p + "/missing"), kexport.ArtifactError, r"does not exist"),
    ("load: not an artifact (text file)", "load",
     lambda p: (Path(p).write_text("hello"), kexport.load(p)), kexport.ArtifactError,
     r"Expected a kexport artifact .* which none of the runtimes recognises"),
    ("load: path of the wrong type", "load",
     lambda p: kexport.load(3), kexport.ArtifactError,
     r"Expected `path` to be a non-empty str or pathlib\.Path\. Received: 3"),
    ("load: unknown format", "load",
     lambda p: kexport.load(p, format="onxx"), kexport.UnknownFormatError, r"onxx"),
    ("verify: not an artifact", "verify",
     lambda p: (Path(p).mkdir(), kexport.verify(mlp(), p)), kexport.ArtifactError,
     r"Expected a kexport artifact"),
    ("routes: unknown format", "routing.resolve",
     lambda p: routing.resolve("tensorflow", "tflite"), kexport.UnknownFormatError,
     r"Received: format='tflite'"),
    ("routes: unknown backend", "routing.resolve",
     lambda p: routing.resolve("mxnet", "onnx"), kexport.UnsupportedRouteError,
     r"from the mxnet backend is not available"),
]


# The built-in type of each row: what Keras 3.15's exporter raises for the same misuse
# (keras/src/export, keras/src/models/model.py: TypeError for a signature leaf that is not a
# spec or tensor and for a model that is not a keras.Model, ValueError for unknown formats,
# duplicate names, unknown shapes, no endpoint, untrackable or unbuilt resources...), or,
# where Keras does not check, Python's own (TypeError: wrong argument type, unexpected
# keyword argument, wrong number of arguments). docs/reliability.md shows it per row.
BUILTIN = {
    "export: model is not a Keras model": TypeError,
    "export: filepath of the wrong type": TypeError,
    "export: verbose not a bool": TypeError,
    "export: overwrite not a bool": TypeError,
    "export: signature leaf not a spec": TypeError,
    "export: unknown keyword argument": TypeError,
    "export: target holds other data": FileExistsError,
    "export: a parent of filepath is a file": OSError,
    "archive: endpoint name not a str": TypeError,
    "archive: fn not callable": TypeError,
    "archive: signature arity does not match fn": TypeError,
    "archive: signature does not fit the tf.function's own": TypeError,
    "archive: write_out bad options": TypeError,
    "routes: unknown backend": NotImplementedError,
}


def builtin_of(case: str) -> type[BaseException]:
    return BUILTIN.get(case, ValueError)


@pytest.mark.parametrize(("case", "function", "call", "error", "message"), CATALOGUE,
                         ids=[row[0] for row in CATALOGUE])
def test_catalogue(tmp_path, case, function, call, error, message):
    """Each row: its kexport class AND the built-in type Keras raises, same message."""
    with pytest.raises(error, match=message) as info:
        call(str(tmp_path / "out"))
    assert isinstance(info.value, kexport.KexportError)
    builtin = builtin_of(case)
    (tmp_path / "again").mkdir()
    with pytest.raises(builtin, match=message) as again:
        call(str(tmp_path / "again" / "out"))
    assert isinstance(again.value, error)
    assert isinstance(info.value, builtin), (case, type(info.value).__mro__)


def test_keras_style_handlers_still_catch():
    """Code written for keras.export: `except TypeError` / `except ValueError` keep working."""
    archive = archive_with(None)
    model = mlp()
    try:
        archive.add_endpoint("serve", model.call, input_signature=(123,))
    except TypeError as e:  # what Keras raises for a leaf that is not a spec or tensor
        assert isinstance(e, kexport.SignatureTypeError) and isinstance(e, ValueError)
        assert "Expected each leaf of `input_signature` to be a keras.InputSpec" in str(e)
        assert "Received: 123 (of type int)" in str(e)
    else:
        raise AssertionError("a non-spec leaf must be refused")
    for call, pattern in [
        (lambda: archive.track(object()), "Expected a Keras layer/model"),
        (lambda: archive.add_endpoint("serve", model.call), "are unknown"),
        (lambda: archive.write_out("x"), "Expected at least one endpoint"),
        (lambda: kexport.export_model(model, "x", format="onxx"), "Did you mean 'onnx'"),
    ]:
        with pytest.raises(ValueError, match=pattern) as info:
            call()
        assert isinstance(info.value, kexport.KexportError)
    archive.add_endpoint("serve", model.call, [spec(None, 3)])
    with pytest.raises(ValueError, match="already taken"):
        archive.add_endpoint("serve", model.call, [spec(None, 3)])


def test_docs_table_names_each_builtin():
    """docs/reliability.md: the built-in column of each row is the one tested here."""
    rows = {line.split(" | ")[0].lstrip("| "): line for line in DOCS.read_text().splitlines()
            if line.startswith("| ") and " | `" in line}
    wrong = [case for case, *_ in CATALOGUE
             if f"| `{builtin_of(case).__name__}` |" not in rows.get(case, "")]
    assert wrong == []


def test_bad_keras_files_catalogue(tmp_path):
    """Corrupted, truncated and hostile .keras files (the rows 'keras file: ...')."""
    from kexport._keras_file import load_keras_file
    from test_reliability import keras_file_cases

    for path, message in keras_file_cases(tmp_path):
        with pytest.raises(kexport.ArtifactError, match=re.escape(message)):
            load_keras_file(path)


def _cli(argv: list[str]) -> tuple[int, str]:
    from kexport.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
    return code, out.getvalue() + err.getvalue()


def cli_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    lam = tmp_path / "lambda.keras"
    i = keras.Input((3,))
    keras.Model(i, keras.layers.Lambda(lambda t: t + 1.0)(i)).save(lam)
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    good = tmp_path / "good.keras"
    mlp().save(good)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    return [
        (["export", str(tmp_path / "missing.keras"), "-o", str(tmp_path / "o")],
         "Expected a .keras model file"),
        (["export", str(junk), "-o", str(tmp_path / "o")], "is not a zip archive"),
        (["export", str(lam), "-o", str(tmp_path / "o")], "in safe mode"),
        (["export", str(good), "-o", str(tmp_path / "o"), "--format", "onxx", "--no-verify"],
         "Did you mean 'onnx'?"),
        (["export", str(good), "-o", str(notes), "--no-verify"], "TargetExistsError"),
        (["export", str(good), "-o", str(tmp_path / "o"), "--input-signature", "{not json",
          "--no-verify"], "input-signature"),
        (["export", str(good), "-o", str(tmp_path / "o"), "--opset", "-1"], "opset"),
        (["inspect", str(notes)], "Expected a kexport artifact"),
        (["verify", str(good), str(tmp_path / "nothing")], "does not exist"),
        (["bench", str(notes)], "Expected a kexport artifact"),
        (["frobnicate"], "invalid choice"),
    ]


def test_cli_bad_input_exit_code_2(tmp_path):
    """CLI rows: every bad input exits with code 2 and names the problem."""
    if not hasattr(__import__("kexport.cli", fromlist=["main"]), "build_parser"):
        pytest.skip("the CLI has not landed")
    assert (tmp_path / "notes.txt").exists() is False
    for argv, message in cli_cases(tmp_path):
        code, text = _cli(argv)
        assert code == 2, (argv, code, text[-500:])
        assert message in text, (argv, text[-500:])
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_docs_table_lists_every_row():
    text = DOCS.read_text()
    missing = [row[0] for row in CATALOGUE if f"| {row[0]} |" not in text]
    assert missing == []


# -- property-based: only typed errors escape ------------------------------------------------
_leaf = st.one_of(
    st.builds(lambda *s: keras.InputSpec(shape=s), st.none(), st.integers(0, 4)),
    st.builds(lambda d: Tensorish((2, 3), d),
              st.sampled_from(["float32", "int32", "bool", "float99", "", "string", None, 3])),
    st.builds(lambda n: np.zeros((2, n), "float32"), st.integers(0, 3)),
    st.integers(), st.text(max_size=3), st.none(), st.floats(allow_nan=True),
    st.builds(object),
)
_structures = st.recursive(
    _leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(_structures)
def test_signature_structures_only_typed_errors(structure):
    model = mlp()
    for fn in (normalize, lambda s: normalize_for_model(model, s)):
        try:
            result = fn(structure)
        except kexport.KexportError:
            continue
        assert isinstance(result, list) and result


_cli_tokens = st.sampled_from([
    "export", "inspect", "verify", "bench", "formats", "--json", "--format", "onnx", "onxx",
    "-o", "--opset", "0", "99", "--input-signature", "[]", "{", "--batch", "-1", "--backend",
    "jax", "numpy", "--unsafe", "--overwrite", "--no-verify", "x.keras", "/nonexistent",
    "--seconds", "nan", "--endpoint", "../x", "--dim-size", "",
])


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_cli_tokens, max_size=6))
def test_cli_arguments_only_typed_errors(tmp_path_factory, argv):
    """Random argument lists: exit codes 0/1/2 only; no traceback escapes."""
    pytest.importorskip("kexport.cli._commands")
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cli"))
    try:
        code, text = _cli([a for a in argv if a != "--backend"])  # keep this process's backend
    finally:
        os.chdir(cwd)
    assert code in (0, 1, 2), (argv, code, text[-800:])
    assert "Traceback" not in text


def test_each_argument_is_checked_once_where_the_call_enters(tmp_path):
    """``filepath`` and ``verbose`` have one check each (``_atomic.check_filepath``,
    ``Printer.resolve``), made by every entry with the same message; the layers
    below only assert what the entry checked."""
    from kexport import _atomic
    from kexport.rehost import rehost_export

    expected = r"Expected `filepath` to be a non-empty str or pathlib\.Path\. Received: 42"
    for call in (lambda: kexport.export_model(mlp(), 42),
                 lambda: archive_with().write_out(42),
                 lambda: rehost_export(mlp(), 42)):
        with pytest.raises(kexport.SignatureTypeError, match=expected):
            call()
    for call in (lambda: kexport.export_model(mlp(), str(tmp_path / "a"), verbose="yes"),
                 lambda: archive_with().write_out(str(tmp_path / "b"), verbose="yes")):
        with pytest.raises(kexport.SignatureTypeError,
                           match=r"Expected `verbose` to be True, False or None"):
            call()
    with pytest.raises(AssertionError):  # a precondition below the entry, not a user error
        _atomic.check_destination(42, False)
    assert not list(tmp_path.iterdir())
