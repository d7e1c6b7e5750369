"""Open untrusted ``.keras`` files safely (for the CLI and re-hosting).

A ``.keras`` file is a zip archive holding ``config.json``,
``metadata.json`` and ``model.weights.h5``. Before Keras sees it, this module
checks that it is such an archive (no member escaping the archive with ``..``
or an absolute name, strict JSON without duplicate keys or NaN), and then
loads it with Keras **safe mode** on by default: a ``Lambda`` layer holding
Python bytecode is refused unless the caller passes ``safe_mode=False``.
Nothing is unpickled: Keras reads weights from HDF5 and the config from JSON;
legacy ``.h5``/SavedModel inputs (which can carry marshalled code) are refused.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from kexport.artifact import strict_json
from kexport.errors import ArtifactError, KexportError, SignatureError, SignatureTypeError, describe

__all__ = ["load_keras_file"]

_REQUIRED = ("config.json",)
_MAX_JSON_BYTES = 64 << 20


def _check_archive(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise ArtifactError(
            f"Expected a .keras file (a zip archive written by model.save). Received: "
            f"'{path.name}', which is not a zip archive (corrupted, truncated or another "
            "kind of file)."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                pure = PurePosixPath(name.replace("\\", "/"))
                if pure.is_absolute() or ".." in pure.parts:
                    raise ArtifactError(
                        f"Refusing the .keras file '{path.name}': member {name!r} would "
                        "escape the archive."
                    )
            missing = [n for n in _REQUIRED if n not in names]
            if missing:
                raise ArtifactError(
                    f"Expected a .keras file holding {list(_REQUIRED)}. Received: "
                    f"'{path.name}' without {missing}."
                )
            for name in ("config.json", "metadata.json"):
                if name not in names:
                    continue
                info = archive.getinfo(name)
                if info.file_size > _MAX_JSON_BYTES:
                    raise ArtifactError(f"Refusing '{path.name}': {name} is "
                                        f"{info.file_size} bytes.")
                strict_json(archive.read(name), what=f"{name} in '{path.name}'")
            bad = archive.testzip()
            if bad is not None:
                raise ArtifactError(f"The .keras file '{path.name}' is corrupted: member "
                                    f"{bad!r} fails its checksum.")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if isinstance(e, KexportError):
            raise
        raise ArtifactError(
            f"The .keras file '{path.name}' is corrupted or truncated: {e}"
        ) from e


def load_keras_file(filepath: str | os.PathLike[str], *, safe_mode: bool = True) -> Any:
    """Load a ``.keras`` model file, refusing unsafe content by default.

    Args:
        filepath: the ``.keras`` file.
        safe_mode: Keras safe mode; ``True`` refuses ``Lambda`` layers that hold
            Python bytecode. Pass ``False`` only for files you trust.

    Returns:
        The Keras model, uncompiled.

    Raises:
        SignatureError: when the arguments have the wrong type.
        ArtifactError: when the file is missing, not a ``.keras`` archive,
            corrupted, or refused by safe mode.
    """
    if not isinstance(filepath, (str, os.PathLike)) or not os.fspath(filepath):
        raise (SignatureError if isinstance(filepath, (str, os.PathLike))
               else SignatureTypeError)("Expected `filepath` to be a non-empty str or pathlib.Path. "
                             f"Received: {describe(filepath)}")
    if not isinstance(safe_mode, bool):
        raise SignatureTypeError(f"Expected `safe_mode` to be True or False. Received: "
                             f"{describe(safe_mode)}")
    path = Path(os.fspath(filepath))
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing"
        raise ArtifactError(f"Expected an existing .keras file. Received: "
                            f"filepath='{os.fspath(filepath)}' ({what}).")
    if path.suffix != ".keras":
        raise ArtifactError(
            f"Expected a file ending in .keras (Keras v3 format). Received: '{path.name}'. "
            "Legacy .h5 files can carry marshalled Python code and are not opened; "
            "re-save the model with model.save('model.keras')."
        )
    _check_archive(path)
    import keras

    try:
        return keras.saving.load_model(os.fspath(path), compile=False, safe_mode=safe_mode)
    except Exception as e:  # every Keras failure becomes a typed error
        text = str(e)
        if "safe_mode" in text or "unsafe" in text.lower():
            raise ArtifactError(
                f"Refused to load '{path.name}' in safe mode: it holds Python code "
                f"(e.g. a Lambda layer). Only if you trust the file, pass "
                f"safe_mode=False. Keras said: {text.splitlines()[0] if text else e!r}"
            ) from e
        raise ArtifactError(
            f"Could not load the .keras file '{path.name}': {type(e).__name__}: {text[:500]}"
        ) from e
