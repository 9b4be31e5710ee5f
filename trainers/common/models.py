"""Default classifiers for the embedded data, and loading a user's own ``nn.Module``.

Named submodules are the layers a method can hook (``conv1``, ``conv2``, ``fc1``, ``head``); each
block ends in its activation so a hook sees post-activation features. No BatchNorm: per-worker
batch statistics would make data-parallel training differ from single-process training.
"""
from __future__ import annotations

import importlib
import math

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 128,
                 image_hw: tuple[int, int] = (16, 16)):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.pool2 = nn.AdaptiveAvgPool2d((max(1, image_hw[0] // 4), max(1, image_hw[1] // 4)))
        flat = 2 * width * max(1, image_hw[0] // 4) * max(1, image_hw[1] // 4)
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(flat, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc1(self.pool2(self.conv2(self.pool1(self.conv1(x))))))


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, width: int = 256, feature_dim: int = 128):
        super().__init__()
        self.fc0 = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU())
        self.fc1 = nn.Sequential(nn.Linear(width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc1(self.fc0(x)))


def build_classifier(model_cfg, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the configured network; ``model_cfg.factory`` ("pkg.mod:fn") loads the user's own."""
    if model_cfg.factory:
        mod_name, _, fn_name = model_cfg.factory.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"model.factory: cannot load {model_cfg.factory!r} ({e}); "
                             'expected "package.module:function"') from None
        model = fn(tuple(input_shape), num_classes)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model.factory: {model_cfg.factory} returned {type(model).__name__}, not nn.Module")
        return model
    if model_cfg.name == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"model.name: 'cnn' needs image input (C, H, W), got shape {tuple(input_shape)}; "
                             "use model.name=mlp for feature vectors")
        return SmallCNN(input_shape[0], num_classes, model_cfg.width, model_cfg.feature_dim,
                        image_hw=(input_shape[1], input_shape[2]))
    return MLP(math.prod(input_shape), num_classes, max(model_cfg.width, 8), model_cfg.feature_dim)


def check_layers(model: nn.Module, names: list[str], field: str) -> None:
    """Raise ValueError naming the field and the available layer names when one is missing."""
    available = [n for n, _ in model.named_modules() if n]
    for n in names:
        if n not in available:
            top = [a for a in available if "." not in a]
            raise ValueError(f"{field}: no layer named {n!r} in {type(model).__name__}; "
                             f"allowed: {', '.join(top)} (or any dotted submodule name)")


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a data-parallel wrapper (DDP keeps it as ``.module``); the model itself otherwise.
    State dicts are saved and loaded on this, so a checkpoint does not depend on the number of workers."""
    return getattr(model, "module", model)


class FeatureTap:
    """Forward hooks that keep the outputs of named submodules during one forward pass."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        inner = unwrap(model)
        for n in dict.fromkeys(names):
            self._handles.append(inner.get_submodule(n).register_forward_hook(self._hook(n)))

    def _hook(self, name: str):
        def fn(_module, _inp, out):
            self.outputs[name] = out
        return fn

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
