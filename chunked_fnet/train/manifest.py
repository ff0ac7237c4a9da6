"""Dataset manifests: which images pair which transmitted-light channel with which fluorescence channel.

A manifest is YAML (``images:`` list) or CSV (one row per image), each entry naming an OME-Zarr
image (or a TIFF, converted once into the run directory) with its input and target channels::

    images:
      - path: data/synthetic.zarr/0
        input_channel: brightfield
        target_channel: dna
        split: train          # optional: train | validation | test; otherwise train or test, drawn reproducibly
        time_points: [0, 1]   # optional: default all; every time point is one training pair

Or ``images:`` names an OME-Zarr HCS plate, every field of which is one image (and each of its time
points one pair), split by well so that no well is in both splits::

    images:
      plate: data/plate.zarr
      input_channel: brightfield
      target_channel: dna
      test_wells: [B/3, C/5]  # the test split: every field of these wells; the other wells train
      validation_wells: [D/2] # optional: the validation split (the validation loss, the plateau rule)

The **validation** split is neither trained on nor reported as test: its patches give the validation
loss that ``plateau:`` (:class:`chunked_fnet.train.trainer.PlateauRule`) stops training on, so the test
split stays untouched by every choice the run makes. Without one, the validation loss is measured on the
test split (as pytorch_fnet does), and a plateau rule is refused.

A field without the input or the target channel is refused, naming the plate, the well, the field, the
channel and the channels it has.

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
from chunked_fnet.errors import InputError, OmeZarrError
from chunked_fnet.io.plate import join, read_plate
from chunked_fnet.io.reader import channel_index, open_image


Split = Literal["train", "validation", "test"]


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    input_channel: str | int = "brightfield"
    target_channel: str | int | None = None  # may be left to the training config (several structures per image)
    split: Split | None = None
    series: str | None = None
    time_points: tuple[int, ...] | None = None
    voxel_size: tuple[float, float, float] | None = Field(None, description="z, y, x µm, for TIFFs without it")


class PlateImages(BaseModel):
    """``images:`` as a plate: every field a pair, the wells ``test_wells`` the test split."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    plate: str
    input_channel: str | int = "brightfield"
    target_channel: str | int | None = None  # may be left to the training config, as for an image
    test_wells: tuple[str, ...] = Field(min_length=1, description="wells (e.g. B/3) whose fields are the test split")
    validation_wells: tuple[str, ...] = Field((), description="wells whose fields are the validation split")
    time_points: tuple[int, ...] | None = None


class Pair(BaseModel):
    """One training/test example: a time point of an image, with the channels to map."""

    model_config = ConfigDict(frozen=True)
    path: str
    series: str | None
    t: int | None
    input_channel: str | int
    target_channel: str | int | None
    split: Split | None

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
        if isinstance(rows, dict):
            plate = build(PlateImages, rows, f"manifest {path}, images")
            return plate_entries(plate.model_copy(update={"plate": _resolve(plate.plate, path)}), f"manifest {path}")
        if not isinstance(rows, list):
            raise InputError(f"manifest {path}: expected a top-level 'images:' list of entries, or a plate ({{plate: PLATE.zarr, ...}})")
    entries = []
    for i, row in enumerate(rows):
        entry = build(ManifestEntry, row, f"manifest {path}, entry {i + 1}")
        entries.append(entry.model_copy(update={"path": _resolve(entry.path, path)}))
    if not entries:
        raise InputError(f"manifest {path} lists no images")
    return entries


def _resolve(where: str, manifest: Path) -> str:
    """A path relative to the manifest's folder made absolute; a URL or an absolute path kept."""
    return where if "://" in where or Path(where).is_absolute() else str((manifest.parent / where).resolve())


def plate_entries(spec: PlateImages, what: str) -> list[ManifestEntry]:
    """One entry per field of the plate, its ``split`` fixed by its well (``test`` for ``test_wells``,
    else ``train``); an unknown test well, or any field without the input or target channel, is refused."""
    plate = read_plate(spec.plate)
    plate.select([*spec.test_wells, *spec.validation_wells])  # refuses a well the plate lacks, naming the plate's wells
    test = {w.strip("/") for w in spec.test_wells}
    validation = {w.strip("/") for w in spec.validation_wells}
    if test & validation:
        raise InputError(f"{what}: the wells {sorted(test & validation)} are in both test_wells and validation_wells; a well is in one split")
    if set(plate.wells) <= test | validation:
        raise InputError(f"{what}: test_wells and validation_wells name every well of {plate.path} ({sorted(plate.wells)}); leave some wells to train on")
    entries, missing = [], []
    for well, field in plate.fields:
        path = join(spec.plate, well, field)
        missing += _missing_channels(path, spec, f"{plate.path}: well {well}, field {field}")
        split = "test" if well in test else "validation" if well in validation else "train"
        entries.append(ManifestEntry(path=path, input_channel=spec.input_channel, target_channel=spec.target_channel, split=split,
                                     time_points=spec.time_points))
    if missing:
        raise InputError(f"{what}: {len(missing)} field(s) of the plate lack a channel: " + "; ".join(missing))
    if not entries:
        raise InputError(f"{what}: the plate {plate.path} lists no fields")
    return entries


def _missing_channels(path: str, spec: PlateImages, field: str) -> list[str]:
    """``["<field> has no input channel 'x'; its channels are [...]"]`` for each of the spec's channels the field lacks."""
    image = open_image(path)
    names = [str(c) for c in image["c"].values] if "c" in image.dims else []
    out = []
    for what, channel in (("input", spec.input_channel), ("target", spec.target_channel)):
        if channel is None:
            continue
        try:
            channel_index(image, channel, what)
        except OmeZarrError:
            out.append(f"{field} has no {what} channel {channel!r}; its channels are {names}")
    return out


def split_pairs(pairs: list[Pair], n_train: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Reproducible train/test split: explicit ``split`` fields win; the rest are shuffled by ``seed``
    and the first ``n_train`` train (the paper: 30 per structure), keeping at least one for test.
    Pairs marked ``validation`` are in neither (:func:`validation_pairs`)."""
    pairs = [p for p in pairs if p.split != "validation"]
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


def validation_pairs(pairs: list[Pair]) -> list[Pair]:
    """The pairs the manifest marks ``split: validation`` (never drawn at random: a validation split is chosen)."""
    return [p for p in pairs if p.split == "validation"]
