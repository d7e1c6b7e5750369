"""Keras RNN layers as one ``torch.scan`` while ``torch.export`` writes a ``.pt2``.

Keras's PyTorch backend runs a recurrent layer (a masked LSTM/GRU, any
``SimpleRNN``, a custom cell) as a Python loop over the time steps, and builds
its output buffer as ``list(output)`` over the batch rows: a trace of that
loop specialises both the batch and the length to the sample's sizes, so a
program declared ``(None, None, 8)`` would only take the sample's shape.
Within :func:`scanned_rnn` Keras's ``RNN.inner_loop`` runs the same recurrence
written as ``torch._higher_order_ops.scan`` (one traced step, the time axis
kept symbolic), with Keras's semantics: masked steps keep the previous output
and state (or a zero output with ``zero_output_for_mask``), ``go_backwards``
walks the reversed sequence and returns outputs in that order,
``return_all_outputs=False`` returns the last step only. ``unroll=True`` layers
keep Keras's own code (a static length, unrolled on purpose).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["scan_rnn", "scanned_rnn"]


def _broadcast(mask_t: Any, value: Any) -> Any:
    """``mask_t`` (batch, 1) reshaped to broadcast against ``value`` (batch, ...)."""
    return mask_t.reshape(mask_t.shape[:1] + (1,) * (value.dim() - 1))


def scan_rnn(step_function: Callable[..., Any], inputs: Any, initial_states: Any,
             go_backwards: bool = False, mask: Any = None, constants: Any = None,
             unroll: bool = False, input_length: Any = None, time_major: bool = False,
             zero_output_for_mask: bool = False, return_all_outputs: bool = True,
             variables: Any = ()) -> Any:
    """Keras's ``backend.rnn`` contract (``(last_output, outputs, new_states)``)
    computed with ``torch.scan`` over the time axis.

    ``variables`` are the Keras variables the step reads (the cell's weights):
    they enter the scan as its inputs, the step reading them through a
    ``keras.StatelessScope`` (a program may hold no tensor constants in a
    sub-graph)."""
    import torch
    from keras import StatelessScope
    from keras.src import tree
    from torch._higher_order_ops.scan import scan_op
    from torch.utils import _pytree

    del unroll, input_length  # the scan always runs every step of the given axis
    constants = list(constants or [])
    flat_inputs = [torch.as_tensor(x) for x in tree.flatten(inputs)]
    if not time_major:
        flat_inputs = [x.transpose(0, 1) for x in flat_inputs]
    if mask is not None:
        mask = mask.to(torch.bool)
        mask = mask if mask.dim() == 2 else mask.reshape(mask.shape[:2])
        mask = mask if time_major else mask.transpose(0, 1)
    if go_backwards:
        flat_inputs = [torch.flip(x, [0]) for x in flat_inputs]
        mask = None if mask is None else torch.flip(mask, [0])
    states = list(tree.flatten(initial_states))
    state_structure = initial_states

    def first_output() -> Any:
        step_inputs = tree.pack_sequence_as(inputs, [x[0] for x in flat_inputs])
        output, _ = step_function(step_inputs, tuple(initial_states) + tuple(constants))
        return tree.flatten(output), output

    zero_outputs, output_structure = first_output()
    zero_outputs = [torch.zeros_like(o) for o in zero_outputs]

    variables = list(variables)
    # a copy in the program: the scan needs its inputs as traced tensors, not parameters
    values = [torch.as_tensor(v.value).clone() for v in variables]

    def combine(carry: Any, xs: Any, weights: Any = ()) -> Any:
        if weights:
            with StatelessScope(state_mapping=list(zip(variables, weights, strict=True))):
                return combine(carry, xs)
        previous, flat_state = carry
        step_inputs = tree.pack_sequence_as(inputs, list(xs[0]))
        packed_state = tree.pack_sequence_as(state_structure, list(flat_state))
        output, new_states = step_function(step_inputs,
                                           tuple(packed_state) + tuple(constants))
        flat_out, flat_new = list(tree.flatten(output)), list(tree.flatten(new_states))
        if mask is not None:
            mask_t = xs[1]
            kept = zero_outputs if zero_output_for_mask else previous
            flat_out = [torch.where(_broadcast(mask_t, o), o, k)
                        for o, k in zip(flat_out, kept, strict=True)]
            flat_new = [torch.where(_broadcast(mask_t, s), s, p)
                        for s, p in zip(flat_new, flat_state, strict=True)]
        carried = [o.clone() for o in flat_out]  # scan's carry and output may not alias
        return (carried, flat_new), [o.clone() for o in flat_out]

    xs = (flat_inputs, mask[..., None] if mask is not None else None)
    if mask is None:
        xs = (flat_inputs,)
    init = (zero_outputs, states)
    leaves_init, spec_init = _pytree.tree_flatten(init)
    leaves_xs, spec_xs = _pytree.tree_flatten(xs)

    n_init, n_xs = len(leaves_init), len(leaves_xs)

    def flat_combine(*leaves: Any) -> Any:
        carry = _pytree.tree_unflatten(list(leaves[:n_init]), spec_init)
        step = _pytree.tree_unflatten(list(leaves[n_init:n_init + n_xs]), spec_xs)
        return _pytree.tree_leaves(combine(carry, step, leaves[n_init + n_xs:]))

    # the operator itself, not torch.scan: torch.scan traces its body with
    # Dynamo, which cannot read Keras's Layer.__call__; under torch.export the
    # operator traces it with the export's own (make_fx) tracer
    flat = scan_op(flat_combine, leaves_init, leaves_xs, additional_inputs=tuple(values))
    carry_leaves, stacked = flat[:len(leaves_init)], list(flat[len(leaves_init):])
    last, final_states = _pytree.tree_unflatten(list(carry_leaves), spec_init)
    if not return_all_outputs:
        stacked = [o[None] for o in last]
    outputs = [o if time_major else o.transpose(0, 1) for o in stacked]
    last_output = tree.pack_sequence_as(output_structure, list(last))
    new_states = tree.pack_sequence_as(state_structure, list(final_states))
    return last_output, tree.pack_sequence_as(output_structure, outputs), new_states


@contextlib.contextmanager
def scanned_rnn() -> Iterator[None]:
    """Keras's ``RNN.inner_loop`` runs :func:`scan_rnn` (for ``unroll=False``), for one trace."""
    try:
        from keras.src.layers import Layer
        from keras.src.layers.rnn.rnn import RNN
    except ImportError:  # Keras moved it: its own behaviour applies
        yield
        return

    def make(original: Any) -> Any:
        def inner_loop(self: Any, sequences: Any, initial_state: Any, mask: Any,
                       training: bool = False) -> Any:
            if self.unroll:
                return original(self, sequences, initial_state, mask, training)
            kwargs = ({"training": training} if isinstance(self.cell, Layer)
                      and self.cell._call_has_training_arg else {})

            def step(inputs: Any, states: Any) -> Any:
                output, new_states = self.cell(inputs, states, **kwargs)
                return output, (new_states if isinstance(new_states, (list, tuple))
                                else [new_states])

            states = initial_state if isinstance(initial_state, (list, tuple)) \
                else [initial_state]
            return scan_rnn(step, sequences, states, go_backwards=self.go_backwards,
                            mask=mask, zero_output_for_mask=self.zero_output_for_mask,
                            return_all_outputs=self.return_sequences,
                            variables=getattr(self.cell, "weights", ()))
        return inner_loop

    with scoped_patch(RNN, "inner_loop", make):
        yield
