"""Load and faults for ``kexport serve`` (issue #18), on loopback only, bounded.

1. Trains the demo's digits MLP (``examples/demo.py``: 64 pixels -> 10 class
   probabilities), exports it to ONNX and starts ``kexport serve`` on it in a
   subprocess on a free 127.0.0.1 port.
2. **Load**: ``--clients`` threads, each with its own ``tritonclient.http``
   client, send ``--requests`` inference requests each (binary tensors, one
   image per request, a different image each time). Reports throughput and
   p50/p99 latency; every answer must equal ``kexport.load(artifact).run(...)``
   bit for bit, else it counts as an error.
3. **Faults**: the same clients send good requests mixed with malformed JSON,
   wrong datatypes, wrong shapes, bodies over ``--max-body-bytes`` and clients
   that hang up half-way through their body. Every good request must get the
   right answer, every bad one a 4xx (413 for the oversized ones), and the
   server must still answer at the end.

Exit code 0 when all of that holds. Results: printed, and written as JSON to
``--out`` (default ``benchmarks/results/serve_load.json``).

Run: ``KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/serve_load.py``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from serving import Server, send_and_close, wait_live  # noqa: E402

MODEL = "digits"


def load_demo() -> Any:
    spec = importlib.util.spec_from_file_location("kexport_demo", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def triton_request(client: Any, x: Any) -> Any:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("probs", binary_data=True)
    return client.infer(MODEL, [tensor], outputs=[out]).as_numpy("probs")


def load_phase(server: Server, images: Any, reference: Any, clients: int, requests: int,
               deadline: float) -> dict[str, Any]:
    import tritonclient.http as httpclient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        with httpclient.InferenceServerClient(server.host_port, network_timeout=60) as client:
            for i in range(requests):
                if time.monotonic() > deadline:
                    with lock:
                        errors.append("time budget spent")
                    return
                row = (k * requests + i) % len(images)
                start = time.perf_counter()
                try:
                    got = triton_request(client, images[row:row + 1])
                except Exception as e:  # counted, reported
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if not (got.dtype == reference.dtype and
                            (got == reference[row:row + 1]).all()):
                        errors.append(f"wrong answer for image {row}")

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": clients * requests, "answered": len(latencies),
            "errors": len(errors), "error_examples": errors[:5], "seconds": round(wall, 3),
            "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2)}


def fault_cases(x: Any, max_body: int) -> dict[str, tuple[bytes, dict[str, str], int | None]]:
    """kind -> (body, headers, expected status; None: the client hangs up)."""
    def request(**change: Any) -> bytes:
        item = {"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                "data": x.ravel().tolist(), **change}
        return json.dumps({"inputs": [item]}).encode()

    return {
        "malformed JSON": (request()[:-7], {}, 400),
        "wrong datatype": (request(datatype="FP64"), {}, 400),
        "wrong values (strings)": (request(data=["a"] * 64), {}, 400),
        "wrong shape": (request(shape=[1, 63], data=x.ravel().tolist()[:63]), {}, 400),
        "wrong data length": (request(data=x.ravel().tolist()[:60]), {}, 400),
        "unknown input": (request(name="image"), {}, 400),
        "oversized body": (b"[" + b"0.5," * (max_body // 4 + 16) + b"0]", {}, 413),
        "bad binary header": (request(), {"Inference-Header-Content-Length": "99999999"}, 400),
        "client hangs up mid-body": (request(), {}, None),
    }


def fault_phase(server: Server, images: Any, reference: Any, clients: int, rounds: int,
                max_body: int, deadline: float) -> dict[str, Any]:
    import httpx

    cases = fault_cases(images[0], max_body)
    plan = [("good", None)] * (rounds * len(cases)) + [(k, v) for k, v in cases.items()
                                                         for _ in range(rounds)]
    random.Random(0).shuffle(plan)
    outcome: dict[str, dict[str, int]] = {}
    failures: list[str] = []
    lock = threading.Lock()
    url = server.url + f"/v2/models/{MODEL}/infer"

    def note(kind: str, ok: bool, why: str = "") -> None:
        with lock:
            entry = outcome.setdefault(kind, {"sent": 0, "as_expected": 0})
            entry["sent"] += 1
            entry["as_expected"] += ok
            if not ok:
                failures.append(f"{kind}: {why}")

    def worker(share: list[tuple[str, Any]], k: int) -> None:
        with httpx.Client(timeout=60) as http:
            for i, (kind, case) in enumerate(share):
                if time.monotonic() > deadline:
                    note(kind, False, "time budget spent")
                    continue
                if kind == "good":
                    row = (k * 7919 + i) % len(images)
                    body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32",
                                                   "shape": [1, 64],
                                                   "data": images[row].tolist()}]}).encode()
                    reply = http.post(url, content=body)
                    if reply.status_code != 200:
                        note(kind, False, f"status {reply.status_code}: {reply.text[:200]}")
                        continue
                    (out,) = reply.json()["outputs"]
                    import numpy as np

                    got = np.asarray(out["data"], "float32").reshape(out["shape"])
                    note(kind, bool((got == reference[row:row + 1]).all()),
                         f"wrong answer for image {row}")
                    continue
                body, headers, status = case
                if status is None:
                    head = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n").encode()
                    try:
                        send_and_close(server.host_port, head + body[: len(body) // 2])
                        note(kind, True)
                    except OSError as e:
                        note(kind, False, f"{type(e).__name__}: {e}")
                    continue
                try:
                    reply = http.post(url, content=body, headers=headers)
                except httpx.HTTPError as e:
                    note(kind, False, f"{type(e).__name__}: {e}")
                    continue
                message = reply.json().get("error", "") if reply.headers.get(
                    "content-type", "").startswith("application/json") else ""
                ok = reply.status_code == status and "expected" in message.lower() \
                    and "Received" in message
                note(kind, ok, f"status {reply.status_code}: {reply.text[:200]}")

    shares = [plan[k::clients] for k in range(clients)]
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(share, k))
               for k, share in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    alive = server.alive()
    with httpx.Client(timeout=30) as http:
        live = alive and http.get(server.url + "/v2/health/live").status_code == 200
        body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                       "data": images[0].tolist()}]}).encode()
        after = live and http.post(url, content=body).status_code == 200
    return {"requests": len(plan), "seconds": round(wall, 3), "by_kind": outcome,
            "unexpected": len(failures), "unexpected_examples": failures[:5],
            "server_alive_after": bool(alive and live and after)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=100, help="per client, load phase")
    parser.add_argument("--fault-rounds", type=int, default=6,
                        help="each fault kind is sent this many times, with as many good "
                             "requests per kind")
    parser.add_argument("--max-body-bytes", type=int, default=256 * 1024)
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="time budget of both phases together")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "serve_load.json"))
    args = parser.parse_args(argv)

    import kexport
    from kexport.cli._quiet import quiet_libraries

    with quiet_libraries():
        demo = load_demo()
        model, x_test, _, accuracy, _ = demo.train()
        with tempfile.TemporaryDirectory(prefix="kexport-serve-load-") as tmp:
            path = os.path.join(tmp, f"{MODEL}.onnx")
            kexport.export_model(model, path, format="onnx", verbose=False)
            artifact = kexport.load(path)
            reference = artifact.run(artifact.default_endpoint, x_test)["probs"]
            server = Server(path, "--max-body-bytes", str(args.max_body_bytes))
            try:
                wait_live(server.url)
                deadline = time.monotonic() + args.max_seconds
                load = load_phase(server, x_test, reference, args.clients, args.requests,
                                  deadline)
                faults = fault_phase(server, x_test, reference, args.clients,
                                     args.fault_rounds, args.max_body_bytes, deadline)
            finally:
                code = server.stop()
    results = {
        "model": "digits MLP (examples/demo.py), ONNX, one image per request",
        "keras_accuracy": round(accuracy, 4),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": round(os.getloadavg()[0], 1)},
        "load": load, "faults": faults,
        "server_exit_code": code,  # -15: SIGTERM, re-raised by uvicorn after a graceful stop
    }
    ok = load["errors"] == 0 and faults["unexpected"] == 0 and faults["server_alive_after"]
    results["ok"] = ok
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print("serve_load:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
