"""The ensemble a chunk task runs: every structure's model on the same input patch, outputs stacked as
channels, each model loaded once per worker process (keyed by its file's content hash).

A member is a chunked_fnet checkpoint (a ``.ckpt`` directory) or a bioimage.io model package (a
``.zip``, :mod:`chunked_fnet.model.bioimageio`); :class:`Member` is what planning needs of either.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from chunked_fnet.errors import InputError
from chunked_fnet.model import checkpoint_hash, load_checkpoint
from chunked_fnet.model.bioimageio import is_package, load_package_model, package_hash
from chunked_fnet.sliding_window.runner import prepare_for_inference

_CACHE: dict[tuple[str, str, bool], torch.nn.Module] = {}  # (content hash, device, channels_last)
_ENSEMBLES: dict[tuple[tuple[str, ...], str, bool], StackedEnsemble] = {}  # (content hashes, device, channels_last)
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Member:
    """One ensemble model as planning sees it (sizes on the model grid, z, y, x)."""

    path: str
    structure: str
    color: str
    voxel_size: tuple[float, float, float]  # µm
    multiple: int  # every patch size must be a multiple of this
    min_patch: tuple[int, int, int]  # the smallest patch it takes
    halo: tuple[int, int, int] = (0, 0, 0)  # output rim it declares invalid (bioimage.io packages)
    width: int = 32  # top-level channels: what a patch's activations cost
    eps: float = 0.0  # a package's z-scoring epsilon: (x - mean) / (std + eps)


class StackedEnsemble(torch.nn.Module):
    """``(N, 1, z, y, x) -> (N, len(models), z, y, x)``: one output channel per structure."""

    def __init__(self, models: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:  # one structure: its output as it is, not copied by a cat of one
            return self.members[0](x)
        return torch.cat([m(x) for m in self.members], dim=1)


def _load(path: str, device: str) -> torch.nn.Module:
    """An inference copy: a checkpoint's U-Net with batch norm folded into the convolutions
    (:meth:`FnetUNet.inference_copy`), or a package's network behind the runner's layout."""
    if is_package(path):
        return load_package_model(path, device=device)[0]
    return load_checkpoint(path, device=device)[0].inference_copy()


def cached_model(path: str, digest: str, device: str, channels_last: bool = False) -> torch.nn.Module:
    """Load a checkpoint or package once per process, device and memory format; later calls return the
    same module, put in eval mode (and converted) once here and never toggled afterwards: the task
    threads of a worker run it at once (:func:`~chunked_fnet.sliding_window.runner.prepare_for_inference`)."""
    key = (digest, device, channels_last)
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = prepare_for_inference(_load(path, device), torch.device(device), channels_last)
            _CACHE[key] = model
    return model


def cached_ensemble(paths: Sequence[str], digests: Sequence[str], device: str, channels_last: bool) -> StackedEnsemble:
    """The stacked ensemble of ``paths`` on ``device``, built once per process, device and memory format
    (the models' content hashes name them): every block of a run, in any thread, runs this one module,
    already in eval mode and converted, so no block converts, toggles or restores anything.

    Not ``torch.compile``'d (yet): at a run's fixed whole-frame patch on a 2-core AVX2 CPU (paper U-Net,
    32x128x128, fp32, ``benchmarks/run.py gpu device-path --forward-only --compile``) inductor ran 1.00x and 1.18x
    eager in two runs on a loaded machine, after about 100 s of compiling per process; on a GPU the
    acceptance run's section 3 measures it. Compiling once per worker is worth it only where measured faster."""
    key = (tuple(digests), device, channels_last)
    with _LOCK:
        ensemble = _ENSEMBLES.get(key)
    if ensemble is None:
        members = [cached_model(p, h, device, channels_last) for p, h in zip(paths, digests, strict=True)]
        built = StackedEnsemble(members).eval()
        with _LOCK:
            ensemble = _ENSEMBLES.setdefault(key, built)
    return ensemble


def _member(path: str) -> Member:
    """Load the model once (on CPU), so a broken file stops the run before any worker starts, with the file named."""
    if is_package(path):
        _, info = load_package_model(path)
        step = math.lcm(*info.step)
        return Member(
            path, info.structure, info.color, info.voxel_size, step, info.min_shape, info.halo, info.width, info.eps,
        )
    card = load_checkpoint(path)[1]
    arch = card.architecture
    if arch.in_channels != 1:
        raise InputError(f"{path}: model takes {arch.in_channels} input channels; only single-channel transmitted-light input is supported")
    if arch.dims != 3:
        raise InputError(f"{path}: a {arch.dims}D model; chunked prediction runs 3D models")
    m = arch.multiple
    return Member(path, card.structure, card.color, tuple(card.voxel_size), m, (m, m, m), width=arch.width)  # type: ignore[arg-type]


def check_ensemble(paths: Sequence[str]) -> tuple[list[Member], list[str]]:
    """The ensemble's members and content hashes, refusing combinations that cannot run together."""
    if not paths:
        raise InputError("no models given; pass one checkpoint or bioimage.io package per structure (--models dna.ckpt ...)")
    members = [_member(p) for p in paths]
    names = [m.structure for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"two ensemble models predict the same structure {dupes}: {list(paths)}; each output channel needs its own name")
    first = members[0]
    for m in members[1:]:
        if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(m.voxel_size, first.voxel_size, strict=True)):
            raise InputError(
                f"ensemble models were trained at different voxel sizes ({first.path}: {first.voxel_size} µm, {m.path}: {m.voxel_size} µm); "
                "predict them in separate runs"
            )
    return members, [package_hash(p) if is_package(p) else checkpoint_hash(p) for p in paths]
