"""``mixture_sparsity`` on one Ray Train worker: spec §5 (S101 → S102 → S302 → S303 → S203), then the
post-training pruner.

One step: E = cross-entropy of the softmax output (eq. 3); the group parameters ‖W^l[i,:]‖ (rows) or
‖W^l[:,j]‖ (cols) of the configured layers; R = the configured regulariser (the mixture prior, or the
group-lasso / L2 baselines, or none); L = E + λ·R. The regulariser depends only on the parameters,
which DDP keeps identical on every rank, so it needs no collective.

After training: the deletion threshold τ (the one that hits ``method.budget`` — a share of groups or
of parameters — else the configured one, else the delete/keep boundary of the mixture), groups with ‖w_g‖ < τ are removed physically
(:func:`prune_model`: a smaller ``nn.Module`` with constants folded), and the run reports parameters,
MACs, accuracy after pruning, the pruned-vs-masked output difference and measured latency ratios.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainers.common.models import unwrap
from trainers.common.runner import LearnerBase, Unit, run_learner
from trainers.common.worker import Worker, all_reduce_sum, make_optimizer
from trainers.mixture_sparsity.config import MixtureSparsityConfig
from trainers.mixture_sparsity.losses import Regularizer, group_norms, mixture_threshold
from trainers.mixture_sparsity.models import SigmoidMLP, SmallPrunableCNN
from trainers.mixture_sparsity.pruning import (count_flops, count_params, layer_groups, masked_model,
                                               prune_model, threshold_masks)


def build_model(model_cfg, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    if model_cfg.name == "mlp":
        return SigmoidMLP(math.prod(input_shape), model_cfg.hidden, num_classes, act=model_cfg.act)
    if len(input_shape) != 3:
        raise ValueError(f"model.name: cnn needs image inputs (C, H, W); the data has shape {input_shape}")
    return SmallPrunableCNN(input_shape[0], num_classes, model_cfg.channels, tuple(input_shape[1:]),
                            fc_hidden=model_cfg.hidden, act=model_cfg.act)


def mixture_tau(m) -> float:
    """τ from the config: ``method.threshold``, else the mixture's delete/keep boundary."""
    if m.threshold is not None:
        return float(m.threshold)
    return mixture_threshold(m.weights, m.means, m.stds, m.family_arg())


def _tau_deleting(sorted_norms: torch.Tensor, k: int) -> float:
    """A threshold below which exactly the k smallest of the sorted norms lie (midway between neighbours)."""
    s = sorted_norms
    if k <= 0:
        return float(s[0]) / 2
    if k >= len(s):
        return float(s[-1]) * 2 + 1e-12
    return float((s[k - 1] + s[k]) / 2)


def budget_tau(norms: torch.Tensor, budget: float) -> float:
    """The threshold that deletes round(budget·G) of the G groups."""
    s = torch.sort(norms.detach().double().flatten()).values
    return _tau_deleting(s, int(round(budget * len(s))))


def params_removed(model, spec, tau: float) -> float:
    """Share of the model's parameters that physical pruning at τ removes (dependent layers included)."""
    return 1.0 - count_params(prune_model(model, threshold_masks(model, spec, tau))) / count_params(model)


def budget_threshold(model, spec, norms: torch.Tensor, budget: float, unit: str = "groups") -> float:
    """τ for ``method.budget``: a share of the groups, or of the parameters (the smallest-norm groups
    whose removal comes closest to budget·params; a binary search over how many groups go)."""
    if unit == "groups":
        return budget_tau(norms, budget)
    s = torch.sort(norms.detach().double().flatten()).values
    lo, hi = 0, len(s)  # removed(k) grows with k: find the first k with removed(k) >= budget
    while lo < hi:
        mid = (lo + hi) // 2
        if params_removed(model, spec, _tau_deleting(s, mid)) >= budget:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(lo - 1, 0), min(lo, len(s))},
               key=lambda k: abs(params_removed(model, spec, _tau_deleting(s, k)) - budget))
    return _tau_deleting(s, best)


def natural_tau(m) -> float | None:
    """τ without the budget (configured, or the mixture boundary); None when the prior has none."""
    if m.threshold is None and m.regularizer != "mixture":
        return None
    try:
        return mixture_tau(m)
    except ValueError:
        return None


def exact_norms(model, spec) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([group_norms(wt, d, eps=0.0) for wt, d in layer_groups(model, spec)])


def check(cfg: MixtureSparsityConfig, bundle) -> None:
    """Driver-side: the model fits the data, the groups name real layers, τ is computable."""
    m = cfg.method
    try:
        model = build_model(cfg.model, tuple(bundle.input_shape), bundle.num_classes)
    except ValueError as e:
        raise ValueError(f"model: {e} (input shape {tuple(bundle.input_shape)}; for the cnn on the embedded "
                         "digits use data.image_size >= 16)") from None
    spec = m.group_spec()
    try:
        layer_groups(model, spec)
    except ValueError as e:
        raise ValueError(f"method.groups: {e}") from None
    out = model.layer_names[-1]
    if (out, "rows") in spec:
        raise ValueError(f"method.groups: '{out}:rows' are the output classes and cannot be pruned; "
                         f"allowed layers for rows: {', '.join(model.layer_names[:-1])}")
    if m.threshold is None and m.budget is None:
        try:
            mixture_tau(m)
        except ValueError as e:
            raise ValueError(f"method.threshold: no default from the mixture ({e}); set method.threshold "
                             "or method.budget, or give the mixture a 'keep' component with a larger mean") from None
    if cfg.budget_knob() is not None and natural_tau(m) is None:
        raise ValueError("method.budget_search: calibrate steers the share the prior deletes at its delete/keep "
                         "boundary, and this mixture has none; allowed: set method.threshold, or "
                         "method.budget_search=threshold")


def method_regularizer(m) -> Regularizer:
    """The run's R(w), validated once (``m``: the method config)."""
    return Regularizer(m.regularizer, m.weights, m.means, m.stds, m.family_arg())


def train_step(model, base, opt, reg: Regularizer, spec, x: torch.Tensor, y: torch.Tensor, lam: float,
               autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of L = E + lam·R (``base``: the bare module whose groups R reads; ``reg``:
    :func:`method_regularizer`); returns detached (L, E, R). The loop and the benchmark's plain-PyTorch path
    both call this."""
    with autocast():
        logits = model(x)
    task = F.cross_entropy(logits.float(), y)
    r = reg(layer_groups(base, spec))
    loss = task + lam * r
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), task.detach(), r.detach()


@torch.no_grad()
def accuracy(w: Worker, model, loader) -> float:
    model.eval()
    c = torch.zeros(2, dtype=torch.float64)
    for b in loader.full():
        logits = model(b["x"])
        c += torch.tensor([(logits.argmax(1) == b["y"]).sum().item(), len(b["y"])], dtype=torch.float64)
    c = all_reduce_sum(c)
    return (c[0] / c[1]).item()


def latency_ms(model, input_shape, batch: int, reps: int = 20) -> float:
    """Median wall time of one forward pass (ms) at ``batch`` on CPU/GPU of this worker."""
    p = next(model.parameters())
    x = torch.randn(batch, *input_shape, device=p.device)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(reps + 3):
            if p.is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if p.is_cuda:
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


class MixtureSparsityLearner(LearnerBase):
    """Training under the mixture-prior penalty, one epoch per unit of the shared runner; the last unit prunes."""

    name = "mixture_sparsity"

    def __init__(self, w: Worker):
        self.w = w
        cfg, m = w.cfg, w.cfg.method
        self.m, self.units = m, cfg.train.epochs
        self.input_shape = tuple(w.run.input_shape)
        self.spec = m.group_spec()
        self.model = w.prepare(build_model(cfg.model, self.input_shape, w.run.num_classes).to(w.device))
        self.base = unwrap(self.model)
        self.opt = make_optimizer(cfg.train, self.model.parameters())
        self.train = w.loader("source_train")
        self.evals = {"val": w.loader("source_val", 1024), "test": w.loader("target_test", 1024)}
        self.penalty = method_regularizer(m)
        self.tau_cfg = None if m.budget is not None else mixture_tau(m)  # a budget decides τ; else threshold/boundary
        self.history: list[dict] = []
        self.norms_before = None
        self.tau = None

    def begin(self) -> None:
        self.norms_before = exact_norms(self.base, self.spec).cpu().numpy()

    def state_dict(self) -> dict:
        return {"model": self.base.state_dict(), "optimizer": self.opt.state_dict(), "history": self.history,
                "norms_before": self.norms_before}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.history, self.norms_before = state["history"], state["norms_before"]

    def learn(self, epoch: int) -> Unit:
        w, m, base, spec = self.w, self.m, self.base, self.spec
        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=w.device)  # on device: no host sync per step
        for b in self.train.epoch(epoch, w.steps_per_epoch):
            loss, task, reg = train_step(self.model, base, self.opt, self.penalty, spec, b["x"], b["y"],
                                         m.lam if epoch > m.warmup_epochs else 0.0, w.autocast)
            sums += torch.stack([loss.double(), task.double(), reg.double()])
        means = all_reduce_sum(sums).cpu() / (w.steps_per_epoch * w.world_size)
        norms = exact_norms(base, spec)
        tau = self.tau_cfg if self.tau_cfg is not None else budget_threshold(base, spec, norms, m.budget,
                                                                              m.budget_unit)
        self.tau = tau
        metrics = {"train_loss": means[0].item(), "task_loss": means[1].item(), "reg_loss": means[2].item(),
                   "val_acc": accuracy(w, self.model, self.evals["val"]),
                   "test_acc": accuracy(w, self.model, self.evals["test"]),
                   "pruned_fraction": (norms < tau).double().mean().item(), "threshold": tau}
        self.history.append(dict(metrics, epoch=epoch))
        line = (f"[mixture_sparsity] epoch {epoch}/{self.units} L={metrics['train_loss']:.4f} "
                f"E={metrics['task_loss']:.4f} R={metrics['reg_loss']:.3f} val_acc={metrics['val_acc']:.3f} "
                f"pruned_fraction={metrics['pruned_fraction']:.3f} (τ={tau:.3g})")
        return Unit(metrics, line)

    def conclude(self, epoch: int, reason: str, metrics: dict) -> dict:
        # the pruner runs before the last report, so its figures reach Tune, MLflow and the summary
        out = _prune_and_measure(self.w, self.base, self.spec, self.tau, self.evals["test"], self.input_shape,
                                 self.norms_before)
        self.history[-1].update(out)
        return out


def train_loop_per_worker(config: dict) -> None:
    w = Worker(config, MixtureSparsityConfig)
    run_learner(w, MixtureSparsityLearner(w))


def _prune_and_measure(w: Worker, dense, spec, tau: float, test_loader, input_shape, norms_before) -> dict:
    """Remove every group with ‖w_g‖ < τ physically; measure what that bought and what it cost."""
    m = w.cfg.method
    norms = exact_norms(dense, spec)
    masks = threshold_masks(dense, spec, tau)
    masked = masked_model(dense, masks).to(w.device).eval()
    pruned = prune_model(dense, masks).to(w.device).eval()
    probe = torch.randn(256, *input_shape, device=w.device)
    with torch.no_grad():
        diff = (pruned(probe) - masked(probe)).abs().max().item()
    out = {
        "groups_total": float(len(norms)), "groups_pruned": float((norms < tau).sum().item()),
        "params_before": float(count_params(dense)), "params_after": float(count_params(pruned)),
        "macs_before": float(count_flops(dense, input_shape)), "macs_after": float(count_flops(pruned, input_shape)),
        "acc_before_prune": accuracy(w, dense, test_loader), "acc_after_prune": accuracy(w, pruned, test_loader),
        "max_abs_diff_pruned_vs_masked": diff,
    }
    out["params_ratio"] = out["params_after"] / out["params_before"]
    out["params_removed_fraction"] = 1.0 - out["params_ratio"]
    tau_n = natural_tau(m)
    if tau_n is not None:  # what the prior deleted by itself: budget calibration steers this
        out["natural_threshold"] = tau_n
        out["natural_pruned_fraction"] = float((norms < tau_n).double().mean().item())
        out["natural_params_removed_fraction"] = params_removed(dense, spec, tau_n)
    if w.is_chief:
        for bsz in m.latency_batches:
            t_dense, t_pruned = latency_ms(dense, input_shape, bsz), latency_ms(pruned, input_shape, bsz)
            out[f"latency_ms_dense_b{bsz}"] = t_dense
            out[f"latency_ms_pruned_b{bsz}"] = t_pruned
            out[f"latency_ratio_b{bsz}"] = t_pruned / t_dense
        w.say(f"[mixture_sparsity] pruned {int(out['groups_pruned'])}/{int(out['groups_total'])} groups "
              f"(τ={tau:.3g}): params {int(out['params_before'])} -> {int(out['params_after'])}, "
              f"test acc {out['acc_before_prune']:.4f} -> {out['acc_after_prune']:.4f}, "
              f"|pruned - masked| = {diff:.2e}")
        w.set_tags({"budget": str(m.budget), "budget_unit": m.budget_unit,
                    "threshold_rule": "budget" if m.budget is not None else
                    ("configured" if m.threshold is not None else "mixture_boundary")})
        _log_histogram(w, m, norms_before, norms.cpu().numpy(), tau)
        w.log_model(pruned, probe[:2])
    dense.train()
    return out


def _log_histogram(w: Worker, m, before: np.ndarray, after: np.ndarray, tau: float) -> None:
    """The patent's Fig. 11: histogram of group norms with the mixture components overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    hi = max(float(before.max()), float(after.max()), max(mu + 3 * s for mu, s in zip(m.means, m.stds)))
    xs = np.linspace(0, hi, 400)
    fams = m.family if len(m.family) == len(m.weights) else m.family * len(m.weights)
    for a, norms, title in ((ax[0], before, "before training"), (ax[1], after, "after training")):
        a.hist(norms, bins=40, range=(0, hi), density=True, alpha=0.6, label="group norms ‖w_g‖")
        for j, (al, mu, s, fam) in enumerate(zip(m.weights, m.means, m.stds, fams)):
            pdf = stats.norm.pdf(xs, mu, s) if fam == "gaussian" else stats.laplace.pdf(xs, mu, s)
            a.plot(xs, al * pdf, label=f"α{j}·{fam}(μ={mu:g}, σ={s:g})")
        a.axvline(tau, color="k", ls="--", label=f"τ = {tau:.3g}")
        a.set(title=f"{title}: {(norms < tau).mean():.1%} below τ", xlabel="group norm", ylabel="density")
        a.set_ylim(0, min(a.get_ylim()[1], 20))
        a.legend(fontsize=7)
    w.log_figure(fig, "group_norm_histogram.png")
    plt.close(fig)
