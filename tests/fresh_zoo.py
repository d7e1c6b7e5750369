"""Fresh-process side of tests/test_zoo.py: reload with the format's own runtime.

Uses the zoo's reload (benchmarks/zoo.py imports neither Keras nor kexport at
module level; its runners import only the format's runtime).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))


def reload_and_compare(work, fmt, path):
    import zoo

    out = zoo.reload_and_compare(work, fmt, path)
    out["keras_imported"] = "keras" in sys.modules
    return out
