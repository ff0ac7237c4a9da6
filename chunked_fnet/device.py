"""Which torch device and autocast dtype a job runs with: one choice for training and prediction alike,
so a model is trained and applied under the same rules and a bad ``device`` setting fails the same way."""

from __future__ import annotations

import os
import sys
from typing import Literal, get_args

import torch

from chunked_fnet.errors import InputError


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a batch system's allocation, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    refuse_another_workers_gpu(name, device, os.environ.get("CUDA_VISIBLE_DEVICES"), _dask_worker())
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    available = getattr(backend, "is_available", None)
    if available is not None and not available():
        raise InputError(f"device {name!r}: torch {torch.__version__} sees no {device.type} device here; use 'cpu' or 'auto'")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise InputError(f"device {name!r}: torch sees only {count()} {device.type} device(s) (0 to {count() - 1})")
    return device


def _dask_worker() -> str | None:
    """The address of the dask worker this code runs in, or None outside one (distributed not even loaded)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:
        return None


def refuse_another_workers_gpu(name: str, device: torch.device, visible: str | None, worker: str | None) -> None:
    """Refuse ``cuda:N`` (N > 0) in a dask worker that ``CUDA_VISIBLE_DEVICES`` (``visible``) gives its GPUs.

    dask-cuda starts one worker per GPU and lists each one's own GPU first (worker 1 of four:
    ``1,2,3,0``), so there ``cuda``/``cuda:0`` is the worker's own GPU and ``cuda:1`` a neighbour's,
    different on every worker: all workers would crowd onto GPUs that others use too."""
    if device.type != "cuda" or not device.index or worker is None or not visible:
        return
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    target = ids[device.index] if device.index < len(ids) else "none"
    raise InputError(
        f"device {name!r} on dask worker {worker}: CUDA_VISIBLE_DEVICES={visible} numbers this worker's GPUs from its own "
        f"(cuda:0 is GPU {ids[0] if ids else '?'}), so {name} would be GPU {target}, another worker's; use device 'cuda' "
        "(each worker its own GPU, as dask-cuda pins them), or choose GPUs with CUDA_VISIBLE_DEVICES"
    )


def stack_line(device: torch.device) -> str:
    """One line naming what this process computes with: torch, CUDA, cuDNN and the GPU (or the CPU),
    for a worker's log once at its first task (a wrong result or a slow GPU is read against it)."""
    if device.type != "cuda":
        return f"chunked_fnet on {device}: torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"
    cudnn = torch.backends.cudnn.version()
    name, total = device_memory(device)
    release = "none" if cudnn is None else ".".join(map(str, cudnn_release(cudnn)))
    return (f"chunked_fnet on {device}: torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {release}, "
            f"{name} ({total / 2**30:.1f} GiB)")


def cudnn_release(version: int) -> tuple[int, int, int]:
    """cuDNN's version number (``torch.backends.cudnn.version()``) as (major, minor, patch): 91002 is
    9.10.2 (cuDNN 9 counts major x 10000), 8902 is 8.9.2 (cuDNN 8 counted major x 1000)."""
    if version >= 90000:
        return version // 10000, version // 100 % 100, version % 100
    return version // 1000, version // 100 % 10, version % 100


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype to autocast to, or None for plain float32. On CUDA "auto" and "bf16" mean bfloat16,
    "fp16" float16 (with a grad scaler in training). On a CPU only an explicit "bf16" autocasts (fast
    where the CPU has AVX512-BF16 or AMX: benchmarks/run.py gpu device-path); "auto" stays float32 there."""
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
