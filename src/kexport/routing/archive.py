"""``ExportArchive``: several serving endpoints in one artifact.

The archive records endpoints (as traced ``tf.function`` objects produced by
the backend's capture, see :mod:`kexport.capture`) and the resources they use,
then hands them to a format writer in :meth:`ExportArchive.write_out`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

from kexport import _atomic
from kexport.artifact import default_endpoint, format_info
from kexport.artifact.exclusion import check_exclude
from kexport.artifact.quantization import check_quantization
from kexport.capture._base import TracedEndpoint, is_tf_variable
from kexport.check.policy import flat_sample_data
from kexport.check.samples import SamplePolicy
from kexport.context import ExportContext, Printer
from kexport.errors import SignatureError, SignatureTypeError, describe
from kexport.rehost import write_archive_rehosted
from kexport.routing.archive_routes import (
    archive_host,
    archive_route,
    capture_for,
    in_process_first,
)
from kexport.signature import flatten, normalize
from kexport.staged import archive_check

__all__ = ["ExportArchive"]

_RESERVED = {"variables", "trainable_variables", "non_trainable_variables", "signatures"}


def _format_options(writer: Callable[..., Any]) -> list[str]:
    """The options a format's archive writer takes: its keyword-only parameters
    (but ``context``, which kexport passes)."""
    return [p.name for p in inspect.signature(writer).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "context"]


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        error = SignatureError if isinstance(name, str) else SignatureTypeError
        raise error(f"Expected {what} to be a non-empty str. Received: {describe(name)}")
    if not name.isidentifier():
        raise SignatureError(
            f"Expected {what} to be a Python identifier (letters, digits, _; "
            f"no path separators), so it can be an attribute and a file name. "
            f"Received: {name!r}"
        )
    return name


class ExportArchive:
    """Build an inference artifact with one or more serving endpoints.

    Example:

    ```python
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=model.call,
        input_signature=[keras.InputSpec(shape=(None, 3), dtype="float32")],
    )
    archive.write_out("path/to/location")

    reloaded = tf.saved_model.load("path/to/location")
    outputs = reloaded.serve(inputs)
    ```

    Every endpoint becomes a serving signature (visible to TF-Serving); the
    first one is also ``serving_default`` unless an endpoint has that name.
    Variables used by endpoints are tracked automatically; call
    :meth:`track` to expose ``variables``, ``trainable_variables`` and
    ``non_trainable_variables`` on the reloaded object, or to add TensorFlow
    resources such as lookup tables.
    """

    def __init__(self) -> None:
        import keras

        self.backend: str = keras.backend.backend()
        self._capture = capture_for(self.backend)
        self._endpoints: dict[str, TracedEndpoint] = {}
        self._collections: dict[str, list[Any]] = {}
        self._collection_vars: dict[str, list[Any]] = {}  # the Keras variables themselves

    @property
    def endpoint_names(self) -> list[str]:
        """Names of the endpoints added so far, in order."""
        return list(self._endpoints)

    @property
    def default_endpoint(self) -> str:
        """What an artifact runs by default: ``serving_default`` if an endpoint
        has that name, else the first endpoint added (``""`` when none)."""
        return default_endpoint(self.endpoint_names)

    @property
    def endpoints(self) -> list[TracedEndpoint]:
        """The traced endpoints, in the order they were added."""
        return list(self._endpoints.values())

    @property
    def variables(self) -> list[Any]:
        """Variables of the tracked layers and models (after :meth:`track`).

        The Keras variables themselves, except on JAX: the ``tf.Variable`` copies
        the artifact holds. The reloaded SavedModel has the same attribute.
        """
        return self._capture.tracked_variables()["variables"]

    @property
    def trainable_variables(self) -> list[Any]:
        """The trainable ones among :attr:`variables`."""
        return self._capture.tracked_variables()["trainable_variables"]

    @property
    def non_trainable_variables(self) -> list[Any]:
        """The non-trainable ones among :attr:`variables` (e.g. batch-norm statistics,
        seed generator state; every variable of a frozen layer)."""
        return self._capture.tracked_variables()["non_trainable_variables"]

    def __getattr__(self, name: str) -> Any:
        """A variable collection by name (:meth:`add_variable_collection`), as the
        artifact holds it (``tf.Variable`` objects on TensorFlow and JAX)."""
        given = self.__dict__.get("_collection_vars", {})
        if name not in given:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        return [v if is_tf_variable(v) else self._capture._exposed(v) for v in given[name]]

    def track(self, resource: Any) -> Any:
        """Track the variables of a layer/model, or a TensorFlow resource.

        Args:
            resource: a built Keras layer or model, or a TensorFlow trackable
                (e.g. ``tf.lookup.StaticHashTable``).

        Returns:
            ``resource``, for chaining.

        Raises:
            CaptureValueError: ``resource`` is neither, or is a layer that is not
                built (a ``ValueError``, as in Keras).
        """
        self._capture.track(resource)
        return resource

    def add_endpoint(self, name: str, fn: Callable[..., Any],
                     input_signature: Any | None = None, **kwargs: Any) -> Any:
        """Register a serving endpoint.

        Args:
            name: the endpoint's name; an attribute of the reloaded object and
                a serving signature key.
            fn: a model method (``model.call``), any callable using tracked
                layers (``lambda x: model(x, training=True)``), or a
                ``tf.function`` that was called at least once.
            input_signature: one entry per positional argument of ``fn``;
                each a spec or a list/tuple/dict of specs (``keras.InputSpec``,
                ``tf.TensorSpec``, ``keras.KerasTensor`` or tensors).
            **kwargs: on the JAX backend, ``is_static`` (bool, default
                ``False``: non-trainable state such as RNG seeds is updated)
                and ``jax2tf_kwargs`` (dict for ``jax2tf.convert``;
                ``polymorphic_shapes`` and ``native_serialization`` are
                computed when absent).

        The endpoint is also recorded as data when it can be (a model
        method, or a lambda/function passing its arguments to one tracked
        model's method with constant keyword arguments), for formats that
        :meth:`write_out` writes by re-hosting the archive; other endpoints
        still work for every format written in process.

        Returns:
            The ``tf.function`` wrapping ``fn`` that the archive will save.

        Raises:
            SignatureError: duplicate name, or unknown input shapes (a
                ``ValueError``, as in Keras).
            SignatureTypeError: ``name`` not a str, ``fn`` not callable, an
                ``input_signature`` leaf that is not a spec or tensor, or one
                that does not fit ``fn``'s arguments (a ``TypeError`` too).
            CaptureError: when tracing ``fn`` fails.
        """
        _check_name(name, "the endpoint `name`")
        if name in self._endpoints:
            raise SignatureError(
                f"Endpoint name '{name}' is already taken. Expected a new name. "
                f"Existing endpoints: {list(self._endpoints)}"
            )
        if name in self._collections or name in _RESERVED:
            raise SignatureError(
                f"Expected an endpoint name not used by a variable collection or "
                f"reserved ({sorted(_RESERVED)}). Received: {name!r}"
            )
        if not callable(fn):
            raise SignatureTypeError(f"Expected `fn` to be callable. Received: {describe(fn)}")
        signature = None if input_signature is None else normalize(input_signature)
        endpoint = self._capture.trace(name, fn, signature, **kwargs)
        self._endpoints[name] = endpoint
        return endpoint.function

    def track_and_add_endpoint(self, name: str, resource: Any, input_signature: Any,
                               **kwargs: Any) -> Any:
        """Track ``resource`` and add an endpoint that calls it.

        The returned ``tf.function`` may be called inside a later
        ``tf.function`` endpoint, e.g. to combine TensorFlow preprocessing
        with the model.
        """
        self.track(resource)
        return self.add_endpoint(name, resource.__call__, input_signature, **kwargs)

    def add_variable_collection(self, name: str, variables: Any) -> None:
        """Expose ``variables`` as attribute ``name`` of the reloaded object.

        Args:
            name: attribute name on the reloaded object (and on this archive:
                ``archive.<name>`` lists the variables the artifact holds for
                them, e.g. to use them in a ``tf.function`` endpoint).
            variables: a list, tuple or set of ``keras.Variable`` or
                ``tf.Variable`` objects. On JAX, Keras variables are held as
                ``tf.Variable`` copies owned by the archive (the same copies as
                :attr:`variables` shows).
        """
        import keras

        _check_name(name, "the collection `name`")
        if name in self._endpoints or name in self._collections or name in _RESERVED:
            raise SignatureError(
                f"Expected a collection name not already used by an endpoint or "
                f"collection and not reserved. Received: {name!r}"
            )
        if not isinstance(variables, (list, tuple, set)) or not all(
                isinstance(v, keras.Variable) or is_tf_variable(v) for v in variables):
            raise SignatureError(
                "Expected `variables` to be a list/tuple/set of keras.Variable or "
                f"tf.Variable. Received: {describe(variables)}"
            )
        self._collections[name] = self._capture.collection(list(variables))
        self._collection_vars[name] = list(variables)

    def write_out(self, filepath: str | os.PathLike[str], options: Any | None = None,
                  verbose: bool = True, format: str = "tf_saved_model",
                  overwrite: bool = False, sample_data: Any | None = None,
                  verify: bool = True, **format_options: Any) -> None:
        """Write the artifact to ``filepath`` atomically, checked before it is placed.

        Args:
            filepath: where to write (a folder for SavedModel).
            options: a ``tf.saved_model.SaveOptions`` (SavedModel only).
            verbose: print a summary of endpoints and files written.
            format: the artifact format.
            overwrite: replace ``filepath`` even when it holds data that is
                not a kexport artifact (a kexport artifact is always replaced).
            sample_data: inputs the default endpoint really takes (its input
                structure: one array, a tuple/list, or a dict by input name):
                where the archive is checked before it is placed (a
                re-hosted archive), the default endpoint is checked on batch
                slices of it instead of generated inputs.
            verify: check the staged artifact before it is placed: the
                format's runtime runs it in this process and every endpoint
                is compared with the function it was added with (one whose
                two live calls differ, e.g. layers in training mode, by
                shapes only); when it differs, nothing is written. ``False``
                writes it unchecked (re-hosted archives check themselves).
            **format_options: options of the format's archive writer (its
                keyword-only parameters), e.g. ``opset_version=17`` for
                ``format="onnx"``; ``quantization=`` (and ``calibration_data=``
                for ``"int8"``) where the format quantizes (ONNX, LiteRT, OpenVINO; see
                docs/quantization.md); ``quantization_exclude=`` (layers of the
                tracked models kept in float) where it can (ONNX, OpenVINO).
                They reach a re-hosted archive's writer too (calibration
                batches read here, against every endpoint, before the child
                starts).

        Where the route tables say so (:func:`kexport.routing.archive_routes.archive_host`,
        e.g. ``format="torch"`` on TensorFlow/JAX, ``"openvino"`` on JAX,
        most formats on PyTorch), the archive is re-hosted: the tracked
        models are rebuilt on the host backend in a child process, the
        endpoints re-created from their description as data, the artifact
        written there and compared with the live endpoints at two batch
        sizes before it is placed.

        Raises:
            SignatureError: when no endpoint was added (a ``ValueError``).
            QuantizationError: ``quantization`` is unknown or one the format
                cannot write, or ``"int8"`` lacks ``calibration_data`` (a
                ``ValueError``); nothing is written.
            SignatureTypeError: an option is not one the format's writer takes,
                or ``options`` is not a ``tf.saved_model.SaveOptions``.
            UnknownFormatError: ``format`` is not a kexport format (a
                ``ValueError``).
            UnsupportedRouteError: ``options`` given where the archive is
                re-hosted (it cannot reach the child process; the format
                options do), or an endpoint of a
                re-hosted archive cannot be described as data (e.g. a
                closure with extra computation).
            VerificationError: a re-hosted artifact differs from the live
                endpoints (nothing is written then).
            SampleDataError: ``sample_data`` does not fit the default
                endpoint's inputs (a ``ValueError``); nothing is written.
            TargetExistsError: ``filepath`` holds other data and
                ``overwrite`` is false.
            WriteError: when writing fails; nothing is left half-written.
        """
        format_info(format)  # the arguments, checked once, where the call enters
        _atomic.check_filepath(filepath)
        printer = Printer.resolve(verbose)
        typed = self._typed_options(format, options, format_options)
        if typed is None:  # a format whose options are not declared yet
            mode = check_quantization(format, format_options.get("quantization"),
                                      format_options.get("calibration_data"))
            check_exclude(format, mode, format_options.get("quantization_exclude"))
        if not self._endpoints:
            raise SignatureError(
                "Expected at least one endpoint before write_out(). Received an "
                "archive with none: call add_endpoint() first."
            )
        policy = None
        if sample_data is not None:
            default = self._endpoints[self.default_endpoint]
            policy = SamplePolicy(names=tuple(default.input_names), endpoint=default.name,
                                  data=flat_sample_data(sample_data, flatten(default.signature),
                                                        default.input_names))
        if not isinstance(verify, bool):
            raise SignatureTypeError(
                f"Expected `verify` to be True or False. Received: {describe(verify)}")
        _atomic.check_destination(filepath, overwrite)
        check = archive_check(self._capture.described(), self._endpoints,
                              self._capture.trackables()["tracked_layers"], filepath, policy,
                              format_options.get("calibration_data")) if verify else None
        self.write_with(ExportContext(overwrite=overwrite, samples=policy, check=check,
                                      printer=printer, options=typed),
                        filepath, options=options, format=format, **format_options)

    def write_with(self, context: ExportContext, filepath: str | os.PathLike[str],
                   options: Any | None = None, format: str = "tf_saved_model",
                   **format_options: Any) -> None:
        """:meth:`write_out` under an export's context (``export_model``'s one
        default endpoint, a re-host child's archive): the arguments (the destination,
        the quantization request) were checked, and ``verbose`` resolved into
        ``context.printer``, where the context was built."""
        writer = archive_route(format).writer
        if context.options is None and archive_route(format).options is not None:
            # a context built without them (a re-host child's): parsed here, once
            context = dataclasses.replace(
                context, options=self._typed_options(format, options, format_options))
        valid = _format_options(writer)
        unknown = sorted(set(format_options) - set(valid))
        if unknown and context.options is None:
            raise SignatureTypeError(
                f"Unexpected keyword arguments for write_out(format={format!r}): {unknown}. "
                f"Expected only: {valid or 'none (this format takes no options)'}"
            )
        host = archive_host(self.backend, format)
        if host is not None:  # written by re-hosting the archive onto another backend
            writer = in_process_first(self.backend, format, writer, functools.partial(
                write_archive_rehosted, format=format, host=host))
        writer(self, filepath, context=context, options=options, **format_options)

    def _typed_options(self, format: str, options: Any, given: dict[str, Any]) -> Any:
        """``given`` parsed by the format's declared options (the one check of them:
        unknown names, types, the quantization request), ``None`` where it declares none."""
        declared = archive_route(format).options
        return declared.for_write_out(options, given, backend=self.backend) if declared else None

    # -- for writers ----------------------------------------------------------
    @property
    def collections(self) -> dict[str, list[Any]]:
        """Variable collections, name -> what the capture made of them (``tf.Variable``
        objects, or references into the tracked models on a re-hosting capture)."""
        return dict(self._collections)

    def variable_collections(self) -> dict[str, list[Any]]:
        """Variable collections, name -> the ``keras.Variable`` objects given."""
        return {k: list(v) for k, v in self._collection_vars.items()}

    def described_endpoints(self) -> dict[str, tuple[Any, Callable[..., Any]]]:
        """Endpoints as data for re-hosting: name -> (``EndpointRecipe`` or why it could
        not be described, the live endpoint function)."""
        return self._capture.described()

    def trackables(self) -> dict[str, Any]:
        """What the artifact must hold: variables, resources, tracked state."""
        return self._capture.trackables()

    def save_context(self) -> Any:
        """The backend's context for serialising traced functions."""
        return self._capture.save_context()
