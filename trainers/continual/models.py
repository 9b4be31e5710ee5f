"""A small VGG-style reference network for ``continual`` (spec §6) on 8×8 / 16×16 single-channel digits.

Layers ``conv1`` … ``conv5`` (3×3, padding 1, ReLU) and ``dense6``, ``dense7``, ``dense8`` (the shared output layer of
width max C_t; task t reads its first C_t logits). With :func:`trainers.continual.groups.layer_groups`' default depth
mapping, conv_i → group "conv{i}" and dense6–8 → "dense", i.e. the VGG16 block groups of Fig. 5 / Fig. 8.

Layout: conv1 → pool 2 → conv2 → pool 2 → conv3 → conv4 → conv5 → adaptive avg-pool 2×2 → flatten → dense6 → dense7
→ dense8. 16×16 input: conv3–5 run at 4×4; 8×8 input: at 2×2. No BatchNorm (the repo's convention: per-worker
batch statistics would make data-parallel training differ from single-process training).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ContinualCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (8, 16, 16, 32, 32),
                 dense: Sequence[int] = (64, 64), image_hw: tuple[int, int] = (16, 16)):
        super().__init__()
        if len(widths) != 5 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths: need 5 positive conv widths (conv1..conv5), got {list(widths)}")
        if len(dense) != 2 or any(int(d) < 1 for d in dense):
            raise ValueError(f"dense: need 2 positive hidden widths (dense6, dense7), got {list(dense)}")
        if int(num_classes) < 1 or int(in_channels) < 1:
            raise ValueError(f"in_channels, num_classes: must be >= 1, got {in_channels}, {num_classes}")
        if min(int(image_hw[0]), int(image_hw[1])) < 4:
            raise ValueError(f"image_hw: need at least 4×4 inputs (two 2× poolings), got {tuple(image_hw)}")
        c = [int(in_channels), *[int(w) for w in widths]]
        for i in range(5):
            setattr(self, f"conv{i + 1}", nn.Conv2d(c[i], c[i + 1], 3, padding=1))
        self.pool = nn.MaxPool2d(2)
        self.head_pool = nn.AdaptiveAvgPool2d((2, 2))
        self.dense6 = nn.Linear(c[5] * 4, int(dense[0]))
        self.dense7 = nn.Linear(int(dense[0]), int(dense[1]))
        self.dense8 = nn.Linear(int(dense[1]), int(num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        x = torch.relu(self.conv5(x))
        x = self.head_pool(x).flatten(1)
        x = torch.relu(self.dense6(x))
        x = torch.relu(self.dense7(x))
        return self.dense8(x)
