"""``continual``'s learning, on one worker or in one process: the task network (:class:`TaskNet`: a shared
body with per-task forward masks and the first C_t logits of the shared head), the pure per-task logic (the source
task, the rates, the accuracy summary, the mask checksum), each worker's task data (:class:`TaskData`) and
:class:`ContinualLearner`, which learns task t by the patent's steps and evaluates tasks 1..t (see :mod:`.loop` for
the steps and the logged figures)."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.common.models import unwrap
from trainers.continual.allocation import apply_zeroing_, free_pool, plan_allocation, task_mask
from trainers.continual.config import ContinualConfig
from trainers.continual.constraints import (FrozenGuard, MaskedOptimizer, capture_task_state, forward_masks,
                                            load_task_state, masked_forward, set_norm_eval, task_state_names,
                                            trainable_masks, update_masks)
from trainers.continual.groups import layer_groups, layer_rates, named_weights, task1_layer_rates
from trainers.continual.models import ContinualCNN
from trainers.continual.packing import pack_mask
from trainers.continual.similarity import (candidate_tasks, select_candidate, select_source,
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
