"""Triton's generate extension for generative artifacts: token ids in, token ids out.

Request (``POST /v2/models/{name}/generate`` or ``.../generate_stream``)::

    {"input_ids": [5, 9, 2],
     "parameters": {"max_new_tokens": 8, "stop_token_ids": [0], "sampler": "greedy"}}

Reply of ``generate``: ``{"model_name", "model_version", "output_ids": [new ids]}``
(the prompt is not repeated). ``generate_stream`` answers server-sent events,
one per new token (``data: {"model_name", "model_version", "output_ids": [id]}``),
then ends; a runtime failure after the first event is a last event
``data: {"error": ...}``.

Triton's ``text_input`` needs a tokenizer, and none travels with an artifact
yet: such a request is a 400 saying token ids are expected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kexport.generation import MANIFEST_KEY, SAMPLERS
from kexport.serve._values import BadRequest

__all__ = ["PARAMETERS", "decode_generate", "event", "is_generative", "reply"]

#: ``parameters`` a request may carry (passed on to ``Artifact.generate``).
PARAMETERS = ("max_new_tokens", "stop_token_ids", "sampler", "k", "seed")


def is_generative(metadata: Mapping[str, Any]) -> bool:
    """Whether an artifact was exported with ``task="generate"``."""
    return isinstance(metadata, Mapping) and metadata.get(MANIFEST_KEY) is not None


def _ids(where: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise BadRequest(f'Expected "{where}" as a list of integer token ids. Received: '
                         f"{json.dumps(value)[:80]}")
    return value


def decode_generate(body: bytes, model: str) -> tuple[list[int], dict[str, Any]]:
    """``(prompt ids, keyword arguments of Artifact.generate)`` of one request.

    Raises:
        BadRequest: not JSON, no ``input_ids``, a ``text_input``, or parameters
            of the wrong kind (their values are checked by ``generate``).
    """
    try:
        request = json.loads(body)
    except ValueError as e:  # UnicodeDecodeError too
        raise BadRequest(f"Expected a JSON generate request. Received: invalid JSON ({e})") \
            from None
    if not isinstance(request, dict):
        raise BadRequest('Expected a JSON object {"input_ids": [...], "parameters": {...}}. '
                         f"Received: {type(request).__name__}")
    if "input_ids" not in request:
        received = ('"text_input", but no tokenizer travels with this artifact'
                    if "text_input" in request else f"keys {sorted(request)}")
        raise BadRequest(f"Model '{model}': expected token ids, "
                         f'{{"input_ids": [...], "parameters": {{...}}}}. Received: {received}')
    prompt = _ids("input_ids", request["input_ids"])
    if not prompt:
        raise BadRequest('Expected "input_ids" to hold at least one token id. Received: []')
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f'Expected "parameters" as an object. Received: '
                         f"{type(params).__name__}")
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise BadRequest(f"Expected parameters among {list(PARAMETERS)}. Received: {unknown}")
    if "stop_token_ids" in params:
        params["stop_token_ids"] = _ids("parameters.stop_token_ids", params["stop_token_ids"])
    if "sampler" in params and params["sampler"] not in SAMPLERS:
        raise BadRequest(f'Expected "parameters.sampler" among {list(SAMPLERS)}. Received: '
                         f"{json.dumps(params['sampler'])[:40]}")
    seed = params.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise BadRequest(f'Expected "parameters.seed" as an int >= 0. Received: '
                         f"{json.dumps(seed)[:40]}")
    return prompt, params


def reply(model: str, ids: list[int]) -> dict[str, Any]:
    """The JSON reply carrying ``ids``."""
    return {"model_name": model, "model_version": "1", "output_ids": ids}


def event(data: Mapping[str, Any]) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(data).encode("utf-8") + b"\n\n"
