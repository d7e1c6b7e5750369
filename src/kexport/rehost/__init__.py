"""Re-hosting: rebuild a model on another Keras backend in a child process.

Keras picks its backend once per process, so a route that needs another
backend (PyTorch -> SavedModel without ``torch_xla``, JAX -> a format only the
TensorFlow backend writes, ...) works in four steps:

1. *describe* (parent): every tracked model becomes data: its Keras config
   (``keras.saving.serialize_keras_object``) where every class is importable
   and configurable, the model by value (:mod:`kexport.rehost.recipe`,
   for classes defined in a function or ``__main__`` and layers without a
   usable ``get_config``), and the paths and values of **all** its
   variables, seed-generator states and BatchNorm statistics included (a
   ``.keras`` file drops seed states), and every tensor or array a layer holds
   outside its variables (:mod:`kexport.rehost.state`). Endpoints become :class:`EndpointRecipe`
   objects: which tracked model, which method, which constant keyword
   arguments (``training=False``), which input signature.
2. *rebuild and export* (child, ``KERAS_BACKEND=<target>``, clean
   environment, private temporary folder per job): the models are rebuilt
   from their configs (else by value), their variables assigned by path and
   their layers' other tensors set again by layer path, the endpoints re-created
   from the recipes and the artifact written with the target backend's native
   route. The child then opens the artifact with :func:`kexport.load` (the
   format's own runtime) and runs it on sample inputs. The child is one
   persistent worker per target backend (``python -m
   kexport.routing.rehost_child`` through :class:`subprocess.Popen`, never
   ``multiprocessing``), started on first use, restarted if it died, reused
   by later re-hosts of the same parent process (the backend import is paid
   once) and stopped at exit.
3. *verify* (parent): the child's outputs are compared with the live model's
   (the user's own endpoint functions) at the check's case sizes (batch 1
   and 3, :mod:`kexport.check`: the inputs, float32 tolerances and
   comparison every kexport check uses); a difference is a
   :class:`~kexport.errors.VerificationError` with a per-output report.
4. *place* (parent): only then is the artifact moved to ``filepath``
   atomically (an earlier artifact there is kept on any failure).

The public entry points are :func:`rehost_export` (one model, any format),
:class:`~kexport.rehost.capture.RehostCapture` (an ``ExportArchive`` capture that records endpoints as
data and re-hosts at ``write_out``) and :func:`write_archive_rehosted` (any
capture's archive, for the formats the route tables re-host, e.g. ``.pt2`` from
TensorFlow/JAX archives; the TensorFlow and JAX captures record every
endpoint as data too, best-effort, with :func:`kexport.capture.endpoint.recipe_or_reason`).

The package is split by job: :mod:`~kexport.rehost.eligibility` (can a model
travel), :mod:`~kexport.rehost.serialize`, :mod:`~kexport.rehost.recipe`,
:mod:`~kexport.rehost.pairing` and :mod:`~kexport.rehost.state` (what
travels and how it is put back), :mod:`~kexport.rehost.cases` (the live
side of the check), :mod:`~kexport.rehost.job` (the typed job record sent to
the child), :mod:`~kexport.rehost.worker` (the child's lifecycle),
:mod:`~kexport.rehost.child` (the child's work),
:mod:`~kexport.rehost.diagnosis` (where a refused re-host goes wrong),
:mod:`~kexport.rehost.placement` (the atomic move), :mod:`~kexport.rehost.export`
(the pipeline) and :mod:`~kexport.rehost.archive` (archives).
"""

from kexport.rehost.archive import write_archive_rehosted
from kexport.rehost.eligibility import rehost_problem
from kexport.rehost.export import DEFAULT_ATOL, DEFAULT_RTOL, rehost_export
from kexport.rehost.worker import close_workers

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "close_workers", "rehost_export", "rehost_problem",
           "write_archive_rehosted"]
