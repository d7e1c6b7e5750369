"""The LiteRT writer's options: :class:`LiteRTOptions`, ``calibration_data``
and what a re-host to LiteRT carries to its child process."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kexport.artifact.exclusion import check_exclude
from kexport.artifact.quantization import check_quantization
from kexport.check.calibration import calibration_batches
from kexport.context import ExportContext
from kexport.errors import SignatureError, SignatureTypeError, describe
from kexport.formats._options import FormatOptions
from kexport.signature import flat_names, flatten, normalize_for_model

__all__ = ["LiteRTOptions", "calibration_option", "rehost_options"]

@dataclass(frozen=True)
class LiteRTOptions(FormatOptions):
    """The options of ``format="litert"``: converter options for the LiteRT writer
    (``export_model(..., quantization=..., calibration_data=..., allow_flex=...)``,
    ``write_out(options=...)`` or ``write_out(quantization=..., calibration_data=...)``),
    parsed once where the call enters into ``ExportContext.options``.

    Attributes:
        quantization: ``None`` (float32), ``"dynamic_int8"``, ``"float16"`` or
            ``"int8"`` (full integer; needs ``calibration_data``).
        representative_dataset: calibration batches for ``"int8"``: an
            iterable (a list, a ``tf.data.Dataset``), or a callable returning
            one, of batches; a batch is an array (single-input endpoints), a
            list in the endpoint's flat input order, or a dict keyed by input
            name. One array or dict is one batch. ``calibration_data=`` in
            :meth:`parse` and :meth:`coerce` (the name every
            format shares) lands here.
        allow_flex: allow Select-TF (Flex) operators when builtin ones cannot
            express the model.
    """

    FORMAT: ClassVar[str] = "litert"
    ENTRIES: ClassVar[dict[str, tuple[str, ...]]] = {
        "export_model": ("quantization", "calibration_data", "representative_dataset",
                         "allow_flex"),
        "write_out": ("quantization", "calibration_data")}
    # the JAX capture's own options (LiteRT traces with is_static=True by default)
    PASSED: ClassVar[dict[str, tuple[str, ...]]] = {"jax": ("is_static", "jax2tf_kwargs")}

    quantization: str | None = None
    representative_dataset: Callable[[], Iterable[Any]] | Iterable[Any] | None = field(
        default=None, compare=False, repr=False)
    allow_flex: bool = False

    @classmethod
    def parse(cls, given: Mapping[str, Any], *, backend: str, entry: str) -> LiteRTOptions:
        """``given`` typed (``calibration_data`` or its former name
        ``representative_dataset`` lands in :attr:`representative_dataset`;
        ``quantization_exclude`` is refused with the reason, a ``QuantizationError``)."""
        given = dict(given)
        check_exclude("litert", given.get("quantization"), given.pop("quantization_exclude", None))
        cls.refuse_unknown(given, backend=backend, entry=entry)
        data = calibration_option(given)
        flex = given.get("allow_flex")
        return cls(given.get("quantization"), data, False if flex is None else flex)

    @classmethod
    def for_write_out(cls, options: Any, given: Mapping[str, Any], *,
                      backend: str) -> LiteRTOptions:
        """``write_out``'s ``options`` (a :class:`LiteRTOptions` or a dict of its
        fields) or its ``quantization``/``calibration_data`` keywords, not both."""
        if options is None:
            return cls.parse(given, backend=backend, entry="write_out")
        if any(v is not None for v in given.values()):
            raise SignatureError(
                "Expected `quantization` either in `options` or as write_out(..., "
                "quantization=...), not both. Received both.")
        return cls.coerce(options)

    def __post_init__(self) -> None:
        check_quantization("litert", self.quantization, self.representative_dataset)
        if not isinstance(self.allow_flex, bool):
            raise SignatureTypeError(
                f"Expected `allow_flex` to be True or False. Received: {describe(self.allow_flex)}"
            )

    @classmethod
    def coerce(cls, options: Any) -> LiteRTOptions:
        """Accept ``None``, a :class:`LiteRTOptions` or a dict of its fields."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, Mapping):
            options = dict(options)
            unknown = sorted(set(options) - {"quantization", "calibration_data",
                                             "representative_dataset", "allow_flex"})
            if unknown:
                raise SignatureError(
                    "Expected LiteRT options among quantization, calibration_data, "
                    f"allow_flex. Received unknown: {unknown}"
                )
            data = calibration_option(options)
            return cls(options.get("quantization"), data, options.get("allow_flex", False))
        raise SignatureError(
            "Expected `options` to be a kexport.formats.litert.LiteRTOptions or a dict "
            f"for format='litert'. Received: {describe(options)}"
        )



def rehost_options(model: Any, input_signature: Any, options: dict[str, Any],
                   context: ExportContext | None = None) -> dict[str, Any]:
    """What a re-host to LiteRT carries: converter options (``quantization``,
    ``allow_flex``) travel to the child; a ``representative_dataset`` must then
    be a list of arrays/lists/dicts. Float artifacts are compared with the
    live model before they are placed; a quantized one is judged by its mode's
    thresholds (``quantized``), a full-integer one on batches of its
    calibration data."""
    typed = context.options if isinstance(context, ExportContext) else None
    if not isinstance(typed, LiteRTOptions):
        typed = LiteRTOptions.parse(options, backend=_backend(), entry="export_model")
    options.pop("calibration_data", None)  # carried typed, below
    options.update(quantization=typed.quantization, allow_flex=typed.allow_flex)
    data = typed.representative_dataset
    given = None
    if data is not None:
        signature = normalize_for_model(model, input_signature)
        names = flat_names(signature)
        options["representative_dataset"] = _plain_samples(data, flatten(signature), names)
        # A full-integer artifact is only accurate on inputs like its calibration
        # data: it is compared with the live model on those samples, batched.
        given = _calibration_batches(options["representative_dataset"], names)
    return {**options, "quantized": typed.quantization, "sample_inputs": given}


def _backend() -> str:
    import keras

    return keras.backend.backend()


def calibration_option(options: dict[str, Any]) -> Any:
    """Pop ``calibration_data`` (or its former name ``representative_dataset``)
    from ``options``; both at once is an error."""
    data = options.pop("calibration_data", None)
    alias = options.pop("representative_dataset", None)
    if data is not None and alias is not None:
        raise SignatureError(
            "Expected `calibration_data` or its former name `representative_dataset`, "
            "not both. Received both.")
    return alias if data is None else data


def _calibration_batches(samples: list[dict[str, Any]], names: list[str]
                         ) -> list[list[Any]] | None:
    """Two batches (of 2 and up to 64 samples) of calibration data, per flat input."""
    import numpy as np

    if len(samples) < 3:
        return None
    batches = []
    for chunk in (samples[:2], samples[2:66]):
        try:
            batches.append([np.concatenate([np.asarray(s[n]) for s in chunk], axis=0)
                            for n in names])
        except (KeyError, ValueError):
            return None  # ragged or unnamed samples: the child's check still runs
    return batches


def _plain_samples(data: Any, specs: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """Calibration batches as JSON-able dicts by input name (they travel to a child
    process), read by the reader every format shares
    (:func:`kexport.check.calibration.calibration_batches`)."""
    batches = calibration_batches(data() if callable(data) else data, specs, names)
    return [{k: v.tolist() for k, v in batch.items()} for batch in batches]
