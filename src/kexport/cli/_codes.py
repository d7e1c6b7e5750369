"""Exit codes of the ``kexport`` command: 0 success, 1 verification failed, 2 bad input."""

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
