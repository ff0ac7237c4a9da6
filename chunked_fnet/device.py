"""Which torch device and autocast dtype a job runs with: one choice for training and prediction alike,
so a model is trained and applied under the same rules and a bad ``device`` setting fails the same way."""

from __future__ import annotations

from typing import Literal, get_args

import torch

from chunked_fnet.errors import InputError

#: What a config's ``precision`` may say (see :func:`autocast_dtype`).
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_EXPECTED = "expected 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device"


def parse_device(name: str) -> torch.device | None:
    """The device a name means (None for ``"auto"``), without asking whether this machine has it: a
    client may plan a run for GPU workers from a login node without one."""
    if name == "auto":
        return None
    try:
        return torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {name!r} is not a torch device; {_EXPECTED}") from None


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA device when torch sees one, else the CPU; anything else is checked
    now (a valid device string, and for an accelerator that it exists), not at the first tensor."""
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    available = getattr(backend, "is_available", None)
    if available is not None and not available():
        raise InputError(f"device {name!r}: torch {torch.__version__} sees no {device.type} device here; use 'cpu' or 'auto'")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise InputError(f"device {name!r}: torch sees only {count()} {device.type} device(s) (0 to {count() - 1})")
    return device


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype to autocast to, or None for plain float32. On CUDA "auto" and "bf16" mean bfloat16,
    "fp16" float16 (with a grad scaler in training). On a CPU only an explicit "bf16" autocasts (fast
    where the CPU has AVX512-BF16 or AMX: benchmarks/gpu_path.py); "auto" stays float32 there."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if torch.device(device).type == "cpu" and precision == "bf16":
        return torch.bfloat16
    if torch.device(device).type != "cuda" or precision == "fp32":
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in hardware (not by emulation through fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def device_memory(device: torch.device) -> tuple[str, int]:
    """The name and total memory (bytes) of ``device``: a GPU's own, or this machine's for the CPU."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.name, int(props.total_memory)
    import psutil

    return "host memory", int(psutil.virtual_memory().total)


def describe_device(device: torch.device) -> str:
    """``device`` in words for a message: ``cuda:0 (NVIDIA H200, 139.8 GiB)``."""
    name, total = device_memory(device)
    return f"{device} ({name}, {total / 2**30:.1f} GiB)"
