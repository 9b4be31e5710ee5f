"""Domain pairs for shift_explainer: domain 1 (the classifier's training domain) and domain 2 (the shifted data it
fails on), both labelled — a per-sample classifier loss needs the label.
"""
from __future__ import annotations

import numpy as np

from pipelines.data.arrow import to_datasets
from pipelines.data.bundle import DataBundle
from pipelines.data.digits import _check_embedded_args, digits_images
from pipelines.data.parquet import read_parquet

SHIFT_PAIR_SPLITS = ("d1_train", "d1_val", "d2_train", "d2_val")
_THIN_CUT = 0.3


def colourise(grey: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, H, W) grey strokes in [0, 1] -> (N, 3, H, W) RGB strokes of one random fully saturated hue per
    image (hue uniform in [0, 1), HSV value = the grey level), and the hues. The max over channels equals the
    grey level, so colour changes nothing but the hue."""
    from matplotlib.colors import hsv_to_rgb

    hue = rng.uniform(0.0, 1.0, size=len(grey))
    rgb = hsv_to_rgb(np.stack([hue, np.ones_like(hue), np.ones_like(hue)], axis=-1)).astype(np.float32)
    return (np.asarray(grey, np.float32) * rgb[:, :, None, None]).astype(np.float32), hue


def embedded_colour_thickness(seed: int = 0, image_size: int = 16, val_fraction: float = 0.2,
                              thickness: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The shift_explainer benchmark with a known cause, from sklearn's digits: ``{split: (x, y)}`` over
    :data:`SHIFT_PAIR_SPLITS`, x float32 (N, 3, S, S) in [0, 1], y int64 0..9.

    The digits are split (stratified, seeded) into two disjoint halves:

    * domain 1 = thin strokes (grey level g -> clip((g − 0.3)/0.7, 0, 1)) in a random hue per image;
    * domain 2 = thick strokes (``scipy.ndimage.grey_dilation`` with a k×k window, k = ``thickness`` at 16 px,
      scaled with the size) in a random hue per image.

    A classifier trained on domain 1 sees every hue, so hue is irrelevant to it; stroke thickness is what
    drops its accuracy on domain 2 (about 0.9 -> 0.6 with the default small CNN, 3 seeds). Each half is split
    into train / val by ``val_fraction``. Same arguments -> bit-identical arrays.
    """
    _check_embedded_args(seed, image_size, (), val_fraction)
    if isinstance(thickness, bool) or not isinstance(thickness, (int, np.integer)) or not 2 <= thickness <= 8:
        raise ValueError(f"thickness: {thickness!r} is not allowed; allowed: an integer in [2, 8]")
    from scipy import ndimage
    from sklearn.model_selection import train_test_split

    x, y = digits_images(image_size)
    rng = np.random.default_rng([int(seed), 0x5417])
    h1, h2 = train_test_split(np.arange(len(x)), test_size=0.5, stratify=y, random_state=seed)
    thin = np.clip((x[h1] - _THIN_CUT) / (1 - _THIN_CUT), 0, 1)
    k = max(2, round(thickness * image_size / 16))
    thick = np.clip(ndimage.grey_dilation(x[h2][:, 0], size=(1, k, k)), 0, 1)[:, None]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for dom, grey, idx in (("d1", thin, h1), ("d2", thick, h2)):
        rgb, _ = colourise(grey, rng)
        tr, va = train_test_split(np.arange(len(idx)), test_size=val_fraction, stratify=y[idx], random_state=seed)
        out[f"{dom}_train"] = (np.ascontiguousarray(rgb[tr]), y[idx][tr].copy())
        out[f"{dom}_val"] = (np.ascontiguousarray(rgb[va]), y[idx][va].copy())
    return out


def build_shift_pair(cfg) -> DataBundle:
    """Registry hook of ``shift_explainer``: a :class:`DataBundle` over :data:`SHIFT_PAIR_SPLITS`, every row
    ``{"x", "y"}`` labelled. ``data.source``: ``"colour_thickness"`` (:func:`embedded_colour_thickness`) or a
    parquet file/dir in the module's schema, where ``source`` rows are domain 1 (train/val as in
    :func:`read_parquet`) and every ``target`` row is domain 2 and must be labelled (``val`` rows -> d2_val,
    ``test`` rows -> d2_train; rows without a split value are spread over both)."""
    d = cfg.data
    if d.source == "colour_thickness":
        b = to_datasets(embedded_colour_thickness(cfg.seed, d.image_size, d.val_fraction, d.thickness),
                        f"digits-colour-thickness(k={d.thickness})-{d.image_size}px", splits=SHIFT_PAIR_SPLITS)
    else:
        pq = read_parquet(str(d.source), tuple(d.image_shape) if d.image_shape else None, seed=cfg.seed,
                          val_fraction=d.val_fraction, labelled_target=True)
        rename = {"d1_train": "source_train", "d1_val": "source_val", "d2_train": "target_test", "d2_val": "target_val"}
        b = DataBundle(datasets={k: pq.datasets[v] for k, v in rename.items()}, input_shape=pq.input_shape,
                       num_classes=pq.num_classes, sizes={k: pq.sizes[v] for k, v in rename.items()}, name=pq.name,
                       source=pq.source, digest=pq.digest)
    # the generator trains on both domains: its splits' sizes (the datasets are made by the method's prepare)
    sizes = {**b.sizes, "gen_train": b.sizes["d1_train"] + b.sizes["d2_train"],
             "gen_val": b.sizes["d1_val"] + b.sizes["d2_val"]}
    return DataBundle(datasets=b.datasets, input_shape=b.input_shape, num_classes=b.num_classes, sizes=sizes,
                      name=b.name, source=b.source, digest=b.digest)
