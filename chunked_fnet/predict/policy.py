"""The run policy: everything a prediction run chooses, decided in one place, once per run.

A run chooses its sliding window (patch, overlap, blend, alignment), the precision it computes in,
the patches per forward pass and the torch threads per block. :func:`resolve_policy` makes all of
these choices from the options, the models' constraints (:class:`ModelConstraints`), the facts of
the hardware that runs it (:class:`Hardware`) and, on resume, the run record; the chunked run
(:func:`chunked_fnet.predict.predict`), the in-memory one (:func:`~chunked_fnet.sliding_window.predict_volume`)
and ``evaluate`` all call it, so the same models on the same frame get the same window everywhere.

Two rules keep a run from being a trap:

- *An explicit patch too small for the overlap the models need is refused.* Capping the overlap to
  fit (the old behaviour) leaves patches whose every voxel lies in the rim that the U-Net's zero
  padding spoils (16x64x64 with a 12-voxel overlap differed from a whole-frame pass by 3.2x the
  output's std), and keeping it makes the step tiny (a 4x4x4 step evaluated every voxel 250 times).
  Neither is what a user asking for a patch wants, so the refusal names the smallest patch that
  works and suggests ``auto``. An explicit patch *and* overlap is the user's trade-off: it runs,
  with a one-line warning when it recomputes more than :data:`MAX_RECOMPUTE` times.
- *``precision: auto`` is a function of the hardware*: bf16 autocast where every worker computes
  bf16 natively (AMX/AVX512-BF16 CPUs, CUDA), else fp32. A timing sample against a threshold let
  noise pick the precision on machines near the threshold, so the same command could give outputs
  differing at the bf16 level from one run to the next.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chunked_fnet.errors import InputError
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.sliding_window.auto import AUTO_OVERLAP, auto_patch
from chunked_fnet.sliding_window.window import SlidingWindow, min_band_overlap

__all__ = ["MAX_RECOMPUTE", "PATCH_MEMORY_FRACTION", "PLANNING_BUDGET", "Hardware", "ModelConstraints", "RunPolicy", "resolve_policy"]

#: The most model-voxel evaluations per output voxel a run is allowed without the user asking for it:
#: the default window evaluates a frame 1-1.3 times; the paper's 32x64x64 training patch with 25 %
#: overlap 2.4 times.
MAX_RECOMPUTE = 2.0

#: The share of a worker thread's memory (or of a GPU's) that one patch's forward pass may take (estimated
#: at 32 bytes per voxel and channel, above the 25 measured): dask's own memory target (0.6, where a worker
#: starts spilling), so that with the rest (the interpreter and the model, ~0.7 GB; the input box, the
#: sums and the pieces: tens of MB) a worker stays under dask's spill and pause thresholds (0.7, 0.8).
#: Total memory, not free memory, so that the same machine always chooses the same window.
PATCH_MEMORY_FRACTION = 0.6

#: The memory one patch may use when nothing is known of the hardware (a client planning for workers
#: it has not seen): small enough for any worker.
PLANNING_BUDGET = 2 * 2**30


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
    ``native_bf16``: whether every worker computes bf16 natively.
    """

    patch_budget: float = PLANNING_BUDGET
    busy: int = 1
    threads_per_host: tuple[int, ...] = (1,)
    device: str = "cpu"
    native_bf16: bool = False

    @classmethod
    def here(cls, device: str = "auto") -> Hardware:
        """This process, for prediction in memory (``predict_volume``, ``evaluate``, a notebook)."""
        import psutil
        import torch

        from chunked_fnet.device import bf16_is_native, resolve_device

        dev = resolve_device(device)
        memory = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else psutil.virtual_memory().total
        return cls(PATCH_MEMORY_FRACTION * memory, 1, (torch.get_num_threads(),), dev.type, bf16_is_native(dev))


@dataclass(frozen=True)
class RunPolicy:
    """What :func:`resolve_policy` chose for a run; recorded in the run record and the output's
    attributes, and shipped to the workers with the job."""

    window: SlidingWindow
    precision: str  # "fp32", "bf16" or "fp16": what the models compute in
    reason: str  # why that precision ("explicit", "auto: bf16 is native on every worker", ...)
    batch_size: int  # patches per forward pass
    block_threads: int  # torch threads per block task on a CPU worker (speed only, not values)

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
            "precision": {"chosen": self.precision, "why": self.reason},
        }

    def __str__(self) -> str:
        return (f"patch {'x'.join(map(str, self.window.patch_shape))}, each voxel evaluated {self.recompute:.2f}x; "
                f"{self.precision} ({self.reason})")


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
    (:meth:`RunPolicy.record`), whose window and precision a resume keeps wherever the options say ``auto``.
    """
    frame = tuple(int(n) for n in frame)
    recorded = recorded or {}
    batch = int(options.batch_size) if options.batch_size != "auto" else (1 if options.patch_shape == "auto" else 4)
    window = _window(options, frame, models, hardware, frames, batch, recorded.get("window"))
    precision, reason = _precision(options.precision, hardware, recorded.get("precision"))
    blocks = frames * _blocks_per_frame(window, block_shape or frame)
    per_host = hardware.threads_per_host or (1,)
    threads = max(1, min(sum(per_host) // max(1, blocks), min(per_host)))
    return RunPolicy(window, precision, reason, batch, threads)


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
        _refuse_too_small(patch, frame, needed, m, low)
    window = SlidingWindow(frame, patch, overlap, m, blend, pad_mode=options.pad_mode, align=blend == "band",  # type: ignore[arg-type]
                           min_patch=low, halo=models.halo)
    if window.grid.recompute_factor > MAX_RECOMPUTE and options.patch_shape != "auto":
        warnings.warn(
            f"patch {list(window.patch_shape)} with overlap {list(window.overlap_voxels)} evaluates every voxel "
            f"{window.grid.recompute_factor:.1f} times ({window.grid.n_patches} patches per frame); patch_shape auto costs less",
            stacklevel=3,
        )
    return window


def _count(n: int, p: int, o: int) -> int:
    return 1 if p >= n else 1 + math.ceil((n - p) / (p - o))


def _recompute(patch: Sequence[int], frame: Sequence[int], needed: Sequence[int]) -> float:
    """The recompute factor of ``patch`` with the needed overlap (inf where a step would be < 1)."""
    total = 1.0
    for p, n, o in zip(patch, frame, needed, strict=True):
        if p < n and p - o < 1:
            return math.inf
        total *= _count(n, p, 0 if p >= n else o) * p / n
    return total


def _refuse_too_small(patch: Sequence[int], frame: Sequence[int], needed: Sequence[int], m: int, low: Sequence[int]) -> None:
    """Refuse an explicit patch that, with the overlap the models need, would evaluate the frame more than
    :data:`MAX_RECOMPUTE` times or leave no voxel outside the spoilt rim; name the smallest one that works."""
    fitted = [p if p < n else m * math.ceil(n / m) for p, n in zip(patch, frame, strict=True)]
    if _recompute(fitted, frame, needed) <= MAX_RECOMPUTE:
        return
    ranges = [range(max(p, lo), max(p, lo, m * math.ceil(n / m)) + 1, m) for p, n, lo in zip(fitted, frame, low, strict=True)]
    best = min(
        ((math.prod(c), _recompute(c, frame, needed), c) for c in itertools.product(*ranges) if _recompute(c, frame, needed) <= MAX_RECOMPUTE),
        default=None,
    )
    smallest = f"the smallest patch that works is {list(best[2])} (each voxel evaluated {best[1]:.2f}x)" if best else "no patch fits"
    cost = _recompute(fitted, frame, needed)
    cost_text = f"each voxel would be evaluated {cost:.1f}x" if math.isfinite(cost) else "no voxel of a patch would lie outside that rim"
    raise InputError(
        f"patch_shape {list(patch)} is too small for the {list(needed)}-voxel overlap the models need where patches meet "
        f"({cost_text}): {smallest} for this {list(frame)} model-grid frame; use patch_shape auto, or give an overlap too "
        "to accept the cost"
    )


def _blocks_per_frame(window: SlidingWindow, block_shape: Sequence[int]) -> int:
    """Block tasks per frame: model-grid blocks that own at least one patch (the one holding its centre)."""
    grid = window.grid
    count = 1
    for starts, p, n, b in zip(grid.starts, grid.patch, grid.shape, block_shape, strict=True):
        centres = [min(int(s) + p // 2, n - 1) for s in starts]
        count *= len({c // max(1, int(b)) for c in centres})
    return count


def _precision(option: str, hardware: Hardware, recorded: Mapping[str, Any] | None) -> tuple[str, str]:
    if option != "auto":
        return option, "explicit"
    if recorded is not None:  # a resume computes in the interrupted run's precision
        return str(recorded["chosen"]), str(recorded.get("why", "recorded"))
    if hardware.native_bf16:
        return "bf16", f"auto: bf16 is native on every {hardware.device} worker"
    return "fp32", f"auto: not every {hardware.device} worker computes bf16 natively"
