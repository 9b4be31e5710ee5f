"""Generation quality with nothing downloaded: a Fréchet distance in the feature space of a classifier
that trainlab trains itself, and a spectral error.

The feature classifier (documented and pinned): :class:`trainers.common.models.SmallCNN` (width 16,
feature dim 64, ReLU features of ``fc1``) trained on the REAL training images of the run's data with
their labels (digits: the class; patches: photo × rotation), images in [−1, 1] (G's range), Adam
lr 2e-3, batch 64, :data:`CLASSIFIER_EPOCHS` epochs, seed 0 — independent of the run's seed, so
every run on the same data measures with the same features. It is trained once per data set and
cached under trainlab's cache root (``TRAINLAB_CACHE``, default ``$XDG_CACHE_HOME/trainlab``) keyed by a hash of the images,
labels and these settings. FD = Fréchet distance between Gaussians fitted to the features of
``fd_samples`` generated images and of ALL real training images (``fd``), or of all held-out real
images (``fd_val``). Absolute values are comparable only between runs with the same data set and
sample count; they are not Inception FIDs.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers.common.models import SmallCNN
from trainers.common.paths import cache_root
from trainers.ssd2gan.metrics import average_power_spectrum, gaussian_stats

CLASSIFIER_EPOCHS = 8
CLASSIFIER = {"width": 16, "feature_dim": 64, "lr": 2e-3, "batch": 64, "epochs": CLASSIFIER_EPOCHS, "seed": 0,
              "version": 1}


def cache_dir() -> Path:
    return cache_root()


def _key(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
    h.update(np.ascontiguousarray(y, np.int64).tobytes())
    h.update(repr(sorted(CLASSIFIER.items())).encode())
    return h.hexdigest()[:16]


def _new_classifier(shape: tuple[int, ...], num_classes: int) -> SmallCNN:
    return SmallCNN(shape[0], num_classes, CLASSIFIER["width"], CLASSIFIER["feature_dim"], tuple(shape[1:]))


def feature_classifier(x: np.ndarray, y: np.ndarray) -> tuple[SmallCNN, dict]:
    """The cached feature classifier for real images ``x`` (N, C, H, W) in [−1, 1] with labels ``y``.
    Returns (model in eval mode, info: cache path, train accuracy, whether it was cached)."""
    num_classes = int(y.max()) + 1
    path = cache_dir() / "fd_classifier" / f"{_key(x, y)}.pt"
    model = _new_classifier(tuple(x.shape[1:]), num_classes)
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state"])
        return model.eval(), {"path": str(path), "train_acc": float(blob["train_acc"]), "cached": True}
    g = torch.Generator().manual_seed(CLASSIFIER["seed"])
    torch.manual_seed(CLASSIFIER["seed"])
    model = _new_classifier(tuple(x.shape[1:]), num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=CLASSIFIER["lr"])
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    for _ in range(CLASSIFIER["epochs"]):
        order = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), CLASSIFIER["batch"]):
            idx = order[i:i + CLASSIFIER["batch"]]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state": model.state_dict(), "train_acc": acc}, tmp)
    tmp.replace(path)  # atomic: concurrent runs never read half a file
    return model, {"path": str(path), "train_acc": acc, "cached": False}


@torch.no_grad()
def features(model: SmallCNN, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    """ReLU features of ``fc1`` (the penultimate layer), float64 numpy (N, feature_dim)."""
    model.eval()
    out = [model.fc1(model.pool2(model.conv2(model.pool1(model.conv1(x[i:i + batch]))))).double().cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class QualityReference:
    """Everything the workers need to measure quality, computed once on the driver (``prepare``): the feature
    classifier's weights (``classifier_state``, its input shape and classes, how it was obtained), the feature
    Gaussians of the real train (``mu``, ``sigma``) and held-out (``mu_val``, ``sigma_val``) images, and their
    average power spectra."""

    classifier_state: dict
    classifier_shape: tuple[int, ...]
    num_classes: int
    classifier_info: dict
    mu: np.ndarray
    sigma: np.ndarray
    mu_val: np.ndarray
    sigma_val: np.ndarray
    spectrum_dft: np.ndarray
    spectrum_dct: np.ndarray


def reference(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> QualityReference:
    """The :class:`QualityReference` of real train images ``x_train`` (labels ``y_train``) and held-out ``x_val``."""
    model, info = feature_classifier(x_train, y_train)
    xt, xv = torch.as_tensor(x_train), torch.as_tensor(x_val)
    mu, sigma = gaussian_stats(features(model, xt))
    mu_v, sigma_v = gaussian_stats(features(model, xv))
    return QualityReference(
        classifier_state={k: v.clone() for k, v in model.state_dict().items()},
        classifier_shape=tuple(x_train.shape[1:]), num_classes=int(y_train.max()) + 1, classifier_info=info,
        mu=mu, sigma=sigma, mu_val=mu_v, sigma_val=sigma_v, spectrum_dft=average_power_spectrum(xt, "dft2").numpy(),
        spectrum_dct=average_power_spectrum(xt, "dct2").numpy())


def classifier_from(ref: QualityReference) -> SmallCNN:
    model = _new_classifier(tuple(ref.classifier_shape), ref.num_classes)
    model.load_state_dict(ref.classifier_state)
    return model.eval()
