"""Serving layouts: an artifact placed where a serving system loads it as it is.

:func:`write_layout` writes a kexport artifact into a model repository folder
for TF-Serving (``tf-serving``), Triton (``triton``) or KServe (``kserve``);
:func:`read_layout` finds the artifact again in such a folder (``kexport
serve`` uses it). See ``docs/serving.md`` for what each layout holds and how
to deploy it. Every version folder is written atomically and never replaced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kexport.errors import LayoutError, describe
from kexport.layouts import kserve, tf_serving, triton
from kexport.layouts._place import choose_version
from kexport.layouts._repo import (
    Layout,
    check_name,
    check_version,
    default_name,
    existing_versions,
    next_free_version,
)
from kexport.runtime import Artifact, detect, load

__all__ = ["LAYOUTS", "Layout", "check_layout", "check_name", "choose_version", "default_name",
           "existing_versions", "layout_format", "next_free_version", "read_layout",
           "write_layout"]

#: layout name -> the artifact formats it holds, the preferred one first.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "tf-serving": ("tf_saved_model",),
    "triton": tuple(triton.FORMATS),
    "kserve": tuple(kserve.FORMATS),
}
_WHY_NOT: dict[str, str] = {
    "torch": "Triton's PyTorch backend runs TorchScript (model.pt) or AOTInductor packages "
             "(torch._inductor.aoti_compile_and_package), not torch.export programs "
             "(torch.export.save .pt2)",
    "litert": "no TF-Serving, Triton or KServe runtime loads LiteRT flatbuffers",
}
#: File names a version folder may hold its artifact under (TF-Serving: the
#: folder itself).
_ARTIFACT_NAMES = ("model.onnx", "model.savedmodel", "model.xml", "model.pt2")


def layout_format(layout: str) -> str:
    """The format an export for ``layout`` uses when none is asked for."""
    return LAYOUTS[check_layout(layout)][0]


def check_layout(layout: Any, format: str | None = None) -> str:
    """``layout`` if it is a layout name that can hold a ``format`` artifact.

    Raises:
        LayoutError: an unknown layout, or a format it cannot hold (the
            message names the formats it takes).
    """
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise LayoutError(f"Expected `layout` to be one of {list(LAYOUTS)}. "
                          f"Received: {describe(layout)}")
    if format is not None and format not in LAYOUTS[layout]:
        why = _WHY_NOT.get(format)
        raise LayoutError(
            f"Expected an artifact the {layout} layout can hold, one of the formats "
            f"{list(LAYOUTS[layout])}. Received: a {format} artifact"
            + (f" ({why})" if why else "") + ". Nothing was written. Next step: export the "
            f"model with format='{LAYOUTS[layout][0]}' for this layout.")
    return layout


def _open(artifact: Any) -> tuple[Artifact, Path]:
    if isinstance(artifact, Artifact):
        return artifact, Path(os.fspath(artifact.path))
    if not isinstance(artifact, (str, os.PathLike)) or not os.fspath(artifact):
        raise LayoutError("Expected `artifact` to be the path of a kexport artifact or a "
                          f"kexport.Artifact. Received: {describe(artifact)}")
    path = Path(os.fspath(artifact))
    return load(path, detect(path)), path


def write_layout(artifact: Any, repo_dir: str | os.PathLike[str], name: str | None = None,
                 version: int | None = None, *, layout: str | None = None) -> list[Layout]:
    """Write ``artifact`` into the model repository ``repo_dir`` as a serving layout.

    Args:
        artifact: the path of a kexport artifact, or a :class:`kexport.Artifact`.
        repo_dir: the repository folder (created when missing); other models
            and versions in it are left alone.
        name: the model's name (its folder); default: the artifact's file
            stem. A multi-endpoint artifact in a Triton repository becomes one
            model per endpoint, ``<name>_<endpoint>``.
        version: the version number; ``None``: the next free number (one more
            than the highest version of the model(s)). An existing version is
            never overwritten.
        layout: ``"tf-serving"`` (SavedModel + warm-up records), ``"triton"``
            (``config.pbtxt`` + ``model.onnx`` / ``model.savedmodel`` /
            ``model.xml``) or ``"kserve"`` (the layout of the KServe runtime
            for the format, plus an ``InferenceService`` YAML); ``None``: by
            the artifact's format, ``tf-serving`` for a SavedModel, else ``triton``.

    Returns:
        One :class:`Layout` per model written: ``(name, version,
        artifact_path, format)``.

    Example:

    ```python
    kexport.export_model(model, "clf.onnx", format="onnx")
    kexport.write_layout("clf.onnx", "models", layout="triton")
    # models/clf/config.pbtxt, models/clf/1/model.onnx
    ```

    Raises:
        LayoutError: an unknown layout, an artifact it cannot hold, a bad
            ``name`` or ``version``.
        ArtifactError: when ``artifact`` is not a kexport artifact.
        TargetExistsError: when ``version`` exists (the message names the
            next free one), or a Triton model of that name has another
            ``config.pbtxt``. Nothing is written then.
        WriteError: when writing fails; no partial version folder is left.
    """
    if not isinstance(repo_dir, (str, os.PathLike)) or not os.fspath(repo_dir):
        raise LayoutError("Expected `repo_dir` to be a non-empty str or pathlib.Path. "
                          f"Received: {describe(repo_dir)}")
    version = check_version(version)
    if name is not None:
        check_name(name)
    if layout is not None:
        check_layout(layout)
    opened, source = _open(artifact)
    format = opened.format
    if layout is None:
        layout = "tf-serving" if format == "tf_saved_model" else "triton"
    check_layout(layout, format)
    name = default_name(source) if name is None else name
    repo = Path(os.fspath(repo_dir))
    if layout == "tf-serving":
        return tf_serving.write(opened, source, repo, name, version)
    if layout == "triton":
        return triton.write(opened, source, format, repo, name, version)
    return kserve.write(opened, source, format, repo, name, version)


def _artifact_in(version_dir: Path) -> tuple[Path, str]:
    if (version_dir / "saved_model.pb").is_file():
        return version_dir, "tf_saved_model"
    for filename in _ARTIFACT_NAMES:
        candidate = version_dir / filename
        if candidate.exists():
            return candidate, detect(candidate)
    raise LayoutError(
        f"Expected a version folder holding a SavedModel or one of {list(_ARTIFACT_NAMES)}. "
        f"Received: '{os.fspath(version_dir)}', which holds none of them.")


def read_layout(path: str | os.PathLike[str]) -> Layout:
    """The model a layout folder serves: ``(name, version, artifact_path, format)``.

    Args:
        path: a model folder (``<repo>/<name>``: its highest version), a
            version folder (``<repo>/<name>/<VERSION>``), or a repository
            holding exactly one model.

    Raises:
        LayoutError: when ``path`` is no such folder (the message says what
            was found).
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise LayoutError("Expected `path` to be a non-empty str or pathlib.Path. "
                          f"Received: {describe(path)}")
    p = Path(os.fspath(path))
    if not p.is_dir():
        raise LayoutError(f"Expected a layout folder. Received: '{os.fspath(path)}', which "
                          f"{'is a file' if p.exists() else 'does not exist'}.")
    if p.name.isdigit() and int(p.name) > 0:
        model_dir, version = p.resolve().parent, int(p.name)
    else:
        model_dir = p.resolve()
        versions = existing_versions(model_dir)
        if not versions:
            models = sorted(d for d in model_dir.iterdir()
                            if d.is_dir() and existing_versions(d))
            if len(models) != 1:
                found = [d.name for d in models]
                raise LayoutError(
                    "Expected a model folder holding version folders (1, 2, ...), or a "
                    f"repository holding one model. Received: '{os.fspath(path)}'"
                    + (f", a repository holding models {found}: pass one of them."
                       if found else ", which holds neither."))
            model_dir, versions = models[0], existing_versions(models[0])
        version = versions[-1]
    artifact, format = _artifact_in(model_dir / str(version))
    return Layout(model_dir.name, version, os.fspath(artifact), format)
