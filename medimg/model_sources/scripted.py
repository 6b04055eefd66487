"""TorchScript (``torch.jit.save``, ``.ts``) and ``torch.export`` (``.pt2``) model files.

Both hold a computation graph and its weights, not Python code: TorchScript is run by torch's own
interpreter, an exported program by torch's graph runtime. Neither says how to feed the model, so
they come with a model card (:mod:`medimg.model_sources.card`), found beside the file.

A TorchScript network can also live inside a medimg checkpoint: see :mod:`medimg.model_sources.program`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from medimg.model_sources.program import ScriptedModelError

__all__ = ["SCRIPTED_SUFFIXES", "ScriptedModelError", "card_path_for", "load_scripted"]

SCRIPTED_SUFFIXES = {".ts": "torchscript", ".pt2": "torch.export"}


def card_path_for(path: str | os.PathLike[str]) -> Path | None:
    """The model card beside a model file: ``NAME.yaml``, ``NAME.card.yaml`` (NAME without the
    suffix), ``FILE.yaml`` or ``model_card.yaml`` in the same folder, the first that exists."""
    path = Path(path)
    for candidate in (
        path.with_suffix(".yaml"),
        path.with_suffix(".card.yaml"),
        path.with_name(path.name + ".yaml"),
        path.with_name("model_card.yaml"),
    ):
        if candidate.is_file():
            return candidate
    return None


def load_scripted(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> tuple[Any, str]:
    """``(module, kind)`` for a ``.ts`` or ``.pt2`` file, in eval mode on ``map_location``.

    Raises:
        ScriptedModelError: missing, corrupt or truncated file, or not what its suffix says.
    """
    import torch

    from medimg.models import load_error_detail

    path = Path(path)
    kind = SCRIPTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ScriptedModelError(f"model {path}: expected a .ts (TorchScript) or .pt2 (torch.export) file")
    if not path.is_file():
        raise ScriptedModelError(f"model {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        if kind == "torchscript":
            with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; users still have such files
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=map_location)
        else:
            module = torch.export.load(str(path)).module()
            module.to(map_location)
    except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors... for bad files
        raise ScriptedModelError(
            f"model {path} could not be read as a {kind} file (corrupt or truncated?): {load_error_detail(exc)}"
        ) from exc
    if kind == "torchscript":
        module.eval()
    return module, kind
