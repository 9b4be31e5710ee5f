"""``ssd2gan`` on Ray Train workers: spec §5 (S101–S112), one iteration in :func:`train_step`.

Per iteration (the patent's order, Fig. 4): G is updated first (S102–S106: L_G = α·l_Gs + (1−α)·l_Gf,
or l_Gs + l_Gf without the trade-off), then Df from its GAN loss only (S110), then Ds from its GAN
loss + λc·consistency (S111). The discriminators see the fakes generated in S102 (detached; spec §9.4
default "reuse"). Real and fake go through each discriminator in one concatenated batch, so each DDP
module runs one forward and one backward per update. The baselines share the code path: ``sngan``
(no Df), ``durall`` / ``freqmse`` (no Df, a spectral term added to L_G).

Every ``method.eval_every`` steps (one "epoch"): rank 0 generates ``fd_samples`` images and measures
the Fréchet distance to the real train/val features and the spectral error (see
:mod:`trainers.ssd2gan.quality`); per-step losses are logged to MLflow in one batch; a sample grid is
logged; the checkpoint (G, Ds, Df, the three optimisers, the step count, the best G by FD) is saved.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from trainers.common.facts import Prepared
from trainers.common.models import unwrap
from trainers.common.runner import LearnerBase, Unit, run_learner
from trainers.common.worker import Worker, all_reduce_sum
from trainers.ssd2gan.baselines import durall_spectral_loss, freq_mse_loss
from trainers.ssd2gan.config import Ssd2ganConfig
from trainers.ssd2gan.losses import d_loss, discriminator_losses, g_loss, g_loss_terms
from trainers.ssd2gan.metrics import average_power_spectrum, frechet_distance_from_stats, spectral_error_from_spectra
from trainers.ssd2gan.models import Discriminator, Generator
from trainers.ssd2gan.quality import QualityReference, classifier_from, features, reference
from trainers.ssd2gan.transforms import freq, freq_channels

LOSS_KEYS = ("loss_g", "loss_gs", "loss_gf", "loss_ds", "loss_ds_gan", "loss_df", "loss_consistency",
             "loss_spectral")


def build_models(cfg: Ssd2ganConfig, channels: int) -> tuple[Generator, Discriminator, Discriminator | None]:
    """(G, Ds, Df or None for the one-discriminator baselines); independent parameters."""
    m, mc, s = cfg.method, cfg.model, cfg.data.image_size
    g = Generator(mc.z_dim, s, channels, mc.g_width, mc.g_norm)
    ds = Discriminator(channels, s, mc.d_width, spectral_norm=True)
    df = (Discriminator(freq_channels(channels, m.freq_kind, m.dft_mode), s, mc.d_width, spectral_norm=True)
          if m.two_discriminators else None)
    return g, ds, df


def make_optimizers(cfg: Ssd2ganConfig, g, ds, df) -> dict[str, torch.optim.Optimizer]:
    m = cfg.method
    cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    kw = {"betas": (m.beta1, m.beta2), "weight_decay": cfg.train.weight_decay}
    opts = {"g": cls(g.parameters(), lr=cfg.train.lr, **kw),
            "ds": cls(ds.parameters(), lr=m.lr_d or cfg.train.lr, **kw)}
    if df is not None:
        opts["df"] = cls(df.parameters(), lr=m.lr_d or cfg.train.lr, **kw)
    return opts


def _no_sync(module):
    """DDP: the G step back-propagates through Ds/Df too; those gradients are discarded, so skip their
    all-reduce (plain modules: nothing to skip)."""
    return module.no_sync() if hasattr(module, "no_sync") else contextlib.nullcontext()


def train_step(g, ds, df, opts: dict, x: torch.Tensor, z: torch.Tensor, m) -> dict[str, torch.Tensor]:
    """One iteration S101–S111 on real images ``x`` in [−1, 1] and latents ``z``; returns detached losses.

    Update order G → Df → Ds (spec §5). θ_s and θ_f do not move in the G step; Df's update uses
    L_Df_GAN only, so λc changes Ds alone (spec §8.2 tests 11–13)."""
    lt, kind = m.loss_type, m.freq_kind
    zero = torch.zeros((), device=x.device)
    # S102–S106: the generator
    fake = g(z)
    with _no_sync(ds), (_no_sync(df) if df is not None else contextlib.nullcontext()):
        ds_fake = ds(fake)
        spectral = zero
        if df is not None:
            df_fake = df(freq(fake, kind, m.dft_mode))
            l_gs, l_gf = g_loss_terms(ds_fake, df_fake, lt)
            loss_g = g_loss(ds_fake, df_fake, m.effective_alpha, lt)
        else:
            l_gs, l_gf = g_loss_terms(ds_fake, ds_fake, lt)[0], zero
            loss_g = l_gs
            if m.variant == "durall":
                spectral = durall_spectral_loss(x, fake)
                loss_g = loss_g + m.spectral_weight * spectral
            elif m.variant == "freqmse":
                spectral = freq_mse_loss(x, fake)
                loss_g = loss_g + m.freqmse_weight * spectral
        opts["g"].zero_grad(set_to_none=True)
        loss_g.backward()
    opts["g"].step()
    # S107–S111: the discriminators, on the S102 fakes (detached)
    n = x.shape[0]
    both = torch.cat([x, fake.detach()])
    s = ds(both)
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    if df is not None:
        f = df(freq(both, kind, m.dft_mode))
        d = discriminator_losses(s[:n], s[n:], f[:n], f[n:], lambda_c=m.effective_lambda_c, loss_type=lt,
                                 cons_on=m.consistency_on)
        # the graphs are disjoint (Df's output enters L_cons detached): one backward gives θ_f ∇L_Df_GAN
        # and θ_s ∇L_Ds_total
        (d["L_Df_GAN"] + d["L_Ds_total"]).backward()
        opts["df"].step()   # S110
        opts["ds"].step()   # S111
        out_d = (d["L_Ds_total"], d["L_Ds_GAN"], d["L_Df_GAN"], d["L_cons"])
    else:
        l_ds = d_loss(s[:n], s[n:], lt)
        l_ds.backward()
        opts["ds"].step()
        out_d = (l_ds, l_ds, zero, zero)
    vals = (loss_g, l_gs, l_gf) + out_d + (spectral,)
    return dict(zip(LOSS_KEYS, (v.detach() for v in vals)))


# ----------------------------------------------------------------------------------------- driver side

def check(cfg: Ssd2ganConfig, bundle) -> None:
    """Driver-side: the data are images of the size G produces."""
    shape = tuple(bundle.input_shape)
    s = cfg.data.image_size
    if len(shape) != 3 or shape[1:] != (s, s):
        raise ValueError(f"data.image_size: {s}, but the images have shape {shape}; allowed: images (C, {s}, {s}) "
                         "— set data.image_size to the images' side (16 or 32)")
    if shape[0] > 4:
        raise ValueError(f"data: {shape[0]} channels; allowed: 1..4")


def _real_images(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for b in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        xs.append(np.asarray(b["x"], np.float32))
        ys.append(np.asarray(b["y"], np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def prepare(cfg: Ssd2ganConfig, bundle, ctx=None) -> Prepared:
    """Driver-side, once per run: the quality reference (feature classifier, real feature Gaussians,
    real power spectra), shipped to every worker."""
    x, y = _real_images(bundle.datasets["source_train"])
    xv, _ = _real_images(bundle.datasets["source_val"])
    lo, hi = float(min(x.min(), xv.min())), float(max(x.max(), xv.max()))
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"data.source: image values span [{lo:.3g}, {hi:.3g}]; allowed: [0, 1] "
                         "(trainlab maps them to G's range [−1, 1])")
    return Prepared(facts=reference(x * 2 - 1, y, xv * 2 - 1))


# ----------------------------------------------------------------------------------------- the worker

class Ssd2ganLearner(LearnerBase):
    """G, Ds and Df trained together; one unit of the shared runner = ``method.eval_every`` G steps, then rank 0
    measures quality against the driver's reference."""

    name = "ssd2gan"
    max_reason = "max_steps"

    def __init__(self, w: Worker):
        self.w = w
        cfg, m = w.cfg, w.cfg.method
        self.cfg, self.m, self.units = cfg, m, cfg.train.epochs
        g, ds, df = build_models(cfg, int(w.run.input_shape[0]))
        self.g, self.ds = w.prepare(g.to(w.device)), w.prepare(ds.to(w.device))
        self.df = w.prepare(df.to(w.device)) if df is not None else None
        self.base = {k: unwrap(v) for k, v in (("g", self.g), ("ds", self.ds), ("df", self.df))
                     if v is not None}
        self.opts = make_optimizers(cfg, self.g, self.ds, self.df)
        self.train = w.loader("source_train")
        self.quality = Quality(w.run.prepared, m, w.device) if w.is_chief else None
        self.history: list[dict] = []
        self.best_fd, self.best_g, self.step = float("inf"), None, 0
        self.gen = None  # the noise stream: seeded by rank and by the first unit this job trains (see learn)

    def state_dict(self) -> dict:
        return {**{k: v.state_dict() for k, v in self.base.items()},
                **{f"opt_{k}": o.state_dict() for k, o in self.opts.items()},
                "history": self.history, "best_fd": self.best_fd, "best_g": self.best_g, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        for k, mod in self.base.items():
            mod.load_state_dict(state[k])
        for k, o in self.opts.items():
            o.load_state_dict(state[f"opt_{k}"])
        self.history, self.best_fd, self.best_g = state["history"], state["best_fd"], state["best_g"]
        self.step = int(state["step"])

    def learn(self, epoch: int) -> Unit:
        w, m, base = self.w, self.m, self.base
        if self.gen is None:  # a restarted job draws new noise rather than replaying the first job's
            self.gen = torch.Generator(device=w.device).manual_seed(self.cfg.seed * 1_000_003 + 17 * w.rank + epoch)
        self.g.train(), self.ds.train()
        if self.df is not None:
            self.df.train()
        rows = []
        for b in self.train.epoch(epoch, m.eval_every):
            x = b["x"] * 2 - 1
            z = torch.randn(x.shape[0], self.cfg.model.z_dim, device=w.device, generator=self.gen)
            rows.append(torch.stack(list(train_step(self.g, self.ds, self.df, self.opts, x, z, m).values())))
        steps = torch.stack(rows)                                   # (eval_every, len(LOSS_KEYS)) on device
        means = all_reduce_sum(steps.double().sum(0)).cpu() / (len(rows) * w.world_size)
        self.step = step = epoch * m.eval_every
        # per-step values go to MLflow under their own names (step = G step); the interval means that
        # Tune and the summary see are "<name>_avg" (step = evaluation index, like every method's epoch)
        metrics = {f"{k}_avg": means[i].item() for i, k in enumerate(LOSS_KEYS)} | {"step": float(step)}
        if w.is_chief:
            w.log_steps(dict(zip(LOSS_KEYS, steps.cpu().double().numpy().T)), first_step=step - len(rows) + 1)
            metrics.update(self.quality.measure(base["g"]))
            if metrics["fd"] < self.best_fd:
                self.best_fd = metrics["fd"]
                self.best_g = {k: v.detach().cpu().clone() for k, v in base["g"].state_dict().items()}
            self.quality.log_grid(w, base["g"], step)
        self.best_fd = float(all_reduce_sum(torch.tensor([self.best_fd if w.is_chief else 0.0],
                                                         dtype=torch.float64)).item())
        metrics["best_fd"] = self.best_fd
        self.history.append(dict(metrics, epoch=epoch))
        line = (f"[ssd2gan] step {step} ({m.variant}) L_G={metrics['loss_g_avg']:.3f} L_Ds={metrics['loss_ds_avg']:.3f} "
                f"L_Df={metrics['loss_df_avg']:.3f} fd={metrics.get('fd', float('nan')):.2f} "
                f"spectral_error_high={metrics.get('spectral_error_high', float('nan')):.3f}")
        return Unit(metrics, line)

    def conclude(self, epoch: int, reason: str, metrics: dict) -> dict:
        if self.w.is_chief:
            self.quality.log_final(self.w, self.history, self.base["g"], self.best_g)
        return {}

    def stop_tags(self, epoch: int) -> dict:
        return {"total_steps": str(self.step)}


def train_loop_per_worker(config: dict) -> None:
    w = Worker(config, Ssd2ganConfig)
    run_learner(w, Ssd2ganLearner(w))


class Quality:
    """Rank 0's measurements against the driver's reference (see :mod:`trainers.ssd2gan.quality`)."""

    def __init__(self, ref: QualityReference, m, device):
        self.ref, self.m, self.device = ref, m, device
        self.classifier = classifier_from(ref).to(device)

    @torch.no_grad()
    def sample(self, g, n: int, seed: int) -> torch.Tensor:
        was = g.training
        g.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = torch.cat([g(torch.randn(min(512, n - i), g.z_dim, device=self.device, generator=gen))
                         for i in range(0, n, 512)])
        g.train(was)
        return out

    def measure(self, g) -> dict[str, float]:
        fake = self.sample(g, self.m.fd_samples, seed=2024)
        f = features(self.classifier, fake)
        mu, sigma = f.mean(0), np.cov(f, rowvar=False)
        out = {"fd": frechet_distance_from_stats(mu, sigma, self.ref.mu, self.ref.sigma),
               "fd_val": frechet_distance_from_stats(mu, sigma, self.ref.mu_val, self.ref.sigma_val)}
        p_fake = average_power_spectrum(fake.float().cpu(), "dft2").numpy()
        err = spectral_error_from_spectra(self.ref.spectrum_dft, p_fake, "dft2")
        out["spectral_error"], out["spectral_error_high"] = err["total"], err["high"]
        self.last_fake_spectrum = p_fake
        return out

    def log_grid(self, w: Worker, g, step: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = self.m.grid_size
        imgs = (self.sample(g, k * k, seed=7).float().cpu().clamp(-1, 1) + 1) / 2
        c, s = imgs.shape[1], imgs.shape[-1]
        grid = imgs[:, :3].reshape(k, k, min(c, 3), s, s).permute(0, 3, 1, 4, 2).reshape(k * s, k * s, min(c, 3))
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(grid.squeeze(-1).numpy(), cmap="gray" if c == 1 else None, vmin=0, vmax=1)
        ax.set(title=f"{self.m.variant}: samples at step {step}")
        ax.axis("off")
        w.log_figure(fig, f"samples_step{step:07d}.png", "samples")
        plt.close(fig)
        w.log_image("samples", grid.numpy(), step)  # the UI's step slider over training

    def log_final(self, w: Worker, history: list[dict], g, best_g: dict | None) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [h["step"] for h in history]
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
        ax[0].plot(steps, [h["fd"] for h in history], "o-", label="fd (vs real train)")
        ax[0].plot(steps, [h["fd_val"] for h in history], "s--", label="fd_val (vs held-out real)")
        ax[0].set(xlabel="step", ylabel="Fréchet distance (trainlab features)", title=f"{self.m.variant}: FD curve")
        ax[0].legend()
        ax[1].plot(steps, [h["spectral_error_high"] for h in history], "o-", label="high band")
        ax[1].plot(steps, [h["spectral_error"] for h in history], "s--", label="all frequencies")
        ax[1].set(xlabel="step", ylabel="mean |Δ log power|", title="spectral error")
        ax[1].legend()
        w.log_figure(fig, "fd_curve.png")
        plt.close(fig)
        # real vs generated average power spectra (the patent's Figs. 2 / 7)
        real, fake = self.ref.spectrum_dft, self.last_fake_spectrum
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
        for a, p, t in ((ax[0], real, "real"), (ax[1], fake, f"generated ({self.m.variant})")):
            im = a.imshow(np.log10(np.fft.fftshift(p) + 1e-10), cmap="viridis")
            a.set(title=f"log10 power: {t}")
            fig.colorbar(im, ax=a)
        h, wd = real.shape
        fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(wd), indexing="ij")
        r = np.round(np.sqrt(fy ** 2 + fx ** 2) * max(h, wd)).astype(int)
        for p, lab in ((real, "real"), (fake, "generated")):
            ax[2].semilogy(np.bincount(r.ravel(), p.ravel()) / np.bincount(r.ravel()), label=lab)
        ax[2].set(xlabel="radial frequency bin", ylabel="mean power", title="azimuthal average")
        ax[2].legend()
        w.log_figure(fig, "power_spectra.png")
        plt.close(fig)
        if best_g is not None:
            g_best = Generator(g.z_dim, g.image_size, g.channels, g.width,
                               "batch" if isinstance(g.out_norm, torch.nn.BatchNorm2d) else "none")
            g_best.load_state_dict(best_g)
            w.log_model(g_best.eval(), torch.zeros(2, g.z_dim))
