"""S103 of ``shift_explainer`` (JP7517093B2) on a Ray Train worker, one batch at a time: the models
(:class:`Models`: the loss-conditioned generator, the BiGAN discriminator, the claim-6 style transformer and its
discriminator), their optimisers, one training step (:func:`train_step`) and the held-out reconstruction
(:func:`evaluate`). Gradients are averaged over ranks explicitly (:func:`trainers.common.worker.average_gradients`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers.common.worker import average_gradients
from trainers.shift_explainer.config import ShiftExplainerConfig
from trainers.shift_explainer.losses import (bigan_d_loss, bigan_eg_loss, cycle_loss, hsic_dependence, latent_prior,
                                             recon_loss, style_d_loss, style_g_loss, vae_loss)
from trainers.shift_explainer.models import (DomainDiscriminator, JointDiscriminator, LossConditionedGenerator,
                                             StyleTransformer)

LOSS_KEYS = ("loss_total", "loss_recon", "loss_kl", "loss_d", "loss_z_dependence", "loss_style_cycle",
             "loss_style_g", "loss_style_d")


@dataclass
class Models:
    gen: LossConditionedGenerator
    disc: JointDiscriminator | None
    style: StyleTransformer | None
    style_disc: DomainDiscriminator | None

    def modules(self) -> dict[str, torch.nn.Module]:
        return {k: v for k, v in vars(self).items() if v is not None}


def build_models(cfg: ShiftExplainerConfig, input_shape, loss_mean: float, loss_std: float) -> Models:
    m, shape = cfg.method, tuple(input_shape)
    gen = LossConditionedGenerator(shape, m.latent_dim, cfg.model.width, m.model_type, loss_mean, loss_std)
    disc = JointDiscriminator(shape, m.latent_dim, cfg.model.width) if m.model_type == "bigan" else None
    style = StyleTransformer(shape, cfg.model.width) if m.style_transformer else None
    style_disc = DomainDiscriminator(shape, cfg.model.width) if m.style_transformer else None
    return Models(gen, disc, style, style_disc)


def make_optimizers(cfg: ShiftExplainerConfig, models: Models) -> dict[str, torch.optim.Optimizer]:
    lr, lr_d = cfg.train.lr, cfg.method.lr_d or cfg.train.lr
    kw = {"weight_decay": cfg.train.weight_decay}
    opts = {"gen": torch.optim.Adam(models.gen.parameters(), lr=lr, betas=(0.5, 0.999) if models.disc else (0.9, 0.999), **kw)}
    if models.disc is not None:
        opts["disc"] = torch.optim.Adam(models.disc.parameters(), lr=lr_d, betas=(0.5, 0.999), **kw)
    if models.style is not None:
        opts["style"] = torch.optim.Adam(models.style.parameters(), lr=lr, betas=(0.5, 0.999), **kw)
        opts["style_disc"] = torch.optim.Adam(models.style_disc.parameters(), lr=lr_d, betas=(0.5, 0.999), **kw)
    return opts


def _step(opt, loss, module) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(module)
    opt.step()


def _independence_term(z: torch.Tensor, ln: torch.Tensor, m) -> tuple[torch.Tensor, dict]:
    """``method.z_independence`` · nHSIC(Z, L) over the batch (off by default; not in the patent, spec §9.4):
    Z is pushed to carry nothing about L, so what L explains has to come through the decoder's condition."""
    if m.z_independence <= 0 or len(z) < 4:
        return torch.zeros((), device=z.device), {}
    dep = hsic_dependence(z, ln)
    return m.z_independence * dep, {"loss_z_dependence": dep.detach()}


def train_step(models: Models, opts: dict, x: torch.Tensor, l: torch.Tensor, domain: torch.Tensor, m,
               gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One S103 step on a batch of both domains (x, its classifier loss l, domain 1|2); returns the detached
    losses (:data:`LOSS_KEYS`).

    ae: dist(x, G(E(x), L)) (Eq. 3); vae: Eq. 10 (recon_weight·dist + β·KL); bigan: D(x, z | L) updated on
    (x, E(x)) vs (G(z, L), z), z ~ N(0, I), L = the batch's real losses (spec §2.8 IMPL CHOICE), then E, G on
    the flipped labels + recon_weight·dist(x, G(E(x), L)). Optional: :func:`_independence_term`. The
    style transformer (claim 6, Eq. 11) trains on the batch's domain-2 rows (cycle 2 → 1 → 2) against D1 on
    its domain-1 rows. The classifier f is not involved: its losses are columns of the batch."""
    g, zero = models.gen, torch.zeros((), device=x.device)
    out = dict.fromkeys(LOSS_KEYS, zero)
    ln = g.normalize_loss(l)                      # the decoder's own conditioning value, for D(x, z | L)
    if m.model_type == "bigan":
        z = latent_prior(x.shape[0], m.latent_dim, generator=gen, device=x.device)
        with torch.no_grad():
            z_real, x_fake = g.encode(x), g.decode(z, l)
        d_loss = bigan_d_loss(models.disc(x, z_real, ln), models.disc(x_fake, z, ln))
        _step(opts["disc"], d_loss, models.disc)
        z_real, x_fake = g.encode(x), g.decode(z, l)
        rec = recon_loss(x, g.decode(z_real, l), m.recon)
        extra, logs = _independence_term(z_real, ln, m)
        total = bigan_eg_loss(models.disc(x, z_real, ln), models.disc(x_fake, z, ln)) + m.recon_weight * rec + extra
        out["loss_d"] = d_loss.detach()
    else:
        res = g(x, l)
        if m.model_type == "vae":
            total, rec, kl = vae_loss(x, res["x_hat"], res["mu"], res["logvar"], beta=m.beta, kind=m.recon)
            total = total + (m.recon_weight - 1.0) * rec
            out["loss_kl"] = kl.detach()
            z = res["mu"]
        else:
            rec = recon_loss(x, res["x_hat"], m.recon)
            total = m.recon_weight * rec
            z = res["z"]
        extra, logs = _independence_term(z, ln, m)
        total = total + extra
    _step(opts["gen"], total, g)
    if models.disc is not None:                   # E/G's backward reached D's parameters; never applied
        models.disc.zero_grad(set_to_none=True)
    out.update(loss_total=total.detach(), loss_recon=rec.detach(), **logs)
    if models.style is not None:
        x1, x2 = x[domain == 1], x[domain == 2]
        if len(x1) and len(x2):
            a = models.style(x2)
            ds = style_d_loss(models.style_disc(x1), models.style_disc(a.detach()))
            _step(opts["style_disc"], ds, models.style_disc)
            cyc = cycle_loss(x2, models.style.to_domain2(a))
            sg = style_g_loss(models.style_disc(a)) + m.lambda_cyc * cyc
            _step(opts["style"], sg, models.style)
            models.style_disc.zero_grad(set_to_none=True)
            out.update(loss_style_cycle=cyc.detach(), loss_style_g=sg.detach(), loss_style_d=ds.detach())
    return out


@torch.no_grad()
def evaluate(models: Models, loader, m, device) -> torch.Tensor:
    """Held-out reconstruction dist(x, G(E(x), L)) summed with its row count (all-reduced by the caller)."""
    models.gen.eval()
    acc = torch.zeros(2, dtype=torch.float64, device=device)
    for b in loader.full():
        x_hat = models.gen.decode(models.gen.encode(b["x"]), b["loss"])
        acc += torch.stack([recon_loss(b["x"], x_hat, m.recon).double() * len(b["x"]),
                            torch.tensor(float(len(b["x"])), dtype=torch.float64, device=device)])
    models.gen.train()
    return acc
