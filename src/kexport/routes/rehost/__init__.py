"""Re-hosting: rebuild a model on another Keras backend in a child process.

See :mod:`kexport.routes.rehost.parent` for the four steps (describe, rebuild
and export in the child, verify, place), :mod:`kexport.routes.rehost.child`
for the worker process and :mod:`kexport.routes.rehost.capture` for the
``ExportArchive`` capture of backends whose archives are always re-hosted.
"""

from kexport.routes.rehost.parent import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    close_workers,
    rehost_export,
    rehost_problem,
    saved_model_via_tensorflow,
    write_archive_rehosted,
)

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "close_workers", "rehost_export", "rehost_problem",
           "saved_model_via_tensorflow", "write_archive_rehosted"]
