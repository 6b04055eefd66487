"""medimg.devices: CUDA asked for where there is none is refused clearly; on the CPU nothing changes."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from medimg.cli import app
from medimg.devices import DeviceError, amp_dtype, check_device, inference_precision, prepare_model, to_device

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@needs_no_gpu
def test_cuda_without_a_gpu_is_refused_naming_the_reason() -> None:
    with pytest.raises(DeviceError, match="--device cuda: .*(without CUDA|no CUDA GPU)"):
        check_device("cuda")
    with pytest.raises(DeviceError, match="not a torch device"):
        check_device("gpu7")
    assert check_device("cpu") == "cpu"


@needs_no_gpu
def test_run_refuses_cuda_before_writing_anything(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["run", "pneumonia", str(tmp_path), "-o", str(tmp_path / "out"), "--device", "cuda"]
    )
    assert result.exit_code == 2 and "--device cuda" in result.output
    assert not (tmp_path / "out").exists()


def test_the_cpu_path_is_plain_float32() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x = torch.rand(2, 1, 8, 8)
    expected = model(x)
    assert amp_dtype("cpu") is None
    assert prepare_model(model, "cpu") is model
    moved = to_device(x, "cpu", channels_last=True)
    assert moved.is_contiguous() and torch.equal(moved, x)
    with inference_precision("cpu"):
        out = model(moved)
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_the_cuda_precision_follows_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("cuda") == torch.bfloat16 and amp_dtype("cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("cuda") == torch.float16
