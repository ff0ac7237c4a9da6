"""A network whose output depends on the autocast state, for bioimage.io packages built in tests of the
precision check (predict/precision_check.py): PlainConvNet's layers (its state dict loads), returning
garbage when ``garbage`` and autocast is on (what a wrong bf16 kernel does), and appending each forward
pass's thread name and autocast state to the file named by ``$CHUNKED_FNET_TEST_FORWARDS``, if set.

This file is also the package's architecture source, so it imports nothing but torch and the stdlib.
"""

from __future__ import annotations

import os
import threading

import torch
from torch import nn

FORWARDS = "CHUNKED_FNET_TEST_FORWARDS"


class AutocastNet(nn.Module):
    """``layers`` 3x3x3 convolutions with ReLU between, on channel-last input ``(batch, z, y, x, channel)``."""

    def __init__(self, channels: int = 4, layers: int = 3, garbage: bool = False) -> None:
        super().__init__()
        sizes = [1] + [channels] * (layers - 1) + [1]
        self.convs = nn.ModuleList(nn.Conv3d(a, b, kernel_size=3, padding=1) for a, b in zip(sizes[:-1], sizes[1:]))
        self.garbage = garbage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled(x.device.type)
        log = os.environ.get(FORWARDS)
        if log:
            with open(log, "a") as f:
                f.write(f"{threading.current_thread().name} {'autocast' if autocast else 'fp32'}\n")
        y = x.permute(0, 4, 1, 2, 3)
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if i < len(self.convs) - 1:
                y = torch.relu(y)
        y = y.permute(0, 2, 3, 4, 1)
        if self.garbage and autocast:  # a wrong kernel: values unrelated to the input's structure
            g = torch.Generator(device=x.device).manual_seed(0)
            return torch.rand(y.shape, generator=g, device=x.device, dtype=torch.float32).to(y.dtype) * 10.0
        return y
