"""Typed config of the ``continual`` method (JP7600768B2): every knob, its range, its default.

One run learns a whole task stream; a Ray Train "epoch" (one ``report``, one checkpoint, one MLflow step) is one
TASK. ``train.epochs`` = passes over a task's train rows in the training phase (S20 for task 1, S70 after);
``method.finetune_epochs`` = passes in the fine-tuning phase (S40 / S90). A fresh optimizer is built for every
phase (momentum / Adam moments do not carry over between phases or tasks).

Defaults (Adam, lr 5e-3, 8 + 2 epochs per task, batch 32) were picked on the embedded split-digits stream: the free
weights of a later task start at exactly 0 and must override the frozen, shared head rows of the earlier tasks, which
takes more steps than task 1 needs (4 epochs at lr 2e-3 left some later tasks at chance).

Rate tables are validated here with the helpers of :mod:`trainers.continual.rates` (thresholds strictly increasing
in [0, 1], every rate in [0, 1]); the layer → group mapping is validated against the model by the driver-side
``check`` (:func:`trainers.continual.prepare.check`), where the model exists.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainers.common.config import BaseRunConfig, Section, TrainSection
from trainers.continual.rates import GROUPS, rate_table, task1_profile

VARIANTS = ("method", "packnet", "finetune")


class TaskStreamData(Section):
    source: str = Field("split", description='embedded digits streams: "split" (tasks of 2 new classes), '
                                             '"permuted" (fixed pixel permutation per task), "near_duplicate" '
                                             "(task 2 ≈ task 1, task 3 dissimilar); or a parquet file/dir with "
                                             "a `task` column")
    num_tasks: int = Field(5, ge=1, le=10, description="embedded streams: tasks (split ≤ 5, permuted ≤ 10, "
                                                       "near_duplicate ≤ 3)")
    image_size: int = Field(16, ge=8, le=64, description="embedded streams: side of the (upsampled) digits")
    val_fraction: float = Field(0.2, gt=0, le=0.45, description="share of each class per task held out as eval "
                                                                "data (S100 and the accuracy matrix)")
    task_order: list[str] | None = Field(None, description="parquet: the `task` values in learning order "
                                                           "(default: sorted); unlisted tasks are left out")
    image_shape: list[int] | None = Field(None, description="parquet `image` column: [C, H, W]")
    cache_in_memory: bool = True

    @field_validator("task_order", mode="before")
    @classmethod
    def _order_as_strings(cls, v):
        if v is None:
            return v
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError("allowed: a non-empty list of task ids")
        return [str(x) for x in v]


class ContinualModel(Section):
    widths: list[int] = Field(default_factory=lambda: [8, 16, 16, 32, 32], min_length=5, max_length=5,
                              description="conv1..conv5 channels of the VGG-style ContinualCNN")
    dense: list[int] = Field(default_factory=lambda: [64, 64], min_length=2, max_length=2,
                             description="dense6, dense7 widths (dense8 = shared head, width max C_t)")

    @field_validator("widths", "dense")
    @classmethod
    def _positive(cls, v):
        if any(int(x) < 1 or int(x) > 4096 for x in v):
            raise ValueError(f"{v}; allowed: integers in 1..4096")
        return v


class ContinualSection(Section):
    variant: Literal["method", "packnet", "finetune"] = Field(
        "method", description="method: the patent (rates by depth, and by similarity for t ≥ 2); packnet: one "
                              "fixed rate for every layer and task (PackNet); finetune: no masks, every weight "
                              "trained on every task (forgets)")
    task1_profile: Literal["fig5a", "fig5b"] | dict[str, float] = Field(
        "fig5a", description="task-1 rate per group (R7): Fig. 5(a), Fig. 5(b) or {group: rate in [0, 1]}")
    rate_table: dict | None = Field(None, description="task t ≥ 2 table (R8): {thresholds: [..], rates: {group: "
                                                      "[one rate per JSD bin]}}; default Fig. 8")
    packnet_rate: float = Field(0.5, ge=0, le=1, description="packnet: the fixed zeroing rate of the free pool")
    group_overrides: dict[str, str] = Field(default_factory=dict,
                                            description="fnmatch pattern on a layer name → group (conv1..conv5, "
                                                        "dense); default mapping by depth")
    reading: Literal["A", "B"] = Field("A", description="mask semantics (R4): A = every owned weight; B = the "
                                                        "source task's weights + the new ones")
    granularity: Literal["weight", "filter"] = "weight"
    filter_unit: Literal["out_channel", "kernel"] = "out_channel"
    filter_norm: Literal["l1", "l2"] = "l1"
    rounding: Literal["round", "floor", "ceil"] = Field("round", description="k_l = ROUND(r_l·|F_l|) (R1)")
    freeze_full_rate: bool = Field(True, description="S70: layers whose rate is 1 are not trained (P4)")
    bias_policy: Literal["freeze", "per_task"] = Field("freeze", description="biases: trained in task 1 only, "
                                                                             "or a copy per task")
    norm_policy: Literal["per_task", "freeze"] = "per_task"
    finetune_epochs: int = Field(2, ge=0, le=10_000, description="passes of the fine-tuning phase S40/S90 "
                                                                "(0: candidate 2 = candidate 1)")
    s100_tie: Literal["cand2", "cand1"] = Field("cand2", description="S100: equal eval accuracy keeps this one")
    # similarity (R6, R9)
    estimator: Literal["codebook", "histogram"] = Field(
        "codebook", description="task PDF estimator: codebook = histogram of nearest-centroid codes of a random "
                                "projection (sees the joint pixel structure); histogram = pooled value histogram")
    measure: Literal["jsd", "kl"] = Field("jsd", description="task distance; kl needs its own rate table")
    hist_bins: int = Field(32, ge=2, le=4096)
    hist_range: list[float] = Field(default_factory=lambda: [0.0, 1.0], min_length=2, max_length=2,
                                    description="histogram: [low, high] of the values (outside: clipped)")
    per_feature: bool = Field(False, description="histogram: one histogram per input position")
    n_codes: int = Field(16, ge=2, le=4096, description="codebook: k-means centroids")
    proj_dim: int = Field(16, ge=1, le=1024, description="codebook: random projection dimension")
    codebook_reference: int = Field(150, ge=4, le=100_000, description="codebook: rows per task in the fitting "
                                                                       "sample")
    candidate_policy: Literal["all", "recent", "smallest_rate", "rate_below", "recent+smallest_rate",
                              "recent+rate_below"] = Field("all", description="learned tasks compared (R9)")
    candidate_k: int | None = Field(None, ge=1, le=10_000, description="K of the candidate options")
    candidate_tau: float | None = Field(None, ge=0, le=1, description="τ of options 3 and 5")
    candidate_combine: Literal["union", "intersection"] = "union"
    eval_batch: int = Field(1024, ge=1, le=1_000_000)

    @field_validator("task1_profile")
    @classmethod
    def _profile(cls, v):
        task1_profile(v)   # rates in [0, 1], known names
        return v

    @model_validator(mode="after")
    def _tables(self):
        try:
            table = rate_table(self.rate_table)
        except ValueError as e:
            raise ValueError(f"method.rate_table: {e}") from None
        groups = set(GROUPS)
        for name, src in (("method.rate_table", set(table.rates)),
                          ("method.task1_profile", set(task1_profile(self.task1_profile)))):
            unknown = sorted(src - groups)
            if unknown:
                raise ValueError(f"{name}: unknown groups {unknown}; allowed: {', '.join(GROUPS)}")
        for pattern, g in self.group_overrides.items():
            if g not in groups:
                raise ValueError(f"method.group_overrides[{pattern!r}]: unknown group {g!r}; allowed: "
                                 f"{', '.join(GROUPS)}")
        if not self.hist_range[0] < self.hist_range[1]:
            raise ValueError(f"method.hist_range: {self.hist_range}; allowed: [low, high] with low < high")
        needs_k = self.candidate_policy not in ("all", "rate_below")
        if needs_k and self.candidate_k is None:
            raise ValueError(f"method.candidate_k: candidate_policy {self.candidate_policy!r} needs K; allowed: "
                             "an integer >= 1")
        if self.candidate_policy.endswith("rate_below") and self.candidate_tau is None:
            raise ValueError(f"method.candidate_tau: candidate_policy {self.candidate_policy!r} needs τ; allowed: "
                             "a number in [0, 1]")
        if self.measure == "kl" and self.rate_table is None and self.variant == "method":
            raise ValueError("method.measure: kl is unbounded and the Fig. 8 thresholds are calibrated for the "
                             "base-2 JSD; allowed: jsd, or kl with an explicit method.rate_table")
        return self

    def table(self):
        return rate_table(self.rate_table)


class ContinualConfig(BaseRunConfig):
    train: TrainSection = TrainSection(epochs=8, batch_size=32, lr=5e-3)
    data: TaskStreamData = TaskStreamData()
    model: ContinualModel = ContinualModel()
    method: ContinualSection = ContinualSection()
