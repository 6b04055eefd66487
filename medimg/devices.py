"""Running a model on a device: the device check, mixed precision, channels-last and pinned copies.

On a CUDA device inference runs under automatic mixed precision (bfloat16 where the GPU supports
it, else float16), 2-D convolutional networks and their inputs in channels-last memory layout,
and inputs are copied from pinned memory without blocking. On the CPU nothing changes: the same
float32 arithmetic, the same memory layout, the same results as before these existed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["DeviceError", "amp_dtype", "check_device", "inference_precision", "prepare_model", "to_device"]


class DeviceError(ValueError):
    """The device asked for cannot be used here (the message says why)."""


def _is_cuda(device: Any) -> bool:
    import torch

    return torch.device(device).type == "cuda"


def check_device(device: str) -> str:
    """``device`` when torch can use it here.

    Raises:
        DeviceError: not a device name, or CUDA asked for where there is none (the message says
            whether torch was built without CUDA or no GPU is visible).
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"--device {device!r}: not a torch device ({exc})") from exc
    if parsed.type == "cuda":
        if torch.version.cuda is None:
            raise DeviceError(f"--device {device}: this torch ({torch.__version__}) is built without CUDA")
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES, driver)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def amp_dtype(device: Any) -> Any:
    """The mixed-precision type on ``device``: bfloat16 where the CUDA GPU supports it, else float16;
    None on any other device (float32 throughout)."""
    import torch

    if not _is_cuda(device):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def inference_precision(device: Any) -> Iterator[None]:
    """Automatic mixed precision on a CUDA device (:func:`amp_dtype`); nothing elsewhere."""
    import torch

    dtype = amp_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type="cuda", dtype=dtype):
        yield


def _is_2d_cnn(model: Any) -> bool:
    import torch

    return isinstance(model, torch.nn.Module) and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def prepare_model(model: Any, device: Any) -> Any:
    """``model`` ready for inference on ``device``: a 2-D CNN on CUDA in channels-last layout;
    unchanged elsewhere (and a compiled TorchScript or ``torch.export`` program)."""
    import torch

    if _is_cuda(device) and not isinstance(model, torch.jit.ScriptModule) and _is_2d_cnn(model):
        return model.to(memory_format=torch.channels_last)
    return model


def to_device(tensor: Any, device: Any, *, channels_last: bool = False) -> Any:
    """``tensor`` on ``device``: to CUDA from pinned memory without blocking (a 4-D batch in
    channels-last layout when asked); elsewhere ``tensor.to(device)``."""
    import torch

    if not _is_cuda(device):
        return tensor.to(device)
    moved = tensor.pin_memory().to(device, non_blocking=True)
    if channels_last and moved.dim() == 4:
        moved = moved.contiguous(memory_format=torch.channels_last)
    return moved
