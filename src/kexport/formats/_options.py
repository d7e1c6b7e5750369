"""Typed per-format options: what each format declares once, parsed once.

A format declares its options as a frozen dataclass deriving from
:class:`FormatOptions`, next to its writer (ONNX:
:class:`kexport.formats.onnx._options.OnnxOptions`): each field is one option
(its name, type and default), its ``__post_init__`` checks and normalises the
values, and :attr:`FormatOptions.ENTRIES` says which entries (``export_model``,
``write_out``) take which options. The call's entry parses the user's keyword
arguments once (:meth:`FormatOptions.parse`) into the object
``ExportContext.options`` holds; the layers below read that object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from kexport.errors import SignatureTypeError

__all__ = ["FormatOptions"]

_T = TypeVar("_T", bound="FormatOptions")


@dataclass(frozen=True)
class FormatOptions:
    """The base of a format's typed options.

    Class attributes a format sets:
        FORMAT: the format's name (``"onnx"``).
        ENTRIES: entry -> the field names it takes (every field where an entry
            is not named).
        IGNORED: entry -> options accepted and dropped (the JAX capture's
            ``is_static``, ``jax2tf_kwargs``, which an ONNX graph has no use
            for), not fields.
        PASSED: backend -> options ``export_model`` takes and hands to that
            backend's capture (LiteRT on JAX: ``is_static``, ``jax2tf_kwargs``),
            not fields.
    """

    FORMAT: ClassVar[str] = ""
    ENTRIES: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    IGNORED: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    PASSED: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @classmethod
    def taken(cls, entry: str) -> list[str]:
        """The options ``entry`` takes for this format, in declaration order."""
        names = [f.name for f in fields(cls)]
        return list(cls.ENTRIES.get(entry, names))

    @classmethod
    def refuse_unknown(cls, given: Mapping[str, Any], *, backend: str, entry: str) -> None:
        """The one check of option names: raise for one ``entry`` does not take.

        Raises:
            SignatureTypeError: naming the format, the backend and the options taken.
        """
        taken = cls.taken(entry)
        passed = cls.PASSED.get(backend, ()) if entry == "export_model" else ()
        unknown = sorted(set(given) - set(taken) - set(cls.IGNORED.get(entry, ())) - set(passed))
        if unknown:
            call = "write_out" if entry == "write_out" else "export_model"
            also = f" (and the {backend} capture's {list(passed)})" if passed else ""
            raise SignatureTypeError(
                f"Unexpected keyword arguments for {call}(format={cls.FORMAT!r}) on the "
                f"{backend} backend: {unknown}. Expected only: {taken}{also}")

    @classmethod
    def parse(cls: type[_T], given: Mapping[str, Any], *, backend: str, entry: str) -> _T:
        """The typed options of ``given`` (the user's keyword arguments at ``entry``).

        Raises:
            SignatureTypeError: an option this format does not take at ``entry``
                (:meth:`refuse_unknown`).
            SignatureError, QuantizationError: a value of the wrong type or out
                of range (from the dataclass's checks).
        """
        cls.refuse_unknown(given, backend=backend, entry=entry)
        taken = cls.taken(entry)
        return cls(**{k: v for k, v in given.items() if k in taken and v is not None})

    @classmethod
    def for_write_out(cls: type[_T], options: Any, given: Mapping[str, Any], *,
                      backend: str) -> _T:
        """``write_out(path, options, format=F, **given)``'s typed options; ``options``
        (``tf.saved_model.SaveOptions`` or a format's own object) is the writer's to
        check unless the format reads it (LiteRT)."""
        return cls.parse(given, backend=backend, entry="write_out")

    @classmethod
    def capture_options(cls, given: Mapping[str, Any], backend: str) -> dict[str, Any]:
        """What of ``export_model``'s ``given`` this format leaves to ``backend``'s capture."""
        return {k: v for k, v in given.items() if k in cls.PASSED.get(backend, ())}
