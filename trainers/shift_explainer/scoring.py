"""Per-sample classifier losses over both domains of ``shift_explainer`` (JP7517093B2) as Ray Data batch
inference: every row of the four splits is tagged with its split and domain and passed once through f
(:class:`Scorer` in ``map_batches``, one actor), which adds L(x) = ℓ(f(x), y), the softmax output and the
prediction (:func:`score`); :func:`_columns` reads the scored dataset back as arrays on the driver.
"""
from __future__ import annotations

import numpy as np
import torch

from trainers.shift_explainer.classifier import unpack_classifier
from trainers.shift_explainer.losses import per_sample_loss


class Scorer:
    """Ray Data batch-inference UDF (one actor holds f): adds ``loss`` = ℓ(f(x), y), ``prob`` = softmax f(x),
    ``pred`` to every row."""

    def __init__(self, packed: dict, input_shape, num_classes: int, loss_fn: str):
        torch.set_num_threads(1)
        self.model = unpack_classifier(packed, input_shape, num_classes)
        self.loss_fn = loss_fn

    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(np.array(batch["x"], np.float32))      # a writable copy of Ray's read-only block
        y = torch.from_numpy(np.array(batch["y"], np.int64))
        with torch.no_grad():
            logits = self.model(x).float()
        batch["loss"] = per_sample_loss(logits, y, self.loss_fn).numpy().astype(np.float32)
        batch["prob"] = torch.softmax(logits, 1).numpy().astype(np.float32)
        batch["pred"] = logits.argmax(1).numpy().astype(np.int64)
        return batch


def _tag(i: int, domain: int):
    def fn(b: dict) -> dict:
        n = len(b["y"])
        b["part"], b["domain"] = np.full(n, i, np.int64), np.full(n, domain, np.int64)
        return b
    return fn


def score(bundle, packed: dict, loss_fn: str):
    """Every row of both domains through f in ONE Ray Data batch-inference pass; returns the materialised
    dataset (columns x, y, part (index in SPLIT_ORDER), domain (1|2), loss, prob, pred)."""
    parts = [bundle.datasets[s].map_batches(_tag(i, 1 if s.startswith("d1") else 2), batch_format="numpy")
             for i, s in enumerate(SPLIT_ORDER)]
    ds = parts[0].union(*parts[1:])
    kw = {"packed": packed, "input_shape": tuple(bundle.input_shape), "num_classes": bundle.num_classes,
          "loss_fn": loss_fn}
    return ds.map_batches(Scorer, fn_constructor_kwargs=kw,
                          batch_size=256, batch_format="numpy", concurrency=1, num_cpus=1).materialize()


SPLIT_ORDER = ("d1_train", "d1_val", "d2_train", "d2_val")


def _columns(ds) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {}
    for b in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        for k, v in b.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}
