"""The run policy: everything a prediction run chooses, decided in one place, once per run.

A run chooses its sliding window (patch, overlap, blend, alignment), its precision, the patches per
forward pass, the torch threads per block and the level at which background patches are skipped, if
they are. :func:`resolve_policy` makes these choices from the options, the models' constraints, the
hardware's facts and, on resume, the run record; ``predict``, ``predict_plate``, ``predict_volume`` and
``evaluate`` all call it, so the same models on the same frame get the same window everywhere.

- *The inference patch is not the training patch*: a U-Net in eval mode gives the same output away
  from a patch's border whatever its size, so the whole z-depth is taken and y/x grow until one
  patch's activations fill the memory budget (:func:`auto_patch`). The overlap is what a *trained*
  U-Net's zero padding spoils (``benchmarks/border_effect.py --checkpoint``: within 1e-2 of its std of
  a whole-frame pass only from 35 voxels inward) plus a blending ramp; seams against the overlap:
  0.69 std at 32 voxels, 0.0016 at 96 (``benchmarks/seams_vs_overlap.py``).
- *An explicit patch too small for that overlap is refused*, naming the smallest patch that works:
  capping the overlap (the old behaviour) spoils every voxel of a thin patch (16x64x64 differed from a
  whole-frame pass by 3.2x the output's std) and keeping it makes the step tiny (250x recompute). An
  explicit patch *and* overlap is the user's trade-off: it runs as asked; its recompute factor is in
  the summary, the run record and the image's attributes like every run's.
- *``precision: auto`` is a function of the hardware*: bf16 where every worker computes it natively
  (AMX/AVX512-BF16 CPUs, CUDA), else fp32. A timing sample let noise pick the precision on machines
  near its threshold, so one command could write outputs differing at the bf16 level run to run.
- *Sizes come from total, not free, memory*, so that one machine always chooses one window.
- *A frame cut into several blocks reads each input chunk once* (``shared_reads``): neighbouring blocks'
  read boxes (their patches, halo included) share input chunks, which zarr reads whole; read separately, a
  48x1536x1536 frame's 25 blocks read 2.78x its bytes (``benchmarks/run.py storage read-amplification``). So a read task
  per input chunk feeds every block task of its frame that needs it (the workers pass it on: no store read).
  A frame that is one block reads each chunk once anyway, and reads its box itself (no task, no transfer).
  The values read are the same either way: only where they come from differs.
- *Skipping background is opt-in*: a skipped patch's output is the models' response to flat medium, not
  to its noise (``predict/background.py``), so it changes the output inside skipped patches; a resume
  keeps the interrupted run's level, like its window.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chunked_fnet.device import cudnn_release
from chunked_fnet.errors import InputError, one_line
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.sliding_window.window import SlidingWindow, fit_patch, min_band_overlap

__all__ = [
    "AUTO_OVERLAP", "MAX_RECOMPUTE", "MAX_TENSOR_ELEMENTS", "PATCH_MEMORY_FRACTION", "REDUCED_MAX_OVER_STD", "REDUCED_MIN_R",
    "SKIP_EMPTY_LEVEL", "Hardware",
    "ModelConstraints", "RunPolicy", "auto_patch", "bf16_conv3d_hazard", "patch_bytes", "patch_that_fits", "resolve_policy",
]

#: Overlap (model voxels) where patches meet: a 36-voxel rim on each side without weight and a 24-voxel
#: raised-cosine ramp between (``window.band_profile``); a multiple of 16, so that neighbours stay on one
#: phase of the U-Net's down-sampling grid.
AUTO_OVERLAP = 96

#: Model-voxel evaluations per output voxel allowed without asking: the defaults evaluate a frame
#: 1-1.3 times, the paper's 32x64x64 training patch with 25 % overlap 2.4 times.
MAX_RECOMPUTE = 2.0

#: Share of a worker thread's memory (or a GPU's) one patch's forward pass may take: dask's memory
#: target, so that with the interpreter and the model (~0.7 GB) a worker stays under its spill and
#: pause thresholds (0.7, 0.8).
PATCH_MEMORY_FRACTION = 0.6

#: Peak host memory of a float32 forward pass of the fnet U-Net per voxel and top-level channel (25
#: measured for width 32 at 32x128x128 to 48x384x384), plus room for the input box and the sums.
BYTES_PER_VOXEL_AND_CHANNEL = 32.0

#: ``skip_empty: auto``: a patch is background when its input's white-noise score is at most this
#: (``predict/background.py``). For camera noise the score is the largest of three |N(0, 1)| (4 is passed by
#: all but 2 in 10,000 noise patches); on the synthetic phantom (``benchmarks/run.py throughput skip-empty --scores``) empty
#: medium scored at most 3.97 over 5,131 patches, any patch holding part of a cell 58.8 and up.
SKIP_EMPTY_LEVEL = 4.0
BACKGROUND_RULE = "input is white noise: |lag-1 autocorrelation| * sqrt(pairs) <= level along z, y and x"

#: The measured bf16 bound (:mod:`~chunked_fnet.predict.precision_check`): a run in a reduced precision is
#: refused unless, on one real patch, every output channel has Pearson r >= REDUCED_MIN_R with its fp32
#: output and max |reduced - fp32| <= REDUCED_MAX_OVER_STD x the fp32 output's std. Correct bf16 measured
#: (``benchmarks/run.py seams precision-check``, CPU autocast, 32x128x128): trained paper U-Nets r 0.999989 / max 0.088
#: std (CPU), 0.9999913 / 0.072 (GPU) (``benchmarks/run.py seams bf16-accuracy``); random-weight ones, which the
#: benchmarks run, much looser: depth 2 width 16 r >= 0.99994, max <= 0.088; the tests' depth 2 width 4 r
#: >= 0.99892, max <= 0.61 (seed 0: an untrained net's output varies little against its bias, so its
#: rounding is large in units of its std); the paper's U-Net (seeds 0, 1; 16x64x64) r >= 0.99994, max <= 0.116
#: (BENCHMARKS.md, "bf16 against fp32 in the precision check"). A wrong kernel or an overflow
#: gives r far below 0.99, or NaN/inf; so the bound is about 9x (1 - r) and 3x the max of the worst correct
#: figure: rounding passes, a wrong result does not. fp16 rounds finer than bf16 and is held to the same bound.
REDUCED_MIN_R = 0.99
REDUCED_MAX_OVER_STD = 2.0

#: cuDNN's and oneDNN's 3-D convolutions index with 32-bit integers; the U-Net's largest activation
#: (the top level's skip concatenation) has 2 x width channels per voxel.
MAX_TENSOR_ELEMENTS = 2**31 - 1


@dataclass(frozen=True)
class ModelConstraints:
    """What every model of an ensemble accepts: patch sizes a multiple of ``multiple`` and at least
    ``min_patch`` (z, y, x), an output rim ``halo`` it declares invalid, and its widest top level
    ``width`` (what a patch's activations cost)."""

    multiple: int = 16
    min_patch: tuple[int, int, int] = (16, 16, 16)
    halo: tuple[int, int, int] = (0, 0, 0)
    width: int = 32

    @classmethod
    def of(cls, members: Sequence[Any]) -> ModelConstraints:
        """The constraints every member (anything with ``multiple``, ``min_patch``, ``halo``, ``width``) accepts."""
        multiple = math.lcm(*(int(m.multiple) for m in members))
        low = tuple(multiple * math.ceil(max(m.min_patch[a] for m in members) / multiple) for a in range(3))
        halo = tuple(max(int(m.halo[a]) for m in members) for a in range(3))
        return cls(multiple, low, halo, max(int(m.width) for m in members))  # type: ignore[arg-type]

    @property
    def overlap(self) -> tuple[int, int, int]:
        """The overlap (model voxels) the models need where patches meet: the band blend's weightless rim
        covers what a trained U-Net's zero padding spoils (``AUTO_OVERLAP``) and any declared halo."""
        return tuple(max(AUTO_OVERLAP, min_band_overlap(h, self.multiple)) for h in self.halo)  # type: ignore[return-value]


@dataclass(frozen=True)
class Hardware:
    """The facts of the hardware a run computes on, as the policy needs them.

    ``patch_budget``: bytes one patch's forward pass may use (the smallest worker's share, or its GPU's
    free memory); ``busy``: patches needed at once to keep every GPU (or CPU host) busy;
    ``threads_per_host``: dask task threads per host (CPU); ``device``: the device type computed on;
    ``native_bf16``: whether every worker computes bf16 natively; ``gpu_stacks``: the distinct (torch
    version, cuDNN version) pairs of the CUDA workers (:func:`bf16_conv3d_hazard` reads them).
    """

    patch_budget: float = 2 * 2**30  # what any worker can take
    busy: int = 1
    threads_per_host: tuple[int, ...] = (1,)
    device: str = "cpu"
    native_bf16: bool = False
    gpu_stacks: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def here(cls, device: str = "auto") -> Hardware:
        """This process, for prediction in memory (``predict_volume``, ``evaluate``, a notebook)."""
        import torch

        from chunked_fnet.device import bf16_is_native, device_memory, resolve_device

        dev = resolve_device(device)
        memory = device_memory(dev)[1]
        stacks = ((torch.__version__, torch.backends.cudnn.version()),) if dev.type == "cuda" else ()
        return cls(PATCH_MEMORY_FRACTION * memory, 1, (torch.get_num_threads(),), dev.type, bf16_is_native(dev), stacks)


@dataclass(frozen=True)
class RunPolicy:
    """What :func:`resolve_policy` chose for a run; recorded in the run record and the output's
    attributes, and shipped to the workers with the job."""

    window: SlidingWindow
    precision: str  # "fp32", "bf16" or "fp16": what the models compute in
    reason: str  # why that precision ("explicit", "auto: bf16 is native on every worker", ...)
    batch_size: int  # patches per forward pass
    block_threads: int  # torch threads per block task on a CPU worker (speed only, not values)
    skip_empty: float | None = None  # the background rule's level (predict/background.py); None: every patch evaluated
    shared_reads: bool = False  # a frame's input chunks read once by read tasks its block tasks share (speed and bytes, not values)
    check: Mapping[str, Any] | None = field(default=None, hash=False)  # the reduced precision against fp32 on one patch (predict/precision_check.py); None: unchecked
    compute_lane: bool = False  # CPU workers run their blocks' forward passes one at a time on all their threads (speed only, not values)

    @property
    def recompute(self) -> float:
        """Model-voxel evaluations per output voxel: ``patches x patch voxels / frame voxels``."""
        return self.window.grid.recompute_factor

    def record(self) -> dict[str, Any]:
        """The choices that determine the output's values (JSON), for the run record and the image's attributes."""
        w = self.window
        return {
            "window": {"patch": list(w.patch_shape), "overlap": list(w.overlap_voxels), "blend": w.blend, "align": w.align,
                       "pad_mode": w.pad_mode, "recompute": round(self.recompute, 4)},
            "precision": {"chosen": self.precision, "why": self.reason, **({"check": dict(self.check)} if self.check is not None else {})},
            **({"skip_empty": {"rule": BACKGROUND_RULE, "level": self.skip_empty}} if self.skip_empty is not None else {}),
        }


def resolve_policy(
    options: PredictOptions,
    frame: Sequence[int],
    models: ModelConstraints,
    hardware: Hardware,
    *,
    frames: int = 1,
    block_shape: Sequence[int] | None = None,
    recorded: Mapping[str, Any] | None = None,
) -> RunPolicy:
    """Everything a run of ``frames`` frames of ``frame`` model voxels (z, y, x) chooses.

    ``block_shape`` is the model-grid block of one block task (default: the frame), which sets how many
    block tasks share the hardware's threads; ``recorded`` is an interrupted run's record
    (:meth:`RunPolicy.record`), whose window, precision and background level a resume keeps wherever the
    options say ``auto``.
    """
    frame = tuple(int(n) for n in frame)
    recorded = recorded or {}
    batch = int(options.batch_size) if options.batch_size != "auto" else (1 if options.patch_shape == "auto" else 4)
    window = _window(options, frame, models, hardware, frames, batch, recorded.get("window"))
    precision, reason = _precision(options.precision, hardware, recorded.get("precision"))
    check = (recorded.get("precision") or {}).get("check") if (recorded.get("precision") or {}).get("chosen") == precision else None
    per_frame = _blocks_per_frame(window, block_shape or frame)
    blocks = frames * per_frame
    per_host = hardware.threads_per_host or (1,)
    # Several block tasks on a CPU host: one forward pass at a time per worker, on all its threads (its
    # compute lane), while its other task threads read, z-score, blend and write. Two 1-thread forward passes
    # side by side ran 0.94x one 2-thread pass after the other on a 2-core AMX Xeon (the paper U-Net's
    # 48x384x384 frame in bf16: benchmarks/run.py throughput layout), 0.82x on a 2-core AMD EPYC (a probe of the
    # same); not yet measured beyond 2 cores. The block tasks' own torch work then takes one thread each.
    # One block (a frame on its own) takes the host's threads itself.
    lane = hardware.device == "cpu" and blocks > 1
    threads = 1 if lane else max(1, min(sum(per_host) // max(1, blocks), min(per_host)))
    return RunPolicy(window, precision, reason, batch, threads, _skip_level(options.skip_empty, recorded.get("skip_empty")),
                     shared_reads=per_frame > 1, check=check, compute_lane=lane)


def patch_bytes(patch: Sequence[int], width: int, batch: int = 1) -> float:
    """Estimated peak memory of one forward pass of ``batch`` patches (what :func:`auto_patch` sizes by)."""
    return BYTES_PER_VOXEL_AND_CHANNEL * max(1, width) * math.prod(patch) * batch


def patch_that_fits(
    options: PredictOptions, frame: Sequence[int], models: ModelConstraints, device_bytes: float, failed: Sequence[int], batch: int,
) -> str:
    """What to say after ``failed`` x ``batch`` patches ran out of device memory: the auto patch (this
    policy's own sizing) for half the memory that pass was estimated to take, or for the device's share
    if less; or that none is smaller. Advice for the next run, never applied to this one: its patch grid
    is global, and one block with a patch of its own would blend differently."""
    budget = min(PATCH_MEMORY_FRACTION * device_bytes, patch_bytes(failed, models.width, batch) / 2)
    smaller = options.model_copy(update={"patch_shape": "auto", "batch_size": 1})
    try:
        patch = resolve_policy(smaller, frame, models, Hardware(patch_budget=budget)).window.patch_shape
    except InputError as exc:
        return f"no smaller patch works with these options ({exc})"
    if math.prod(patch) >= math.prod(failed) * batch:
        return f"no smaller patch than {list(failed)} x 1 works for these models; free the device or use one with more memory"
    return (
        f"rerun with patch_shape {list(patch)} and batch_size 1 (estimated {_in_words(patch_bytes(patch, models.width))}; "
        "the patch grid is one for the whole run, so no block shrinks its own)"
    )


def _in_words(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _window(
    options: PredictOptions, frame: tuple[int, ...], models: ModelConstraints, hardware: Hardware, frames: int, batch: int,
    recorded: Mapping[str, Any] | None,
) -> SlidingWindow:
    m, low, needed = models.multiple, models.min_patch, models.overlap
    explicit_overlap = options.overlap != "auto"
    if options.patch_shape == "auto" and recorded is not None:  # the interrupted run's choice, whatever this cluster would choose
        patch, overlap = tuple(recorded["patch"]), tuple(recorded["overlap"])
    elif options.patch_shape == "auto":
        budget = hardware.patch_budget / batch  # the patches of one pass share the budget
        patch, overlap = auto_patch(frame, m, models.width, budget, math.ceil(hardware.busy / max(1, frames)), overlap=max(needed))
        patch = tuple(max(p, lo) for p, lo in zip(patch, low, strict=True))
        overlap = tuple(0 if p >= n else o for p, o, n in zip(patch, overlap, frame, strict=True))
    else:
        patch = tuple(options.patch_shape)
        overlap = tuple(0 if p >= n else o for p, o, n in zip(patch, needed, frame, strict=True))
    if explicit_overlap and options.overlap >= 1:  # voxels where patches meet; none along an axis one patch covers
        overlap = tuple(0 if p >= n else int(options.overlap) for p, n in zip(patch, frame, strict=True))
    elif explicit_overlap:
        overlap = options.overlap  # type: ignore[assignment]
    voxels = not explicit_overlap or options.overlap >= 1
    blend = options.blend if options.blend != "auto" else ("band" if voxels else "gaussian")
    if options.patch_shape != "auto" and not explicit_overlap:
        fit_patch(patch, frame, m, low)  # a patch the networks cannot take is refused as such first
        _refuse_too_small(patch, frame, needed, m, low)
    window = SlidingWindow(frame, patch, overlap, m, blend, pad_mode=options.pad_mode, align=blend == "band",  # type: ignore[arg-type]
                           min_patch=low, halo=models.halo)
    return window


def _recompute(patch: Sequence[int], frame: Sequence[int], overlap: Sequence[int]) -> float:
    """What the overlap costs: model-voxel evaluations per voxel along the axes that several patches tile
    (inf where the step would be < 1); one patch padded past a thin frame's end costs nothing to choose."""
    total = 1.0
    for p, n, o in zip(patch, frame, overlap, strict=True):
        if p < n and p - o < 1:
            return math.inf
        total *= _count(n, p, o) * p / n if p < n else 1.0
    return total


def _refuse_too_small(patch: Sequence[int], frame: Sequence[int], needed: Sequence[int], m: int, low: Sequence[int]) -> None:
    """Refuse an explicit patch that, with the overlap the models need, would evaluate the frame more than
    :data:`MAX_RECOMPUTE` times or leave no voxel outside the spoilt rim; name the smallest one that works."""
    fitted = [p if p < n else _up(n, m) for p, n in zip(patch, frame, strict=True)]
    cost = _recompute(fitted, frame, needed)
    if cost <= MAX_RECOMPUTE:
        return
    best = _smallest_patch(fitted, frame, needed, m, low)
    smallest = f"the smallest patch that works is {best[1]} (each voxel evaluated {best[0]:.2f}x)" if best else "no patch fits"
    cost_text = f"each voxel would be evaluated {cost:.1f}x" if math.isfinite(cost) else "no voxel of a patch would lie outside that rim"
    raise InputError(
        f"patch_shape {list(patch)} is too small for the {list(needed)}-voxel overlap the models need where patches meet "
        f"({cost_text}): {smallest} for this {list(frame)} model-grid frame; use patch_shape auto, or give an overlap too "
        "to accept the cost"
    )


def _smallest_patch(start: Sequence[int], frame: Sequence[int], needed: Sequence[int], m: int, low: Sequence[int]) -> tuple[float, list[int]] | None:
    """The fewest-voxel patch from ``start`` up costing at most :data:`MAX_RECOMPUTE`, and its cost. The cost is
    a product over axes, so only sizes cheaper than every smaller size of their axis are tried (a few per axis)."""
    axes: list[list[tuple[int, float]]] = [[] for _ in frame]
    for front, p, n, o, lo in zip(axes, start, frame, needed, low, strict=True):
        for size in range(max(p, lo), max(p, lo, _up(n, m)) + 1, m):
            cost = _recompute([size], [n], [o])
            if not front or cost < front[-1][1]:
                front.append((size, cost))
    fits = [(math.prod(s for s, _ in c), math.prod(r for _, r in c), [s for s, _ in c]) for c in itertools.product(*axes)]
    best = min((f for f in fits if f[1] <= MAX_RECOMPUTE), default=None)
    return (best[1], best[2]) if best else None


def _blocks_per_frame(window: SlidingWindow, block_shape: Sequence[int]) -> int:
    """Block tasks per frame: model-grid blocks that own at least one patch (the one holding its centre)."""
    return math.prod(len(np.unique(window.grid.owner_voxels(a) // max(1, int(b)))) for a, b in enumerate(block_shape))


def bf16_conv3d_hazard(torch_version: str, cudnn_version: int | None) -> str | None:
    """Why bf16 3-D convolutions should not run under this torch and cuDNN, or None where nothing is known.

    - cuDNN 9.10.2 computes bf16 conv3d silently wrong on large inputs; the whole 9.10 series is
      treated so (conservatively: no fixed 9.10 release is known here).
    - torch 2.9 with cuDNN 9.8 to 9.14 picks slow bf16 conv3d kernels (several times fp32's time).
    """
    if cudnn_version is None:
        return None
    major, minor, patch = cudnn_release(int(cudnn_version))
    if (major, minor) == (9, 10):
        return (f"cuDNN {major}.{minor}.{patch} can compute bf16 3-D convolutions silently wrong on large inputs "
                "(known for 9.10.2; 9.10.x treated alike)")
    torch_release = tuple(int(n) for n in re.findall(r"\d+", torch_version)[:2])
    if torch_release == (2, 9) and major == 9 and 8 <= minor <= 14:
        return f"torch {torch_version} with cuDNN {major}.{minor}.{patch} runs bf16 3-D convolutions slowly (cuDNN 9.8-9.14 under torch 2.9)"
    return None


#: Why an explicit bf16 on hardware without it is worth a warning: emulated bf16 3-D convolutions are
#: not a little slower but orders of magnitude (measured: one 32-channel 3x3x3 conv3d of 32x128x128 voxels,
#: torch 2.13 on a 2-core AMD EPYC with AVX2 only, 0.33 s in fp32, 116 s in bf16).
EMULATED_BF16 = "a CPU needs AMX or AVX512-BF16; emulated bf16 3-D convolutions ran ~350x slower than fp32 on an AVX2-only CPU"


def _bf16_hazard(hardware: Hardware) -> str | None:
    """The first known bf16 conv3d hazard among the CUDA workers' torch and cuDNN versions."""
    return next((h for t, c in hardware.gpu_stacks if (h := bf16_conv3d_hazard(t, c))), None)


def _precision(option: str, hardware: Hardware, recorded: Mapping[str, Any] | None) -> tuple[str, str]:
    hazard = _bf16_hazard(hardware)
    if option != "auto":
        if option == "bf16" and not hazard and hardware.device != "unknown" and not hardware.native_bf16:
            why = f" ({EMULATED_BF16})" if hardware.device == "cpu" else ""  # the CPU figure says nothing of a GPU
            hazard = f"not every {hardware.device} worker computes bf16 natively{why}"
        if option == "bf16" and hazard:
            warnings.warn(one_line(f"precision bf16 as asked, though {hazard}; precision fp32 or auto avoids it"), RuntimeWarning, stacklevel=4)
        return option, "explicit"
    if recorded is not None:  # a resume computes in the interrupted run's precision
        return str(recorded["chosen"]), str(recorded.get("why", "recorded"))
    if hardware.device == "unknown":
        return "fp32", "auto: no worker was up to ask when the run started"
    if hardware.native_bf16 and hazard:
        return "fp32", f"auto: bf16 is native, but {hazard}"
    if hardware.native_bf16:
        return "bf16", f"auto: bf16 is native on every {hardware.device} worker"
    return "fp32", f"auto: not every {hardware.device} worker computes bf16 natively"


def _skip_level(option: float | str, recorded: Mapping[str, Any] | None) -> float | None:
    """The background rule's level: none when off, the option's number, or for ``auto`` the interrupted
    run's level (a resume skips what it skipped) or :data:`SKIP_EMPTY_LEVEL`."""
    if option == "off":
        return None
    if option == "auto":
        return float(recorded["level"]) if recorded is not None else SKIP_EMPTY_LEVEL
    return float(option)


def _up(n: int, m: int) -> int:
    return m * math.ceil(n / m)


def _covering(n: int, k: int, overlap: int, m: int) -> int:
    """The smallest patch (a multiple of ``m``) that covers ``n`` voxels with ``k`` patches overlapping by ``overlap``."""
    return _up(n, m) if k == 1 else _up(math.ceil((n - overlap) / k) + overlap, m)


def _count(size: int, patch: int, overlap: int) -> int:
    return 1 if size <= patch else 1 + math.ceil((size - patch) / (patch - overlap))


def auto_patch(
    frame: Sequence[int], multiple: int, width: int, budget_bytes: float, min_patches: int = 1, overlap: int = AUTO_OVERLAP
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(patch, overlap)`` (z, y, x; overlap in voxels) for a frame of ``frame`` model voxels: the
    fewest voxels evaluated by patches whose forward pass fits ``budget_bytes``, at least ``min_patches``
    of them (so that one frame keeps every GPU, or CPU host, busy)."""
    m = max(1, int(multiple))
    per_voxel = BYTES_PER_VOXEL_AND_CHANNEL * max(1, width)
    max_voxels = max(min(budget_bytes / per_voxel, MAX_TENSOR_ELEMENTS / (2 * max(1, width))), float(m**3))
    z_full = _up(frame[0], m)
    overlap = _up(overlap, m)
    # z: the whole depth if a 2*overlap-wide y/x patch of it fits; else as deep as fits
    pz = z_full if z_full * (2 * overlap + m) ** 2 <= max_voxels else max(2 * overlap + m, _up(int(max_voxels / (2 * overlap + m) ** 2), m) - m)
    pz = min(pz, z_full)
    side = max(m, int(math.sqrt(max_voxels / pz)) // m * m)
    # a budget too small for patches twice the overlap: neighbours share at most half a patch (the
    # step stays at least half the patch), at the cost of a thinner clean rim
    overlap = min(overlap, (side // 2) // m * m)
    oz = 0 if pz >= z_full else min(overlap, pz - m)
    # y/x: the numbers of patches (ky, kx) whose smallest covering patches fit the budget, give every
    # thread a patch, and evaluate the fewest voxels (patches need not be square: one frame on two
    # threads is cut once, across its longer axis, not into four)
    kz = _count(frame[0], pz, oz)
    limits = [max(1, math.ceil(n / max(m, side - overlap)) + 1) for n in frame[1:]]
    choices = []
    for ky in range(1, limits[0] + 1):
        for kx in range(1, limits[1] + 1):
            py, px = _covering(frame[1], ky, overlap, m), _covering(frame[2], kx, overlap, m)
            if (ky > 1 and py - overlap < m) or (kx > 1 and px - overlap < m):
                continue  # neighbours would share more than they add
            fits, busy = pz * py * px <= max_voxels, kz * ky * kx >= min_patches
            # within the budget first, then enough patches, then the fewest voxels evaluated, then the fewest patches
            choices.append(((not fits, not busy, ky * kx * py * px, ky * kx), ky, kx))
    _, ky, kx = min(choices)
    py, px = _covering(frame[1], ky, overlap, m), _covering(frame[2], kx, overlap, m)
    oy, ox = (0 if k == 1 else overlap for k in (ky, kx))
    return (pz, py, px), (oz, oy, ox)
