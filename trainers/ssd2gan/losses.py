"""Adversarial and consistency losses of the ``ssd2gan`` method (JP7464138B2; ``docs/methods/ssd2gan.md``).

No Ray and no MLflow here: used by the training loop on every worker, and unit-tested on their own
(``tests/test_ssd2gan_losses.py``). The frequency transform F is in :mod:`trainers.ssd2gan.transforms`, the
baselines in :mod:`trainers.ssd2gan.baselines`, the quality metrics in :mod:`trainers.ssd2gan.metrics`.

Adversarial losses (spec §2.2–§2.3, Eq. (1)/(2) [RECON]; :func:`g_loss_terms`, :func:`g_loss`, :func:`d_loss`)
    Ds and Df return LOGITS l; the probability is D = σ(l), and every log is evaluated stably:
        log σ(l) = −softplus(−l),   log(1 − σ(l)) = −softplus(l)          (BCE-with-logits, spec §5)
    ``loss_type="log"`` (default; the patent's Eq. (1), saturating minimax form):
        l_Gs = mean_i log(1 − Ds(G(z_i)))      l_Gf = mean_i log(1 − Df(F(G(z_i))))     (terms 2 and 4)
        L_D  = −mean_i log D(real_i) − mean_i log(1 − D(fake_i))                          (per discriminator)
    ``loss_type="ns"`` (non-saturating, [IMPL-CHOICE]): l_Gs = −mean log Ds(G(z)), l_Gf = −mean log Df(F(G(z)));
        the discriminator losses are the same BCE as "log".
    ``loss_type="hinge"`` ([EXT], SNGAN's original loss): l_G· = −mean l(fake);
        L_D = mean relu(1 − l(real)) + mean relu(1 + l(fake)).
    Eq. (2):  L_G = α · l_Gs + (1 − α) · l_Gf, 0 < α < 1 (α = 0.8 in the experiments);
    ``alpha=None`` is V0/V2 (no trade-off): L_G = l_Gs + l_Gf (= 2 × L_G at α = 0.5).
    Eq. (1) value: V = mean log Ds(x) + mean log(1 − Ds(G(z))) + mean log Df(F(x)) + mean log(1 − Df(F(G(z))))
        (:func:`value_function`; the discriminators minimise −V split per network, G minimises terms 2 + 4).

Consistency loss "SSCR" (spec §2.4, Eq. (3) [RECON]; :func:`consistency`, :func:`discriminator_losses`)
    L_cons = Σ_{set ∈ on} reduce_i ‖ φ(Ds(u_i)) − stop_grad(φ(Df(F(u_i)))) ‖
    L_Ds_total = L_Ds_GAN + λc · L_cons   (Df's update uses L_Df_GAN only: S110)
    Defaults chosen where the patent is silent (spec §2.4 open details 1–5, §9.3):
      * samples ``on="both"``: real and fake; the two per-set terms are SUMMED (spec §5 pseudo-code);
      * norm ``"sq"``: squared L2 over a sample's output dims ("l2" = unsquared, "l1" also offered);
      * reduction ``"mean"`` over the batch ("sum" multiplies the effective λc by B);
      * space ``"prob"``: φ = σ (the patent's discriminators output probabilities); "logit": φ = identity;
      * Df's output is DETACHED (a target for Ds), so L_cons sends no gradient to Df (``detach_df=True``);
      * "L_c" of Eq. (3) is read as Ds's total loss (reading (b)); the numbers are the same under (a).
      * λc = 0 returns L_Ds_GAN itself (bit-identical to V0); L_cons is then a detached diagnostic.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.ssd2gan.transforms import _allowed, _float_tensor

LOSS_TYPES = ("log", "ns", "hinge")
CONS_ON = ("both", "real", "fake")
CONS_NORMS = ("sq", "l2", "l1")
CONS_REDUCTIONS = ("mean", "sum")
CONS_SPACES = ("prob", "logit")


# --------------------------------------------------------------------------- adversarial losses (Eq. 1, 2)

def log_sigmoid(logits: Tensor) -> Tensor:
    """log σ(l) = −softplus(−l), stable for any l (log of the probability "real")."""
    return -F.softplus(-logits)


def log_one_minus_sigmoid(logits: Tensor) -> Tensor:
    """log(1 − σ(l)) = −softplus(l), stable for any l."""
    return -F.softplus(logits)


def _logits(x, name: str) -> Tensor:
    x = _float_tensor(x, name)
    if x.numel() == 0:
        raise ValueError(f"{name}: empty logits tensor (shape {tuple(x.shape)}); need at least one sample")
    return x


def _check_alpha(alpha) -> float | None:
    if alpha is None:
        return None
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        a = math.nan
    if isinstance(alpha, bool) or not (0.0 < a < 1.0):
        raise ValueError(f"alpha: the trade-off coefficient must lie in the open interval (0, 1) "
                         f"(allowed values: 0 < alpha < 1, or None for no trade-off), got {alpha!r}")
    return a


def g_loss_terms(ds_fake: Tensor, df_fake: Tensor, loss_type: str = "log") -> tuple[Tensor, Tensor]:
    """(l_Gs, l_Gf): the generator's spatial (Eq. (1) term 2, S104) and frequency (term 4, S103) terms.

    ``ds_fake`` = Ds logits on G(z); ``df_fake`` = Df logits on F(G(z)). loss_type "log": mean log(1 − D);
    "ns": −mean log D; "hinge": −mean logit. G minimises both."""
    _allowed("loss_type", loss_type, LOSS_TYPES)
    s = _logits(ds_fake, "ds_fake")
    f = _logits(df_fake, "df_fake")
    with torch.autocast(device_type=s.device.type, enabled=False):
        if loss_type == "log":
            return log_one_minus_sigmoid(s).mean(), log_one_minus_sigmoid(f).mean()
        if loss_type == "ns":
            return -log_sigmoid(s).mean(), -log_sigmoid(f).mean()
        return -s.mean(), -f.mean()


def g_loss(ds_fake: Tensor, df_fake: Tensor, alpha: float | None = None, loss_type: str = "log") -> Tensor:
    """Generator loss L_G (spec Eq. (2), S105): α·l_Gs + (1 − α)·l_Gf with 0 < α < 1 (V1/V3; α = 0.8 in the
    experiments); ``alpha=None``: l_Gs + l_Gf (V0/V2, Eq. (1) terms 2 + 4). ValueError for α outside (0, 1)."""
    a = _check_alpha(alpha)
    l_gs, l_gf = g_loss_terms(ds_fake, df_fake, loss_type)
    if a is None:
        return l_gs + l_gf
    return a * l_gs + (1.0 - a) * l_gf


def d_loss(real_logits: Tensor, fake_logits: Tensor, loss_type: str = "log") -> Tensor:
    """One discriminator's GAN loss (spec §2.2 L_Ds_GAN / L_Df_GAN, S107).

    "log"/"ns": −mean log σ(l_real) − mean log(1 − σ(l_fake)) (BCE-with-logits);
    "hinge": mean relu(1 − l_real) + mean relu(1 + l_fake)."""
    _allowed("loss_type", loss_type, LOSS_TYPES)
    r = _logits(real_logits, "real_logits")
    f = _logits(fake_logits, "fake_logits")
    with torch.autocast(device_type=r.device.type, enabled=False):
        if loss_type == "hinge":
            return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
        return -log_sigmoid(r).mean() - log_one_minus_sigmoid(f).mean()


def d_losses(ds_real: Tensor, ds_fake: Tensor, df_real: Tensor, df_fake: Tensor,
             loss_type: str = "log") -> tuple[Tensor, Tensor]:
    """(L_Ds_GAN, L_Df_GAN) from the logits of Ds on x / G(z) and Df on F(x) / F(G(z)) (spec §2.2, S107)."""
    return d_loss(ds_real, ds_fake, loss_type), d_loss(df_real, df_fake, loss_type)


def value_function(ds_real: Tensor, ds_fake: Tensor, df_real: Tensor, df_fake: Tensor) -> Tensor:
    """V(G, Ds, Df) of Eq. (1) (the patent's log form; sample means as expectations):
    mean log Ds(x) + mean log(1 − Ds(G(z))) + mean log Df(F(x)) + mean log(1 − Df(F(G(z))))."""
    sr, sf = _logits(ds_real, "ds_real"), _logits(ds_fake, "ds_fake")
    fr, ff = _logits(df_real, "df_real"), _logits(df_fake, "df_fake")
    with torch.autocast(device_type=sr.device.type, enabled=False):
        return (log_sigmoid(sr).mean() + log_one_minus_sigmoid(sf).mean()
                + log_sigmoid(fr).mean() + log_one_minus_sigmoid(ff).mean())


# --------------------------------------------------------------------------- consistency loss (Eq. 3)

def _cons_set(ds_out, df_out, which: str, norm: str, reduction: str, space: str, detach_df: bool) -> Tensor:
    if ds_out is None or df_out is None:
        raise ValueError(f"consistency: on includes {which!r} but ds_{which}/df_{which} is None")
    s = _logits(ds_out, f"ds_{which}")
    f = _logits(df_out, f"df_{which}")
    if s.dim() == 0 or s.shape != f.shape:
        raise ValueError(f"ds_{which}, df_{which}: need equal shapes (B,) or (B, ...), got "
                         f"{tuple(s.shape)} and {tuple(f.shape)}")
    if detach_df:
        f = f.detach()
    if space == "prob":
        s, f = torch.sigmoid(s), torch.sigmoid(f)
    d = (s - f).reshape(s.shape[0], -1)
    if norm == "sq":
        per = d.pow(2).sum(dim=1)
    elif norm == "l1":
        per = d.abs().sum(dim=1)
    else:
        per = torch.linalg.vector_norm(d, ord=2, dim=1)
    return per.mean() if reduction == "mean" else per.sum()


def consistency(ds_real: Tensor | None, ds_fake: Tensor | None, df_real: Tensor | None, df_fake: Tensor | None,
                on: str = "both", norm: str = "sq", reduction: str = "mean", space: str = "prob",
                detach_df: bool = True) -> Tensor:
    """Consistency loss L_cons between Ds and Df (spec Eq. (3) "SSCR", S108; defaults of spec §2.4/§5).

    Inputs are LOGITS: Ds on u and Df on F(u), u = real x and/or fake G(z) (shape (B,) or (B, ...), the
    same for Ds and Df). Per set: reduce_i ‖φ(Ds(u_i)) − φ(Df(F(u_i)))‖ with φ = σ (``space="prob"``) or the
    identity ("logit"); the norm is over a sample's output dims: "sq" squared L2 (default), "l2", "l1";
    reduce = "mean" (default) or "sum" over the batch. ``on``: "both" (default; real term + fake term),
    "real" or "fake" (the other pair may then be None). ``detach_df`` (default True): Df's output is a
    constant target, so the loss changes only Ds (S110 updates Df from L_Df_GAN only)."""
    _allowed("on", on, CONS_ON)
    _allowed("norm", norm, CONS_NORMS)
    _allowed("reduction", reduction, CONS_REDUCTIONS)
    _allowed("space", space, CONS_SPACES)
    sets = ("real", "fake") if on == "both" else (on,)
    pairs = {"real": (ds_real, df_real), "fake": (ds_fake, df_fake)}
    terms = []
    for which in sets:
        s, f = pairs[which]
        dev = torch.as_tensor(s).device if s is not None else torch.device("cpu")
        with torch.autocast(device_type=dev.type, enabled=False):
            terms.append(_cons_set(s, f, which, norm, reduction, space, detach_df))
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _check_lambda(lambda_c) -> float:
    try:
        lam = float(lambda_c)
    except (TypeError, ValueError):
        lam = math.nan
    if isinstance(lambda_c, bool) or not (math.isfinite(lam) and lam >= 0.0):
        raise ValueError(f"lambda_c: the consistency weight must be finite and >= 0, got {lambda_c!r}")
    return lam


def ds_total_loss(ds_gan: Tensor, cons: Tensor, lambda_c: float) -> Tensor:
    """L_Ds_total = L_Ds_GAN + λc · L_cons (spec Eq. (3) read as Ds's overall loss, S109). λc = 0 returns
    ``ds_gan`` itself, so V2 with λc = 0 is bit-identical to V0 (spec §8.2 test 10)."""
    lam = _check_lambda(lambda_c)
    if lam == 0.0:
        return ds_gan
    return ds_gan + lam * cons


def discriminator_losses(ds_real: Tensor, ds_fake: Tensor, df_real: Tensor, df_fake: Tensor,
                         lambda_c: float = 0.0, loss_type: str = "log", cons_on: str = "both",
                         cons_norm: str = "sq", cons_reduction: str = "mean",
                         cons_space: str = "prob") -> dict[str, Tensor]:
    """All discriminator-side losses of one iteration (S107–S109) from the four logit tensors.

    Returns {"L_Ds_GAN", "L_Df_GAN", "L_cons", "L_Ds_total"}. Backprop "L_Df_GAN" into Df (S110) and
    "L_Ds_total" into Ds (S111). With λc = 0, "L_cons" is a detached diagnostic and "L_Ds_total" is
    "L_Ds_GAN" itself."""
    lam = _check_lambda(lambda_c)
    l_ds, l_df = d_losses(ds_real, ds_fake, df_real, df_fake, loss_type)
    cons = consistency(ds_real, ds_fake, df_real, df_fake, on=cons_on, norm=cons_norm,
                       reduction=cons_reduction, space=cons_space, detach_df=True)
    if lam == 0.0:
        cons = cons.detach()
    return {"L_Ds_GAN": l_ds, "L_Df_GAN": l_df, "L_cons": cons, "L_Ds_total": ds_total_loss(l_ds, cons, lam)}
