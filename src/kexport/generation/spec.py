"""The generative endpoint kind, as data: a prefill and a decode endpoint joined by a cache.

An artifact exported with ``task="generate"`` records one :class:`GenerativeSpec`
in its manifest (key ``generation``). It says which endpoints prefill and
decode, the names of their tensors, and the cache's geometry, so that any
runtime's :meth:`kexport.runtime.Artifact.generate` can drive them without
knowing the model (see docs/generation.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from kexport.errors import ArtifactError, UnsupportedRouteError

__all__ = ["MANIFEST_KEY", "TASK", "CacheGeometry", "GenerativeSpec", "generation_summary"]

#: The ``task`` of :func:`kexport.export_model` that writes the generative form.
TASK = "generate"
#: The manifest key holding the :class:`GenerativeSpec`.
MANIFEST_KEY = "generation"


@dataclass(frozen=True)
class CacheGeometry:
    """The key/value cache of a decoder, as keras_hub's ``call_with_cache`` has it.

    The cache is one tensor ``[batch, num_layers, 2, length, kv_heads, head_dim]``;
    ``length_axis`` is the axis that grows with the sequence.

    Attributes:
        num_layers: decoder layers.
        kv_heads: key/value heads per layer.
        head_dim: size of one head.
        dtype: the cache's dtype (the model's compute dtype).
        vocab_size: size of the logits' last axis.
        context_length: the longest sequence the model takes (prompt plus new
            tokens), ``None`` when the model has no such limit.
        length_axis: the cache axis indexed by position.
    """

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: str
    vocab_size: int
    context_length: int | None = None
    length_axis: int = 3

    def shape(self, batch: int | None, length: int | None) -> tuple[int | None, ...]:
        """The cache's shape for ``batch`` sequences of ``length`` positions."""
        return (batch, self.num_layers, 2, length, self.kv_heads, self.head_dim)


@dataclass(frozen=True)
class GenerativeSpec:
    """A prefill/decode pair of endpoints with an explicit cache.

    ``prefill(token_ids[B, S]) -> logits[B, S, V], cache[B, L, 2, S, H, D]``
    seeds the cache from position 0; ``decode(token_ids[B, 1], cache[B, L, 2, M, H, D],
    cache_update_index[]) -> logits[B, 1, V], cache`` writes position
    ``cache_update_index`` (positions come from that scalar, as in keras_hub).

    Attributes:
        cache: the cache geometry.
        prefill: the prefill endpoint's name.
        decode: the decode endpoint's name.
        names: role -> tensor name (``token_ids``, ``cache``, ``index``,
            ``logits``, ``cache_out``).
        family: the keras_hub class the artifact came from (informational).
        verification: the stored verdict of the token check, when made.
        convention: ``"keras_cache"`` (the two endpoints above) or
            ``"past_key_values"``: one endpoint for both, in optimum's and
            onnxruntime-genai's interface (``input_ids``, ``attention_mask``,
            ``past_key_values.{i}.key/.value`` ``[B, H, P, D]`` -> ``logits``,
            ``present.{i}.key/.value``), ``"stateful"`` (that endpoint with the
            cache as its state) or ``"litert_lm"``: fixed-shape ``prefill_{N}``
            and ``decode`` signatures in LiteRT-LM's names (``tokens``,
            ``input_pos``, ``kv_cache_k_{i}``/``kv_cache_v_{i}``, see
            :mod:`kexport.generation.litert_lm`); :func:`kexport.generation.generate`
            drives them all.
        engine: the runtime's own generation engine that the token check also
            drove (``"onnxruntime-genai"``), or ``""``.
    """

    cache: CacheGeometry
    prefill: str = "prefill"
    decode: str = "decode"
    names: Mapping[str, str] = field(default_factory=lambda: {
        "token_ids": "token_ids", "cache": "cache", "index": "cache_update_index",
        "logits": "logits", "cache_out": "cache"})
    family: str = ""
    verification: Mapping[str, Any] | None = None
    convention: str = "keras_cache"
    engine: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able object (the manifest's ``generation`` entry)."""
        out = asdict(self)
        out["names"] = dict(self.names)
        if self.verification is None:
            out.pop("verification")
        return out

    @classmethod
    def from_json(cls, data: Any) -> GenerativeSpec:
        """Inverse of :meth:`to_json`.

        Raises:
            ArtifactError: when ``data`` is not a generation entry kexport wrote.
        """
        try:
            cache = CacheGeometry(**data["cache"])
            rest = {k: data[k] for k in ("prefill", "decode", "names", "family",
                                         "verification", "convention", "engine") if k in data}
            return cls(cache=cache, **rest)
        except (KeyError, TypeError) as e:
            raise ArtifactError(
                "Expected the manifest's `generation` entry to describe prefill/decode "
                f"endpoints and a cache. Received: {data!r:.200} ({e})") from e

    @classmethod
    def of_metadata(cls, metadata: Mapping[str, Any], path: str = "") -> GenerativeSpec:
        """The spec an artifact's metadata records.

        Raises:
            UnsupportedRouteError: when the artifact has no generative endpoints.
        """
        data = metadata.get(MANIFEST_KEY) if isinstance(metadata, Mapping) else None
        if data is None:
            raise UnsupportedRouteError(
                f"Expected an artifact exported with task={TASK!r} (prefill and decode "
                f"endpoints with a cache). Received: '{path}', whose endpoints "
                f"{sorted(metadata.get('endpoints', {})) if isinstance(metadata, Mapping) else []} "
                "compute a forward pass only. Export it again with "
                f"kexport.export_model(lm, path, task={TASK!r}).")
        return cls.from_json(data)


def generation_summary(metadata: Mapping[str, Any]) -> list[str]:
    """Lines for ``kexport inspect``: the stored token check of a generative artifact."""
    data = metadata.get(MANIFEST_KEY) if isinstance(metadata, Mapping) else None
    record = data.get("verification") if isinstance(data, Mapping) else None
    if not isinstance(record, Mapping):
        return [] if data is None else ["generation: no token check stored"]

    def line(what: str, r: Mapping[str, Any]) -> str:
        rows = r.get("rows", [])
        lengths = [x.get("prompt_length") for x in rows]
        bad = [x for x in rows if not x.get("equal")]
        return (f"  {what}: {'PASS' if r.get('passed') else 'FAIL'}, greedy tokens "
                f"{'equal to' if not bad else 'differ from'} lm.generate() for prompts of "
                f"lengths {lengths}, {r.get('max_new_tokens')} new tokens"
                + (f" (first differences {[x.get('first_difference') for x in bad]})"
                   if bad else ""))

    lines = [f"generation ({data.get('family') or 'CausalLM'}, checked against the live "
             f"model on {record.get('live_backend', metadata.get('backend', '?'))}):",
             line("kexport's loop", record)]
    engine = record.get("engine")
    if isinstance(engine, Mapping):
        lines.append(line(f"{data.get('engine') or 'the runtime'}'s own engine", engine))
    return lines
