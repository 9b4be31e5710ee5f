"""Small networks of the ``ssd2gan`` method (spec §6): generator G, spatial discriminator Ds, frequency
discriminator Df, sized for 16×16 or 32×32 images (single-channel by default).

The patent's experiments use "Resnet-SNGAN" (Miyato et al. 2018 [EXT]); these are scaled-down versions of
that layout:

* :class:`Generator`: z ∈ R^{z_dim} → Linear → (width, 4, 4) → ResBlockUp × log2(image_size / 4)
  → norm → ReLU → conv3×3 → tanh; output (B, channels, S, S) in [−1, 1].
  ResBlockUp: norm → ReLU → upsample×2 (nearest) → conv3×3 → norm → ReLU → conv3×3, shortcut
  upsample → conv1×1. ``norm="batch"`` (default, as SNGAN) or ``"none"`` (no per-worker batch statistics
  under data-parallel training; the loop may also convert to SyncBatchNorm).
* :class:`Discriminator`: OptimizedBlock (down) → ResBlockDown → ResBlock × 2 → ReLU → global SUM pooling
  → Linear → one LOGIT per sample, shape (B,). ``spectral_norm=True`` (default; the SNGAN baseline and the
  patent's Resnet-SNGAN) wraps every conv/linear with ``torch.nn.utils.parametrizations.spectral_norm``.
* Df ([IMPL-CHOICE] spec §6): an independent :class:`Discriminator` (separate parameters) whose input is the
  frequency representation F(x): C channels for the DCT (shape-preserving), 2C for the DFT "reim" mode
  (:func:`trainers.ssd2gan.transforms.freq_channels`). The loop computes F(x) (S103/S107) and calls Df on it, so
  the gradient of Df's loss reaches G through the differentiable transform. :class:`FrequencyDiscriminator`
  bundles F and Df for convenience (``forward(x)`` = Df(F(x)) on spatial input).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from trainers.ssd2gan.transforms import DFT_MODES, FREQ_KINDS, freq, freq_channels

IMAGE_SIZES = (16, 32)
G_NORMS = ("batch", "none")


def _maybe_sn(module: nn.Module, use: bool) -> nn.Module:
    return _sn(module) if use else module


def _norm(kind: str, ch: int) -> nn.Module:
    return nn.BatchNorm2d(ch) if kind == "batch" else nn.Identity()


def _check_size(image_size: int) -> None:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size: unsupported value {image_size!r}; allowed values: "
                         f"{', '.join(str(s) for s in IMAGE_SIZES)}")


def _check_pos(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    return v


class ResBlockUp(nn.Module):
    """SNGAN generator block: ×2 nearest upsampling with a learned 1×1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch"):
        super().__init__()
        self.n1 = _norm(norm, in_ch)
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.n2 = _norm(norm, out_ch)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.sc = nn.Conv2d(in_ch, out_ch, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(self.up(torch.relu(self.n1(x))))
        h = self.c2(torch.relu(self.n2(h)))
        return h + self.sc(self.up(x))


class ResBlockDown(nn.Module):
    """SNGAN discriminator block: ReLU → conv → ReLU → conv (→ avgpool 2), learned 1×1 shortcut when the
    width or resolution changes. ``optimized=True``: the first block (no leading ReLU, pool before the
    shortcut conv)."""

    def __init__(self, in_ch: int, out_ch: int, down: bool = True, optimized: bool = False, sn: bool = True):
        super().__init__()
        self.down, self.optimized = down, optimized
        self.c1 = _maybe_sn(nn.Conv2d(in_ch, out_ch, 3, padding=1), sn)
        self.c2 = _maybe_sn(nn.Conv2d(out_ch, out_ch, 3, padding=1), sn)
        self.sc = _maybe_sn(nn.Conv2d(in_ch, out_ch, 1), sn) if (down or in_ch != out_ch) else None
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.optimized else torch.relu(x)
        h = self.c2(torch.relu(self.c1(h)))
        if self.down:
            h = self.pool(h)
        s = x
        if self.optimized:
            s = self.sc(self.pool(s))
        elif self.sc is not None:
            s = self.sc(s)
            if self.down:
                s = self.pool(s)
        return h + s


class Generator(nn.Module):
    """G: (B, z_dim) latent (N(0, I), spec §2.1) → (B, channels, image_size, image_size) in [−1, 1]."""

    def __init__(self, z_dim: int = 128, image_size: int = 32, channels: int = 1, width: int = 64,
                 norm: str = "batch"):
        super().__init__()
        _check_size(image_size)
        if norm not in G_NORMS:
            raise ValueError(f"norm: unknown value {norm!r}; allowed values: {', '.join(G_NORMS)}")
        self.z_dim = _check_pos("z_dim", z_dim)
        self.image_size, self.channels = image_size, _check_pos("channels", channels)
        self.width = _check_pos("width", width)
        self.fc = nn.Linear(z_dim, 4 * 4 * width)
        self.blocks = nn.Sequential(*[ResBlockUp(width, width, norm) for _ in range(int(math.log2(image_size // 4)))])
        self.out_norm = _norm(norm, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z: needs shape (B, {self.z_dim}), got {tuple(z.shape)}")
        h = self.fc(z).view(z.shape[0], self.width, 4, 4)
        h = self.blocks(h)
        return torch.tanh(self.out(torch.relu(self.out_norm(h))))

    def sample_latent(self, n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I), shape (n, z_dim) (spec S102)."""
        return torch.randn(n, self.z_dim, device=device, generator=generator)


class Discriminator(nn.Module):
    """Ds (spatial input) or Df (frequency input): (B, in_channels, S, S) → logits (B,)."""

    def __init__(self, in_channels: int = 1, image_size: int = 32, width: int = 64, spectral_norm: bool = True):
        super().__init__()
        _check_size(image_size)
        self.in_channels = _check_pos("in_channels", in_channels)
        self.image_size = image_size
        _check_pos("width", width)
        self.blocks = nn.Sequential(
            ResBlockDown(in_channels, width, down=True, optimized=True, sn=spectral_norm),
            ResBlockDown(width, width, down=True, sn=spectral_norm),
            ResBlockDown(width, width, down=False, sn=spectral_norm),
            ResBlockDown(width, width, down=False, sn=spectral_norm),
        )
        self.head = _maybe_sn(nn.Linear(width, 1), spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"x: needs shape (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        h = torch.relu(self.blocks(x)).sum(dim=(2, 3))
        return self.head(h).squeeze(1)


class FrequencyDiscriminator(nn.Module):
    """Df ∘ F on spatial input: ``forward(x) = net(freq(x, kind, dft_mode))`` (logits (B,)).
    ``represent(x)`` gives F(x) alone; ``net`` is the plain :class:`Discriminator` on the representation."""

    def __init__(self, channels: int = 1, image_size: int = 32, width: int = 64, spectral_norm: bool = True,
                 kind: str = "dct2", dft_mode: str = "reim"):
        super().__init__()
        self.kind, self.dft_mode = kind, dft_mode
        self.net = Discriminator(freq_channels(channels, kind, dft_mode), image_size, width, spectral_norm)

    def represent(self, x: Tensor) -> Tensor:
        return freq(x, self.kind, self.dft_mode)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.represent(x))


def build_models(image_size: int = 32, channels: int = 1, z_dim: int = 128, g_width: int = 64,
                 d_width: int = 64, spectral_norm: bool = True, kind: str = "dct2", dft_mode: str = "reim",
                 g_norm: str = "batch") -> tuple[Generator, Discriminator, Discriminator]:
    """(G, Ds, Df) with independent parameters; Df takes the representation F(x)
    (``freq_channels(channels, kind, dft_mode)`` channels)."""
    if kind not in FREQ_KINDS:
        raise ValueError(f"kind: unknown value {kind!r}; allowed values: {', '.join(FREQ_KINDS)}")
    if kind == "dft2" and dft_mode not in DFT_MODES:
        raise ValueError(f"dft_mode: unknown value {dft_mode!r}; allowed values: {', '.join(DFT_MODES)}")
    g = Generator(z_dim, image_size, channels, g_width, g_norm)
    ds = Discriminator(channels, image_size, d_width, spectral_norm)
    df = Discriminator(freq_channels(channels, kind, dft_mode), image_size, d_width, spectral_norm)
    return g, ds, df
