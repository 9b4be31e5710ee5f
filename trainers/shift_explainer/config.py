"""Typed config of ``shift_explainer`` (JP7517093B2): every knob, its range, its default.

One run is the patent's flow S101–S108 (Fig. 12): the classifier f (trained here on domain 1 for
``method.classifier_epochs``, or loaded from ``method.classifier``), per-sample losses L(x) over both
domains (Ray Data batch inference), the loss-conditioned generative model (``train.epochs`` on Ray
Train workers), then selection, interpolation and the explanation grid from the trained models.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainers.common.config import BaseRunConfig, Section, TrainSection

MODEL_TYPES = ("ae", "vae", "bigan")


class ShiftData(Section):
    source: str = Field("colour_thickness", description='"colour_thickness" (embedded digits: domain 1 thin strokes '
                                                        "in random hues, domain 2 thick strokes) or a parquet file/dir "
                                                        "(source rows = domain 1, labelled target rows = domain 2)")
    image_size: int = Field(16, ge=8, le=64, multiple_of=4, description="embedded data: side in px (multiple of 4)")
    thickness: int = Field(3, ge=2, le=8, description="embedded domain 2: dilation window at 16 px (the shift)")
    val_fraction: float = Field(0.2, gt=0, le=0.45)
    image_shape: list[int] | None = Field(None, description="parquet `image` column: [C, H, W], H = W, multiple of 4")
    cache_in_memory: bool = True


class ShiftModel(Section):
    classifier_width: int = Field(16, ge=4, le=512, description="the trained classifier (SmallCNN) channels")
    classifier_feature_dim: int = Field(64, ge=8, le=4096)
    width: int = Field(32, ge=4, le=512, description="channels of the encoder / decoder / discriminators")


class ShiftExplainerSection(Section):
    classifier: str = Field("train", description='"train": train f on domain 1 (S102); or a file written with '
                                                 "torch.save(model) / torch.jit.save, or an MLflow model URI "
                                                 "(runs:/<id>/model, models:/<name>/<version>)")
    classifier_epochs: int = Field(8, ge=1, le=1000, description="S102: passes over domain 1's train split")
    classifier_lr: float = Field(3e-3, gt=0, le=1.0, description="S102: Adam learning rate")
    loss_fn: Literal["ce", "one_minus_p"] = Field(
        "one_minus_p", description="the per-sample loss L = ℓ(f(x), y): 1 − p_y (bounded in [0, 1], like the "
                                   "patent's example values 0.1 / 0.9; default), or cross-entropy (unbounded: the "
                                   "extreme domain-2 sample's L lies far outside what the decoder was trained on)")
    model_type: Literal["ae", "vae", "bigan"] = Field(
        "ae", description="generative model 17: loss-conditioned autoencoder (Embodiment 1), conditional VAE "
                          "(named in the text), BiGAN-style E/G/D(x, z | L) (Embodiment 2)")
    latent_dim: int = Field(2, ge=1, le=512, description="d: size of the feature Z (the patent's example: 2)")
    recon: Literal["mse", "l1", "bce"] = Field("mse", description="dist(x, x′) of Eq. 3")
    recon_weight: float = Field(1.0, ge=0, le=1000, description="weight of dist(x, x′): ae, vae (vs β·KL) and "
                                                               "bigan (added to the adversarial loss; 0 = pure BiGAN)")
    beta: float = Field(0.05, ge=0, le=100, description="vae: weight of the KL term (per-pixel scale)")
    z_independence: float = Field(0.0, ge=0, le=100, description="NOT in the patent (spec §9.4: nothing stops Z "
                                  "from also encoding L): weight of a normalised-HSIC penalty between Z and L over "
                                  "each batch, so the decoder has to take L from its condition; 0 = the patent")
    lr_d: float | None = Field(None, gt=0, le=1.0, description="discriminators' lr (default: train.lr)")
    k: int = Field(3, ge=0, le=30, description="K: interpolated points between the two samples (feature axis)")
    k_loss: int | None = Field(None, ge=0, le=30, description="K_L for the loss axis (default: k)")
    layout: Literal["grid", "diagonal"] = Field("grid", description="grid: every (Z_j, L_i) (Fig. 9); diagonal: "
                                                                    "the joint [Z; L] segment (claim 3)")
    selection: Literal["extreme", "threshold"] = Field(
        "extreme", description="extreme: argmin L over domain 1, argmax L over domain 2; threshold: a seeded "
                               "random pick with L ≤ tau1 (domain 1) and L ≥ tau2 (domain 2)")
    tau1: float | None = Field(None, ge=0, description="threshold selection: domain-1 sample has L ≤ tau1")
    tau2: float | None = Field(None, ge=0, description="threshold selection: domain-2 sample has L ≥ tau2")
    tau_unit: Literal["loss", "quantile"] = Field(
        "loss", description="tau1/tau2 as loss values, or as quantiles in [0, 1] of each domain's losses "
                            "(tau1=0.1: the lowest 10% of domain 1; tau2=0.9: the highest 10% of domain 2)")
    pair_seed: int = Field(0, ge=0, le=2**31 - 1, description="threshold selection: seed of the random pick")
    strict: bool = Field(False, description="threshold selection: L < tau1 (claim 5's English) instead of ≤")
    same_class: bool = Field(True, description="the two samples share their label (the patent's 'A' and 'A')")
    style_transformer: bool = Field(False, description="claim 6: train a CycleGAN-style A: domain 2 -> domain 1 and "
                                                       "use x(1) := A(x(2))")
    lambda_cyc: float = Field(10.0, ge=0, le=1000, description="style transformer: weight of the cycle loss")

    @property
    def effective_k_loss(self) -> int:
        return self.k if self.k_loss is None else self.k_loss

    @model_validator(mode="after")
    def _consistent(self):
        if self.selection == "threshold" and (self.tau1 is None or self.tau2 is None):
            missing = [n for n in ("tau1", "tau2") if getattr(self, n) is None]
            raise ValueError(f"method.{missing[0]}: required when method.selection is 'threshold'; allowed: a "
                             "loss value >= 0 (see the run's loss ranges, or use method.selection=extreme)")
        if self.tau_unit == "quantile":
            for n in ("tau1", "tau2"):
                v = getattr(self, n)
                if v is not None and not 0 <= v <= 1:
                    raise ValueError(f"method.{n}: {v} with method.tau_unit 'quantile'; allowed: a quantile in [0, 1]")
        if self.layout == "diagonal" and self.k_loss not in (None, self.k):
            raise ValueError(f"method.k_loss: {self.k_loss} differs from method.k ({self.k}); allowed with "
                             "layout 'diagonal': the same count (one joint segment)")
        return self


class ShiftExplainerConfig(BaseRunConfig):
    train: TrainSection = TrainSection(epochs=30, lr=2e-3, batch_size=64)
    data: ShiftData = ShiftData()
    model: ShiftModel = ShiftModel()
    method: ShiftExplainerSection = ShiftExplainerSection()
