"""Small networks of the ``shift_explainer`` method (spec §6): the loss-conditioned generative model 17
(autoencoder / VAE / conditional BiGAN), the BiGAN's joint discriminator, and the CycleGAN style transformer
of claim 6. Sized for 16×16 RGB digits on a CPU (width 32 ≈ 40–100k parameters per network).

All image models take (N, C, H, W) in [0, 1] with C ∈ 1…4, H = W and H divisible by 4 (two stride-2 levels).

* :class:`Encoder` E: conv4×4/2 → LeakyReLU → conv4×4/2 → LeakyReLU → Linear → z ∈ R^d
  (``variational=True``: → (μ, log σ²)).
* :class:`Decoder` G: [z; c] → Linear → (2w, H/4, W/4) → ReLU → convT4×4/2 → FiLM(c) → ReLU → convT4×4/2 → ReLU
  → conv3×3 → sigmoid. The condition c enters TWICE — concatenated to z at the input and as a FiLM
  (h·(1 + γ(c)) + β(c)) after the first upsampling — so the decoder cannot easily ignore it.
* :class:`LossConditionedGenerator` (generative model 17): E + G with the loss normalisation
  c = (L − loss_mean) / loss_std held in buffers. The map is affine, so a linear interpolation in L is a linear
  interpolation in c (Eq. 6 is preserved); :meth:`~LossConditionedGenerator.decode` takes RAW losses.
  kind "vae": E is variational and :meth:`~LossConditionedGenerator.encode` returns the posterior mean μ
  (spec §2.9 [IMPL CHOICE]). kind "bigan": the same E and G; the discriminator is the separate
  :class:`JointDiscriminator` (own optimiser).
* :class:`JointDiscriminator` D(x, z | L) (spec §2.8): image branch (2 spectral-normed convs) ⊕ latent branch,
  the normalised loss c concatenated to both and to the joint head → one logit per sample.
* :class:`StyleTransformer` (claim 6, spec §2.10): ``to_domain1`` = A (domain 2 → 1) and ``to_domain2`` = B
  (1 → 2), each an :class:`ImageTranslator` (encoder + decoder with a skip, residual in logit space, sigmoid
  output); :class:`DomainDiscriminator` D1 (image → logit) is separate.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

GENERATOR_KINDS = ("ae", "vae", "bigan")
_LOGIT_EPS = 1e-4


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in image_shape)
        ok = all(not isinstance(v, bool) and int(v) == v for v in image_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (1 <= c <= 4) or h != w or h < 4 or h % 4:
        raise ValueError(f"image_shape: need (C, H, W) with C in 1..4, H == W and H divisible by 4 "
                         f"(e.g. (3, 16, 16)), got {image_shape!r}")
    return c, h, w


def _check_pos(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    return v


def _check_x(x: Tensor, shape: tuple[int, int, int], name: str = "x") -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"{name}: need shape (N, {', '.join(map(str, shape))}), got {tuple(x.shape)}")


def _cond(c: Tensor, n: int, cond_dim: int, ref: Tensor, name: str = "c") -> Tensor:
    c = torch.as_tensor(c, device=ref.device, dtype=ref.dtype)
    if c.dim() == 0:
        c = c.expand(n)
    if c.dim() == 1:
        c = c[:, None]
    if c.shape != (n, cond_dim):
        raise ValueError(f"{name}: need shape ({n},) or ({n}, {cond_dim}), got {tuple(c.shape)}")
    return c


class Encoder(nn.Module):
    """E: (N, C, H, W) → z (N, latent_dim); ``variational``: → (mu, logvar), each (N, latent_dim)."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, width: int = 32,
                 variational: bool = False):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        self.latent_dim = _check_pos("latent_dim", latent_dim)
        _check_pos("width", width)
        c, h, _ = self.image_shape
        self.variational = bool(variational)
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width * (h // 4) ** 2, (2 if self.variational else 1) * latent_dim)

    def forward(self, x: Tensor):
        _check_x(x, self.image_shape)
        out = self.fc(self.net(x))
        if self.variational:
            mu, logvar = out.chunk(2, dim=1)
            return mu, logvar
        return out


class Decoder(nn.Module):
    """G: z (N, latent_dim), condition c (N,) or (N, cond_dim) → x̂ (N, C, H, W) in (0, 1) (sigmoid)."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, width: int = 32, cond_dim: int = 1):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        self.latent_dim = _check_pos("latent_dim", latent_dim)
        self.cond_dim = _check_pos("cond_dim", cond_dim)
        self.width = _check_pos("width", width)
        c, h, _ = self.image_shape
        self.s0 = h // 4
        self.fc = nn.Linear(latent_dim + cond_dim, 2 * width * self.s0 ** 2)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.film = nn.Linear(cond_dim, 2 * width)  # (γ, β) of the second injection of c
        self.up2 = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)
        self.out = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z: need shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        c = _cond(c, z.shape[0], self.cond_dim, z)
        h = torch.relu(self.fc(torch.cat([z, c], dim=1))).view(z.shape[0], 2 * self.width, self.s0, self.s0)
        h = self.up1(h)
        gamma, beta = self.film(c).chunk(2, dim=1)
        h = torch.relu(h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
        h = torch.relu(self.up2(h))
        return torch.sigmoid(self.out(h))


class LossConditionedGenerator(nn.Module):
    """Generative model 17 (spec §2.3, §2.8, §2.9): encoder E and loss-conditioned decoder G.

    kind: "ae" (Eq. 3), "vae" (Eq. 10), "bigan" (Eq. 9; discriminator separate: :class:`JointDiscriminator`).
    The decoder's condition is c = (L − loss_mean) / loss_std (buffers; loss_std > 0), an affine map, so a
    linear interpolation of L is one of c. encode(x) → Z (μ for the VAE); decode(z, l) takes RAW losses l."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int = 8, width: int = 32, kind: str = "ae",
                 loss_mean: float = 0.0, loss_std: float = 1.0):
        super().__init__()
        if kind not in GENERATOR_KINDS:
            raise ValueError(f"kind: unknown value {kind!r}; allowed values: {', '.join(GENERATOR_KINDS)}")
        if not (float(loss_std) > 0 and float(loss_std) < float("inf")):
            raise ValueError(f"loss_std: must be a finite number > 0, got {loss_std!r}")
        if not abs(float(loss_mean)) < float("inf"):
            raise ValueError(f"loss_mean: must be finite, got {loss_mean!r}")
        self.kind = kind
        self.image_shape = _check_image_shape(image_shape)
        self.latent_dim = _check_pos("latent_dim", latent_dim)
        self.encoder = Encoder(image_shape, latent_dim, width, variational=(kind == "vae"))
        self.decoder = Decoder(image_shape, latent_dim, width, cond_dim=1)
        self.register_buffer("loss_mean", torch.tensor(float(loss_mean)))
        self.register_buffer("loss_std", torch.tensor(float(loss_std)))

    def normalize_loss(self, l: Tensor) -> Tensor:
        """c = (l − loss_mean) / loss_std."""
        l = torch.as_tensor(l, device=self.loss_mean.device)
        return (l.to(self.loss_mean.dtype) - self.loss_mean) / self.loss_std

    def encode_dist(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z | x); kind "vae" only."""
        if self.kind != "vae":
            raise ValueError(f"kind: encode_dist needs kind='vae', this model has kind={self.kind!r}")
        return self.encoder(x)

    def encode(self, x: Tensor) -> Tensor:
        """Z = E(x), (N, latent_dim); for the VAE the posterior mean μ."""
        out = self.encoder(x)
        return out[0] if self.kind == "vae" else out

    def decode(self, z: Tensor, l: Tensor) -> Tensor:
        """x̂ = G(z, (l − loss_mean) / loss_std) for RAW losses l (N,) (or a scalar, broadcast)."""
        return self.decoder(z, self.normalize_loss(l).to(z.dtype))

    def forward(self, x: Tensor, l: Tensor) -> dict[str, Tensor]:
        """Reconstruction G(E(x), L(x)): {"x_hat", "z"}; for the VAE also "mu", "logvar", with "z" the
        reparameterised sample z = μ + σ·ε (ε ∼ N(0, I)) that is decoded."""
        if self.kind == "vae":
            mu, logvar = self.encoder(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            return {"x_hat": self.decode(z, l), "mu": mu, "logvar": logvar, "z": z}
        z = self.encoder(x)
        return {"x_hat": self.decode(z, l), "z": z}


class JointDiscriminator(nn.Module):
    """D(x, z | L) of the conditional BiGAN (spec §2.8): x (N, C, H, W), z (N, latent_dim), l_norm (N,) or
    (N, 1) the NORMALISED loss → logits (N,). Spectral norm on every layer."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, width: int = 32):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        self.latent_dim = _check_pos("latent_dim", latent_dim)
        _check_pos("width", width)
        c, h, _ = self.image_shape
        hid = 2 * width
        self.x_net = nn.Sequential(
            _sn(nn.Conv2d(c + 1, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            _sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            nn.Flatten(), _sn(nn.Linear(2 * width * (h // 4) ** 2, hid)), nn.LeakyReLU(0.2),
        )
        self.z_net = nn.Sequential(_sn(nn.Linear(latent_dim + 1, hid)), nn.LeakyReLU(0.2),
                                   _sn(nn.Linear(hid, hid)), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(_sn(nn.Linear(2 * hid + 1, hid)), nn.LeakyReLU(0.2), _sn(nn.Linear(hid, 1)))

    def forward(self, x: Tensor, z: Tensor, l_norm: Tensor) -> Tensor:
        _check_x(x, self.image_shape)
        if z.dim() != 2 or z.shape != (x.shape[0], self.latent_dim):
            raise ValueError(f"z: need shape ({x.shape[0]}, {self.latent_dim}), got {tuple(z.shape)}")
        c = _cond(l_norm, x.shape[0], 1, x, "l_norm")
        cmap = c[:, :, None, None].expand(-1, 1, x.shape[2], x.shape[3])
        hx = self.x_net(torch.cat([x, cmap], dim=1))
        hz = self.z_net(torch.cat([z.to(x.dtype), c], dim=1))
        return self.head(torch.cat([hx, hz, c], dim=1)).squeeze(1)


class ImageTranslator(nn.Module):
    """Image → image of the same shape: encoder (conv3×3, conv4×4/2) + decoder (convT4×4/2, conv3×3 on
    [up, skip]); output sigmoid(logit(x) + Δ) — a residual in logit space, so a zero Δ is the identity."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        _check_pos("width", width)
        c = self.image_shape[0]
        self.encoder = nn.ModuleList([nn.Conv2d(c, width, 3, padding=1),
                                      nn.Conv2d(width, width, 4, stride=2, padding=1)])
        self.decoder = nn.ModuleList([nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),
                                      nn.Conv2d(2 * width, c, 3, padding=1)])

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.image_shape)
        h1 = torch.relu(self.encoder[0](x))
        h2 = torch.relu(self.encoder[1](h1))
        u = torch.relu(self.decoder[0](h2))
        delta = self.decoder[1](torch.cat([u, h1], dim=1))
        return torch.sigmoid(torch.logit(x.clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)) + delta)


class StyleTransformer(nn.Module):
    """Claim 6 / spec §2.10: A = ``to_domain1`` (domain 2 → 1: encoder A + decoder A) and B = ``to_domain2``
    (domain 1 → 2). ``forward(x2)`` = A(x2); ``cycle(x2)`` = (A(x2), B(A(x2)))."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        self.to_domain1 = ImageTranslator(image_shape, width)
        self.to_domain2 = ImageTranslator(image_shape, width)

    def forward(self, x2: Tensor) -> Tensor:
        return self.to_domain1(x2)

    def cycle(self, x2: Tensor) -> tuple[Tensor, Tensor]:
        a = self.to_domain1(x2)
        return a, self.to_domain2(a)


class DomainDiscriminator(nn.Module):
    """D1 (spec §2.10): image (N, C, H, W) → logit (N,) "real domain-1 data". Spectral norm on every layer."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        _check_pos("width", width)
        c, h, _ = self.image_shape
        self.net = nn.Sequential(
            _sn(nn.Conv2d(c, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            _sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            nn.Flatten(), _sn(nn.Linear(2 * width * (h // 4) ** 2, 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        _check_x(x, self.image_shape)
        return self.net(x).squeeze(1)

