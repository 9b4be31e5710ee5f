"""Typed config of the ``mixture_sparsity`` method (JP7085158B2): every knob, its range, its default."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from trainers.common.config import BaseRunConfig, Knob, Section, TrainSection

REGULARIZERS = ("mixture", "group_lasso", "l2", "none")


class ClassificationData(Section):
    source: str = Field("embedded", description='"embedded" (scikit-learn digits) or a parquet file/dir '
                                                "(source rows train/val; labelled target rows = test)")
    image_size: int = Field(8, ge=8, le=64, description="embedded data: side of the (upsampled) digits")
    val_fraction: float = Field(0.2, gt=0, le=0.45)
    image_shape: list[int] | None = Field(None, description="parquet `image` column: [C, H, W]")
    cache_in_memory: bool = True


class SparsityModel(Section):
    name: Literal["mlp", "cnn"] = Field("mlp", description="mlp: the patent's DNN (sigmoid hidden layers, "
                                                           "softmax output); cnn: conv blocks + linear head")
    hidden: list[int] = Field(default_factory=lambda: [128, 128], min_length=1,
                              description="mlp hidden widths (layers fc0..); cnn: fc widths after the convs")
    channels: list[int] = Field(default_factory=lambda: [8, 16], min_length=1, description="cnn conv channels")
    act: Literal["sigmoid", "relu"] = "sigmoid"


class SparsitySection(Section):
    regularizer: Literal["mixture", "group_lasso", "l2", "none"] = Field(
        "mixture", description="mixture: the patent's −Σ log Σ α_j p_j(‖w_g‖); group_lasso / l2 / none: baselines")
    lam: float = Field(0.01, ge=0, le=1e3, description="λ in L = E + λ·R")
    warmup_epochs: int = Field(5, ge=0, le=10_000, description="epochs with λ = 0 first (the patent's 'network "
                                                               "already trained' initial model): spreads the "
                                                               "group norms before the prior clusters them")
    groups: list[str] = Field(default_factory=lambda: ["fc0:rows", "fc1:rows"], min_length=1,
                              description='"layer:rows" (output units/channels) or "layer:cols" (inputs)')
    weights: list[float] = Field(default_factory=lambda: [0.7, 0.3], min_length=1,
                                 description="mixture weights α_j (>= 0, sum 1); α_0 = the 'delete' component")
    means: list[float] = Field(default_factory=lambda: [0.0, 2.5], min_length=1, description="component means μ_j")
    stds: list[float] = Field(default_factory=lambda: [0.5, 0.5], min_length=1,
                              description="component σ_j (std of a Gaussian, scale b of a Laplace)")
    family: list[Literal["gaussian", "laplace"]] = Field(
        default_factory=lambda: ["gaussian"], min_length=1,
        description="one family for all components, or one per component (Gaussian+Laplace mixture)")
    threshold: float | None = Field(None, gt=0, description="deletion threshold τ on group norms; "
                                                            "default: the delete/keep boundary of the mixture")
    budget: float | None = Field(None, gt=0, lt=1, description="fraction of groups (or parameters, see "
                                                              "budget_unit) to delete")
    budget_unit: Literal["groups", "params"] = Field("groups", description="what method.budget counts")
    budget_search: Literal["calibrate", "threshold"] = Field(
        "calibrate", description="calibrate: `trainlab run` retrains, bisecting α0 (mixture) or λ (baselines, with "
                                 "method.threshold) until the prior itself deletes the budget, then prunes exactly "
                                 "the budget; threshold: one run, τ = the quantile that hits the budget")
    calibration_runs: int = Field(6, ge=2, le=30, description="calibrate: most trainings of the bisection")
    calibration_tolerance: float = Field(0.03, gt=0, lt=0.5,
                                         description="calibrate: stop when |natural fraction − budget| <= this")
    latency_batches: list[int] = Field(default_factory=lambda: [1, 64, 1024], min_length=1)

    @model_validator(mode="after")
    def _mixture_is_consistent(self):
        m = len(self.weights)
        if len(self.means) != m or len(self.stds) != m:
            raise ValueError(f"method.weights/means/stds: lengths {m}/{len(self.means)}/{len(self.stds)} differ; "
                             "allowed: one weight, mean and std per mixture component")
        if len(self.family) not in (1, m):
            raise ValueError(f"method.family: {len(self.family)} entries for {m} components; allowed: 1 or {m}")
        if any(a < 0 for a in self.weights) or not math.isclose(sum(self.weights), 1.0, abs_tol=1e-6):
            raise ValueError(f"method.weights: {self.weights} must be >= 0 and sum to 1")
        if any(s <= 0 for s in self.stds):
            raise ValueError(f"method.stds: {self.stds}; allowed: every std > 0")
        for g in self.groups:
            layer, _, dim = g.partition(":")
            if not layer or dim not in ("rows", "cols"):
                raise ValueError(f"method.groups: {g!r}; allowed: 'layer:rows' or 'layer:cols', e.g. 'fc0:rows'")
        if self.budget is not None and self.budget_search == "calibrate":
            if self.regularizer == "none":
                raise ValueError("method.budget_search: calibrate needs a regulariser to steer (regularizer is "
                                 "'none'); allowed: threshold, or regularizer mixture|group_lasso|l2")
            if self.regularizer != "mixture" and self.threshold is None:
                raise ValueError(f"method.threshold: calibrating λ of {self.regularizer} needs a fixed deletion "
                                 "threshold (its prior has no delete/keep boundary); allowed: a value > 0, "
                                 "e.g. method.threshold=0.1")
        if any(b < 1 for b in self.latency_batches):
            raise ValueError("method.latency_batches: allowed: batch sizes >= 1")
        return self

    def group_spec(self) -> list[tuple[str, str]]:
        return [tuple(g.split(":", 1)) for g in self.groups]  # type: ignore[misc]

    def natural_metric(self) -> str:
        """The metric that says how much the prior itself deleted (at τ = boundary/configured threshold)."""
        return "natural_pruned_fraction" if self.budget_unit == "groups" else "natural_params_removed_fraction"

    def family_arg(self):
        return self.family[0] if len(self.family) == 1 else list(self.family)


class MixtureSparsityConfig(BaseRunConfig):
    train: TrainSection = TrainSection(epochs=15, lr=1e-2)  # the sigmoid DNN needs a larger step than the CNN
    data: ClassificationData = ClassificationData()
    model: SparsityModel = SparsityModel()
    method: SparsitySection = SparsitySection()

    def budget_knob(self) -> Knob | None:
        """What budget calibration turns (monotone: more deletion as it grows), or None (no calibration).

        mixture: u = logit α_0 (the "delete" weight; the other weights keep their proportions);
        group_lasso / l2: u = log10 λ at the configured threshold."""
        m = self.method
        if m.budget is None or m.budget_search != "calibrate":
            return None
        if m.regularizer == "mixture":
            rest = sum(m.weights[1:])

            def weights(u: float) -> dict:
                a0 = 1.0 / (1.0 + math.exp(-u))
                return {"method": {"weights": [a0] + [(1 - a0) * a / rest for a in m.weights[1:]]}}

            a0 = min(max(m.weights[0], 1e-3), 1 - 1e-6)
            return Knob("method.weights[0]", lo=math.log(0.05 / 0.95), hi=math.log((1 - 1e-6) / 1e-6),
                        start=math.log(a0 / (1 - a0)), overrides=weights, metric=m.natural_metric(),
                        target=m.budget, tolerance=m.calibration_tolerance, max_runs=m.calibration_runs,
                        shown=lambda u: 1.0 / (1.0 + math.exp(-u)))
        lam = min(max(m.lam, 1e-6), 10.0)
        return Knob("method.lam", lo=-6.0, hi=1.0, start=math.log10(lam),
                    overrides=lambda u: {"method": {"lam": 10.0 ** u}}, metric=m.natural_metric(),
                    target=m.budget, tolerance=m.calibration_tolerance, max_runs=m.calibration_runs,
                    shown=lambda u: 10.0 ** u)

    @model_validator(mode="after")
    def _warmup_leaves_regularised_epochs(self):
        if self.method.regularizer != "none" and self.method.warmup_epochs >= self.train.epochs:
            raise ValueError(f"method.warmup_epochs: {self.method.warmup_epochs} leaves no regularised epoch; "
                             f"allowed: 0..{self.train.epochs - 1} (train.epochs = {self.train.epochs})")
        return self
