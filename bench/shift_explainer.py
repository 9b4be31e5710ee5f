"""Benchmark: shift_explainer (JP7517093B2) on the embedded colour/thickness digits, where the cause is known.

Domain 1 = thin strokes in random hues (the classifier trains on these, so hue is irrelevant to it); domain 2 =
thick strokes in random hues (its accuracy drops). A faithful explanation grid changes stroke thickness, and the
classifier's realised loss, along the LOSS axis (rows), and hue but not the loss along the FEATURE axis (columns).

Every run is a real ``trainlab run shift_explainer`` (classifier job, Ray Data batch inference, generator job on
the local Ray; MLflow into a throw-away store). Per arm (generative model type) and seed, the figures are
measured on the run's own grid (extreme pair, Mode A) and, for robustness, averaged over ``--pairs`` further
pairs drawn with threshold selection (L ≤ the 20% quantile of domain 1, L ≥ the 80% quantile of domain 2, same
class) through ``trainlab explain``'s code path on the final checkpoint:

* ``loss_axis_spearman``: Spearman ρ between the conditioning L_i and the classifier's realised loss on the
  generated cells, per column, averaged (1 = the loss axis controls what the classifier sees);
* ``feature_axis_loss_spread`` / ``loss_axis_loss_spread``: std of the realised loss along rows / columns;
* ``thickness_change_loss_axis`` / ``..._feature_axis``: ink-fraction change from first to last row / column;
* ``hue_change_feature_axis`` / ``..._loss_axis``: circular hue change (turns, max 0.5);
* ``seconds_per_grid``: encode + interpolate + decode of one grid once the models are trained.

    python bench/shift_explainer.py               # 3 seeds, ae / ae_hsic / vae / bigan
    python bench/shift_explainer.py --seeds 1 --arms ae --epochs 10
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import isolated_store, machine_info, mean_ci, write  # noqa: E402

ARMS = {"ae": ["method.model_type=ae"], "ae_hsic": ["method.model_type=ae", "method.z_independence=0.02"],
        "vae": ["method.model_type=vae"], "bigan": ["method.model_type=bigan"]}
FIGS = ("loss_axis_spearman", "feature_axis_loss_spread", "loss_axis_loss_spread", "thickness_change_loss_axis",
        "thickness_change_feature_axis", "hue_change_feature_axis", "hue_change_loss_axis", "latent_invariance",
        "seconds_per_grid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--epochs", type=int, default=None, help="generator epochs (default: the config's)")
    ap.add_argument("--pairs", type=int, default=8, help="extra threshold-selected pairs per run")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config override (repeatable)")
    ap.add_argument("--name", default="shift_explainer")
    args = ap.parse_args()
    store = isolated_store("trainlab-bench-se-")
    from pipelines.cluster import init_ray
    from pipelines.run import load_config, train
    from trainers.shift_explainer.explanation import explain_from_checkpoint

    init_ray(num_cpus=4)
    base = ["tracking.log_model=false"] + ([f"train.epochs={args.epochs}"] if args.epochs else []) + args.sets
    pair_sets = ["method.selection=threshold", "method.tau_unit=quantile", "method.tau1=0.2", "method.tau2=0.8"]
    t0 = time.time()
    rows: dict[str, list[dict]] = {}
    for arm in args.arms:
        for seed in range(args.seeds):
            cfg = load_config("shift_explainer", None, base + ARMS[arm], overrides={"seed": seed})
            t = time.time()
            res = train("shift_explainer", cfg)
            wall = time.time() - t
            pairs = []
            for p in range(args.pairs):
                _, figs = explain_from_checkpoint(res.checkpoint, pair_sets + [f"method.pair_seed={p}"],
                                                  output=f"{store}/{arm}_{seed}_{p}.png")
                pairs.append(figs)
            row = {"seed": seed, "wall_s": wall, "run": {k: res.metrics.get(k) for k in FIGS + (
                "recon_loss", "classifier_acc_domain1", "classifier_acc_domain2", "shift_pvalue")},
                   "pairs": {k: float(np.nanmean([f.get(k, np.nan) for f in pairs])) for k in FIGS}}
            rows.setdefault(arm, []).append(row)
            print(f"[bench] {arm} seed {seed}: rho(extreme)={row['run']['loss_axis_spearman']:.3f} "
                  f"rho(pairs)={row['pairs']['loss_axis_spearman']:.3f} recon={row['run']['recon_loss']:.4f} "
                  f"({wall:.0f}s, total {time.time() - t0:.0f}s)", flush=True)
            report(args, base, rows, t0, final=False)     # a table after every run: an interrupted bench keeps it
    report(args, base, rows, t0, final=True)


def report(args, base: list[str], rows: dict, t0: float, final: bool) -> None:
    from pipelines.run import load_config

    def ci(vals, d=3):
        vals = [v for v in vals if v is not None and v == v]
        if not vals:
            return "-"
        mu, h = mean_ci(vals)
        return f"{mu:.{d}f} ± {h:.{d}f}" if h == h else f"{mu:.{d}f}"

    cfg0 = load_config("shift_explainer", None, base).model_dump(mode="json")
    m0 = cfg0["method"]
    lines = [f"# shift_explainer benchmark (embedded colour/thickness digits, {args.seeds} seeds)", "",
             f"Classifier: SmallCNN width {cfg0['model']['classifier_width']}, {m0['classifier_epochs']} epochs on "
             f"domain 1; loss ℓ = {m0['loss_fn']}. Generator: latent d = {m0['latent_dim']}, width "
             f"{cfg0['model']['width']}, {cfg0['train']['epochs']} epochs, Adam lr {cfg0['train']['lr']}, batch "
             f"{cfg0['train']['batch_size']}, recon {m0['recon']}, K = {m0['k']} (5 × 5 grid). Mean ± 95% CI "
             f"(Student t) over seeds. 'pairs' = mean over {args.pairs} threshold-selected pairs per run "
             "(20%/80% loss quantiles, same class); 'extreme' = the run's own Mode-A pair.", "",
             "## Classifier and shift (identical across arms for a seed)", "",
             "| arm | acc domain 1 | acc domain 2 | shift p-value (BBSD KS) | held-out recon |",
             "|---|---|---|---|---|"]
    for arm, rs in rows.items():
        lines.append(f"| {arm} | {ci([r['run']['classifier_acc_domain1'] for r in rs])} | "
                     f"{ci([r['run']['classifier_acc_domain2'] for r in rs])} | "
                     f"{max(r['run']['shift_pvalue'] for r in rs):.2g} (max) | "
                     f"{ci([r['run']['recon_loss'] for r in rs], 4)} |")
    lines += ["", "## Fidelity of the explanation grid", "",
              "| arm | pair | ρ(L_i, realised loss) ↑ | loss spread along rows (feature axis) ↓ | along columns "
              "(loss axis) ↑ | Δ thickness, loss axis | Δ thickness, feature axis | Δ hue, feature axis | "
              "Δ hue, loss axis | latent invariance ↓ | s / grid |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, rs in rows.items():
        for which in ("run", "pairs"):
            g = lambda k: [r[which][k] for r in rs]  # noqa: E731
            lines.append(f"| {arm} | {'extreme' if which == 'run' else 'pairs'} | {ci(g('loss_axis_spearman'))} | "
                         f"{ci(g('feature_axis_loss_spread'))} | {ci(g('loss_axis_loss_spread'))} | "
                         f"{ci(g('thickness_change_loss_axis'))} | {ci(g('thickness_change_feature_axis'))} | "
                         f"{ci(g('hue_change_feature_axis'))} | {ci(g('hue_change_loss_axis'))} | "
                         f"{ci(g('latent_invariance'))} | {ci(g('seconds_per_grid'), 4)} |")
    if not final:
        lines += ["", "**Partial: the benchmark was still running when this was written.**"]
    lines += ["", f"Training wall time per run: " + ", ".join(
        f"{arm} {np.mean([r['wall_s'] for r in rs]):.0f} s" for arm, rs in rows.items()),
              f"Total wall time {time.time() - t0:.0f} s. Reproduce: `python bench/shift_explainer.py "
              + " ".join(sys.argv[1:]) + "`", ""]
    if final:
        write(args.name, {"machine": machine_info(), "args": vars(args), "config": cfg0, "runs": rows}, "\n".join(lines))
    else:
        import json

        from common import RESULTS

        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "config": cfg0, "runs": rows,
                                                               "partial": True}, indent=2, default=str))
        (RESULTS / f"{args.name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
