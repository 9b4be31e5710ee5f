"""Benchmark: continual (JP7600768B2) on the embedded digits task streams, VGG-style ContinualCNN (spec §6).

Every run is a real ``trainlab`` run (one Ray Train TorchTrainer over the whole task stream on the local Ray,
MLflow into a throw-away store), default config unless stated. Arms: ``method`` (rates by depth and JSD),
``packnet`` (a fixed rate 0.5 per task), ``finetune`` (no masks). Three parts:

1. accuracy matrix summary per stream (split-digits 5 tasks, permuted-digits 5 tasks, near-duplicate 3 tasks):
   average accuracy after the last task, backward transfer (BWT; 0 = no forgetting), share of the weights still
   free at the end (capacity left for later tasks);
2. the patent's intended effect on the near-duplicate stream: new weights taken by task 2 (JSD to task 1 near 0)
   vs task 3 (dissimilar, JSD ≈ 1), per arm;
3. per-task JSD to the chosen source task and new weights (method, seed 0) for every stream.

    python bench/continual.py               # 3 seeds
    python bench/continual.py --seeds 5
    python bench/continual.py --tiny        # smoke check: --quick config, 1 seed, split stream, 2 arms; prints only
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import isolated_store, machine_info, mean_ci, write  # noqa: E402

STREAMS = {"split": ["data.source=split", "data.num_tasks=5"],
           "permuted": ["data.source=permuted", "data.num_tasks=5"],
           "near_duplicate": ["data.source=near_duplicate", "data.num_tasks=3"]}
ARMS = {"method": ["method.variant=method"],
        "packnet": ["method.variant=packnet", "method.packnet_rate=0.5"],
        "finetune": ["method.variant=finetune"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="smoke check only (quick config, 1 seed, split stream)")
    args = ap.parse_args()
    isolated_store("trainlab-bench-cl-")
    from pipelines.run import load_config, train
    from trainers.continual import load_checkpoint

    streams = {"split": ["data.source=split", "data.num_tasks=3"]} if args.tiny else STREAMS
    arms = {k: ARMS[k] for k in ("method", "finetune")} if args.tiny else ARMS
    seeds = 1 if args.tiny else args.seeds
    t0 = time.time()

    def one(stream: str, arm: str, seed: int) -> dict:
        cfg = load_config("continual", None, streams[stream] + arms[arm], quick=args.tiny, overrides={"seed": seed})
        res = train("continual", cfg)
        state = load_checkpoint(res.checkpoint)
        hist, matrix = state["history"], state["matrix"]
        total = float(sum(v.numel() for k, v in state["model"].items() if k.endswith(".weight")))
        row = {"seed": seed, "avg_acc": res.metrics["avg_acc"], "bwt": res.metrics["bwt"], "matrix": matrix,
               "new_weights": [h["new_weights"] for h in hist], "jsd_to_source": [h.get("jsd_to_source") for h in hist],
               "free_end": hist[-1]["free_weights"], "total_weights": total, "wall_s": time.time() - t0}
        print(f"[bench] {stream} {arm} seed {seed}: avg_acc={row['avg_acc']:.4f} bwt={row['bwt']:+.4f} "
              f"new={row['new_weights']} ({time.time() - t0:.0f}s)", flush=True)
        return row

    results = {s: {a: [one(s, a, seed) for seed in range(seeds)] for a in arms} for s in streams}

    def ci(rows, k, d=4):
        mu, h = mean_ci([r[k] for r in rows])
        return f"{mu:.{d}f} ± {h:.{d}f}" if h == h else f"{mu:.{d}f}"

    cfg0 = load_config("continual", quick=args.tiny).model_dump(mode="json")
    lines = ["# continual benchmark (embedded digits task streams, ContinualCNN "
             f"conv {cfg0['model']['widths']}, dense {cfg0['model']['dense']})", "",
             f"Config: {cfg0['train']['epochs']} training epochs (S20/S70) + {cfg0['method']['finetune_epochs']} "
             f"fine-tuning epochs (S40/S90) per task, {cfg0['train']['optimizer']} lr {cfg0['train']['lr']}, batch "
             f"{cfg0['train']['batch_size']}, {cfg0['data']['image_size']} px, Fig. 5(a) / Fig. 8 rates, "
             f"estimator {cfg0['method']['estimator']}, Reading {cfg0['method']['reading']}. Mean ± 95% CI "
             f"(Student t) over {seeds} seed(s). Accuracy = each task's held-out eval rows with its own mask.", "",
             "## 1. Average accuracy after the last task, backward transfer, capacity left", "",
             "| stream | arm | avg acc | BWT | free weights at the end / all |", "|---|---|---|---|---|"]
    for s, by_arm in results.items():
        for a, rows in by_arm.items():
            for r in rows:
                r["free_share"] = r["free_end"] / r["total_weights"]
            lines.append(f"| {s} | {a} | {ci(rows, 'avg_acc')} | {ci(rows, 'bwt')} | "
                         f"{ci(rows, 'free_share', 3) if a != 'finetune' else '- (no masks)'} |")
    if "near_duplicate" in results:
        lines += ["", "## 2. New weights per task on the near-duplicate stream (task 2 ≈ task 1, task 3 dissimilar)",
                  "", "| arm | JSD(task 2, source) | new weights task 2 | JSD(task 3, source) | new weights task 3 |",
                  "|---|---|---|---|---|"]
        for a, rows in results["near_duplicate"].items():
            if a == "finetune":
                continue
            r0 = rows[0]
            lines.append(f"| {a} | {r0['jsd_to_source'][1]:.3f} | {ci([{'v': r['new_weights'][1]} for r in rows], 'v', 0)} | "
                         f"{r0['jsd_to_source'][2]:.3f} | {ci([{'v': r['new_weights'][2]} for r in rows], 'v', 0)} |")
    lines += ["", "## 3. Per task (method, seed 0): JSD to the source task, new weights, accuracy row", "",
              "| stream | task | JSD to source | new weights | accuracies after this task |", "|---|---|---|---|---|"]
    for s, by_arm in results.items():
        r0 = by_arm["method"][0]
        for t, (j, n, accs) in enumerate(zip(r0["jsd_to_source"], r0["new_weights"], r0["matrix"]), 1):
            lines.append(f"| {s} | {t} | {'-' if j is None else f'{j:.3f}'} | {n:.0f} | "
                         f"{' '.join(f'{x:.3f}' for x in accs)} |")
    lines += ["", f"Total wall time {time.time() - t0:.0f} s. Reproduce: `python bench/continual.py "
              + " ".join(sys.argv[1:]) + "`", ""]
    if args.tiny:   # a smoke check: print, never overwrite the real results
        print("\n".join(lines))
        return
    write("continual", {"machine": machine_info(), "args": vars(args), "config": cfg0, "results": results},
          "\n".join(lines))


if __name__ == "__main__":
    main()
