"""One optimisation step of one U-Net, as fast as the device allows without changing what it learns.

What makes a step fast, each measured by ``benchmarks/run.py training speed``:

* bfloat16 autocast where the device computes it natively (CUDA; CPUs with AMX or AVX512-BF16):
  convolutions in bf16, the loss and the optimizer in float32 (the weights stay float32);
* channels-last-3d activations and weights under autocast (oneDNN's and cuDNN's fast layout for
  reduced-precision 3D convolutions; in float32 on this CPU it measured no faster, so fp32 keeps
  the contiguous layout and its numerics);
* Adam's fused kernel (one pass over all parameters instead of one launch per tensor group);
* optionally ``torch.compile`` (off by default: kept only where a measurement shows it faster).

The data side (patches read and z-scored by loader workers while the step runs) lives in the trainer.
"""

from __future__ import annotations

import torch

from chunked_fnet.device import autocast_dtype, bf16_is_native
from chunked_fnet.errors import InputError

__all__ = ["TrainStep", "training_precision"]


def training_precision(precision: str, device: torch.device) -> str:
    """The precision a run trains in: as configured, or for ``auto`` bf16 where it is native, else fp32.

    (Prediction's ``auto`` follows the same rule, on every worker: ``predict/policy.py``;
    ``benchmarks/run.py training bf16-curve`` shows the bf16 loss curve matches fp32's.)
    """
    autocast_dtype(precision, device)  # refuses unknown names with the shared message
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise InputError(f"precision 'fp16' trains only on CUDA devices (with a gradient scaler), not on {device.type}; use bf16 or fp32")
        return precision
    return "bf16" if bf16_is_native(device) else "fp32"


def _fused_adam_supported(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


class TrainStep:
    """``step(x, y) -> loss``: forward, MSE against ``y``, backward and an Adam update of ``model``.

    The model is moved to ``device`` (and to channels-last-3d when autocasting a 3D model) here, so
    the optimizer's state is created in the layout the step uses.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        precision: str,
        *,
        learning_rate: float,
        betas: tuple[float, float],
        compile: bool = False,
    ) -> None:
        self.device = device
        self.precision = precision
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        dims = getattr(getattr(model, "config", None), "dims", 3)
        self.channels_last = self.autocast is not None and dims == 3
        self.model = model.to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=learning_rate, betas=betas, fused=_fused_adam_supported(device) or None
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast == torch.float16)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one patch shape all run long: let cuDNN pick its fastest kernels once
        self.forward = torch.compile(self.model) if compile else self.model

    def describe(self) -> dict[str, object]:
        return {
            "precision": self.precision,
            "memory_format": "channels_last_3d" if self.channels_last else "contiguous",
            "optimizer": "Adam (fused)" if self.optimizer.defaults.get("fused") else "Adam",
            "compile": self.forward is not self.model,
        }

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last_3d) if self.channels_last and t.ndim == 5 else t

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self.to_device(x), y.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            loss = torch.nn.functional.mse_loss(self.forward(x).float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def match_layouts(self) -> None:
        """After loading an optimizer state (saved contiguous), give each state tensor its parameter's
        layout, so element-wise updates run on matching strides exactly as before the save."""
        for param in self.model.parameters():
            state = self.optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
