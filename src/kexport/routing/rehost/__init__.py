"""Re-hosting: rebuild a model on another Keras backend in a child process.

See :mod:`kexport.routing.rehost.parent` for the four steps (describe, rebuild
and export in the child, verify, place), :mod:`kexport.routing.rehost.recipe`
for models that travel by value (classes defined in a function, no
``get_config``; variables paired by path), :mod:`kexport.routing.rehost.state`
for the tensors layers hold outside variables, :mod:`kexport.routing.rehost_child`
for the worker process and :mod:`kexport.routing.rehost.capture` for the
``ExportArchive`` capture of backends whose archives are always re-hosted.
"""

from kexport.routing.rehost.parent import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    close_workers,
    rehost_export,
    rehost_problem,
    write_archive_rehosted,
)

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "close_workers", "rehost_export", "rehost_problem",
           "write_archive_rehosted"]
