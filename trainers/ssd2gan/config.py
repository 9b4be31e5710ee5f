"""Typed config of the ``ssd2gan`` method (JP7464138B2): every knob, its range, its default.

One "epoch" of a GAN run is one evaluation interval: ``method.eval_every`` generator steps, then
the Fréchet distance and the spectral error are measured, logged and checkpointed. Total steps =
``train.epochs × method.eval_every``. ``train.lr`` is G's learning rate; ``method.lr_d`` the
discriminators' (default: the same).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainers.common.config import BaseRunConfig, Section, TrainSection

VARIANTS = ("sngan", "durall", "freqmse", "V0", "V1", "V2", "V3")
TWO_DISCRIMINATORS = ("V0", "V1", "V2", "V3")


class ImageData(Section):
    source: str = Field("digits", description='"digits" (sklearn digits, upsampled), "patches" (grey patches of '
                                              "the photos sklearn ships) or a parquet file/dir (labelled source rows)")
    image_size: Literal[16, 32] = Field(16, description="embedded data: side of the images (G's output size)")
    val_fraction: float = Field(0.2, gt=0, le=0.45)
    image_shape: list[int] | None = Field(None, description="parquet `image` column: [C, H, W] with H = W = 16 or 32")
    cache_in_memory: bool = True


class GanModel(Section):
    z_dim: int = Field(64, ge=2, le=1024, description="latent size, z ~ N(0, I)")
    g_width: int = Field(32, ge=4, le=1024, description="generator channels (scaled-down ResNet-SNGAN)")
    d_width: int = Field(32, ge=4, le=1024, description="channels of Ds and of Df")
    g_norm: Literal["batch", "none"] = Field("batch", description="generator normalisation (SNGAN: batch)")


class Ssd2ganSection(Section):
    variant: Literal["sngan", "durall", "freqmse", "V0", "V1", "V2", "V3"] = Field(
        "V3", description="V0: Ds+Df (Eq. 1); V1: +trade-off α (Eq. 2); V2: +consistency λc (Eq. 3); V3: both; "
                          "baselines: sngan (one spectral-norm D), durall (sngan + 1-D spectrum BCE on G), "
                          "freqmse (sngan + 2-D DCT mean matching on G)")
    alpha: float = Field(0.8, gt=0, lt=1, description="V1/V3: L_G = α·l_Gs + (1−α)·l_Gf")
    lambda_c: float = Field(0.001, ge=0, le=1000, description="V2/V3: L_Ds = L_Ds_GAN + λc·L_cons")
    transform: Literal["dct", "dft"] = Field("dct", description="F: orthonormal 2-D DCT-II, or 2-D DFT")
    dft_mode: Literal["reim", "hartley"] = Field("reim", description="dft: Re/Im as channels, or Hartley (Re−Im)")
    consistency_on: Literal["both", "real", "fake"] = "both"
    loss_type: Literal["log", "ns"] = Field(
        "ns", description="log: the patent's saturating E[log(1−D(G(z)))] for G; ns: non-saturating −E[log D(G(z))] "
                          "(default: the log form stalls G early on these small nets; spec §9.7 leaves it open)")
    spectral_weight: float = Field(1.0, gt=0, le=1e4, description="durall: weight of the spectral BCE on L_G")
    freqmse_weight: float = Field(1.0, gt=0, le=1e4, description="freqmse: weight of the DCT MSE on L_G")
    lr_d: float | None = Field(None, gt=0, le=1.0, description="discriminators' lr (default: train.lr)")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam β1 of all three optimisers")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam β2")
    eval_every: int = Field(100, ge=1, le=1_000_000, description="G steps per evaluation (one 'epoch')")
    fd_samples: int = Field(1000, ge=64, le=100_000, description="generated samples per Fréchet distance")
    grid_size: int = Field(8, ge=2, le=16, description="sample grid: grid_size × grid_size images")

    @property
    def two_discriminators(self) -> bool:
        return self.variant in TWO_DISCRIMINATORS

    @property
    def effective_alpha(self) -> float | None:
        return self.alpha if self.variant in ("V1", "V3") else None

    @property
    def effective_lambda_c(self) -> float:
        return self.lambda_c if self.variant in ("V2", "V3") else 0.0

    @property
    def freq_kind(self) -> str:
        return "dct2" if self.transform == "dct" else "dft2"


class Ssd2ganConfig(BaseRunConfig):
    train: TrainSection = TrainSection(epochs=10, lr=2e-4, batch_size=64, checkpoints_to_keep=2)
    data: ImageData = ImageData()
    model: GanModel = GanModel()
    method: Ssd2ganSection = Ssd2ganSection()

    @model_validator(mode="after")
    def _adam_only(self):
        if self.train.optimizer not in ("adam", "adamw"):
            raise ValueError(f"train.optimizer: {self.train.optimizer!r}; allowed for ssd2gan: adam, adamw "
                             "(three Adam optimisers, method.beta1/beta2)")
        return self
