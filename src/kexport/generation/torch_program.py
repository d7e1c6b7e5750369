"""The generative form as ``.pt2`` programs: ``prefill.pt2`` and ``decode.pt2`` in one folder.

Captured from the PyTorch backend with ``torch.export`` (batch, sequence and
cache length dynamic). Keras's torch ``slice`` with a tensor start (the
position embedding read at ``cache_update_index``) calls ``torch.narrow``,
whose start becomes an unbacked size ``torch.export`` cannot carry; while
capturing, :func:`kexport.generation.keras_torch.traceable_slices` reads such
slices with ``index_select`` instead (the same values), scoped to the capture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kexport.artifact import MANIFEST_NAME
from kexport.capture.torch_export import symbolic_sizes
from kexport.errors import CaptureError
from kexport.generation.keras_torch import traceable_slices
from kexport.generation.spec import GenerativeSpec

__all__ = ["manifest_file", "write"]


def manifest_file(folder: Path) -> Path:
    """Where the artifact's manifest lives."""
    return folder / MANIFEST_NAME


def _modules(model: Any, spec: GenerativeSpec) -> tuple[Any, Any]:
    import torch

    g = spec.cache
    dtype = getattr(torch, g.dtype)

    class Prefill(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, token_ids: Any) -> Any:
            cache = torch.zeros(g.shape(token_ids.shape[0], token_ids.shape[1]), dtype=dtype)
            logits, _, cache = self.model.call_with_cache(token_ids, cache, 0)
            return logits, cache

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, token_ids: Any, cache: Any, cache_update_index: Any) -> Any:
            logits, _, cache = self.model.call_with_cache(token_ids, cache, cache_update_index)
            return logits, cache

    return Prefill(), Decode()


def write(model: Any, spec: GenerativeSpec, folder: Path) -> None:
    """Write ``prefill.pt2`` and ``decode.pt2`` of ``model`` into ``folder`` (a new path).

    Raises:
        CaptureError: when ``torch.export`` cannot capture an endpoint.
    """
    import torch
    from torch.export import Dim

    g = spec.cache
    limit = g.context_length
    batch = Dim("batch", max=1024)
    seq = Dim("sequence", max=limit) if limit else Dim("sequence")
    length = Dim("cache_length", max=limit) if limit else Dim("cache_length")
    prefill, decode = _modules(model, spec)
    tokens = torch.zeros((2, 3), dtype=torch.int32)
    cache = torch.zeros(g.shape(2, 4), dtype=getattr(torch, g.dtype))
    index = torch.tensor(2, dtype=torch.int32)
    plans = {spec.prefill: (prefill, (tokens,), ({0: batch, 1: seq},)),
             spec.decode: (decode, (tokens[:, :1], cache, index),
                           ({0: batch}, {0: batch, 3: length}, None))}
    folder.mkdir(parents=True, exist_ok=True)
    for name, (module, args, dims) in plans.items():
        try:
            with torch.no_grad(), symbolic_sizes(), traceable_slices():
                program = torch.export.export(module, args, dynamic_shapes=dims, strict=False)
        except Exception as e:  # every capture failure becomes a typed error
            raise CaptureError(
                f"task='generate': endpoint '{name}' could not be captured with torch.export: "
                f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from e
        torch.export.save(program, os.fspath(folder / f"{name}.pt2"))
