"""Benchmark: ssd2gan (JP7464138B2) vs its baselines at equal steps, on the embedded data.

Every run is a real ``trainlab`` run (Ray Train TorchTrainer on the local Ray, MLflow into a
throw-away store). Arms, all in the same code path and with the same networks, optimisers, batch
and steps: sngan (one spectral-norm discriminator), durall (sngan + the 1-D spectrum BCE on G),
freqmse (sngan + 2-D DCT mean matching on G), and the patent's V0 (Ds + Df), V1 (+ α = 0.8),
V2 (+ λc = 0.001), V3 (both). Per run: the FD curve (trainlab's own feature classifier, see
``trainers/ssd2gan/quality.py``; ``fd_samples`` generated vs all real training images), the best FD,
the rise of FD after its best point (overfitting), and the high-frequency spectral error of the
samples at the best and the last evaluation.

    python bench/ssd2gan.py                      # digits 16 px, 3 seeds, 600 steps
    python bench/ssd2gan.py --data patches --steps 1000 --variants sngan V3
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import isolated_store, machine_info, mean_ci, write  # noqa: E402

VARIANTS = ("sngan", "durall", "freqmse", "V0", "V1", "V2", "V3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600, help="G steps per run (a multiple of --eval-every)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--data", choices=("digits", "patches"), default="digits")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (= logical CPUs) per training worker")
    ap.add_argument("--name", default=None, help="results file name (default ssd2gan[_<data>])")
    args = ap.parse_args()
    if args.steps % args.eval_every:
        ap.error("--steps must be a multiple of --eval-every")
    isolated_store("trainlab-bench-gan-")
    from mlflow.tracking import MlflowClient

    from pipelines.cluster import init_ray
    from pipelines.run import load_config, train

    init_ray(num_cpus=args.threads + 2)  # logical CPUs: the worker's threads + spare for Ray Data
    epochs = args.steps // args.eval_every
    base = [f"data.source={args.data}", f"train.epochs={epochs}", f"method.eval_every={args.eval_every}",
            "tracking.log_model=false", f"scaling.cpus_per_worker={args.threads}"]
    t0 = time.time()
    rows: dict[str, list[dict]] = {}
    for v in args.variants:
        for seed in range(args.seeds):
            cfg = load_config("ssd2gan", None, base + [f"method.variant={v}"], overrides={"seed": seed})
            t = time.time()
            res = train("ssd2gan", cfg)
            client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
            curve = {k: [h.value for h in sorted(client.get_metric_history(res.run_id, k), key=lambda h: h.step)]
                     for k in ("fd", "fd_val", "spectral_error_high", "spectral_error")}
            best_i = min(range(len(curve["fd"])), key=curve["fd"].__getitem__)
            row = {"seed": seed, "best_fd": curve["fd"][best_i], "best_at_step": (best_i + 1) * args.eval_every,
                   "final_fd": curve["fd"][-1], "fd_rise": curve["fd"][-1] - curve["fd"][best_i],
                   "best_fd_val": min(curve["fd_val"]),
                   "spec_high_at_best": curve["spectral_error_high"][best_i],
                   "spec_high_final": curve["spectral_error_high"][-1],
                   "spec_total_final": curve["spectral_error"][-1], "curve": curve, "wall_s": time.time() - t}
            rows.setdefault(v, []).append(row)
            print(f"[bench] {v} seed {seed}: best_fd={row['best_fd']:.1f} @ {row['best_at_step']} "
                  f"final={row['final_fd']:.1f} spec_high={row['spec_high_final']:.3f} "
                  f"({row['wall_s']:.0f}s, total {time.time() - t0:.0f}s)", flush=True)

    def ci(vals, d=1):
        mu, h = mean_ci(vals)
        return f"{mu:.{d}f} ± {h:.{d}f}" if h == h else f"{mu:.{d}f}"

    cfg0 = load_config("ssd2gan", None, base).model_dump(mode="json")
    lines = [f"# ssd2gan benchmark ({args.data}, {cfg0['data']['image_size']} px, {args.steps} steps, "
             f"{args.seeds} seeds)", "",
             f"Same networks for every arm (G width {cfg0['model']['g_width']}, D width {cfg0['model']['d_width']}, "
             f"z {cfg0['model']['z_dim']}), Adam lr {cfg0['train']['lr']} β=({cfg0['method']['beta1']}, "
             f"{cfg0['method']['beta2']}), batch {cfg0['train']['batch_size']}, loss {cfg0['method']['loss_type']}, "
             f"FD every {args.eval_every} steps on {cfg0['method']['fd_samples']} samples vs all real training "
             "images in trainlab's own feature space (not Inception: compare within this table only). "
             "Mean ± 95% CI (Student t) over seeds. 'FD rise' = last FD − best FD (> 0: quality got worse "
             "after its best point). Spectral error = mean |Δ ln power| of generated vs real average DFT "
             "power spectra, high band = above half Nyquist (lower is closer to real).", "",
             "| arm | best FD | step of best | final FD | FD rise | best FD (held-out real) "
             "| high-freq spectral error at best | final | all-freq spectral error final |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v, rs in rows.items():
        lines.append(f"| {v} | {ci([r['best_fd'] for r in rs])} | {ci([r['best_at_step'] for r in rs], 0)} | "
                     f"{ci([r['final_fd'] for r in rs])} | {ci([r['fd_rise'] for r in rs])} | "
                     f"{ci([r['best_fd_val'] for r in rs])} | {ci([r['spec_high_at_best'] for r in rs], 3)} | "
                     f"{ci([r['spec_high_final'] for r in rs], 3)} | {ci([r['spec_total_final'] for r in rs], 3)} |")
    lines += ["", "FD curves (mean over seeds, one value per evaluation):", ""]
    for v, rs in rows.items():
        n = len(rs[0]["curve"]["fd"])
        lines.append(f"- {v}: " + ", ".join(f"{sum(r['curve']['fd'][i] for r in rs) / len(rs):.0f}"
                                            for i in range(n)))
    lines += ["", f"Total wall time {time.time() - t0:.0f} s. Reproduce: `python bench/ssd2gan.py "
              + " ".join(sys.argv[1:]) + "`", ""]
    name = args.name or ("ssd2gan" if args.data == "digits" else f"ssd2gan_{args.data}")
    write(name, {"machine": machine_info(), "args": vars(args), "config": cfg0, "runs": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
