"""What ``continual`` keeps of its learned tasks, and the inference model of one task built from it (R11).

:class:`ContinualState`: per-task packed masks, per-task state, estimator counts and logs (storage unit 30).
Inference (R11; :func:`effective_weights`, :func:`apply_task`): W_inf = W ⊙ M^(t) (bit 1 keeps, bit 0 → +0.0), plus
task t's per-task state. Loading a run's checkpoint and predicting with it:
:mod:`trainers.continual.inference`. No Ray, no MLflow.
"""
from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from trainers.continual.allocation import owned_from_masks
from trainers.continual.constraints import load_task_state
from trainers.continual.groups import Masks, named_weights
from trainers.continual.packing import PackedMask, pack_mask, unpack_mask


# --------------------------------------------------------------------------- inference (R11)

def effective_weights(weights: Masks, mask: Masks) -> dict[str, Tensor]:
    """W_inf = W ⊙ M (R11): kept where the bit is 1, +0.0 where it is 0."""
    out = {}
    for n, w in weights.items():
        m = mask[n].to(w.device, torch.bool)
        if m.shape != w.shape:
            raise ValueError(f"mask[{n!r}]: shape {tuple(m.shape)} differs from the weight shape {tuple(w.shape)}")
        out[n] = torch.where(m, w.detach(), torch.zeros((), dtype=w.dtype, device=w.device))
    return out


def apply_task(model: nn.Module, masks: Mapping[Hashable, PackedMask | Masks] | PackedMask,
               task: Hashable | None = None, task_states: Mapping[Hashable, Mapping[str, Tensor]] | None = None,
               inplace: bool = False) -> nn.Module:
    """The inference model of ``task`` (S210): a copy of ``model`` (``inplace=False``) whose masked weights are
    W ⊙ M^(task) and whose per-task state (if ``task_states`` has one for the task) is loaded.

    ``masks``: task → PackedMask or name → bool mask; or a single PackedMask (then ``task`` only selects the
    per-task state)."""
    if isinstance(masks, PackedMask):
        m = masks
    else:
        if task not in masks:
            raise ValueError(f"task: no mask for task {task!r}; learned tasks: {list(masks)}")
        m = masks[task]
    out = model if inplace else copy.deepcopy(model)
    mask = unpack_mask(m) if isinstance(m, PackedMask) else m
    weights = named_weights(out, mask)
    with torch.no_grad():
        for n, w in effective_weights(weights, mask).items():
            weights[n].copy_(w)
    if task_states is not None and task in task_states:
        load_task_state(out, task_states[task])
    return out


# --------------------------------------------------------------------------- learned-task state container

@dataclass
class ContinualState:
    """What persists between tasks (storage unit 30): per-task packed masks, per-task unmasked state, per-task
    estimator counts (``data_pdf[t]``) and per-task logs (JSDs, s*, rates, |F|/|Z|/|N|, scalar rate).

    Tasks are kept in insertion (= arrival) order; the owned set is derived: A = ∪ M^(s)."""
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    masks: dict = field(default_factory=dict)
    task_states: dict = field(default_factory=dict)
    data_counts: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: nn.Module, names: Iterable[str] | None = None) -> "ContinualState":
        w = named_weights(model, names)
        return cls(tuple(w), tuple(tuple(p.shape) for p in w.values()))

    def learned_tasks(self) -> list:
        return list(self.masks)

    def mask(self, task, device=None) -> dict[str, Tensor]:
        if task not in self.masks:
            raise ValueError(f"task: no mask for task {task!r}; learned tasks: {self.learned_tasks()}")
        return unpack_mask(self.masks[task], device)

    def owned(self, device=None) -> dict[str, Tensor]:
        """A^(t) over the learned tasks (all False before task 1)."""
        if not self.masks:
            return {n: torch.zeros(s, dtype=torch.bool, device=device) for n, s in zip(self.names, self.shapes)}
        return owned_from_masks(self.mask(t, device) for t in self.masks)

    def add_task(self, task, mask: Masks, record: Mapping | None = None, task_state: Mapping | None = None,
                 counts=None) -> None:
        if task in self.masks:
            raise ValueError(f"task: task {task!r} is already learned")
        if tuple(mask) != self.names or any(tuple(mask[n].shape) != s for n, s in zip(self.names, self.shapes)):
            raise ValueError("mask: layers or shapes differ from the state's masked layers")
        self.masks[task] = pack_mask(mask)
        if record is not None:
            self.records[task] = dict(record)
        if task_state is not None:
            self.task_states[task] = {n: v.detach().cpu().clone() for n, v in task_state.items()}
        if counts is not None:
            self.data_counts[task] = np.asarray(counts).copy()

    def as_dict(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes],
                "masks": {t: m.as_dict() for t, m in self.masks.items()},
                "task_states": self.task_states, "data_counts": self.data_counts, "records": self.records}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ContinualState":
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]),
                   {t: PackedMask.from_dict(m) for t, m in d["masks"].items()},
                   dict(d.get("task_states", {})), dict(d.get("data_counts", {})), dict(d.get("records", {})))
