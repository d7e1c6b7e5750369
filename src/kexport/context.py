"""The export context: what one export was asked for, built once where the user's call
enters kexport (``export_model``, ``ExportArchive.write_out``, the localiser, a re-host
child) and passed down, explicitly, to every step that needs it.

It replaces the context variables that used to carry these options across four or
five layers (docs/architecture.md, "The export context"). It also holds the
export's :class:`Printer` (``verbose``, resolved once where the call enters) and
the pipeline's steps (:data:`PIPELINE`), from which every step label of a
message is computed (:func:`step_label`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kexport.errors import SignatureTypeError, describe

if TYPE_CHECKING:
    from kexport.check.samples import SamplePolicy

__all__ = ["PIPELINE", "ExportContext", "Printer", "step_label"]

#: The steps of every export, in the order they run (docs/architecture.md): the
#: signature, symbols and options are planned once; each endpoint is captured
#: on its backend; the format's converter turns it into the artifact's form
#: (its strategies tried in order); the format's finishing passes run (ONNX:
#: onnx-ir passes, quantization); the staged artifact is checked with its
#: runtime against the live model; it is placed atomically.
PIPELINE: tuple[str, ...] = ("plan", "capture", "convert", "finish", "check", "place")


def step_label(step: str, detail: str = "") -> str:
    """``"Step 2/6 (capture, detail)"``: the label a message gives ``step`` of
    :data:`PIPELINE`, its number computed from the pipeline, never typed."""
    number = PIPELINE.index(step) + 1
    return f"Step {number}/{len(PIPELINE)} ({step}{', ' + detail if detail else ''})"


@dataclass(frozen=True)
class Printer:
    """Where an export's verbose output goes: ``verbose`` resolved once, where the
    user's call enters (``None`` and ``True``: printed; ``False``: nothing).

    Every line kexport prints while exporting (the summary, a route handing
    over to the next, a converter's graph not used) goes through it.
    """

    on: bool = True

    @classmethod
    def resolve(cls, verbose: Any) -> Printer:
        """The printer of a call's ``verbose``: the one check of that argument.

        Raises:
            SignatureTypeError: ``verbose`` is not ``True``, ``False`` or ``None``.
        """
        if verbose is not None and not isinstance(verbose, bool):
            raise SignatureTypeError(
                f"Expected `verbose` to be True, False or None. Received: {describe(verbose)}")
        return cls(on=verbose is None or verbose)

    def __call__(self, text: str) -> None:
        """Print ``text`` when verbose."""
        if self.on:
            print(text, flush=True)

    @property
    def say(self) -> Callable[[str], None] | None:
        """This printer, or ``None`` when quiet (for helpers that take ``say=``)."""
        return self if self.on else None



@dataclass(frozen=True)
class ExportContext:
    """One export's options that every step may need.

    Attributes:
        overwrite: replace a target that holds data other than a kexport
            artifact (``export_model(..., overwrite=True)``); an existing
            kexport artifact is always replaced, atomically.
        samples: what check inputs must respect (id ranges, masks, the
            user's ``sample_data``: :class:`~kexport.check.samples.SamplePolicy`);
            ``None``: inputs follow the signature alone.
        judged: whether the export's own checks (the re-host check, the ONNX
            acceptance of a fast converter) refuse an artifact whose numbers
            differ from the live model. ``False`` only for the localiser's
            probes, whose numbers their caller judges.
        source_backend: in a re-host child, the backend the model was
            re-hosted from (writers record it in the artifact's metadata);
            ``None`` where the model lives.
        check: the check of the artifact before it is placed:
            ``check(staged_path)`` runs it with the format's runtime in this
            process and compares it with the live model, raising
            :class:`~kexport.errors.VerificationError` when it differs (the
            writer then places nothing). Built by the face that knows the
            model (``export_model``); ``None``: unchecked (``verify=False``,
            a re-host child, whose parent checks, a localiser probe).
        printer: where verbose output goes (:class:`Printer`, from the
            call's ``verbose``).
        options: the format's typed options (a frozen
            :class:`~kexport.formats._options.FormatOptions` of the format,
            e.g. ``OnnxOptions``), parsed once where the call entered; the
            converters and writers read it. ``None``: the format declares none
            yet (its writer takes its keyword arguments), or the caller built
            the context without them.
        source_dtypes: in a re-host child, the source model's integer and
            boolean output dtypes per endpoint (flat, ``None`` for the others):
            the default endpoint's outputs are cast to them
            (:mod:`kexport.rehost.dtypes`).
    """

    overwrite: bool = False
    samples: SamplePolicy | None = None
    judged: bool = True
    source_backend: str | None = None
    check: Callable[[Path], None] | None = field(default=None, compare=False, repr=False)
    printer: Printer = field(default_factory=Printer)
    options: Any = field(default=None, compare=False, repr=False)
    source_dtypes: Mapping[str, tuple[str | None, ...]] = field(
        default_factory=dict, compare=False, repr=False)

    def check_staged(self, path: str | Path) -> None:
        """Check the complete artifact staged at ``path`` before it is placed (see
        :attr:`check`); writers call it once their artifact is whole."""
        if self.check is not None:
            self.check(Path(path))

    def recorded(self) -> dict[str, Any]:
        """The manifest extras of the sample policy: ``{"samples": ...}``, or ``{}``.

        Writers record it, so that ``kexport verify ARTIFACT`` (without the
        model's code) draws the same kind of inputs as the export's own checks.
        """
        policy = self.samples
        if policy is None or not (policy.ids or policy.masks or policy.ranges or policy.texts):
            return {}
        return {"samples": policy.to_json()}
