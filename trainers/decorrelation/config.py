"""Typed config of the ``decorrelation`` method (JP7566705B2): every knob, its range, its default."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainers.common.config import BaseRunConfig, Section

VARIANTS = ("A", "B", "C", "generic", "supervised", "decov")


class DomainShiftData(Section):
    source: str = Field("embedded", description='"embedded" (digits, shifted target) or a parquet file/dir')
    image_size: int = Field(16, ge=8, le=64, description="embedded data: side of the upsampled digits")
    shift: list[Literal["thicken", "rotate", "noise", "invert", "blur"]] = Field(
        default_factory=lambda: ["thicken", "rotate", "noise"],
        description="embedded data: transformations that make the target domain, in order")
    val_fraction: float = Field(0.2, gt=0, le=0.45)
    image_shape: list[int] | None = Field(None, description="parquet `image` column: [C, H, W]")
    cache_in_memory: bool = Field(True, description="pull each worker's shard into memory once")


class ModelSection(Section):
    name: Literal["cnn", "mlp"] = "cnn"
    width: int = Field(32, ge=4, le=4096, description="channels of the first conv / hidden units")
    feature_dim: int = Field(128, ge=2, le=8192, description="channels C of the fc1 feature layer")
    factory: str | None = Field(None, description='your own model: "package.module:function" called '
                                                   "as function(input_shape, num_classes) -> nn.Module")


class DecorrelationSection(Section):
    variant: Literal["A", "B", "C", "generic", "supervised", "decov"] = Field(
        "A", description="A: L2+L3(U); B: L2+L3(U)+L4(S); C: L2+L4(S); generic: L_corr on S∪U; "
                         "supervised: L2 only (baseline); decov: L2 + DeCov covariance penalty (baseline)")
    layers_labelled: list[str] = Field(default_factory=lambda: ["fc1"], min_length=1,
                                       description="module names whose outputs are F_S (L4)")
    layers_unlabelled: list[str] = Field(default_factory=lambda: ["fc1"], min_length=1,
                                         description="module names whose outputs are F_U (L3)")
    reduction: Literal["gap", "gmp", "flatten"] = Field("gap", description="conv maps -> (B, C)")
    aggregation: Literal["sq", "abs"] = "sq"
    normalize: bool = Field(True, description="divide L_corr by C(C-1) (mean over ordered pairs)")
    lambda2: float = Field(1.0, ge=0, le=1e4, description="weight of the task loss L2")
    lambda3: float = Field(1.0, ge=0, le=1e4, description="weight of L3 = L_corr(unlabelled)")
    lambda4: float = Field(0.5, ge=0, le=1e4, description="weight of L4 = L_corr(labelled); B and C")
    decov_weight: float = Field(0.01, ge=0, le=1e4, description="DeCov baseline weight (variant decov)")
    completion_threshold: float | None = Field(
        None, ge=0, description="S108: stop when the epoch means of L2 and L3 are both <= this")
    plateau_patience: int = Field(3, ge=1, le=1000, description="epochs without 1% improvement "
                                                                "before recommending a change")

    @model_validator(mode="after")
    def _needs_a_task_loss(self):
        if self.lambda2 == 0 and self.variant in ("supervised", "C"):
            raise ValueError(f"method.lambda2 must be > 0 for variant {self.variant} (it has no other loss)")
        return self


class DecorrelationConfig(BaseRunConfig):
    data: DomainShiftData = DomainShiftData()
    model: ModelSection = ModelSection()
    method: DecorrelationSection = DecorrelationSection()
