"""cuDNN fallback: a function of our own fails with PyTorch's real cuDNN messages, and the retries must
see the settings that work around them."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F

from modelzoo import cudnn

# Messages as PyTorch 2.x raises them (aten/src/ATen/cudnn and native/cudnn).
NOT_SUPPORTED = ("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "
                 "non-contiguous input.")
ALLOC_FAILED = "cuDNN error: CUDNN_STATUS_ALLOC_FAILED"
NO_ALGORITHM = "Unable to find a valid cuDNN algorithm to run convolution"


class FailingConvolution:
    """A real convolution that raises the given cuDNN errors on its first calls and records the cuDNN
    settings each call runs under."""

    def __init__(self, *errors: str) -> None:
        self.errors = list(errors)
        self.calls: list[dict] = []

    def __call__(self, image: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        self.calls.append({
            "enabled": torch.backends.cudnn.enabled,
            "benchmark": torch.backends.cudnn.benchmark,
            "workspace": os.environ.get(cudnn.WORKSPACE_ENV),
        })
        if self.errors:
            raise RuntimeError(self.errors.pop(0))
        return F.conv2d(image, weight, padding=1)


@pytest.fixture()
def cudnn_flags():
    """Turn cuDNN on with autotuning, as a user's options would, and restore the flags afterwards."""
    before = (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark)
    cudnn.configure_cudnn(enabled=True, benchmark=True)
    yield
    torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark = before


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 16, 16, generator=generator), torch.rand(4, 3, 3, 3, generator=generator)


def test_retry_with_small_workspace(cudnn_flags, caplog) -> None:
    convolution = FailingConvolution(NOT_SUPPORTED)
    image, weight = inputs()
    with caplog.at_level(logging.WARNING, logger="modelzoo.cudnn"):
        result = cudnn.run_with_cudnn_fallback(convolution, image, weight)

    torch.testing.assert_close(result, F.conv2d(image, weight, padding=1), rtol=0, atol=0)
    assert convolution.calls[0] == {"enabled": True, "benchmark": True, "workspace": None}
    assert convolution.calls[1] == {"enabled": True, "benchmark": False, "workspace": str(cudnn.SMALL_WORKSPACE_MIB)}
    assert "CUDNN_STATUS_NOT_SUPPORTED" in caplog.text
    assert "retrying with a 256 MiB cuDNN workspace" in caplog.text


def test_retry_without_cudnn(cudnn_flags) -> None:
    convolution = FailingConvolution(ALLOC_FAILED, NO_ALGORITHM)
    cudnn.run_with_cudnn_fallback(convolution, *inputs())
    assert [call["enabled"] for call in convolution.calls] == [True, True, False]


def test_settings_restored_after_retry(cudnn_flags) -> None:
    cudnn.run_with_cudnn_fallback(FailingConvolution(ALLOC_FAILED, ALLOC_FAILED), *inputs())
    assert torch.backends.cudnn.enabled is True
    assert torch.backends.cudnn.benchmark is True
    assert cudnn.WORKSPACE_ENV not in os.environ


def test_every_fallback_failing_raises(cudnn_flags) -> None:
    convolution = FailingConvolution(ALLOC_FAILED, ALLOC_FAILED, NOT_SUPPORTED)
    with pytest.raises(cudnn.CudnnFallbackError, match="every fallback") as caught:
        cudnn.run_with_cudnn_fallback(convolution, *inputs())
    assert len(caught.value.attempts) == 3
    assert "CUDNN_STATUS_NOT_SUPPORTED" in caught.value.attempts[-1]
    assert "--device cpu" in caught.value.hint


def test_other_errors_propagate_unchanged(cudnn_flags) -> None:
    convolution = FailingConvolution("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(RuntimeError, match="^CUDA out of memory") as caught:
        cudnn.run_with_cudnn_fallback(convolution, *inputs())
    assert type(caught.value) is RuntimeError
    assert len(convolution.calls) == 1


def test_non_runtime_errors_propagate(cudnn_flags) -> None:
    def broken(_image, _weight):
        raise ValueError("CUDNN_STATUS_NOT_SUPPORTED in a ValueError is not a cuDNN failure")

    with pytest.raises(ValueError):
        cudnn.run_with_cudnn_fallback(broken, *inputs())


@pytest.mark.parametrize("message, status", [
    (NOT_SUPPORTED, "CUDNN_STATUS_NOT_SUPPORTED"),
    (ALLOC_FAILED, "CUDNN_STATUS_ALLOC_FAILED"),
    (NO_ALGORITHM, "Unable to find a valid cuDNN algorithm"),
    ("CUDA error: device-side assert triggered", ""),
])
def test_cudnn_status(message: str, status: str) -> None:
    assert cudnn.cudnn_status(RuntimeError(message)) == status


def test_configure_cudnn(cudnn_flags) -> None:
    cudnn.configure_cudnn(enabled=False, benchmark=False)
    assert torch.backends.cudnn.enabled is False
    assert torch.backends.cudnn.benchmark is False
