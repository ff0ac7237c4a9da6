"""Small things many tests make: a tiny, randomly initialised fnet checkpoint with a complete card."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from chunked_fnet.model import FnetUNet, ModelCard, UNetConfig, save_checkpoint


def tiny_checkpoint(
    path: Path, structure: str = "dna", *, seed: int = 0, voxel: Sequence[float] = (0.4, 0.4, 0.4), in_channels: int = 1, color: str = "00FF00"
) -> Path:
    """A depth-2, width-4 U-Net (untrained, seeded) saved as ``path`` for ``structure`` at ``voxel`` µm."""
    torch.manual_seed(seed)
    model = FnetUNet(UNetConfig(depth=2, width=4, in_channels=in_channels))
    card = ModelCard(
        structure=structure, architecture=model.config, voxel_size=tuple(voxel),
        input={"modality": "brightfield", "channel": "brightfield"}, color=color,
        training={"dataset": "random init", "iterations": 0, "seed": seed, "batch_size": 1, "patch_shape": [8, 16, 16], "learning_rate": 0.001},
    )
    return save_checkpoint(path, model, card)
