"""A network that is not chunked_fnet's U-Net, for bioimage.io packages built in tests: a plain stack of
3x3x3 convolutions (zero padding) that takes channel-last input ``(batch, z, y, x, channel)``.

This file is also the package's architecture source, so it imports nothing but torch.
"""

from __future__ import annotations

import torch
from torch import nn


class PlainConvNet(nn.Module):
    """``layers`` 3x3x3 convolutions with ReLU between: an output voxel sees ``layers`` voxels each way."""

    def __init__(self, channels: int = 4, layers: int = 3) -> None:
        super().__init__()
        sizes = [1] + [channels] * (layers - 1) + [1]
        self.convs = nn.ModuleList(nn.Conv3d(a, b, kernel_size=3, padding=1) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 4, 1, 2, 3)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = torch.relu(x)
        return x.permute(0, 2, 3, 4, 1)
