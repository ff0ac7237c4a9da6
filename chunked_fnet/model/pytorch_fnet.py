"""Import models trained with pytorch_fnet (AllenCellModeling/pytorch_fnet).

pytorch_fnet saves a model with ``torch.save`` of a dict. Two layouts exist:

* **release_1** (the paper's code; ``fnet/fnet_model.py``, ``Model.get_state``)::

      {"nn_module": "fnet_nn_3d",        # module under fnet.nn_modules holding class Net
       "nn_kwargs": {...},               # absent in the oldest files
       "nn_state": <Net.state_dict()>,
       "optimizer_state": <Adam state>,
       "count_iter": int}

* **master** (``fnet/fnet_model.py``, ``Model.get_state``; a model directory holds it as ``model.p``)::

      {"fnet_model_class": "fnet.fnet_model.Model",
       "fnet_model_kwargs": {"nn_class": "fnet.nn_modules.fnet_nn_3d.Net", "nn_kwargs": {...},
                             "lr": ..., "betas": ..., "criterion_class": ..., ...},
       "fnet_model_posargs": [...],
       "nn_state": <Net.state_dict()>,
       "optimizer_state": <Adam state>,
       "count_iter": int}

Both networks (``fnet_nn_3d.Net`` / ``fnet_nn_3d_params.Net``, and the 2D ``fnet_nn_2d``) are the
same U-Net, defined recursively: ``net_recurse`` is level 0 and each ``sub_u`` one level deeper.
Per level: ``sub_2conv_more`` (two conv3+BN+ReLU, the encoder, or the bottleneck at the deepest
level), ``conv_down`` + ``bn0`` (stride-2 conv), ``convt`` + ``bn1`` (stride-2 transposed conv),
``sub_2conv_less`` (two conv3+BN+ReLU after concatenating ``[skip, upsampled]``), and a final
``conv_out``. :func:`pytorch_fnet_key_to_fnet` maps these names onto :class:`FnetUNet`'s; the
architecture (2D/3D, depth, width, channels) is read off the tensor shapes. State dicts saved from a
``torch.nn.DataParallel`` (keys prefixed ``module.``) and bare state dicts are accepted too.

The file is read with ``torch.load(..., weights_only=True)`` only: a pickle that refers to anything
other than tensors and plain containers is refused before any of its code can run.

pytorch_fnet files record neither the target structure nor the voxel size the model was trained at
(release_1 resized the paper's 0.29 × 0.108 × 0.108 µm images in y/x by 0.37241, i.e. trained at
about 0.29 µm isotropic), so both must be supplied.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydantic
import torch

from chunked_fnet.config import explain
from chunked_fnet.model.checkpoint import (
    CheckpointError,
    InputSpec,
    ModelCard,
    Normalization,
    Provenance,
    check_state_dict,
    current_versions,
    model_from_state_dict,
    utc_now,
)
from chunked_fnet.model.unet import FnetUNet, UNetConfig

__all__ = [
    "MissingMetadataError",
    "PytorchFnetFile",
    "fnet_key_to_pytorch_fnet",
    "import_pytorch_fnet",
    "pytorch_fnet_key_to_fnet",
    "read_pytorch_fnet",
]

_ROOT = "net_recurse."
_SUB = "sub_u."
_OUT = "conv_out."
_TOP_LEVEL_TENSOR = "net_recurse.sub_2conv_more.conv1.weight"

# pytorch_fnet per-level module name -> FnetUNet module name (format with the level)
_LEVEL_MODULES = {
    "sub_2conv_less": "decoders.{i}",
    "conv_down": "downs.{i}.conv",
    "bn0": "downs.{i}.bn",
    "convt": "ups.{i}.conv",
    "bn1": "ups.{i}.bn",
}


def pytorch_fnet_key_to_fnet(key: str, depth: int) -> str:
    """Map a pytorch_fnet U-Net state-dict key onto the :class:`FnetUNet` key for a net of ``depth``.

    ``net_recurse.sub_u.sub_u.conv_down.weight`` -> ``downs.2.conv.weight``;
    ``net_recurse.sub_u.sub_2conv_more.bn1.bias`` -> ``encoders.1.bn1.bias`` (or ``bottleneck.bn1.bias``
    when level 1 is the deepest); ``conv_out.weight`` -> ``head.weight``. Raises KeyError for a
    name that is not part of that U-Net.
    """
    if key.startswith(_OUT):
        return "head." + key[len(_OUT) :]
    if not key.startswith(_ROOT):
        raise KeyError(key)
    rest, level = key[len(_ROOT) :], 0
    while rest.startswith(_SUB):
        rest, level = rest[len(_SUB) :], level + 1
    module, _, tail = rest.partition(".")
    if not tail or level > depth:
        raise KeyError(key)
    if module == "sub_2conv_more":
        return f"{'bottleneck' if level == depth else f'encoders.{level}'}.{tail}"
    if module in _LEVEL_MODULES and level < depth:
        return f"{_LEVEL_MODULES[module].format(i=level)}.{tail}"
    raise KeyError(key)


def fnet_key_to_pytorch_fnet(key: str, depth: int) -> str:
    """Inverse of :func:`pytorch_fnet_key_to_fnet`."""
    if key.startswith("head."):
        return _OUT + key[len("head.") :]
    if key.startswith("bottleneck."):
        return _ROOT + _SUB * depth + "sub_2conv_more." + key[len("bottleneck.") :]
    m = re.fullmatch(r"(encoders|decoders|downs|ups)\.(\d+)\.(.+)", key)
    if not m:
        raise KeyError(key)
    group, level, tail = m.group(1), int(m.group(2)), m.group(3)
    prefix = _ROOT + _SUB * level
    if group == "encoders":
        return prefix + "sub_2conv_more." + tail
    name = f"{group}.{level}.{tail}"  # matched against _LEVEL_MODULES, read backwards
    for module, pattern in _LEVEL_MODULES.items():
        ours = pattern.format(i=level) + "."
        if name.startswith(ours) and len(name) > len(ours):
            return prefix + module + "." + name[len(ours) :]
    raise KeyError(key)


@dataclass
class PytorchFnetFile:
    """What a pytorch_fnet model file holds, read without running any of its code."""

    path: Path
    layout: str  # "release_1", "master", "nn_state only" or "bare state dict"
    config: UNetConfig
    state_dict: dict[str, torch.Tensor]  # already renamed to FnetUNet's keys
    count_iter: int | None = None
    nn_class: str | None = None  # e.g. "fnet.nn_modules.fnet_nn_3d.Net" (master) or "fnet_nn_3d" (release_1)
    nn_kwargs: dict = field(default_factory=dict)
    learning_rate: float | None = None
    loss: str | None = None


_REQUIRED = {
    "structure": "structure (the predicted structure, e.g. 'dna')",
    "voxel_size": "voxel_size (z, y, x µm of the training images after any resizing, e.g. 0.29 0.29 0.29)",
}


class MissingMetadataError(CheckpointError):
    """pytorch_fnet files do not record what a model card needs; ``missing`` names what to supply
    (a subset of ``["structure", "voxel_size"]``) and ``found`` is what the file does hold."""

    def __init__(self, found: PytorchFnetFile, missing: list[str]) -> None:
        self.found, self.missing = found, list(missing)
        cfg = found.config
        super().__init__(
            f"{found.path}: pytorch_fnet model files do not record {' or '.join(missing)}; supply "
            + " and ".join(_REQUIRED[m] for m in missing)
            + f" (found a {cfg.dims}D U-Net, depth {cfg.depth}, width {cfg.width}, {found.layout} layout)"
        )


def _torch_load_weights_only(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", msg)
        if found or "Weights only load failed" in msg:
            what = f" (it refers to {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refusing to load: the file contains Python objects other than tensors and plain "
                f"containers{what}, and loading it could run code. chunked_fnet only reads pytorch_fnet "
                "model files that hold tensors, numbers, strings, lists and dicts"
            ) from None
        raise CheckpointError(f"{path}: not a readable torch.save file ({msg.splitlines()[0]})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, ImportError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable torch.save file (truncated or corrupt? {type(exc).__name__}: {detail})"
        ) from None


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(state)
    while state and all(k.startswith("module.") for k in state):  # torch.nn.DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _infer_config(state: Mapping[str, torch.Tensor], path: Path) -> UNetConfig:
    first, out = state.get(_TOP_LEVEL_TENSOR), state.get(_OUT + "weight")
    if first is None or out is None:
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(
            f"{path}: nn_state is not pytorch_fnet's U-Net: expected tensors '{_TOP_LEVEL_TENSOR}' and "
            f"'{_OUT}weight', found {len(state)} tensors ({sample}{', ...' if len(state) > 5 else ''})"
        )
    if first.ndim not in (4, 5) or out.ndim != first.ndim:
        raise CheckpointError(
            f"{path}: '{_TOP_LEVEL_TENSOR}' has shape {tuple(first.shape)} and '{_OUT}weight' {tuple(out.shape)}; "
            "expected 2D (4-d) or 3D (5-d) convolution weights"
        )
    depth = max((key.count(_SUB) for key in state if key.startswith(_ROOT) and ".sub_2conv_more." in key), default=0)
    try:
        return UNetConfig(
            dims=first.ndim - 2,
            depth=depth,
            width=first.shape[0],
            in_channels=first.shape[1],
            out_channels=out.shape[0],
        )
    except pydantic.ValidationError as exc:
        raise CheckpointError(explain(UNetConfig, exc, f"{path}: unsupported U-Net shape")) from None


def _rename(
    state: Mapping[str, torch.Tensor], config: UNetConfig, path: Path, nn_class: str | None
) -> dict[str, torch.Tensor]:
    renamed, unknown = {}, []
    for key, tensor in state.items():
        try:
            renamed[pytorch_fnet_key_to_fnet(key, config.depth)] = tensor
        except KeyError:
            unknown.append(key)
    net = f" (network {nn_class})" if nn_class else ""
    if unknown:
        raise CheckpointError(
            f"{path}: nn_state{net} has tensors that are not part of pytorch_fnet's U-Net: "
            + ", ".join(unknown[:4])
            + (f", ... ({len(unknown)} in all)" if len(unknown) > 4 else "")
        )
    # Files from torch < 0.4.1 lack BatchNorm's num_batches_tracked (unused in eval mode): start at 0.
    with torch.device("meta"):
        expected = FnetUNet(config).state_dict()
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in renamed:
            renamed[key] = torch.zeros((), dtype=torch.long)
    check_state_dict(renamed, config, source=f"{path}: nn_state{net} (keys renamed to FnetUNet's)")
    return renamed


def read_pytorch_fnet(path: str | os.PathLike) -> PytorchFnetFile:
    """Read a pytorch_fnet model file (or a model directory holding ``model.p``) without running
    any code from it, infer its U-Net shape and rename its weights to :class:`FnetUNet`'s keys."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.p").is_file():
            raise CheckpointError(
                f"{path}: is a directory without model.p; expected a pytorch_fnet model file"
            )
        path = path / "model.p"
    if not path.exists():
        raise CheckpointError(f"pytorch_fnet model file not found: {path}")
    obj = _torch_load_weights_only(path)

    nn_class, nn_kwargs, lr, loss, count_iter = None, {}, None, None, None
    if isinstance(obj, Mapping) and "nn_state" in obj:
        state = obj["nn_state"]
        if "fnet_model_kwargs" in obj or "fnet_model_class" in obj:
            layout = "master"
            kwargs = obj.get("fnet_model_kwargs") or {}
            nn_class, lr, loss = kwargs.get("nn_class"), kwargs.get("lr"), kwargs.get("criterion_class")
            nn_kwargs = dict(kwargs.get("nn_kwargs") or {})
        elif "nn_module" in obj:
            layout = "release_1"
            nn_class = obj.get("nn_module")
            nn_kwargs = dict(obj.get("nn_kwargs") or {})
        else:
            layout = "nn_state only"
        count_iter = obj.get("count_iter")
    elif _is_state_dict(obj):
        layout, state = "bare state dict", obj
    else:
        keys = list(obj)[:8] if isinstance(obj, Mapping) else None
        found = f"a dict with keys {keys}" if keys is not None else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"{path}: not a pytorch_fnet model: expected a dict with 'nn_state' (and 'nn_module' in the "
            f"release_1 layout, or 'fnet_model_kwargs' in the master layout), found {found}"
        )
    if not _is_state_dict(state):
        raise CheckpointError(
            f"{path}: 'nn_state' is not a state dict of named tensors ({type(state).__name__})"
        )
    state = _strip_prefix(state)
    config = _infer_config(state, path)
    renamed = _rename(state, config, path, nn_class if isinstance(nn_class, str) else None)
    return PytorchFnetFile(
        path=path,
        layout=layout,
        config=config,
        state_dict=renamed,
        count_iter=int(count_iter) if isinstance(count_iter, int) and count_iter >= 0 else None,
        nn_class=nn_class if isinstance(nn_class, str) else None,
        nn_kwargs=nn_kwargs,
        learning_rate=float(lr) if isinstance(lr, (int, float)) and lr > 0 else None,
        loss=loss if isinstance(loss, str) else None,
    )


def import_pytorch_fnet(
    path: str | os.PathLike,
    *,
    structure: str | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    input_channel: str | int = "brightfield",
    modality: str = "brightfield",
    target_channel: str | int | None = None,
    color: str = "FFFFFF",
    normalization: Normalization | None = None,
) -> tuple[FnetUNet, ModelCard]:
    """Load a pytorch_fnet model as ``(FnetUNet in eval mode, ModelCard)``; save it with
    :func:`~chunked_fnet.model.checkpoint.save_checkpoint`.

    ``structure`` (what the model predicts, e.g. ``"dna"``) and ``voxel_size`` (z, y, x µm of the
    images it was trained on, after any resizing) are not stored by pytorch_fnet and are required;
    without them this raises :class:`CheckpointError` naming what is missing.
    """
    src = read_pytorch_fnet(path)
    missing = [
        name for name, value in (("structure", structure), ("voxel_size", voxel_size)) if value is None
    ]
    if missing:
        raise MissingMetadataError(src, missing)
    versions = current_versions()
    versions["pytorch_fnet_layout"] = src.layout
    if src.nn_class:
        versions["pytorch_fnet_network"] = src.nn_class
    try:
        card = ModelCard(
            structure=structure,
            architecture=src.config,
            voxel_size=voxel_size,
            input=InputSpec(modality=modality, channel=input_channel),
            target_channel=target_channel,
            normalization=normalization or Normalization(),
            color=color,
            training=Provenance(
                dataset=f"imported from pytorch_fnet: {src.path.name}",
                iterations=src.count_iter,
                learning_rate=src.learning_rate,
                loss=src.loss,
                versions=versions,
                created=utc_now(),
            ),
        )
    except pydantic.ValidationError as exc:
        raise CheckpointError(explain(ModelCard, exc, f"{src.path}: cannot describe the imported model")) from None
    return model_from_state_dict(src.config, src.state_dict).eval(), card
