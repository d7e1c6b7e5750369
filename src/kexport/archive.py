"""``ExportArchive``: several serving endpoints in one artifact.

The public face of :class:`kexport.routing.archive.ExportArchive` (the class
lives with the route tables it writes through).
"""

from kexport.routing.archive import ExportArchive

__all__ = ["ExportArchive"]
