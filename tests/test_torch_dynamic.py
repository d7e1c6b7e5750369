""".pt2 programs keep the axes their signature declares dynamic, or are refused.

A masked recurrent model (Keras runs it as a Python loop on PyTorch) is traced
as one ``torch.scan``; an axis a program still fixes raises
``DynamicAxisError`` and nothing is written.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import kexport
from kexport.errors import DynamicAxisError, RouteRefused


def _masked_rnn():
    inp = keras.Input((None, 8), name="frames")
    x = keras.layers.Masking()(inp)
    x = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))(x)
    x = keras.layers.GRU(3, go_backwards=True)(x)
    return keras.Model(inp, keras.layers.Dense(2, name="head")(x))


def _padded(batch, length, seed):
    x = np.random.default_rng(seed).random((batch, length, 8)).astype("float32")
    x[0, length // 2:] = 0.0  # masked tail of the first sequence
    return x


def _check_two_sizes(model, path, fresh_process):
    calls = [_padded(b, t, i) for i, (b, t) in enumerate([(2, 5), (5, 5), (2, 11), (4, 3)])]
    (res,) = fresh_process("fresh_formats:torch_run", [(path, [[x] for x in calls])])
    for x, (y,) in zip(calls, res["outputs"]):
        np.testing.assert_allclose(y, keras.ops.convert_to_numpy(model(x)), atol=1e-5)
    endpoint = json.loads(res["manifest"])["endpoints"]["serve"]
    assert [s["shape"] for s in endpoint["inputs"]] == [[None, None, 8]]
    assert [s["shape"] for s in endpoint["outputs"]] == [[None, 2]]


@pytest.mark.backends("torch")
def test_masked_bidirectional_lstm_keeps_batch_and_length_dynamic(tmp_path, fresh_process):
    model = _masked_rnn()
    path = str(tmp_path / "m.pt2")
    kexport.export_model(model, path, format="torch", verbose=False)
    _check_two_sizes(model, path, fresh_process)


@pytest.mark.backends("tensorflow")
@pytest.mark.full_matrix
def test_masked_bidirectional_lstm_rehosted_to_pt2_keeps_axes_dynamic(tmp_path, fresh_process):
    model = _masked_rnn()
    path = str(tmp_path / "m.pt2")
    kexport.export_model(model, path, format="torch", verbose=False)
    _check_two_sizes(model, path, fresh_process)


class _PerStep(keras.layers.Layer):
    """A Python loop over the time axis: the trace fixes the length."""

    def call(self, x):
        return keras.ops.stack([x[:, i] * 2.0 for i in range(x.shape[1])], axis=1)


@pytest.mark.backends("torch")
def test_program_that_fixes_an_axis_is_refused_and_nothing_written(tmp_path):
    inp = keras.Input((None, 4), name="seq")
    model = keras.Model(inp, _PerStep()(inp))
    path = tmp_path / "m.pt2"
    with pytest.raises(DynamicAxisError, match=r"whose dynamic axes stay dynamic.*d1 = \d+.*"
                                               r"Nothing was written") as info:
        kexport.export_model(model, path, format="torch", verbose=False)
    assert isinstance(info.value, RouteRefused)
    assert list(tmp_path.iterdir()) == []
    # the same model declared with the length static is written, and true
    kexport.export_model(model, path, format="torch", verbose=False,
                         input_signature=[keras.InputSpec(shape=(None, 5, 4), name="seq")])
    assert path.exists()


@pytest.mark.backends("torch")
def test_guard_names_each_specialised_axis_of_a_written_program():
    import torch

    from kexport.formats.torch_program._dynamic import refuse_specialised
    from kexport.signature import Spec

    class Twice(torch.nn.Module):
        def forward(self, x):
            return x * 2

    program = torch.export.export(Twice(), (torch.zeros(3, 4),))  # no Dim: batch fixed to 3
    with pytest.raises(DynamicAxisError, match=r"endpoint 'serve'.*input 'x' axis 0 "
                                               r"\(fixed to 3\)") as info:
        refuse_specialised(program, [Spec((None, 4), "float32", "x")], ["x"], "serve")
    assert info.value.axes == [("x", 0)]
    refuse_specialised(program, [Spec((3, 4), "float32", "x")], ["x"], "serve")  # true: fine
