"""The driver side of ``shift_explainer`` (JP7517093B2), S101–S104, before the MLflow run exists: the data
check (:func:`check`) and :func:`prepare` (a failure here leaves no run behind):

* S102: the classifier f — trained on domain 1 by one job of the run's scaling (``DriverContext.run_job``)
  (:func:`trainers.shift_explainer.classifier.classifier_loop_per_worker`), or loaded from a file / an MLflow
  model URI (``method.classifier``), then frozen;
* per-sample losses L(x) = ℓ(f(x), y) over every row of both domains as **Ray Data batch inference**
  (:class:`trainers.shift_explainer.scoring.Scorer` in ``map_batches``, one actor), plus each row's softmax
  output;
* from those: the classifier's accuracy per domain, a black-box shift test on its outputs (``shift_pvalue``),
  the conditioning normalisation (mean / std of L over the generator's training rows), and S104 selection of
  x(1) (domain 1, correct) and x(2) (domain 2, failing) from the pools (train ∪ val of each domain).
"""
from __future__ import annotations

from dataclasses import dataclass

from trainers.common.context import DriverContext
from trainers.common.facts import Prepared
from trainers.shift_explainer.classifier import obtain_classifier, pack_classifier
from trainers.shift_explainer.config import ShiftExplainerConfig
from trainers.shift_explainer.metrics import shift_test
from trainers.shift_explainer.scoring import SPLIT_ORDER, _columns, score
from trainers.shift_explainer.selection import select


DOMAIN_SPLITS = {"d1": ("d1_train", "d1_val"), "d2": ("d2_train", "d2_val")}


@dataclass(frozen=True)
class ExplainerFacts:
    """What every worker receives from :func:`prepare`: the frozen classifier f (``classifier``: packed weights,
    and where it came from), the scored selection ``pool`` of each domain (rows with their per-sample loss), the
    S104 ``selection`` (x(1), x(2)), the conditioning normalisation (``loss_mean``, ``loss_std``), each domain's
    ``loss_range`` and the driver's figures (``metrics``: accuracy per domain, the shift test), logged every epoch."""

    classifier: dict
    classifier_source: str
    pool: dict
    selection: dict
    loss_mean: float
    loss_std: float
    loss_range: dict[str, list[float]]
    metrics: dict[str, float]


def check(cfg: ShiftExplainerConfig, bundle) -> None:
    """Images (C, H, W) with H = W a multiple of 4 and 1..4 channels; every split non-empty and labelled."""
    shape = tuple(bundle.input_shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] % 4 or not 1 <= shape[0] <= 4:
        raise ValueError(f"data: inputs of shape {shape}; allowed: images (C, H, W) with 1 <= C <= 4 and H = W a "
                         "multiple of 4 (shift_explainer's encoder/decoder are convolutional)")
    for split, n in bundle.sizes.items():
        if split in sum(DOMAIN_SPLITS.values(), ()) and n < 1:
            raise ValueError(f"data.source: split {split} is empty; allowed: rows in every split of both domains")
    if bundle.num_classes < 2:
        raise ValueError(f"data.source: {bundle.num_classes} class(es); allowed: at least 2 labels")


def prepare(cfg: ShiftExplainerConfig, bundle, ctx: DriverContext) -> Prepared:
    """S101–S104 on the driver (see the module docstring). Returns the facts every worker gets, with
    ``datasets`` (what the TorchTrainer trains on: ``gen_train`` = domain-1 ∪ domain-2 train rows, ``gen_val``
    = the val rows, columns x, y, loss, domain) and ``sizes``."""
    m = cfg.method
    classifier, source = obtain_classifier(cfg, bundle, ctx)
    packed = pack_classifier(classifier, source, ctx.tracking_uri)
    scored = score(bundle, packed, m.loss_fn)
    cols = _columns(scored)
    by_part = {s: cols["part"] == i for i, s in enumerate(SPLIT_ORDER)}
    acc = {d: float((cols["pred"][mask] == cols["y"][mask]).mean())
           for d, mask in (("d1", by_part["d1_val"]), ("d2", cols["domain"] == 2))}
    shift = shift_test(cols["prob"][by_part["d1_val"]], cols["prob"][cols["domain"] == 2])
    train_rows = by_part["d1_train"] | by_part["d2_train"]
    loss_mean = float(cols["loss"][train_rows].mean())
    loss_std = float(max(cols["loss"][train_rows].std(), 1e-6))
    pool = {d: {k: cols[k][cols["domain"] == (1 if d == "d1" else 2)] for k in ("x", "y", "loss")}
            for d in ("d1", "d2")}
    chosen = select(m, pool)          # raises a ValueError naming method.tau1 / tau2 with the observed range
    keep = ["x", "y", "loss", "domain"]
    datasets = {"gen_train": scored.filter(lambda r: r["part"] in (0, 2)).select_columns(keep).materialize(),
                "gen_val": scored.filter(lambda r: r["part"] in (1, 3)).select_columns(keep).materialize()}
    return Prepared(
        facts=ExplainerFacts(
            classifier=packed, classifier_source=source, pool=pool, selection=chosen, loss_mean=loss_mean,
            loss_std=loss_std, loss_range={d: [float(pool[d]["loss"].min()), float(pool[d]["loss"].max())] for d in pool},
            metrics={"classifier_acc_domain1": acc["d1"], "classifier_acc_domain2": acc["d2"],
                     "shift_pvalue": float(shift["pvalue"]), "shift_ks_stat": float(shift["ks_stat_max"]),
                     "loss_mean_domain1": float(pool["d1"]["loss"].mean()),
                     "loss_mean_domain2": float(pool["d2"]["loss"].mean())}),
        datasets=datasets,
        sizes={**bundle.sizes, "gen_train": int(train_rows.sum()), "gen_val": int((~train_rows).sum())})
