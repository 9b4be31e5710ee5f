"""Embedded image sets for generative models (no domain shift): digits and natural-image patches."""
from __future__ import annotations

import numpy as np

from pipelines.data.arrow import to_datasets
from pipelines.data.bundle import DataBundle
from pipelines.data.digits import digits_images
from pipelines.data.parquet import read_parquet

IMAGE_SETS = ("digits", "patches")
GAN_SPLITS = ("source_train", "source_val")


def natural_patches(image_size: int = 16, n: int = 2400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grey-level patches of the two photographs scikit-learn ships (``china.jpg``, ``flower.jpg``).

    Each patch: a random ``2·image_size`` square crop, averaged 2×2 down to ``image_size`` (so it keeps
    real high-frequency texture without aliasing), rotated by k·90°, scaled to [0, 1]. Label =
    4·(photo index) + k: 8 classes, which the Fréchet-distance feature classifier learns to tell
    apart. float32 ``(n, 1, S, S)``, int64 labels; deterministic in ``seed``."""
    if image_size < 8 or image_size > 64:
        raise ValueError(f"image_size: {image_size}; allowed: 8..64 for the patches")
    from sklearn.datasets import load_sample_images

    photos = [im.astype(np.float64).mean(axis=2) / 255.0 for im in load_sample_images().images]
    rng = np.random.default_rng(seed)
    big = 2 * image_size
    xs = np.empty((n, 1, image_size, image_size), np.float32)
    ys = np.empty(n, np.int64)
    for i in range(n):
        p, k = int(rng.integers(len(photos))), int(rng.integers(4))
        img = photos[p]
        r, c = int(rng.integers(img.shape[0] - big + 1)), int(rng.integers(img.shape[1] - big + 1))
        crop = img[r:r + big, c:c + big].reshape(image_size, 2, image_size, 2).mean(axis=(1, 3))
        xs[i, 0] = np.rot90(crop, k)
        ys[i] = 4 * p + k
    return xs, ys


def embedded_images(name: str = "digits", image_size: int = 16, seed: int = 0,
                    val_fraction: float = 0.2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"source_train": (x, y), "source_val": (x, y)}``: all 1797 digits upsampled to ``image_size``
    (:func:`digits_images`) or :func:`natural_patches`, split stratified by label with ``seed``."""
    if name not in IMAGE_SETS:
        raise ValueError(f"data.source: {name!r}; allowed: {', '.join(IMAGE_SETS)} or a parquet file/dir")
    from sklearn.model_selection import train_test_split

    x, y = digits_images(image_size) if name == "digits" else natural_patches(image_size, seed=seed)
    tr, va = train_test_split(np.arange(len(x)), test_size=val_fraction, stratify=y, random_state=seed)
    return {"source_train": (x[tr], y[tr]), "source_val": (x[va], y[va])}


def build_images(cfg) -> DataBundle:
    """Registry hook for generative methods: real images in ``source_train`` (train) and
    ``source_val`` (held out), labelled (the labels train only the evaluation feature classifier).
    Embedded ``digits`` / ``patches``, or a parquet file/dir (its labelled source rows)."""
    d = cfg.data
    if d.source in IMAGE_SETS:
        return to_datasets(embedded_images(d.source, d.image_size, cfg.seed, d.val_fraction),
                           f"embedded-{d.source}-{d.image_size}px", splits=GAN_SPLITS)
    return read_parquet(str(d.source), tuple(d.image_shape) if d.image_shape else None, seed=cfg.seed,
                        val_fraction=d.val_fraction)
