"""kexport demo: train a digits classifier, export it to every format through the CLI, compare.

Run from the repository root: ``scripts/setup.sh && .venv/bin/python examples/demo.py``.

1. trains a small classifier on scikit-learn's bundled 8x8 digits (no download);
2. saves it as ``.keras``;
3. runs ``kexport export MODEL.keras --format F`` (which verifies the artifact in
   a fresh process) for every format with a route from this backend and a
   runtime in ``kexport.load`` — discovered from the route tables, so new formats
   appear here by themselves;
4. reloads each artifact with ``kexport.load`` and prints: format, size,
   export time, max error from verification, held-out accuracy of the artifact
   next to the Keras model's, top-1 agreement and SQNR against the Keras
   model, and p50 latency at batch 1;
5. for every format that quantizes (``kexport.artifact.quantization.supported_modes``),
   one quantized row under its float row: the last mode the format writes in
   ``MODES`` order (``int8``, calibrated on 256 training images passed as
   ``--quantize int8 --calibration FILE.npz``), verified by the CLI against
   the mode's thresholds and measured the same way;
6. runs ``kexport report MODEL.keras ARTIFACT... -o report.html --data held_out.npz``
   on the model and every artifact it wrote (checked on the held-out images), and
   prints the path of that one HTML page (kept in ``$TMPDIR/kexport-demo/``, or the
   folder given as ``--report-dir DIR``);
7. serves the ONNX artifact with ``kexport serve`` (a subprocess on a free
   loopback port), sends one test image through ``tritonclient`` (the Open
   Inference Protocol, binary tensors), prints the served prediction next to
   Keras's, and stops the server.

Set ``KERAS_BACKEND`` to run it from the JAX or PyTorch backend. Like the CLI it
prints only its own lines; ``-v`` lets the frameworks print their start-up logs
and warnings too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


def train(seed: int = 0) -> tuple[object, object, object, object, float, float]:
    """A small MLP on digits; returns (model, x_train, x_test, y_test, accuracy, seconds)."""
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(seed)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y)
    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(128, activation="relu")(inputs)
    h = keras.layers.Dropout(0.2)(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, outputs, name="digits_mlp")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
    probs = keras.ops.convert_to_numpy(model(x_test, training=False))
    accuracy = float(np.mean(probs.argmax(axis=1) == y_test))
    return model, x_train, x_test, y_test, accuracy, seconds


def p50_ms(fn: object, runs: int = 200) -> float:
    """Median latency of ``fn()`` in milliseconds (after one warm-up call)."""
    import numpy as np

    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def candidate_formats(backend: str) -> list[tuple[str, str]]:
    """(format, why skipped or "") for every registered format."""
    from kexport import routing
    from kexport.runtime import runtime_formats

    out = []
    for name in routing.FORMATS:
        usable = [r for r in routing.routes(backend, name) if r.available]
        if not usable:
            out.append((name, "no route from this backend here"))
        elif name not in runtime_formats():
            out.append((name, "no kexport.load runtime yet"))
        else:
            out.append((name, ""))
    return out


def export_with_cli(keras_path: str, format: str, out: str,
                    extra: list[str] | None = None) -> tuple[int, dict]:
    """``python -m kexport export ... --json`` (verification on); (exit code, JSON)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kexport", "export", keras_path, "--format", format,
         "-o", out, "--json", *(extra or [])], capture_output=True, text=True)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        return proc.returncode, {"ok": False, "error": {"message": proc.stderr[-800:]}}


def quantized_mode(format: str) -> str | None:
    """The mode of the format's quantized row: the last of ``MODES`` it writes
    (``int8`` where it does), ``None`` for a format that does not quantize."""
    from kexport.artifact.quantization import MODES, supported_modes

    written = [m for m in MODES if m in supported_modes(format)]
    return written[-1] if written else None


def report_with_cli(keras_path: str, artifacts: list[str], page: str,
                    data: str) -> tuple[int, str]:
    """``python -m kexport report MODEL.keras ARTIFACT... -o page --json page.json
    --data data.npz`` (held-out images: the int8 artifacts are judged on real
    inputs, not generated ones)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kexport", "report", keras_path, *artifacts, "-o", page,
         "--json", os.path.splitext(page)[0] + ".json", "--data", data],
        capture_output=True, text=True)
    return proc.returncode, (proc.stdout or proc.stderr).strip()


def report_dir() -> str:
    """Where the report is kept after the demo's temporary folder is gone."""
    args = sys.argv[1:]
    if "--report-dir" in args and args.index("--report-dir") + 1 < len(args):
        return args[args.index("--report-dir") + 1]
    return os.path.join(tempfile.gettempdir(), "kexport-demo")


def serve_and_ask(artifact_path: str, model: object, image: object, label: int) -> bool:
    """``kexport serve`` the artifact, ask it about one image through tritonclient.

    Prints the served class and probability next to Keras's; True when they agree.
    """
    import keras
    import numpy as np
    import tritonclient.http as httpclient

    proc = subprocess.Popen(
        [sys.executable, "-m", "kexport", "serve", artifact_path, "--name", "digits",
         "--port", "0", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # printed once the server listens
        if not line:
            print("kexport serve did not start")
            return False
        url = json.loads(line)["url"].removeprefix("http://")
        with httpclient.InferenceServerClient(url) as client:
            deadline = time.monotonic() + 30
            while not client.is_server_ready():  # the socket queues until uvicorn accepts
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
            meta = client.get_model_metadata("digits")
            (spec,) = meta["inputs"]
            tensor = httpclient.InferInput(spec["name"], list(image.shape), spec["datatype"])
            tensor.set_data_from_numpy(image, binary_data=True)
            output = meta["outputs"][0]["name"]
            served = client.infer("digits", [tensor]).as_numpy(output)
    finally:
        proc.terminate()
        proc.wait(30)
    keras_probs = keras.ops.convert_to_numpy(model(image, training=False))
    s_class, k_class = int(served.argmax()), int(keras_probs.argmax())
    print(f"kexport serve ({url}, Open Inference Protocol via tritonclient): "
          f"class {s_class} (p={served.max():.4f})  |  Keras: class {k_class} "
          f"(p={keras_probs.max():.4f})  |  label {label}  |  max |diff| "
          f"{float(np.abs(served - keras_probs).max()):.2e}")
    return s_class == k_class and bool(np.allclose(served, keras_probs, atol=1e-5))


#: what a client sends: known and unknown words, upper case, punctuation, non-ASCII text,
#: odd whitespace and an empty string
TEXTS = ["The cat sat on the mat.", "A DOG ran in the PARK!", "naïve café — 東京",
         "", "  the\tcat\nran  ", "unknown words only"]


def text_model_in_every_format(tmp: str, notes: list[str]) -> bool:
    """A text classifier taking raw strings (TextVectorization -> Embedding -> Dense),
    exported to every format that can hold it and fed raw strings from its artifact; the
    formats that cannot hold it refuse with a typed error, writing nothing."""
    import keras
    import numpy as np

    import kexport
    from kexport.errors import KexportError

    vectorize = keras.layers.TextVectorization(max_tokens=32, output_sequence_length=6)
    vectorize.adapt(["the cat sat on the mat", "a dog ran in the park", "the cat ran"])
    text = keras.Input(shape=(), dtype="string", name="text")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(32, 8)(vectorize(text)))
    model = keras.Model(text, keras.layers.Dense(2, name="score")(x))
    want = keras.ops.convert_to_numpy(model(np.array(TEXTS, dtype=object)))
    print("a text model taking raw strings (TextVectorization), in every format:", flush=True)
    ok = True
    for format, name in [("tf_saved_model", "text_sm"), ("onnx", "text.onnx"),
                         ("openvino", "text_ov"), ("litert", "text.tflite"),
                         ("torch", "text.pt2")]:
        path = os.path.join(tmp, name)
        try:
            kexport.export_model(model, path, format=format, verbose=False)
        except KexportError as e:  # a format that cannot hold it: typed, nothing written
            written = os.path.exists(path)
            ok &= not written
            print(f"  {format:15s} refused ({type(e).__name__}), nothing written: "
                  f"{not written}")
            continue
        artifact = kexport.load(path)
        got = artifact.run(next(iter(artifact.endpoints)), {"text": np.array(TEXTS)})
        err = float(np.max(np.abs(next(iter(got.values())) - want)))
        ok &= err < 1e-5
        print(f"  {format:15s} raw strings in: max abs err {err:.1e} on {len(TEXTS)} texts")
    if not ok:
        notes.append("the text model's artifacts differ from Keras on raw strings")
    return ok


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    import keras
    import numpy as np

    import kexport
    from kexport import routing
    from kexport._summary import human_size
    from kexport.artifact.quantization import CALIBRATED
    from kexport.check.compare import quality
    from kexport.check.tolerance import QUANTIZED

    backend = keras.backend.backend()
    print(f"kexport demo on the {backend} backend")
    model, x_train, x_test, y_test, keras_acc, fit_s = train()
    print(f"trained a digits MLP in {fit_s:.1f}s; held-out accuracy {keras_acc:.4f} "
          f"({len(y_test)} images)")
    one = x_test[:1]
    keras_p50 = p50_ms(lambda: model(one, training=False), runs=50)
    keras_probs = keras.ops.convert_to_numpy(model(x_test, training=False))

    rows = [["format", "size", "export s", "verified", "max abs err", "accuracy",
             "keras acc", "top-1 agree", "SQNR dB", "p50 ms (b=1)"]]
    rows.append([f"keras ({backend})", "-", "-", "-", "-", f"{keras_acc:.4f}",
                 f"{keras_acc:.4f}", "-", "-", f"{keras_p50:.3f}"])
    notes = []
    failed = False
    quantized_s = 0.0
    written: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kexport-demo-") as tmp:
        keras_path = os.path.join(tmp, "digits.keras")
        model.save(keras_path)
        calibration = os.path.join(tmp, "calibration.npz")
        # one batch, saved without names: arr_0 is the first input (read alike by
        # every format)
        np.savez(calibration, x_train[:256])
        for format, skip in candidate_formats(backend):
            if skip:
                notes.append(f"{format}: skipped ({skip})")
                continue
            mode = quantized_mode(format)
            for quantization in (None, mode) if mode else (None,):
                label = format + (f" {quantization}" if quantization else "")
                out = os.path.join(tmp, "digits_" + format + (f"_{quantization}" if quantization
                                   else "") + routing.FORMATS[format].suffix)
                extra = []
                if quantization:
                    extra = ["--quantize", quantization]
                    if quantization in CALIBRATED:
                        extra += ["--calibration", calibration]
                print(f"exporting {label} through the CLI (with verification)...", flush=True)
                start = time.perf_counter()
                code, data = export_with_cli(keras_path, format, out, extra)
                if quantization:
                    quantized_s += time.perf_counter() - start
                if code != 0 or not data.get("ok"):
                    failed = True
                    message = (data.get("error") or {}).get("message", "verification failed")
                    notes.append(f"{label}: exit code {code}: {str(message).splitlines()[0]}")
                    rows.append([label, "-", "-", "FAILED", "-", "-", f"{keras_acc:.4f}", "-",
                                 "-", "-"])
                    continue
                written.append(out)
                artifact = kexport.load(out)
                name = artifact.endpoints[artifact.default_endpoint].output_names[0]
                probs = np.asarray(artifact(x_test)[name])
                acc = float(np.mean(probs.argmax(axis=1) == y_test))
                q = quality(keras_probs, probs, scores=True)
                latency = p50_ms(lambda a=artifact: a(one))
                report = data["verification"]
                max_err = max(float(r["max_abs"]) for r in report["summary"])
                rows.append([label, human_size(data["size"]), f"{data['export_seconds']:.2f}",
                             "pass", f"{max_err:.2e}", f"{acc:.4f}", f"{keras_acc:.4f}",
                             f"{q.top1:.4f}" if q is not None and q.top1 is not None else "-",
                             f"{q.sqnr_db:.1f}" if q is not None else "-", f"{latency:.3f}"])
                if not quantization and abs(acc - keras_acc) > 0.005:
                    failed = True
                    notes.append(f"{format}: accuracy differs from the Keras model's")
                # a quantized artifact: within its mode's top-1 threshold (the one the
                # CLI's verification applied on the calibration data), here on held-out data
                allowed = QUANTIZED[quantization].top1 if quantization else None
                if allowed is not None and (q is None or q.top1 is None or q.top1 < allowed):
                    failed = True
                    notes.append(f"{label}: top-1 agreement with the Keras model below "
                                 f"{allowed:g}")
        page = None
        if written:
            os.makedirs(report_dir(), exist_ok=True)
            page = os.path.join(report_dir(), "report.html")
            print(f"writing the report of {len(written)} artifacts through the CLI...",
                  flush=True)
            held_out = os.path.join(tmp, "held_out.npz")
            np.savez(held_out, x_test)
            code, text = report_with_cli(keras_path, written, page, held_out)
            if code != 0:
                failed = True
                failing = [line.strip() for line in text.splitlines() if "FAILED" in line]
                notes.append(f"report: exit code {code}: "
                             f"{'; '.join(failing) or (text.splitlines()[-1] if text else '')}")
        print()
        print(table(rows))
        # served while the temporary folder still holds the artifact
        served_path = os.path.join(tmp, "digits_onnx" + routing.FORMATS["onnx"].suffix)
        if os.path.exists(served_path):
            print()
            print("serving the ONNX artifact with `kexport serve` and asking it through "
                  "tritonclient...", flush=True)
            if not serve_and_ask(served_path, model, x_test[:1], int(y_test[0])):
                failed = True
                notes.append("kexport serve: the served prediction differs from Keras's")
        if backend == "tensorflow":  # Keras builds string layers on TensorFlow only
            print()
            failed |= not text_model_in_every_format(tmp, notes)
    if quantized_s:
        notes.append(f"the quantized rows' exports and checks took {quantized_s:.0f}s")
    for note in notes:
        print("note:", note)
    if page is not None and os.path.isfile(page):
        print(f"report: {page}")
    print("demo:", "FAILED" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    # The CLI's quieting (kexport.cli._quiet), applied to this process too: the
    # model is trained and the artifacts are reloaded here, not in the CLI.
    from kexport.cli._quiet import quiet_libraries

    with quiet_libraries(verbose="-v" in sys.argv[1:]):
        code = main()
    sys.exit(code)
