"""The machine row every result names: CPU model and cores, GPU, the versions that matter, the load."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_model() -> str:
    """The CPU's name, with family/model and vector extensions when the name is generic (VMs)."""
    try:
        info = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()) if v
        )
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name", platform.machine())
    flags = set(info.get("flags", "").split())
    ext = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if flag in flags]
    if not ext and "avx2" in flags:
        ext = ["AVX2"]
    extra = [f"family {info['cpu family']} model {info['model']}"] if "cpu family" in info and "model" in info else []
    return f"{name} ({', '.join(extra + ext)})" if extra or ext else name


def cores() -> int:
    """The cores this process may run on (its affinity), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_name() -> str | None:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return None


def machine() -> str:
    """CPU model and cores, GPU (or none), and the versions that matter for the figures."""
    import dask
    import numpy
    import torch
    import zarr

    versions = [f"torch {torch.__version__}", f"dask {dask.__version__}", f"zarr {zarr.__version__}", f"numpy {numpy.__version__}"]
    if "monai" in sys.modules:
        versions.append(f"monai {sys.modules['monai'].__version__}")
    gpu = gpu_name() or "no GPU"
    return f"{cpu_model()}, {cores()} cores, {gpu}; " + ", ".join(versions)


def load_note() -> str:
    """The 1-minute load average against the cores: a busy machine makes every timing noisy."""
    try:
        return f"load {os.getloadavg()[0]:.1f} on {cores()} cores"
    except OSError:
        return "load unknown"


def refuse_emulated_bf16(precision: str, device: str = "cpu") -> None:
    """Stop a CPU benchmark asked for bf16 on a CPU that only emulates it (no AMX or AVX512-BF16), in one
    line: its figures would say nothing about the product (``auto`` computes fp32 there) and it would run
    for hours (an emulated bf16 conv3d measured ~350x slower than fp32, ``chunked_fnet.predict.policy``)."""
    import torch

    from chunked_fnet.device import bf16_is_native

    if precision == "bf16" and torch.device(device).type == "cpu" and not bf16_is_native(torch.device("cpu")):
        raise SystemExit(f"--precision bf16 refused: this CPU ({cpu_model()}) has no AMX or AVX512-BF16, so bf16 is "
                         "emulated (hundreds of times slower than fp32); run with --precision fp32 here, or on a bf16-native CPU")
