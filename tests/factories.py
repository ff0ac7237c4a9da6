"""Small things many tests make: a tiny, randomly initialised fnet checkpoint with a complete card, a
small HCS plate on disk, synthetic training pairs with their manifest, and a cluster whose workers are on two hosts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from chunked_fnet.model import FnetUNet, ModelCard, UNetConfig, save_checkpoint
from chunked_fnet.synth.dataset import SynthConfig, generate


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


def paired_synth(root: Path, config: SynthConfig) -> Path:
    """The synthetic dataset ``config`` written to ``root/synth.zarr`` and ``root/manifest.yaml`` pairing each of its
    fields' bright-field with its DNA channel; the manifest's path."""
    generate(config, root / "synth.zarr", progress=False)
    images = [{"path": f"synth.zarr/{i}", "input_channel": "brightfield", "target_channel": "dna"} for i in range(config.fovs)]
    manifest = root / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"images": images}))
    return manifest


def write_plate(
    path: Path,
    fmt: Any = None,
    *,
    wells: Sequence[str] = ("A/1", "A/2", "B/1"),
    fields: Sequence[str] = ("0", "1"),
    shape: Sequence[int] = (8, 24, 20),
    channels: Sequence[str] = ("brightfield", "dna"),
    without: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """A real OME-Zarr plate (ome-zarr-py's writer; NGFF 0.5 unless ``fmt``) of random czyx fields at 0.4 µm,
    every field of every well with ``channels`` except those ``without`` leaves out of a field ("A/2/1": [...]),
    each field given a translation of its own (ome-zarr-py writes zeros)."""
    import numpy as np
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    fmt = fmt or FormatV05()
    rows = sorted({w.split("/")[0] for w in wells})
    columns = sorted({w.split("/")[1] for w in wells})
    root = zarr.open_group(str(path), mode="w", zarr_format=3 if fmt.version == "0.5" else 2)
    write_plate_metadata(root, rows, columns, list(wells), fmt=fmt, field_count=len(fields), name="test plate")
    rng = np.random.default_rng(0)

    def channel(name: str) -> dict[str, Any]:
        return {"label": name, "color": "FFFFFF", "active": True, "window": {"min": -4, "max": 4, "start": -2, "end": 2}}

    for k, well in enumerate(wells):
        row, col = well.split("/")
        group = root.require_group(row).require_group(col)
        write_well_metadata(group, [{"path": f} for f in fields], fmt=fmt)
        for i, f in enumerate(fields):
            names = [c for c in channels if c not in (without or {}).get(f"{well}/{f}", ())]
            data = rng.normal(size=(len(names), *shape)).astype("float32")
            image = group.require_group(f)
            write_image(data, image, axes="czyx", fmt=fmt, scale_factors=[], scale={"c": 1.0, "z": 0.4, "y": 0.4, "x": 0.4},
                        axes_units={a: "micrometer" for a in "zyx"}, omero={"channels": [channel(n) for n in names]})
            attrs = image.attrs.asdict()
            ms = (attrs["ome"] if "ome" in attrs else attrs)["multiscales"]
            ms[0]["datasets"][0]["coordinateTransformations"][1]["translation"] = [0.0, 0.8 * k, 1.2 * i, 2.0]
            image.update_attributes(attrs)


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
