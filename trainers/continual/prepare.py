"""``continual``'s driver side, before any worker starts: the checks that need the model (:func:`check`) and
:func:`prepare`: each task's input PDF over the WHOLE train split (one Ray Data pass of mergeable counts) and the
T×T divergence matrix, handed to every worker as :class:`TaskFacts`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainers.common.facts import Prepared
from trainers.continual.config import ContinualConfig
from trainers.continual.learner import build_model
from trainers.continual.groups import layer_groups, task1_layer_rates
from trainers.continual.similarity import (codebook_counts, divergence, fit_codebook,
                                           histogram_counts, histogram_edges)

def check(cfg: ContinualConfig, bundle) -> None:
    """Driver-side: the model fits the data, every layer-group override matches a layer, the rate tables cover
    every group, a global batch fits in every task."""
    m = cfg.method
    try:
        model = build_model(cfg.model, tuple(bundle.input_shape), bundle.num_classes)
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    try:
        groups = layer_groups(model, m.group_overrides)
    except ValueError as e:
        raise ValueError(f"method.group_overrides: {e}") from None
    used = set(groups.values())
    if m.variant == "method":
        missing = sorted(used - set(m.table().rates))
        if missing:
            raise ValueError(f"method.rate_table: no rates for groups {missing} used by the model's layers")
        try:
            task1_layer_rates(groups, m.task1_profile)
        except ValueError as e:
            raise ValueError(f"method.task1_profile: {e}") from None
    for i, name in enumerate(bundle.task_names, 1):
        n = bundle.sizes[f"task{i}_train"]
        if cfg.train.batch_size > n:
            raise ValueError(f"train.batch_size: {cfg.train.batch_size} is larger than task {name!r}'s train rows "
                             f"({n}); allowed: 2..{n}")


def _task_counts(batch: dict, *, estimator: str, num_tasks: int, edges=None, per_feature=False, codebook=None):
    """map_batches body: one row per task with the estimator counts of this batch's rows of that task."""
    x, t = np.asarray(batch["x"]), np.asarray(batch["t"])
    rows = []
    for i in range(1, num_tasks + 1):
        sel = x[t == i]
        if not len(sel):
            continue
        c = histogram_counts(sel, edges, per_feature) if estimator == "histogram" else codebook_counts(sel, codebook)
        rows.append(np.asarray(c, np.int64).ravel())
    present = [i for i in range(1, num_tasks + 1) if (t == i).any()]
    if not rows:
        return {"t": np.zeros(0, np.int64), "counts": np.zeros((0, 1), np.int64)}
    return {"t": np.asarray(present, np.int64), "counts": np.stack(rows)}


def _codebook_reference(ds, num_tasks: int, per_task: int) -> np.ndarray:
    """The first ``per_task`` rows of every task (the dataset is already a seeded shuffle), one streaming pass."""
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(1, num_tasks + 1)}
    have = dict.fromkeys(got, 0)
    for b in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        x, t = np.asarray(b["x"]), np.asarray(b["t"])
        for i in got:
            if have[i] < per_task:
                sel = x[t == i][: per_task - have[i]]
                got[i].append(sel)
                have[i] += len(sel)
        if all(v >= per_task for v in have.values()):
            break
    return np.concatenate([np.concatenate(v) for v in got.values() if v])


def task_distributions(cfg: ContinualConfig, ds, num_tasks: int) -> tuple[np.ndarray, dict]:
    """Counts (num_tasks, cells) of every task's WHOLE train split under the configured estimator: one Ray Data
    ``map_batches`` pass of mergeable integer counts, summed on the driver."""
    m = cfg.method
    kw: dict = {"estimator": m.estimator, "num_tasks": num_tasks}
    info: dict = {"estimator": m.estimator}
    if m.estimator == "histogram":
        kw.update(edges=histogram_edges(m.hist_range[0], m.hist_range[1], m.hist_bins), per_feature=m.per_feature)
        info.update(bins=m.hist_bins, range=list(m.hist_range), per_feature=m.per_feature)
    else:
        ref = _codebook_reference(ds, num_tasks, m.codebook_reference)
        n_codes = min(m.n_codes, len(ref))
        kw["codebook"] = fit_codebook(ref, n_codes, m.proj_dim, seed=cfg.seed)
        info.update(n_codes=n_codes, proj_dim=m.proj_dim, reference_rows=int(len(ref)))
    totals: dict[int, np.ndarray] = {}
    for b in ds.map_batches(_task_counts, batch_format="numpy", fn_kwargs=kw).iter_batches(
            batch_size=None, batch_format="numpy"):
        for t, c in zip(b["t"], b["counts"]):
            totals[int(t)] = totals.get(int(t), 0) + np.asarray(c, np.int64)
    missing = [i for i in range(1, num_tasks + 1) if i not in totals]
    if missing:
        raise ValueError(f"data: tasks {missing} have no train rows")
    return np.stack([totals[i] for i in range(1, num_tasks + 1)]), info


@dataclass(frozen=True)
class TaskFacts:
    """The driver's precomputation that every worker receives: the task order (``task_names``) and classes, each
    task's input PDF (``counts``, from ``estimator``) and the T×T divergence matrix ``jsd`` (``method.measure``)."""

    jsd: list[list[float]]
    task_names: list[str]
    task_classes: list[list[int]]
    estimator: dict
    counts: list[list[float]]


def prepare(cfg: ContinualConfig, bundle, ctx=None) -> Prepared:
    """Driver-side, once per run: the task PDFs and the T×T divergence matrix (``method.measure``)."""
    counts, info = task_distributions(cfg, bundle.datasets["train"], bundle.num_tasks)
    T = bundle.num_tasks
    jsd = [[0.0 if i == j else divergence(counts[i], counts[j], cfg.method.measure) for j in range(T)]
           for i in range(T)]
    return Prepared(facts=TaskFacts(jsd=jsd, task_names=list(bundle.task_names),
                                    task_classes=[list(c) for c in bundle.task_classes], estimator=info,
                                    counts=counts.tolist()))
