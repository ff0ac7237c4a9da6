"""An in-process predictor: the ensemble loaded once, one frame predicted at a time, in memory, with
no cluster: for acquisition loops (predict the frame the microscope just wrote, decide where to look
next) and notebooks.

It reads a frame exactly as a chunked run's tasks do (whole-frame z-scoring, resampling onto the
models' grid: :class:`~chunked_fnet.preprocess.frame.ModelGridFrame`), chooses its window and
precision with the one run policy (:func:`~chunked_fnet.predict.policy.resolve_policy`, on this
process's memory) and blends the global patch grid the same way, so a frame's prediction equals
what ``predict()`` writes for it (fp32, within 1e-5) wherever both choose one window: at the
defaults for frames that one patch covers, and always with an explicit ``patch_shape`` and ``overlap``.
In a reduced precision the first frame of each shape is checked against fp32 first, as a run's first
block is (:mod:`~chunked_fnet.predict.precision_check`), and refused outside the bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from chunked_fnet.device import resolve_device
from chunked_fnet.errors import InputError
from chunked_fnet.predict.background import sums_with_background
from chunked_fnet.predict.ensemble import check_ensemble
from chunked_fnet.predict.frame_stats import zscore_eps
from chunked_fnet.predict.job import back_to_input_grid, models_runner
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.plan import check_eps
from chunked_fnet.predict.policy import Hardware, ModelConstraints, RunPolicy, resolve_policy
from chunked_fnet.predict.precision_check import measure, needs_check, refuse_outside_bound
from chunked_fnet.predict.schedule import interpolation_region
from chunked_fnet.preprocess.frame import ModelGridFrame
from chunked_fnet.preprocess.normalize import frame_stats
from chunked_fnet.preprocess.resample import ModelGrid
from chunked_fnet.sliding_window import Box

__all__ = ["Predictor"]


class Predictor:
    """``Predictor(models, options)(frame)``: the blended prediction of every structure for one frame.

    ``models`` are checkpoints or bioimage.io packages, one per structure (checked and loaded once, on
    ``options.device``; the ensemble itself is built once per process, at the first frame). ``frame`` is a ``(z, y, x)`` NumPy array (``scale``: its voxel size in µm,
    z, y, x; default the models' voxel size) or a DataArray with ``z``, ``y``, ``x`` dims (a ``c``
    axis is narrowed to ``options.input_channel``; a ``t`` axis must hold one time point), as
    :func:`chunked_fnet.open_image` gives: its ``scale`` attribute (or its coordinates' spacing) is its
    voxel size. A NumPy frame gives a ``(structures, z, y, x)`` float32 array, a DataArray one with
    ``c``, ``z``, ``y``, ``x`` dims, physical coordinates and the structures as channel names.
    """

    def __init__(self, models: Sequence[str | Path], options: PredictOptions | None = None) -> None:
        self.options = options or PredictOptions()
        self.paths = [str(p) for p in models]
        self.members, self.hashes = check_ensemble(self.paths)
        self.constraints = ModelConstraints.of(self.members)
        self.structures = tuple(m.structure for m in self.members)
        self.voxel_size = tuple(float(v) for v in self.members[0].voxel_size)
        self.device = str(resolve_device(self.options.device))
        self.hardware = Hardware.here(self.device)
        self._policies: dict[tuple[int, ...], RunPolicy] = {}

    def policy(self, model_shape: Sequence[int]) -> RunPolicy:
        """The run policy for frames of ``model_shape`` model voxels (z, y, x): chosen once per shape."""
        key = tuple(int(n) for n in model_shape)
        if key not in self._policies:
            self._policies[key] = resolve_policy(self.options, key, self.constraints, self.hardware)
        return self._policies[key]

    def __call__(self, frame: np.ndarray | xr.DataArray, scale: Sequence[float] | None = None) -> np.ndarray | xr.DataArray:
        values, voxel, origin = self._frame(frame, scale)
        stats = frame_stats(values, "frame", self.options.nonfinite)
        check_eps(zscore_eps(self.members), [stats], [(0, None)], "frame")
        grid = ModelGrid(values.shape, voxel, self.voxel_size)  # type: ignore[arg-type]
        policy = self.policy(grid.shape)
        window = policy.window
        runner = models_runner(self.paths, self.hashes, self.device, self.options.tta_flips, policy)  # loaded once per process
        model_frame = ModelGridFrame(values, ("z", "y", "x"), None, 0, stats, grid, self.options.nonfinite)
        if policy.check is None and needs_check(policy, torch.device(self.device).type):  # the first frame of this shape
            check = measure(runner, model_frame, policy, self.options.tta_flips, self.structures)
            refuse_outside_bound(check, policy.precision, "the frame")
            policy = self._policies[tuple(int(n) for n in grid.shape)] = replace(policy, check=check)
        whole = window.grid.frame
        sums, _ = sums_with_background(runner, self.hashes, window, model_frame, list(window.grid.corners()), whole, policy.skip_empty)
        if self.options.output_grid == "input":
            region = Box((0, 0, 0), tuple(values.shape))
            source = interpolation_region(region, grid.factor, grid.shape)
            predicted = back_to_input_grid(window.blend_pieces(source, [sums.crop(source)]), source, grid, region)
            out_scale = voxel
        else:
            predicted = window.blend_pieces(whole, [sums])
            out_scale = self.voxel_size
        if not isinstance(frame, xr.DataArray):
            return predicted
        coords = {d: origin[i] + np.arange(predicted.shape[i + 1]) * out_scale[i] for i, d in enumerate("zyx")}
        return xr.DataArray(
            predicted, dims=("c", "z", "y", "x"), coords={"c": list(self.structures), **coords},
            attrs={"scale": dict(zip("zyx", out_scale, strict=True)), "units": {d: "micrometer" for d in "zyx"},
                   "precision": policy.precision, "patch_shape": list(window.patch_shape),
                   **({"precision_check": dict(policy.check)} if policy.check is not None else {})},
        )

    def _frame(self, frame: np.ndarray | xr.DataArray, scale: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
        """The frame's ``(z, y, x)`` values, voxel size and origin (µm)."""
        if isinstance(frame, xr.DataArray):
            frame = self._narrow(frame)
            voxel = tuple(float(scale[i]) for i in range(3)) if scale is not None else tuple(_spacing(frame, d) for d in "zyx")
            origin = tuple(float(frame[d].values[0]) if d in frame.coords else 0.0 for d in "zyx")
            values = np.asarray(frame.transpose("z", "y", "x").values)
        else:
            values = np.asarray(frame)
            if values.ndim != 3:
                raise InputError(f"a frame is a (z, y, x) array; got shape {values.shape} (pass one time point and one channel)")
            voxel = tuple(float(s) for s in scale) if scale is not None else self.voxel_size
            origin = (0.0, 0.0, 0.0)
        if len(voxel) != 3 or not all(v > 0 for v in voxel):
            raise InputError(f"scale is the frame's voxel size in µm (z, y, x), all positive; got {list(voxel)}")
        return values, voxel, origin

    def _narrow(self, frame: xr.DataArray) -> xr.DataArray:
        missing = [d for d in "zyx" if d not in frame.dims]
        if missing:
            raise InputError(f"the frame has dims {list(frame.dims)}; a 3D prediction needs z, y and x (missing {missing})")
        if "t" in frame.dims:
            if frame.sizes["t"] != 1:
                raise InputError(f"the frame holds {frame.sizes['t']} time points; a Predictor takes one frame at a time (isel t=...)")
            frame = frame.isel(t=0)
        if "c" in frame.dims:
            wanted = self.options.input_channel
            names = [str(c) for c in frame["c"].values] if "c" in frame.coords else []
            if isinstance(wanted, str) and wanted in names:
                frame = frame.isel(c=names.index(wanted))
            elif isinstance(wanted, int) and 0 <= wanted < frame.sizes["c"]:
                frame = frame.isel(c=wanted)
            elif frame.sizes["c"] == 1:
                frame = frame.isel(c=0)
            else:
                raise InputError(f"the frame's channels are {names or frame.sizes['c']}; input_channel {wanted!r} is not one of them")
        extra = [d for d in frame.dims if d not in "zyx"]
        if extra:
            raise InputError(f"the frame has dims {list(frame.dims)}; only z, y, x (and one t, and c) are understood, not {extra}")
        return frame


def _spacing(frame: xr.DataArray, dim: str) -> float:
    """A DataArray's voxel size along ``dim``: its ``scale`` attribute (:func:`chunked_fnet.open_image`), or its coordinates' spacing."""
    scale: Any = frame.attrs.get("scale", {})
    if dim in scale:
        return float(scale[dim])
    if dim in frame.coords and frame.sizes[dim] > 1:
        return float(frame[dim].values[1] - frame[dim].values[0])
    raise InputError(f"the frame's voxel size along {dim} is unknown: give it a scale attribute, {dim} coordinates, or pass scale=")
