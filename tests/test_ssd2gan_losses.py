"""Unit tests of trainers/ssd2gan (transforms, losses, baselines, metrics, models) against scipy/numpy and
closed forms.

Numbering "spec test N" follows the known-answer and property tests of the implementation spec's §8.2. (not shipped;
docs/methods/ssd2gan.md describes the method)
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import scipy.spatial.distance
import torch
import torch.nn.functional as F

from trainers.ssd2gan import (Discriminator, FrequencyDiscriminator, Generator, average_power_spectrum,
                              azimuthal_power_spectrum, build_models, consistency, d_loss, d_losses, dct2,
                              dct_matrix, dft2, discriminator_losses, ds_total_loss, durall_spectral_loss,
                              frechet_distance, frechet_distance_from_stats, freq, freq_channels, freq_mse_loss,
                              frequency_radius, g_loss, g_loss_terms, gaussian_stats, high_freq_mask, idct2, idft2,
                              normalized_azimuthal_spectrum, spectral_error, spectral_error_from_spectra,
                              value_function)

D64 = torch.float64
CUDA = torch.cuda.is_available()
LN2 = math.log(2.0)


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=D64)


def logit(p) -> torch.Tensor:
    p = t64(p)
    return torch.log(p) - torch.log1p(-p)


def small_models(kind="dct2", dft_mode="reim", size=16, sn=True, seed=0):
    torch.manual_seed(seed)
    return build_models(image_size=size, channels=1, z_dim=8, g_width=8, d_width=8, spectral_norm=sn,
                        kind=kind, dft_mode=dft_mode)


def grads(loss, params):
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]


# =========================================================================== transform F: DCT (spec tests 1-5)

@pytest.mark.parametrize("shape", [(8, 8), (5, 7), (1, 1), (3, 8, 8), (2, 3, 6, 4), (2, 1, 16, 16)])
def test_dct2_matches_scipy_dctn(shape):
    x = np.random.default_rng(0).normal(size=shape)
    ref = scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(dct2(t64(x)).numpy(), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dct2(torch.as_tensor(x, dtype=torch.float32)).numpy(), ref, rtol=0, atol=2e-5)
    X = np.random.default_rng(1).normal(size=shape)
    np.testing.assert_allclose(idct2(t64(X)).numpy(), scipy.fft.idctn(X, axes=(-2, -1), norm="ortho"),
                               rtol=0, atol=1e-12)


def test_dct_matrix_orthonormal_and_cached():
    for n in (1, 2, 5, 16):
        c = dct_matrix(n)
        np.testing.assert_allclose((c @ c.T).numpy(), np.eye(n), atol=1e-13)
        np.testing.assert_allclose(c.numpy(), scipy.fft.dct(np.eye(n), axis=0, norm="ortho"), atol=1e-13)
    assert dct_matrix(8, torch.float32) is dct_matrix(8, torch.float32)
    assert dct_matrix(8, torch.float32).dtype == torch.float32
    for bad in (0, -3, 2.5, "8"):
        with pytest.raises(ValueError, match="n"):
            dct_matrix(bad)


def test_spec1_dct_all_ones_known_answer():
    X = dct2(torch.ones(4, 4, dtype=D64))
    expected = torch.zeros(4, 4, dtype=D64)
    expected[0, 0] = 4.0
    np.testing.assert_allclose(X.numpy(), expected.numpy(), atol=1e-14)


def test_spec2_parseval_and_exact_inverse():
    x = torch.randn(3, 8, 8, dtype=D64, generator=torch.Generator().manual_seed(2))
    X = dct2(x)
    np.testing.assert_allclose(float((X ** 2).sum()), float((x ** 2).sum()), rtol=1e-13)
    np.testing.assert_allclose(idct2(X).numpy(), x.numpy(), atol=1e-13)
    np.testing.assert_allclose(dct2(idct2(x)).numpy(), x.numpy(), atol=1e-13)
    # inner products too (orthogonal map), on a non-square image
    a, b = torch.randn(2, 5, 9, dtype=D64).unbind(0)
    np.testing.assert_allclose(float((dct2(a) * dct2(b)).sum()), float((a * b).sum()), rtol=1e-12)


def test_spec3_frequency_localisation():
    m = np.arange(32)
    checker = t64((-1.0) ** (m[:, None] + m[None, :]))
    e = dct2(checker) ** 2
    assert float(e[16:, 16:].sum() / e.sum()) == pytest.approx(0.9607, abs=1e-4)
    smooth = t64(np.tile(np.cos(np.pi * m / 32)[:, None], (1, 32)))
    e = dct2(smooth) ** 2
    assert float(e[:8, :8].sum() / e.sum()) > 0.9999


def test_dct2_batching_matches_per_sample():
    x = torch.randn(4, 3, 8, 6, dtype=D64)
    per = torch.stack([torch.stack([dct2(x[b, c]) for c in range(3)]) for b in range(4)])
    np.testing.assert_allclose(dct2(x).numpy(), per.numpy(), atol=1e-14)
    assert dct2(x).shape == x.shape  # spec test 5: shape preserved


def test_dct2_dtypes_and_autocast():
    x = torch.randn(2, 1, 8, 8)
    assert dct2(x).dtype == torch.float32
    assert dct2(x.double()).dtype == D64
    assert dct2(x.half()).dtype == torch.float32
    assert dct2(torch.ones(4, 4, dtype=torch.int64))[0, 0].item() == pytest.approx(4.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dct2(x)
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), dct2(x).numpy(), atol=1e-6)


def test_transform_bad_arguments():
    for fn in (dct2, idct2, dft2, lambda t: freq(t)):
        with pytest.raises(ValueError, match=r"x: needs at least 2 dims"):
            fn(torch.zeros(5))
    with pytest.raises(ValueError, match=r"x: must be a real tensor"):
        dct2(torch.zeros(4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"kind.*'fft'.*dct2, dft2"):
        freq(torch.zeros(4, 4), kind="fft")
    with pytest.raises(ValueError, match=r"mode.*'phase'.*reim, hartley, magnitude"):
        dft2(torch.zeros(4, 4), mode="phase")
    with pytest.raises(ValueError, match=r"mode.*not invertible"):
        idft2(torch.zeros(1, 4, 4), mode="magnitude")
    with pytest.raises(ValueError, match=r"y: a 'reim' representation needs an even channel axis"):
        idft2(torch.zeros(3, 4, 4), mode="reim")
    with pytest.raises(ValueError, match=r"kind"):
        freq_channels(1, kind="wavelet")
    with pytest.raises(ValueError, match=r"dft_mode"):
        freq_channels(1, kind="dft2", dft_mode="bogus")


# =========================================================================== transform F: DFT representations

def test_dft2_reim_matches_numpy_and_is_orthonormal():
    x = np.random.default_rng(3).normal(size=(2, 3, 8, 6))
    z = np.fft.fft2(x, norm="ortho")
    y = dft2(t64(x), "reim")
    assert y.shape == (2, 6, 8, 6)  # (..., 2C, H, W): [Re c0..c2, Im c0..c2]
    np.testing.assert_allclose(y[:, :3].numpy(), z.real, atol=1e-12)
    np.testing.assert_allclose(y[:, 3:].numpy(), z.imag, atol=1e-12)
    np.testing.assert_allclose(float((y ** 2).sum()), float((x ** 2).sum()), rtol=1e-12)  # Parseval
    np.testing.assert_allclose(idft2(y, "reim").numpy(), x, atol=1e-12)  # injective: exact inverse
    img = t64(x[0, 0])
    y2 = dft2(img)
    assert y2.shape == (2, 8, 6)
    np.testing.assert_allclose(idft2(y2).numpy()[0], x[0, 0], atol=1e-12)
    assert float(y[0, 0, 0, 0]) == pytest.approx(x[0, 0].sum() / math.sqrt(48))  # DC at [0, 0], no fftshift


def test_dft2_hartley_matches_direct_cas_sum():
    h, w = 5, 6
    x = np.random.default_rng(4).normal(size=(h, w))
    m, n = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ref = np.empty((h, w))
    for u in range(h):
        for v in range(w):
            th = 2 * np.pi * (u * m / h + v * n / w)
            ref[u, v] = (x * (np.cos(th) + np.sin(th))).sum() / math.sqrt(h * w)
    y = dft2(t64(x), "hartley")
    assert y.shape == (h, w)
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(float((y ** 2).sum()), float((x ** 2).sum()), rtol=1e-12)
    np.testing.assert_allclose(dft2(y, "hartley").numpy(), x, atol=1e-12)  # involution
    np.testing.assert_allclose(idft2(y, "hartley").numpy(), x, atol=1e-12)


def test_dft2_magnitude_and_freq_dispatch():
    x = torch.randn(2, 1, 8, 8, dtype=D64)
    mag = dft2(x, "magnitude")
    np.testing.assert_allclose(mag.numpy(), np.abs(np.fft.fft2(x.numpy(), norm="ortho")), atol=1e-12)
    # not injective: x and its 180° rotation (circular) have the same magnitude
    rot = torch.roll(torch.flip(x, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    np.testing.assert_allclose(dft2(rot, "magnitude").numpy(), mag.numpy(), atol=1e-12)
    assert not torch.allclose(rot, x)
    assert torch.equal(freq(x), dct2(x))
    assert torch.equal(freq(x, "dft2", "hartley"), dft2(x, "hartley"))
    assert freq(x, "dft2").shape == (2, 2, 8, 8)
    assert freq_channels(3) == 3 and freq_channels(3, "dft2") == 6 and freq_channels(3, "dft2", "hartley") == 3


# =========================================================================== differentiability (spec test 4)

def test_spec4_gradcheck_transforms():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 4, 5, dtype=D64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(dct2, (x,))
    assert torch.autograd.gradcheck(idct2, (x,))
    # the FFT-based ones in fast mode (a random projection of the Jacobian) to keep the file quick
    for mode in ("reim", "hartley", "magnitude"):
        assert torch.autograd.gradcheck(lambda t, m=mode: dft2(t, m), (x,), fast_mode=True)
    y = torch.randn(2, 2, 4, 5, dtype=D64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: idft2(t, "reim"), (y,), fast_mode=True)
    assert torch.autograd.gradcheck(azimuthal_power_spectrum, (x,), fast_mode=True)


def test_spec4_gradient_through_transform_nonzero():
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = torch.randn(2, 1, 8, 8)
    for kind, mode in (("dct2", "reim"), ("dft2", "reim"), ("dft2", "hartley")):
        (g,) = torch.autograd.grad(((freq(x, kind, mode)[:, :1] - target) ** 2).sum(), x)
        assert g.abs().sum() > 0
    # the DCT gradient is the inverse transform of dL/dX (C is orthonormal): check exactly
    x64 = torch.randn(8, 8, dtype=D64, requires_grad=True)
    w = torch.randn(8, 8, dtype=D64)
    (g,) = torch.autograd.grad((dct2(x64) * w).sum(), x64)
    np.testing.assert_allclose(g.numpy(), idct2(w).numpy(), atol=1e-13)


@pytest.mark.parametrize("kind,mode", [("dct2", "reim"), ("dft2", "reim"), ("dft2", "hartley")])
def test_generator_gets_gradient_through_df_only(kind, mode):
    """The bug of public ports: F computed outside autograd, so Df's loss never reached G."""
    gen, ds, df = small_models(kind, mode)
    z = gen.sample_latent(4)
    fake = gen(z)
    df_fake = df(freq(fake, kind, mode))
    _, l_gf = g_loss_terms(ds(fake), df_fake)
    gs = grads(l_gf, list(gen.parameters()))
    assert all(torch.isfinite(g).all() for g in gs)
    assert sum(float(g.abs().sum()) for g in gs) > 0
    # α close to 0 (frequency term only) also moves G
    gs = grads(g_loss(ds(fake), df_fake, alpha=1e-6), list(gen.parameters()))
    assert sum(float(g.abs().sum()) for g in gs) > 0


# =========================================================================== adversarial losses (Eq. 1, 2)

def test_spec6_chance_level():
    half = torch.zeros(5, dtype=D64)  # logit 0 = probability 0.5
    assert float(value_function(half, half, half, half)) == pytest.approx(4 * math.log(0.5), abs=1e-12)
    assert float(value_function(half, half, half, half)) == pytest.approx(-2.772589, abs=1e-6)
    l_ds, l_df = d_losses(half, half, half, half)
    assert float(l_ds) == pytest.approx(2 * LN2, abs=1e-12) == pytest.approx(1.386294, abs=1e-6)
    assert float(l_df) == pytest.approx(1.386294, abs=1e-6)
    for alpha in (0.01, 0.3, 0.5, 0.8, 0.99):
        assert float(g_loss(half, half, alpha)) == pytest.approx(-0.693147, abs=1e-6)


def test_spec7_eq2_known_answer():
    ds_fake, df_fake = logit([0.9]), logit([0.1])
    assert float(g_loss(ds_fake, df_fake, 0.8)) == pytest.approx(0.8 * math.log(0.1) + 0.2 * math.log(0.9),
                                                                 abs=1e-12)
    assert float(g_loss(ds_fake, df_fake, 0.8)) == pytest.approx(-1.863140, abs=1e-6)
    assert float(g_loss(ds_fake, df_fake, 0.8, "ns")) == pytest.approx(0.544805, abs=1e-6)


def test_loss_formulas_match_numpy():
    rng = np.random.default_rng(6)
    sr, sf, fr, ff = (rng.normal(scale=3.0, size=7) for _ in range(4))
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    l_gs, l_gf = g_loss_terms(t64(sf), t64(ff), "log")
    assert float(l_gs) == pytest.approx(np.mean(np.log(1 - sig(sf))), rel=1e-12)
    assert float(l_gf) == pytest.approx(np.mean(np.log(1 - sig(ff))), rel=1e-12)
    l_gs, l_gf = g_loss_terms(t64(sf), t64(ff), "ns")
    assert float(l_gs) == pytest.approx(-np.mean(np.log(sig(sf))), rel=1e-12)
    assert float(l_gf) == pytest.approx(-np.mean(np.log(sig(ff))), rel=1e-12)
    l_gs, l_gf = g_loss_terms(t64(sf), t64(ff), "hinge")
    assert float(l_gs) == pytest.approx(-sf.mean()) and float(l_gf) == pytest.approx(-ff.mean())
    bce = -np.mean(np.log(sig(sr))) - np.mean(np.log(1 - sig(sf)))
    for lt in ("log", "ns"):
        assert float(d_loss(t64(sr), t64(sf), lt)) == pytest.approx(bce, rel=1e-12)
    torch_bce = (F.binary_cross_entropy_with_logits(t64(sr), torch.ones(7, dtype=D64))
                 + F.binary_cross_entropy_with_logits(t64(sf), torch.zeros(7, dtype=D64)))
    assert float(d_loss(t64(sr), t64(sf))) == pytest.approx(float(torch_bce), rel=1e-12)
    hinge = np.mean(np.maximum(0, 1 - sr)) + np.mean(np.maximum(0, 1 + sf))
    assert float(d_loss(t64(sr), t64(sf), "hinge")) == pytest.approx(hinge, rel=1e-12)
    v = (np.mean(np.log(sig(sr))) + np.mean(np.log(1 - sig(sf))) + np.mean(np.log(sig(fr)))
         + np.mean(np.log(1 - sig(ff))))
    assert float(value_function(t64(sr), t64(sf), t64(fr), t64(ff))) == pytest.approx(v, rel=1e-12)
    # the discriminators' losses are −V split per network (log form)
    l_ds, l_df = d_losses(t64(sr), t64(sf), t64(fr), t64(ff))
    assert float(l_ds + l_df) == pytest.approx(-v, rel=1e-12)
    # V0 generator loss = terms 2 + 4 of V
    assert float(g_loss(t64(sf), t64(ff))) == pytest.approx(np.mean(np.log(1 - sig(sf)))
                                                            + np.mean(np.log(1 - sig(ff))), rel=1e-12)


def test_losses_stable_at_extreme_logits():
    big = torch.tensor([-200.0, -50.0, 0.0, 50.0, 200.0], requires_grad=True)
    for lt in ("log", "ns", "hinge"):
        for v in (g_loss(big, big, 0.8, lt), d_loss(big, big, lt)):
            (gr,) = torch.autograd.grad(v, big)
            assert torch.isfinite(v) and torch.isfinite(gr).all()
    # log(1 − σ(200)) = −200 exactly in the stable form (log(1 - sigmoid) would give -inf)
    assert float(g_loss_terms(torch.tensor([200.0]), torch.tensor([200.0]))[0]) == pytest.approx(-200.0)
    assert float(d_loss(torch.tensor([-200.0]), torch.tensor([0.0]))) == pytest.approx(200.0 + LN2)


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), True, "high", [0.5]])
def test_alpha_outside_open_interval_raises(bad):
    z = torch.zeros(3)
    with pytest.raises(ValueError, match=r"alpha.*open interval \(0, 1\)"):
        g_loss(z, z, alpha=bad)


def test_loss_type_and_shape_errors():
    z = torch.zeros(3)
    for fn in (lambda: g_loss(z, z, 0.8, "wgan"), lambda: d_loss(z, z, "bce"), lambda: g_loss_terms(z, z, "x")):
        with pytest.raises(ValueError, match=r"loss_type.*allowed values: log, ns, hinge"):
            fn()
    with pytest.raises(ValueError, match=r"ds_fake: empty"):
        g_loss(torch.zeros(0), z)


def test_spec8_alpha_limits_and_half():
    rng = np.random.default_rng(7)
    s, f = t64(rng.normal(size=6)), t64(rng.normal(size=6))
    for lt in ("log", "ns", "hinge"):
        l_gs, l_gf = g_loss_terms(s, f, lt)
        assert float(g_loss(s, f, 0.5, lt)) == pytest.approx(0.5 * float(g_loss(s, f, None, lt)), rel=1e-14)
        assert float(g_loss(s, f, 1 - 1e-9, lt)) == pytest.approx(float(l_gs), abs=1e-8)  # → single-D GAN (Ds)
        assert float(g_loss(s, f, 1e-9, lt)) == pytest.approx(float(l_gf), abs=1e-8)  # → Df only
        assert float(g_loss(s, f, 0.3, lt)) == pytest.approx(0.3 * float(l_gs) + 0.7 * float(l_gf), rel=1e-13)


def test_spec8_alpha_linearity_of_generator_gradient():
    gen, ds, df = small_models(seed=1)
    gen, ds, df = gen.double(), ds.double(), df.double()
    params = list(gen.parameters())
    fake = gen(gen.sample_latent(4).double())
    s, f = ds(fake), df(dct2(fake))
    l_gs, l_gf = g_loss_terms(s, f)
    g_s, g_f = grads(l_gs, params), grads(l_gf, params)
    for alpha in (0.2, 0.8):
        g_tot = grads(g_loss(s, f, alpha), params)
        for a, b, c in zip(g_tot, g_s, g_f):
            torch.testing.assert_close(a, alpha * b + (1 - alpha) * c, rtol=1e-10, atol=1e-12)
    # the limit α → 1 is the ordinary single-discriminator generator gradient
    g_one = grads(g_loss(s, f, 1 - 1e-12), params)
    for a, b in zip(g_one, g_s):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# =========================================================================== consistency loss (Eq. 3)

def test_spec9_consistency_known_answer():
    ds_out, df_out = logit([0.9, 0.2]), logit([0.7, 0.4])
    c = consistency(ds_out, None, df_out, None, on="real")
    assert float(c) == pytest.approx(0.04, abs=1e-12)
    assert float(ds_total_loss(torch.tensor(0.0, dtype=D64), c, 0.001)) == pytest.approx(4.0e-5, abs=1e-15)
    c_sum = consistency(ds_out, None, df_out, None, on="real", reduction="sum")
    assert float(c_sum) == pytest.approx(0.08, abs=1e-12)
    assert float(0.001 * c_sum) == pytest.approx(8.0e-5, abs=1e-15)
    assert float(consistency(None, ds_out, None, df_out, on="fake")) == pytest.approx(0.04, abs=1e-12)
    assert float(consistency(ds_out, ds_out, ds_out, ds_out)) == 0.0  # identical outputs


def test_consistency_options_match_numpy():
    rng = np.random.default_rng(8)
    sr, sf, fr, ff = (rng.normal(size=5) for _ in range(4))
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    both = consistency(t64(sr), t64(sf), t64(fr), t64(ff))  # defaults: both, sq, mean, prob
    ref_r = np.mean((sig(sr) - sig(fr)) ** 2)
    ref_f = np.mean((sig(sf) - sig(ff)) ** 2)
    assert float(both) == pytest.approx(ref_r + ref_f, rel=1e-12)
    assert float(consistency(t64(sr), t64(sf), t64(fr), t64(ff), space="logit")) == pytest.approx(
        np.mean((sr - fr) ** 2) + np.mean((sf - ff) ** 2), rel=1e-12)
    for norm in ("l1", "l2"):  # scalar outputs: both are |d|
        assert float(consistency(t64(sr), None, t64(fr), None, on="real", norm=norm)) == pytest.approx(
            np.mean(np.abs(sig(sr) - sig(fr))), rel=1e-12)
    # vector outputs (B, k): the norm is over a sample's outputs
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    da = sig(a) - sig(b)
    kw = dict(on="real", reduction="sum")
    assert float(consistency(t64(a), None, t64(b), None, norm="sq", **kw)) == pytest.approx((da ** 2).sum())
    assert float(consistency(t64(a), None, t64(b), None, norm="l2", **kw)) == pytest.approx(
        np.linalg.norm(da, axis=1).sum())
    assert float(consistency(t64(a), None, t64(b), None, norm="l1", **kw)) == pytest.approx(np.abs(da).sum())


def test_consistency_gradient_routing():
    s = torch.randn(6, requires_grad=True)
    f = torch.randn(6, requires_grad=True)
    c = consistency(s, None, f, None, on="real")
    gs, gf = torch.autograd.grad(c, (s, f), allow_unused=True)
    assert gs.abs().sum() > 0 and gf is None  # Df's output is a constant target (S110)
    c = consistency(s, None, f, None, on="real", detach_df=False)
    gs, gf = torch.autograd.grad(c, (s, f))
    assert gf.abs().sum() > 0
    for norm in ("sq", "l1", "l2"):  # finite at zero difference
        (g,) = torch.autograd.grad(consistency(s, None, s.detach(), None, on="real", norm=norm), s)
        assert torch.isfinite(g).all()


def test_consistency_bad_arguments():
    z = torch.zeros(3)
    for kw, name, allowed in ((dict(on="all"), "on", "both, real, fake"), (dict(norm="l3"), "norm", "sq, l2, l1"),
                              (dict(reduction="max"), "reduction", "mean, sum"),
                              (dict(space="raw"), "space", "prob, logit")):
        with pytest.raises(ValueError, match=rf"{name}: unknown value.*allowed values: {allowed}"):
            consistency(z, z, z, z, **kw)
    with pytest.raises(ValueError, match=r"ds_real, df_real: need equal shapes"):
        consistency(torch.zeros(3), None, torch.zeros(4), None, on="real")
    with pytest.raises(ValueError, match=r"ds_fake/df_fake is None"):
        consistency(z, None, z, None, on="both")
    for lam in (-1.0, float("inf"), float("nan"), None, "0.1x"):
        with pytest.raises(ValueError, match=r"lambda_c"):
            discriminator_losses(z, z, z, z, lambda_c=lam)


def test_spec10_and_13_consistency_gradients_on_models():
    gen, ds, df = small_models(seed=2)
    gen, ds, df = gen.double(), ds.double(), df.double()
    x = torch.randn(4, 1, 16, 16, dtype=D64)
    fake = gen(gen.sample_latent(4).double()).detach()  # S107: fakes fed to D without G's graph
    sr, sf, fr, ff = ds(x), ds(fake), df(dct2(x)), df(dct2(fake))
    th_s, th_f = list(ds.parameters()), list(df.parameters())
    out0 = discriminator_losses(sr, sf, fr, ff, lambda_c=0.0)
    assert out0["L_Ds_total"] is out0["L_Ds_GAN"]  # spec test 10: λc = 0 → V0 exactly
    assert not out0["L_cons"].requires_grad
    lam = 0.7
    out = discriminator_losses(sr, sf, fr, ff, lambda_c=lam)
    assert torch.equal(out["L_Ds_GAN"], out0["L_Ds_GAN"]) and torch.equal(out["L_Df_GAN"], out0["L_Df_GAN"])
    g_tot, g_gan, g_cons = grads(out["L_Ds_total"], th_s), grads(out["L_Ds_GAN"], th_s), grads(out["L_cons"], th_s)
    for a, b, c in zip(g_tot, g_gan, g_cons):  # spec test 13
        torch.testing.assert_close(a - b, lam * c, rtol=1e-9, atol=1e-12)
    assert sum(float(c.abs().sum()) for c in g_cons) > 0
    # spec test 12 (gradient level): Df's gradient is the same with and without the consistency term
    for a, b in zip(grads(out["L_Df_GAN"], th_f), grads(out0["L_Df_GAN"], th_f)):
        assert torch.equal(a, b)
    assert all(float(g.abs().sum()) == 0.0 for g in grads(out["L_Ds_total"], th_f))
    # the dict form equals the separate pieces
    l_ds, l_df = d_losses(sr, sf, fr, ff)
    c = consistency(sr, sf, fr, ff)
    assert out["L_Ds_total"].item() == pytest.approx((l_ds + lam * c).item(), rel=1e-14)


# =========================================================================== theory check (spec test 15)

def test_spec15_value_at_optimal_discriminators_equals_jsd():
    rng = np.random.default_rng(9)
    points = rng.normal(size=(4, 4, 4))  # 4 distinct 4×4 "images"
    counts_d, counts_g = np.array([4, 3, 2, 1]), np.array([1, 1, 3, 5])

    def v_star(cd, cg):
        pd, pg = cd / cd.sum(), cg / cg.sum()
        real = np.repeat(points, cd, axis=0)
        fake = np.repeat(points, cg, axis=0)
        # Ds*: the ratio per spatial point; Df*: the ratio per FREQUENCY point, found by grouping the DCT
        # coefficients themselves (a non-injective F would merge points here)
        f_pts = dct2(t64(points)).numpy().round(9)
        keys = [tuple(f.ravel()) for f in f_pts]
        assert len(set(keys)) == len(points)
        mass = {k: [0.0, 0.0] for k in keys}
        for k, a, b in zip(keys, pd, pg):
            mass[k][0] += a
            mass[k][1] += b
        dstar = {i: pd[i] / (pd[i] + pg[i]) for i in range(4)}
        fstar = {k: m[0] / (m[0] + m[1]) for k, m in mass.items()}
        idx_r, idx_f = np.repeat(np.arange(4), cd), np.repeat(np.arange(4), cg)
        sr = logit([dstar[i] for i in idx_r])
        sf = logit([dstar[i] for i in idx_f])
        fr = logit([fstar[tuple(dct2(t64(real[j])).numpy().round(9).ravel())] for j in range(len(real))])
        ff = logit([fstar[tuple(dct2(t64(fake[j])).numpy().round(9).ravel())] for j in range(len(fake))])
        return float(value_function(sr, sf, fr, ff)), pd, pg

    v, pd, pg = v_star(counts_d, counts_g)
    jsd = scipy.spatial.distance.jensenshannon(pd, pg) ** 2  # natural log
    assert v == pytest.approx(-math.log(16) + 4 * jsd, abs=1e-12)
    v_eq, _, _ = v_star(counts_d, counts_d)
    assert v_eq == pytest.approx(-4 * LN2, abs=1e-12) == pytest.approx(-2.7726, abs=1e-4)


# =========================================================================== baselines: Durall (CVPR20), FreqMSE

def np_azimuthal(img: np.ndarray) -> np.ndarray:
    p = np.abs(np.fft.fftshift(np.fft.fft2(img, norm="ortho"))) ** 2
    h, w = p.shape
    sums, counts = {}, {}
    for u in range(h):
        for v in range(w):
            k = int(math.floor(math.hypot(u - h // 2, v - w // 2)))
            sums[k] = sums.get(k, 0.0) + p[u, v]
            counts[k] = counts.get(k, 0) + 1
    return np.array([sums[k] / counts[k] for k in range(max(sums) + 1)])


@pytest.mark.parametrize("hw", [(8, 8), (16, 16), (7, 10)])
def test_azimuthal_power_spectrum_matches_numpy(hw):
    x = np.random.default_rng(10).normal(size=(3, *hw))
    s = azimuthal_power_spectrum(t64(x))
    for i in range(3):
        np.testing.assert_allclose(s[i].numpy(), np_azimuthal(x[i]), rtol=1e-11, atol=1e-13)


def test_azimuthal_power_spectrum_known_answers():
    s = azimuthal_power_spectrum(torch.ones(8, 8, dtype=D64))  # all power at DC: (8·8)²/64 = 64
    assert float(s[0]) == pytest.approx(64.0) and float(s[1:].abs().max()) < 1e-12
    n, k0 = 16, 3
    m = np.arange(n)
    img = np.tile(np.cos(2 * np.pi * k0 * m / n)[:, None], (1, n))
    s = azimuthal_power_spectrum(t64(img)).numpy()
    u, v = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    ring = (np.floor(np.hypot(u, v)) == k0).sum()
    expected = np.zeros_like(s)
    expected[k0] = 2 * (n * n / 4) / ring  # two peaks of power HW/4 on ring k0
    np.testing.assert_allclose(s, expected, atol=1e-12)


def test_durall_loss_matches_numpy_reference():
    rng = np.random.default_rng(11)
    real, fake = rng.normal(size=(4, 2, 8, 8)), rng.normal(size=(3, 2, 8, 8))

    def norm_spec(img):
        s = np.log(np_azimuthal(img) + 1e-8)
        return (s - s.min()) / (s.max() - s.min())

    target = np.mean([norm_spec(r.mean(axis=0)) for r in real], axis=0)
    sf = np.clip(np.stack([norm_spec(f.mean(axis=0)) for f in fake]), 1e-6, 1 - 1e-6)
    ref = -np.mean(target * np.log(sf) + (1 - target) * np.log(1 - sf))
    fk = t64(fake).requires_grad_(True)
    loss = durall_spectral_loss(t64(real), fk)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    (g,) = torch.autograd.grad(loss, fk)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    ns = normalized_azimuthal_spectrum(t64(real[:, 0]))
    assert float(ns.min()) == 0.0 and float(ns.max()) == pytest.approx(1.0)
    np.testing.assert_allclose(normalized_azimuthal_spectrum(t64(real[:, 0]), "none").numpy(),
                               np.log(np.stack([np_azimuthal(r) for r in real[:, 0]]) + 1e-8), rtol=1e-11)
    with pytest.raises(ValueError, match=r"real: needs shape \(B, C, H, W\)"):
        durall_spectral_loss(t64(real[0]), t64(fake))
    with pytest.raises(ValueError, match=r"normalize.*minmax, none"):
        normalized_azimuthal_spectrum(t64(real[0]), "max")


def test_freq_mse_matches_numpy():
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(5, 1, 8, 8)), rng.normal(size=(3, 1, 8, 8))
    cr, cf = scipy.fft.dctn(real, axes=(-2, -1), norm="ortho"), scipy.fft.dctn(fake, axes=(-2, -1), norm="ortho")
    refs = {"mean": np.mean((cf.mean(0) - cr.mean(0)) ** 2),
            "abs": np.mean((np.abs(cf).mean(0) - np.abs(cr).mean(0)) ** 2),
            "power": np.mean(((cf ** 2).mean(0) - (cr ** 2).mean(0)) ** 2)}
    for stat, ref in refs.items():
        assert float(freq_mse_loss(t64(real), t64(fake), stat)) == pytest.approx(ref, rel=1e-11)
    # "mean" equals the MSE between the spatial mean images (linearity + orthonormality of the DCT)
    assert float(freq_mse_loss(t64(real), t64(fake))) == pytest.approx(
        np.mean((fake.mean(0) - real.mean(0)) ** 2), rel=1e-11)
    assert float(freq_mse_loss(t64(real), t64(real), "power")) == 0.0
    fk = t64(fake).requires_grad_(True)
    (g,) = torch.autograd.grad(freq_mse_loss(t64(real), fk, "power"), fk)
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match=r"stat.*mean, abs, power"):
        freq_mse_loss(t64(real), t64(fake), "median")
    with pytest.raises(ValueError, match=r"real, fake: need the same per-sample shape"):
        freq_mse_loss(t64(real), t64(fake[:, :, :4]))


# =========================================================================== metrics: Fréchet distance

def scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("seed", range(3))
def test_frechet_distance_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    d = 6
    a = rng.normal(size=(200, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(150, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    assert frechet_distance(a, b) == pytest.approx(scipy_fd(a, b), rel=1e-8)
    assert frechet_distance(torch.as_tensor(a), torch.as_tensor(b, dtype=torch.float32)) == pytest.approx(
        scipy_fd(a, b.astype(np.float32).astype(np.float64)), rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    mu, s = gaussian_stats(a)
    np.testing.assert_allclose(s, np.cov(a, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(mu, a.mean(0), rtol=1e-12)


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(13)
    a = rng.normal(size=(100, 5)) @ rng.normal(size=(5, 5))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    delta = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(a, a + delta) == pytest.approx(float(delta @ delta), rel=1e-9)
    # 1-D: (μ1 − μ2)² + (σ1 − σ2)²
    assert frechet_distance_from_stats([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # diagonal covariances: ‖Δμ‖² + Σ (√a_i − √b_i)²
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    assert frechet_distance_from_stats(np.zeros(3), np.diag(va), np.ones(3), np.diag(vb)) == pytest.approx(
        3.0 + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum())
    # rank-deficient covariances (N < D, as with few samples) stay finite and non-negative
    few = rng.normal(size=(4, 10))
    assert 0.0 <= frechet_distance(few, rng.normal(size=(5, 10))) < np.inf


def test_frechet_distance_bad_arguments():
    with pytest.raises(ValueError, match=r"features: need shape \(N, D\) with N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"features1, features2: need the same feature dim"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"non-finite"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"sigma2: needs shape \(2, 2\)"):
        frechet_distance_from_stats(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))


# =========================================================================== metrics: spectral error

def test_average_power_spectrum_matches_numpy_and_parseval():
    x = np.random.default_rng(14).normal(size=(5, 2, 8, 8))
    p = average_power_spectrum(t64(x))
    np.testing.assert_allclose(p.numpy(), (np.abs(np.fft.fft2(x, norm="ortho")) ** 2).mean(axis=(0, 1)),
                               rtol=1e-12)
    pc = average_power_spectrum(t64(x), "dct2")
    np.testing.assert_allclose(pc.numpy(), (scipy.fft.dctn(x, axes=(-2, -1), norm="ortho") ** 2).mean((0, 1)),
                               rtol=1e-12)
    energy = (x ** 2).sum(axis=(-2, -1)).mean()
    assert float(p.sum()) == pytest.approx(energy) and float(pc.sum()) == pytest.approx(energy)


def test_high_frequency_band_definition():
    # DFT: radial frequency in Nyquist units from numpy's fftfreq; 32×32, band ρ ≥ 0.5
    f = np.fft.fftfreq(32)
    rho = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2) / 0.5
    np.testing.assert_allclose(frequency_radius(32, 32), rho)
    assert high_freq_mask(32, 32).sum() == (rho >= 0.5).sum()
    assert not high_freq_mask(32, 32)[0, 0] and high_freq_mask(32, 32)[16, 16]  # DC low, Nyquist corner high
    assert high_freq_mask(32, 32)[8, 0] and not high_freq_mask(32, 32)[7, 0]  # f = 0.25 is half Nyquist
    # DCT: index k is k/(2N) cycles/pixel; k = N/2 is half Nyquist
    mdct = high_freq_mask(32, 32, "dct2")
    assert mdct[16, 0] and not mdct[15, 0] and mdct[16:, 16:].all() and not mdct[:11, :11].any()
    for bad in (0.0, -1.0, 2.0):
        with pytest.raises(ValueError, match=r"high_cut"):
            high_freq_mask(8, 8, high_cut=bad)


def test_spectral_error_known_answers():
    x = torch.randn(6, 1, 16, 16, dtype=D64, generator=torch.Generator().manual_seed(15))
    for kind in ("dft2", "dct2"):
        e = spectral_error(x, x, kind)
        assert e == {"total": 0.0, "high": 0.0}
        c = 3.0  # fake = c·real → every power × c² → |ln c²| everywhere
        e = spectral_error(x, c * x, kind, eps=1e-300)
        assert e["total"] == pytest.approx(2 * math.log(c), rel=1e-10)
        assert e["high"] == pytest.approx(2 * math.log(c), rel=1e-10)
    # only the high band differs, by a factor e → high = 1, total = the band's share of the bins
    p_real = average_power_spectrum(x).numpy()
    mask = high_freq_mask(16, 16)
    p_fake = np.where(mask, p_real * math.e, p_real)
    e = spectral_error_from_spectra(p_real, p_fake, eps=1e-300)
    assert e["high"] == pytest.approx(1.0, rel=1e-12)
    assert e["total"] == pytest.approx(mask.mean(), rel=1e-12)
    # a real/fake pair where the fake has extra checkerboard (Nyquist) power: error concentrated in the band
    m = torch.arange(16, dtype=D64)
    checker = ((-1.0) ** (m[:, None] + m[None, :])) * 0.5
    e = spectral_error(x, x + checker)
    assert e["high"] > e["total"] > 0
    with pytest.raises(ValueError, match=r"real, fake: need the same \(H, W\)"):
        spectral_error(x, x[..., :8])
    with pytest.raises(ValueError, match=r"kind"):
        spectral_error(x, x, "wavelet")
    with pytest.raises(ValueError, match=r"non-negative"):
        spectral_error_from_spectra(-np.ones((4, 4)), np.ones((4, 4)))


# =========================================================================== models (spec §6)

@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("kind,mode", [("dct2", "reim"), ("dft2", "reim"), ("dft2", "magnitude")])
def test_model_shapes(size, kind, mode):
    gen, ds, df = small_models(kind, mode, size)
    x = gen(gen.sample_latent(3))
    assert x.shape == (3, 1, size, size) and x.abs().max().item() <= 1.0
    assert ds(x).shape == (3,)
    rep = freq(x, kind, mode)
    assert rep.shape[1] == df.in_channels == freq_channels(1, kind, mode)
    assert df(rep).shape == (3,)
    assert not ({id(p) for p in ds.parameters()} & {id(p) for p in df.parameters()})


def test_spectral_norm_option_and_frequency_discriminator():
    from torch.nn.utils import parametrize

    _, ds_sn, _ = small_models(sn=True)
    _, ds_plain, _ = small_models(sn=False)
    convs_sn = [m for m in ds_sn.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    convs = [m for m in ds_plain.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs_sn and all(parametrize.is_parametrized(m, "weight") for m in convs_sn)
    assert not any(parametrize.is_parametrized(m, "weight") for m in convs)
    torch.manual_seed(0)
    fd = FrequencyDiscriminator(channels=1, image_size=16, width=8, kind="dft2", dft_mode="reim").eval()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(fd(x), fd.net(dft2(x)))
    with pytest.raises(ValueError, match=r"image_size.*16, 32"):
        Generator(image_size=64)
    with pytest.raises(ValueError, match=r"x: needs shape \(B, 1, 16, 16\)"):
        Discriminator(1, 16, 8)(torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match=r"norm.*batch, none"):
        Generator(norm="layer")
    with pytest.raises(ValueError, match=r"kind"):
        build_models(kind="wavelet")
    g = Generator(z_dim=8, image_size=16, width=8, norm="none")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules())


# =========================================================================== GPU (skipped without CUDA)

@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_transforms_and_losses_on_cuda():
    x = torch.randn(4, 3, 16, 12, dtype=D64)
    xc = x.cuda()
    torch.testing.assert_close(dct2(xc).cpu(), dct2(x))
    torch.testing.assert_close(idct2(dct2(xc)).cpu(), x)
    torch.testing.assert_close(dft2(xc).cpu(), dft2(x))
    torch.testing.assert_close(azimuthal_power_spectrum(xc).cpu(), azimuthal_power_spectrum(x))
    gen, ds, df = (m.cuda() for m in small_models())
    fake = gen(gen.sample_latent(4, device="cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        rep = dct2(fake)
    assert rep.dtype == torch.float32
    _, l_gf = g_loss_terms(ds(fake), df(rep))
    gs = grads(l_gf, list(gen.parameters()))
    assert sum(float(g.abs().sum()) for g in gs) > 0
