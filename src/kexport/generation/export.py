"""``export_model(lm, path, format=..., task="generate")``: the generative form, checked by its tokens.

One row per (backend, format) that writes the prefill/decode pair natively;
any other cell is refused with the cells that work, never written as a
forward pass. Every export is judged the way a user judges it: the artifact,
reloaded in a fresh process through ``kexport.load(...).generate``, must give
the same greedy tokens as ``lm.generate()`` for a batch of prompts of different
lengths; the verdict is stored in the manifest before the artifact is placed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from kexport import _atomic, _numerics
from kexport.artifact import Manifest
from kexport.check.report import VerificationReport
from kexport.check.verdict import Case, verdict
from kexport.errors import (
    SignatureError,
    SignatureTypeError,
    UnsupportedRouteError,
    VerificationError,
    describe,
)
from kexport.generation import litert_lm, onnx_genai, openvino_ir, saved_model, torch_program
from kexport.generation.model import cache_geometry
from kexport.generation.spec import MANIFEST_KEY, TASK, GenerativeSpec

__all__ = ["WRITERS", "check_prompts", "check_staged", "check_task", "export_generative",
           "export_task", "keras_greedy", "refusal", "say", "writable_cells"]


@dataclass(frozen=True)
class _Writer:
    module: ModuleType  # write(model, spec, folder), manifest_file(folder)

    def spec(self, spec: GenerativeSpec) -> GenerativeSpec:
        """``spec`` as this writer's format holds it (its endpoints and names)."""
        adapt = getattr(self.module, "spec_for", None)
        return adapt(spec) if adapt is not None else spec

    def entries(self, spec: GenerativeSpec) -> dict[str, dict[str, Any]]:
        """The manifest's endpoint entries."""
        return getattr(self.module, "endpoint_entries", saved_model.endpoint_entries)(spec)


#: (backend, format) -> the writer of the generative form in that cell.
WRITERS: dict[tuple[str, str], _Writer] = {
    ("tensorflow", "tf_saved_model"): _Writer(saved_model),
    ("tensorflow", "litert"): _Writer(litert_lm),
    ("torch", "torch"): _Writer(torch_program),
    ("torch", "onnx"): _Writer(onnx_genai),
    ("torch", "openvino"): _Writer(openvino_ir),
}


def writable_cells() -> list[str]:
    """``format from backend`` for every cell :data:`WRITERS` holds."""
    return [f"format={f!r} from the {b} backend" for b, f in WRITERS]


def check_prompts(vocab: int, lengths: tuple[int, ...] = (3, 6, 1), seed: int = 0
                  ) -> list[list[int]]:
    """Prompts of different lengths drawn over ``[1, vocab)`` for the token check."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=n).tolist() for n in lengths]


def keras_greedy(model: Any, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """``model.generate()`` with a greedy sampler on right-padded prompts, cut to each
    prompt plus ``max_new_tokens`` (the model's own sampler and compiled
    generate function are put back afterwards)."""
    import keras_hub
    import numpy as np

    total = max(len(p) for p in prompts) + max_new_tokens
    ids = np.zeros((len(prompts), total), "int32")
    mask = np.zeros((len(prompts), total), bool)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], mask[i, :len(p)] = p, True
    saved = model.sampler, model.generate_function
    model.sampler, model.generate_function = keras_hub.samplers.GreedySampler(), None
    try:
        out = model.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    finally:
        model.sampler, model.generate_function = saved
    tokens = np.asarray(out["token_ids"])
    return [tokens[i, :len(p) + max_new_tokens].tolist() for i, p in enumerate(prompts)]


_CHILD = """
import json, sys
import kexport
request = json.loads(sys.argv[2])
artifact = kexport.load(sys.argv[1])
rows = artifact.generate(request["prompts"], max_new_tokens=request["max_new_tokens"])
print(json.dumps({"tokens": [r.tolist() for r in rows], "runtime": artifact.format}))
"""


def run_child(path: Path, prompts: list[list[int]], max_new_tokens: int,
              script: str = _CHILD, what: str = "the artifact") -> list[list[int]]:
    """Greedy tokens of the artifact at ``path`` from ``kexport.load`` (or ``script``,
    which prints the rows last) in a fresh process.

    Raises:
        VerificationError: when the child fails.
    """
    request = json.dumps({"prompts": prompts, "max_new_tokens": max_new_tokens})
    args = [request] if script is _CHILD else [json.dumps(prompts), str(max_new_tokens)]
    done = subprocess.run([sys.executable, "-c", script, os.fspath(path), *args],
                          capture_output=True, text=True, env=_numerics.child_env(os.environ),
                          timeout=1800)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise VerificationError(
            f"task={TASK!r}: {what} could not generate in a fresh process: "
            + " | ".join(tail))
    last = json.loads(done.stdout.strip().splitlines()[-1])
    return last["tokens"] if isinstance(last, dict) else last


def _cut_at(row: list[int], start: int, stops: list[int], keep: bool) -> list[int]:
    """``row`` up to its first id of ``stops`` at or after ``start`` (kept if ``keep``)."""
    hit = next((j for j in range(start, len(row)) if row[j] in stops), None)
    return row if hit is None else row[:hit + int(keep)]


def _greedy_check(model: Any, path: Path, spec: GenerativeSpec, max_new_tokens: int,
                  format: str, writer: _Writer) -> dict[str, Any]:
    """The artifact's greedy tokens in a fresh process against ``lm.generate()``, judged
    by kexport's one verdict (token ids are integers: compared exactly, length included);
    through kexport's loop, then through the format's own engine where it has one."""
    prompts = check_prompts(spec.cache.vocab_size)
    want = keras_greedy(model, prompts, max_new_tokens)
    record = _token_record(prompts, want, run_child(path, prompts, max_new_tokens), format,
                    "greedy tokens of kexport.load(...).generate in a fresh process "
                    "against lm.generate()", max_new_tokens)
    engine = getattr(writer.module, "ENGINE", None)
    if engine:
        stops = writer.module.stop_ids(path)
        got = run_child(path, prompts, max_new_tokens, writer.module.ENGINE_CHILD, engine)
        keep = writer.module.EOS_IN_SEQUENCE  # onnxruntime-genai leaves the eos out
        cut = [_cut_at(w, len(p), stops, keep) for p, w in zip(prompts, want, strict=True)]
        record["engine"] = _token_record(
            prompts, cut, got, format,
            f"greedy tokens of {engine}'s own engine (one prompt per generator, rows end at "
            f"eos {stops}{'' if keep else ', left out'}) in a fresh process against lm.generate()", max_new_tokens)
    return record


def _token_record(prompts: list[list[int]], want: list[list[int]], got: list[list[int]], format: str,
           check: str, max_new_tokens: int) -> dict[str, Any]:
    import numpy as np

    report = verdict(VerificationReport(format, "float32", 0.0, 0.0, 0), [
        Case(TASK, f"prompt of {len(p)} tokens", {"prompt": np.asarray([p])},
             [np.asarray(w)], [np.asarray(g)], output_names=("tokens",))
        for p, w, g in zip(prompts, want, got, strict=True)])
    rows = [{"prompt_length": len(p), "equal": case.ok,
             "first_difference": next((j for j, (a, b) in enumerate(zip(w, g, strict=False))
                                       if a != b), None if len(w) == len(g) else
                                      min(len(w), len(g)))}
            for p, w, g, case in zip(prompts, want, got, report.checks, strict=True)]
    record = {"check": check,
              "max_new_tokens": max_new_tokens, "rows": rows, "passed": report.ok}
    if not report.ok:
        raise VerificationError(
            f"task={TASK!r}: {check.split(' in a fresh')[0]} differ from lm.generate(): "
            f"{[r for r in rows if not r['equal']]}. Nothing was written.", report=report)
    return record


def export_generative(model: Any, filepath: str | os.PathLike[str], *, format: str,
                      verbose: bool | None = None, overwrite: bool = False,
                      max_new_tokens: int = 8, check: bool = True,
                      printer: Callable[[str], None] = print) -> GenerativeSpec:
    """Write ``model``'s prefill/decode endpoints with an explicit cache to ``filepath``.

    Args:
        model: a keras_hub ``CausalLM`` (see :data:`kexport.generation.model.CAN`).
        filepath: where the artifact goes (a folder).
        format: a format :data:`WRITERS` holds for the current backend.
        verbose: ``False`` prints nothing.
        overwrite: replace data at ``filepath`` that is not a kexport artifact.
        max_new_tokens: tokens generated per prompt by the token check.
        check: ``False`` only where the caller checks the artifact against the
            live model itself (a re-host's child: the parent checks).

    Returns:
        The :class:`GenerativeSpec` recorded in the artifact, with its verdict.

    Raises:
        UnsupportedRouteError: a model that cannot generate with a cache, or a
            (backend, format) cell without a generative writer (the message
            names those that have one).
        VerificationError: the artifact's greedy tokens differ from Keras's;
            nothing is written.
        TargetExistsError, WriteError: as every export.
    """
    import keras

    backend = keras.backend.backend()
    writer = WRITERS.get((backend, format))
    if writer is None:
        raise UnsupportedRouteError(refusal(format, backend))
    _atomic.check_destination(filepath, overwrite)
    spec = writer.spec(GenerativeSpec(cache=cache_geometry(model), family=type(model).__name__))
    entries = writer.entries(spec)
    manifest = Manifest(format=format, backend=backend, endpoints=entries,
                        default_endpoint=spec.prefill, keras_version=keras.__version__)
    with _atomic.atomic_target(filepath, is_dir=True, overwrite=overwrite) as tmp:
        writer.module.write(model, spec, tmp)
        target = writer.module.manifest_file(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(manifest.with_extras(**{MANIFEST_KEY: spec.to_json()}).dumps())
        if check:
            spec = check_staged(model, tmp, format, max_new_tokens)
    if verbose is not False and check:
        say(printer, spec, format, filepath)
    return spec


def refusal(format: str, backend: str) -> str:
    """The message of a cell no writer (nor re-host) takes."""
    return (f"task={TASK!r} writes {', '.join(writable_cells())} (other backends re-host "
            f"onto those). Received: "
            f"format={format!r} from the {backend} backend.")


def say(printer: Callable[[str], None], spec: GenerativeSpec, format: str,
        filepath: str | os.PathLike[str], rehosted: str = "") -> None:
    """The export's one-line summary."""
    engine = (f" and through {spec.engine}'s own engine" if spec.engine else "")
    printer(f"kexport: wrote the generative form ({spec.prefill}/{spec.decode}, cache "
            f"{list(spec.cache.shape(None, None))}) as {format}{rehosted} at "
            f"'{os.fspath(filepath)}'; greedy tokens equal to lm.generate() for prompts of "
            f"lengths {[r['prompt_length'] for r in (spec.verification or {})['rows']]}"
            f"{engine}.")


def _writer_of(folder: Path, format: str) -> tuple[_Writer, Path]:
    for writer in (w for (_, f), w in WRITERS.items() if f == format):
        target = writer.module.manifest_file(folder)
        if target.exists():
            return writer, target
    raise VerificationError(f"task={TASK!r}: no {format} manifest in the staged artifact.")


def check_staged(model: Any, folder: Path, format: str, max_new_tokens: int = 8
                 ) -> GenerativeSpec:
    """Check the staged artifact in ``folder`` against the live ``model`` (greedy tokens in a
    fresh process, and through the format's engine) and store the verdict in its manifest.

    Raises:
        VerificationError: the tokens differ (the artifact is not placed).
    """
    import keras

    writer, target = _writer_of(folder, format)
    manifest = Manifest.from_json(target.read_text())
    spec = GenerativeSpec.from_json(manifest.extras[MANIFEST_KEY])
    record = _greedy_check(model, folder, spec, max_new_tokens, format, writer)
    record["live_backend"] = keras.backend.backend()
    spec = replace(spec, verification=record, engine=getattr(writer.module, "ENGINE", ""))
    target.write_text(manifest.with_extras(**{MANIFEST_KEY: spec.to_json()}).dumps())
    return spec


def check_task(task: Any, options: dict[str, Any]) -> None:
    """Raises:
        SignatureError: an unknown ``task``.
        SignatureTypeError: options the task does not take.
    """
    if task != TASK:
        raise SignatureError(f"Expected `task` to be {TASK!r} (or omitted: the forward pass). "
                             f"Received: task={describe(task)}")
    unknown = sorted(set(options) - {"max_new_tokens"})
    if unknown:
        raise SignatureTypeError(f"Unexpected keyword arguments for task={TASK!r}: {unknown}. "
                                 "Expected only: ['max_new_tokens'].")


def export_task(model: Any, filepath: str | os.PathLike[str], format: str, task: Any, *,
                verbose: bool | None = None, overwrite: bool = False,
                **options: Any) -> GenerativeSpec:
    """``export_model(..., task=...)`` in a cell with a native writer (see :func:`check_task`)."""
    check_task(task, options)
    return export_generative(model, filepath, format=format, verbose=verbose,
                             overwrite=overwrite, **options)
