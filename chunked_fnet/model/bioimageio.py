"""A bioimage.io model package (a .zip, model spec 0.5 or 0.4) as an ensemble member of ``predict``.

Only what the chunked, seam-free pipeline can reproduce exactly is accepted: one 3D input and one
3D output of a single channel each, the output the input's size on the input's grid; input sizes
``min + k * step`` (``min`` a multiple of ``step``); z-scoring per image as the only preprocessing
(the pipeline z-scores every frame with the whole frame's statistics, also when it predicts in
tiles); as postprocessing at most a fixed linear rescaling (it commutes with blending). Everything
else is refused by name, with the file named. The package's halo (the output rim it declares
invalid) becomes a lower bound on the sliding window's overlap.

Loading prefers ``pytorch_state_dict`` (the package's architecture, which is Python code from the
package that runs on load, as in every bioimage.io consumer; through bioimageio.core) and falls back
to ``torchscript``. The bioimage.io libraries are imported only when a package is used
(``pip install 'chunked_fnet[bioimageio]'``).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chunked_fnet.errors import InputError, one_line

__all__ = ["PackageInfo", "is_package", "load_package_model", "package_hash", "read_package"]

SPACE = ("z", "y", "x")
#: Micrometres per unit, for the space units a microscope image plausibly has.
MICROMETERS = {"angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6}
WEIGHT_ORDER = ("pytorch_state_dict", "torchscript")
DEFAULT_WIDTH = 32  # a foreign network's top-level channels, for the patch memory estimate (FnetUNet's default)


@dataclass(frozen=True)
class PackageInfo:
    """What ``predict`` needs to know about a package (all sizes on the model's voxel grid, z, y, x)."""

    path: str
    structure: str
    color: str
    voxel_size: tuple[float, float, float]  # µm
    min_shape: tuple[int, int, int]
    step: tuple[int, int, int]
    halo: tuple[int, int, int]
    eps: float  # the z-scoring's epsilon: (x - mean) / (std + eps)
    weights: str  # the format loaded
    width: int = DEFAULT_WIDTH
    input_axes: tuple[str, ...] = ("batch", "channel", *SPACE)
    output_axes: tuple[str, ...] = ("batch", "channel", *SPACE)
    gain: float = 1.0  # postprocessing scale_linear
    offset: float = 0.0


def is_package(path: str | os.PathLike) -> bool:
    """A bioimage.io package is one .zip file (a checkpoint is a directory)."""
    return Path(path).suffix.lower() == ".zip"


def package_hash(path: str | os.PathLike) -> str:
    """SHA-256 of the package file: keys the per-worker model cache, recorded in the run record."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the bioimage.io package ({exc.strerror or exc})") from None
    return h.hexdigest()


def _load_description(path: str | os.PathLike) -> Any:
    """The package's description, converted to model spec 0.5, or an InputError naming the file."""
    try:
        from bioimageio.spec import ValidationContext, load_model_description
    except ImportError:
        raise InputError(f"{path}: reading a bioimage.io package needs bioimageio.core: pip install 'chunked_fnet[bioimageio]'") from None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"bioimage.io package not found: {p} (expected a .zip file)")
    try:
        with ValidationContext(perform_io_checks=False):
            return load_model_description(p, format_version="latest")
    except Exception as exc:  # bioimageio raises ValueError with its validation summary, zipfile BadZipFile, ...
        raise InputError(f"{p}: not a valid bioimage.io model package ({type(exc).__name__}: {one_line(exc)[:600]})") from None


def _axis_ids(tensor: Any) -> tuple[str, ...]:
    return tuple("batch" if a.type == "batch" else "channel" if a.type == "channel" else str(a.id) for a in tensor.axes)


def _check_axes(path: str, tensor: Any, what: str) -> None:
    """One channel, z, y and x space axes, and optionally a batch axis: nothing else."""
    types = [a.type for a in tensor.axes]
    space = [str(a.id) for a in tensor.axes if a.type == "space"]
    if sorted(space) != sorted(SPACE) or any(t not in ("batch", "channel", "space") for t in types):
        kind = f"{len(space)}D" if len(space) != 3 else "not a plain z, y, x"
        raise InputError(
            f"{path}: the {what} tensor {tensor.id!r} has axes {list(_axis_ids(tensor))} ({kind} package); "
            "chunked prediction runs 3D packages whose tensors have z, y, x space axes and at most batch and one channel"
        )
    for a in tensor.axes:
        if a.type == "channel" and a.size != 1:
            raise InputError(f"{path}: the {what} tensor {tensor.id!r} has {a.size} channels; only single-channel packages are supported")


def _input_sizes(path: str, tensor: Any) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    from bioimageio.spec.model.v0_5 import ParameterizedSize

    mins, steps = [], []
    for name in SPACE:
        axis = next(a for a in tensor.axes if a.type == "space" and str(a.id) == name)
        if not isinstance(axis.size, ParameterizedSize) or axis.size.step < 1:
            raise InputError(
                f"{path}: input axis {name} has the fixed size {axis.size}; the sliding window needs parameterised sizes (min + k * step)"
            )
        if axis.size.min % axis.size.step:
            raise InputError(
                f"{path}: input axis {name} takes sizes {axis.size.min} + k * {axis.size.step}; the sliding window supports a minimum "
                "that is a multiple of the step"
            )
        mins.append(int(axis.size.min))
        steps.append(int(axis.size.step))
    return tuple(mins), tuple(steps)  # type: ignore[return-value]


def _voxel_size(path: str, tensor: Any) -> tuple[float, float, float]:
    out = []
    for name in SPACE:
        axis = next(a for a in tensor.axes if a.type == "space" and str(a.id) == name)
        unit = axis.unit
        if unit not in MICROMETERS:
            raise InputError(
                f"{path}: input axis {name} has scale {axis.scale} in unit {unit!r}; predict needs the voxel size the model expects "
                f"in a length unit ({', '.join(MICROMETERS)}) to resample images onto it"
            )
        out.append(float(axis.scale) * MICROMETERS[unit])
    return tuple(out)  # type: ignore[return-value]


def _output_halo(path: str, inp: Any, out: Any) -> tuple[int, int, int]:
    """The output's halo per axis; the output must be the input's size on the input's grid."""
    from bioimageio.spec.model.v0_5 import SizeReference

    halo = []
    for name in SPACE:
        axis = next(a for a in out.axes if a.type == "space" and str(a.id) == name)
        ref = next(a for a in inp.axes if a.type == "space" and str(a.id) == name)
        size = axis.size
        same = isinstance(size, SizeReference) and str(size.tensor_id) == str(inp.id) and str(size.axis_id) == name and size.offset == 0
        if not same or not math.isclose(axis.scale, ref.scale) or axis.unit != ref.unit:
            raise InputError(
                f"{path}: output axis {name} (size {size}, scale {axis.scale}) is not the input's size on the input's grid; "
                "chunked prediction needs an output voxel for every input voxel"
            )
        halo.append(int(getattr(axis, "halo", 0) or 0))
    return tuple(halo)  # type: ignore[return-value]


def _zscore_eps(path: str, tensor: Any) -> float:
    """The epsilon of the one ``zero_mean_unit_variance`` per image; anything else is refused."""
    zscores = []
    for op in tensor.preprocessing:
        if op.id == "ensure_dtype" and op.kwargs.dtype in ("float32", "float64"):
            continue
        if op.id == "zero_mean_unit_variance" and not zscores:
            axes = op.kwargs.axes
            if axes is not None and ("batch" in [str(a) for a in axes] or not set(SPACE) <= {str(a) for a in axes}):
                raise InputError(
                    f"{path}: z-scores the input over the axes {[str(a) for a in axes]}; chunked_fnet z-scores each image (frame) "
                    "over all of z, y, x, not per plane nor over a batch"
                )
            zscores.append(float(op.kwargs.eps))
            continue
        raise InputError(
            f"{path}: input preprocessing {op.id!r} cannot be reproduced by chunked prediction, which z-scores every frame with "
            "its whole-frame statistics (only zero_mean_unit_variance per image is supported)"
        )
    if not zscores:
        raise InputError(
            f"{path}: the package expects unnormalised input (no zero_mean_unit_variance preprocessing); chunked prediction "
            "feeds every model z-scored frames"
        )
    return zscores[0]


def _linear_postprocessing(path: str, tensor: Any) -> tuple[float, float]:
    gain, offset = 1.0, 0.0
    for op in tensor.postprocessing:
        if op.id == "ensure_dtype" and op.kwargs.dtype in ("float32", "float64"):
            continue
        if op.id == "scale_linear" and not hasattr(op.kwargs, "axis"):
            gain, offset = gain * float(op.kwargs.gain), offset * float(op.kwargs.gain) + float(op.kwargs.offset)
            continue
        raise InputError(
            f"{path}: output postprocessing {op.id!r} is not supported (only a fixed scale_linear, which commutes with "
            "blending overlapping patches)"
        )
    return gain, offset


def _info(path: str, descr: Any) -> PackageInfo:
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise InputError(
            f"{path}: the package has {len(descr.inputs)} input(s) {[str(t.id) for t in descr.inputs]} and {len(descr.outputs)} "
            f"output(s) {[str(t.id) for t in descr.outputs]}; predict takes packages with one input and one output tensor"
        )
    inp, out = descr.inputs[0], descr.outputs[0]
    _check_axes(path, inp, "input")
    _check_axes(path, out, "output")
    mins, steps = _input_sizes(path, inp)
    weights = next((w for w in WEIGHT_ORDER if getattr(descr.weights, w, None) is not None), None)
    if weights is None:
        have = [k for k, v in descr.weights if v is not None]
        raise InputError(f"{path}: has weights {have}; predict runs pytorch_state_dict or torchscript weights")
    card = ((descr.config.model_extra or {}).get("chunked_fnet") or {}).get("card") or {}
    gain, offset = _linear_postprocessing(path, out)
    return PackageInfo(
        path=path,
        structure=str(card.get("structure") or out.id),
        color=str(card.get("color") or "FFFFFF"),
        voxel_size=_voxel_size(path, inp),
        min_shape=mins,
        step=steps,
        halo=_output_halo(path, inp, out),
        eps=_zscore_eps(path, inp),
        weights=weights,
        width=int((card.get("architecture") or {}).get("width") or DEFAULT_WIDTH),
        input_axes=_axis_ids(inp),
        output_axes=_axis_ids(out),
        gain=gain,
        offset=offset,
    )


def read_package(path: str | os.PathLike) -> PackageInfo:
    """Read and check a package's description (no weights loaded); refuses what predict cannot run."""
    return _info(str(path), _load_description(path))


class PackageModule(torch.nn.Module):
    """A package's network behind the runner's layout: ``(N, 1, z, y, x) -> (N, 1, z, y, x)``, its own
    axis order, missing batch or channel axes and linear postprocessing handled here."""

    def __init__(self, network: torch.nn.Module, info: PackageInfo) -> None:
        super().__init__()
        self.network = network
        self.input_axes, self.output_axes = info.input_axes, info.output_axes
        self.gain, self.offset = info.gain, info.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "batch" not in self.input_axes:
            return torch.cat([self._run(x[i : i + 1]) for i in range(x.shape[0])])
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        canonical = ["batch", "channel", *SPACE]
        for name in ("batch", "channel"):
            if name not in self.input_axes:
                x = x.select(canonical.index(name), 0)
                canonical.remove(name)
        y = self.network(x.permute(*[canonical.index(a) for a in self.input_axes]))
        if isinstance(y, (tuple, list)):
            y = y[0]
        have = [a for a in ("batch", "channel", *SPACE) if a in self.output_axes]
        y = y.permute(*[self.output_axes.index(a) for a in have])
        if "batch" not in self.output_axes:
            y = y.unsqueeze(0)
        if "channel" not in self.output_axes:
            y = y.unsqueeze(1)
        if self.gain != 1.0 or self.offset != 0.0:
            y = y * self.gain + self.offset
        return y


def _network(descr: Any, info: PackageInfo, device: str) -> torch.nn.Module:
    if info.weights == "pytorch_state_dict":
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        entry = descr.weights.pytorch_state_dict
        network = load_torch_model(entry, load_state=True, devices=[device]).eval()
        ours = (descr.config.model_extra or {}).get("chunked_fnet") and str(entry.architecture.callable) == "FnetUNet"
        if ours and callable(getattr(network, "inference_copy", None)):
            network = network.inference_copy()  # our own U-Net: batch norm folded, as for a checkpoint
        return network
    return torch.jit.load(descr.weights.torchscript.get_reader(), map_location=device).eval()


def load_package_model(path: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, PackageInfo]:
    """The package's network as a :class:`PackageModule` in eval mode on ``device``, and its info."""
    descr = _load_description(path)
    info = _info(str(path), descr)
    try:
        network = _network(descr, info, device)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: could not load its {info.weights} weights ({type(exc).__name__}: {one_line(exc)[:400]})") from None
    return PackageModule(network, info).to(device).eval(), info

