"""Dataset manifests: which images pair which transmitted-light channel with which fluorescence channel.

A manifest is YAML (``images:`` list) or CSV (one row per image), each entry naming an OME-Zarr
image (or a TIFF, converted once into the run directory) with its input and target channels::

    images:
      - path: data/synthetic.zarr/0
        input_channel: brightfield
        target_channel: dna
        split: train          # optional: train | test; otherwise the split is drawn reproducibly
        time_points: [0, 1]   # optional: default all; every time point is one training pair

Relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from chunked_fnet.config import build
from chunked_fnet.errors import InputError


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    input_channel: str | int = "brightfield"
    target_channel: str | int | None = None  # may be left to the training config (several structures per image)
    split: Literal["train", "test"] | None = None
    series: str | None = None
    time_points: tuple[int, ...] | None = None
    voxel_size: tuple[float, float, float] | None = Field(None, description="z, y, x µm, for TIFFs without it")


class Pair(BaseModel):
    """One training/test example: a time point of an image, with the channels to map."""

    model_config = ConfigDict(frozen=True)
    path: str
    series: str | None
    t: int | None
    input_channel: str | int
    target_channel: str | int | None
    split: Literal["train", "test"] | None

    @property
    def name(self) -> str:
        base = self.path if self.series is None else f"{self.path}/{self.series}"
        return base if self.t is None else f"{base}@t{self.t}"


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Parse a YAML or CSV manifest; errors name the file, the entry and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = [{k: v for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]
        for row in rows:
            if "time_points" in row:
                row["time_points"] = [int(v) for v in str(row["time_points"]).replace(";", " ").split()]
            for key in ("input_channel", "target_channel"):
                if key in row and str(row[key]).lstrip("-").isdigit():
                    row[key] = int(row[key])
    else:
        data = yaml.safe_load(path.read_text()) or {}
        rows = data.get("images") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise InputError(f"manifest {path}: expected a top-level 'images:' list of entries")
    entries = []
    for i, row in enumerate(rows):
        entry = build(ManifestEntry, row, f"manifest {path}, entry {i + 1}")
        if not ("://" in entry.path or Path(entry.path).is_absolute()):
            entry = entry.model_copy(update={"path": str((path.parent / entry.path).resolve())})
        entries.append(entry)
    if not entries:
        raise InputError(f"manifest {path} lists no images")
    return entries


def split_pairs(pairs: list[Pair], n_train: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Reproducible train/test split: explicit ``split`` fields win; the rest are shuffled by ``seed``
    and the first ``n_train`` train (the paper: 30 per structure), keeping at least one for test."""
    fixed_train = [p for p in pairs if p.split == "train"]
    fixed_test = [p for p in pairs if p.split == "test"]
    free = [p for p in pairs if p.split is None]
    order = np.random.default_rng(seed).permutation(len(free))
    free = [free[i] for i in order]
    room = max(0, n_train - len(fixed_train))
    if not fixed_test and len(free) <= room:
        room = max(0, len(free) - 1)  # keep a held-out pair
    train = fixed_train + free[:room]
    test = fixed_test + free[room:]
    if not train:
        raise InputError("the split left no training pairs; add images or lower n_train")
    return train, test
