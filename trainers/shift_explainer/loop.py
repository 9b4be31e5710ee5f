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

from trainers.common.worker import Worker, all_reduce_sum
from trainers.shift_explainer.classifier import unpack_classifier
from trainers.shift_explainer.config import ShiftExplainerConfig
from trainers.shift_explainer.explanation import explain, log_outputs
from trainers.shift_explainer.step import LOSS_KEYS, build_models, evaluate, make_optimizers, train_step


# =============================================================================================
# Workers: S103
# =============================================================================================

def train_loop_per_worker(config: dict) -> None:
    w = Worker(config, ShiftExplainerConfig)
    cfg, m, P = w.cfg, w.cfg.method, w.run["prepared"]
    models = build_models(cfg, w.run["input_shape"], P["loss_mean"], P["loss_std"])
    for mod in models.modules().values():
        mod.to(w.device)
    opts = make_optimizers(cfg, models)
    train, val = w.loader("gen_train"), w.loader("gen_val")
    history: list[dict] = []
    start = 1
    state = w.restore()
    if state is not None:
        for k, mod in models.modules().items():
            mod.load_state_dict(state[k])
        for k, o in opts.items():
            o.load_state_dict(state[f"opt_{k}"])
        history, start = state["history"], state["epoch"] + 1
    gen = torch.Generator(device=w.device).manual_seed(cfg.seed * 1_000_003 + 31 * w.rank + start)
    w.set_tags({"classifier_source": P["classifier_source"]})
    for epoch in range(start, cfg.train.epochs + 1):
        rows = []
        for b in train.epoch(epoch, w.steps_per_epoch):
            losses = train_step(models, opts, b["x"], b["loss"].float(), b["domain"], m, gen)
            rows.append(torch.stack(list(losses.values())))
        means = all_reduce_sum(torch.stack(rows).double().sum(0)).cpu() / (len(rows) * w.world_size)
        val_sum = all_reduce_sum(evaluate(models, val, m, w.device))
        metrics = {k: means[i].item() for i, k in enumerate(LOSS_KEYS)}
        metrics["recon_loss"] = (val_sum[0] / val_sum[1]).item()
        metrics.update(P["metrics"])
        w.say(f"[shift_explainer] epoch {epoch} ({m.model_type}) loss={metrics['loss_total']:.4f} "
              f"recon(val)={metrics['recon_loss']:.4f}")
        user_stop = w.stop_requested()
        last = epoch == cfg.train.epochs or user_stop
        final = {}
        if last and w.is_chief:
            classifier = unpack_classifier(P["classifier"], w.run["input_shape"], w.run["num_classes"], w.device)
            expl = explain(models, classifier, P["selection"], m, w.device)
            metrics.update(expl.metrics)
            history.append(dict(metrics, epoch=epoch))
            log_outputs(w, expl, models, classifier, history, P)
            final = {"classifier": P["classifier"], "pool": P["pool"], "selection": P["selection"],
                     "loss_range": P["loss_range"], "prepared_metrics": P["metrics"], "cfg": cfg.model_dump(mode="json"),
                     "num_classes": w.run["num_classes"]}
        else:
            history.append(dict(metrics, epoch=epoch))
        w.report(epoch, metrics, {**{k: mod.state_dict() for k, mod in models.modules().items()},
                                  **{f"opt_{k}": o.state_dict() for k, o in opts.items()},
                                  "history": history, **final})
        if last:
            w.set_tags({"stop_reason": "user_stop" if user_stop else "max_epochs"})
            break
