"""Task streams for continual learning: an ordered sequence of tasks, each with train/eval rows."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.data.arrow import dataset_from_tables
from pipelines.data.bundle import FEATURE_COLUMNS, IMAGE_SHAPE_KEY, DataValidationError
from pipelines.data.digits import _check_embedded_args, digits_images
from pipelines.data.parquet import (_as_array, _bad_values, _batch_rows, _check_image_shape, _eq, _feature_matrix,
                                    _is_null, _is_numeric_list, _is_string, _list_lengths, _open_parquet,
                                    _ray_read_parquet, parquet_files, split_uniform)

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data


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
