"""pipelines.data: the embedded domain-shift benchmark, Ray Datasets, and the parquet schema.

Pure numpy / pyarrow tests need no Ray; everything that builds or reads a Ray Dataset uses the
session's ``ray_session`` instance.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from pipelines import data as D
from pipelines.data import SPLITS, DataValidationError

LABELLED = ("source_train", "source_val", "target_val", "target_test")


@pytest.fixture(scope="module")
def arrays():
    return D.embedded_digits_shift(seed=0)


@pytest.fixture(scope="module")
def clean():
    return D.digits_images(16)


def _collect(ds, batch_size=512):
    """All rows of a Ray Dataset as numpy, through iter_torch_batches (what trainers use)."""
    parts: dict[str, list[np.ndarray]] = {}
    for b in ds.iter_torch_batches(batch_size=batch_size):
        for k, v in b.items():
            parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _row_keys(x: np.ndarray) -> list[bytes]:
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    return sorted(r.tobytes() for r in x)


# =============================================================================================
# Embedded data (numpy only)
# =============================================================================================

def test_embedded_sizes_shapes_and_disjoint_halves(arrays, clean):
    assert set(arrays) == set(SPLITS)
    assert sum(len(arrays[k][0]) for k in SPLITS) == 1797
    for k, (x, y) in arrays.items():
        assert x.dtype == np.float32 and x.shape[1:] == (1, 16, 16) and y.dtype == np.int64
        assert len(x) == len(y) and x.min() >= 0.0 and x.max() <= 1.0
    idx = D.digits_split_indices(seed=0)
    allidx = np.concatenate([idx[k] for k in SPLITS])
    assert len(np.unique(allidx)) == 1797 == len(allidx)  # every digit used exactly once
    src = np.concatenate([idx["source_train"], idx["source_val"]])
    tgt = np.concatenate([idx[k] for k in ("target_train", "target_val", "target_test")])
    assert not set(src) & set(tgt)
    x_clean, y_clean = clean
    # the source half is the untouched digits, with their own labels
    for k in ("source_train", "source_val"):
        np.testing.assert_array_equal(arrays[k][0], x_clean[idx[k]])
        np.testing.assert_array_equal(arrays[k][1], y_clean[idx[k]])
    for k in ("target_val", "target_test"):
        np.testing.assert_array_equal(arrays[k][1], y_clean[idx[k]])
    # the halves are balanced: ~half of each class on each side
    assert abs(len(src) - len(tgt)) <= 10
    # val/test fractions: ~0.2 of each half
    assert abs(len(idx["source_val"]) / len(src) - 0.2) < 0.01
    assert abs(len(idx["target_val"]) / len(tgt) - 0.2) < 0.01
    assert len(idx["target_val"]) == len(idx["target_test"])


def test_embedded_same_seed_identical_different_seed_differs():
    a, b, c = (D.embedded_digits_shift(seed=s, image_size=8) for s in (3, 3, 4))
    for k in SPLITS:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_array_equal(a[k][1], b[k][1])
        assert a[k][0].tobytes() == b[k][0].tobytes()
    assert not np.array_equal(a["source_train"][1], c["source_train"][1])
    assert not np.array_equal(a["target_train"][0], c["target_train"][0])


def test_every_class_in_every_labelled_split_and_target_train_unlabelled(arrays):
    for k in LABELLED:
        assert set(np.unique(arrays[k][1])) == set(range(10)), k
    assert (arrays["target_train"][1] == -1).all()


def test_shift_changes_the_distribution(arrays):
    def mean(keys):
        return float(np.mean(np.concatenate([arrays[k][0] for k in keys])))

    def ink(keys):
        return float(np.mean(np.concatenate([arrays[k][0] for k in keys]) > 0.5))

    src, tgt = ("source_train", "source_val"), ("target_train", "target_val", "target_test")
    # thicken + noise add intensity; thicken adds ink area
    assert mean(tgt) - mean(src) > 0.05, (mean(src), mean(tgt))
    assert ink(tgt) - ink(src) > 0.05, (ink(src), ink(tgt))
    # no shift -> the target half is clean digits too (same statistics up to sampling)
    plain = D.embedded_digits_shift(seed=0, shift=())
    pm = float(np.mean(np.concatenate([plain[k][0] for k in tgt])))
    assert abs(pm - mean(src)) < 0.02


@pytest.mark.parametrize("op", ["thicken", "invert", "blur"])
def test_deterministic_shift_ops_match_scipy(op, clean):
    """Known answers computed independently with scipy/numpy on the clean digits."""
    x_clean, _ = clean
    idx = D.digits_split_indices(seed=1)
    got = D.embedded_digits_shift(seed=1, shift=(op,))
    ref = x_clean[idx["target_val"]].astype(np.float64)[:, 0]
    want = {
        "thicken": lambda r: ndimage.grey_dilation(r, size=(1, 2, 2)),
        "invert": lambda r: 1.0 - r,
        "blur": lambda r: ndimage.gaussian_filter(r, sigma=(0, 1, 1)),
    }[op](ref)
    np.testing.assert_allclose(got["target_val"][0][:, 0], np.clip(want, 0, 1), atol=1e-6)


def test_thicken_window_scales_with_image_size():
    x32, _ = D.digits_images(32)
    idx = D.digits_split_indices(seed=0)
    got = D.embedded_digits_shift(seed=0, image_size=32, shift=("thicken",))["target_test"][0][:, 0]
    want = ndimage.grey_dilation(x32[idx["target_test"], 0], size=(1, 4, 4))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_noise_has_sigma_0_15_and_rotation_keeps_ink(clean):
    x_clean, _ = clean
    idx = D.digits_split_indices(seed=2)
    ref = x_clean[idx["target_train"]]
    noisy = D.embedded_digits_shift(seed=2, shift=("noise",))["target_train"][0]
    mid = (ref > 0.35) & (ref < 0.65)  # far enough from 0/1 that clipping is rare (> 2.3 sigma)
    d = (noisy - ref)[mid]
    assert abs(d.mean()) < 0.01 and abs(d.std() - 0.15) < 0.01, (d.mean(), d.std())
    rot = D.embedded_digits_shift(seed=2, shift=("rotate",))["target_train"][0]
    assert np.abs(rot - ref).mean() > 0.03  # images really moved
    # bilinear rotation by <= 25 degrees keeps most of the ink of a centred digit
    ratio = rot.sum(axis=(1, 2, 3)) / ref.sum(axis=(1, 2, 3))
    assert 0.8 < np.median(ratio) < 1.05


@pytest.mark.parametrize("kwargs, field, allowed", [
    ({"image_size": 7}, "image_size", "[8, 64]"),
    ({"image_size": 65}, "image_size", "[8, 64]"),
    ({"image_size": 16.0}, "image_size", "[8, 64]"),
    ({"val_fraction": 0.0}, "val_fraction", "(0, 0.45]"),
    ({"val_fraction": 0.5}, "val_fraction", "(0, 0.45]"),
    ({"shift": ("thicken", "zoom")}, "shift", "thicken, rotate, noise, invert, blur"),
    ({"seed": -1}, "seed", ">= 0"),
])
def test_embedded_bad_arguments(kwargs, field, allowed):
    with pytest.raises(ValueError) as e:
        D.embedded_digits_shift(**kwargs)
    assert str(e.value).startswith(f"{field}:") and allowed in str(e.value)


# =============================================================================================
# Parquet: write + validate (pyarrow only)
# =============================================================================================

def test_write_then_validate_reports_sizes(arrays, tmp_path):
    p = tmp_path / "digits.parquet"
    D.write_parquet(arrays, str(p))
    meta = pq.read_schema(p).metadata
    assert json.loads(meta[b"trainlab.image_shape"]) == [1, 16, 16]
    t = pq.read_table(p)
    assert t.column("label").null_count == len(arrays["target_train"][0])
    info = D.validate_parquet(str(p))
    assert info["sizes"] == {k: len(arrays[k][0]) for k in SPLITS}
    assert info["input_shape"] == (1, 16, 16) and info["feature_length"] == 256
    assert info["num_classes"] == 10 and info["has_split_column"] and info["column"] == "image"
    assert info["rows"][("target", "train", False)] == len(arrays["target_train"][0])
    # caller's image_shape overrides the metadata when it is consistent with the row length
    assert D.validate_parquet(str(p), image_shape=(4, 8, 8))["input_shape"] == (4, 8, 8)


def _feature_table(n=400, d=6, seed=0, with_split=False):
    """A features-only domain-shift table: source labelled, target half unlabelled."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32)
    dom = np.where(np.arange(n) % 2 == 0, "source", "target")
    unl = (dom == "target") & (np.arange(n) % 4 == 1)  # half of the target rows unlabelled
    cols = {
        "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d),
        "label": pa.array(y, mask=unl, type=pa.int32()),
        "domain": pa.array(dom),
    }
    if with_split:
        i = np.arange(n)
        split = np.where(dom == "source", np.where(i % 10 == 0, "val", "train"),
                         np.where(unl, "train", np.where((i // 4) % 2 == 0, "val", "test")))
        cols["split"] = pa.array(split)
    return pa.table(cols), x, y, dom, unl


def test_no_split_column_gets_a_seeded_split(tmp_path):
    t, x, y, dom, unl = _feature_table()
    p = tmp_path / "nosplit.parquet"
    pq.write_table(t, p, row_group_size=64)  # several record batches
    a = D.validate_parquet(str(p), seed=0)
    b = D.validate_parquet(str(p), seed=0)
    c = D.validate_parquet(str(p), seed=1)
    assert a["sizes"] == b["sizes"] and not a["has_split_column"]
    assert a["input_shape"] == (6,) and a["column"] == "features" and a["num_classes"] == 3
    n_src, n_unl = int((dom == "source").sum()), int(unl.sum())
    n_lab_tgt = int(((dom == "target") & ~unl).sum())
    assert a["sizes"]["source_train"] + a["sizes"]["source_val"] == n_src
    assert a["sizes"]["target_train"] == n_unl
    assert a["sizes"]["target_val"] + a["sizes"]["target_test"] == n_lab_tgt
    assert abs(a["sizes"]["source_val"] / n_src - 0.2) < 0.08
    assert abs(a["sizes"]["target_val"] / n_lab_tgt - 0.5) < 0.15
    # the assignment is per-row and seeded: another seed moves rows
    u0, u1 = D.split_uniform(x, 0), D.split_uniform(x, 1)
    assert np.array_equal(u0, D.split_uniform(x, 0)) and not np.array_equal(u0 < 0.2, u1 < 0.2)
    assert ((u0 >= 0) & (u0 < 1)).all()
    # ... and does not depend on which rows share a batch
    np.testing.assert_array_equal(u0[100:150], D.split_uniform(x[100:150], 0))
    assert c["sizes"]["source_val"] + c["sizes"]["source_train"] == n_src


# ---------------------------------------------------------------------------------------------
# Malformed files: one clear message naming the file and the column
# ---------------------------------------------------------------------------------------------

def _good_columns() -> dict:
    """8 rows that pass validation: image 1x2x2, two source classes, every split present."""
    x = np.arange(32, dtype=np.float32).reshape(8, 4) / 32
    return {
        "image": pa.array(list(x), pa.list_(pa.float32())),
        "label": pa.array([0, 1, 0, 1, None, None, 0, 1], pa.int64()),
        "domain": pa.array(["source"] * 4 + ["target"] * 4),
        "split": pa.array(["train", "train", "val", "val", "train", "train", "val", "test"]),
    }


SHAPE_META = {b"trainlab.image_shape": b"[1, 2, 2]"}


def _set(col, i, v, typ=None):
    vals = col.to_pylist()
    vals[i] = v
    return pa.array(vals, typ or col.type)


def _mutate(name):
    """name -> (columns, metadata) of a malformed table."""
    c, meta = _good_columns(), dict(SHAPE_META)
    if name == "no_input_column":
        del c["image"]
    elif name == "both_input_columns":
        c["features"] = c["image"]
    elif name == "no_label":
        del c["label"]
    elif name == "no_domain":
        del c["domain"]
    elif name == "label_float":
        c["label"] = pa.array([0.0, 1.0, 0.0, 1.0, None, None, 0.0, 1.0], pa.float64())
    elif name == "image_strings":
        c["image"] = pa.array([["a", "b", "c", "d"]] * 8, pa.list_(pa.string()))
    elif name == "image_scalar":
        c["image"] = pa.array(np.arange(8, dtype=np.float32))
    elif name == "nan_values":
        x = np.ones((8, 4), np.float32)
        x[1, 2], x[3, 0], x[5, 3] = np.nan, np.inf, -np.inf
        c["image"] = pa.array(list(x), pa.list_(pa.float32()))
    elif name == "ragged_lists":
        c["image"] = _set(c["image"], 6, [0.1] * 5)
    elif name == "null_image_row":
        c["image"] = _set(c["image"], 2, None)
    elif name == "shape_mismatch":
        meta = {b"trainlab.image_shape": b"[1, 3, 3]"}
    elif name == "no_image_shape":
        meta = {}
    elif name == "negative_label":
        c["label"] = _set(c["label"], 1, -3)
    elif name == "bad_domain":
        c["domain"] = _set(c["domain"], 5, "tgt")
    elif name == "domain_not_string":
        c["domain"] = pa.array([0] * 4 + [1] * 4)
    elif name == "bad_split":
        c["split"] = _set(c["split"], 0, "validation")
    elif name == "source_split_test":
        c["split"] = _set(c["split"], 2, "test")
    elif name == "unlabelled_source":
        c["label"] = _set(c["label"], 0, None)
    elif name == "unlabelled_target_eval":
        c["label"] = _set(c["label"], 7, None)
    elif name == "no_source_train":
        c["split"] = pa.array(["val"] * 4 + ["train", "train", "val", "test"])
    elif name == "no_target_rows":
        c["domain"] = pa.array(["source"] * 8)
        c["label"] = pa.array([0, 1, 0, 1, 0, 1, 0, 1])
        c["split"] = pa.array(["train", "train", "val", "val"] * 2)
    elif name == "no_labelled_target":
        c["split"] = pa.array(["train", "train", "val", "val", "train", "train", "train", "train"])
    elif name == "one_class":
        c["label"] = pa.array([0, 0, 0, 0, None, None, 0, 0], pa.int64())
    else:  # pragma: no cover
        raise KeyError(name)
    return c, meta


MALFORMED = [
    # (case, substrings the message must contain besides the file name)
    ("no_input_column", ["'image' or 'features'", "missing"]),
    ("both_input_columns", ["'image' and 'features'", "exactly one"]),
    ("no_label", ["column 'label'", "missing"]),
    ("no_domain", ["column 'domain'", "missing"]),
    ("label_float", ["column 'label'", "double", "integer"]),
    ("image_strings", ["column 'image'", "list of numbers"]),
    ("image_scalar", ["column 'image'", "list of numbers"]),
    ("nan_values", ["column 'image'", "3 rows", "NaN"]),
    ("ragged_lists", ["column 'image'", "inconsistent list lengths", "[4, 5]"]),
    ("null_image_row", ["column 'image'", "1 rows are null"]),
    ("shape_mismatch", ["column 'image'", "[1, 3, 3]", "needs 9"]),
    ("no_image_shape", ["column 'image'", "image_shape", "trainlab.image_shape"]),
    ("negative_label", ["column 'label'", "1 rows have negative labels"]),
    ("bad_domain", ["column 'domain'", "'tgt'", "'source', 'target'"]),
    ("domain_not_string", ["column 'domain'", "string"]),
    ("bad_split", ["column 'split'", "'validation'", "'train', 'val', 'test'"]),
    ("source_split_test", ["column 'split'", "source rows have split 'test'"]),
    ("unlabelled_source", ["column 'label'", "1 source rows are unlabelled"]),
    ("unlabelled_target_eval", ["column 'label'", "are unlabelled"]),
    ("no_source_train", ["column 'split'", "no source train rows"]),
    ("no_target_rows", ["column 'domain'", "no 'target' rows"]),
    ("no_labelled_target", ["column 'label'", "no labelled target rows"]),
    ("one_class", ["column 'label'", "fewer than 2 classes"]),
]


def test_the_good_table_passes(tmp_path):
    p = tmp_path / "good.parquet"
    pq.write_table(pa.table(_good_columns()).replace_schema_metadata(SHAPE_META), p)
    info = D.validate_parquet(str(p))
    assert info["sizes"] == {"source_train": 2, "source_val": 2, "target_train": 2, "target_val": 1,
                             "target_test": 1}
    assert info["input_shape"] == (1, 2, 2) and info["num_classes"] == 2


@pytest.mark.parametrize("case, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_parquet(case, expected, tmp_path):
    cols, meta = _mutate(case)
    p = tmp_path / f"{case}.parquet"
    pq.write_table(pa.table(cols).replace_schema_metadata(meta or None), p)
    with pytest.raises(DataValidationError) as e:
        D.validate_parquet(str(p))
    msg = str(e.value)
    assert f"{case}.parquet" in msg, msg
    for s in expected:
        assert s in msg, f"{s!r} not in {msg!r}"
    assert "\n" not in msg


@pytest.mark.parametrize("case, expected", [
    ("missing", ["missing.parquet", "does not exist"]),
    ("not_parquet", ["not_parquet.parquet", "not a parquet file"]),
    ("empty_dir", ["empty_dir", "no *.parquet files"]),
    ("bad_image_shape_arg", ["image_shape", "positive integers"]),
])
def test_unreadable_paths(case, expected, tmp_path):
    kw = {}
    if case == "missing":
        p = tmp_path / "missing.parquet"
    elif case == "not_parquet":
        p = tmp_path / "not_parquet.parquet"
        p.write_text("label,domain\n1,source\n")
    elif case == "empty_dir":
        p = tmp_path / "empty_dir"
        p.mkdir()
        (p / "notes.txt").write_text("no data here")
    else:
        p = tmp_path / "good.parquet"
        pq.write_table(pa.table(_good_columns()).replace_schema_metadata(SHAPE_META), p)
        kw = {"image_shape": (1, 0, 4)}
    with pytest.raises(DataValidationError) as e:
        D.validate_parquet(str(p), **kw)
    for s in expected:
        assert s in str(e.value), str(e.value)


def test_bad_file_in_a_directory_is_named(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    pq.write_table(pa.table(_good_columns()).replace_schema_metadata(SHAPE_META), d / "part-0.parquet")
    cols, meta = _mutate("nan_values")
    pq.write_table(pa.table(cols).replace_schema_metadata(meta), d / "part-1.parquet")
    with pytest.raises(DataValidationError, match=r"part-1\.parquet: column 'image': 3 rows"):
        D.validate_parquet(str(d))


# =============================================================================================
# Ray Datasets (local Ray)
# =============================================================================================

def test_to_datasets_batches(arrays, ray_session):
    b = D.to_datasets(arrays, "digits-test")
    assert b.input_shape == (1, 16, 16) and b.num_classes == 10 and b.name == "digits-test"
    assert b.sizes == {k: len(arrays[k][0]) for k in SPLITS}
    assert set(b.datasets) == set(SPLITS)
    first = next(iter(b.datasets["source_train"].iter_torch_batches(batch_size=32)))
    import torch

    assert first["x"].dtype == torch.float32 and tuple(first["x"].shape) == (32, 1, 16, 16)
    assert first["y"].dtype == torch.int64 and tuple(first["y"].shape) == (32,)
    for k in SPLITS:
        got = _collect(b.datasets[k])
        assert len(got["x"]) == b.sizes[k] == b.datasets[k].count()
        if k == "target_train":
            assert set(got) == {"x"}
            assert b.datasets[k].schema().names == ["x"]
        else:
            assert set(got) == {"x", "y"}
            np.testing.assert_array_equal(np.sort(got["y"]), np.sort(arrays[k][1]))
        assert _row_keys(got["x"]) == _row_keys(arrays[k][0])


def test_to_datasets_rejects_missing_splits(arrays):
    with pytest.raises(ValueError, match="missing"):
        D.to_datasets({k: v for k, v in arrays.items() if k != "target_test"}, "x")


def test_parquet_round_trip(arrays, tmp_path, ray_session):
    p = tmp_path / "rt" / "digits.parquet"
    D.write_parquet(arrays, str(p))
    b = D.read_parquet(str(p))
    assert b.sizes == {k: len(arrays[k][0]) for k in SPLITS}
    assert b.input_shape == (1, 16, 16) and b.num_classes == 10 and b.name == str(p)
    for k in SPLITS:
        got = _collect(b.datasets[k], batch_size=200)
        assert got["x"].shape == (b.sizes[k], 1, 16, 16) and got["x"].dtype == np.float32
        if k == "target_train":
            assert "y" not in got
        else:
            assert got["y"].dtype == np.int64
            np.testing.assert_array_equal(np.sort(got["y"]), np.sort(arrays[k][1]))
            # each image keeps its own label (duplicate digits may share pixels, so compare sets)
            want = {(r.tobytes(), int(lab)) for r, lab in zip(arrays[k][0], arrays[k][1])}
            assert {(r.tobytes(), int(lab)) for r, lab in zip(got["x"], got["y"])} == want
        assert _row_keys(got["x"]) == _row_keys(arrays[k][0])


def test_features_file_without_split_column(tmp_path, ray_session):
    t, x, y, dom, unl = _feature_table()
    p = tmp_path / "feats.parquet"
    pq.write_table(t, p, row_group_size=50)
    b = D.read_parquet(str(p), seed=0)
    assert b.input_shape == (6,) and b.num_classes == 3
    got = {k: _collect(b.datasets[k], batch_size=64) for k in SPLITS}
    # Ray's rows per split are exactly what validation counted (sizes come from validate_parquet)
    assert {k: len(v["x"]) for k, v in got.items()} == b.sizes
    assert got["target_train"].keys() == {"x"} and got["source_train"]["x"].shape[1:] == (6,)
    # every row lands in exactly one split, with its own label
    row_label = {r.tobytes(): int(lab) for r, lab in zip(x, y)}
    all_rows = [r.tobytes() for k in SPLITS for r in got[k]["x"]]
    assert sorted(all_rows) == sorted(row_label)
    for k in LABELLED:
        assert all(row_label[r.tobytes()] == lab for r, lab in zip(got[k]["x"], got[k]["y"]))
    src_rows = {r.tobytes() for r, d in zip(x, dom) if d == "source"}
    assert {r.tobytes() for r in got["source_val"]["x"]} <= src_rows
    # same seed -> same split; another seed -> another split (same sizes of the domains)
    again = _collect(D.read_parquet(str(p), seed=0).datasets["source_val"])
    other = D.read_parquet(str(p), seed=1)
    other_val = _collect(other.datasets["source_val"])
    assert _row_keys(again["x"]) == _row_keys(got["source_val"]["x"])
    assert _row_keys(other_val["x"]) != _row_keys(got["source_val"]["x"])
    assert other.sizes["source_val"] == len(other_val["x"])


def test_directory_of_files_with_split_column(tmp_path, ray_session):
    d = tmp_path / "feats_dir"
    t, x, y, dom, unl = _feature_table(with_split=True)
    d.mkdir()
    pq.write_table(t.slice(0, 150), d / "part-0.parquet")
    (d / "sub").mkdir()
    pq.write_table(t.slice(150), d / "sub" / "part-1.parquet")
    (d / "_SUCCESS").write_text("")
    b = D.load_domain_shift(str(d), seed=0, val_fraction=0.3, image_size=16, shift=("blur",), image_shape=None)
    split = np.asarray(t.column("split").to_pylist())
    want_src_val = int(((dom == "source") & (split == "val")).sum())
    assert b.sizes["source_val"] == want_src_val  # the split column wins over val_fraction
    assert b.sizes["target_train"] == int(((dom == "target") & (split == "train")).sum())
    assert sum(b.sizes.values()) == 400
    got = _collect(b.datasets["target_train"])
    assert set(got) == {"x"} and len(got["x"]) == b.sizes["target_train"]


def test_load_domain_shift_embedded_and_registry_hook(ray_session):
    b = D.load_domain_shift("embedded", seed=0, image_size=8, shift=("thicken", "rotate", "noise"),
                            val_fraction=0.2, image_shape=None)
    assert b.name == "digits-shift(thicken+rotate+noise)"
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10 and sum(b.sizes.values()) == 1797
    with pytest.raises(ValueError, match="unknown argument"):
        D.load_domain_shift("embedded", colour=True)
    with pytest.raises(DataValidationError, match="does not exist"):
        D.load_domain_shift("/nonexistent/data.parquet")

    from trainers.decorrelation.config import DecorrelationConfig

    cfg = DecorrelationConfig.model_validate({"seed": 1, "data": {"image_size": 8, "shift": ["invert"]}})
    b2 = D.build_domain_shift(cfg)
    assert b2.name == "digits-shift(invert)" and b2.input_shape == (1, 8, 8)
    assert b2.sizes == {k: len(v[0]) for k, v in D.embedded_digits_shift(seed=1, image_size=8).items()}


def test_eval_splits_reach_every_worker_whole_and_each_rank_keeps_a_disjoint_part(ray_session):
    """Only the training splits are streaming-split among Ray Train workers (each split costs a coordinator
    actor); an evaluation split reaches every rank whole, in a preserved order, and the ranks' parts of it
    are disjoint and cover every row, so summed evaluation counts are exact (streaming_split(equal=True)
    dropped the remainder)."""
    import ray.data
    import torch

    from trainers.common.worker import ShardLoader, dataset_config

    def shuffled_blocks():  # several blocks and a map stage: what preserve_order has to hold in place
        return ray.data.range(1003, override_num_blocks=7).map_batches(lambda b: {"x": b["id"] * 2})

    datasets = {"source_train": ray.data.range(10), "target_train": ray.data.range(10),
                "train": ray.data.range(10), "source_val": shuffled_blocks(), "target_test": shuffled_blocks()}
    cfg = dataset_config(datasets, cache_in_memory=True, num_workers=2)
    assert sorted(cfg._datasets_to_split) == ["source_train", "target_train", "train"]
    assert dataset_config(datasets, cache_in_memory=False, num_workers=2)._datasets_to_split == "all"  # as before
    for cache in (True, False):  # one worker: nothing to split, no coordinator at all
        assert dataset_config(datasets, cache_in_memory=cache, num_workers=1)._datasets_to_split == []
    ds = datasets["source_val"]
    assert ds.context.execution_options.preserve_order
    for world in (1, 2, 3):
        parts = [ShardLoader(ds.iterator(), 64, torch.device("cpu"), cache=True, seed=0, part=(r, world))
                 for r in range(world)]
        rows = [torch.cat([b["x"] for b in p.full(100)]) for p in parts]
        assert torch.equal(torch.cat(rows), torch.arange(1003) * 2), world
        assert max(len(r) for r in rows) - min(len(r) for r in rows) <= 1
