"""Inference of a trained ``continual`` run (R11, spec §5 INFER): the user names the task, every weight outside
that task's mask is set to 0, the masked network runs the input.

    from trainers.continual import predict
    labels = predict("/path/to/checkpoint_000003", task=2, x=images)          # (N,) global labels
    labels, logits = predict(ckpt, task="digits23", x=images, return_logits=True)

``checkpoint_path``: a Ray Train checkpoint directory of a ``continual`` run (it holds ``state.pt``; the run's last
checkpoint is printed by ``trainlab run`` and stored as the MLflow tag ``checkpoint``), or the ``state.pt`` file.
``task``: 1-based index in learning order, or the task's name (see the run's ``task_order`` tag). ``x``: float
array (N, C, H, W) — or one image (C, H, W) — with the run's input shape. Returns the GLOBAL labels (the task's
local argmax over its first C_t logits mapped through its class list); the logits are the task's C_t logits.
No Ray needed. Also on the command line: ``trainlab predict continual --checkpoint PATH --task T --input x.npy``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_checkpoint(checkpoint_path: str | Path) -> dict:
    """The checkpoint's state dict (model, ``continual`` state, ``meta``); ValueError naming what is wrong."""
    p = Path(checkpoint_path)
    f = p / "state.pt" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"--checkpoint {checkpoint_path}: no state.pt found (expected a Ray Train checkpoint "
                         "directory of a continual run, or its state.pt)")
    state = torch.load(f, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "continual" not in state or "meta" not in state:
        raise ValueError(f"--checkpoint {checkpoint_path}: not a checkpoint of a continual run")
    return state


def _task_index(task, meta: dict, learned: list) -> int:
    names = list(meta["task_names"])
    if task is None:
        raise ValueError(f"--task: continual predicts with one task's masks; allowed: one of the learned tasks "
                         f"{learned} ({', '.join(names[i - 1] for i in learned)}), by index or name")
    if isinstance(task, str) and not task.lstrip("-").isdigit():
        if task not in names:
            raise ValueError(f"--task {task!r}: unknown task; allowed: 1..{len(learned)} or a name of {names}")
        t = names.index(task) + 1
    else:
        t = int(task)
    if t not in learned:
        raise ValueError(f"--task {task!r}: the checkpoint has learned tasks {learned} "
                         f"({', '.join(names[i - 1] for i in learned)}); allowed: one of them")
    return t


def predict(checkpoint_path: str | Path, task, x, return_logits: bool = False, batch_size: int = 1024):
    """Global labels (np.int64, (N,)) for ``x`` under task ``task``'s inference model W ⊙ M^(task)."""
    from trainers.continual.config import ContinualModel
    from trainers.continual.learner import build_model
    from trainers.continual.state import ContinualState, apply_task

    state = load_checkpoint(checkpoint_path)
    meta = state["meta"]
    cs = ContinualState.from_dict(state["continual"])
    t = _task_index(task, meta, [int(s) for s in cs.learned_tasks()])
    shape = tuple(meta["input_shape"])
    a = np.asarray(x, dtype=np.float32)
    if a.shape == shape:
        a = a[None]
    if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != shape:
        raise ValueError(f"--input: inputs of shape {tuple(a.shape)}; allowed: (N, {', '.join(map(str, shape))}) "
                         "or one input of the run's input shape")
    if not np.isfinite(a).all():
        raise ValueError("--input: contains NaN or Inf")
    model = build_model(ContinualModel.model_validate(meta["model"]), shape, meta["head"])
    model.load_state_dict(state["model"])
    if meta["variant"] != "finetune":
        model = apply_task(model, cs.masks, t, cs.task_states, inplace=True)
    model.eval()
    classes = np.asarray(meta["task_classes"][t - 1], dtype=np.int64)
    outs = []
    with torch.no_grad():
        for i in range(0, len(a), batch_size):
            outs.append(model(torch.from_numpy(a[i:i + batch_size]))[:, :len(classes)])
    logits = torch.cat(outs).numpy() if outs else np.zeros((0, len(classes)), np.float32)
    labels = classes[logits.argmax(1)] if len(logits) else np.zeros(0, np.int64)
    return (labels, logits) if return_logits else labels
