"""Benchmark: decorrelation variants A, B, C vs supervised-only vs DeCov on the embedded
digits domain-shift task, >= 5 seeds each, the same budget (epochs, batch, lr, network) for all.

Every run is a real ``trainlab`` run (Ray Train TorchTrainer on the local Ray, MLflow into a
throw-away store). Reports mean ± 95% CI (Student t) of target test accuracy, target validation
accuracy, source accuracy and the mean |r| of the target features, and the paired difference of
each arm to supervised-only (same seeds).

    python bench/decorrelation.py                       # 5 seeds, all arms
    python bench/decorrelation.py --seeds 3 --epochs 5  # smaller
    python bench/decorrelation.py --arm tuned=bench/results/decorrelation_best.yaml   # add an arm
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import isolated_store, machine_info, mean_ci, write  # noqa: E402

ARMS = {
    "supervised": ["method.variant=supervised"],
    "A": ["method.variant=A"],
    "B": ["method.variant=B"],
    "C": ["method.variant=C"],
    "decov": ["method.variant=decov"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs for every arm")
    ap.add_argument("--arm", action="append", default=[], help="NAME=CONFIG.yaml: an extra arm")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value for every arm")
    ap.add_argument("--only", default=None, help="comma-separated arms to run (supervised is always kept)")
    ap.add_argument("--name", default="decorrelation", help="results file stem under bench/results/")
    args = ap.parse_args()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    extra = {}
    for spec in args.arm:  # resolve paths before changing directory
        name, _, path = spec.partition("=")
        extra[name] = (str(Path(path).resolve()), [])
    isolated_store("trainlab-bench-")

    from pipelines.run import load_config, train

    common = list(args.set) + ["tracking.log_model=false"] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    arms = {name: (None, sets) for name, sets in ARMS.items()}
    arms.update(extra)
    if args.only:
        keep = {"supervised", *args.only.split(",")}
        arms = {k: v for k, v in arms.items() if k in keep}
    rows: dict[str, list[dict]] = {}
    t0 = time.time()
    for seed in range(args.seeds):
        for name, (cfg_file, sets) in arms.items():
            cfg = load_config("decorrelation", cfg_file, sets + common, overrides={"seed": seed})
            res = train("decorrelation", cfg)
            m = res.metrics
            rows.setdefault(name, []).append({k: m[k] for k in ("target_acc", "target_val_acc", "source_acc",
                                                                   "mean_abs_corr_target")} | {"seed": seed})
            print(f"[bench] seed {seed} {name:>10}: target_acc={m['target_acc']:.4f} "
                  f"mean|r|={m['mean_abs_corr_target']:.3f} ({time.time() - t0:.0f}s)", flush=True)

    base = {r["seed"]: r["target_acc"] for r in rows["supervised"]}
    summary = {}
    for name, rs in rows.items():
        s = {k: mean_ci([r[k] for r in rs]) for k in ("target_acc", "target_val_acc", "source_acc", "mean_abs_corr_target")}
        s["delta_target_acc_vs_supervised"] = mean_ci([r["target_acc"] - base[r["seed"]] for r in rs])
        summary[name] = s
    cfg0 = load_config("decorrelation", None, common).model_dump(mode="json")
    lines = [
        "# decorrelation benchmark (embedded digits, source → shifted target)",
        "",
        f"{args.seeds} seeds per arm, same budget: {cfg0['train']['epochs']} epochs, global batch "
        f"{cfg0['train']['batch_size']}, {cfg0['train']['optimizer']} lr {cfg0['train']['lr']}, "
        f"CNN width {cfg0['model']['width']}, features `fc1` (C={cfg0['model']['feature_dim']}). "
        "Mean ± 95% CI (Student t). Δ = paired difference to supervised-only on the same seed.",
        "",
        "| arm | target acc (test) | Δ target acc vs supervised | target acc (val) | source acc | mean \\|r\\| target features |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        f = lambda k, d=4: f"{s[k][0]:.{d}f} ± {s[k][1]:.{d}f}"  # noqa: E731
        lines.append(f"| {name} | {f('target_acc')} | {f('delta_target_acc_vs_supervised')} | {f('target_val_acc')} | "
                     f"{f('source_acc')} | {f('mean_abs_corr_target', 3)} |")
    lines += ["", f"Total wall time {time.time() - t0:.0f} s. Reproduce: `python bench/decorrelation.py "
              + " ".join(sys.argv[1:]) + "`", ""]
    write(args.name, {"machine": machine_info(), "args": vars(args), "config": cfg0,
                            "summary": summary, "runs": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
