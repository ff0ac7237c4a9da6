"""The resumable part of a training run: ``checkpoints/latest`` (model, optimizer, iteration), swapped in whole."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from chunked_fnet.io.atomic import atomic_dir
from chunked_fnet.model import FnetUNet, ModelCard, load_tensors, save_tensors
from chunked_fnet.model.checkpoint import write_checkpoint_files

__all__ = ["load_training_state", "save_training_state"]


def save_training_state(
    run: Path, model: FnetUNet, optimizer: torch.optim.Optimizer, iteration: int, card: ModelCard
) -> None:
    """Model, optimizer and iteration as ``checkpoints/latest``, swapped in whole: a crash keeps the previous one."""
    target = Path(run) / "checkpoints" / "latest"
    target.parent.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value for idx, entry in state["state"].items() for key, value in entry.items() if torch.is_tensor(value)}
    with atomic_dir(target) as tmp:
        write_checkpoint_files(tmp, model, card)
        save_tensors(tmp / "optimizer.safetensors", tensors, {"param_groups": json.dumps(state["param_groups"])})
        (tmp / "state.json").write_text(json.dumps({"iteration": iteration}))


def load_training_state(run: Path, model: FnetUNet, optimizer: torch.optim.Optimizer) -> int:
    """Load ``checkpoints/latest`` into ``model`` and ``optimizer``; returns the iteration it was saved at, 0 where
    there is none yet (a run killed before its first checkpoint starts over from its initial weights)."""
    from chunked_fnet.model import load_checkpoint

    latest = Path(run) / "checkpoints" / "latest"
    if not (latest / "state.json").exists():
        return 0
    loaded, _ = load_checkpoint(latest)
    model.load_state_dict(loaded.state_dict())
    tensors, metadata = load_tensors(latest / "optimizer.safetensors")
    state: dict = {"state": {}, "param_groups": json.loads(metadata["param_groups"])}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state["state"].setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict(state)
    return int(json.loads((latest / "state.json").read_text())["iteration"])
