"""The names and shapes of an OpenVINO IR: the signature's, whatever the converter wrote.

Part of the OpenVINO writer (:mod:`kexport.formats.openvino`), applied to every
converted endpoint before quantization and saving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kexport.context import step_label
from kexport.errors import CaptureError
from kexport.signature import flatten

if TYPE_CHECKING:
    from kexport.capture._base import TracedEndpoint

__all__ = ["named"]


def named(model: Any, endpoint: TracedEndpoint) -> Any:
    """Give the IR the Keras names, kexport's input order and the signature's dims.

    Converters name ports their own way (``serve_x:0``, placeholders, ...) and
    some make every dimension dynamic; the signature is the truth.
    """
    import openvino as ov

    specs = flatten(endpoint.signature)
    names = endpoint.input_names
    ports = list(model.inputs)
    if len(ports) != len(names):
        raise CaptureError(
            f"{step_label('convert', 'openvino')}: endpoint '{endpoint.name}' converted with "
            f"{len(ports)} inputs. Expected {len(names)}: {names}."
        )
    prefix = f"{endpoint.name}_"  # LiteRT tensors are named "<signature>_<input>:0"
    by_name = {}
    for port in ports:
        for n in port.get_names():
            base = n.split(":")[0]
            for key in (n, base, base.removeprefix(prefix)):
                by_name.setdefault(key, port)
    ordered = [by_name.get(n) for n in names]
    if any(p is None for p in ordered) or len({id(p) for p in ordered}) != len(ordered):
        ordered = ports  # converters that drop names keep the flat order
    shapes = {}
    for port, name, spec in zip(ordered, names, specs, strict=True):
        port.get_tensor().set_names({name})
        shapes[port] = ov.PartialShape([-1 if d is None else d for d in spec.shape])
    model.reshape(shapes)
    out_names = endpoint.output_names
    outs = list(model.outputs)
    if len(outs) == len(out_names):
        by_out = {}
        for port in outs:
            for n in port.get_names():
                by_out.setdefault(n, port)
        ordered_out = [by_out.get(n) for n in out_names]
        if any(p is None for p in ordered_out) or len({id(p) for p in ordered_out}) != len(outs):
            ordered_out = outs
        renamed: set[tuple[str, int]] = set()
        for port, name in zip(ordered_out, out_names, strict=True):
            # outputs that are one tensor (``return x, x``) share its names:
            # renaming it again would lose the first output's name
            source = port.get_node().input_value(0)
            key = (source.get_node().get_friendly_name(), source.get_index())
            if key in renamed:
                port.get_tensor().add_names({name})
            else:
                port.get_tensor().set_names({name})
                renamed.add(key)
    _drop_inner_names(model)
    return model


def _drop_inner_names(model: Any) -> None:
    """Only inputs and outputs keep tensor names.

    Converters name inner tensors too (``11``, ``_to_copy:0`` from
    ``torch.export``); when the CPU plugin folds a node next to a Parameter
    (the ``Convert`` of int32 ids), the compiled model's input carries the
    folded tensor's names as well, and ``compiled.inputs[0].any_name`` read
    ``11`` where the IR said ``input``.
    """
    keep = {n for p in (*model.inputs, *model.outputs) for n in p.get_names()}
    for op in model.get_ops():
        for port in op.outputs():
            if not port.get_names() & keep:
                port.get_tensor().set_names(set())
