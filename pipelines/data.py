"""The data layer: labelled source domain + unlabelled target domain, as Ray Datasets.

Every method that trains under domain shift gets one :class:`DataBundle`: five Ray Datasets
(:data:`SPLITS`) whose rows are ``{"x": float32 array of input_shape, "y": int64}``. The
``target_train`` split is the *unlabelled* data: its rows hold only ``"x"`` — no label ever
reaches training code for it. ``target_val`` / ``target_test`` are labelled and used only for
evaluation.

Two sources
-----------
``"embedded"`` (the default, nothing is downloaded): scikit-learn's bundled 8x8 digits (1797
images), scaled to [0, 1], upsampled to ``image_size`` px and split by a seeded, stratified
permutation into two *disjoint* halves. The source half is clean digits; the target half is the
same kind of digits passed through a seeded shift (see :func:`apply_shift` for every op and its
parameter). See :func:`embedded_digits_shift`.

A parquet file, or a directory of ``*.parquet`` files (searched recursively; names starting with
``.`` or ``_`` are skipped), with this schema:

================  ===================================================================================
column            meaning
================  ===================================================================================
``image``         ``list<float>`` (any numeric list type), one image flattened C*H*W row-major. Its
                  shape comes from the caller (``image_shape=[C, H, W]``, config
                  ``data.image_shape``) or from the file's key-value metadata
                  ``trainlab.image_shape`` = JSON list, e.g. ``[1, 16, 16]``.
``features``      ``list<float>``, a fixed-length feature vector (input_shape = ``(D,)``).
                  Exactly one of ``image`` / ``features``.
``label``         integer, >= 0, nullable: null = unlabelled. ``num_classes`` = max label + 1.
``domain``        string, ``"source"`` (labelled) or ``"target"`` (the shifted domain).
``split``         string, ``"train"``, ``"val"`` or ``"test"``; optional (column absent or null).
================  ===================================================================================

How rows map to splits:

* ``source`` rows must all be labelled. ``split`` train -> ``source_train``, val -> ``source_val``
  (``test`` is not allowed for source rows). Without a split value a row goes to ``source_val``
  with probability ``val_fraction``, else ``source_train``.
* ``target`` rows with ``split`` = train, and unlabelled target rows without a split value, go to
  ``target_train``; their labels are dropped even if present. ``split`` val/test rows must be
  labelled. Labelled target rows without a split value go to ``target_val`` or ``target_test``
  with probability 1/2 each.
* The "seeded shuffle" for rows without a split value is a seeded hash of the row's values
  (:func:`split_uniform`), so the assignment is reproducible for a given ``seed``, independent of
  file order, of how Ray Data partitions the read, and of the number of workers; identical rows
  always land in the same split (no leakage of duplicates between train and val).

:func:`validate_parquet` streams the files with pyarrow (record batches, so a file need not fit
in memory) and raises :class:`DataValidationError` with one message naming the file and the
column before any worker starts. :func:`read_parquet` then reads with ``ray.data.read_parquet``.
:func:`write_parquet` writes the embedded arrays in this schema (an example file to copy).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data

SPLITS = ("source_train", "source_val", "target_train", "target_val", "target_test")
SHIFT_OPS = ("thicken", "rotate", "noise", "invert", "blur")
LABELLED_SPLITS = ("source_train", "source_val", "target_val", "target_test")
IMAGE_SHAPE_KEY = b"trainlab.image_shape"
FEATURE_COLUMNS = ("image", "features")
DOMAINS = ("source", "target")
SPLIT_VALUES = ("train", "val", "test")

_DEFAULT_SHIFT = ("thicken", "rotate", "noise")
_ROTATE_MAX_DEG = 25.0
_NOISE_SIGMA = 0.15


class DataValidationError(ValueError):
    """A data file or data argument is unusable. One message naming the file and the column."""


@dataclass(frozen=True)
class DataBundle:
    """What every method's trainer receives: Ray Datasets per split plus the facts about them."""

    datasets: dict[str, "ray.data.Dataset"]  # keys = SPLITS; target_train rows have only "x"
    input_shape: tuple[int, ...]              # (C, H, W) for images, (D,) for feature vectors
    num_classes: int
    sizes: dict[str, int]                     # rows per split
    name: str                                 # MLflow `dataset` tag


# =============================================================================================
# Embedded data: sklearn digits, source half clean, target half shifted
# =============================================================================================

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


# =============================================================================================
# numpy arrays -> Ray Datasets
# =============================================================================================

def _tensor_table(x: np.ndarray, y: np.ndarray | None) -> "pa.Table":
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    cols = {"x": ArrowTensorArray.from_numpy(np.ascontiguousarray(x, dtype=np.float32).copy())}
    if y is not None:
        cols["y"] = pa.array(np.asarray(y, dtype=np.int64))
    return pa.table(cols)


def dataset_from_tables(tables: list) -> "ray.data.Dataset":
    """A materialised Ray Dataset of arrow tables already in this process. ``ray.data.from_blocks`` computes each
    block's metadata here; ``from_arrow`` sends one remote task per call for it, and the first task of a new job
    waits for a worker process to start: 0.2 s instead of 3.3 s for five small datasets on a 2-core machine."""
    import ray.data

    return ray.data.from_blocks(tables)


def _dataset_from_numpy(x: np.ndarray, y: np.ndarray | None, rows_per_block: int = 256) -> "ray.data.Dataset":
    """A materialised Ray Dataset with a tensor column ``x`` (and ``y``), in a few arrow blocks."""
    n = len(x)
    nblocks = max(1, min(16, math.ceil(n / rows_per_block)))
    bounds = np.linspace(0, n, nblocks + 1).astype(int)
    tables = [_tensor_table(x[a:b], None if y is None else y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return dataset_from_tables(tables)


def to_datasets(arrays: dict[str, tuple[np.ndarray, np.ndarray]], name: str,
                splits: tuple[str, ...] = SPLITS) -> DataBundle:
    """Ray Datasets for ``{split: (x, y)}`` arrays (e.g. :func:`embedded_digits_shift`).

    Built with ``ray.data.from_blocks`` from tensor-column arrow tables (no per-row Python).
    ``target_train`` gets only the ``x`` column: its labels are never passed on.
    ``num_classes`` = max label over the labelled splits + 1. ``splits``: the splits expected
    (a method that needs fewer, e.g. a GAN's ``source_train``/``source_val``, passes those).
    """
    missing = [k for k in splits if k not in arrays]
    extra = [k for k in arrays if k not in splits]
    if missing or extra:
        raise ValueError(f"arrays: splits must be exactly {', '.join(splits)}; "
                         f"missing: {missing or 'none'}, unknown: {extra or 'none'}")
    shapes = set()
    for k in splits:
        x, y = arrays[k]
        if x.ndim < 2 or len(x) != len(y):
            raise ValueError(f"arrays[{k!r}]: x must be (N, *input_shape) with N == len(y); "
                             f"got x {x.shape}, y {np.shape(y)}")
        shapes.add(tuple(int(s) for s in x.shape[1:]))
        if k != "target_train" and len(y) and np.min(y) < 0:
            raise ValueError(f"arrays[{k!r}]: labels must be >= 0 in a labelled split")
    if len(shapes) != 1:
        raise ValueError(f"arrays: every split must have the same input shape; got {sorted(shapes)}")
    labelled = [np.asarray(arrays[k][1]) for k in splits if k != "target_train" and len(arrays[k][1])]
    num_classes = int(max(int(y.max()) for y in labelled)) + 1 if labelled else 0
    datasets = {k: _dataset_from_numpy(arrays[k][0], None if k == "target_train" else arrays[k][1])
                for k in splits}
    return DataBundle(datasets=datasets, input_shape=shapes.pop(), num_classes=num_classes,
                      sizes={k: int(len(arrays[k][0])) for k in splits}, name=name)


# =============================================================================================
# Parquet: write, validate, read
# =============================================================================================

def write_parquet(arrays: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> None:
    """Write ``{split: (x, y)}`` arrays as one parquet file in the documented schema.

    ``x`` of shape (N, D) -> ``features``; (N, C, H, W) (or any rank >= 3) -> ``image`` flattened
    row-major, with the shape stored in the key-value metadata ``trainlab.image_shape``. Labels < 0
    and all ``target_train`` labels are written as null. ``domain`` / ``split`` come from the
    split name (``target_val`` -> ``target`` / ``val``). Parent directories are created.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = [k for k in arrays if k not in SPLITS]
    if extra:
        raise ValueError(f"arrays: unknown split(s) {extra}; allowed: {', '.join(SPLITS)}")
    keys = [k for k in SPLITS if k in arrays]
    if not keys:
        raise ValueError(f"arrays: nothing to write; give some of {', '.join(SPLITS)}")
    shapes = {tuple(arrays[k][0].shape[1:]) for k in keys}
    if len(shapes) != 1:
        raise ValueError(f"arrays: every split must have the same input shape; got {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) == 0:
        raise ValueError("arrays: x must be (N, D) or (N, C, H, W)")
    d = int(np.prod(shape))
    xs, labels, domains, splits = [], [], [], []
    for k in keys:
        x, y = arrays[k]
        dom, spl = k.split("_")
        n = len(x)
        xs.append(np.asarray(x, dtype=np.float32).reshape(n, d))
        y = np.asarray(y, dtype=np.int64)
        valid = (y >= 0) if k != "target_train" else np.zeros(n, bool)
        labels.append(pa.array(y, mask=~valid, type=pa.int64()))
        domains += [dom] * n
        splits += [spl] * n
    flat = np.concatenate(xs).reshape(-1)
    total = sum(len(a) for a in xs)
    list_cls, off_t = (pa.ListArray, np.int32) if flat.size < 2**31 else (pa.LargeListArray, np.int64)
    col = list_cls.from_arrays(pa.array(np.arange(total + 1, dtype=off_t) * d), pa.array(flat))
    name = "features" if len(shape) == 1 else "image"
    table = pa.table({name: col, "label": pa.concat_arrays(labels),
                      "domain": pa.array(domains, pa.string()), "split": pa.array(splits, pa.string())})
    if name == "image":
        table = table.replace_schema_metadata({IMAGE_SHAPE_KEY: json.dumps([int(s) for s in shape]).encode()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def parquet_files(path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"{path}: path does not exist (expected a parquet file or a directory "
                                  "of *.parquet files)")
    if p.is_file():
        return [str(p)]
    files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() == ".parquet"
                   and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
    if not files:
        raise DataValidationError(f"{path}: directory holds no *.parquet files")
    return files


def _open_parquet(f: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        raise DataValidationError(f"{f}: not a parquet file ({e})") from None


def _is_numeric_list(t: "pa.DataType") -> bool:
    import pyarrow as pa

    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return False
    v = t.value_type
    return pa.types.is_integer(v) or pa.types.is_floating(v)


def _is_string(t: "pa.DataType") -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or is_view(t)


def _as_array(a) -> "pa.Array":
    import pyarrow as pa

    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks() if a.num_chunks != 1 else a.chunk(0)
    if pa.types.is_dictionary(a.type):
        a = a.dictionary_decode()
    return a


def _list_lengths(col: "pa.Array") -> np.ndarray:
    """Per-row list length, -1 for a null row."""
    import pyarrow.compute as pc

    return np.asarray(pc.list_value_length(col).fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _feature_matrix(col: "pa.Array", d: int) -> np.ndarray:
    """(n, d) float32 from a numeric list column whose rows all have length d (nulls inside -> NaN)."""
    col = _as_array(col)
    vals = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(vals, dtype=np.float32).reshape(len(col), d)


def split_uniform(x: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random number in [0, 1) per row of ``x`` (n, d) float32, from the row's values.

    Used to split rows that carry no ``split`` value: row i goes to val when ``u[i] < fraction``.
    Deterministic in (row values, seed) only — not in file order or Ray's partitioning.
    """
    n, d = x.shape
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    w = np.random.default_rng([int(seed), 0x5EED]).integers(1, 2**63, size=d, dtype=np.uint64) | np.uint64(1)
    h = np.zeros(n, np.uint64)
    step = max(1, 2**20 // max(d, 1))
    with np.errstate(over="ignore"):
        for a in range(0, n, step):
            h[a:a + step] = (bits[a:a + step].astype(np.uint64) * w).sum(axis=1, dtype=np.uint64)
        h ^= np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        # splitmix64 finaliser
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def _eq(col, value: str) -> np.ndarray:
    """Boolean numpy mask ``col == value`` (null -> False) for a string column, vectorised in Arrow."""
    import pyarrow.compute as pc

    return np.asarray(pc.equal(_as_array(col), value).fill_null(False).to_numpy(zero_copy_only=False), bool)


def _is_null(col) -> np.ndarray:
    return np.asarray(_as_array(col).is_null().to_numpy(zero_copy_only=False), bool)


def _assign_splits(x: np.ndarray, labelled: np.ndarray, is_source: np.ndarray, is_target: np.ndarray,
                   split_col, seed: int, val_fraction: float) -> np.ndarray:
    """Split code per row: index into SPLITS, or -1 for a row no split may take (validation rejects it).

    ``split_col``: the arrow ``split`` column, or None when the file has none.
    """
    n = len(x)
    code = np.full(n, -1, np.int8)
    if split_col is None:
        none = np.ones(n, bool)
        tr = va = te = np.zeros(n, bool)
    else:
        none = _is_null(split_col)
        tr, va, te = (_eq(split_col, v) for v in SPLIT_VALUES)
    u = np.full(n, 2.0)
    if none.any():
        u[none] = split_uniform(x[none], seed)
    src_val_draw = u < val_fraction
    tgt_val_draw = u < 0.5
    src = is_source & labelled
    code[src & (tr | (none & ~src_val_draw))] = SPLITS.index("source_train")
    code[src & (va | (none & src_val_draw))] = SPLITS.index("source_val")
    code[is_target & (tr | (none & ~labelled))] = SPLITS.index("target_train")
    code[is_target & labelled & (va | (none & tgt_val_draw))] = SPLITS.index("target_val")
    code[is_target & labelled & (te | (none & ~tgt_val_draw))] = SPLITS.index("target_test")
    return code


def _bad_values(col, allowed: tuple[str, ...], allow_null: bool) -> list[str]:
    """Distinct values of a string column outside ``allowed`` (null counts when not ``allow_null``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    a = _as_array(col)
    ok = pc.is_in(a, value_set=pa.array(allowed, a.type)).fill_null(False)
    if allow_null:
        ok = pc.or_(ok, a.is_null())
    bad = pc.unique(a.filter(pc.invert(ok)))
    return [repr(v) for v in bad.to_pylist()[:20]]


def _check_image_shape(image_shape: Any, where: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in image_shape)
        ok = len(shape) >= 1 and all(s >= 1 for s in shape) and all(float(s) == int(s) for s in image_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataValidationError(f"{where}: image_shape {image_shape!r} is not allowed; allowed: a list of "
                                  "positive integers, e.g. [1, 16, 16] (C, H, W)")
    return shape


def _batch_rows(pf) -> int:
    """Rows per record batch so one batch of the feature column stays around 32 MB."""
    md = pf.metadata
    if md.num_rows == 0 or md.num_row_groups == 0:
        return 4096
    per_row = max(1.0, sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups)) / md.num_rows)
    return int(min(65536, max(64, 32 * 2**20 // per_row)))


def validate_parquet(path: str, image_shape: tuple[int, ...] | None = None, *,
                     seed: int = 0, val_fraction: float = 0.2, labelled_target: bool = False) -> dict:
    """Check a parquet file / directory against the schema (module docstring), streaming with pyarrow.

    Raises :class:`DataValidationError` with one message naming the file and the column. Returns::

        {"path", "files", "num_rows",
         "column": "image" | "features", "feature_length": D, "input_shape": (C, H, W) | (D,),
         "num_classes", "classes": sorted labels of the labelled splits,
         "has_split_column": bool,
         "rows": {(domain, split or None, labelled: bool): count},
         "sizes": {split: rows}}  # what read_parquet gives each of SPLITS for this seed/val_fraction

    ``seed`` / ``val_fraction`` (in (0, 0.45]) only matter for rows without a split value.
    ``labelled_target=True`` (``shift_explainer``): every target row must be labelled and none may have
    split 'train' (target_train is then empty and unused); the labelled target rows are domain 2.
    """
    import pyarrow as pa

    if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction <= 0.45):
        raise ValueError(f"val_fraction: {val_fraction!r} is not allowed; allowed: a number in (0, 0.45]")
    files = parquet_files(path)
    caller_shape = _check_image_shape(image_shape, "image_shape") if image_shape is not None else None
    column = None
    has_split = None
    d = None
    input_shape = None
    rows: dict[tuple, int] = {}
    sizes = dict.fromkeys(SPLITS, 0)
    classes: set[int] = set()
    source_classes: set[int] = set()

    for f in files:
        pf = _open_parquet(f)
        schema = pf.schema_arrow
        names = set(schema.names)
        feats = [c for c in FEATURE_COLUMNS if c in names]
        if not feats:
            raise DataValidationError(f"{f}: column 'image' or 'features' is missing (exactly one of them "
                                      f"holds the inputs; found columns: {', '.join(schema.names) or 'none'})")
        if len(feats) == 2:
            raise DataValidationError(f"{f}: columns 'image' and 'features' are both present; allowed: "
                                      "exactly one of them")
        col = feats[0]
        if column is not None and col != column:
            raise DataValidationError(f"{f}: column '{col}' but earlier files use '{column}'; allowed: the same "
                                      "input column in every file")
        column = col
        for c in ("label", "domain"):
            if c not in names:
                raise DataValidationError(f"{f}: column '{c}' is missing (required columns: "
                                          f"'{col}', 'label', 'domain'; optional: 'split')")
        t = schema.field(col).type
        if not _is_numeric_list(t):
            raise DataValidationError(f"{f}: column '{col}' has type {t}; allowed: a list of numbers "
                                      "(list<float>, one flattened input per row)")
        lt = schema.field("label").type
        if not pa.types.is_integer(lt):
            raise DataValidationError(f"{f}: column 'label' has type {lt}; allowed: an integer type "
                                      "(nullable, null = unlabelled)")
        for c in ("domain", "split"):
            if c in names and not _is_string(schema.field(c).type):
                raise DataValidationError(f"{f}: column '{c}' has type {schema.field(c).type}; allowed: string")
        f_has_split = "split" in names
        if has_split is not None and f_has_split != has_split:
            raise DataValidationError(f"{f}: column 'split' is {'present' if f_has_split else 'absent'} but "
                                      f"{'absent' if f_has_split else 'present'} in earlier files; allowed: the "
                                      "same columns in every file")
        has_split = f_has_split

        if col == "image" and input_shape is None:
            if caller_shape is not None:
                input_shape = caller_shape
            else:
                md = schema.metadata or {}
                if IMAGE_SHAPE_KEY not in md:
                    raise DataValidationError(
                        f"{f}: column 'image' needs an image shape: pass image_shape=[C, H, W] (config "
                        f"data.image_shape) or store it in the file's key-value metadata "
                        f"'{IMAGE_SHAPE_KEY.decode()}' as a JSON list")
                try:
                    meta_shape = json.loads(md[IMAGE_SHAPE_KEY].decode())
                except (ValueError, UnicodeDecodeError):
                    meta_shape = md[IMAGE_SHAPE_KEY]
                input_shape = _check_image_shape(meta_shape, f"{f}: column 'image': metadata "
                                                             f"'{IMAGE_SHAPE_KEY.decode()}'")

        cols = [col, "label", "domain"] + (["split"] if has_split else [])
        nonfinite = neg = null_src = unlab_eval = src_test = 0
        bad_dom: set = set()
        bad_split: set = set()
        try:
            batches = pf.iter_batches(batch_size=_batch_rows(pf), columns=cols)
            for b in batches:
                n = b.num_rows
                if n == 0:
                    continue
                fc = _as_array(b.column(col))
                lens = _list_lengths(fc)
                if (lens < 0).any():
                    raise DataValidationError(f"{f}: column '{col}': {int((lens < 0).sum())} rows are null; "
                                              "allowed: a list of numbers in every row")
                if d is None:
                    d = int(lens[0])
                    if d == 0:
                        raise DataValidationError(f"{f}: column '{col}': empty lists; allowed: length >= 1")
                    if col == "image" and int(np.prod(input_shape)) != d:
                        raise DataValidationError(
                            f"{f}: column 'image' has {d} values per row but image_shape {list(input_shape)} "
                            f"needs {int(np.prod(input_shape))}; allowed: length == C*H*W")
                    if col == "features":
                        input_shape = (d,)
                wrong = lens != d
                if wrong.any():
                    seen = sorted({d, *map(int, np.unique(lens[wrong])[:5])})
                    raise DataValidationError(
                        f"{f}: column '{col}': inconsistent list lengths between rows ({int(wrong.sum())} "
                        f"rows differ from the first row's {d}; lengths seen: {seen}); allowed: one fixed length")
                x = _feature_matrix(fc, d)
                nonfinite += int((~np.isfinite(x).all(axis=1)).sum())

                lab = _as_array(b.column("label"))
                labelled = np.asarray(lab.is_valid().to_numpy(zero_copy_only=False), bool)
                lv = np.asarray(lab.fill_null(0).to_numpy(zero_copy_only=False)).astype(np.int64)
                neg += int((labelled & (lv < 0)).sum())

                dom = b.column("domain")
                is_src, is_tgt = _eq(dom, "source"), _eq(dom, "target")
                if not (is_src | is_tgt).all():
                    bad_dom.update(_bad_values(dom, DOMAINS, allow_null=False))
                null_src += int((is_src & ~labelled).sum())
                spl = b.column("split") if has_split else None
                if spl is not None:
                    bad_split.update(_bad_values(spl, SPLIT_VALUES, allow_null=True))
                    s_none = _is_null(spl)
                    s_is = {v: _eq(spl, v) for v in SPLIT_VALUES}
                    src_test += int((is_src & s_is["test"]).sum())
                    unlab_eval += int((is_tgt & ~labelled & (s_is["val"] | s_is["test"])).sum())
                else:
                    s_none, s_is = np.ones(n, bool), {v: np.zeros(n, bool) for v in SPLIT_VALUES}
                if nonfinite or neg or bad_dom or bad_split or null_src or src_test or unlab_eval:
                    continue  # an error will be raised after this file; keep counting
                codes = _assign_splits(x, labelled, is_src, is_tgt, spl, seed, val_fraction)
                for k, name in enumerate(SPLITS):
                    m = codes == k
                    sizes[name] += int(m.sum())
                    if name in LABELLED_SPLITS and m.any():
                        u = set(map(int, np.unique(lv[m])))
                        classes |= u
                        if name.startswith("source"):
                            source_classes |= u
                for dm, dmask in (("source", is_src), ("target", is_tgt)):
                    for sp, smask in ((None, s_none), *s_is.items()):
                        for lb, lmask in ((True, labelled), (False, ~labelled)):
                            c = int((dmask & smask & lmask).sum())
                            if c:
                                rows[(dm, sp, lb)] = rows.get((dm, sp, lb), 0) + c
        except DataValidationError:
            raise
        except (pa.ArrowException, OSError) as e:
            raise DataValidationError(f"{f}: could not read columns {cols} ({type(e).__name__}: {e})") from None

        if nonfinite:
            raise DataValidationError(f"{f}: column '{col}': {nonfinite} rows contain NaN, Inf or null values; "
                                      "allowed: finite numbers only")
        if neg:
            raise DataValidationError(f"{f}: column 'label': {neg} rows have negative labels; allowed: "
                                      "integers >= 0, or null for unlabelled rows")
        if bad_dom:
            raise DataValidationError(f"{f}: column 'domain' has values {', '.join(sorted(bad_dom))}; allowed: "
                                      "'source', 'target'")
        if bad_split:
            raise DataValidationError(f"{f}: column 'split' has values {', '.join(sorted(bad_split))}; allowed: "
                                      "'train', 'val', 'test' (or null)")
        if null_src:
            raise DataValidationError(f"{f}: column 'label': {null_src} source rows are unlabelled (null); "
                                      "allowed: every 'source' row has a label")
        if src_test:
            raise DataValidationError(f"{f}: column 'split': {src_test} source rows have split 'test'; allowed "
                                      "for source rows: 'train', 'val' (test data comes from the target domain)")
        if unlab_eval:
            raise DataValidationError(f"{f}: column 'label': {unlab_eval} target rows with split 'val'/'test' "
                                      "are unlabelled (null); allowed: evaluation rows have a label")

    where = path
    n_src = sum(c for (dm, _, _), c in rows.items() if dm == "source")
    n_tgt = sum(c for (dm, _, _), c in rows.items() if dm == "target")
    if n_src == 0:
        raise DataValidationError(f"{where}: column 'domain': no 'source' rows; training needs labelled "
                                  "source rows")
    if n_tgt == 0:
        raise DataValidationError(f"{where}: column 'domain': no 'target' rows; allowed: at least one "
                                  "unlabelled and two labelled target rows")
    if labelled_target:
        unlab = sum(c for (dm, _, lb), c in rows.items() if dm == "target" and not lb)
        if unlab:
            raise DataValidationError(
                f"{where}: column 'label': {unlab} target (domain-2) rows are unlabelled (null); allowed: every "
                "target row labelled — shift_explainer conditions its generator on each sample's classifier loss "
                "ℓ(f(x), y), and a loss needs the true label y")
        tr = sum(c for (dm, sp, _), c in rows.items() if dm == "target" and sp == "train")
        if tr:
            raise DataValidationError(f"{where}: column 'split': {tr} target rows have split 'train'; allowed for "
                                      "target rows here: 'val', 'test' or null (all labelled target rows are domain 2)")
    for name, col_name, why in (
            ("source_train", "split", "no source train rows (training needs them)"),
            ("source_val", "split", "no source val rows (evaluation needs them; add rows with split 'val' "
                                    "or rows without a split value)"),
            *(() if labelled_target else (
                ("target_train", "label", "no unlabelled target rows for target_train (add target rows with a "
                                          "null label, or with split 'train')"),)),
            ("target_val", "label", "no labelled target rows for evaluation in target_val"),
            ("target_test", "label", "no labelled target rows for evaluation in target_test")):
        if sizes[name] == 0:
            raise DataValidationError(f"{where}: column '{col_name}': {why}")
    if len(source_classes) < 2:
        raise DataValidationError(f"{where}: column 'label': fewer than 2 classes in the source rows "
                                  f"(found {sorted(source_classes)}); allowed: at least 2 classes")
    return {
        "path": str(path), "files": files, "num_rows": sum(rows.values()),
        "column": column, "feature_length": d, "input_shape": tuple(input_shape),
        "num_classes": max(classes) + 1, "classes": sorted(classes),
        "has_split_column": bool(has_split), "rows": rows, "sizes": sizes,
    }


def _select_split(batch: "pa.Table", *, split: str, column: str, shape: tuple[int, ...], d: int,
                  has_split: bool, seed: int, val_fraction: float) -> "pa.Table":
    """map_batches body: keep the rows of ``split`` as {"x": tensor (n, *shape), "y": int64}.

    Vectorised: arrow list column -> (n, d) numpy -> mask -> arrow tensor column. Built as an arrow
    table here (rather than returned as numpy) so that an empty selection keeps the tensor type.
    """
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    x = _feature_matrix(batch.column(column), d)
    lab = _as_array(batch.column("label"))
    labelled = np.asarray(lab.is_valid().to_numpy(zero_copy_only=False), bool)
    dom = batch.column("domain")
    spl = batch.column("split") if has_split else None
    codes = _assign_splits(x, labelled, _eq(dom, "source"), _eq(dom, "target"), spl, seed, val_fraction)
    m = codes == SPLITS.index(split)
    cols = {"x": ArrowTensorArray.from_numpy(np.ascontiguousarray(x[m].reshape((int(m.sum()), *shape))))}
    if split != "target_train":
        cols["y"] = pa.array(np.asarray(lab.fill_null(0).to_numpy(zero_copy_only=False)).astype(np.int64)[m])
    return pa.table(cols)


def _ray_read_parquet(files: list[str], columns: list[str]) -> "ray.data.Dataset":
    """``ray.data.read_parquet`` of exactly the validated files and columns.

    Ray 2.60's default (DataSourceV2) parquet reader provisions a pool of footer-reading actors
    (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``, 32 by default) on every execution — seconds of
    process start-up per split on a laptop, for no gain on a few local files. The V1 reader is
    used unless ``TRAINLAB_RAY_PARQUET_V2=1`` (worth trying for thousands of files in cloud storage).
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    old = ctx.use_datasource_v2
    ctx.use_datasource_v2 = os.environ.get("TRAINLAB_RAY_PARQUET_V2", "0") == "1"
    try:
        return ray.data.read_parquet(files, columns=columns, partitioning=None, file_extensions=None)
    finally:
        ctx.use_datasource_v2 = old


def read_parquet(path: str, image_shape: tuple[int, ...] | None = None, seed: int = 0,
                 val_fraction: float = 0.2, labelled_target: bool = False) -> DataBundle:
    """Validate ``path`` (:func:`validate_parquet`), then read it lazily with ``ray.data.read_parquet``.

    Each split is the same read followed by one vectorised ``map_batches`` that keeps that split's
    rows and reshapes them to ``input_shape``; ``sizes`` come from the validation pass.
    """
    info = validate_parquet(path, image_shape, seed=seed, val_fraction=val_fraction, labelled_target=labelled_target)
    cols = [info["column"], "label", "domain"] + (["split"] if info["has_split_column"] else [])
    base = _ray_read_parquet(info["files"], cols)
    datasets = {}
    for split in SPLITS:
        datasets[split] = base.map_batches(
            _select_split, batch_format="pyarrow", zero_copy_batch=True,
            fn_kwargs=dict(split=split, column=info["column"], shape=info["input_shape"],
                           d=info["feature_length"], has_split=info["has_split_column"],
                           seed=seed, val_fraction=val_fraction))
    return DataBundle(datasets=datasets, input_shape=info["input_shape"], num_classes=info["num_classes"],
                      sizes=dict(info["sizes"]), name=str(path))


# =============================================================================================
# Embedded image sets for generative models (no domain shift): digits and natural-image patches
# =============================================================================================

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


# =============================================================================================
# Entry points used by the method registry
# =============================================================================================

_EMBEDDED_KW = ("image_size", "shift", "val_fraction")
_PARQUET_KW = ("image_shape", "val_fraction")


def load_domain_shift(source: str = "embedded", seed: int = 0, **kw) -> DataBundle:
    """``"embedded"`` -> :func:`embedded_digits_shift` + :func:`to_datasets`; else a parquet path.

    Keyword arguments: ``image_size``, ``shift``, ``val_fraction`` (embedded) and ``image_shape``,
    ``val_fraction`` (parquet); those that do not apply to the chosen source are ignored.
    """
    unknown = sorted(set(kw) - set(_EMBEDDED_KW) - set(_PARQUET_KW))
    if unknown:
        raise ValueError(f"load_domain_shift: unknown argument(s) {unknown}; allowed: "
                         f"{', '.join(sorted(set(_EMBEDDED_KW) | set(_PARQUET_KW)))}")
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise ValueError(f"source: {source!r} is not allowed; allowed: \"embedded\" or a parquet file/directory")
    if str(source) == "embedded":
        args = {k: v for k, v in kw.items() if k in _EMBEDDED_KW and v is not None}
        arrays = embedded_digits_shift(seed=seed, **args)
        shift = _check_embedded_args(seed, 16, args.get("shift", _DEFAULT_SHIFT), 0.2)
        return to_datasets(arrays, embedded_name(shift))
    args = {k: v for k, v in kw.items() if k in _PARQUET_KW and v is not None}
    return read_parquet(str(source), seed=seed, **args)


def build_domain_shift(cfg) -> DataBundle:
    """Registry hook: a validated config with ``seed`` and a ``data`` section -> :class:`DataBundle`."""
    d = cfg.data
    return load_domain_shift(d.source, seed=cfg.seed, image_size=d.image_size, shift=tuple(d.shift),
                             val_fraction=d.val_fraction, image_shape=d.image_shape)


def build_classification(cfg) -> DataBundle:
    """Registry hook for plain supervised methods: the same :class:`DataBundle`, with no domain shift.

    Embedded: the digits at ``data.image_size``, split as in :func:`digits_split_indices` with no
    shift applied, so ``source_train`` trains, ``source_val`` validates and ``target_test`` is a
    held-out test set of clean digits (``target_train`` is unused). Parquet: the same schema and
    rules as :func:`read_parquet` (source rows train/val, labelled target rows test).
    """
    d = cfg.data
    return load_domain_shift(d.source, seed=cfg.seed, image_size=d.image_size, shift=(),
                             val_fraction=d.val_fraction, image_shape=d.image_shape)


# =============================================================================================
# Task streams for continual learning: an ordered sequence of tasks, each with train/eval rows
# =============================================================================================

TASK_STREAMS = ("split", "permuted", "near_duplicate")
TASK_SPLIT_VALUES = ("train", "eval")
_NEAR_DUP_NOISE = 0.03


def _task_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0xC0471, int(stream)])


def _stratified_halves(y: np.ndarray, idx: np.ndarray, rng: np.random.Generator,
                       eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) indices of ``idx``: per class a seeded permutation, round(eval_fraction·n) (>= 1) to eval."""
    tr, ev = [], []
    for c in np.unique(y[idx]):
        members = rng.permutation(idx[y[idx] == c])
        ne = max(1, round(eval_fraction * len(members)))
        ev.append(members[:ne])
        tr.append(members[ne:])
    return np.concatenate(tr), np.concatenate(ev)


def embedded_task_stream(kind: str = "split", num_tasks: int = 5, image_size: int = 16, seed: int = 0,
                         val_fraction: float = 0.2) -> list[dict]:
    """An embedded task stream from the scikit-learn digits: a list (learning order) of
    ``{"name": str, "train": (x, y), "eval": (x, y)}``; x float32 (N, 1, S, S) in [0, 1], y the GLOBAL digit.

    * ``"split"`` (1..5 tasks): task i learns digits {2(i−1), 2i−1} — classes never seen before (split-digits).
    * ``"permuted"`` (1..10 tasks): all 10 digits in every task; task i's pixels go through a fixed seeded
      permutation (task 1: the identity) — permuted-digits. Same images, different input layout.
    * ``"near_duplicate"`` (1..3 tasks): task 1 = digits {0, 1} (one half of their samples); task 2 = the same
      classes, the OTHER half of the samples plus Gaussian noise σ = 0.03 (clipped) — a near duplicate of
      task 1 (small JSD); task 3 = digits {2, 3} inverted (1 − x) — dissimilar (JSD near 1).

    Every task's rows are split per class into train / eval (``val_fraction`` to eval, at least 1 per class)
    with a seeded permutation; the same ``seed`` gives bit-identical arrays."""
    limits = {"split": 5, "permuted": 10, "near_duplicate": 3}
    if kind not in limits:
        raise ValueError(f"data.source: {kind!r}; allowed: {', '.join(TASK_STREAMS)} or a parquet file/dir")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) \
            or not 1 <= num_tasks <= limits[kind]:
        raise ValueError(f"data.num_tasks: {num_tasks!r} is not allowed for the {kind!r} stream; "
                         f"allowed: 1..{limits[kind]}")
    _check_embedded_args(seed, image_size, (), val_fraction)
    x, y = digits_images(image_size)
    rng = _task_rng(seed, 0)
    tasks: list[dict] = []
    if kind == "split":
        for i in range(num_tasks):
            idx = np.flatnonzero(np.isin(y, (2 * i, 2 * i + 1)))
            tr, ev = _stratified_halves(y, idx, rng, val_fraction)
            tasks.append({"name": f"digits{2 * i}{2 * i + 1}", "train": (x[tr], y[tr]), "eval": (x[ev], y[ev])})
    elif kind == "permuted":
        tr, ev = _stratified_halves(y, np.arange(len(y)), rng, val_fraction)
        d = image_size * image_size
        prng = _task_rng(seed, 1)
        for i in range(num_tasks):
            perm = np.arange(d) if i == 0 else prng.permutation(d)

            def permute(a: np.ndarray) -> np.ndarray:
                return np.ascontiguousarray(a.reshape(len(a), d)[:, perm].reshape(a.shape))

            tasks.append({"name": f"permuted{i}", "train": (permute(x[tr]), y[tr]), "eval": (permute(x[ev]), y[ev])})
    else:
        idx01 = rng.permutation(np.flatnonzero(np.isin(y, (0, 1))))
        halves = (np.sort(idx01[: len(idx01) // 2]), np.sort(idx01[len(idx01) // 2:]))
        idx23 = np.flatnonzero(np.isin(y, (2, 3)))
        nrng = _task_rng(seed, 2)
        for i in range(num_tasks):
            idx = halves[0] if i == 0 else halves[1] if i == 1 else idx23
            tr, ev = _stratified_halves(y, idx, rng, val_fraction)
            xt, xe = x[tr], x[ev]
            if i == 1:
                xt = np.clip(xt + nrng.normal(0.0, _NEAR_DUP_NOISE, xt.shape), 0, 1).astype(np.float32)
                xe = np.clip(xe + nrng.normal(0.0, _NEAR_DUP_NOISE, xe.shape), 0, 1).astype(np.float32)
            elif i == 2:
                xt, xe = 1.0 - xt, 1.0 - xe
            name = ("digits01", "digits01-noisy", "digits23-inverted")[i]
            tasks.append({"name": name, "train": (xt, y[tr]), "eval": (xe, y[ev])})
    return tasks


@dataclass(frozen=True)
class TaskStream:
    """What ``continual`` trains on: two Ray Datasets (``datasets["train"]``, ``datasets["eval"]``) whose rows are
    ``{"x": float32 input_shape, "y": int64 global label, "t": int64 task index 1..T}``, rows of all tasks
    interleaved (seeded shuffle) so that Ray Train's equal split gives every worker a share of every task.

    Why two datasets and not one per task: Ray Train gives every dataset it splits its own coordinator actor;
    2·T of them would cost a process each on a small machine. Workers pick a task's rows out of their shard.
    ``sizes`` has "train", "eval" and "task{i}_train" / "task{i}_eval" (global row counts);
    ``num_classes`` = the head width = max over tasks of the task's class count (task t reads its first C_t
    logits; its local label = the index of the global label in ``task_classes[t−1]``, sorted)."""

    datasets: dict[str, "ray.data.Dataset"]
    input_shape: tuple[int, ...]
    num_classes: int
    sizes: dict[str, int]
    name: str
    task_names: tuple[str, ...]
    task_classes: tuple[tuple[int, ...], ...]

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)


def _task_table(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> "pa.Table":
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    return pa.table({"x": ArrowTensorArray.from_numpy(np.ascontiguousarray(x, dtype=np.float32).copy()),
                     "y": pa.array(np.asarray(y, dtype=np.int64)), "t": pa.array(np.asarray(t, dtype=np.int64))})


def _check_task_classes(names, classes_train: list[set], classes_eval: list[set], sizes_tr, sizes_ev,
                        where: str) -> tuple[tuple[int, ...], ...]:
    for i, name in enumerate(names):
        if sizes_tr[i] == 0:
            raise DataValidationError(f"{where}: task {name!r} has no train rows; allowed: every task in "
                                      "data.task_order has train and eval rows")
        if sizes_ev[i] == 0:
            raise DataValidationError(f"{where}: task {name!r} has no eval rows; allowed: every task in "
                                      "data.task_order has train and eval rows")
        unseen = sorted(classes_eval[i] - classes_train[i])
        if unseen:
            raise DataValidationError(f"{where}: column 'label': task {name!r} has eval labels {unseen} that its "
                                      f"train rows never show (train labels: {sorted(classes_train[i])}); "
                                      "allowed: eval labels within the task's train labels")
        if len(classes_train[i]) < 2:
            raise DataValidationError(f"{where}: column 'label': task {name!r} has fewer than 2 classes "
                                      f"({sorted(classes_train[i])}); allowed: at least 2 per task")
    return tuple(tuple(sorted(c)) for c in classes_train)


def task_stream_from_arrays(tasks: list[dict], name: str, seed: int = 0) -> TaskStream:
    """A :class:`TaskStream` from ``[{"name", "train": (x, y), "eval": (x, y)}, ...]`` (learning order)."""

    if not tasks:
        raise DataValidationError(f"{name}: the task stream is empty; allowed: at least one task")
    names = [str(tk["name"]) for tk in tasks]
    if len(set(names)) != len(names):
        raise DataValidationError(f"{name}: task names repeat: {names}")
    shapes = {tuple(int(s) for s in np.shape(tk[k][0])[1:]) for tk in tasks for k in TASK_SPLIT_VALUES}
    if len(shapes) != 1:
        raise DataValidationError(f"{name}: every task must have the same input shape; got {sorted(shapes)}")
    for tk in tasks:
        for k in TASK_SPLIT_VALUES:
            x, y = tk[k]
            if len(x) != len(y):
                raise DataValidationError(f"{name}: task {tk['name']!r} {k}: {len(x)} inputs but {len(y)} labels")
            if len(y) and np.min(y) < 0:
                raise DataValidationError(f"{name}: column 'label': task {tk['name']!r} has negative labels; "
                                          "allowed: integers >= 0")
    classes = _check_task_classes(
        names, [set(map(int, np.unique(tk["train"][1]))) for tk in tasks],
        [set(map(int, np.unique(tk["eval"][1]))) for tk in tasks],
        [len(tk["train"][1]) for tk in tasks], [len(tk["eval"][1]) for tk in tasks], name)
    datasets, sizes = {}, {}
    for s_i, k in enumerate(TASK_SPLIT_VALUES):
        x = np.concatenate([tk[k][0] for tk in tasks]).astype(np.float32, copy=False)
        y = np.concatenate([tk[k][1] for tk in tasks]).astype(np.int64)
        t = np.concatenate([np.full(len(tk[k][1]), i + 1, np.int64) for i, tk in enumerate(tasks)])
        order = _task_rng(seed, 10 + s_i).permutation(len(y))
        x, y, t = x[order], y[order], t[order]
        nblocks = max(1, min(16, math.ceil(len(y) / 256)))
        bounds = np.linspace(0, len(y), nblocks + 1).astype(int)
        datasets[k] = dataset_from_tables([_task_table(x[a:b], y[a:b], t[a:b])
                                           for a, b in zip(bounds[:-1], bounds[1:])])
        sizes[k] = int(len(y))
        for i, tk in enumerate(tasks):
            sizes[f"task{i + 1}_{k}"] = int(len(tk[k][1]))
    return TaskStream(datasets, shapes.pop(), max(len(c) for c in classes), sizes, name, tuple(names), classes)


def _validate_task_parquet(path: str, image_shape, task_order, seed: int, val_fraction: float) -> dict:
    """Stream the files (pyarrow record batches) and check the task-stream schema; return the facts.

    Schema: ``image`` or ``features`` (as :func:`validate_parquet`), ``label`` (integer >= 0, no nulls),
    ``task`` (string or integer, no nulls), optional ``split`` ("train" / "eval"; null or absent: the row goes
    to eval when :func:`split_uniform` of its values < ``val_fraction``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    files = parquet_files(path)
    caller_shape = _check_image_shape(image_shape, "data.image_shape") if image_shape is not None else None
    column = d = input_shape = has_split = None
    counts: dict[tuple[str, str], int] = {}
    labels: dict[tuple[str, str], set] = {}
    for f in files:
        pf = _open_parquet(f)
        schema = pf.schema_arrow
        feats = [c for c in FEATURE_COLUMNS if c in schema.names]
        if len(feats) != 1:
            raise DataValidationError(f"{f}: exactly one of the columns 'image' / 'features' must hold the inputs "
                                      f"(found columns: {', '.join(schema.names) or 'none'})")
        for c in ("label", "task"):
            if c not in schema.names:
                raise DataValidationError(f"{f}: column '{c}' is missing (a task stream needs 'label' and 'task')")
        col = feats[0]
        if not _is_numeric_list(schema.field(col).type):
            raise DataValidationError(f"{f}: column '{col}' has type {schema.field(col).type}; allowed: a list of "
                                      "numbers")
        if not pa.types.is_integer(schema.field("label").type):
            raise DataValidationError(f"{f}: column 'label' has type {schema.field('label').type}; allowed: integer")
        tt = schema.field("task").type
        if not (_is_string(tt) or pa.types.is_integer(tt)):
            raise DataValidationError(f"{f}: column 'task' has type {tt}; allowed: string or integer")
        f_split = "split" in schema.names
        if column is not None and (col != column or f_split != has_split):
            raise DataValidationError(f"{f}: its columns differ from the first file's ({column}, split column: "
                                      f"{has_split}); allowed: one schema for all files")
        column, has_split = col, f_split
        if col == "image":
            meta = (schema.metadata or {}).get(IMAGE_SHAPE_KEY)
            shape = caller_shape or (_check_image_shape(json.loads(meta), f"{f}: metadata trainlab.image_shape")
                                     if meta else None)
            if shape is None:
                raise DataValidationError(f"{f}: column 'image': the image shape is unknown; set data.image_shape "
                                          "(e.g. [1, 16, 16]) or the file metadata trainlab.image_shape")
        else:
            shape = None
        cols = [col, "label", "task"] + (["split"] if f_split else [])
        for b in pf.iter_batches(batch_size=_batch_rows(pf), columns=cols):
            lens = _list_lengths(_as_array(b.column(col)))
            if len(lens) == 0:
                continue
            if lens.min() < 0:
                raise DataValidationError(f"{f}: column '{col}': null rows; allowed: a list of numbers per row")
            if d is None:
                d = int(lens[0])
                input_shape = tuple(shape) if shape is not None else (d,)
                if math.prod(input_shape) != d:
                    raise DataValidationError(f"{f}: column '{col}': rows have {d} values but the image shape "
                                              f"{list(input_shape)} needs {math.prod(input_shape)}")
            if (lens != d).any():
                raise DataValidationError(f"{f}: column '{col}': rows have different lengths "
                                          f"({sorted(set(lens.tolist()))[:5]}); allowed: {d} values each")
            x = _feature_matrix(b.column(col), d)
            if not np.isfinite(x).all():
                raise DataValidationError(f"{f}: column '{col}': NaN, Inf or null values; allowed: finite numbers")
            lab = _as_array(b.column("label"))
            if lab.null_count:
                raise DataValidationError(f"{f}: column 'label': {lab.null_count} null labels; allowed: every row "
                                          "of a task stream is labelled")
            lv = np.asarray(lab.to_numpy(zero_copy_only=False), np.int64)
            if (lv < 0).any():
                raise DataValidationError(f"{f}: column 'label': negative labels; allowed: integers >= 0")
            task = _as_array(b.column("task"))
            if task.null_count:
                raise DataValidationError(f"{f}: column 'task': {task.null_count} null values; allowed: a task id "
                                          "on every row")
            tv = np.asarray(pc.cast(task, pa.string()).to_numpy(zero_copy_only=False), dtype=object)
            codes = _task_split_codes(x, b.column("split") if f_split else None, seed, val_fraction)
            if (codes < 0).any():
                raise DataValidationError(f"{f}: column 'split' has values "
                                          f"{', '.join(_bad_values(b.column('split'), TASK_SPLIT_VALUES, True))}; "
                                          "allowed: 'train', 'eval' (or null)")
            for s_i, s in enumerate(TASK_SPLIT_VALUES):
                m = codes == s_i
                for tname in np.unique(tv[m]):
                    mm = m & (tv == tname)
                    counts[(tname, s)] = counts.get((tname, s), 0) + int(mm.sum())
                    labels.setdefault((tname, s), set()).update(map(int, np.unique(lv[mm])))
    if d is None:
        raise DataValidationError(f"{path}: no rows; allowed: at least one task with train and eval rows")
    present = sorted({t for t, _ in counts})
    if task_order is None:
        order = present
    else:
        order = [str(t) for t in task_order]
        unknown = [t for t in order if t not in present]
        if unknown:
            raise DataValidationError(f"{path}: column 'task': data.task_order names {unknown}, which no row has; "
                                      f"tasks in the data: {present}")
        if len(set(order)) != len(order):
            raise DataValidationError(f"data.task_order: tasks repeat: {order}")
    classes = _check_task_classes(order, [labels.get((t, "train"), set()) for t in order],
                                  [labels.get((t, "eval"), set()) for t in order],
                                  [counts.get((t, "train"), 0) for t in order],
                                  [counts.get((t, "eval"), 0) for t in order], str(path))
    sizes = {s: sum(counts.get((t, s), 0) for t in order) for s in TASK_SPLIT_VALUES}
    for i, t in enumerate(order):
        for s in TASK_SPLIT_VALUES:
            sizes[f"task{i + 1}_{s}"] = counts.get((t, s), 0)
    return {"files": files, "column": column, "feature_length": d, "input_shape": input_shape,
            "has_split": has_split, "order": order, "classes": classes, "sizes": sizes}


def _task_split_codes(x: np.ndarray, split_col, seed: int, val_fraction: float) -> np.ndarray:
    """0 = train, 1 = eval, −1 = an unknown split value."""
    n = len(x)
    code = np.full(n, -1, np.int8)
    none = np.ones(n, bool) if split_col is None else _is_null(split_col)
    if split_col is not None:
        code[_eq(split_col, "train")] = 0
        code[_eq(split_col, "eval")] = 1
    if none.any():
        code[none] = np.where(split_uniform(x[none], seed) < val_fraction, 1, 0)
    return code


def _select_task_rows(batch: "pa.Table", *, split: str, column: str, shape: tuple[int, ...], d: int,
                      has_split: bool, seed: int, val_fraction: float, order: tuple[str, ...]) -> "pa.Table":
    """map_batches body: the rows of ``split`` whose task is in ``order`` as {"x", "y", "t" (1-based index)}."""
    import pyarrow as pa
    import pyarrow.compute as pc

    x = _feature_matrix(batch.column(column), d)
    tv = np.asarray(pc.cast(_as_array(batch.column("task")), pa.string()).to_numpy(zero_copy_only=False), object)
    t = np.zeros(len(tv), np.int64)
    for i, name in enumerate(order):
        t[tv == name] = i + 1
    codes = _task_split_codes(x, batch.column("split") if has_split else None, seed, val_fraction)
    m = (codes == TASK_SPLIT_VALUES.index(split)) & (t > 0)
    y = np.asarray(_as_array(batch.column("label")).to_numpy(zero_copy_only=False), np.int64)
    return _task_table(x[m].reshape((int(m.sum()), *shape)), y[m], t[m])


def read_task_parquet(path: str, image_shape=None, task_order=None, seed: int = 0,
                      val_fraction: float = 0.2) -> TaskStream:
    """A user task stream from parquet (schema: :func:`_validate_task_parquet`), validated on the driver, then
    read with ``ray.data.read_parquet`` + one vectorised ``map_batches`` per split + a seeded
    ``random_shuffle`` (rows of all tasks interleaved; see :class:`TaskStream`). Tasks are learned in
    ``task_order`` (task values as strings; default: sorted); tasks not listed are left out."""
    info = _validate_task_parquet(path, image_shape, task_order, seed, val_fraction)
    cols = [info["column"], "label", "task"] + (["split"] if info["has_split"] else [])
    base = _ray_read_parquet(info["files"], cols)
    datasets = {}
    for split in TASK_SPLIT_VALUES:
        datasets[split] = base.map_batches(
            _select_task_rows, batch_format="pyarrow", zero_copy_batch=True,
            fn_kwargs=dict(split=split, column=info["column"], shape=info["input_shape"], d=info["feature_length"],
                           has_split=info["has_split"], seed=seed, val_fraction=val_fraction,
                           order=tuple(info["order"]))).random_shuffle(seed=seed)
    return TaskStream(datasets, tuple(info["input_shape"]), max(len(c) for c in info["classes"]),
                      dict(info["sizes"]), str(path), tuple(info["order"]), info["classes"])


def write_task_parquet(tasks: list[dict], path: str) -> None:
    """Write an embedded task stream (:func:`embedded_task_stream`) in the task-stream parquet schema:
    ``image`` (flattened, shape in the metadata), ``label``, ``task`` (the task name), ``split``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    xs, ys, ts, ss = [], [], [], []
    for tk in tasks:
        for s in TASK_SPLIT_VALUES:
            x, y = tk[s]
            xs.append(np.asarray(x, np.float32).reshape(len(x), -1))
            ys.append(np.asarray(y, np.int64))
            ts += [str(tk["name"])] * len(y)
            ss += [s] * len(y)
    shape = tuple(int(v) for v in np.shape(tasks[0]["train"][0])[1:])
    flat = np.concatenate(xs)
    d = flat.shape[1]
    col = pa.ListArray.from_arrays(pa.array(np.arange(len(flat) + 1, dtype=np.int32) * d), pa.array(flat.ravel()))
    table = pa.table({"image": col, "label": pa.array(np.concatenate(ys)), "task": pa.array(ts, pa.string()),
                      "split": pa.array(ss, pa.string())})
    table = table.replace_schema_metadata({IMAGE_SHAPE_KEY: json.dumps(list(shape)).encode()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def build_task_stream(cfg) -> TaskStream:
    """Registry hook of ``continual``: ``data.source`` = one of :data:`TASK_STREAMS` (embedded digits,
    :func:`embedded_task_stream`) or a parquet file/dir with a ``task`` column (:func:`read_task_parquet`)."""
    d = cfg.data
    if d.source in TASK_STREAMS:
        tasks = embedded_task_stream(d.source, d.num_tasks, d.image_size, cfg.seed, d.val_fraction)
        return task_stream_from_arrays(tasks, f"digits-{d.source}-{d.num_tasks}tasks-{d.image_size}px", cfg.seed)
    return read_task_parquet(str(d.source), tuple(d.image_shape) if d.image_shape else None,
                             d.task_order, cfg.seed, d.val_fraction)


# =============================================================================================
# Domain pairs for shift_explainer: domain 1 (the classifier's training domain) and domain 2
# (the shifted data it fails on), both labelled — a per-sample classifier loss needs the label
# =============================================================================================

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
                       num_classes=pq.num_classes, sizes={k: pq.sizes[v] for k, v in rename.items()}, name=pq.name)
    # the generator trains on both domains: its splits' sizes (the datasets are made by the method's prepare)
    sizes = {**b.sizes, "gen_train": b.sizes["d1_train"] + b.sizes["d2_train"],
             "gen_val": b.sizes["d1_val"] + b.sizes["d2_val"]}
    return DataBundle(datasets=b.datasets, input_shape=b.input_shape, num_classes=b.num_classes, sizes=sizes,
                      name=b.name)
