"""The HTTP application: FastAPI routes for both protocols, run by uvicorn.

Imported only when an app is built (FastAPI is imported here at the top, so
that FastAPI resolves the route annotations).

Every request that reaches a route gets a JSON answer (``generate_stream``:
server-sent events once its first token is chosen): 200, 400 for a
request the model cannot take (the message names what was expected and what
was received), 404 for an unknown model or version, 408 for a body that
does not arrive in time, 413 for a body over the limit. Inference runs in a
thread pool so the event loop keeps answering health checks; artifacts
whose runtime is not thread-safe run one call at a time (a lock per
artifact).

If the runtime itself fails on a request that passed the checks (e.g. values
it refuses), the answer is a 400 naming the runtime's error with local paths
removed; an error in the server's own code is a 500 naming only the error
type. Neither stops the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from kexport._version import __version__
from kexport.errors import SignatureError
from kexport.serve import _generate, _tfs, _v2
from kexport.serve._models import Served, ServedModel
from kexport.serve._values import BadRequest, scrub

__all__ = ["build_app"]

log = logging.getLogger("kexport.serve")


def _error(status: int, message: str) -> Any:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Any, limit: int, timeout: float) -> bytes:
    """The body, refusing more than ``limit`` bytes (413) or a body that stalls (408)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"Expected a numeric Content-Length. Received: {declared!r}") \
                from None
        if size > limit:
            raise BadRequest(f"Expected a body of at most {limit} bytes (--max-body-bytes). "
                             f"Received: Content-Length {size}", status=413)
    chunks, total = [], 0

    async def collect() -> None:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise BadRequest(f"Expected a body of at most {limit} bytes "
                                 f"(--max-body-bytes). Received: more", status=413)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        raise BadRequest(f"Expected the request body within {timeout:g} s. Received: "
                         f"{total} bytes by then", status=408) from None
    return b"".join(chunks)


def build_app(artifacts: dict[str, Served], models: dict[str, ServedModel], *,
              max_body_bytes: int, workers: int, body_timeout: float = 30.0) -> Any:
    """A FastAPI app serving ``models`` (see :func:`kexport.serve.create_app`)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kexport-serve")
    app = FastAPI(title="kexport serve", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.models = models
    app.state.artifacts = artifacts
    app.state.pool = pool
    app.router.on_shutdown.append(lambda: pool.shutdown(wait=False, cancel_futures=True))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:  # unknown routes
        return _error(exc.status_code, f"Expected a route of the Open Inference Protocol "
                      f"(/v2/...) or TF-Serving's REST API (/v1/models/...). Received: "
                      f"{request.method} {request.url.path} ({exc.detail})")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        return _error(400, f"Expected a valid request. Received: {exc.errors()!r}"[:500])

    def model(name: str, version: str | None = None) -> ServedModel:
        if name not in models:
            raise BadRequest(f"Expected a model name, one of {sorted(models)}. Received: "
                             f"{name!r}", status=404)
        if version not in (None, "", "1"):
            raise BadRequest(f"Model '{name}': expected version 1 (the only one). Received: "
                             f"{version!r}", status=404)
        return models[name]

    async def answer(work: Callable[[], Any]) -> Any:
        """Run ``work`` and map what it raises to an answer; the server keeps serving."""
        try:
            return await work()
        except BadRequest as e:
            return _error(e.status, str(e))
        except ClientDisconnect:
            return Response(status_code=400)  # nobody left to read it
        except SignatureError as e:
            return _error(400, scrub(str(e)))
        except Exception as e:  # a bug of ours must not stop the server
            log.error("kexport serve: internal error %s", type(e).__name__)
            return _error(500, f"Internal error ({type(e).__name__}); the server keeps "
                               "serving")

    async def infer_in_pool(served: Served, decode: Callable[[], tuple[str, Any, Any]],
                            encode: Callable[[Any, dict[str, Any]], Any]) -> Any:
        """In the pool: ``decode() -> (endpoint, feeds, context)``, run, ``encode(context,
        results)``; a runtime failure on checked inputs is the request's fault (400)."""
        def job() -> Any:
            endpoint, feeds, context = decode()
            try:
                results = served.run(endpoint, feeds)
            except (BadRequest, SignatureError):
                raise
            except Exception as e:  # the runtime refused this request
                raise BadRequest(f"Model '{served.name}': the {served.artifact.format} "
                                 f"runtime refused the request: {type(e).__name__}: "
                                 f"{scrub(str(e))}") from None
            return encode(context, results)

        return await asyncio.get_running_loop().run_in_executor(pool, job)

    # -- Open Inference Protocol (KServe v2) ----------------------------------
    @app.get("/v2/health/live")
    async def live() -> Any:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata() -> Any:
        return {"name": "kexport", "version": __version__,
                "extensions": ["binary_tensor_data", "generate"]}

    def metadata(m: ServedModel) -> dict[str, Any]:
        return {"name": m.name, "versions": ["1"],
                "platform": f"kexport_{m.served.artifact.format}",
                "inputs": [_v2.tensor_metadata(s) for s in m.endpoint.inputs],
                "outputs": [_v2.tensor_metadata(s) for s in m.endpoint.outputs]}

    def config(m: ServedModel) -> dict[str, Any]:
        def entries(specs: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "data_type": "TYPE_" + _v2.tensor_metadata(s)["datatype"]
                     .replace("BYTES", "STRING"), "dims": _v2.tensor_metadata(s)["shape"]}
                    for s in specs]
        return {"name": m.name, "platform": f"kexport_{m.served.artifact.format}",
                "max_batch_size": 0, "input": entries(m.endpoint.inputs),
                "output": entries(m.endpoint.outputs)}

    async def get_metadata(name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            return metadata(model(name, version))
        return await answer(work)

    async def get_ready(name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            return {"name": model(name, version).name, "ready": True}
        return await answer(work)

    async def get_config(name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            return config(model(name, version))
        return await answer(work)

    async def infer(request: Request, name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            m = model(name, version)
            body = await _read_body(request, max_body_bytes, body_timeout)
            header = request.headers.get("inference-header-content-length")
            if request.headers.get("content-encoding", "identity") != "identity":
                raise BadRequest("Expected an uncompressed body. Received: Content-Encoding "
                                 f"{request.headers['content-encoding']!r}", status=415)

            def decode() -> tuple[str, Any, Any]:
                feeds, wanted, request_id = _v2.decode_request(body, header, m.endpoint)
                return m.endpoint.name, feeds, (wanted, request_id)

            def encode(context: Any, results: dict[str, Any]) -> Any:
                content, headers = _v2.encode_response(m.name, results, *context)
                return Response(content, headers=headers)

            return await infer_in_pool(m.served, decode, encode)
        return await answer(work)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, get_metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", get_ready, methods=["GET"])
        app.add_api_route(prefix + "/config", get_config, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])

    # -- Triton's generate extension (generative artifacts) -------------------
    def generative(name: str, version: str | None) -> ServedModel:
        m = model(name, version)
        artifact = m.served.artifact
        if not _generate.is_generative(artifact.metadata):
            raise BadRequest(
                f"Model '{name}': expected an artifact exported with task='generate' for "
                f"/generate and /generate_stream. Received: a {artifact.format} artifact "
                f"whose endpoints {sorted(artifact.endpoints)} compute a forward pass; "
                f"POST /v2/models/{name}/infer runs it")
        return m

    def generation(m: ServedModel, prompt: list[int], params: dict[str, Any],
                   on_token: Callable[[int, int], None] | None = None) -> list[int]:
        """In the pool: the new ids of one prompt; one generation at a time per
        artifact whose runtime is not thread-safe."""
        try:
            with m.served.lock:
                row = m.served.artifact.generate([prompt], on_token=on_token, **params)[0]
        except (BadRequest, SignatureError):
            raise
        except Exception as e:  # the runtime refused this request
            raise BadRequest(f"Model '{m.name}': the {m.served.artifact.format} runtime "
                             f"refused the request: {type(e).__name__}: {scrub(str(e))}") \
                from None
        return [int(t) for t in row[len(prompt):]]

    async def generate(request: Request, name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            m = generative(name, version)
            body = await _read_body(request, max_body_bytes, body_timeout)
            prompt, params = _generate.decode_generate(body, m.name)
            ids = await asyncio.get_running_loop().run_in_executor(
                pool, lambda: generation(m, prompt, params))
            return _generate.reply(m.name, ids)
        return await answer(work)

    async def generate_stream(request: Request, name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            m = generative(name, version)
            body = await _read_body(request, max_body_bytes, body_timeout)
            prompt, params = _generate.decode_generate(body, m.name)
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

            def put(kind: str, value: Any) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

            def job() -> None:
                try:
                    generation(m, prompt, params, lambda row, token: put("token", token))
                except Exception as e:
                    put("error", e)
                else:
                    put("end", None)

            loop.run_in_executor(pool, job)
            first = await queue.get()  # a request generate refuses is still a 4xx
            if first[0] == "error":
                raise first[1]

            async def events() -> Any:
                kind, value = first
                while kind == "token":
                    yield _generate.event(_generate.reply(m.name, [value]))
                    kind, value = await queue.get()
                if kind == "error":
                    known = isinstance(value, (BadRequest, SignatureError))
                    yield _generate.event({"error": scrub(str(value)) if known else
                                           f"Internal error ({type(value).__name__})"})

            return StreamingResponse(events(), media_type="text/event-stream")
        return await answer(work)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix + "/generate", generate, methods=["POST"])
        app.add_api_route(prefix + "/generate_stream", generate_stream, methods=["POST"])

    # -- TF-Serving REST ------------------------------------------------------
    async def predict(request: Request, name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            m = model(name, version)
            artifact = m.served.artifact
            body = await _read_body(request, max_body_bytes, body_timeout)

            def decode() -> tuple[str, Any, Any]:
                endpoint, feeds, form = _tfs.decode_predict(body, artifact.endpoints,
                                                            m.endpoint.name)
                return endpoint.name, feeds, (endpoint, form)

            def encode(context: Any, results: dict[str, Any]) -> Any:
                return Response(_tfs.encode_predict(*context, results=results),
                                media_type="application/json")

            return await infer_in_pool(m.served, decode, encode)
        return await answer(work)

    async def status(name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            model(name, version)
            return {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                              "status": {"error_code": "OK",
                                                         "error_message": ""}}]}
        return await answer(work)

    async def tf_metadata(name: str, version: str | None = None) -> Any:
        async def work() -> Any:
            m = model(name, version)
            return {"model_spec": {"name": m.name, "signature_name": "", "version": "1"},
                    "metadata": _tfs.signature_metadata(m.served.artifact.endpoints)}
        return await answer(work)

    for prefix in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
        app.add_api_route(prefix + ":predict", predict, methods=["POST"])
        app.add_api_route(prefix + "/metadata", tf_metadata, methods=["GET"])
        app.add_api_route(prefix, status, methods=["GET"])

    return app
