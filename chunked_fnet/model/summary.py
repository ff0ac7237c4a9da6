"""What an output's provenance says of each model that made it: enough to tell which model, trained how,
without the file at hand (the image's attributes keep it, see ``predict/prepare.py:provenance``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chunked_fnet.model.bioimageio import is_package
from chunked_fnet.model.checkpoint import load_card

__all__ = ["model_summary"]


def model_summary(path: str, digest: str) -> dict[str, Any]:
    """The model's file name and content hash; for a checkpoint its card's structure, voxel size,
    architecture and training (dataset, iterations, seed, precision, when), for a package its format."""
    out: dict[str, Any] = {"file": Path(path).name, "sha256": digest}
    if is_package(path):
        return {**out, "format": "bioimage.io package"}
    card = load_card(path)
    arch = card.architecture
    training = card.training
    return {
        **out, "format": "chunked_fnet checkpoint", "structure": card.structure, "voxel_size_um": list(card.voxel_size),
        "architecture": {"depth": arch.depth, "width": arch.width},
        "training": {"dataset": training.dataset, "iterations": training.iterations, "seed": training.seed,
                     "precision": training.precision, "created": training.created},
        "metrics": dict(card.metrics),
    }
