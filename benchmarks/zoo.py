"""The model zoo: keras.applications and keras_hub architectures through every exporter.

Each zoo entry builds a real architecture from its constructor with a tiny
config and random weights (no presets, no network), with BatchNormalization
moving statistics set from data (so outputs are not vanishingly small), and
the inputs the model takes: token ids below the vocabulary, padding masks
that mask a suffix in some rows, encoder and decoder lengths that differ, a
second sequence length.

The benchmark exports each model on each backend (one process per backend and
model, ``KERAS_BACKEND`` set) to each format with kexport
(``kexport.export_model``, then ``kexport.verify`` as ``verify=True`` does)
and with Keras's own exporter (``model.export``, the baseline; called here
only, never in src/), reloads every artifact in a FRESH process with the
format's own runtime (``tf.saved_model.load``, ``onnxruntime``,
``torch.export.load``; LiteRT/OpenVINO with ``--formats``), compares it with
the live model at batch 1, batch 3 and (text models) a second sequence
length, and prints one row per cell plus a summary line per exporter::

    python benchmarks/zoo.py                                  # everything
    python benchmarks/zoo.py --backends jax --models bert,t5 --exporter kexport
    python benchmarks/zoo.py --formats tf_saved_model,onnx --json out.json

Tests import :data:`ZOO` and :func:`build` (see tests/test_zoo.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKENDS = ("tensorflow", "jax", "torch")
FORMATS = ("tf_saved_model", "onnx", "torch")
OPTIONAL_FORMATS = ("litert", "openvino")
EXPORTERS = ("kexport", "keras")
# Where each format's artifact goes inside a cell's folder.
ARTIFACT = {"tf_saved_model": "model", "onnx": "model.onnx", "torch": "model.pt2",
            "litert": "model.tflite", "openvino": "model.xml"}
# A cell is ok when every output of every case is within ATOL + RTOL * max|reference|.
ATOL, RTOL = 1e-4, 1e-3

# -- the zoo ------------------------------------------------------------------

VOCAB = 1000        # token ids are drawn from [1, VOCAB), 0 is the padding id
MAX_LEN = 64        # position-embedding capacity of the text backbones
IMAGE = (64, 64, 3)  # the applications' input size (small, yet 2x2 at the deepest stage)


@dataclass
class Entry:
    """One zoo model: ``make()`` builds it, ``inputs(batch, variant)`` feeds it."""

    family: str                       # "applications" or "keras_hub"
    make: Callable[[], Any]
    inputs: Callable[[Any, int, int], dict[str, Any] | Any]   # (rng, batch, variant)
    variants: tuple[int, ...] = (0,)  # 0: main lengths, 1: second sequence length
    notes: str = ""


@dataclass
class ZooModel:
    """A built zoo model and its cases ``{case name: inputs}``."""

    name: str
    model: Any
    cases: dict[str, Any] = field(default_factory=dict)

    def __call__(self, inputs: Any) -> dict[str, Any]:
        """The live model's outputs on ``inputs``, as ``{output name: ndarray}``."""
        import keras

        return named_outputs(self.model(inputs, training=False), keras.ops.convert_to_numpy)


def named_outputs(y: Any, to_numpy: Callable[[Any], Any]) -> dict[str, Any]:
    """Flatten a model's output structure to ``{name: ndarray}`` (dict keys, or
    ``output_<i>`` for a tensor or a list)."""
    import numpy as np

    if isinstance(y, dict):
        return {str(k): np.asarray(to_numpy(v)) for k, v in sorted(y.items())}
    if isinstance(y, (list, tuple)):
        return {f"output_{i}": np.asarray(to_numpy(v)) for i, v in enumerate(y)}
    return {"output_0": np.asarray(to_numpy(y))}


def _image(rng, batch, variant):
    """Pixel values in [0, 255] (the range the applications' preprocessing
    expects), images that differ from each other as photos do: a coarse
    random layout, per-image brightness and contrast, fine noise. (i.i.d.
    noise images all look alike to a deep CNN, so the statistics set from
    them would not fit any other image.)"""
    import numpy as np

    h, w, c = IMAGE
    coarse = rng.uniform(0, 1, size=(batch, 4, 4, c))
    x = np.kron(coarse, np.ones((1, h // 4, w // 4, 1)))
    x = x * rng.uniform(0.3, 1.0, size=(batch, 1, 1, 1)) + rng.uniform(0, 0.5, (batch, 1, 1, 1))
    x = x + 0.1 * rng.normal(size=(batch, h, w, c))
    return (np.clip(x, 0, 1) * 255).astype("float32")


def _lengths(batch: int, length: int) -> list[int]:
    """Valid lengths per row: row 0 full, the others mask a suffix."""
    return [length if r == 0 else max(1, length - (3 * r) % length) for r in range(batch)]


def _tokens(rng, batch, length, prefix=""):
    import numpy as np

    mask = np.zeros((batch, length), dtype="int32")
    for r, n in enumerate(_lengths(batch, length)):
        mask[r, :n] = 1
    ids = rng.integers(1, VOCAB, size=(batch, length)).astype("int32") * mask
    return {f"{prefix}token_ids": ids, f"{prefix}padding_mask": mask}


SEQ = (12, 7)            # decoder-only / encoder-only lengths, per variant
ENC_DEC = ((12, 8), (9, 5))  # T5 / Whisper (encoder, decoder) lengths, per variant


def _text(rng, batch, variant):
    return _tokens(rng, batch, SEQ[variant])


def _bert(rng, batch, variant):
    import numpy as np

    x = _tokens(rng, batch, SEQ[variant])
    seg = np.zeros_like(x["token_ids"])
    seg[:, SEQ[variant] // 2:] = 1
    x["segment_ids"] = seg * x["padding_mask"]
    return x


def _t5(rng, batch, variant):
    enc, dec = ENC_DEC[variant]
    return {**_tokens(rng, batch, enc, "encoder_"), **_tokens(rng, batch, dec, "decoder_")}


WHISPER_MELS = 16


def _whisper(rng, batch, variant):
    enc, dec = ENC_DEC[variant]
    # 2x frames: the encoder's second convolution has stride 2
    feats = rng.normal(size=(batch, 2 * enc, WHISPER_MELS)).astype("float32")
    return {"encoder_features": feats, **_tokens(rng, batch, dec, "decoder_")}


def _app(ctor_name, **kwargs):
    def make():
        import keras

        ctor = getattr(keras.applications, ctor_name)
        return ctor(weights=None, input_shape=IMAGE, classes=10, classifier_activation=None,
                    **kwargs)
    return make


def _hub(ctor_name, **config):
    def make():
        import keras_hub

        return getattr(keras_hub.models, ctor_name)(**config)
    return make


def _bert_classifier():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(**_BERT)
    return keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=None)


_BERT = dict(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=32,
             intermediate_dim=64, max_sequence_length=MAX_LEN)
_DECODER = dict(vocabulary_size=VOCAB, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                hidden_dim=32, intermediate_dim=64)

ZOO: dict[str, Entry] = {
    "mobilenet_v2": Entry("applications", _app("MobileNetV2", alpha=0.35), _image),
    "mobilenet_v3_small": Entry("applications", _app("MobileNetV3Small", alpha=0.75,
                                                     minimalistic=True), _image),
    "efficientnet_b0": Entry("applications", _app("EfficientNetB0"), _image),
    "resnet50": Entry("applications", _app("ResNet50"), _image),
    "densenet121": Entry("applications", _app("DenseNet121"), _image),
    "convnext_tiny": Entry("applications", _app("ConvNeXtTiny"), _image),
    "bert": Entry("keras_hub", _hub("BertBackbone", **_BERT), _bert, (0, 1)),
    "distil_bert": Entry("keras_hub", _hub("DistilBertBackbone", **_BERT), _text, (0, 1)),
    "roberta": Entry("keras_hub", _hub("RobertaBackbone", **_BERT), _text, (0, 1)),
    "gpt2": Entry("keras_hub", _hub("GPT2Backbone", **_BERT), _text, (0, 1)),
    "gemma": Entry("keras_hub", _hub("GemmaBackbone", head_dim=8, **_DECODER), _text, (0, 1)),
    "gemma3": Entry("keras_hub", _hub("Gemma3Backbone", image_size=16, head_dim=8,
                                      use_sliding_window_attention=True, sliding_window_size=4,
                                      **_DECODER), _text, (0, 1),
                    "sliding window 4 < sequence lengths"),
    "llama": Entry("keras_hub", _hub("LlamaBackbone", **_DECODER), _text, (0, 1)),
    "mistral": Entry("keras_hub", _hub("MistralBackbone", sliding_window=4, **_DECODER), _text,
                     (0, 1), "sliding window 4 < sequence lengths"),
    "vit": Entry("keras_hub", _hub("ViTBackbone", image_shape=IMAGE, patch_size=8, num_layers=2,
                                   num_heads=2, hidden_dim=32, mlp_dim=64), _image),
    "t5": Entry("keras_hub", _hub("T5Backbone", vocabulary_size=VOCAB, num_layers=2, num_heads=2,
                                  hidden_dim=32, intermediate_dim=64, key_value_dim=16), _t5,
                (0, 1), "encoder and decoder lengths differ"),
    "whisper": Entry("keras_hub", _hub("WhisperBackbone", vocabulary_size=VOCAB, num_layers=2,
                                       num_heads=2, hidden_dim=32, intermediate_dim=64,
                                       num_mels=WHISPER_MELS, max_encoder_sequence_length=MAX_LEN,
                                       max_decoder_sequence_length=MAX_LEN), _whisper, (0, 1),
                     "encoder frames and decoder lengths differ"),
    "bert_classifier": Entry("keras_hub", _bert_classifier, _bert, (0, 1),
                             "BertTextClassifier on a tiny backbone, preprocessor=None"),
}


def calibrate_batch_norm(model: Any, sample: Any) -> int:
    """Set every BatchNormalization layer's moving statistics from data.

    Random initialisation leaves moving mean 0 / variance 1, so a deep CNN's
    inference output shrinks or explodes. One inference-mode pass over
    ``sample`` in which each BatchNormalization layer, when called, first sets
    its moving mean and variance to the statistics of the input it receives
    (the layers run in order, so each one sees inputs already normalised by
    the ones before it), as a trained model's statistics follow its data.
    Returns the number of layers calibrated.
    """
    import keras

    layers = [la for la in _all_layers(model) if isinstance(la, keras.layers.BatchNormalization)]

    def measuring(layer):
        original = layer.call

        def call(inputs, *args, **kwargs):
            axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
            axis = [a % len(inputs.shape) for a in axis]
            reduce = [i for i in range(len(inputs.shape)) if i not in axis]
            x = keras.ops.cast(inputs, "float32")
            mean = keras.ops.mean(x, axis=reduce)
            var = keras.ops.var(x, axis=reduce)
            layer.moving_mean.assign(keras.ops.reshape(mean, layer.moving_mean.shape))
            layer.moving_variance.assign(keras.ops.reshape(var, layer.moving_variance.shape))
            return original(inputs, *args, **kwargs)
        return original, call

    saved = []
    for la in layers:
        original, call = measuring(la)
        saved.append((la, original))
        la.call = call
    try:
        model(sample, training=False)
    finally:
        for la, _ in saved:
            del la.call  # back to the class's method
    return len(layers)


def _all_layers(model: Any) -> list[Any]:
    seen, out, stack = set(), [], [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        stack.extend(getattr(layer, "_layers", None) or getattr(layer, "layers", None) or [])
    return out


def build(name: str, seed: int = 0) -> ZooModel:
    """Build zoo entry ``name`` with random weights (seeded) and its cases:
    ``b1`` and ``b3`` (batch 1 and 3), plus ``b3_len2`` (batch 3 at the second
    sequence length) for the text models."""
    import keras
    import numpy as np

    entry = ZOO[name]
    # as in a user's fresh script: layer and variable names do not depend on
    # the models built before in this process
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = entry.make()
    rng = np.random.default_rng(seed)
    calibrate_batch_norm(model, entry.inputs(np.random.default_rng(seed + 100), 32, 0))
    cases = {"b1": entry.inputs(rng, 1, 0), "b3": entry.inputs(rng, 3, 0)}
    if 1 in entry.variants:
        cases["b3_len2"] = entry.inputs(rng, 3, 1)
    return ZooModel(name, model, cases)


# -- one backend, one model: export every cell (runs with KERAS_BACKEND set) -----

class CellTimeout(Exception):
    pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {line}"[:300] if line else type(e).__name__


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    files = [path, *path.parent.glob(path.name + ".data"), *path.parent.glob(path.stem + ".bin")]
    return sum(f.stat().st_size for f in files if f.is_file())


def _sample_data(zm: ZooModel) -> Any:
    """The model's own batch-3 case as kexport's sample data (``--sample-data``, as a
    user passes ``sample_data=``/``--data``), else ``None``: generated check inputs."""
    return zm.cases["b3"] if os.environ.get("KEXPORT_ZOO_SAMPLE_DATA") == "1" else None


def export_cell(zm: ZooModel, exporter: str, fmt: str, path: Path, verify: bool) -> dict:
    """Export ``zm.model`` to ``path``; return timing and the verdict so far."""
    import kexport

    t = time.perf_counter()
    try:
        if exporter == "keras":
            zm.model.export(str(path), format=fmt, verbose=False)
        else:
            kexport.export_model(zm.model, path, format=fmt, verbose=False,
                                 sample_data=_sample_data(zm))
    except CellTimeout:
        raise
    except Exception as e:  # the verdict names it
        return {"stage": "export", "error": _first_line(e), "export_s": time.perf_counter() - t}
    out = {"export_s": round(time.perf_counter() - t, 2), "size": _size(path)}
    if exporter == "kexport" and verify:
        # what ``export_model(..., verify=True)`` runs after the export, timed apart
        t = time.perf_counter()
        try:
            report = kexport.verify(zm.model, path, data=_sample_data(zm))
            if not report.ok:
                out.update(stage="verify", error=_first_line(
                    kexport.errors.VerificationError(str(report))))
        except CellTimeout:
            raise
        except Exception as e:
            out.update(stage="verify", error=_first_line(e))
        out["verify_s"] = round(time.perf_counter() - t, 2)
    return out


def _alarm(signum, frame):
    raise CellTimeout()


def save_cases(zm: ZooModel, work: Path) -> None:
    """Store ``zm``'s cases and the live model's outputs on them in ``work``
    (``cases.npz`` + ``cases.json``), for :func:`reload_and_compare`."""
    import keras
    import numpy as np

    arrays, meta = {}, {"inputs": {}, "outputs": {}}
    for case, x in zm.cases.items():
        names = [getattr(t, "name", "input").split(":")[0]
                 for t in keras.tree.flatten(getattr(zm.model, "inputs", []) or [])]
        flat = x if isinstance(x, dict) else {(names or ["input"])[0]: x}
        for k, v in flat.items():
            arrays[f"in/{case}/{k}"] = v
        meta["inputs"][case] = list(flat)
        ref = zm(x)
        for k, v in ref.items():
            arrays[f"out/{case}/{k}"] = v
        meta["outputs"][case] = list(ref)
    meta["input_order"] = [getattr(t, "name", "").split(":")[0]
                           for t in keras.tree.flatten(getattr(zm.model, "inputs", []) or [])]
    meta["params"] = int(sum(np.prod(w.shape) for w in zm.model.weights))
    Path(work).mkdir(parents=True, exist_ok=True)
    np.savez(Path(work) / "cases.npz", **arrays)
    (Path(work) / "cases.json").write_text(json.dumps(meta))


def child_export(args) -> None:
    """Build one model on this backend, store its cases, export each cell."""
    work = Path(args.work)
    results = work / "export.jsonl"
    done = set()
    if results.exists():
        done = {(r["exporter"], r["format"]) for r in map(json.loads, results.open())}
    t = time.perf_counter()
    zm = build(args.model)
    build_s = round(time.perf_counter() - t, 2)
    if not (work / "cases.npz").exists():
        save_cases(zm, work)
    signal.signal(signal.SIGALRM, _alarm)
    for cell in args.cells.split(","):
        exporter, fmt = cell.split(":")
        if (exporter, fmt) in done:
            continue
        path = work / exporter / fmt / ARTIFACT[fmt]
        shutil.rmtree(path.parent, ignore_errors=True)
        path.parent.mkdir(parents=True)
        with (work / "started").open("w") as f:
            f.write(cell)
        signal.alarm(args.timeout)
        try:
            res = export_cell(zm, exporter, fmt, path, not args.no_verify)
        except CellTimeout:
            res = {"stage": "timeout", "error": f"export took over {args.timeout} s"}
        except BaseException as e:
            res = {"stage": "export", "error": _first_line(e),
                   "trace": traceback.format_exc()[-2000:]}
        finally:
            signal.alarm(0)
        res.update(exporter=exporter, format=fmt, build_s=build_s, path=str(path),
                   sample_data=exporter == "kexport" and _sample_data(zm) is not None)
        with results.open("a") as f:
            f.write(json.dumps(res) + "\n")


# -- reload in a fresh process with the format's own runtime (no Keras) ---------

def _match(got: list[tuple[str, Any]], want: dict[str, Any]) -> dict[str, Any]:
    """Pair runtime outputs with the reference's: by name, else by position, else by shape."""
    named = dict(got)
    if set(want) <= set(named):
        return {k: named[k] for k in want}
    if len(got) == len(want) and all(g.shape == w.shape for (_, g), w in
                                     zip(got, want.values())):
        return {k: g for k, (_, g) in zip(want, got)}
    pairs, free = {}, list(got)
    for k, w in want.items():
        hit = next((i for i, (_, g) in enumerate(free) if g.shape == w.shape), None)
        if hit is not None:
            pairs[k] = free.pop(hit)[1]
    return pairs


def _feeds(names: list[str], dtypes: list[Any], inputs: dict[str, Any], order: list[str]):
    """The runtime's inputs in its own order: by name where they match, else by position."""
    import numpy as np

    if set(names) == set(inputs):
        vals = [inputs[n] for n in names]
    elif len(names) == len(inputs) == 1:
        vals = list(inputs.values())
    else:
        vals = [inputs[n] for n in (order or sorted(inputs))][:len(names)]
    return [np.asarray(v).astype(d) if d is not None else v for v, d in zip(vals, dtypes)]


def _runner(fmt: str, path: str):
    """``run(inputs: dict, order) -> [(name, ndarray)]`` with the format's own runtime."""
    import numpy as np

    if fmt == "tf_saved_model":
        import tensorflow as tf

        fn = tf.saved_model.load(path).signatures["serving_default"]
        specs = fn.structured_input_signature[1]
        names = list(specs)

        def run(inputs, order):
            vals = _feeds(names, [specs[n].dtype.as_numpy_dtype for n in names], inputs, order)
            out = fn(**{n: tf.constant(v) for n, v in zip(names, vals)})
            return [(k, v.numpy()) for k, v in out.items()]
        return run
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ins = sess.get_inputs()
        types = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64",
                 "tensor(bool)": "bool", "tensor(double)": "float64"}

        def run(inputs, order):
            names = [i.name for i in ins]
            vals = _feeds(names, [types.get(i.type) for i in ins], inputs, order)
            outs = sess.run(None, dict(zip(names, vals)))
            return [(o.name, v) for o, v in zip(sess.get_outputs(), outs)]
        return run
    if fmt == "torch":
        import torch

        program = torch.export.load(path)
        module = program.module()
        user = [s.arg.name for s in program.graph_signature.input_specs
                if s.kind.name == "USER_INPUT"]
        nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        dtypes = [str(nodes[n].meta["val"].dtype).replace("torch.", "") if n in nodes
                  and "val" in nodes[n].meta else None for n in user]

        def run(inputs, order):
            vals = _feeds(user, dtypes, inputs, order)
            with torch.no_grad():
                y = module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in vals])
            leaves, _ = torch.utils._pytree.tree_flatten(y)
            if isinstance(y, dict):
                return [(k, y[k].numpy()) for k in y]
            return [(f"output_{i}", t.detach().numpy()) for i, t in enumerate(leaves)]
        return run
    if fmt == "litert":
        import tensorflow as tf

        it = tf.lite.Interpreter(model_path=path)
        key = next(iter(it.get_signature_list()))
        runner = it.get_signature_runner(key)
        details = runner.get_input_details()

        def run(inputs, order):
            names = list(details)
            vals = _feeds(names, [details[n]["dtype"] for n in names], inputs, order)
            return list(runner(**dict(zip(names, vals))).items())
        return run
    if fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run(inputs, order):
            names = [p.get_any_name() for p in compiled.inputs]
            vals = _feeds(names, [None] * len(names), inputs, order)
            res = compiled(vals)
            return [(o.get_any_name(), np.asarray(res[o])) for o in compiled.outputs]
        return run
    raise ValueError(f"unknown format {fmt!r}")


def reload_and_compare(work: str | Path, fmt: str, path: str) -> dict[str, Any]:
    """Reload the artifact at ``path`` with ``fmt``'s own runtime (no Keras, no
    kexport), run every case stored by :func:`save_cases` in ``work`` and
    compare with the live model's outputs (a sequence output where the inputs'
    padding mask keeps the position: padded positions are undefined, by kexport's
    rule, :mod:`kexport.check.padding`, for both exporters alike). Returns ``{"errors": {case: max abs
    error}, "scale": {case: max |reference|}}``, plus ``stage`` and ``error``
    (the first failure) when a case fails or does not run."""
    import numpy as np

    from kexport.check.padding import drop_padded, kept_positions, padding_masks

    work = Path(work)
    meta = json.loads((work / "cases.json").read_text())
    stored = np.load(work / "cases.npz")
    out: dict[str, Any] = {"errors": {}, "scale": {}}
    try:
        t = time.perf_counter()
        run = _runner(fmt, path)
        out["load_s"] = round(time.perf_counter() - t, 2)
    except Exception as e:
        return {"stage": "load", "error": _first_line(e)}
    for case, names in meta["inputs"].items():
        inputs = {n: stored[f"in/{case}/{n}"] for n in names}
        want = {n: stored[f"out/{case}/{n}"] for n in meta["outputs"][case]}
        try:
            got = _match(run(inputs, meta.get("input_order", [])), want)
        except Exception as e:
            out.update(stage="run", error=f"[{case}] " + _first_line(e))
            break
        missing = [k for k in want if k not in got or got[k].size != want[k].size]
        if missing:
            out.update(stage="mismatch", error=f"[{case}] outputs {missing} missing or of "
                       f"another shape: {[tuple(v.shape) for v in got.values()]} vs "
                       f"{[tuple(v.shape) for v in want.values()]}")
            break
        masks = padding_masks(inputs)
        errs, scale = {}, {}
        for k in want:
            w, g, _ = drop_padded(want[k], got[k].reshape(want[k].shape),
                                  kept_positions(masks, k, want[k].shape))
            errs[k] = float(np.max(np.abs(g.astype("float64") - w))) if w.size else 0.0
            scale[k] = float(np.max(np.abs(w))) if w.size else 0.0
        out["errors"][case], out["scale"][case] = max(errs.values()), max(scale.values())
        bad = [k for k in want if not errs[k] <= ATOL + RTOL * scale[k]]
        if bad and "stage" not in out:
            out.update(stage="mismatch", error=f"[{case}] {bad[0]}: max abs error "
                       f"{errs[bad[0]]:.3g} (reference max {scale[bad[0]]:.3g})")
    return out


# -- the driver -----------------------------------------------------------------

def _env(backend: str | None) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    if backend:
        env["KERAS_BACKEND"] = backend
    return env


def _child(argv: list[str], backend: str | None, timeout: float) -> tuple[int, str]:
    try:
        p = subprocess.run([sys.executable, __file__, *argv], env=_env(backend),
                           capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"") + (e.stderr or b"")
        return -9, text.decode(errors="replace") if isinstance(text, bytes) else text


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith(
        ("I0000", "W0000", "WARNING: All log"))]
    return " | ".join(lines[-2:])[-300:]


def run_model(backend: str, name: str, cells: list[tuple[str, str]], work: Path,
              timeout: int, no_verify: bool, log) -> list[dict]:
    """Every cell of one model on one backend: exports (one child, restarted after a
    crash or a timeout), then one fresh reload child per exported artifact."""
    work.mkdir(parents=True, exist_ok=True)
    results = work / "export.jsonl"
    for _attempt in range(len(cells) + 1):
        done = {(r["exporter"], r["format"]) for r in map(json.loads, results.open())} \
            if results.exists() else set()
        todo = [c for c in cells if c not in done]
        if not todo:
            break
        (work / "started").unlink(missing_ok=True)
        argv = ["--_export", "--model", name, "--work", str(work), "--timeout", str(timeout),
                "--cells", ",".join(f"{e}:{f}" for e, f in todo)]
        argv += ["--no-verify"] if no_verify else []
        rc, text = _child(argv, backend, timeout * len(todo) + 300)
        if rc != 0:
            started = (work / "started").read_text() if (work / "started").exists() else None
            if started is None:  # the build itself failed: every cell fails alike
                err = _tail(text) or f"exit {rc}"
                with results.open("a") as f:
                    for e, fm in todo:
                        f.write(json.dumps({"exporter": e, "format": fm, "stage": "build",
                                            "error": err}) + "\n")
                break
            e, fm = started.split(":")
            if (e, fm) not in {(r["exporter"], r["format"]) for r in map(json.loads,
                                                                         results.open())}:
                stage = "timeout" if rc == -9 else "crash"
                with results.open("a") as f:
                    f.write(json.dumps({"exporter": e, "format": fm, "stage": stage,
                                        "error": f"exit {rc}: {_tail(text)}"}) + "\n")
    rows = []
    for r in map(json.loads, results.open()):
        if (r["exporter"], r["format"]) not in cells:
            continue
        row = {"model": name, "backend": backend, **{k: r.get(k) for k in (
            "format", "exporter", "export_s", "verify_s", "size", "stage", "error")}}
        if "path" in r and Path(r["path"]).exists():
            rc, text = _child(["--_reload", "--work", str(work), "--format", r["format"],
                               "--path", r["path"]], None, timeout)
            rel = next((json.loads(ln) for ln in reversed(text.strip().splitlines())
                        if ln.startswith("{")), None)
            if rel is None:
                rel = {"stage": "timeout" if rc == -9 else "reload",
                       "error": f"exit {rc}: {_tail(text)}"}
            row["errors"] = rel.get("errors", {})
            row["scale"] = rel.get("scale", {})
            row["max_error"] = max(row["errors"].values()) if row["errors"] else None
            if rel.get("stage") and not row.get("stage"):
                row["stage"], row["error"] = rel["stage"], rel["error"]
            elif rel.get("stage"):  # keep the export's verdict; the reload's too
                row["reload"] = f"{rel['stage']}: {rel['error']}"
        row["verdict"] = "ok" if not row.get("stage") else f"{row['stage']}: {row['error']}"
        rows.append(row)
        log(row)
    return rows


def _fmt_row(r: dict) -> str:
    size = f"{r['size'] / 2**20:.2f}" if r.get("size") else "-"
    err = f"{r['max_error']:.1e}" if r.get("max_error") is not None else "-"
    t = f"{r['export_s']:.1f}" if r.get("export_s") is not None else "-"
    return (f"{r['model']:<18} {r['backend']:<10} {r['format']:<14} {r['exporter']:<7} "
            f"{t:>8} {size:>8} {err:>8}  {r['verdict'][:160]}")


HEADER = (f"{'model':<18} {'backend':<10} {'format':<14} {'exporter':<7} {'export s':>8} "
          f"{'MiB':>8} {'max err':>8}  verdict")


def summary(rows: list[dict]) -> list[str]:
    lines = []
    for ex in EXPORTERS:
        mine = [r for r in rows if r["exporter"] == ex]
        if mine:
            ok = sum(r["verdict"] == "ok" for r in mine)
            per = ", ".join(f"{b} {sum(r['verdict'] == 'ok' for r in mine if r['backend'] == b)}"
                            f"/{sum(r['backend'] == b for r in mine)}"
                            for b in BACKENDS if any(r["backend"] == b for r in mine))
            lines.append(f"zoo[{ex}]: {ok} ok / {len(mine)} cells ({per})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", "--backends", dest="backends", default=",".join(BACKENDS))
    ap.add_argument("--formats", default=",".join(FORMATS),
                    help=f"of {FORMATS + OPTIONAL_FORMATS}; .pt2 ('torch') only on torch")
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--exporter", choices=("kexport", "keras", "both"), default="both")
    ap.add_argument("--json", help="write every row here (no local paths)")
    ap.add_argument("--work", help="artifacts folder (default: a temporary one, removed)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    ap.add_argument("--no-verify", action="store_true", help="skip kexport.verify after export")
    ap.add_argument("--sample-data", action="store_true",
                    help="give kexport the model's own batch-3 inputs as sample_data (its "
                         "checks then run on them, as with --data), not generated inputs")
    # internal: the per-backend child processes
    ap.add_argument("--_export", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_reload", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--cells", help=argparse.SUPPRESS)
    ap.add_argument("--format", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--markdown", nargs="+", metavar="JSON",
                    help="print the rows of these --json files as Markdown tables and exit")
    args = ap.parse_args(argv)
    if args.sample_data:  # the per-model children inherit it
        os.environ["KEXPORT_ZOO_SAMPLE_DATA"] = "1"
    if args.markdown:
        print(markdown([r for f in args.markdown for r in json.loads(Path(f).read_text())]))
        return 0
    if args._export:
        child_export(args)
        return 0
    if args._reload:
        print(json.dumps(reload_and_compare(args.work, args.format, args.path)))
        return 0
    models = args.models.split(",")
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        ap.error(f"unknown models {unknown}; the zoo has {list(ZOO)}")
    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kexport-zoo-"))
    rows: list[dict] = []
    logged: list[dict] = []
    print(HEADER, flush=True)

    def log(row):
        print(_fmt_row(row), flush=True)
        logged.append(row)
        if args.json:  # written as it goes: a long run can be read while it runs
            Path(args.json).write_text(json.dumps(_public(logged), indent=1) + "\n")

    try:
        for backend in args.backends.split(","):
            fmts = [f for f in args.formats.split(",") if f != "torch" or backend == "torch"]
            cells = [(e, f) for f in fmts for e in exporters]
            for name in models:
                rows += run_model(backend, name, cells, work / backend / name, args.timeout,
                                  args.no_verify, log)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    for line in summary(rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(_public(rows), indent=1) + "\n")
    return 0


def _cell_md(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["verdict"] == "ok":
        size = f"{r['size'] / 2**20:.2f} MiB" if r.get("size") else "-"
        return f"ok ({r['export_s']:.1f} s, {size}, err {r['max_error']:.1e})"
    return r["verdict"].replace("|", "\\|").replace("\n", " ")[:220]


def markdown(rows: list[dict]) -> str:
    """The rows as one Markdown table per backend, kexport next to Keras's exporter."""
    out = []
    # a later file's row replaces an earlier one for the same cell (a re-run)
    by = {(r["backend"], r["model"], r["format"], r["exporter"]): r for r in rows}
    rows = list(by.values())
    for b in BACKENDS:
        mine = [r for r in rows if r["backend"] == b]
        if not mine:
            continue
        out += [f"### {b}", "", "| model | format | kexport | Keras's exporter |", "|---|---|---|---|"]
        seen = []
        for r in mine:
            if (r["model"], r["format"]) not in seen:
                seen.append((r["model"], r["format"]))
        for m, f in seen:
            out.append(f"| {m} | {f} | {_cell_md(by.get((b, m, f, 'kexport')))} | "
                       f"{_cell_md(by.get((b, m, f, 'keras')))} |")
        out += ["", *summary(mine), ""]
    return "\n".join(out)


def _public(rows: list[dict]) -> list[dict]:
    """Rows without local paths (error texts may quote the artifact's folder)."""
    import re

    out = []
    for r in rows:
        r = dict(r)
        for k in ("error", "verdict", "reload"):
            if isinstance(r.get(k), str):
                r[k] = re.sub(r"(/[\w.\-]+)+/(model(\.\w+)?)", r"<artifact>", r[k])
        out.append(r)
    return out


if __name__ == "__main__":
    sys.exit(main())
