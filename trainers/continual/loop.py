"""``continual`` on Ray Train workers: the whole task stream in ONE TorchTrainer run (spec §5, Fig. 3 / Fig. 7).

Per task t (one ``Worker.report`` per task, epoch = t, so a checkpoint holds the model, the per-task packed masks,
per-task state, ownership (derived: A = ∪ M^(s)) and the history; a restarted run continues at task t + 1):

1. source task (t ≥ 2, R9): candidates (``method.candidate_policy``) among the learned tasks, s* = argmin JSD(s, t)
   from the driver's JSD matrix (``prepare``: the task PDFs over the WHOLE train split of every task, one Ray Data
   pass of mergeable counts);
2. rates (S10 / S60): Fig. 5 profile for task 1, the Fig. 8 row of JSD(s*, t) for t ≥ 2 (0 where the free pool is
   empty, P1); ``packnet``: ``method.packnet_rate`` everywhere;
3. S20 / S70: ``train.epochs`` passes, only the update set of R5 moves (:class:`FrozenGuard` inside
   :class:`MaskedOptimizer`: owned weights stay BITWISE fixed under momentum and weight decay);
4. S30 / S80: per layer, the ROUND(r·|F|) free weights of smallest |w| are zeroed (``plan_allocation``); computed
   on every worker from the DDP-synchronised weights — a checksum of weights and mask is all-reduced and compared,
   so a worker that disagrees fails the run;
5. S40 / S90: ``method.finetune_epochs`` passes on N^(t) only; S100 (t ≥ 2 only, R10: task 1 keeps its S40
   output): candidate 1 (after zeroing) vs candidate 2 (after fine-tuning) by accuracy on the task's eval rows with
   W ⊙ M^(t); ties → ``method.s100_tie``;
6. ownership / masks (R3, R4) stored; every learned task s ≤ t evaluated with its inference model W ⊙ M^(s)
   (+ its per-task state) → row t of the accuracy matrix R[t, s].

Labels: rows keep the GLOBAL label; task t's classes are ``task_classes[t-1]`` (sorted) and its local label is the
index in that list. The shared head ``dense8`` has width max C_t; task t reads its first C_t logits (the
``ContinualCNN`` design, spec §6 IMPL-CHOICE). ``predict`` maps back to global labels.

Variants: ``method`` (the patent), ``packnet`` (a fixed rate for every layer of every task, similarity ignored),
``finetune`` (no masks, no zeroing, no fine-tuning phase: all weights train on every task; it forgets).

MLflow (rank 0, step = t): ``acc_task_<s>`` for s ≤ t (R[t, s]), ``avg_acc`` = mean_s R[t, s],
``bwt`` = mean_{s<t} (R[t, s] − R[s, s]) (0 for t = 1), ``jsd_to_source`` (t ≥ 2), ``new_weights`` = Σ_l |N_l^(t)|,
``free_weights`` = Σ_l |F_l^(t+1)| (the free pool left for later tasks; finetune: 0 new, every weight "free" since
nothing is protected), plus ``train_loss`` and, for t ≥ 2, ``source_task``, ``s100_choice``, ``acc_cand1``,
``acc_cand2``.
Per-task state (``method.bias_policy`` / ``norm_policy`` = "per_task"): task t ≥ 2 starts S70 from the source task's
stored copy; ``norm_policy="freeze"`` keeps the normalisation modules in eval mode from task 2 on (running statistics
fixed, like their frozen affine parameters).
Artifacts after the last task: ``plots/accuracy_matrix.png``, ``plots/capacity.png`` (per-layer share of the
weights owned by each task), ``masks/masks.npz`` (1 bit per weight per task) and ``continual_log.json``
(JSD matrix, per-task sources, rates and |F| / |Z| / |N| per layer).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from trainers.common.runner import LearnerBase, Unit, run_learner
from trainers.continual.config import ContinualConfig
from trainers.continual.learner import ContinualLearner, TaskData, TaskNet, build_model
from trainers.continual.prepare import TaskFacts
from trainers.continual.state import ContinualState

# ----------------------------------------------------------------------------------------- the worker

def _shard_tensors(loader) -> dict[str, Tensor]:
    parts: dict[str, list[Tensor]] = {}
    for b in loader.full(batch_size=4096):
        for k, v in b.items():
            parts.setdefault(k, []).append(v)
    if not parts:
        raise RuntimeError("a worker received an empty data shard; use fewer workers or more data")
    return {k: torch.cat(v) for k, v in parts.items()}


class TaskStream(LearnerBase):
    """The shared runner's view of :class:`ContinualLearner`: one unit = one task (learn it, evaluate 1..t)."""

    name = "continual"
    unit_name = "task"
    max_reason = "all_tasks"

    def __init__(self, w):
        from trainers.common.worker import all_reduce_sum

        self.w = w
        cfg, self.m = w.cfg, w.cfg.method
        self.prep: TaskFacts = w.run.prepared
        self.units = T = len(self.prep.task_names)
        base = build_model(cfg.model, w.run.input_shape, w.run.num_classes)
        model = w.prepare(TaskNet(base).to(w.device))
        sizes = w.run.sizes
        data = TaskData(_shard_tensors(w.loader("train")), _shard_tensors(w.loader("eval")), self.prep.task_classes,
                        {i: sizes[f"task{i}_train"] for i in range(1, T + 1)}, cfg.train.batch_size, w.local_batch,
                        cfg.seed, w.rank)
        self.learner = ContinualLearner(cfg, model, self.prep.jsd, data, all_reduce_sum, w.world_size)
        self.meta = {"input_shape": list(w.run.input_shape), "head": int(w.run.num_classes),
                     "model": cfg.model.model_dump(mode="json"), "variant": self.m.variant,
                     "task_names": self.prep.task_names, "task_classes": self.prep.task_classes}

    def begin(self) -> None:
        if self.w.is_chief:
            self.w.set_tags({"task_order": ",".join(self.prep.task_names), "estimator": str(self.prep.estimator)})

    def state_dict(self) -> dict:
        return {**self.learner.state_dict(), "meta": self.meta}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)

    def learn(self, t: int) -> Unit:
        metrics = self.learner.learn(t)
        row = " ".join(f"{metrics[f'acc_task_{s}']:.3f}" for s in range(1, t + 1))
        line = (f"[continual] task {t}/{self.units} ({self.prep.task_names[t - 1]}, {self.m.variant}) acc row: {row} "
                f"avg_acc={metrics['avg_acc']:.4f} bwt={metrics['bwt']:+.4f} new_weights={metrics['new_weights']:.0f} "
                f"free_weights={metrics['free_weights']:.0f}"
                + (f" jsd_to_source={metrics['jsd_to_source']:.3f}" if "jsd_to_source" in metrics else ""))
        return Unit(metrics, line)

    def conclude(self, t: int, reason: str, metrics: dict) -> dict:
        if self.w.is_chief:
            _log_artifacts(self.w, self.learner, self.prep)
            self._log_model(t)
        return {}

    def _log_model(self, t: int) -> None:
        """The run as an MLflow pyfunc model that predicts for a task given per call (its masks inside)."""
        if self.w.run.mlflow_run_id is None or not self.w.cfg.tracking.log_model:
            return
        import tempfile

        from trainers.continual.inference import predict
        from trainers.continual.pyfunc import TaskModel, signature

        with tempfile.TemporaryDirectory() as d:
            path = f"{d}/state.pt"
            torch.save({**self.state_dict(), "epoch": t}, path)
            x = np.zeros((2, *self.w.run.input_shape), dtype=np.float32)
            self.w.log_pyfunc(TaskModel(), {"state": path}, signature(x, predict(path, 1, x)))

    def stop_tags(self, t: int) -> dict:
        return {"tasks_learned": str(t)}


def train_loop_per_worker(config: dict) -> None:
    from trainers.common.worker import Worker

    w = Worker(config, ContinualConfig)
    run_learner(w, TaskStream(w))


def capacity_table(state: ContinualState) -> dict[str, list[float]]:
    """layer → share of its weights first owned by task 1, 2, … (the rest: still free)."""
    out: dict[str, list[float]] = {}
    masks = [state.mask(t) for t in state.learned_tasks()]
    for n, s in zip(state.names, state.shapes):
        total = math.prod(s)
        shares, owned = [], torch.zeros(s, dtype=torch.bool)
        for mk in masks:
            new = mk[n] & ~owned
            shares.append(float(new.sum()) / total)
            owned |= mk[n]
        out[n] = shares
    return out


def _log_artifacts(w, learner: ContinualLearner, prep: TaskFacts) -> None:
    import json
    import tempfile
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(learner.matrix)
    names = prep.task_names[:T]
    R = np.full((T, T), np.nan)
    for j, row in enumerate(learner.matrix):
        R[j, :len(row)] = row
    fig, ax = plt.subplots(figsize=(1.2 * T + 2.5, 1.0 * T + 2))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
    for j in range(T):
        for i in range(j + 1):
            ax.text(i, j, f"{R[j, i]:.2f}", ha="center", va="center", color="w" if R[j, i] < 0.6 else "k")
    ax.set(xticks=range(T), yticks=range(T), xticklabels=[f"{i + 1}:{n}" for i, n in enumerate(names)],
           yticklabels=[f"after {j + 1}" for j in range(T)], xlabel="evaluated task", ylabel="learned up to task",
           title=f"accuracy matrix ({learner.m.variant})")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.colorbar(im, ax=ax)
    w.log_figure(fig, "accuracy_matrix.png")
    plt.close(fig)
    if learner.m.variant != "finetune":
        cap = capacity_table(learner.state)
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(cap) + 2), 3.8))
        bottom = np.zeros(len(cap))
        for t in range(T):
            vals = np.array([cap[n][t] for n in cap])
            ax.bar(range(len(cap)), vals, bottom=bottom, label=f"task {t + 1}")
            bottom += vals
        ax.bar(range(len(cap)), 1 - bottom, bottom=bottom, color="lightgrey", label="free")
        ax.set(xticks=range(len(cap)), xticklabels=[f"{n.split('.')[0]}\n({learner.groups[n]})" for n in cap],
               ylabel="share of the layer's weights", title="capacity: weights owned per task (first owner)")
        ax.legend(fontsize=7, ncol=2)
        w.log_figure(fig, "capacity.png")
        plt.close(fig)
    with tempfile.TemporaryDirectory() as d:
        st = learner.state
        arrays = {f"task{t}": st.masks[t].bits for t in st.learned_tasks()}
        np.savez(Path(d) / "masks.npz", names=np.array(st.names), shapes=np.array(json.dumps(st.shapes)), **arrays)
        w.log_artifact(Path(d) / "masks.npz", "masks")
        log = {"task_names": names, "task_classes": prep.task_classes, "jsd": prep.jsd,
               "estimator": prep.estimator, "accuracy_matrix": learner.matrix,
               "records": {str(t): _jsonable(r) for t, r in st.records.items()}}
        (Path(d) / "continual_log.json").write_text(json.dumps(log, indent=1))
        w.log_artifact(Path(d) / "continual_log.json")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return x
