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
   next to the Keras model's, and p50 latency at batch 1;
5. serves the ONNX artifact with ``kexport serve`` (a subprocess on a free
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


def train(seed: int = 0) -> tuple[object, object, object, float, float]:
    """A small MLP on digits; returns (model, x_test, y_test, accuracy, seconds)."""
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
    return model, x_test, y_test, accuracy, seconds


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


def export_with_cli(keras_path: str, format: str, out: str) -> tuple[int, dict]:
    """``python -m kexport export ... --json`` (verification on); (exit code, JSON)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kexport", "export", keras_path, "--format", format,
         "-o", out, "--json"], capture_output=True, text=True)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        return proc.returncode, {"ok": False, "error": {"message": proc.stderr[-800:]}}


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

    backend = keras.backend.backend()
    print(f"kexport demo on the {backend} backend")
    model, x_test, y_test, keras_acc, fit_s = train()
    print(f"trained a digits MLP in {fit_s:.1f}s; held-out accuracy {keras_acc:.4f} "
          f"({len(y_test)} images)")
    one = x_test[:1]
    keras_p50 = p50_ms(lambda: model(one, training=False), runs=50)

    rows = [["format", "size", "export s", "verified", "max abs err", "accuracy",
             "keras acc", "p50 ms (b=1)"]]
    rows.append([f"keras ({backend})", "-", "-", "-", "-", f"{keras_acc:.4f}",
                 f"{keras_acc:.4f}", f"{keras_p50:.3f}"])
    notes = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="kexport-demo-") as tmp:
        keras_path = os.path.join(tmp, "digits.keras")
        model.save(keras_path)
        for format, skip in candidate_formats(backend):
            if skip:
                notes.append(f"{format}: skipped ({skip})")
                continue
            out = os.path.join(tmp, "digits_" + format + routing.FORMATS[format].suffix)
            print(f"exporting {format} through the CLI (with verification)...", flush=True)
            code, data = export_with_cli(keras_path, format, out)
            if code != 0 or not data.get("ok"):
                failed = True
                message = (data.get("error") or {}).get("message", "verification failed")
                notes.append(f"{format}: exit code {code}: {str(message).splitlines()[0]}")
                rows.append([format, "-", "-", "FAILED", "-", "-", f"{keras_acc:.4f}", "-"])
                continue
            artifact = kexport.load(out)
            probs = artifact(x_test)[artifact.endpoints[artifact.default_endpoint].output_names[0]]
            acc = float(np.mean(np.asarray(probs).argmax(axis=1) == y_test))
            latency = p50_ms(lambda a=artifact: a(one))
            report = data["verification"]
            max_err = max(float(r["max_abs"]) for r in report["summary"])
            rows.append([format, human_size(data["size"]), f"{data['export_seconds']:.2f}",
                         "pass", f"{max_err:.2e}", f"{acc:.4f}", f"{keras_acc:.4f}",
                         f"{latency:.3f}"])
            if abs(acc - keras_acc) > 0.005:
                failed = True
                notes.append(f"{format}: accuracy differs from the Keras model's")
        print()
        print(table(rows))
        served_path = os.path.join(tmp, "digits_onnx" + routing.FORMATS["onnx"].suffix)
        if os.path.exists(served_path):
            print()
            print("serving the ONNX artifact with `kexport serve` and asking it through "
                  "tritonclient...", flush=True)
            if not serve_and_ask(served_path, model, x_test[:1], int(y_test[0])):
                failed = True
                notes.append("kexport serve: the served prediction differs from Keras's")
    for note in notes:
        print("note:", note)
    print("demo:", "FAILED" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    # The CLI's quieting (kexport.cli._quiet), applied to this process too: the
    # model is trained and the artifacts are reloaded here, not in the CLI.
    from kexport.cli._quiet import quiet_libraries

    with quiet_libraries(verbose="-v" in sys.argv[1:]):
        code = main()
    sys.exit(code)
