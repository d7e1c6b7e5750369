"""Language models that generate outside Python: the generative endpoint kind.

``export_model(lm, path, format=..., task="generate")`` writes a keras_hub
``CausalLM`` as a ``prefill`` and a ``decode`` endpoint with its cache as
explicit tensors (:class:`GenerativeSpec`, recorded in the manifest);
``kexport.load(path).generate(...)`` drives them with :func:`generate`.
See docs/generation.md.
"""

from __future__ import annotations

from kexport.generation.loop import SAMPLERS, generate, prompt_rows
from kexport.generation.spec import MANIFEST_KEY, TASK, CacheGeometry, GenerativeSpec

__all__ = ["MANIFEST_KEY", "SAMPLERS", "TASK", "CacheGeometry", "GenerativeSpec", "generate",
           "prompt_rows"]
