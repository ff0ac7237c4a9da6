"""The ensemble a chunk task runs: every structure's model on the same input patch, outputs stacked as
channels, each model loaded once per worker process (keyed by its checkpoint's content hash)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from chunked_fnet.errors import InputError
from chunked_fnet.model import FnetUNet, ModelCard, checkpoint_hash, load_checkpoint

_CACHE: dict[tuple[str, str], FnetUNet] = {}
_LOCK = threading.Lock()


class StackedEnsemble(torch.nn.Module):
    """``(N, 1, z, y, x) -> (N, len(models), z, y, x)``: one output channel per structure."""

    def __init__(self, models: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members], dim=1)


def cached_model(path: str, digest: str, device: str) -> FnetUNet:
    """Load a checkpoint once per process and device, as an inference copy (batch norm folded into
    the convolutions: :meth:`FnetUNet.inference_copy`); later calls return the same module."""
    key = (digest, device)
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = load_checkpoint(path, device=device)[0].inference_copy()
            _CACHE[key] = model
    return model


def check_ensemble(paths: Sequence[str]) -> tuple[list[ModelCard], list[str]]:
    """Cards and content hashes of the ensemble's checkpoints, refusing combinations that cannot run together.

    Each checkpoint is loaded once here (on CPU), so a truncated file or weights that do not fit the
    card's architecture stop the run before any worker starts, with the file named.
    """
    if not paths:
        raise InputError("no models given; pass one checkpoint per structure (--models dna.ckpt ...)")
    cards = [load_checkpoint(p)[1] for p in paths]
    names = [c.structure for c in cards]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"two ensemble models predict the same structure {dupes}: {list(paths)}; each output channel needs its own name")
    for p, c in zip(paths, cards, strict=True):
        if c.architecture.in_channels != 1:
            raise InputError(f"{p}: model takes {c.architecture.in_channels} input channels; only single-channel transmitted-light input is supported")
        if c.architecture.dims != 3:
            raise InputError(f"{p}: a {c.architecture.dims}D model; chunked prediction runs 3D models")
        if c.voxel_size != cards[0].voxel_size:
            raise InputError(
                f"ensemble models were trained at different voxel sizes ({paths[0]}: {cards[0].voxel_size} µm, {p}: {c.voxel_size} µm); "
                "predict them in separate runs"
            )
    return cards, [checkpoint_hash(p) for p in paths]
