"""Unit tests of trainers/decorrelation/losses.py against independent numpy/scipy computations.

Numbering follows the acceptance tests of the implementation spec's §8 (not shipped; docs/methods/decorrelation.md
describes the method) where one applies.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from trainers.decorrelation.losses import (correlation_loss, correlation_matrix, decorrelation_terms,
                                           decov_loss, mean_abs_correlation, reduce_features)

D64 = torch.float64


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=D64)


def np_offdiag_sums(f: np.ndarray) -> tuple[float, float]:
    """(Σ_{i≠j} |r_ij|, Σ_{i≠j} r_ij²) by explicit loops over ordered pairs, from np.corrcoef."""
    r = np.corrcoef(f.T)
    c = f.shape[1]
    s_abs = sum(abs(r[i, j]) for i in range(c) for j in range(c) if i != j)
    s_sq = sum(r[i, j] ** 2 for i in range(c) for j in range(c) if i != j)
    return float(s_abs), float(s_sq)


def np_decov(f: np.ndarray) -> float:
    b, c = f.shape
    mu = f.mean(axis=0)
    cov = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            cov[i, j] = np.sum((f[:, i] - mu[i]) * (f[:, j] - mu[j])) / b
    return 0.5 * (np.sum(cov ** 2) - np.sum(np.diag(cov) ** 2))


# --------------------------------------------------------------------------- reduce_features

def test_reduce_features_shapes_and_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5, 6))
    xt = t64(x)
    np.testing.assert_allclose(reduce_features(xt, "gap").numpy(), x.mean(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_allclose(reduce_features(xt, "gmp").numpy(), x.max(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_array_equal(reduce_features(xt, "flatten").numpy(), x.reshape(3, -1))
    x3 = rng.normal(size=(3, 4, 7))
    np.testing.assert_allclose(reduce_features(t64(x3), "gap").numpy(), x3.mean(axis=2), rtol=1e-12)
    x5 = rng.normal(size=(2, 3, 2, 2, 2))
    np.testing.assert_allclose(reduce_features(t64(x5), "gmp").numpy(), x5.max(axis=(2, 3, 4)), rtol=1e-12)
    two_d = torch.randn(4, 3)
    assert reduce_features(two_d, "gap") is two_d


def test_reduce_features_errors():
    with pytest.raises(ValueError, match="gap.*gmp.*flatten"):
        reduce_features(torch.randn(2, 3, 4), "avg")
    with pytest.raises(ValueError, match="ndim"):
        reduce_features(torch.randn(5), "gap")


# --------------------------------------------------------------------------- 1. reference values

@pytest.mark.parametrize("b,c", [(2, 3), (7, 3), (16, 5), (50, 12), (9, 30)])
def test_correlation_matrix_matches_numpy(b, c):
    rng = np.random.default_rng(b * 100 + c)
    f = rng.normal(size=(b, c)) * rng.uniform(0.5, 3, size=c) + rng.normal(size=c)
    r = correlation_matrix(t64(f)).numpy()
    assert r.shape == (c, c)
    np.testing.assert_allclose(r, np.corrcoef(f.T), atol=1e-9)


@pytest.mark.parametrize("b,c", [(4, 2), (10, 6), (33, 9)])
def test_correlation_loss_matches_hand_sums(b, c):
    rng = np.random.default_rng(b + 7 * c)
    mix = rng.normal(size=(c, c))
    f = rng.normal(size=(b, c)) @ mix  # correlated channels
    s_abs, s_sq = np_offdiag_sums(f)
    ft = t64(f)
    n = c * (c - 1)
    # eps = 0: the plain Pearson definition, to float64 precision
    assert correlation_loss(ft, "abs", eps=0.0).item() == pytest.approx(s_abs, rel=1e-9)
    assert correlation_loss(ft, "sq", eps=0.0).item() == pytest.approx(s_sq, rel=1e-9)
    assert correlation_loss(ft, eps=0.0).item() == pytest.approx(s_sq, rel=1e-9)  # default = sq, not normalised
    assert correlation_loss(ft, "abs", normalize=True, eps=0.0).item() == pytest.approx(s_abs / n, rel=1e-9)
    assert correlation_loss(ft, "sq", normalize=True, eps=0.0).item() == pytest.approx(s_sq / n, rel=1e-9)
    assert mean_abs_correlation(ft, eps=0.0).item() == pytest.approx(s_abs / n, rel=1e-9)
    # default eps = 1e-8 only perturbs at the ~1e-8 relative level for O(1) variances
    assert correlation_loss(ft, "abs").item() == pytest.approx(s_abs, rel=1e-6)
    assert correlation_loss(ft).item() == pytest.approx(s_sq, rel=1e-6)
    assert correlation_loss(ft, "sq", normalize=True).item() == pytest.approx(s_sq / n, rel=1e-6)
    assert mean_abs_correlation(ft).item() == pytest.approx(s_abs / n, rel=1e-6)
    # ordered pairs = twice the unordered (i<j) sum
    r = np.corrcoef(f.T)
    iu = np.triu_indices(c, 1)
    assert correlation_loss(ft, "sq", eps=0.0).item() == pytest.approx(2 * np.sum(r[iu] ** 2), rel=1e-9)


def test_errors_on_bad_inputs():
    with pytest.raises(ValueError, match="batch size 1"):
        correlation_matrix(torch.randn(1, 4))
    with pytest.raises(ValueError, match="batch size 1"):
        correlation_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"'sq'.*'abs'"):
        correlation_loss(torch.randn(4, 3), "l1")
    with pytest.raises(ValueError):
        correlation_matrix(torch.randn(4, 3, 2))


def test_single_channel_is_zero_with_graph():
    f = torch.randn(6, 1, dtype=D64, requires_grad=True)
    for red, norm in itertools.product(("sq", "abs"), (False, True)):
        loss = correlation_loss(f, red, normalize=norm)
        assert loss.item() == 0.0 and loss.requires_grad
        (g,) = torch.autograd.grad(loss, f)
        assert torch.all(g == 0)
    assert mean_abs_correlation(f).item() == 0.0


# --------------------------------------------------------------------------- 2. Hadamard -> 0

def test_hadamard_columns_are_decorrelated():
    h = scipy.linalg.hadamard(8).astype(np.float64)
    assert np.all(h[:, 0] == 1)
    f = h[:, 1:]  # 8 x 7, orthogonal zero-mean columns
    assert np.allclose(f.mean(axis=0), 0)
    ft = t64(f)
    for red in ("abs", "sq"):
        assert abs(correlation_loss(ft, red).item()) < 1e-6
    np.testing.assert_allclose(correlation_matrix(ft).numpy(), np.eye(7), atol=1e-6)
    # float32 as well
    assert correlation_loss(ft.float(), "abs").item() < 1e-6


# --------------------------------------------------------------------------- 3. duplicated / negated channel

@pytest.mark.parametrize("a,b", [(2.5, -1.0), (-0.3, 4.0), (-7.0, 0.0), (1.0, 100.0)])
def test_affine_copy_gives_sign_of_a(a, b):
    rng = np.random.default_rng(3)
    f1 = rng.normal(size=32)
    f = np.stack([f1, a * f1 + b], axis=1)
    ft = t64(f)
    r = correlation_matrix(ft, eps=0.0)
    assert r[0, 1].item() == pytest.approx(np.sign(a), abs=1e-9)
    assert r[1, 0].item() == pytest.approx(np.sign(a), abs=1e-9)
    for red in ("abs", "sq"):
        assert correlation_loss(ft, red, eps=0.0).item() == pytest.approx(2.0, abs=1e-9)
        assert correlation_loss(ft, red).item() == pytest.approx(2.0, abs=1e-6)  # default eps
    # added to independent channels, the pair contributes exactly 2 more than without the copy
    g = rng.normal(size=(32, 3))
    base = np.concatenate([f1[:, None], g], axis=1)
    with_copy = np.concatenate([base, (a * f1 + b)[:, None]], axis=1)
    r_f1_g = np.abs(np.corrcoef(np.concatenate([f1[:, None], g], axis=1).T)[0, 1:])
    # |r(copy, g_k)| = |r(f1, g_k)|: the copy doubles f1's cross terms and adds 2 for the (f1, copy) pair
    expected_abs = np_offdiag_sums(base)[0] + 2 * r_f1_g.sum() + 2.0
    assert correlation_loss(t64(with_copy), "abs", eps=0.0).item() == pytest.approx(expected_abs, rel=1e-9)


# --------------------------------------------------------------------------- 4. scale/shift invariance

def test_per_channel_scale_shift_invariance():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(20, 6)) @ rng.normal(size=(6, 6))
    d = rng.uniform(0.1, 10.0, size=6) * rng.choice([-1.0, 1.0], size=6)
    c = rng.normal(scale=50.0, size=6)
    g = f * d + c  # F·D + 1·cᵀ
    for red in ("abs", "sq"):
        assert correlation_loss(t64(g), red).item() == pytest.approx(correlation_loss(t64(f), red).item(), abs=1e-5)
    # negating a channel flips signs in R, not |R|
    np.testing.assert_allclose(np.abs(correlation_matrix(t64(g)).numpy()),
                               np.abs(correlation_matrix(t64(f)).numpy()), atol=1e-9)


def test_gradient_wrt_global_scale_is_zero_unlike_decov():
    rng = np.random.default_rng(5)
    f = t64(rng.normal(size=(24, 5)) @ rng.normal(size=(5, 5)))
    alpha = torch.tensor(0.7, dtype=D64, requires_grad=True)
    for red in ("abs", "sq"):
        (g,) = torch.autograd.grad(correlation_loss(alpha * f, red), alpha)
        assert abs(g.item()) < 1e-6
    dv = decov_loss(alpha * f)
    (g,) = torch.autograd.grad(dv, alpha)
    # DeCov(αF) = α⁴ DeCov(F): d/dα = 4α³ DeCov(F) > 0, it shrinks the features
    assert g.item() == pytest.approx(4 * 0.7 ** 3 * decov_loss(f).item(), rel=1e-9)
    assert g.item() > 1e-3


# --------------------------------------------------------------------------- 5. bounds

@pytest.mark.parametrize("seed", range(5))
def test_bounds(seed):
    rng = np.random.default_rng(seed)
    b, c = rng.integers(3, 40), rng.integers(2, 12)
    f = t64(rng.normal(size=(b, c)) @ rng.normal(size=(c, c)))
    r = correlation_matrix(f)
    assert torch.all(r.abs() <= 1 + 1e-9)
    l_abs, l_sq = correlation_loss(f, "abs").item(), correlation_loss(f, "sq").item()
    assert 0 <= l_sq <= l_abs + 1e-12 <= c * (c - 1) + 1e-9


def test_identical_channels_reach_the_maximum():
    c = 6
    col = np.random.default_rng(6).normal(size=(15, 1))
    f = t64(np.repeat(col, c, axis=1))
    assert correlation_loss(f, "abs").item() == pytest.approx(c * (c - 1), rel=1e-7)
    assert correlation_loss(f, "sq").item() == pytest.approx(c * (c - 1), rel=1e-7)
    assert correlation_loss(f, "sq", normalize=True).item() == pytest.approx(1.0, rel=1e-7)


# --------------------------------------------------------------------------- 6. permutation invariance

def test_permutation_invariance():
    rng = np.random.default_rng(7)
    f = rng.normal(size=(12, 7)) @ rng.normal(size=(7, 7))
    rows, cols = rng.permutation(12), rng.permutation(7)
    r = correlation_matrix(t64(f)).numpy()
    r_rows = correlation_matrix(t64(f[rows])).numpy()
    r_cols = correlation_matrix(t64(f[:, cols])).numpy()
    np.testing.assert_allclose(r_rows, r, atol=1e-12)
    np.testing.assert_allclose(r_cols, r[np.ix_(cols, cols)], atol=1e-12)
    for red in ("abs", "sq"):
        ref = correlation_loss(t64(f), red).item()
        assert correlation_loss(t64(f[rows]), red).item() == pytest.approx(ref, rel=1e-12)
        assert correlation_loss(t64(f[:, cols]), red).item() == pytest.approx(ref, rel=1e-12)
        assert correlation_loss(t64(f[rows][:, cols]), red).item() == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- 7. axis check

def test_correlation_runs_along_the_sample_axis():
    rng = np.random.default_rng(8)
    b, h, w = 10, 4, 4
    a = rng.normal(size=b)                    # per-sample signal shared by both channels
    noise = 0.2 * rng.normal(size=b)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    p0 = np.where((yy + xx) % 2 == 0, 1.0, -1.0)   # checkerboard, zero mean
    p1 = np.where(yy < h // 2, 1.0, -1.0)          # top/bottom halves, zero mean, orthogonal to p0
    assert abs(p0.mean()) < 1e-12 and abs(p1.mean()) < 1e-12 and abs((p0 * p1).sum()) < 1e-12
    x = np.empty((b, 2, h, w))
    x[:, 0] = a[:, None, None] + 3.0 * p0
    x[:, 1] = -2.0 * a[:, None, None] + noise[:, None, None] + 5.0 + 2.0 * p1
    pooled = x.mean(axis=(2, 3))
    np.testing.assert_allclose(pooled[:, 0], a, atol=1e-12)
    f = reduce_features(t64(x), "gap")
    assert f.shape == (b, 2)
    r = correlation_matrix(f, eps=0.0).numpy()
    r_ref = np.corrcoef(pooled.T)[0, 1]
    assert r[0, 1] == pytest.approx(r_ref, abs=1e-9)
    assert correlation_matrix(f)[0, 1].item() == pytest.approx(r_ref, abs=1e-6)  # default eps
    assert r_ref < -0.9  # strongly (anti-)correlated across samples
    # ... while within each image the two spatial maps are uncorrelated (a spatial Gram would see ~0)
    for k in range(b):
        assert abs(np.corrcoef(x[k, 0].ravel(), x[k, 1].ravel())[0, 1]) < 1e-9
    # folding the spatial positions into the batch axis would give a different (weaker) number
    folded = x.transpose(0, 2, 3, 1).reshape(-1, 2)
    assert abs(np.corrcoef(folded.T)[0, 1] - r_ref) > 0.1
    assert correlation_loss(f, "sq", eps=0.0).item() == pytest.approx(2 * r_ref ** 2, rel=1e-9)
    # GMP also gives one value per sample and channel, correlated over the batch
    fm = reduce_features(t64(x), "gmp")
    np.testing.assert_allclose(correlation_matrix(fm, eps=0.0).numpy(), np.corrcoef(x.max(axis=(2, 3)).T),
                               atol=1e-9)


# --------------------------------------------------------------------------- 8. rank lower bound

def test_rank_lower_bound_never_violated():
    b, c = 5, 20
    bound = c ** 2 / (b - 1) - c  # = 80
    assert bound == 80
    rng = np.random.default_rng(9)
    values = []
    for _ in range(200):
        f = rng.normal(size=(b, c)) * rng.uniform(0.1, 10, size=c)
        values.append(correlation_loss(t64(f), "sq").item())
    assert min(values) >= bound - 1e-3
    # the bound is attained by a tight frame: channels from B-1 orthonormal directions in the centred space
    h = scipy.linalg.hadamard(4)[:, 1:]       # 4 x 3 zero-mean orthogonal columns (B = 4, rank 3)
    frame = np.tile(h, (1, 4))                # C = 12 channels, R = (1/3)·block-ones structure
    l_sq = correlation_loss(t64(frame), "sq").item()
    assert l_sq >= 12 ** 2 / 3 - 12 - 1e-6
    # also holds in float32
    f32 = torch.randn(b, c, generator=torch.Generator().manual_seed(0))
    assert correlation_loss(f32, "sq").item() >= bound - 1e-3


# --------------------------------------------------------------------------- 9. numerical safety

def test_constant_channel_is_finite_with_finite_gradient():
    rng = np.random.default_rng(10)
    base = rng.normal(size=(8, 4))
    base[:, 2] = 3.0  # constant channel
    for dtype in (torch.float32, D64):
        for red in ("abs", "sq"):
            f = torch.tensor(base, dtype=dtype, requires_grad=True)
            loss = correlation_loss(f, red, normalize=True)
            assert torch.isfinite(loss)
            loss.backward()
            assert torch.all(torch.isfinite(f.grad))
            # the constant channel is uncorrelated with everything: same loss as without it (up to normalisation)
            rest = torch.tensor(base[:, [0, 1, 3]], dtype=dtype)
            assert loss.item() * 12 == pytest.approx(correlation_loss(rest, red).item(), rel=1e-5, abs=1e-6)
    all_const = torch.full((6, 3), 2.0, requires_grad=True)
    loss = correlation_loss(all_const, "sq")
    loss.backward()
    assert loss.item() == 0.0 and torch.all(torch.isfinite(all_const.grad))
    dv = decov_loss(all_const)
    assert torch.isfinite(dv)


def test_low_precision_inputs_are_upcast():
    g = torch.Generator().manual_seed(11)
    f32 = torch.randn(64, 8, generator=g) @ torch.randn(8, 8, generator=g)
    ref = correlation_loss(f32, "sq", normalize=True)
    for low in (torch.bfloat16, torch.float16):
        fl = f32.to(low)
        r = correlation_matrix(fl)
        assert r.dtype == torch.float32
        out = correlation_loss(fl, "sq", normalize=True)
        assert out.dtype == torch.float32
        # bf16 quantisation of the inputs only (relative error ~4e-3 per entry)
        assert out.item() == pytest.approx(ref.item(), rel=2e-2, abs=2e-3)
        # exactly what fp32 gives on the rounded values: no bf16 arithmetic inside
        assert torch.allclose(out, correlation_loss(fl.float(), "sq", normalize=True), rtol=1e-6, atol=1e-7)
        assert decov_loss(fl).dtype == torch.float32
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = correlation_loss(f32.bfloat16(), "sq", normalize=True)
        r = correlation_matrix(f32)
    assert out.dtype == torch.float32 and r.dtype == torch.float32
    assert torch.allclose(r, correlation_matrix(f32), rtol=1e-6, atol=1e-7)
    f64 = f32.double()
    assert correlation_matrix(f64).dtype == D64


# --------------------------------------------------------------------------- 10. DeCov

@pytest.mark.parametrize("b,c", [(1, 3), (5, 4), (32, 10)])
def test_decov_matches_numpy(b, c):
    rng = np.random.default_rng(b * c)
    f = rng.normal(size=(b, c)) @ rng.normal(size=(c, c)) + 2.0
    assert decov_loss(t64(f)).item() == pytest.approx(np_decov(f), rel=1e-10, abs=1e-12)
    # equals Σ_{i<j} cov_ij² (the Cogswell et al. form)
    cov = np.cov(f.T, bias=True).reshape(c, c) if b > 1 else np.zeros((c, c))
    iu = np.triu_indices(c, 1)
    assert decov_loss(t64(f)).item() == pytest.approx(np.sum(cov[iu] ** 2), rel=1e-10, abs=1e-12)


# --------------------------------------------------------------------------- 11-15. decorrelation_terms

def _feats(seed: int, b: int = 12, c: int = 5, layers: int = 1):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=D64)
    fs = [(torch.randn(b, c, generator=g, dtype=D64) @ mix).requires_grad_() for _ in range(layers)]
    fu = [(torch.randn(b + 3, c, generator=g, dtype=D64) @ mix).requires_grad_() for _ in range(layers)]
    return fs, fu


def _task(fs):
    return (fs[0] ** 2).mean() + fs[0].sum(0).tanh().sum()  # any differentiable function of F_S


def _grads(loss, leaves):
    gs = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [None if g is None else g.detach() for g in gs]


KEYS = {"loss", "task_loss", "corr_loss_labelled", "corr_loss_unlabelled"}


@pytest.mark.parametrize("variant", ["A", "B", "C", "generic", "supervised", "decov"])
def test_terms_keys_present(variant):
    fs, fu = _feats(0)
    out = decorrelation_terms(variant, _task(fs), fs, fu, 1.0, 0.5, 0.25, decov_weight=0.1)
    assert KEYS <= set(out)
    assert ("decov_loss" in out) == (variant == "decov")
    for v in out.values():
        assert v.dim() == 0 and torch.isfinite(v)


def test_variant_A_uses_L2_and_L3_only():
    fs, fu = _feats(1)
    lam2, lam3, lam4 = 0.0, 0.7, 0.9
    out = decorrelation_terms("A", _task(fs), fs, fu, lam2, lam3, lam4)
    gs, gu = _grads(out["loss"], [fs[0], fu[0]])
    assert gs is not None and torch.all(gs == 0)          # λ2 = 0 and no L4: nothing reaches F_S
    (ref_u,) = _grads(lam3 * correlation_loss(fu[0], "sq", normalize=True), [fu[0]])
    torch.testing.assert_close(gu, ref_u, rtol=1e-12, atol=1e-14)
    assert gu.abs().max() > 0
    # values
    assert out["corr_loss_unlabelled"].item() == pytest.approx(
        correlation_loss(fu[0], "sq", normalize=True).item(), rel=1e-12)
    # L4 is only a detached diagnostic in A
    assert not out["corr_loss_labelled"].requires_grad
    assert out["corr_loss_labelled"].item() == pytest.approx(
        correlation_loss(fs[0], "sq", normalize=True).item(), rel=1e-12)
    # with λ2 > 0 the F_S gradient is exactly λ2·∇L2
    fs, fu = _feats(1)
    out = decorrelation_terms("A", _task(fs), fs, fu, 1.3, lam3, lam4)
    (gs,) = _grads(out["loss"], [fs[0]])
    (ref_s,) = _grads(1.3 * _task(fs), [fs[0]])
    torch.testing.assert_close(gs, ref_s, rtol=1e-12, atol=1e-14)


def test_variant_B_uses_L2_L3_L4():
    fs, fu = _feats(2)
    lam2, lam3, lam4 = 0.6, 0.7, 0.9
    out = decorrelation_terms("B", _task(fs), fs, fu, lam2, lam3, lam4, reduction="abs", normalize=False)
    expected = lam2 * _task(fs) + lam3 * correlation_loss(fu[0], "abs") + lam4 * correlation_loss(fs[0], "abs")
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    gs, gu = _grads(out["loss"], [fs[0], fu[0]])
    rs, ru = _grads(expected, [fs[0], fu[0]])
    torch.testing.assert_close(gs, rs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gu, ru, rtol=1e-10, atol=1e-12)
    # the L4 part is really there: F_S's gradient differs from λ2·∇L2 alone
    (only_task,) = _grads(lam2 * _task(fs), [fs[0]])
    assert (gs - only_task).abs().max() > 1e-6
    assert out["corr_loss_labelled"].requires_grad and out["corr_loss_unlabelled"].requires_grad


def test_variant_C_ignores_unlabelled():
    fs, fu = _feats(3)
    lam2, lam4 = 0.8, 0.5
    out = decorrelation_terms("C", _task(fs), fs, fu, lam2, 123.0, lam4)
    gs, gu = _grads(out["loss"], [fs[0], fu[0]])
    assert gu is None                                      # no gradient reaches F_U
    expected = lam2 * _task(fs) + lam4 * correlation_loss(fs[0], "sq", normalize=True)
    (rs,) = _grads(expected, [fs[0]])
    torch.testing.assert_close(gs, rs, rtol=1e-10, atol=1e-12)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    # without unlabelled data at all
    out2 = decorrelation_terms("C", _task(fs), fs, [], lam2, 123.0, lam4)
    assert torch.equal(out2["loss"], out["loss"])
    assert out2["corr_loss_unlabelled"].item() == 0.0


def test_supervised_is_exactly_the_task_loss_with_diagnostics():
    fs, fu = _feats(4)
    task = _task(fs)
    out = decorrelation_terms("supervised", task, fs, fu, 0.37, 5.0, 5.0)
    assert torch.equal(out["loss"], 0.37 * task)
    assert torch.equal(out["task_loss"], task)
    gs, gu = _grads(out["loss"], [fs[0], fu[0]])
    assert gu is None
    (rs,) = _grads(0.37 * _task(fs), [fs[0]])
    assert torch.equal(gs, rs)
    for key, f in (("corr_loss_labelled", fs[0]), ("corr_loss_unlabelled", fu[0])):
        assert not out[key].requires_grad
        assert out[key].item() == pytest.approx(correlation_loss(f, "sq", normalize=True).item(), rel=1e-12)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_zero_corr_weights_are_bit_identical_to_supervised(variant):
    g = torch.Generator().manual_seed(5)
    net = torch.nn.Linear(6, 4).double()
    head = torch.nn.Linear(4, 3).double()
    xs, xu = torch.randn(16, 6, generator=g, dtype=D64), torch.randn(16, 6, generator=g, dtype=D64)
    ys = torch.randint(0, 3, (16,), generator=g)
    params = list(net.parameters()) + list(head.parameters())

    def run(use_terms: bool):
        fs, fu = net(xs), net(xu)
        task = F.cross_entropy(head(fs), ys)
        loss = (decorrelation_terms(variant, task, [fs], [fu], 0.9, 0.0, 0.0)["loss"] if use_terms
                else 0.9 * task)
        return loss, torch.autograd.grad(loss, params)

    loss_t, grads_t = run(True)
    loss_b, grads_b = run(False)
    assert torch.equal(loss_t, loss_b)
    for a, b in zip(grads_t, grads_b):
        assert torch.equal(a, b)
    # same in float32 with λ2 = 1
    fs32 = torch.randn(8, 4, generator=g, requires_grad=True)
    task32 = fs32.square().mean()
    out = decorrelation_terms(variant, task32, [fs32], [torch.randn(8, 4, generator=g)], 1.0, 0.0, 0.0)
    assert torch.equal(out["loss"], task32)
    assert torch.isfinite(out["corr_loss_unlabelled"])  # still reported


def test_generic_is_correlation_of_the_mixed_batch():
    fs, fu = _feats(6)
    out = decorrelation_terms("generic", _task(fs), fs, fu, 0.5, 2.0, 99.0, reduction="abs", normalize=False)
    mixed = correlation_loss(torch.cat([fs[0], fu[0]]), "abs")
    assert out["corr_loss_unlabelled"].item() == pytest.approx(mixed.item(), rel=1e-12)
    assert out["loss"].item() == pytest.approx((0.5 * _task(fs) + 2.0 * mixed).item(), rel=1e-12)
    # it differs from the per-set losses (it is not L3 or L3 + L4)
    assert abs(mixed.item() - correlation_loss(fu[0], "abs").item()) > 1e-6
    gs, gu = _grads(out["loss"], [fs[0], fu[0]])
    rs, ru = _grads(0.5 * _task(fs) + 2.0 * mixed, [fs[0], fu[0]])
    torch.testing.assert_close(gs, rs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gu, ru, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="generic"):
        decorrelation_terms("generic", _task(fs), fs, fu + fu, 1.0, 1.0, 1.0)


def test_decov_variant():
    fs, fu = _feats(7, layers=2)
    w = 0.3
    out = decorrelation_terms("decov", _task(fs), fs, fu, 1.1, 9.0, 9.0, decov_weight=w)
    dec_np = sum(np_decov(f.detach().numpy()) for f in fs + fu)
    assert out["decov_loss"].item() == pytest.approx(dec_np, rel=1e-10)
    expected = 1.1 * _task(fs) + w * sum(decov_loss(f) for f in fs) + w * sum(decov_loss(f) for f in fu)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    grads = _grads(out["loss"], fs + fu)
    refs = _grads(expected, fs + fu)
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # correlation terms are diagnostics only
    assert not out["corr_loss_labelled"].requires_grad and not out["corr_loss_unlabelled"].requires_grad
    ref_l = sum(correlation_loss(f, "sq", normalize=True).item() for f in fs)
    assert out["corr_loss_labelled"].item() == pytest.approx(ref_l, rel=1e-12)
    # decov_weight = 0 -> exactly the task loss
    task = _task(fs)
    out0 = decorrelation_terms("decov", task, fs, fu, 1.0, 1.0, 1.0, decov_weight=0.0)
    assert torch.equal(out0["loss"], task)


def test_separate_backward_equals_unit_weight_sum():
    """Spec test 12: separate backward passes with gradient accumulation == summed backward (λ = 1)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6)).double()
    head = torch.nn.Linear(6, 3).double()
    xs, xu = torch.randn(20, 5, dtype=D64), torch.randn(24, 5, dtype=D64)
    ys = torch.randint(0, 3, (20,))
    params = list(net.parameters()) + list(head.parameters())

    def forward():
        fs, fu = net(xs), net(xu)
        return F.cross_entropy(head(fs), ys), fs, fu

    task, fs, fu = forward()
    out = decorrelation_terms("B", task, [fs], [fu], 1.0, 1.0, 1.0)
    out["loss"].backward()
    summed = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    for term in ("task_loss", "corr_loss_unlabelled", "corr_loss_labelled"):
        task, fs, fu = forward()
        out = decorrelation_terms("B", task, [fs], [fu], 1.0, 1.0, 1.0)
        out[term].backward()  # gradients accumulate in .grad
    for p, s in zip(params, summed):
        torch.testing.assert_close(p.grad, s, rtol=1e-10, atol=1e-12)
    assert any(s.abs().max() > 0 for s in summed)


def test_multi_layer_terms_are_summed():
    """Spec test 15: each layer gets its own L_corr term, and they are summed."""
    g = torch.Generator().manual_seed(8)
    fs = [torch.randn(10, c, generator=g, dtype=D64).requires_grad_() for c in (4, 7)]
    fu = [torch.randn(9, c, generator=g, dtype=D64).requires_grad_() for c in (3, 6)]
    for variant in ("A", "B", "C"):
        out = decorrelation_terms(variant, _task(fs), fs, fu, 1.0, 1.0, 1.0, reduction="sq", normalize=True)
        l3 = sum(correlation_loss(f, "sq", normalize=True) for f in fu)
        l4 = sum(correlation_loss(f, "sq", normalize=True) for f in fs)
        assert out["corr_loss_unlabelled"].item() == pytest.approx(l3.item(), rel=1e-12)
        assert out["corr_loss_labelled"].item() == pytest.approx(l4.item(), rel=1e-12)
        grads = _grads(out["loss"], fs + fu)
        uses_u = variant in ("A", "B")
        for gr in grads[2:]:
            assert (gr is not None and gr.abs().max() > 0) == uses_u
        if variant in ("B", "C"):
            # the second labelled layer enters only through L4
            assert grads[1] is not None and grads[1].abs().max() > 0
            (ref,) = _grads(correlation_loss(fs[1], "sq", normalize=True), [fs[1]])
            torch.testing.assert_close(grads[1], ref, rtol=1e-10, atol=1e-12)
        else:
            assert grads[1] is None
    # generic pairs the layers: cat along the batch axis per pair
    fu2 = [torch.randn(9, c, generator=g, dtype=D64) for c in (4, 7)]
    out = decorrelation_terms("generic", _task(fs), fs, fu2, 1.0, 1.0, 1.0, reduction="abs", normalize=False)
    ref = sum(correlation_loss(torch.cat([a, b]), "abs") for a, b in zip(fs, fu2))
    assert out["corr_loss_unlabelled"].item() == pytest.approx(ref.item(), rel=1e-12)


def test_bad_names_raise():
    fs, fu = _feats(9)
    with pytest.raises(ValueError, match="A, B, C, generic, supervised, decov"):
        decorrelation_terms("D", _task(fs), fs, fu, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"'sq'.*'abs'"):
        decorrelation_terms("A", _task(fs), fs, fu, 1.0, 1.0, 1.0, reduction="l2")
    with pytest.raises(ValueError, match=r"'sq'.*'abs'"):
        decorrelation_terms("supervised", _task(fs), fs, fu, 1.0, 1.0, 1.0, reduction="l2")
    with pytest.raises(ValueError, match="unlabelled"):
        decorrelation_terms("A", _task(fs), fs, [], 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="labelled"):
        decorrelation_terms("C", _task(fs), [], fu, 1.0, 1.0, 1.0)


def test_zero_weight_terms_are_not_in_the_graph():
    fs, fu = _feats(10)
    out = decorrelation_terms("B", _task(fs), fs, fu, 1.0, 0.0, 0.0)
    gs, gu = _grads(out["loss"], [fs[0], fu[0]])
    assert gu is None                     # λ3 = 0: F_U is not touched at all (not even 0·L3)
    assert not out["corr_loss_unlabelled"].requires_grad and not out["corr_loss_labelled"].requires_grad
    # a diagnostic over fewer than 2 samples is NaN and never poisons the objective
    one = torch.randn(1, 5, dtype=D64, requires_grad=True)
    task = _task(fs)
    out = decorrelation_terms("A", task, fs, [one], 1.0, 0.0, 0.0)
    assert torch.equal(out["loss"], task) and torch.isnan(out["corr_loss_unlabelled"])
    with pytest.raises(ValueError, match="batch size 1"):
        decorrelation_terms("A", task, fs, [one], 1.0, 0.5, 0.0)
