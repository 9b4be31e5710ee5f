"""``shift_explainer`` (JP7517093B2) on Ray Train workers: S103's training loop, the middle of the patent's flow
S101–S108 (Fig. 12).

The driver prepares the run first (:mod:`.prepare`: the data check; S102, the classifier f, :mod:`.classifier`;
per-sample losses by Ray Data batch inference, :mod:`.scoring`; S104, the selection, :mod:`.selection`).

Ray Train workers (:func:`train_loop_per_worker`): S103, the loss-conditioned generative model on domain 1 ∪
domain 2 (AE, VAE or BiGAN, :func:`trainers.shift_explainer.step.train_step`), optionally the claim-6 style
transformer beside it; f is never updated (it is not even on the workers: its losses are columns of the data).
Gradients are averaged over ranks explicitly (:func:`trainers.common.worker.average_gradients`), because the
models are used along several paths per step (encode, decode, discriminate) which DDP's one-forward-per-step
contract does not cover.

After the last epoch, rank 0 runs S105–S108 (:mod:`.explanation`: the grid, its fidelity figures, the PNG, the
artifacts). ``trainlab explain --checkpoint`` repeats S104–S108 from the final checkpoint in seconds, with
other K / layout / selection settings (:func:`trainers.shift_explainer.explanation.explain_from_checkpoint`).
"""
from __future__ import annotations

import torch

from trainers.common.runner import LearnerBase, Unit, run_learner
from trainers.common.worker import Worker, all_reduce_sum
from trainers.shift_explainer.classifier import unpack_classifier
from trainers.shift_explainer.config import ShiftExplainerConfig
from trainers.shift_explainer.explanation import explain, log_outputs
from trainers.shift_explainer.prepare import ExplainerFacts
from trainers.shift_explainer.step import LOSS_KEYS, build_models, evaluate, make_optimizers, train_step


# =============================================================================================
# Workers: S103
# =============================================================================================

class ExplainerLearner(LearnerBase):
    """S103 as units of the shared runner: one epoch of the generative model per unit; the last unit ends with
    rank 0's explanation (S105–S108), whose figures join its report and whose inputs its checkpoint keeps."""

    name = "shift_explainer"

    def __init__(self, w: Worker):
        self.w = w
        cfg, self.m = w.cfg, w.cfg.method
        self.cfg, self.units = cfg, cfg.train.epochs
        self.P: ExplainerFacts = w.run.prepared
        self.models = build_models(cfg, w.run.input_shape, self.P.loss_mean, self.P.loss_std)
        for mod in self.models.modules().values():
            mod.to(w.device)
        self.opts = make_optimizers(cfg, self.models)
        self.train, self.val = w.loader("gen_train"), w.loader("gen_val")
        self.history: list[dict] = []
        self.final: dict = {}
        self.gen = None  # the noise stream: seeded by rank and by the first unit this job trains (see learn)
        w.set_tags({"classifier_source": self.P.classifier_source})

    def state_dict(self) -> dict:
        return {**{k: mod.state_dict() for k, mod in self.models.modules().items()},
                **{f"opt_{k}": o.state_dict() for k, o in self.opts.items()}, "history": self.history, **self.final}

    def load_state_dict(self, state: dict) -> None:
        for k, mod in self.models.modules().items():
            mod.load_state_dict(state[k])
        for k, o in self.opts.items():
            o.load_state_dict(state[f"opt_{k}"])
        self.history = state["history"]

    def learn(self, epoch: int) -> Unit:
        w, m = self.w, self.m
        if self.gen is None:
            self.gen = torch.Generator(device=w.device).manual_seed(self.cfg.seed * 1_000_003 + 31 * w.rank + epoch)
        rows = []
        for b in self.train.epoch(epoch, w.steps_per_epoch):
            losses = train_step(self.models, self.opts, b["x"], b["loss"].float(), b["domain"], m, self.gen)
            rows.append(torch.stack(list(losses.values())))
        means = all_reduce_sum(torch.stack(rows).double().sum(0)).cpu() / (len(rows) * w.world_size)
        val_sum = all_reduce_sum(evaluate(self.models, self.val, m, w.device))
        metrics = {k: means[i].item() for i, k in enumerate(LOSS_KEYS)}
        metrics["recon_loss"] = (val_sum[0] / val_sum[1]).item()
        metrics.update(self.P.metrics)
        self.history.append(dict(metrics, epoch=epoch))
        return Unit(metrics, f"[shift_explainer] epoch {epoch} ({m.model_type}) loss={metrics['loss_total']:.4f} "
                             f"recon(val)={metrics['recon_loss']:.4f}")

    def conclude(self, epoch: int, reason: str, metrics: dict) -> dict:
        w, P = self.w, self.P
        if not w.is_chief:
            return {}
        classifier = unpack_classifier(P.classifier, w.run.input_shape, w.run.num_classes, w.device)
        expl = explain(self.models, classifier, P.selection, self.m, w.device)
        self.history[-1].update(expl.metrics)
        log_outputs(w, expl, self.models, classifier, self.history, P)
        # what `trainlab explain --checkpoint` needs to repeat S104–S108 without the driver
        self.final = {"classifier": P.classifier, "pool": P.pool, "selection": P.selection,
                      "loss_range": P.loss_range, "prepared_metrics": P.metrics, "cfg": self.cfg.model_dump(mode="json"),
                      "num_classes": w.run.num_classes}
        return expl.metrics


def train_loop_per_worker(config: dict) -> None:
    w = Worker(config, ShiftExplainerConfig)
    run_learner(w, ExplainerLearner(w))
