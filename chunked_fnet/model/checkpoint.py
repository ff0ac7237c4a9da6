"""Model checkpoints: a directory (conventionally ``NAME.ckpt``) holding

* ``model.safetensors`` — the :class:`~chunked_fnet.model.unet.FnetUNet` state dict (safetensors:
  plain tensors, nothing executable), and
* ``card.json`` — the :class:`ModelCard` (what the model predicts, from what, at which voxel size,
  how inputs are normalised, how it was trained), as indented JSON.

Loading never unpickles anything. Every problem found while loading raises :class:`CheckpointError`
with a message naming the file and what was expected.

Also here: :func:`save_tensors` / :func:`load_tensors`, thin safetensors wrappers with the same
error handling, for the trainer's state files (optimizer moments, RNG states, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import struct
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import pydantic
import safetensors
import safetensors.torch
import torch

from chunked_fnet.config import explain
from chunked_fnet.errors import ChunkedFnetError, OutputExistsError
from chunked_fnet.io.atomic import atomic_dir, write_bytes
from chunked_fnet.model.unet import FnetUNet, UNetConfig

__all__ = [
    "CARD_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "CheckpointError",
    "InputSpec",
    "ModelCard",
    "Normalization",
    "Provenance",
    "checkpoint_hash",
    "check_state_dict",
    "current_versions",
    "load_card",
    "load_checkpoint",
    "load_tensors",
    "model_from_state_dict",
    "save_checkpoint",
    "save_tensors",
    "utc_now",
    "write_checkpoint_files",
]

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
FORMAT_VERSION = 1


class CheckpointError(ChunkedFnetError, ValueError):
    """A checkpoint (or an imported model file) is missing, malformed, or does not fit its card."""


# --------------------------------------------------------------------------------------------------
# The model card


class InputSpec(pydantic.BaseModel, extra="forbid"):
    """What the model reads: the imaging modality and which channel of an image holds it."""

    modality: str = "brightfield"
    channel: str | int = "brightfield"  # channel name (omero label) or index


class Normalization(pydantic.BaseModel, extra="forbid"):
    """How the input is normalised before the model sees it (and how targets were, in training)."""

    method: Literal["zscore"] = "zscore"
    per: Literal["image"] = "image"
    clip: tuple[float, float] | None = None  # clip the normalised values to [low, high]

    @pydantic.field_validator("clip")
    @classmethod
    def _clip_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"clip must be (low, high) with low < high, got {v}")
        return v


class Provenance(pydantic.BaseModel, extra="forbid"):
    """How the model was trained. Unknown values (e.g. for imported models) are ``None``."""

    dataset: str
    iterations: int | None = pydantic.Field(None, ge=0)
    seed: int | None = None
    batch_size: int | None = pydantic.Field(None, ge=1)
    patch_shape: tuple[int, ...] | None = None
    learning_rate: float | None = pydantic.Field(None, gt=0)  # the initial one
    learning_rate_decays: list[tuple[int, float]] = []  # (iteration, new rate) where a learning_rate_decay rule lowered it
    loss: str | None = None
    precision: str | None = None  # what the training steps computed in: fp32, bf16 (autocast), fp16
    versions: dict[str, str] = {}
    created: str | None = None  # ISO 8601, UTC


class ModelCard(pydantic.BaseModel, extra="forbid", ser_json_inf_nan="strings"):
    """Everything needed to use a model correctly, stored beside its weights as ``card.json``.

    (A NaN or infinite metric is written as the JSON string "NaN" / "Infinity" and read back as a float.)
    """

    structure: str = pydantic.Field(min_length=1)  # target structure, e.g. "dna"
    architecture: UNetConfig
    voxel_size: tuple[float, float, float]  # z, y, x in µm, as trained
    input: InputSpec
    target_channel: str | int | None = None
    normalization: Normalization = Normalization()
    color: str = "FFFFFF"  # RRGGBB, for viewers
    training: Provenance
    metrics: dict[str, float] = {}
    format_version: int = FORMAT_VERSION

    @pydantic.field_validator("voxel_size")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(s > 0 for s in v):
            raise ValueError(f"every voxel size (z, y, x µm) must be > 0, got {v}")
        return v

    @pydantic.field_validator("color")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.removeprefix("#")
        if not re.fullmatch(r"[0-9a-fA-F]{6}", v):
            raise ValueError(f"color must be 6 hex digits RRGGBB, got {v!r}")
        return v.upper()

    @pydantic.field_validator("format_version")
    @classmethod
    def _known_format(cls, v: int) -> int:
        if not 1 <= v <= FORMAT_VERSION:
            raise ValueError(
                f"card format_version {v} is not supported (this chunked_fnet reads 1..{FORMAT_VERSION}); "
                "upgrade chunked_fnet"
            )
        return v


def current_versions() -> dict[str, str]:
    """Versions of the software that matters for reproducing a model (for ``Provenance.versions``)."""
    from chunked_fnet import __version__

    return {
        "chunked_fnet": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "safetensors": safetensors.__version__,
    }


def utc_now() -> str:
    """The current time as ISO 8601 UTC, second resolution (for ``Provenance.created``)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------------------------------
# safetensors files


def _tensor_file_error(path: Path, what: str, exc: BaseException | None = None) -> CheckpointError:
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return CheckpointError(f"{path}: {what}{detail}")


def _read_safetensors_metadata(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + n]).get("__metadata__") or {})


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file into CPU tensors (copied into memory; the file is not kept open).

    Returns ``(tensors, metadata)``. Raises :class:`CheckpointError` if the file is missing,
    truncated or otherwise not a valid safetensors file. Nothing is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        what = (
            "is a directory, expected a safetensors file"
            if path.is_dir()
            else "not found (expected a safetensors file)"
        )
        raise _tensor_file_error(path, what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _tensor_file_error(path, "cannot be read", exc) from exc
    if len(data) < 8:
        raise _tensor_file_error(
            path, f"is not a valid safetensors file: only {len(data)} bytes (truncated?)"
        )
    try:
        tensors = safetensors.torch.load(data)
        metadata = _read_safetensors_metadata(data)
    except Exception as exc:  # safetensors raises SafetensorError, and sometimes plain errors, on bad input
        raise _tensor_file_error(path, "is truncated or not a valid safetensors file", exc) from exc
    return tensors, metadata


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(
                f"save_tensors takes a dict of str -> torch.Tensor; {name!r} maps to {type(t).__name__}"
            )
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and key in seen:  # safetensors refuses tensors sharing memory
            t = t.clone()
        elif t.numel():
            seen.add(key)
        out[name] = t
    return out


def _canonical(data: bytes) -> bytes:
    """Rewrite a safetensors header with its metadata keys sorted: safetensors serialises metadata
    from a hash map, so the same tensors and metadata could otherwise give different bytes (and
    different checkpoint hashes). Tensor offsets are relative to the data section, so only the
    header changes; it is padded with spaces to keep the data 8-byte aligned, as safetensors does."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        meta = header.pop("__metadata__")
        header = {"__metadata__": dict(sorted(meta.items())), **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (moved to CPU) and string ``metadata`` as a safetensors file, atomically
    (a temporary file beside it, then renamed over ``path``). Returns the path."""
    path = Path(path)
    if metadata is not None:
        bad = {
            k: type(v).__name__
            for k, v in metadata.items()
            if not (isinstance(k, str) and isinstance(v, str))
        }
        if bad:
            raise TypeError(f"safetensors metadata must map str -> str; not: {bad} (json.dumps other values)")
    plain = _plain_tensors(tensors)
    try:
        data = _canonical(safetensors.torch.save(plain, metadata=dict(metadata) if metadata else None))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot serialise tensors ({type(exc).__name__}: {exc})") from exc
    if not path.parent.is_dir():
        raise CheckpointError(f"{path}: parent directory {path.parent} does not exist")
    write_bytes(path, data)
    return path


# --------------------------------------------------------------------------------------------------
# Cards


def _card_from_bytes(raw: bytes, where: Path) -> ModelCard:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: not valid JSON ({exc}); expected a model card object") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a JSON object (the model card), got {type(obj).__name__}")
    try:
        return ModelCard.model_validate(obj)
    except pydantic.ValidationError as exc:
        raise CheckpointError(explain(ModelCard, exc, f"{where}: invalid model card")) from exc


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    layout = f"a checkpoint directory holding {WEIGHTS_FILE} and {CARD_FILE}"
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (expected {layout})")
    if not path.is_dir():
        imported = "; a pytorch_fnet model file must be imported first (chunked_fnet.model.import_pytorch_fnet)"
        hint = imported if path.suffix in {".p", ".pt", ".pth"} else ""
        raise CheckpointError(f"{path} is a file, expected {layout}{hint}")
    return path


def load_card(path: str | os.PathLike) -> ModelCard:
    """Read and validate the model card of the checkpoint directory ``path``."""
    card_path = _checkpoint_dir(path) / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(f"{card_path}: model card missing (expected {CARD_FILE} in checkpoint {path})")
    return _card_from_bytes(card_path.read_bytes(), card_path)


# --------------------------------------------------------------------------------------------------
# Checkpoints


def check_state_dict(
    tensors: Mapping[str, torch.Tensor], config: UNetConfig, *, source: str = "weights"
) -> None:
    """Raise :class:`CheckpointError` unless ``tensors`` has exactly the names and shapes of a
    :class:`FnetUNet` built from ``config`` (names missing/unexpected and the first shape mismatch)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in FnetUNet(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [
        f"first mismatching tensor '{name}': weights have shape {got[name]}, the architecture needs {shape}"
        for name, shape in expected.items()
        if name in got and got[name] != shape
    ][:1]
    missing = [k for k in expected if k not in got]
    unexpected = sorted(k for k in got if k not in expected)

    def _few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} do not match the architecture {config.model_dump()}: " + "; ".join(problems))


def _check_target(path: Path, overwrite: bool) -> None:
    """Refuse an existing ``path`` unless ``overwrite``, and then anything but a checkpoint (or an empty
    directory): overwriting replaces the whole directory."""
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if path.is_dir() and not path.is_symlink():
        others = sorted(p.name for p in path.iterdir() if p.name not in {WEIGHTS_FILE, CARD_FILE})
        if others:
            raise CheckpointError(
                f"refusing to overwrite {path}: it is not a checkpoint directory (it holds "
                f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); choose another path"
            )


def _check_card(path: Path, model: FnetUNet, card: ModelCard) -> None:
    if card.architecture != model.config:
        raise CheckpointError(
            f"{path}: the card's architecture {card.architecture.model_dump()} does not match the model's "
            f"{model.config.model_dump()}"
        )


def write_checkpoint_files(folder: str | os.PathLike, model: FnetUNet, card: ModelCard) -> None:
    """Write the weights and the card into the existing, empty ``folder``: for callers that fill a
    temporary folder and swap it in whole (:func:`save_checkpoint`, the trainer's resumable state)."""
    folder = Path(folder)
    _check_card(folder, model, card)
    save_tensors(folder / WEIGHTS_FILE, model.state_dict(), {"format": "pt", "content": "chunked_fnet.FnetUNet state dict"})
    write_bytes(folder / CARD_FILE, (card.model_dump_json(indent=2) + "\n").encode())


def save_checkpoint(
    path: str | os.PathLike, model: FnetUNet, card: ModelCard, *, overwrite: bool = False
) -> Path:
    """Write ``model`` and ``card`` as the checkpoint directory ``path`` (e.g. ``dna.ckpt``).

    Refuses an existing ``path`` unless ``overwrite``. The directory is written under a temporary
    name beside ``path`` and renamed into place, so a reader never sees half a checkpoint.
    Returns the path.
    """
    path = Path(path)
    _check_card(path, model, card)
    _check_target(path, overwrite)
    if not path.parent.is_dir():
        raise CheckpointError(f"{path}: parent directory {path.parent} does not exist")
    with atomic_dir(path) as tmp:
        write_checkpoint_files(tmp, model, card)
        _check_target(path, overwrite)  # again: something may have appeared there while writing
    return path


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[FnetUNet, ModelCard]:
    """Load the checkpoint directory ``path``: ``(model in eval mode on device, card)``."""
    card = load_card(path)
    weights_path = Path(path) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(
            f"{weights_path}: weights missing (expected {WEIGHTS_FILE} in checkpoint {path})"
        )
    tensors, _ = load_tensors(weights_path)
    check_state_dict(tensors, card.architecture, source=f"{weights_path}: the weights")
    return model_from_state_dict(card.architecture, tensors).to(device).eval(), card


def model_from_state_dict(config: UNetConfig, tensors: Mapping[str, torch.Tensor]) -> FnetUNet:
    """Build a float32 :class:`FnetUNet` holding ``tensors`` (names and shapes already checked)
    without first initialising random weights."""
    with torch.device("meta"):
        model = FnetUNet(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.float()


def checkpoint_hash(path: str | os.PathLike) -> str:
    """SHA-256 (hex) over the weights file and the card's bytes: identifies a checkpoint's content
    (e.g. to key model caches on workers); changes when either changes."""
    ckpt = _checkpoint_dir(path)
    h = hashlib.sha256()
    for name in (WEIGHTS_FILE, CARD_FILE):
        file = ckpt / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (expected {name} in checkpoint {ckpt})")
        h.update(name.encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
