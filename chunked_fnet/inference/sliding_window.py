"""Sliding-window inference of a 3-D network: whole volume in memory, or one region (chunk) at a time.

:func:`predict_volume` and :func:`predict_chunk` run the very same code — :func:`predict_chunk` on
the whole volume *is* :func:`predict_volume` — so stitching chunks computed independently (by dask
tasks, on different machines) reproduces the in-memory result, seams and all, up to the model's own
batch-size dependence (a few float32 ulp).

The volume is ``(C, Z, Y, X)``. Any Z/Y/X works: an axis shorter than the patch is padded at its
end up to the patch (``pad_mode``, reflect by default), the padding is virtual (computed on the fly
by :func:`padded_reader` for exactly the voxels a task reads), and only the real voxels are returned.
The patch itself must be divisible by ``multiple`` (the U-Net's total down-sampling factor); for a
small volume, patch axes longer than needed are shrunk by :func:`fit_patch` to the smallest multiple
covering the axis, a function of the whole volume's shape only, so every chunk task agrees on it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch

from chunked_fnet.errors import InputError
from chunked_fnet.inference.tiling import (
    BlendKind,
    PatchGrid,
    Region,
    blend_weights,
    normalize_region,
    patch_overlap,
)

__all__ = [
    "PadMode",
    "fit_patch",
    "make_grid",
    "padded_reader",
    "predict_chunk",
    "predict_owned",
    "predict_volume",
    "tta_flip_sets",
]

PadMode = Literal["reflect", "symmetric", "edge", "constant"]
ModelLike = torch.nn.Module | Callable[[torch.Tensor], Any]
FlipSpec = bool | Literal["all"] | Sequence[Sequence[int]]


# ----------------------------------------------------------------------------------------- padding
def _pad_index(idx: np.ndarray, n: int, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Map (possibly out-of-range) indices of a padded axis onto ``[0, n)``; second value is the
    validity mask for ``constant`` mode (None otherwise).

    ``reflect`` mirrors about the edge voxels (``... 2 1 | 0 1 2 ... n-1 | n-2 ...``) and repeats with
    period ``2(n-1)``, so any pad width works (as ``numpy.pad``); for ``n == 1`` it falls back to
    ``edge``. ``symmetric`` mirrors including the edge voxel (period ``2n``).
    """
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(idx), None
        period = 2 * (n - 1)
        m = np.mod(idx, period)
        return np.where(m < n, m, period - m), None
    if mode == "symmetric":
        m = np.mod(idx, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m), None
    if mode == "edge":
        return np.clip(idx, 0, n - 1), None
    if mode == "constant":
        valid = (idx >= 0) & (idx < n)
        return np.clip(idx, 0, n - 1), valid
    raise InputError(f"unknown pad_mode {mode!r}; expected reflect, symmetric, edge or constant")


def padded_reader(volume: Any, pad_mode: PadMode = "reflect") -> Callable[[Sequence[slice]], np.ndarray]:
    """A ``read_region`` for :func:`predict_chunk` over an array-like ``(C, Z, Y, X)`` volume (numpy,
    zarr, dask, anything with ``.shape`` and basic slicing).

    The returned function takes three unit-step slices in *padded* coordinates (they may run past
    either end of an axis) and returns ``(C, len_z, len_y, len_x)``, out-of-range voxels filled per
    ``pad_mode`` (``constant`` pads with 0). It reads only the in-range bounding box of what it is
    asked for, and returns a view when no padding is involved. Identical to ``numpy.pad`` of the whole
    volume with the same mode, cut at the same place; :func:`predict_volume` reads through it too.
    """
    shape = tuple(int(n) for n in volume.shape)
    if len(shape) != 4:
        raise InputError(f"volume must be (C, Z, Y, X), got shape {shape}")
    _pad_index(np.zeros(1, dtype=np.int64), 1, pad_mode)  # validate the mode now

    def read(region: Sequence[slice]) -> np.ndarray:
        region = tuple(region)
        if len(region) != 3:
            raise InputError(f"read_region takes three slices (z, y, x), got {region!r}")
        maps, masks, box = [], [], []
        for s, n in zip(region, shape[1:]):
            if s.start is None or s.stop is None or s.step not in (None, 1) or s.stop <= s.start:
                raise InputError(f"padded reads need explicit, non-empty unit-step slices, got {s!r}")
            idx, valid = _pad_index(np.arange(s.start, s.stop, dtype=np.int64), n, pad_mode)
            lo, hi = int(idx.min()), int(idx.max()) + 1
            maps.append(None if (idx.size == hi - lo and idx[0] == lo and np.all(np.diff(idx) == 1)) else idx - lo)
            masks.append(valid)
            box.append(slice(lo, hi))
        block = np.asarray(volume[(slice(None), *box)])
        for axis, m in enumerate(maps):
            if m is not None:
                block = np.take(block, m, axis=axis + 1)
        if any(v is not None and not v.all() for v in masks):
            block = block.copy()
            for axis, v in enumerate(masks):
                if v is not None and not v.all():
                    index = [slice(None)] * 4
                    index[axis + 1] = ~v
                    block[tuple(index)] = 0
        return block

    return read


# ------------------------------------------------------------------------------------------ grid
def fit_patch(patch: Sequence[int], shape: Sequence[int], multiple: int = 16) -> tuple[int, int, int]:
    """Check ``patch`` is divisible by ``multiple`` and shrink each axis longer than the volume's to
    the smallest multiple of ``multiple`` covering that axis (never below the volume's size, never
    above the requested patch). ``shape`` is the whole volume's ``(Z, Y, X)``."""
    patch = tuple(int(p) for p in patch)
    shape = tuple(int(n) for n in shape)
    if len(patch) != 3 or len(shape) != 3:
        raise InputError(f"patch and shape must be (z, y, x), got {patch} and {shape}")
    _check_multiple(patch, multiple)
    m = max(1, int(multiple))
    fitted = tuple(p if n >= p else min(p, m * math.ceil(n / m)) for p, n in zip(patch, shape))
    return fitted  # type: ignore[return-value]


def _check_multiple(patch: tuple[int, ...], multiple: int | None) -> None:
    if any(p < 1 for p in patch):
        raise InputError(f"patch sizes must be >= 1, got {patch}")
    if multiple is not None and multiple > 1:
        bad = [p for p in patch if p % multiple]
        if bad:
            raise InputError(
                f"patch {patch} must be divisible by {multiple} along every axis (the network's "
                f"down-sampling factor); {bad} are not"
            )


def make_grid(
    volume_shape: Sequence[int],
    patch: Sequence[int] = (32, 64, 64),
    overlap: float | Sequence[float] = 0.25,
    multiple: int | None = 16,
    shrink_patch: bool = True,
) -> PatchGrid:
    """The :class:`PatchGrid` both inference paths use for a volume of (spatial) shape ``volume_shape``
    (a 4-D ``(C, Z, Y, X)`` shape is accepted too): patch checked against ``multiple`` and, with
    ``shrink_patch``, fitted to the volume by :func:`fit_patch`."""
    shape = tuple(int(n) for n in volume_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise InputError(f"volume_shape must be (Z, Y, X) or (C, Z, Y, X), got {volume_shape!r}")
    patch = tuple(int(p) for p in patch)
    _check_multiple(patch, multiple)
    if shrink_patch:
        patch = fit_patch(patch, shape, multiple or 1)
    return PatchGrid(shape, patch, overlap if isinstance(overlap, (int, float)) else tuple(overlap))


# ------------------------------------------------------------------------------------------ model
def tta_flip_sets(tta_flips: FlipSpec) -> list[tuple[int, ...]]:
    """The spatial-axis flips (0 = z, 1 = y, 2 = x) averaged by test-time augmentation.

    ``False``: none (just the input). ``True``: the input and its single flips along z, y and x
    (4 passes). ``"all"``: every combination (8 passes). Or an explicit list of axis tuples
    (``()`` is the unflipped input).
    """
    if tta_flips is False or tta_flips is None:
        return [()]
    if tta_flips is True:
        return [(), (0,), (1,), (2,)]
    if tta_flips == "all":
        return [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]
    flips = [tuple(int(a) for a in f) for f in tta_flips]  # type: ignore[union-attr]
    if not flips or any(a not in (0, 1, 2) for f in flips for a in f):
        raise InputError(f"tta_flips must be a bool, 'all' or a list of tuples of axes 0-2, got {tta_flips!r}")
    return flips


#: id(module) -> (sessions using it now, its train flag before the first of them, whether the first
#: of them converted it to channels_last_3d)
_EVAL_USERS: dict[int, tuple[int, bool, bool]] = {}
_EVAL_LOCK = threading.Lock()


def _conv_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The first 5-D parameter (a 3-D convolution's weight) whose layout tells the memory formats
    apart (one with a single input channel is both), if any."""
    both = lambda p: p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last_3d)  # noqa: E731
    return next((p for p in module.parameters() if p.dim() == 5 and not both(p)), None)


def _in_channels_last(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()


class _PatchModel:
    """Patches ``(N, C, pz, py, px)`` -> averaged model output, float32: ensemble members x flips, each
    un-flipped, summed in a fixed order on the device."""

    def __init__(
        self,
        model: ModelLike | Sequence[ModelLike],
        device: str | torch.device,
        tta_flips: FlipSpec,
        amp_dtype: torch.dtype | None,
        channels_last: bool | None = None,
    ) -> None:
        self.models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not self.models:
            raise InputError("no model given (an empty ensemble)")
        for m in self.models:
            if not callable(m):
                raise InputError(f"model must be a torch.nn.Module or a callable, got {type(m).__name__}")
        self.device = torch.device(device)
        self.flips = [tuple(a + 2 for a in f) for f in tta_flip_sets(tta_flips)]
        self.amp_dtype = amp_dtype
        # channels_last_3d: on the CPU, oneDNN's 3-D convolutions skip reordering every activation
        # (the paper's U-Net, batch 4 of 32x64x64: about 25 % less CPU time on an AVX-512 Xeon,
        # benchmarks/gpu_path.py); on CUDA it is left to the caller until measured
        self.channels_last = self.device.type == "cpu" if channels_last is None else bool(channels_last)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Modules on the device, in eval mode (and in ``channels_last_3d`` when asked), under inference
        mode. The caller's train/eval mode and memory format are restored when the last concurrent
        session using that module ends (dask runs several chunk tasks on one shared model in threads:
        none may change it back mid-run)."""
        modules = list({id(m): m for m in self.models if isinstance(m, torch.nn.Module)}.values())
        with _EVAL_LOCK:
            for m in modules:
                count, training, converted = _EVAL_USERS.get(id(m), (0, m.training, False))
                m.to(self.device)
                if count == 0 and self.channels_last:
                    weight = _conv_weight(m)
                    converted = weight is not None and not _in_channels_last(weight)
                    if converted:
                        m.to(memory_format=torch.channels_last_3d)
                _EVAL_USERS[id(m)] = (count + 1, training, converted)
                m.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            with _EVAL_LOCK:
                for m in modules:
                    count, training, converted = _EVAL_USERS.pop(id(m))
                    if count > 1:
                        _EVAL_USERS[id(m)] = (count - 1, training, converted)
                    else:
                        m.train(training)
                        if converted:
                            m.to(memory_format=torch.contiguous_format)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        """A batch ``(N, C, pz, py, px)`` already on the device -> the averaged output, float32, on the device."""
        if self.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last_3d)
        total: torch.Tensor | None = None
        for model in self.models:
            for dims in self.flips:
                inp = torch.flip(xt, dims) if dims else xt
                with self._autocast():
                    out = model(inp)
                out = torch.as_tensor(out, device=self.device).float()
                if out.ndim != 5 or out.shape[0] != xt.shape[0] or tuple(out.shape[2:]) != tuple(xt.shape[2:]):
                    raise ValueError(
                        f"the model turned input {tuple(xt.shape)} into {tuple(out.shape)}; it must return "
                        f"(N, C_out, {', '.join(map(str, xt.shape[2:]))})"
                    )
                if dims:
                    out = torch.flip(out, dims)
                total = out if total is None else total + out
        assert total is not None
        n = len(self.models) * len(self.flips)
        if n > 1:
            total = total / n
        return total

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Numpy in, numpy out (for :func:`~chunked_fnet.inference.tiling.blend_region`)."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return self.forward(xt).cpu().numpy()


def _as_tensor(data: np.ndarray, device: torch.device) -> torch.Tensor:
    """``data`` as a float32 tensor on ``device``: no copy for a float32 array on the CPU (views too)."""
    data = np.asarray(data, dtype=np.float32)
    if any(st < 0 for st in data.strides) or any(st % data.itemsize for st in data.strides):
        data = np.ascontiguousarray(data)
    with warnings.catch_warnings():  # a read-only input is only ever read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(data).to(device)


# ------------------------------------------------------------------------------------- inference
def _weighted_sums(
    predictor: _PatchModel,
    read_region: Callable[[Sequence[slice]], np.ndarray],
    grid: PatchGrid,
    corners: list[tuple[int, int, int]],
    target: Region,
    weights: np.ndarray,
    batch_size: int,
    *,
    normalize: bool,
) -> np.ndarray:
    """The weighted sum of the model outputs of ``corners`` over ``target`` (divided by the weight sum of
    the same patches when ``normalize``), computed on the model's device.

    The box holding the patches is read once and moved to the device once; patches are cut there,
    and the sums stay there until the region is complete, so a GPU never waits for per-batch copies
    to the host or for blending on the CPU (one copy in, one copy out), and the host can queue the
    next batches while the device works. Same patches, same order, same float32 arithmetic as
    :func:`~chunked_fnet.inference.tiling.blend_region`.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    box = tuple(slice(min(c[a] for c in corners), max(c[a] for c in corners) + grid.patch[a]) for a in range(3))
    data = np.asarray(read_region(box))
    expected = tuple(s.stop - s.start for s in box)
    if data.ndim != 4 or data.shape[1:] != expected:
        raise ValueError(
            f"read_region{box} returned shape {data.shape}; expected (C, {', '.join(map(str, expected))})"
        )
    origin = tuple(s.start for s in box)
    r0 = tuple(s.start for s in target)
    rshape = tuple(s.stop - s.start for s in target)
    device = predictor.device
    with predictor.session():
        x = _as_tensor(data, device)
        w = torch.from_numpy(np.asarray(weights, dtype=np.float32)).to(device)
        wsum = torch.zeros(rshape, dtype=torch.float32, device=device) if normalize else None
        acc: torch.Tensor | None = None
        for i in range(0, len(corners), batch_size):
            batch = corners[i : i + batch_size]
            xb = torch.stack(
                [x[(slice(None), *(slice(c - o, c - o + p) for c, o, p in zip(corner, origin, grid.patch)))] for corner in batch]
            )
            pred = predictor.forward(xb)
            if acc is None:
                acc = torch.zeros((pred.shape[1],) + rshape, dtype=torch.float32, device=device)
            elif pred.shape[1] != acc.shape[0]:
                raise ValueError(f"the model changed its channel count from {acc.shape[0]} to {pred.shape[1]}")
            for corner, out in zip(batch, pred):
                dst, src = patch_overlap(corner, grid.patch, r0, rshape)
                ws = w[src]
                acc[(slice(None),) + dst] += ws * out[(slice(None),) + src]
                if wsum is not None:
                    wsum[dst] += ws
        assert acc is not None  # callers pass at least one corner
        if wsum is not None:
            acc /= wsum
        return acc.cpu().numpy()


def _blend_with_model(
    predictor: _PatchModel,
    read_region: Callable[[Sequence[slice]], np.ndarray],
    grid: PatchGrid,
    region: Region,
    weights: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """:func:`~chunked_fnet.inference.tiling.blend_region` done on the model's device: every patch touching
    ``region``, read from ``grid.halo_for(region)``."""
    corners = grid.patches_touching(region)
    return _weighted_sums(predictor, read_region, grid, corners, region, weights, batch_size, normalize=True)


def predict_chunk(
    model: ModelLike | Sequence[ModelLike],
    read_region: Callable[[Sequence[slice]], np.ndarray] | Any,
    volume_shape: Sequence[int],
    region: Sequence[slice],
    *,
    patch: Sequence[int] = (32, 64, 64),
    overlap: float | Sequence[float] = 0.25,
    blend: BlendKind = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    multiple: int | None = 16,
    pad_mode: PadMode = "reflect",
    tta_flips: FlipSpec = False,
    amp_dtype: torch.dtype | None = None,
    shrink_patch: bool = True,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Predict one region (e.g. one output chunk) of a volume, exactly as :func:`predict_volume`
    would predict those voxels.

    ``read_region(slices)`` returns the input ``(C, ...)`` for three slices in padded coordinates; it
    is called once, with ``make_grid(...).halo_for(region)`` (which can extend past the end of an axis
    shorter than the patch — the reader must pad it as :func:`padded_reader` does with ``pad_mode``).
    An array-like ``(C, Z, Y, X)`` may be passed instead and is wrapped by :func:`padded_reader`.
    ``volume_shape`` is the *whole* volume's ``(Z, Y, X)`` (or ``(C, Z, Y, X)``); ``region`` is three
    slices in volume coordinates. ``model`` may be a list (an ensemble: outputs averaged). Returns
    ``(C_out, rz, ry, rx)`` float32. Other options: see :func:`predict_volume`.
    """
    if not callable(read_region):
        read_region = padded_reader(read_region, pad_mode)
    grid = make_grid(volume_shape, patch, overlap, multiple, shrink_patch)
    region = normalize_region(region, grid.shape)
    weights = blend_weights(grid.patch, blend, sigma_scale)
    predictor = _PatchModel(model, device, tta_flips, amp_dtype, channels_last)
    return _blend_with_model(predictor, read_region, grid, region, weights, batch_size)


def predict_owned(
    model: ModelLike | Sequence[ModelLike],
    read_region: Callable[[Sequence[slice]], np.ndarray] | Any,
    volume_shape: Sequence[int],
    block: Sequence[slice],
    *,
    patch: Sequence[int] = (32, 64, 64),
    overlap: float | Sequence[float] = 0.25,
    blend: BlendKind = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    multiple: int | None = 16,
    pad_mode: PadMode = "reflect",
    tta_flips: FlipSpec = False,
    amp_dtype: torch.dtype | None = None,
    shrink_patch: bool = True,
    channels_last: bool | None = None,
) -> tuple[Region, np.ndarray] | None:
    """The weighted model outputs of the patches ``block`` owns (:meth:`PatchGrid.patches_owned`):
    ``(extent, sums)``, ``sums`` ``(C_out, ...)`` over ``extent`` (:meth:`PatchGrid.owned_extent`), or
    None when the block owns no patch.

    The first half of halo-free chunked inference: run it for every block of a partition of the
    volume, hand each region the pieces of ``sums`` that fall in it, and
    :func:`~chunked_fnet.inference.tiling.finish_region` gives the same voxels as
    :func:`predict_volume`, with every global patch evaluated exactly once (:func:`predict_chunk`
    evaluates the patches straddling a region's border once per region). Options as
    :func:`predict_chunk`.
    """
    if not callable(read_region):
        read_region = padded_reader(read_region, pad_mode)
    grid = make_grid(volume_shape, patch, overlap, multiple, shrink_patch)
    block = normalize_region(block, grid.shape)
    corners = grid.patches_owned(block)
    if not corners:
        return None
    extent = grid.owned_extent(block)
    assert extent is not None
    weights = blend_weights(grid.patch, blend, sigma_scale)
    predictor = _PatchModel(model, device, tta_flips, amp_dtype, channels_last)
    return extent, _weighted_sums(predictor, read_region, grid, corners, extent, weights, batch_size, normalize=False)


def predict_volume(
    model: ModelLike | Sequence[ModelLike],
    volume: np.ndarray,
    *,
    patch: Sequence[int] = (32, 64, 64),
    overlap: float | Sequence[float] = 0.25,
    blend: BlendKind = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    multiple: int | None = 16,
    pad_mode: PadMode = "reflect",
    tta_flips: FlipSpec = False,
    amp_dtype: torch.dtype | None = None,
    shrink_patch: bool = True,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Predict a whole ``(C, Z, Y, X)`` volume with a sliding window; returns ``(C_out, Z, Y, X)`` float32.

    - ``model``: a ``torch.nn.Module`` (moved to ``device``, put in eval mode for the call and restored
      after), any callable ``(N, C, pz, py, px) tensor -> (N, C_out, pz, py, px)``, or a list of them
      (an ensemble, averaged). Runs under ``torch.inference_mode``.
    - ``patch``: ``(pz, py, px)``, each divisible by ``multiple`` (else ``ValueError``); with
      ``shrink_patch`` axes longer than the volume are shrunk (:func:`fit_patch`).
    - ``overlap``: fraction of a patch shared with its neighbour, one or per axis, in ``[0, 1)``.
    - ``blend``/``sigma_scale``: the blending window (:func:`~chunked_fnet.inference.tiling.blend_weights`).
    - ``pad_mode``: how axes shorter than the patch are padded (at their end); reflect falls back to
      edge for a single-voxel axis.
    - ``tta_flips``: test-time flip augmentation (:func:`tta_flip_sets`).
    - ``amp_dtype``: e.g. ``torch.float16``/``torch.bfloat16`` to run the model under autocast.
    - ``channels_last``: run modules and inputs in ``torch.channels_last_3d`` memory format (the
      module's own format is restored afterwards); ``None`` (default): on the CPU, where it saves
      about a quarter of the time of the paper's U-Net, not on other devices (try it on a GPU with
      ``benchmarks/gpu_path.py``). Results differ from the other format by float rounding only.

    The volume (as float32) and the weighted sums are held on ``device`` while it runs: for a volume
    larger than the device's memory, predict it chunk by chunk with :func:`predict_chunk`.

    Equal to stitching :func:`predict_chunk` over any partition of the volume (same options).
    """
    shape = tuple(volume.shape)
    if len(shape) != 4:
        raise InputError(f"volume must be (C, Z, Y, X), got shape {shape}")
    region = tuple(slice(0, n) for n in shape[1:])
    return predict_chunk(
        model, padded_reader(volume, pad_mode), shape, region,
        patch=patch, overlap=overlap, blend=blend, sigma_scale=sigma_scale, batch_size=batch_size,
        device=device, multiple=multiple, pad_mode=pad_mode, tta_flips=tta_flips, amp_dtype=amp_dtype,
        shrink_patch=shrink_patch, channels_last=channels_last,
    )
