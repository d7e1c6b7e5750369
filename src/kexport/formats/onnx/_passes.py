"""The finishing passes' frame: a kexport step run as an ``onnx_ir`` pass.

A :class:`FinishPass` states what it needs (``requires``), what it leaves
(``ensures``) and changes the model in place (``apply``); :func:`run_passes`
wraps each in an ``onnx_ir.passes.InPlacePass`` (onnx-ir is imported only
when an export runs, not with kexport) and runs them under
``onnx_ir.passes.Sequential``, which checks the conditions around every
pass. A failure is a :class:`FinishPassError` naming the pass, whether its
precondition or postcondition failed, and the passes that ran before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kexport.context import step_label
from kexport.errors import KexportError, WriteError

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["FinishPass", "FinishPassError", "as_ir_pass", "run_passes"]


class FinishPassError(WriteError):
    """A finishing pass failed: :attr:`pass_name`, after :attr:`after` (passes that ran)."""

    def __init__(self, message: str, pass_name: str = "", after: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.after = list(after)


class FinishPass:
    """A finishing step: ``name``, ``requires``/``ensures`` checks, ``call`` -> ``PassResult``.

    Run as an ``onnx_ir.passes.InPlacePass`` (:func:`as_ir_pass`).
    """

    name = "finish"

    def requires(self, model: ir.Model) -> None:
        """Raise when ``model`` is not what the pass can work on."""

    def ensures(self, model: ir.Model) -> None:
        """Raise when the pass did not leave what it promises."""

    def apply(self, model: ir.Model) -> bool:
        """Change ``model`` in place; whether anything changed."""
        raise NotImplementedError


def as_ir_pass(step: FinishPass, started: list[str]) -> Any:
    """``step`` as an ``onnx_ir`` in-place pass; its name goes to ``started`` when it runs."""
    from onnx_ir.passes import InPlacePass, PassResult

    class _Pass(InPlacePass):
        def __str__(self) -> str:
            return step.name

        def requires(self, model: ir.Model) -> None:
            started.append(step.name)
            step.requires(model)

        def ensures(self, model: ir.Model) -> None:
            step.ensures(model)

        def call(self, model: ir.Model) -> Any:
            return PassResult(model, bool(step.apply(model)))

    return _Pass()


def run_passes(model: ir.Model, steps: Sequence[FinishPass], route: str) -> None:
    """Run ``steps`` in order on ``model`` (in place) under ``onnx_ir.passes.Sequential``.

    Raises:
        KexportError: one a pass raised itself (it names the pass).
        FinishPassError: any other failure, naming the pass and those before it.
    """
    from onnx_ir.passes import Sequential

    started: list[str] = []
    try:
        Sequential(*(as_ir_pass(s, started) for s in steps))(model)
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, KexportError):
            cause = cause.__cause__
        if isinstance(cause, KexportError):
            raise cause from e
        failed = started[-1] if started else steps[0].name
        after = started[:-1]
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        stage = "precondition of" if "Pre-condition" in _chain_text(e) else (
            "postcondition of" if "Post-condition" in _chain_text(e) else "")
        where = f"{stage} pass {failed!r} after {after or 'none'}".strip()
        raise FinishPassError(
            f"{step_label('finish', where)} (route: {route}) failed: {type(root).__name__}: "
            f"{str(root).strip()[:1500]}\nNext steps: retry with another opset_version; "
            "report the model to kexport", failed, after) from e


def _chain_text(e: BaseException) -> str:
    parts = []
    while e is not None:
        parts.append(str(e))
        e = e.__cause__  # type: ignore[assignment]
    return " | ".join(parts)
