"""S105–S108 of ``shift_explainer`` (JP7517093B2): the explanation, by rank 0 after the last epoch or by
``trainlab explain`` from a finished run's checkpoint. :func:`explain`: Z(1), Z(2) from the encoder,
interpolation (Eq. 6), the grid G(Z_j, L_i) (Eq. 7) with the real samples in the corners and the fidelity
figures measured on the grid with f; :func:`render`: the PNG; :func:`log_outputs`: the artifacts to MLflow;
:func:`explain_from_checkpoint`: S104–S108 again from the final checkpoint in seconds, no Ray, with other
K / layout / selection settings.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainers.common.worker import Worker
from trainers.shift_explainer.classifier import unpack_classifier
from trainers.shift_explainer.config import ShiftExplainerConfig
from trainers.shift_explainer.grid import Grid, generate_diagonal, generate_grid, interpolate
from trainers.shift_explainer.losses import per_sample_loss
from trainers.shift_explainer.metrics import grid_fidelity, hue, ink, latent_invariance
from trainers.shift_explainer.selection import select
from trainers.shift_explainer.step import Models, build_models


# =============================================================================================
# S105–S108: the explanation (rank 0 after training, or `trainlab explain` from a checkpoint)
# =============================================================================================

@dataclass
class Explanation:
    grid: Grid
    realised_loss: np.ndarray     # (R, Cc) ℓ(f(cell), y) of every cell (real cells: the real samples)
    ink: np.ndarray
    hue: np.ndarray
    label: np.ndarray             # (Cc,) the label each column's cells are scored with
    selection: dict
    metrics: dict[str, float]


@torch.no_grad()
def explain(models: Models, classifier: torch.nn.Module, sel: dict, m, device) -> Explanation:
    """S105–S107 and the fidelity figures (spec §8.3 tests 9–12) on the grid, timed (``seconds_per_grid``)."""
    t0 = time.perf_counter()
    g = models.gen.eval()
    x2 = torch.as_tensor(np.asarray(sel["x2"]), dtype=torch.float32, device=device)
    sel = dict(sel)
    extra: dict[str, float] = {}
    if models.style is not None:          # claim 6: the first data is A(x(2))
        models.style.eval()
        x1 = models.style(x2[None])[0]
        l1 = per_sample_loss(classifier(x1[None]).float(), torch.tensor([sel["y2"]], device=device), m.loss_fn)
        sel.update(x1=x1.cpu().numpy(), y1=sel["y2"], l1=float(l1.item()), i1=-1)
        extra["style_cycle_error"] = float((x2 - models.style.to_domain2(x1[None])[0]).abs().mean())
        extra["style_loss_drop"] = sel["l2"] - sel["l1"]
        extra["style_d1_real_prob"] = float(torch.sigmoid(models.style_disc(x1[None])).item())
    else:
        x1 = torch.as_tensor(np.asarray(sel["x1"]), dtype=torch.float32, device=device)
    z1, z2 = g.encode(x1[None])[0], g.encode(x2[None])[0]
    l1, l2 = float(sel["l1"]), float(sel["l2"])
    k_z, k_l = m.k, m.effective_k_loss
    Z, _ = interpolate(z1, z2, l1, l2, k_z)
    _, L = interpolate(z1, z2, l1, l2, k_l)
    Z, L = Z.to(device=device, dtype=torch.float32), L.to(device=device, dtype=torch.float32)
    decode = g.decode
    grid = (generate_grid(decode, x1, x2, Z, L) if m.layout == "grid" else generate_diagonal(decode, x1, x2, Z, L))
    seconds = time.perf_counter() - t0
    r, c = grid.images.shape[:2]
    cells = grid.images.reshape(r * c, *grid.images.shape[2:])
    # each column is scored with the label of its nearer endpoint (the same label everywhere if same_class)
    t = np.linspace(0.0, 1.0, c)
    label = np.where(t <= 0.5, sel["y1"], sel["y2"]).astype(np.int64)
    y = torch.as_tensor(np.tile(label, r), device=device)
    realised = per_sample_loss(classifier(cells).float(), y, m.loss_fn).reshape(r, c).cpu().numpy()
    ink_v = ink(cells.clamp(0, 1)).reshape(r, c).cpu().numpy()
    hue_v = hue(cells.clamp(0, 1)).reshape(r, c).cpu().numpy()
    grid_l = np.asarray(grid.l.cpu() if torch.is_tensor(grid.l) else grid.l, dtype=np.float64).ravel()
    metrics = {"seconds_per_grid": seconds, "selected_loss_domain1": l1, "selected_loss_domain2": l2, **extra}
    if m.layout == "grid":
        metrics.update({k: float(v) for k, v in grid_fidelity(realised, grid_l, ink_v, hue_v).items()})
        if len(Z) >= 1 and float((z1 - z2).norm()) > 0:
            metrics["latent_invariance"] = float(latent_invariance(g.encode, g.decode, Z, L[0].expand(len(Z)),
                                                                   L[-1].expand(len(Z)), z1, z2))
    else:                                   # one row: realised loss along the joint segment
        from scipy.stats import spearmanr

        rho = spearmanr(np.asarray(grid_l).ravel(), realised[0]).statistic if len(grid_l) > 2 else float("nan")
        metrics["diagonal_loss_spearman"] = float(rho)
    g.train()
    return Explanation(grid, realised, ink_v, hue_v, label, sel, metrics)


def render(expl: Explanation, path: str | Path, title: str = "") -> Path:
    """The grid as a PNG a person reads (spec §2.7 / S108): feature axis horizontal (left Z(1) … right Z(2)),
    loss axis vertical (top L(1) … bottom L(2)), the real samples outlined in the corners, the conditioning
    loss L_i and the classifier's realised loss printed on every cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = expl.grid
    imgs = g.images.detach().float().cpu().clamp(0, 1).numpy()
    r, c = imgs.shape[:2]
    fig, axes = plt.subplots(r, c, figsize=(1.35 * c + 1.2, 1.35 * r + 1.0), squeeze=False)
    ls = np.asarray(g.l.cpu() if torch.is_tensor(g.l) else g.l).ravel()
    for i in range(r):
        for j in range(c):
            a = axes[i, j]
            im = imgs[i, j]
            a.imshow(im[0] if im.shape[0] == 1 else np.moveaxis(im[:3], 0, -1), cmap="gray" if im.shape[0] == 1 else None,
                     vmin=0, vmax=1)
            a.set_xticks([]), a.set_yticks([])
            real = bool(g.is_real[i, j])
            for s in a.spines.values():
                s.set_edgecolor("red" if real else "0.7")
                s.set_linewidth(3 if real else 0.5)
            a.set_title(("REAL " if real else "") + f"f-loss {expl.realised_loss[i, j]:.2f}", fontsize=6.5,
                        color="red" if real else "black")
            if j == 0 and g.layout == "grid":
                a.set_ylabel(f"L={ls[i]:.2f}", fontsize=7)
            if i == r - 1:
                a.set_xlabel(f"t={j / max(c - 1, 1):.2f}" + (f"\nL={ls[j]:.2f}" if g.layout == "diagonal" else ""),
                             fontsize=7)
    sel = expl.selection
    fig.supxlabel(f"feature axis Z: Z(1) of the domain-1 sample → Z(2) of the domain-2 sample (labels {sel['y1']} / "
                  f"{sel['y2']})", fontsize=8)
    if g.layout == "grid":
        fig.supylabel(f"loss axis L (conditioning): {ls[0]:.2f} (correct) → {ls[-1]:.2f} (misclassified)", fontsize=8)
    fig.suptitle(title or "shift_explainer: what changes the classifier's loss", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def log_outputs(w: Worker, expl: Explanation, models: Models, classifier, history: list[dict], P) -> None:
    """Rank 0, after the last epoch: the grid PNG, the selected samples, curves, the models, to MLflow."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as d:
        png = render(expl, Path(d) / "explanation_grid.png")
        w.log_artifact(png, "explanation")
        w.log_image("explanation_grid", plt.imread(png)[..., :3], step=int(history[-1]["epoch"]) if history else 0)
        sel = expl.selection
        np.savez(Path(d) / "selected_samples.npz", x1=np.asarray(sel["x1"]), x2=np.asarray(sel["x2"]),
                 y1=sel["y1"], y2=sel["y2"], l1=sel["l1"], l2=sel["l2"])
        w.log_artifact(Path(d) / "selected_samples.npz", "explanation")
        info = {"selection": {k: v for k, v in sel.items() if k not in ("x1", "x2")}, "loss_range": P.loss_range,
                "grid_conditioning_losses": np.asarray(expl.grid.l.cpu()).tolist(),
                "realised_loss": expl.realised_loss.tolist(), "ink": expl.ink.tolist(),
                "hue": np.nan_to_num(expl.hue, nan=-1.0).tolist(), "column_labels": expl.label.tolist(),
                "metrics": expl.metrics}
        (Path(d) / "explanation.json").write_text(json.dumps(info, indent=1))
        w.log_artifact(Path(d) / "explanation.json", "explanation")
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [h["epoch"] for h in history]
    ax[0].plot(ep, [h["loss_recon"] for h in history], "o-", label="train")
    ax[0].plot(ep, [h["recon_loss"] for h in history], "s--", label="held-out")
    ax[0].set(xlabel="epoch", ylabel="reconstruction dist(x, x′)", title="generative model")
    ax[0].legend()
    for d_, lab in (("d1", "domain 1"), ("d2", "domain 2")):
        ax[1].hist(P.pool[d_]["loss"], bins=40, alpha=0.6, label=lab)
    ax[1].set(xlabel="per-sample classifier loss L", ylabel="samples", yscale="log", title="L by domain")
    ax[1].legend()
    w.log_figure(fig, "curves.png")
    plt.close(fig)
    shape = tuple(w.run.input_shape)
    w.log_model(models.gen, (torch.zeros(2, *shape), torch.zeros(2)), name="generator")   # forward(x, L)
    w.log_model(classifier, torch.zeros(2, *shape), name="classifier")


# =============================================================================================
# `trainlab explain`: S104–S108 again from a finished run's checkpoint, no Ray
# =============================================================================================

def load_final_state(checkpoint: str) -> dict:
    p = Path(checkpoint)
    p = p / "state.pt" if p.is_dir() else p
    if not p.is_file():
        raise ValueError(f"--checkpoint {checkpoint}: no state.pt there (pass a run's checkpoint directory, "
                         "e.g. the 'checkpoint' row of the run's summary)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - not a torch checkpoint at all
        raise ValueError(f"--checkpoint {checkpoint}: {p} is not a trainlab checkpoint ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None
    if not isinstance(state, dict) or "pool" not in state or "gen" not in state:
        raise ValueError(f"--checkpoint {checkpoint}: not the final checkpoint of a shift_explainer run (it holds "
                         f"{', '.join(sorted(state)[:8]) if isinstance(state, dict) else type(state).__name__}); use the last "
                         "checkpoint of the run")
    return state


def explain_from_checkpoint(checkpoint: str, sets: list[str] | None = None, output: str | None = None) -> tuple[Path, dict]:
    """Reload the models, the classifier and the selection pools; re-select with the (overridden) method section;
    render. Returns the PNG path and the figures. ``sets``: ``method.*`` overrides, validated by the config."""
    from trainers.common.config import build_config, parse_set_args

    state = load_final_state(checkpoint)
    over = parse_set_args(sets)
    bad = [k for k in over if k != "method"]
    if bad:
        raise ValueError(f"--set {bad[0]}.*: explain takes only method.* overrides (k, k_loss, layout, selection, "
                         "tau1, tau2, strict, same_class)")
    cfg = build_config(ShiftExplainerConfig, state["cfg"], over)
    m = cfg.method
    shape = tuple(np.asarray(state["pool"]["d1"]["x"]).shape[1:])
    models = build_models(cfg, shape, 0.0, 1.0)
    for k, mod in models.modules().items():
        mod.load_state_dict(state[k])
    classifier = unpack_classifier(state["classifier"], shape, int(state.get("num_classes", 0)))
    sel = select(m, state["pool"])
    expl = explain(models, classifier, sel, m, torch.device("cpu"))
    out = Path(output) if output else Path(checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent) / \
        f"explanation_k{m.k}_{m.layout}_{m.selection}.png"
    render(expl, out)
    return out, {**state.get("prepared_metrics", {}), **expl.metrics}
