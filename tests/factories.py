"""Small things many tests make: a tiny, randomly initialised fnet checkpoint with a complete card, and
a cluster whose workers are on two hosts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def two_host_client(memory_limit: str = "1GiB") -> Iterator:
    """A client of a real cluster whose two single-thread worker processes sit on two hosts, as the
    scheduler sees them: 127.0.0.1 and 127.0.0.2 (both loopback), like two SLURM nodes."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    workers = {
        f"host{i}": {"cls": Nanny, "options": {"host": host, "nthreads": 1, "memory_limit": memory_limit, "dashboard_address": None}}
        for i, host in enumerate(("127.0.0.1", "127.0.0.2"))
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        yield client


def prediction_case(root: Path, options: Any, size_t: int = 3) -> tuple[Path, list[Path], Any]:
    """A small synthetic input (``size_t`` x 9 x 40 x 36), one tiny model, and its reference prediction with ``options``:
    what the failure tests interrupt, fill up and race, then compare with."""
    from chunked_fnet.predict import predict
    from chunked_fnet.synth.dataset import SynthConfig, generate

    generate(SynthConfig(size_t=size_t, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), root / "in.zarr", progress=False)
    models = [tiny_checkpoint(root / "dna.ckpt", color="0000FF")]
    reference, _ = predict(root / "in.zarr", models, root / "reference.zarr", options=options, progress=False)
    return root / "in.zarr", models, reference.values
