"""The networks the ``mixture_sparsity`` method trains and prunes (spec §6).

Both models expose the same small interface that :mod:`trainers.mixture_sparsity.pruning` relies on:

* ``layer_names``: the prunable Linear/Conv2d layers in forward order (``conv0``, ``conv1``, ..., ``fc0``,
  ``fc1``, ...); a config refers to a layer group by these names. The last name is the output layer.
* ``activation(x)``: the hidden activation (applied after every layer except the output layer).
* ``flatten_after``: the conv layer whose (pooled) output is flattened into ``fc0`` (None for the MLP);
  ``flat_positions``: spatial positions per channel at that point (1 for the MLP).
* ``input_index`` / ``flat_index``: optional index buffers (None in a freshly built model) that a pruned
  model uses to drop deleted input features / channels, and single deleted flattened features.

Convs use no padding and pooling has no padding, so a constant channel stays a constant map and the constant
can be folded into the next layer's bias exactly when the channel is deleted. No BatchNorm.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS = ("sigmoid", "relu")
POOLS = ("max", "avg")


def _check_act(act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"act: unknown activation {act!r}; allowed values: {', '.join(ACTIVATIONS)}")


def _activation(act: str, x: Tensor) -> Tensor:
    return torch.sigmoid(x) if act == "sigmoid" else torch.relu(x)


class SigmoidMLP(nn.Module):
    """DNN acoustic-model-style MLP (NPL 1): Linear → act per hidden layer, then a Linear output (logits).

    Layers ``fc0`` .. ``fc{len(hidden)}``; ``fc{len(hidden)}`` is the output layer. Input (B, in_features)
    (anything else is flattened from dim 1)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, act: str = "sigmoid"):
        super().__init__()
        _check_act(act)
        widths = [int(in_features), *[int(h) for h in hidden], int(num_classes)]
        if any(w < 1 for w in widths):
            raise ValueError(f"SigmoidMLP: in_features, hidden and num_classes must be >= 1, got {widths}")
        self.act = act
        self.in_features = int(in_features)
        self.layer_names = tuple(f"fc{i}" for i in range(len(widths) - 1))
        for name, n_in, n_out in zip(self.layer_names, widths[:-1], widths[1:]):
            setattr(self, name, nn.Linear(n_in, n_out))
        self.flatten_after: str | None = None
        self.flat_positions = 1
        self.register_buffer("input_index", None)
        self.register_buffer("flat_index", None)

    def activation(self, x: Tensor) -> Tensor:
        return _activation(self.act, x)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if self.input_index is not None:
            x = x.index_select(1, self.input_index)
        last = len(self.layer_names) - 1
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i < last:
                x = self.activation(x)
        return x


class SmallPrunableCNN(nn.Module):
    """(Conv2d(k, no padding) → act → pool 2) × len(channels) → flatten → (Linear → act) × len(fc_hidden)
    → Linear.

    Layers ``conv0``.. and ``fc0``..; the last ``fc`` is the output layer. Input (B, in_channels, H, W)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (8, 16),
                 image_hw: tuple[int, int] = (16, 16), kernel_size: int = 3, fc_hidden: Sequence[int] = (),
                 act: str = "relu", pool: str = "max"):
        super().__init__()
        _check_act(act)
        if pool not in POOLS:
            raise ValueError(f"pool: unknown pooling {pool!r}; allowed values: {', '.join(POOLS)}")
        if not channels:
            raise ValueError("channels: SmallPrunableCNN needs at least one conv layer")
        self.act = act
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        h, w = int(image_hw[0]), int(image_hw[1])
        names = []
        c_prev = int(in_channels)
        for i, c in enumerate(channels):
            setattr(self, f"conv{i}", nn.Conv2d(c_prev, int(c), kernel_size))
            names.append(f"conv{i}")
            h, w = (h - kernel_size + 1) // 2, (w - kernel_size + 1) // 2
            if h < 1 or w < 1:
                raise ValueError(f"image_hw: {tuple(image_hw)} is too small for {len(channels)} conv blocks "
                                 f"with kernel_size={kernel_size} and pooling 2")
            c_prev = int(c)
        self.n_conv = len(channels)
        self.flatten_after = names[-1]
        self.flat_positions = h * w
        widths = [c_prev * h * w, *[int(f) for f in fc_hidden], int(num_classes)]
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            setattr(self, f"fc{i}", nn.Linear(n_in, n_out))
            names.append(f"fc{i}")
        self.layer_names = tuple(names)
        self.register_buffer("input_index", None)
        self.register_buffer("flat_index", None)

    def activation(self, x: Tensor) -> Tensor:
        return _activation(self.act, x)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_index is not None:
            x = x.index_select(1, self.input_index)
        for i in range(self.n_conv):
            x = self.pool(self.activation(getattr(self, f"conv{i}")(x)))
        x = x.flatten(1)
        if self.flat_index is not None:
            x = x.index_select(1, self.flat_index)
        fc_names = self.layer_names[self.n_conv:]
        for i, name in enumerate(fc_names):
            x = getattr(self, name)(x)
            if i < len(fc_names) - 1:
                x = self.activation(x)
        return x
