"""Embedded data: sklearn digits, source half clean, target half shifted."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from pipelines.data.bundle import SHIFT_OPS, SPLITS

_DEFAULT_SHIFT = ("thicken", "rotate", "noise")
_ROTATE_MAX_DEG = 25.0
_NOISE_SIGMA = 0.15


def _check_embedded_args(seed: Any, image_size: Any, shift: Any, val_fraction: Any) -> tuple[str, ...]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: {seed!r} is not allowed; allowed: an integer >= 0")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 64:
        raise ValueError(f"image_size: {image_size!r} is not allowed; allowed: an integer in [8, 64]")
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.floating))
            or not (0.0 < float(val_fraction) <= 0.45)):
        raise ValueError(f"val_fraction: {val_fraction!r} is not allowed; allowed: a number in (0, 0.45]")
    if isinstance(shift, str):
        shift = (shift,)
    try:
        shift = tuple(shift)
    except TypeError:
        raise ValueError(f"shift: {shift!r} is not a sequence of ops; allowed ops: {', '.join(SHIFT_OPS)}") from None
    bad = [s for s in shift if s not in SHIFT_OPS]
    if bad:
        raise ValueError(f"shift: unknown op(s) {', '.join(map(repr, bad))}; allowed: {', '.join(SHIFT_OPS)}")
    return shift


def digits_split_indices(seed: int = 0, val_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Indices into ``sklearn.datasets.load_digits()`` for each split (the embedded benchmark).

    A seeded stratified permutation: every class's samples are permuted and cut in two disjoint
    halves, source (first ``n_c // 2``) and target (the rest). Source: ``round(val_fraction*n)``
    per class (at least 1) -> ``source_val``, the rest -> ``source_train``. Target: as many to
    ``target_val`` and as many again to ``target_test``, the rest -> ``target_train``. Each split
    is then shuffled (classes mixed). ``val_fraction`` in (0, 0.45].
    """
    _check_embedded_args(seed, 16, (), val_fraction)
    from sklearn.datasets import load_digits

    y = load_digits().target
    rng = np.random.default_rng(seed).spawn(2)[0]  # stream 0: the split; stream 1: the shift
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SPLITS}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        src, tgt = idx[: len(idx) // 2], idx[len(idx) // 2:]
        nv = max(1, round(val_fraction * len(src)))
        parts["source_val"].append(src[:nv])
        parts["source_train"].append(src[nv:])
        nt = max(1, round(val_fraction * len(tgt)))
        parts["target_val"].append(tgt[:nt])
        parts["target_test"].append(tgt[nt:2 * nt])
        parts["target_train"].append(tgt[2 * nt:])
    return {k: rng.permutation(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


def digits_images(image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 ``(N, 1, S, S)`` in [0, 1] (bilinear upsampling) and int64 labels."""
    _check_embedded_args(0, image_size, (), 0.2)
    from scipy import ndimage
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = d.images.astype(np.float64) / 16.0
    if image_size != 8:
        imgs = ndimage.zoom(imgs, (1, image_size / 8, image_size / 8), order=1)
    imgs = np.clip(imgs, 0.0, 1.0).astype(np.float32)
    assert imgs.shape[1:] == (image_size, image_size), imgs.shape
    return imgs[:, None], d.target.astype(np.int64)


def apply_shift(x: np.ndarray, shift: Iterable[str], rng: np.random.Generator) -> np.ndarray:
    """Apply the shift ops to images ``x`` (N, 1, S, S) in [0, 1], in order; returns float32 in [0, 1].

    * ``thicken``: grey dilation (``scipy.ndimage.grey_dilation``) with a k x k window,
      k = max(2, round(2 * S / 16)) — 2x2 at 16 px, scaled with the image size. Strokes get thicker.
    * ``rotate``: each image rotated by its own angle, uniform in [-25°, +25°]
      (``scipy.ndimage.rotate``, ``reshape=False``, ``order=1``, zero fill).
    * ``noise``: additive Gaussian noise, σ = 0.15, then clipped to [0, 1].
    * ``invert``: 1 - x (white digits on black become black on white).
    * ``blur``: ``scipy.ndimage.gaussian_filter`` with σ = 1 px at 16 px (σ = S / 16).

    Random ops draw from ``rng`` in order, so a seeded generator gives bit-identical output.
    """
    from scipy import ndimage

    shift = _check_embedded_args(0, 16, shift, 0.2)
    imgs = np.asarray(x, dtype=np.float64)[:, 0]
    s = imgs.shape[-1]
    for op in shift:
        if op == "thicken":
            k = max(2, round(2 * s / 16))
            imgs = ndimage.grey_dilation(imgs, size=(1, k, k))
        elif op == "rotate":
            angles = rng.uniform(-_ROTATE_MAX_DEG, _ROTATE_MAX_DEG, size=len(imgs))
            imgs = np.stack([ndimage.rotate(im, a, reshape=False, order=1, mode="constant", cval=0.0)
                             for im, a in zip(imgs, angles)]) if len(imgs) else imgs
        elif op == "noise":
            imgs = imgs + rng.normal(0.0, _NOISE_SIGMA, size=imgs.shape)
        elif op == "invert":
            imgs = 1.0 - imgs
        elif op == "blur":
            imgs = ndimage.gaussian_filter(imgs, sigma=(0, s / 16, s / 16))
        imgs = np.clip(imgs, 0.0, 1.0)
    return imgs[:, None].astype(np.float32)


def embedded_digits_shift(seed: int = 0, image_size: int = 16,
                          shift: tuple[str, ...] = _DEFAULT_SHIFT,
                          val_fraction: float = 0.2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The embedded domain-shift benchmark as numpy arrays: ``{split: (x, y)}`` for every split.

    ``x``: float32 ``(N, 1, image_size, image_size)`` in [0, 1]; ``y``: int64 class 0..9, and -1
    for every ``target_train`` row (unlabelled). Source splits are clean digits; the target splits
    are the other, disjoint half of the digits passed through ``shift`` (:func:`apply_shift`).
    Which digits go where: :func:`digits_split_indices`. Same ``seed`` -> bit-identical arrays.

    Args (validated, ``ValueError`` naming the field): ``seed`` >= 0; ``image_size`` in [8, 64];
    ``shift`` ops from :data:`SHIFT_OPS`, applied in order (may be empty: no shift);
    ``val_fraction`` in (0, 0.45].
    """
    shift = _check_embedded_args(seed, image_size, shift, val_fraction)
    x_all, y_all = digits_images(image_size)
    idx = digits_split_indices(seed, val_fraction)
    shift_rng = np.random.default_rng(seed).spawn(2)[1]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k in SPLITS:
        x = x_all[idx[k]]
        if k.startswith("target"):
            x = apply_shift(x, shift, shift_rng)
        y = np.full(len(x), -1, np.int64) if k == "target_train" else y_all[idx[k]].copy()
        out[k] = (np.ascontiguousarray(x, dtype=np.float32), y)
    return out


def embedded_name(shift: Iterable[str]) -> str:
    shift = tuple(shift)
    return f"digits-shift({'+'.join(shift) if shift else 'none'})"
