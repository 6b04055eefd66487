"""A TorchScript network inside a medimg checkpoint (architecture ``"torchscript"``).

What ``continual expand`` and ``federated simulate`` write for a ``.ts`` model: the program, as
``torch.jit.save`` writes it, is stored as a uint8 tensor under the checkpoint payload key
:data:`PROGRAM_KEY` (:func:`program_tensor`), the trained weights in the state dict as usual, and
:func:`scripted_network` rebuilds the network in its
:class:`~medimg.model_sources.adapters.ModelAdapter`. The program is taken from the network being
saved, not from the original ``.ts`` file, so a checkpoint never depends on a file that may have
moved (it holds the weights twice: in the program and in the state dict, which wins).
``medimg.models`` imports this module; it imports nothing of ``medimg.models``.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["PROGRAM_KEY", "ScriptedModelError", "program_tensor", "scripted_network"]

#: Checkpoint payload key of a TorchScript network's program (a uint8 tensor of ``torch.jit.save`` bytes).
PROGRAM_KEY = "torchscript_program"


class ScriptedModelError(ValueError):
    """A TorchScript or exported-program file (or a checkpoint's TorchScript program) cannot be read."""


def program_tensor(module: Any) -> Any:
    """The ``torch.jit.save`` bytes of a TorchScript ``module`` as a 1-D uint8 tensor (CPU).

    Raises:
        ScriptedModelError: ``module`` is not a TorchScript module.
    """
    import io

    import torch

    if not isinstance(module, torch.jit.ScriptModule):
        raise ScriptedModelError(f"a 'torchscript' checkpoint needs a TorchScript network, not {type(module).__name__}")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def scripted_network(program: Any, adapter: Any, *, where: str, map_location: Any = "cpu") -> Any:
    """The TorchScript network of ``program`` (:func:`program_tensor`) in a
    :class:`~medimg.model_sources.adapters.ModelAdapter` with the ``adapter`` settings.

    Raises:
        ScriptedModelError: no program, or bytes TorchScript cannot read; ``where`` names the file.
    """
    import io

    import torch

    from medimg.model_sources.adapters import ModelAdapter

    if not isinstance(program, torch.Tensor) or program.dtype != torch.uint8 or program.ndim != 1:
        raise ScriptedModelError(f"{where}: a 'torchscript' network needs its program ({PROGRAM_KEY!r}, uint8 bytes)")
    if not isinstance(adapter, dict):
        raise ScriptedModelError(f"{where}: a 'torchscript' network needs its 'adapter' settings in meta['network']")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(program.cpu().numpy().tobytes()), map_location=map_location)
    except Exception as exc:  # torch raises RuntimeError and others for bad bytes
        detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        raise ScriptedModelError(f"{where}: its TorchScript program could not be read: {detail}") from exc
    return ModelAdapter(module, **adapter)
