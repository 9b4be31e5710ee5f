"""``decorrelation`` on one Ray Train worker: the patent's S100–S108 loop (spec §5).

One step: a labelled source batch and an unlabelled target batch go through the network in ONE
forward pass; features of the named layers are tapped by hooks, reduced to (B, C) (GAP/GMP), and
all-gathered with autograd so every correlation loss is computed over the GLOBAL batch (the loss
and gradients do not depend on the number of workers); the variant's weighted sum is backpropagated.
Per epoch: accuracy on source/target splits, the target features' mean |r| over the whole target
test set (from all-reduced sufficient statistics), the completion threshold and user stop (S108),
progress lines and the "recommend more data / change parameters" messages (spec §6).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from trainers.common.models import FeatureTap, build_classifier, check_layers, unwrap
from trainers.common.runner import LearnerBase, Unit, run_learner
from trainers.common.worker import (Worker, all_reduce_sum, correlation_from_stats, gather_cat,
                                    make_optimizer)
from trainers.decorrelation.config import DecorrelationConfig
from trainers.decorrelation.losses import decorrelation_terms, reduce_features

USES_UNLABELLED = {"A": True, "B": True, "C": False, "generic": True, "supervised": True, "decov": True}
# which feature sets enter the objective with gradients (others are detached local diagnostics)
GRAD_LABELLED = {"B", "C", "generic", "decov"}
GRAD_UNLABELLED = {"A", "B", "generic", "decov"}
RECOMMENDATIONS = ("recommend increasing the amount of training data",
                   "recommend changing the NN's parameters (learning conditions)")


@torch.no_grad()
def evaluate(w: Worker, model, tap: FeatureTap, loader, layer: str, reduction: str) -> dict:
    """Global accuracy and feature-correlation statistics of one split (all ranks take part)."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64)
    n = torch.zeros((), dtype=torch.float64)
    s = ss = None
    for b in loader.full():
        with w.autocast():
            logits = model(b["x"])
        correct += torch.tensor([(logits.argmax(1) == b["y"]).sum().item(), len(b["y"])], dtype=torch.float64)
        f = reduce_features(tap.outputs[layer], reduction).detach().double().cpu()
        s = f.sum(0) if s is None else s + f.sum(0)
        ss = f.T @ f if ss is None else ss + f.T @ f
        n += len(f)
    stats = all_reduce_sum(torch.cat([correct, n.view(1), s, ss.flatten()]))
    c = s.numel()
    r = correlation_from_stats(stats[2], stats[3:3 + c], stats[3 + c:].view(c, c))
    off = ~torch.eye(c, dtype=torch.bool)
    return {"acc": (stats[0] / stats[1]).item(), "R": r.numpy(), "mean_abs_corr": r[off].abs().mean().item()}


def step_terms(model, tap: FeatureTap, m, xs: torch.Tensor, ys: torch.Tensor, xu: torch.Tensor | None,
               autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """The objective of one step (S102-S104): one forward pass over source (+ target) samples,
    tapped features reduced to (B, C) and gathered over ranks when they carry gradient."""
    n_s = len(ys)
    x = xs if xu is None else torch.cat([xs, xu])
    with autocast():
        logits = model(x)
    task = F.cross_entropy(logits[:n_s].float(), ys)
    fs = [reduce_features(tap.outputs[l][:n_s], m.reduction) for l in m.layers_labelled]
    fu = [reduce_features(tap.outputs[l][n_s:], m.reduction) for l in m.layers_unlabelled] if xu is not None else []
    fs = [gather_cat(f) for f in fs] if m.variant in GRAD_LABELLED else [f.detach() for f in fs]
    fu = [gather_cat(f) for f in fu] if m.variant in GRAD_UNLABELLED else [f.detach() for f in fu]
    return decorrelation_terms(m.variant, task, fs, fu, m.lambda2, m.lambda3, m.lambda4,
                               reduction=m.aggregation, normalize=m.normalize, decov_weight=m.decov_weight)


def train_step(model, tap: FeatureTap, opt, m, xs: torch.Tensor, ys: torch.Tensor, xu: torch.Tensor | None,
               autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """One optimisation step on the objective of :func:`step_terms`; returns the terms (the loop and the
    benchmark's plain-PyTorch path both call this)."""
    terms = step_terms(model, tap, m, xs, ys, xu, autocast)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt.step()
    return terms


def check(cfg: DecorrelationConfig, bundle) -> None:
    """Driver-side: build the network once and run a 2-sample forward, so a wrong layer name or a
    user model that does not fit the data fails before any worker starts."""
    m = cfg.method
    model = build_classifier(cfg.model, tuple(bundle.input_shape), bundle.num_classes)
    check_layers(model, m.layers_labelled, "method.layers_labelled")
    check_layers(model, m.layers_unlabelled, "method.layers_unlabelled")
    tap = FeatureTap(model, m.layers_labelled + m.layers_unlabelled)
    with torch.no_grad():
        out = model(torch.zeros(2, *bundle.input_shape))
    if out.shape != (2, bundle.num_classes):
        raise ValueError(f"model: output shape {tuple(out.shape)} != (batch, num_classes={bundle.num_classes})")
    for name, f in tap.outputs.items():
        if f.dim() < 2:
            raise ValueError(f"method.layers_*: layer {name!r} outputs shape {tuple(f.shape)}; need (B, C, ...)")
    tap.remove()


class DecorrelationLearner(LearnerBase):
    """S100–S108 as units of the shared runner (:mod:`trainers.common.runner`): one epoch per unit."""

    name = "decorrelation"

    def __init__(self, w: Worker):
        self.w = w
        cfg, m = w.cfg, w.cfg.method
        self.m, self.units = m, cfg.train.epochs
        model = build_classifier(cfg.model, tuple(w.run.input_shape), w.run.num_classes)
        check_layers(model, m.layers_labelled, "method.layers_labelled")
        check_layers(model, m.layers_unlabelled, "method.layers_unlabelled")
        self.tap = FeatureTap(model, m.layers_labelled + m.layers_unlabelled)
        self.model = w.prepare(model)
        self.base = unwrap(self.model)
        self.opt = make_optimizer(cfg.train, self.model.parameters())
        self.src = w.loader("source_train")
        self.tgt = w.loader("target_train") if USES_UNLABELLED[m.variant] else None
        self.evals = {k: w.loader(k, 1024) for k in ("source_val", "target_val", "target_test")}
        self.probe = m.layers_unlabelled[0]  # the layer whose target-feature correlation is reported
        self.history: list[dict] = []
        self.corr_before = None
        self.recommended = False

    def _evaluate(self, split: str) -> dict:
        return evaluate(self.w, self.model, self.tap, self.evals[split], self.probe, self.m.reduction)

    def begin(self) -> None:
        self.corr_before = self._evaluate("target_test")["R"]

    def state_dict(self) -> dict:
        return {"model": self.base.state_dict(), "optimizer": self.opt.state_dict(), "history": self.history,
                "corr_before": self.corr_before}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.history, self.corr_before = state["history"], state["corr_before"]

    def learn(self, epoch: int) -> Unit:
        w, m = self.w, self.m
        self.model.train()
        sums = torch.zeros(4, dtype=torch.float64, device=w.device)  # on device: no host sync per step
        tgt_batches = self.tgt.epoch(epoch, w.steps_per_epoch) if self.tgt is not None else None
        for bs in self.src.epoch(epoch, w.steps_per_epoch):
            bu = next(tgt_batches) if tgt_batches is not None else None
            terms = train_step(self.model, self.tap, self.opt, m, bs["x"], bs["y"], None if bu is None else bu["x"],
                               w.autocast)
            sums += torch.stack([terms[k].detach().double() for k in
                                 ("loss", "task_loss", "corr_loss_labelled", "corr_loss_unlabelled")])
        # the task loss is a per-worker mean: average over steps and ranks for the global mean
        means = all_reduce_sum(sums).cpu() / (w.steps_per_epoch * w.world_size)
        metrics = dict(zip(("train_loss", "task_loss", "corr_loss_labelled", "corr_loss_unlabelled"),
                           means.tolist()))
        ev = {k: self._evaluate(k) for k in self.evals}
        metrics.update(source_acc=ev["source_val"]["acc"], target_val_acc=ev["target_val"]["acc"],
                       target_acc=ev["target_test"]["acc"],
                       mean_abs_corr_target=ev["target_test"]["mean_abs_corr"])
        self.history.append(dict(metrics, epoch=epoch))

        # S108: completion threshold on the losses in the objective (the user's stop request: the runner)
        active = [metrics["task_loss"]]
        if m.variant in ("A", "B", "generic"):
            active.append(metrics["corr_loss_unlabelled"])
        if m.variant in ("B", "C"):
            active.append(metrics["corr_loss_labelled"])
        done = m.completion_threshold is not None and all(v <= m.completion_threshold for v in active)
        line = (f"[decorrelation] epoch {epoch}/{self.units} L={metrics['train_loss']:.4f} "
                f"L2={metrics['task_loss']:.4f} L3={metrics['corr_loss_unlabelled']:.4f} "
                f"L4={metrics['corr_loss_labelled']:.4f} source_acc={metrics['source_acc']:.3f} "
                f"target_acc={metrics['target_acc']:.3f} mean|r|={metrics['mean_abs_corr_target']:.3f}")
        notes = []
        if (m.completion_threshold is not None and not done and not self.recommended
                and _plateaued([h["train_loss"] for h in self.history], m.plateau_patience)):
            notes = self._recommend(f"losses plateaued above completion_threshold={m.completion_threshold} "
                                    f"at epoch {epoch}")
        return Unit(metrics, line, notes, "completion_threshold" if done else None)

    def conclude(self, epoch: int, reason: str, metrics: dict) -> dict:
        if reason == self.max_reason and self.m.completion_threshold is not None and not self.recommended:
            for note in self._recommend(f"completion_threshold={self.m.completion_threshold} not reached in "
                                        f"{self.units} epochs"):
                self.w.say(note)
        return {}

    def after(self, reason: str) -> None:
        corr_after = self._evaluate("target_test")["R"]
        self.tap.remove()
        if self.w.is_chief:
            _log_plots(self.w, self.history, self.corr_before, corr_after, self.probe)
            example = next(iter(self.evals["target_test"].full(2)))["x"]
            self.w.log_model(self.model, example)

    def _recommend(self, why: str) -> list[str]:
        """The patent's "more data / other learning conditions" advice (spec §6): tagged, and said once."""
        self.recommended = True
        self.w.set_tags({"recommendation": " | ".join(RECOMMENDATIONS), "recommendation_reason": why})
        return [f"[decorrelation] {why}: {r}" for r in RECOMMENDATIONS]


def train_loop_per_worker(config: dict) -> None:
    w = Worker(config, DecorrelationConfig)
    run_learner(w, DecorrelationLearner(w))


def _plateaued(losses: list[float], patience: int) -> bool:
    if len(losses) <= patience:
        return False
    best_before = min(losses[:-patience])
    return min(losses[-patience:]) > best_before * 0.99


def _log_plots(w: Worker, history: list[dict], before: np.ndarray, after: np.ndarray, layer: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for k in ("train_loss", "task_loss", "corr_loss_labelled", "corr_loss_unlabelled"):
        ax[0].plot(ep, [h[k] for h in history], marker="o", label=k)
    ax[0].set(xlabel="epoch", ylabel="loss", title="losses (global means)")
    ax[0].legend()
    for k in ("source_acc", "target_val_acc", "target_acc"):
        ax[1].plot(ep, [h[k] for h in history], marker="o", label=k)
    ax[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax[1].legend()
    w.log_figure(fig, "loss_curves.png")
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(11, 5))
    for a, mat, title in ((ax[0], before, "before training"), (ax[1], after, "after training")):
        off = mat[~np.eye(len(mat), dtype=bool)]
        im = a.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
        a.set_title(f"target features '{layer}': {title}\nmean |r| = {np.abs(off).mean():.3f}")
        a.set_xlabel("channel")
        a.set_ylabel("channel")
    fig.colorbar(im, ax=ax, shrink=0.8, label="Pearson r")
    w.log_figure(fig, "target_feature_correlation.png")
    plt.close(fig)
