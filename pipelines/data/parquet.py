"""Parquet input of the domain-shift methods: write, validate, read.

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
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.data.bundle import (DOMAINS, FEATURE_COLUMNS, IMAGE_SHAPE_KEY, LABELLED_SPLITS, SPLIT_VALUES, SPLITS,
                                   DataBundle, DataValidationError)

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data


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
                      sizes=dict(info["sizes"]), name=str(path), source=str(Path(path).resolve()),
                      digest=files_digest(info["files"], seed=seed, val_fraction=val_fraction))


def files_digest(files: list[str], **split_args) -> str:
    """A digest of parquet files by identity (path, size, modification time; reading every byte again would cost a
    pass over the data) and of how they are split into train/val (``split_args``)."""
    import hashlib

    h = hashlib.sha256(repr(sorted(split_args.items())).encode())
    for f in sorted(files):
        st = os.stat(f)
        h.update(f"{Path(f).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]
