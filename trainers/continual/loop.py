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

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.common.facts import Prepared
from trainers.common.models import unwrap
from trainers.common.runner import LearnerBase, Unit, run_learner
from trainers.continual.allocation import apply_zeroing_, free_pool, plan_allocation, task_mask
from trainers.continual.config import ContinualConfig
from trainers.continual.constraints import (FrozenGuard, MaskedOptimizer, capture_task_state, forward_masks,
                                            load_task_state, masked_forward, set_norm_eval, task_state_names,
                                            trainable_masks, update_masks)
from trainers.continual.groups import layer_groups, layer_rates, named_weights, task1_layer_rates
from trainers.continual.models import ContinualCNN
from trainers.continual.packing import pack_mask
from trainers.continual.similarity import (candidate_tasks, codebook_counts, divergence, fit_codebook,
                                           histogram_counts, histogram_edges, select_candidate, select_source,
                                           task_rate_scalar)
from trainers.continual.state import ContinualState, apply_task

Reduce = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


# ----------------------------------------------------------------------------------------- model

def build_model(model_cfg, input_shape, head: int) -> ContinualCNN:
    """The VGG-style :class:`ContinualCNN` for (C, H, W) inputs with a shared head of width ``head``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ValueError(f"model: ContinualCNN needs image inputs (C, H, W); the data has shape {shape} "
                         "(parquet `features` rows: store them as `image` with data.image_shape)")
    return ContinualCNN(shape[0], head, model_cfg.widths, model_cfg.dense, shape[1:])


class TaskNet(nn.Module):
    """``net`` with an optional forward mask (Reading B: W ⊙ mask in the forward, :func:`masked_forward`).
    DDP wraps this module, so the masked forward still goes through DDP and its gradient all-reduce."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.fmask: dict[str, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return masked_forward(self.net, self.fmask, x)


# ----------------------------------------------------------------------------------------- pure per-task logic

def local_labels(y: Tensor, classes) -> Tensor:
    """Index of each global label in the task's sorted class list (labels outside it: ValueError)."""
    c = torch.as_tensor(list(classes), dtype=torch.int64, device=y.device)
    idx = torch.searchsorted(c, y)
    ok = (idx < len(c)) & (c[idx.clamp(max=len(c) - 1)] == y)
    if not bool(ok.all()):
        raise ValueError(f"labels {sorted(set(y[~ok].tolist()))} are not classes of the task {list(classes)}")
    return idx


def choose_source(m, t: int, state: ContinualState, jsd_matrix) -> tuple[int | None, float, list[int]]:
    """(s*, JSD(s*, t), candidates) for task t (1-based); task 1 → (None, nan, [])."""
    if t == 1:
        return None, float("nan"), []
    learned = state.learned_tasks()
    scal = {s: state.records[s]["rate_scalar"] for s in learned}
    cands = candidate_tasks(learned, m.candidate_policy, m.candidate_k, scal, m.candidate_tau, m.candidate_combine)
    s, v = select_source({s: float(jsd_matrix[s - 1][t - 1]) for s in cands}, cands)
    return int(s), float(v), [int(c) for c in cands]


def task_rates(m, groups: Mapping[str, str], t: int, jsd_src: float, free_counts: Mapping[str, int]
               ) -> dict[str, float]:
    """Per-layer rates of task t: Fig. 5 profile (t = 1) / Fig. 8 row (t ≥ 2, P1: 0 on an empty pool); packnet:
    ``packnet_rate`` everywhere (0 on an empty pool)."""
    if m.variant == "packnet":
        return {n: 0.0 if int(free_counts[n]) == 0 else float(m.packnet_rate) for n in groups}
    if t == 1:
        return task1_layer_rates(groups, m.task1_profile)
    jsd = min(max(float(jsd_src), 0.0), 1.0) if m.measure == "jsd" else float(jsd_src)
    return layer_rates(groups, jsd, free_counts, m.table()) if m.measure == "jsd" else \
        _kl_rates(m, groups, jsd, free_counts)


def _kl_rates(m, groups, value: float, free_counts) -> dict[str, float]:
    """KL values index the user's table by its thresholds directly (values ≥ the last threshold → last bin)."""
    table = m.table()
    i = sum(1 for th in table.thresholds if value >= th)
    return {n: 0.0 if int(free_counts[n]) == 0 else table.rates[g][i] for n, g in groups.items()}


def accuracy_summary(matrix: list[list[float]]) -> tuple[float, float]:
    """(avg_acc, bwt) of the last row of the lower-triangular accuracy matrix R (R[j][i]: task i+1 after j+1)."""
    t = len(matrix)
    last = matrix[-1]
    avg = float(sum(last) / len(last))
    bwt = float(sum(last[i] - matrix[i][i] for i in range(t - 1)) / (t - 1)) if t > 1 else 0.0
    return avg, bwt


def mask_checksum(weights: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> Tensor:
    """A float64 fingerprint of the weights (exact bit patterns) and the mask bits, identical on ranks that agree."""
    bits = pack_mask({n: m.detach().cpu() for n, m in mask.items()}).bits.astype(np.float64)
    wsum = 0.0
    for i, w in enumerate(weights.values()):
        v = w.detach().cpu().contiguous().view(-1)
        ints = v.view(torch.int32).to(torch.int64) if v.dtype == torch.float32 else v.double().view(torch.int64)
        wsum += float((ints % 1_000_003).double().sum().item()) * (i + 1)
    return torch.tensor([float((bits * (np.arange(bits.size) % 251 + 1)).sum()), wsum], dtype=torch.float64)


def train_step(model: nn.Module, opt, x: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """One step of cross-entropy on the first ``num_classes`` logits (the task's slice of the shared head);
    ``opt`` is a :class:`MaskedOptimizer` in the method (owned weights stay fixed). Returns the detached loss.
    :meth:`ContinualLearner.train_phase` and the benchmark's plain-PyTorch path both call this."""
    loss = F.cross_entropy(model(x)[:, :num_classes].float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


# ----------------------------------------------------------------------------------------- per-worker task data

class TaskData:
    """One worker's rows of every task: ``train`` / ``eval`` dicts of tensors {"x", "y", "t"} (its shard).

    ``batches(t, epoch)`` yields exactly ``steps(t)`` = max(1, n_t // batch_size) local batches (n_t: the task's
    GLOBAL train rows), reshuffled per epoch with a seed of (seed, task, epoch, round, rank), cycling over the
    worker's rows if needed — every rank takes the same number of collective steps."""

    def __init__(self, train: Mapping[str, Tensor], eval_: Mapping[str, Tensor], classes, global_train: Mapping,
                 batch_size: int, local_batch: int, seed: int = 0, rank: int = 0):
        self.classes = [tuple(c) for c in classes]
        self.batch_size, self.local_batch, self.seed, self.rank = batch_size, local_batch, seed, rank
        self.global_train = {int(k): int(v) for k, v in global_train.items()}
        self._train = self._by_task(train)
        self._eval = self._by_task(eval_)

    def _by_task(self, d: Mapping[str, Tensor]) -> dict[int, tuple[Tensor, Tensor]]:
        out = {}
        for t in range(1, len(self.classes) + 1):
            sel = d["t"] == t
            x, y = d["x"][sel], d["y"][sel]
            out[t] = (x, local_labels(y, self.classes[t - 1]) if len(y) else y)
        return out

    def steps(self, t: int) -> int:
        return max(1, self.global_train[t] // self.batch_size)

    def batches(self, t: int, epoch: int, phase: int = 0):
        x, y = self._train[t]
        n = len(y)
        if n < self.local_batch:
            raise RuntimeError(f"task {t}: a worker's shard holds {n} train rows, fewer than one per-worker batch "
                               f"({self.local_batch}); lower train.batch_size or scaling.num_workers")
        produced, rnd = 0, 0
        while True:
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + t * 10_007 + epoch * 101 + phase) * 7919
                                               + rnd) * 64 + self.rank)
            order = torch.randperm(n, generator=g).to(x.device)
            for i in range(0, n - self.local_batch + 1, self.local_batch):
                idx = order[i:i + self.local_batch]
                yield x[idx], y[idx]
                produced += 1
                if produced == self.steps(t):
                    return
            rnd += 1

    def eval_rows(self, t: int) -> tuple[Tensor, Tensor]:
        return self._eval[t]


# ----------------------------------------------------------------------------------------- the learner

class ContinualLearner:
    """Runs spec §5 task by task on one worker (or one process: ``reduce`` = identity, ``model`` = the TaskNet).

    ``model``: the (DDP-wrapped) :class:`TaskNet`; ``base``: its bare ``net``. ``jsd``: the driver's T×T task
    divergence matrix (:attr:`TaskFacts.jsd`). ``reduce``: sum over ranks (``all_reduce_sum``)."""

    def __init__(self, cfg: ContinualConfig, model: nn.Module, jsd: Sequence[Sequence[float]], data: TaskData,
                 reduce: Reduce = _identity, world_size: int = 1, make_opt=None, autocast=None):
        from trainers.common.worker import make_optimizer

        self.cfg, self.m = cfg, cfg.method
        self.model = model
        self.wrapper: TaskNet = unwrap(model)
        self.base: nn.Module = self.wrapper.net
        self.jsd, self.data = jsd, data
        self.reduce, self.world_size = reduce, world_size
        self.make_opt = make_opt or (lambda params: make_optimizer(cfg.train, params))
        self.groups = layer_groups(self.base, self.m.group_overrides)
        self.names = list(self.groups)
        self.state = ContinualState.for_model(self.base, self.names)
        self.state_names = task_state_names(self.base, self.m.bias_policy, self.m.norm_policy)
        self.matrix: list[list[float]] = []
        self.history: list[dict] = []

    # -- state (checkpoints) ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": {k: v.detach().cpu().clone() for k, v in self.base.state_dict().items()},
                "continual": copy.deepcopy(self.state.as_dict()), "matrix": [list(r) for r in self.matrix],
                "history": copy.deepcopy(self.history)}

    def load_state_dict(self, s: Mapping) -> None:
        self.base.load_state_dict(s["model"])
        self.state = ContinualState.from_dict(s["continual"])
        self.matrix, self.history = [list(r) for r in s["matrix"]], list(s["history"])

    @property
    def total_weights(self) -> int:
        return int(sum(math.prod(s) for s in self.state.shapes))

    # -- training ----------------------------------------------------------------------------------
    def _logits(self, x: Tensor, t: int, model: nn.Module | None = None) -> Tensor:
        return (model or self.model)(x)[:, :len(self.data.classes[t - 1])]

    def train_phase(self, t: int, epochs: int, trainable: Mapping[str, Tensor] | None, phase: int) -> float:
        """``epochs`` passes over task t; only ``trainable`` entries move (None: all). Mean loss (over ranks)."""
        if epochs <= 0:
            return float("nan")
        guard = FrozenGuard.from_model(self.base, trainable) if trainable is not None else FrozenGuard([])
        opt = MaskedOptimizer(self.make_opt(self.model.parameters()), guard)
        self.model.train()
        if trainable is not None and t >= 2 and self.m.norm_policy == "freeze":
            set_norm_eval(self.base)   # frozen norm layers: task 1's running statistics must not move either
        total = torch.zeros(2, dtype=torch.float64)
        for e in range(epochs):
            for x, y in self.data.batches(t, e, phase):
                loss = train_step(self.model, opt, x, y, len(self.data.classes[t - 1]))
                total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
        total = self.reduce(total)
        return float(total[0] / total[1])

    @torch.no_grad()
    def accuracy(self, t: int, net: nn.Module) -> float:
        """Accuracy of ``net`` (a bare inference model) on task t's eval rows, counts summed over ranks."""
        net.eval()
        x, y = self.data.eval_rows(t)
        c = torch.zeros(2, dtype=torch.float64)
        for i in range(0, len(y), self.m.eval_batch):
            logits = net(x[i:i + self.m.eval_batch])[:, :len(self.data.classes[t - 1])]
            c += torch.tensor([float((logits.argmax(1) == y[i:i + self.m.eval_batch]).sum()),
                               float(len(y[i:i + self.m.eval_batch]))], dtype=torch.float64)
        c = self.reduce(c)
        if c[1] == 0:
            raise RuntimeError(f"task {t}: no eval rows on any worker")
        return float(c[0] / c[1])

    def inference_model(self, s: int) -> nn.Module:
        """Task s's inference model W ⊙ M^(s) (+ its per-task state); finetune: the current weights."""
        if self.m.variant == "finetune":
            return self.base
        return apply_task(self.base, self.state.masks, s, self.state.task_states)

    def _check_agreement(self, mask: Mapping[str, Tensor]) -> None:
        if self.world_size == 1:
            return
        c = mask_checksum(named_weights(self.base, self.names), mask)
        total = self.reduce(c.clone())
        if not torch.equal(total, c * self.world_size):
            raise RuntimeError("continual: the workers disagree on the weights or the task mask after zeroing "
                               f"(checksum {c.tolist()} vs the sum over ranks {total.tolist()})")

    def learn(self, t: int) -> dict:
        """Learn task t (1-based), then evaluate tasks 1..t; returns the task's metrics (also kept in history)."""
        m = self.m
        jsd_matrix = self.jsd
        if m.variant == "finetune":
            loss = self.train_phase(t, self.cfg.train.epochs, None, phase=0)
            mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in named_weights(self.base, self.names).items()}
            self._check_agreement(mask)
            self.state.add_task(t, {n: v.cpu() for n, v in mask.items()},
                                record={"rate_scalar": 0.0, "source": None, "jsd_to_source": float("nan")})
            rec = {"train_loss": loss, "new_weights": 0.0, "free_weights": float(self.total_weights)}
            if t >= 2:
                rec["jsd_to_source"] = float(jsd_matrix[t - 2][t - 1])
            return self._finish(t, rec)

        weights = named_weights(self.base, self.names)
        owned = self.state.owned(next(iter(weights.values())).device)
        free = free_pool(owned)
        source, jsd_src, cands = choose_source(m, t, self.state, jsd_matrix)
        free_counts = {n: int(f.sum()) for n, f in free.items()}
        rates = task_rates(m, self.groups, t, jsd_src, free_counts)
        src_mask = self.state.mask(source, owned[self.names[0]].device) if (m.reading == "B" and source) else None
        if source is not None and source in self.state.task_states:
            # per-task biases / normalisation state: task t starts from the source task's copy (transfer from s*)
            load_task_state(self.base, self.state.task_states[source])
        # S20 / S70: train the update set only
        phase = "S20" if t == 1 else "S70"
        upd = update_masks(phase, free, rates=rates, freeze_full_rate=m.freeze_full_rate)
        self.wrapper.fmask = forward_masks(phase, m.reading, free=free, source_mask=src_mask)
        loss = self.train_phase(t, self.cfg.train.epochs,
                                trainable_masks(self.base, upd, t, m.bias_policy, m.norm_policy), phase=0)
        # S30 / S80: zero the ROUND(r·|F|) smallest free weights per layer
        alloc = plan_allocation(weights, None if t == 1 else owned, rates, m.granularity, m.filter_unit,
                                m.filter_norm, m.rounding)
        apply_zeroing_(weights, alloc.zeroed)
        mask = task_mask(owned, alloc.new, m.reading, src_mask)
        self._check_agreement(mask)
        # S100 (t >= 2 only; R10: "for task 1 there is no candidate selection, the S40 output is the target model")
        select = t >= 2
        if select:
            cand1 = {k: v.detach().clone() for k, v in self.base.state_dict().items()}
            acc1 = self.accuracy(t, apply_task(self.base, {t: mask}, t))
        # S40 / S90: fine-tune N^(t) only, forward with the task mask (Reading B)
        if m.finetune_epochs > 0:
            phase = "S40" if t == 1 else "S90"
            upd = update_masks(phase, free, new=alloc.new)
            self.wrapper.fmask = forward_masks(phase, m.reading, free=free, new=alloc.new, source_mask=src_mask)
            self.train_phase(t, m.finetune_epochs, trainable_masks(self.base, upd, t, m.bias_policy, m.norm_policy),
                             phase=1)
            acc2 = self.accuracy(t, apply_task(self.base, {t: mask}, t)) if select else None
        else:
            acc2 = acc1 if select else None
        self.wrapper.fmask = None
        which = select_candidate(acc1, acc2, m.s100_tie) if select else None
        if which == 1:
            self.base.load_state_dict(cand1)
        counts = alloc.counts()
        record = {"source": source, "candidates": cands, "jsd_to_source": jsd_src, "rates": rates,
                  "counts": counts, "rate_scalar": task_rate_scalar(counts["zeroed"], counts["free"]),
                  "s100_choice": which, "acc_cand1": acc1 if select else None, "acc_cand2": acc2}
        self.state.add_task(t, {n: v.cpu() for n, v in mask.items()}, record=record,
                            task_state=capture_task_state(self.base, self.state_names))
        new = float(sum(counts["new"].values()))
        rec = {"train_loss": loss, "new_weights": new,
               "free_weights": float(sum(counts["free"].values()) - new)}
        if select:
            rec.update(jsd_to_source=jsd_src, source_task=float(source), s100_choice=float(which),
                       acc_cand1=acc1, acc_cand2=acc2)
        return self._finish(t, rec)

    def _finish(self, t: int, rec: dict) -> dict:
        row = [self.accuracy(s, self.inference_model(s)) for s in range(1, t + 1)]
        self.matrix.append(row)
        avg, bwt = accuracy_summary(self.matrix)
        metrics = {**rec, **{f"acc_task_{s}": a for s, a in enumerate(row, 1)}, "avg_acc": avg, "bwt": bwt}
        self.history.append(dict(metrics, task=t))
        return metrics


# ----------------------------------------------------------------------------------------- driver side

def check(cfg: ContinualConfig, bundle) -> None:
    """Driver-side: the model fits the data, every layer-group override matches a layer, the rate tables cover
    every group, a global batch fits in every task."""
    m = cfg.method
    try:
        model = build_model(cfg.model, tuple(bundle.input_shape), bundle.num_classes)
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    try:
        groups = layer_groups(model, m.group_overrides)
    except ValueError as e:
        raise ValueError(f"method.group_overrides: {e}") from None
    used = set(groups.values())
    if m.variant == "method":
        missing = sorted(used - set(m.table().rates))
        if missing:
            raise ValueError(f"method.rate_table: no rates for groups {missing} used by the model's layers")
        try:
            task1_layer_rates(groups, m.task1_profile)
        except ValueError as e:
            raise ValueError(f"method.task1_profile: {e}") from None
    for i, name in enumerate(bundle.task_names, 1):
        n = bundle.sizes[f"task{i}_train"]
        if cfg.train.batch_size > n:
            raise ValueError(f"train.batch_size: {cfg.train.batch_size} is larger than task {name!r}'s train rows "
                             f"({n}); allowed: 2..{n}")


def _task_counts(batch: dict, *, estimator: str, num_tasks: int, edges=None, per_feature=False, codebook=None):
    """map_batches body: one row per task with the estimator counts of this batch's rows of that task."""
    x, t = np.asarray(batch["x"]), np.asarray(batch["t"])
    rows = []
    for i in range(1, num_tasks + 1):
        sel = x[t == i]
        if not len(sel):
            continue
        c = histogram_counts(sel, edges, per_feature) if estimator == "histogram" else codebook_counts(sel, codebook)
        rows.append(np.asarray(c, np.int64).ravel())
    present = [i for i in range(1, num_tasks + 1) if (t == i).any()]
    if not rows:
        return {"t": np.zeros(0, np.int64), "counts": np.zeros((0, 1), np.int64)}
    return {"t": np.asarray(present, np.int64), "counts": np.stack(rows)}


def _codebook_reference(ds, num_tasks: int, per_task: int) -> np.ndarray:
    """The first ``per_task`` rows of every task (the dataset is already a seeded shuffle), one streaming pass."""
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(1, num_tasks + 1)}
    have = dict.fromkeys(got, 0)
    for b in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        x, t = np.asarray(b["x"]), np.asarray(b["t"])
        for i in got:
            if have[i] < per_task:
                sel = x[t == i][: per_task - have[i]]
                got[i].append(sel)
                have[i] += len(sel)
        if all(v >= per_task for v in have.values()):
            break
    return np.concatenate([np.concatenate(v) for v in got.values() if v])


def task_distributions(cfg: ContinualConfig, ds, num_tasks: int) -> tuple[np.ndarray, dict]:
    """Counts (num_tasks, cells) of every task's WHOLE train split under the configured estimator: one Ray Data
    ``map_batches`` pass of mergeable integer counts, summed on the driver."""
    m = cfg.method
    kw: dict = {"estimator": m.estimator, "num_tasks": num_tasks}
    info: dict = {"estimator": m.estimator}
    if m.estimator == "histogram":
        kw.update(edges=histogram_edges(m.hist_range[0], m.hist_range[1], m.hist_bins), per_feature=m.per_feature)
        info.update(bins=m.hist_bins, range=list(m.hist_range), per_feature=m.per_feature)
    else:
        ref = _codebook_reference(ds, num_tasks, m.codebook_reference)
        n_codes = min(m.n_codes, len(ref))
        kw["codebook"] = fit_codebook(ref, n_codes, m.proj_dim, seed=cfg.seed)
        info.update(n_codes=n_codes, proj_dim=m.proj_dim, reference_rows=int(len(ref)))
    totals: dict[int, np.ndarray] = {}
    for b in ds.map_batches(_task_counts, batch_format="numpy", fn_kwargs=kw).iter_batches(
            batch_size=None, batch_format="numpy"):
        for t, c in zip(b["t"], b["counts"]):
            totals[int(t)] = totals.get(int(t), 0) + np.asarray(c, np.int64)
    missing = [i for i in range(1, num_tasks + 1) if i not in totals]
    if missing:
        raise ValueError(f"data: tasks {missing} have no train rows")
    return np.stack([totals[i] for i in range(1, num_tasks + 1)]), info


@dataclass(frozen=True)
class TaskFacts:
    """The driver's precomputation that every worker receives: the task order (``task_names``) and classes, each
    task's input PDF (``counts``, from ``estimator``) and the T×T divergence matrix ``jsd`` (``method.measure``)."""

    jsd: list[list[float]]
    task_names: list[str]
    task_classes: list[list[int]]
    estimator: dict
    counts: list[list[float]]


def prepare(cfg: ContinualConfig, bundle, ctx=None) -> Prepared:
    """Driver-side, once per run: the task PDFs and the T×T divergence matrix (``method.measure``)."""
    counts, info = task_distributions(cfg, bundle.datasets["train"], bundle.num_tasks)
    T = bundle.num_tasks
    jsd = [[0.0 if i == j else divergence(counts[i], counts[j], cfg.method.measure) for j in range(T)]
           for i in range(T)]
    return Prepared(facts=TaskFacts(jsd=jsd, task_names=list(bundle.task_names),
                                    task_classes=[list(c) for c in bundle.task_classes], estimator=info,
                                    counts=counts.tolist()))


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
        return {}

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
