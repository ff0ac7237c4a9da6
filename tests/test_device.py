"""One choice of device and autocast dtype for training and prediction."""

from __future__ import annotations

import pytest
import torch

from chunked_fnet.device import autocast_dtype, resolve_device
from chunked_fnet.errors import InputError


def test_auto_is_cuda_when_torch_sees_one_else_cpu() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device() == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["banana", "", "cuda:x", "gpu"])
def test_an_unknown_device_is_refused_in_one_line(name: str) -> None:
    with pytest.raises(InputError, match=rf"^device '{name}' is not a torch device; expected 'auto', 'cpu', 'cuda'") as err:
        resolve_device(name)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_with_the_way_out(name: str) -> None:
    with pytest.raises(InputError, match=rf"^device '{name}': torch .* sees no cuda device here; use 'cpu' or 'auto'$"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_past_the_last_gpu_is_refused() -> None:
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(InputError, match=r"torch sees only \d+ cuda device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(
    "precision, cuda, cpu",
    [("auto", torch.bfloat16, None), ("bf16", torch.bfloat16, torch.bfloat16), ("fp16", torch.float16, None), ("fp32", None, None)],
)
def test_autocast_on_cuda_and_explicit_bf16_on_the_cpu(precision: str, cuda: torch.dtype | None, cpu: torch.dtype | None) -> None:
    assert autocast_dtype(precision, torch.device("cuda")) is cuda
    assert autocast_dtype(precision, "cuda:1") is cuda  # device strings as prediction passes them
    assert autocast_dtype(precision, torch.device("cpu")) is cpu
    assert autocast_dtype(precision, "cpu") is cpu


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(InputError, match=r"precision 'fp8' is not one of auto, fp32, bf16, fp16"):
        autocast_dtype("fp8", "cuda")


def test_training_and_prediction_use_the_same_choice() -> None:
    """The trainer and the prediction tasks call this module, not their own copies."""
    from chunked_fnet.predict import job
    from chunked_fnet.train import step, trainer

    assert trainer.resolve_device is resolve_device and step.autocast_dtype is autocast_dtype
    assert job.resolve_device is resolve_device and job.autocast_dtype is autocast_dtype
