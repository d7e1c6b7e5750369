"""``task="generate"`` in a cell whose backend has no generative writer: re-hosted.

The generative writers are per (backend, format)
(:data:`kexport.generation.export.WRITERS`). From another backend the model
travels with the re-host machinery (:func:`~kexport.rehost.serialize.serialize`,
one :class:`~kexport.rehost.job.Job` of mode ``"generate"`` run by the host's
worker), the child writes the generative form with the host's writer, and the
parent checks the staged artifact against the *live* model (greedy tokens of
``lm.generate()`` on the source backend, in a fresh process, through kexport's
loop and the format's engine) before placing it. See docs/generation.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from kexport import _atomic
from kexport.errors import UnsupportedRouteError
from kexport.generation.export import (
    WRITERS,
    check_staged,
    check_task,
    export_generative,
    refusal,
    say,
)
from kexport.generation.model import cache_geometry
from kexport.generation.spec import GenerativeSpec
from kexport.rehost.eligibility import check_rehostable
from kexport.rehost.job import Job
from kexport.rehost.placement import place
from kexport.rehost.serialize import serialize
from kexport.rehost.worker import run_child

__all__ = ["MODE", "export_task", "host_for"]

#: The job mode of a generative re-host (the child calls ``export_generative`` unchecked).
MODE = "generate"
#: Hosts tried for a format, in this order.
_HOSTS = ("torch", "tensorflow")


def host_for(format: str) -> str | None:
    """The backend whose generative writer writes ``format``, if any."""
    return next((b for b in _HOSTS if (b, format) in WRITERS), None)


def export_task(model: Any, filepath: str | os.PathLike[str], format: str, task: Any, *,
                verbose: bool | None = None, overwrite: bool = False,
                **options: Any) -> GenerativeSpec:
    """``export_model(..., task=...)``: natively where the backend writes ``format``, else
    re-hosted onto the backend that does.

    Raises:
        SignatureError, SignatureTypeError: an unknown task or option.
        UnsupportedRouteError: no backend writes ``format`` generatively, or the
            model cannot generate with a cache or cannot travel.
        VerificationError: the artifact's greedy tokens differ from the live model's.
    """
    import keras

    check_task(task, options)
    backend = keras.backend.backend()
    if (backend, format) in WRITERS:
        return export_generative(model, filepath, format=format, verbose=verbose,
                                 overwrite=overwrite, **options)
    host = host_for(format)
    if host is None:
        raise UnsupportedRouteError(refusal(format, backend))
    return _rehost(model, filepath, format, host, verbose, overwrite,
                   int(options.get("max_new_tokens", 8)))


def _rehost(model: Any, filepath: str | os.PathLike[str], format: str, host: str,
            verbose: bool | None, overwrite: bool, max_new_tokens: int) -> GenerativeSpec:
    import keras
    import numpy as np

    cache_geometry(model)  # a model that cannot generate is refused before it travels
    _atomic.check_destination(filepath, overwrite)
    check_rehostable([model], host)
    target = Path(os.fspath(filepath))
    with tempfile.TemporaryDirectory(prefix="kexport-rehost-") as tmpdir:
        work = Path(tmpdir)
        os.chmod(work, 0o700)
        files, modules = serialize([model], host, work)
        np.savez(work / "inputs.npz")
        (work / "out").mkdir()
        out = work / "out" / (target.name or "artifact")
        job = Job(format=format, host=host, source_backend=keras.backend.backend(), mode=MODE,
                  models=tuple(files), imports=tuple(modules), output=str(out), verbose=False,
                  endpoints=(), cases={}, kwargs={"max_new_tokens": max_new_tokens})
        run_child(job, work)
        spec = check_staged(model, out, format, max_new_tokens)
        place(out, filepath, overwrite=overwrite)
    if verbose is not False:
        say(print, spec, format, filepath, f" (re-hosted onto {host})")
    return spec
