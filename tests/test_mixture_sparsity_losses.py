"""Unit tests of trainers/mixture_sparsity (losses, models, pruning) against scipy and closed forms.

Numbering "spec test N" follows the known-answer tests of the implementation spec's §8.2. (not shipped;
docs/methods/mixture_sparsity.md describes the method)
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F

from trainers.mixture_sparsity import (SigmoidMLP, SmallPrunableCNN, all_group_norms, count_flops, count_params,
                                       gauss_laplace_penalty, group_lasso_penalty, group_norms, l2_penalty,
                                       layer_groups, masked_model, mixture_log_likelihood, mixture_penalty,
                                       mixture_threshold, prune_model, pruned_mask, regularizer, responsibilities,
                                       threshold_masks)
from trainers.mixture_sparsity.losses import Regularizer

D64 = torch.float64


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=D64)


def scipy_penalty(x: np.ndarray, a, mu, s, fams) -> float:
    """− Σ_g logsumexp_j (log α_j + logpdf_j(x_g)) with scipy's densities (σ = Gaussian std / Laplace b)."""
    cols = []
    for aj, mj, sj, fam in zip(a, mu, s, fams):
        dist = scipy.stats.norm(mj, sj) if fam == "gaussian" else scipy.stats.laplace(mj, sj)
        cols.append(np.log(aj) + dist.logpdf(x))
    return float(-scipy.special.logsumexp(np.stack(cols, axis=1), axis=1).sum())


def closed_form_penalty(x: np.ndarray, a, mu, s, fams) -> float:
    """The same in closed form (scipy.stats.laplace.logpdf underflows to −inf far in the tails)."""
    cols = []
    for aj, mj, sj, fam in zip(a, mu, s, fams):
        if fam == "gaussian":
            logp = -0.5 * ((x - mj) / sj) ** 2 - np.log(sj) - 0.5 * np.log(2 * np.pi)
        else:
            logp = -np.abs(x - mj) / sj - np.log(2 * sj)
        cols.append(np.log(aj) + logp)
    return float(-scipy.special.logsumexp(np.stack(cols, axis=1), axis=1).sum())


def random_mixture(rng, m: int):
    a = rng.dirichlet(np.ones(m))
    mu = np.sort(rng.uniform(0.0, 6.0, size=m))
    s = rng.uniform(0.2, 2.0, size=m)
    return a, mu, s


# --------------------------------------------------------------------------- spec test 1: group parameters

def test_group_norms_known_answer():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert group_norms(w, "rows", eps=0.0).tolist() == [5.0, 0.0]
    assert group_norms(w, "cols", eps=0.0).tolist() == [3.0, 4.0]
    # default smooth eps: the zero group has norm eps, the others are off by less than eps
    np.testing.assert_allclose(group_norms(w.double()).numpy(), [5.0, 1e-8], rtol=0, atol=1e-12)
    np.testing.assert_allclose(group_norms(w.double(), "cols").numpy(), [3.0, 4.0], rtol=0, atol=1e-12)


def test_group_norms_conv_and_linear_match_numpy():
    rng = np.random.default_rng(1)
    conv = rng.normal(size=(5, 3, 3, 2))
    lin = rng.normal(size=(4, 7))
    np.testing.assert_allclose(group_norms(t64(conv), "rows", 0.0).numpy(),
                               np.sqrt((conv ** 2).sum(axis=(1, 2, 3))), rtol=1e-12)
    np.testing.assert_allclose(group_norms(t64(conv), "cols", 0.0).numpy(),
                               np.sqrt((conv ** 2).sum(axis=(0, 2, 3))), rtol=1e-12)
    np.testing.assert_allclose(group_norms(t64(lin), "rows", 0.0).numpy(), np.linalg.norm(lin, axis=1), rtol=1e-12)
    np.testing.assert_allclose(group_norms(t64(lin), "cols", 0.0).numpy(), np.linalg.norm(lin, axis=0), rtol=1e-12)
    assert group_norms(torch.randn(4, 7, dtype=torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_finite_gradient_at_zero_group(eps):
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]], dtype=D64, requires_grad=True)
    for r in (mixture_penalty(group_norms(w, "rows", eps), [0.5, 0.5], [0.0, 5.0], [1.0, 1.0]),
              mixture_penalty(group_norms(w, "rows", eps), [0.5, 0.5], [0.0, 5.0], [1.0, 1.0], "laplace"),
              group_lasso_penalty(group_norms(w, "rows", eps)),
              regularizer("group_lasso", [(w, "rows"), (w, "cols")], eps=eps)):
        (g,) = torch.autograd.grad(r, w)
        assert torch.isfinite(g).all()
        assert g[1].abs().max().item() == 0.0
    w32 = torch.zeros(3, 4, requires_grad=True)
    (g,) = torch.autograd.grad(regularizer("mixture", [(w32, "rows")], [0.5, 0.5], [0.0, 1.0], [0.1, 0.1],
                                           eps=eps), w32)
    assert torch.isfinite(g).all()


# --------------------------------------------------------------------------- mixture vs scipy

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("family", ["gaussian", "laplace", "mixed"])
def test_mixture_penalty_matches_scipy(seed, family):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 5))
    a, mu, s = random_mixture(rng, m)
    fams = [family] * m if family != "mixed" else list(rng.choice(["gaussian", "laplace"], size=m))
    x = rng.uniform(0.0, 8.0, size=int(rng.integers(1, 40)))
    expected = scipy_penalty(x, a, mu, s, fams)
    assert closed_form_penalty(x, a, mu, s, fams) == pytest.approx(expected, rel=1e-12)
    fam_arg = family if family != "mixed" else fams
    got = mixture_penalty(t64(x), a.tolist(), mu.tolist(), s.tolist(), fam_arg)
    assert got.dtype == D64
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    # float32 inputs, tensor hyperparameters
    got32 = mixture_penalty(torch.tensor(x, dtype=torch.float32), torch.tensor(a), torch.tensor(mu),
                            torch.tensor(s), fam_arg)
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(expected, rel=1e-5, abs=1e-4)
    # per-group log likelihood
    ll = mixture_log_likelihood(t64(x), a, mu, s, fam_arg).numpy()
    assert ll.shape == x.shape
    assert -ll.sum() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    # sigma_is="variance": σ² (Gaussian) / 2b² (Laplace) given instead of the scale
    var = [sj ** 2 if f == "gaussian" else 2 * sj ** 2 for sj, f in zip(s, fams)]
    assert mixture_penalty(t64(x), a, mu, var, fam_arg, sigma_is="variance").item() == \
        pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_responsibilities_match_scipy():
    rng = np.random.default_rng(7)
    a, mu, s = random_mixture(rng, 3)
    x = rng.uniform(0, 6, size=10)
    logs = np.stack([np.log(aj) + scipy.stats.norm(mj, sj).logpdf(x) for aj, mj, sj in zip(a, mu, s)], axis=1)
    expected = np.exp(logs - scipy.special.logsumexp(logs, axis=1, keepdims=True))
    np.testing.assert_allclose(responsibilities(t64(x), a, mu, s).numpy(), expected, rtol=1e-10)


# --------------------------------------------------------------------------- spec test 2: GMM known answer

def test_spec_gmm_known_answer():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=D64)
    norms = group_norms(w, "rows", eps=0.0).requires_grad_(True)
    r = mixture_penalty(norms, [0.5, 0.5], [0.0, 5.0], [1.0, 1.0])
    assert r.item() == pytest.approx(3.2241639742, abs=1e-9)
    per_group = -mixture_log_likelihood(norms.detach(), [0.5, 0.5], [0.0, 5.0], [1.0, 1.0])
    np.testing.assert_allclose(per_group.numpy(), [1.6120820, 1.6120820], atol=1e-7)
    gam = responsibilities(norms.detach(), [0.5, 0.5], [0.0, 5.0], [1.0, 1.0])
    assert gam[0, 0].item() == pytest.approx(3.7266e-6, rel=1e-4)
    assert gam[1, 0].item() == pytest.approx(0.9999963, abs=1e-7)
    (g,) = torch.autograd.grad(r, norms)
    assert g[0].item() == pytest.approx(1.8633e-5, rel=1e-4)
    assert g[1].item() == pytest.approx(-1.8633e-5, rel=1e-4)
    # derived gradient formula ∂R/∂w_g = Σ_j γ_j (w_g − μ_j)/σ_j²
    derived = (gam * (norms.detach()[:, None] - t64([0.0, 5.0]))).sum(dim=1)
    np.testing.assert_allclose(g.numpy(), derived.numpy(), rtol=1e-9)
    # the same through the training-loop entry point
    assert regularizer("mixture", [(w, "rows")], [0.5, 0.5], [0.0, 5.0], [1.0, 1.0], eps=0.0).item() == \
        pytest.approx(3.2241639742, abs=1e-9)


# --------------------------------------------------------------------------- spec tests 3, 4: reductions

def test_spec_ridge_and_group_lasso_known_answers():
    norms = t64([5.0, 0.0])
    assert mixture_penalty(norms, [1.0], [0.0], [1.0]).item() == pytest.approx(14.3378770664, abs=1e-9)
    assert mixture_penalty(norms, [1.0], [0.0], [2.0], "laplace").item() == pytest.approx(5.2725887222, abs=1e-9)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_single_gaussian_is_l2_up_to_a_constant(sigma):
    rng = np.random.default_rng(11)
    shapes = [(6, 5), (4, 3, 3, 3)]
    const = None
    for _ in range(4):
        ws = [t64(rng.normal(scale=rng.uniform(0.1, 3), size=sh)).requires_grad_(True) for sh in shapes]
        groups = [(ws[0], "rows"), (ws[1], "cols")]
        r_mix = regularizer("mixture", groups, [1.0], [0.0], [sigma], eps=0.0)
        r_l2 = regularizer("l2", groups)
        assert r_l2.item() == pytest.approx(sum((w.detach() ** 2).sum().item() for w in ws), rel=1e-12)
        diff = r_mix.item() - r_l2.item() / (2 * sigma ** 2)
        n_groups = 6 + 3
        assert diff == pytest.approx(n_groups * 0.5 * math.log(2 * math.pi * sigma ** 2), rel=1e-10)
        const = diff if const is None else const
        assert diff == pytest.approx(const, rel=1e-10)
        g_mix = torch.autograd.grad(r_mix, ws)
        g_l2 = torch.autograd.grad(r_l2, ws)
        for gm, gl, w in zip(g_mix, g_l2, ws):
            np.testing.assert_allclose(gm.numpy(), (gl / (2 * sigma ** 2)).numpy(), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(gm.numpy(), (w.detach() / sigma ** 2).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("b", [0.5, 1.0, 3.0])
def test_single_laplace_is_group_lasso_up_to_a_constant(b):
    rng = np.random.default_rng(12)
    const = None
    for _ in range(4):
        w = t64(rng.normal(scale=rng.uniform(0.1, 3), size=(7, 4))).requires_grad_(True)
        r_mix = regularizer("mixture", [(w, "rows")], [1.0], [0.0], [b], family="laplace", eps=0.0)
        r_gl = regularizer("group_lasso", [(w, "rows")], eps=0.0)
        assert r_gl.item() == pytest.approx(np.linalg.norm(w.detach().numpy(), axis=1).sum(), rel=1e-12)
        diff = r_mix.item() - r_gl.item() / b
        assert diff == pytest.approx(7 * math.log(2 * b), rel=1e-10)
        const = diff if const is None else const
        assert diff == pytest.approx(const, rel=1e-10)
        (g_mix,) = torch.autograd.grad(r_mix, w)
        (g_gl,) = torch.autograd.grad(r_gl, w)
        np.testing.assert_allclose(g_mix.numpy(), (g_gl / b).numpy(), rtol=1e-9)
        v = w.detach().numpy()
        np.testing.assert_allclose(g_mix.numpy(), v / np.linalg.norm(v, axis=1, keepdims=True) / b, rtol=1e-9)


# --------------------------------------------------------------------------- spec test 5: Gaussian + Laplace

def test_spec_gauss_laplace_known_answer():
    norms = t64([5.0, 0.0])
    assert gauss_laplace_penalty(norms, [0.5], [0.0], [1.0], [0.5], [5.0], [1.0]).item() == \
        pytest.approx(2.9899677948, abs=1e-9)
    assert mixture_penalty(norms, [0.5, 0.5], [0.0, 5.0], [1.0, 1.0], ["gaussian", "laplace"]).item() == \
        pytest.approx(2.9899677948, abs=1e-9)


def test_gauss_laplace_readings_match_scipy():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 6, size=12)
    ga, gm, gs = [0.3, 0.2], [0.0, 4.0], [0.5, 1.0]
    la, lm, ls = [0.4, 0.1], [0.0, 5.0], [0.3, 2.0]
    a_expected = scipy_penalty(x, ga + la, gm + lm, gs + ls, ["gaussian"] * 2 + ["laplace"] * 2)
    assert gauss_laplace_penalty(t64(x), ga, gm, gs, la, lm, ls).item() == pytest.approx(a_expected, rel=1e-10)
    gb, lb = [0.6, 0.4], [0.8, 0.2]
    b_expected = (scipy_penalty(x, gb, gm, gs, ["gaussian"] * 2) + scipy_penalty(x, lb, lm, ls, ["laplace"] * 2))
    assert gauss_laplace_penalty(t64(x), gb, gm, gs, lb, lm, ls, reading="B").item() == \
        pytest.approx(b_expected, rel=1e-10)
    with pytest.raises(ValueError, match="weights"):      # reading A needs Σα + Σβ = 1
        gauss_laplace_penalty(t64(x), gb, gm, gs, lb, lm, ls, reading="A")
    with pytest.raises(ValueError, match="reading.*A, B"):
        gauss_laplace_penalty(t64(x), ga, gm, gs, la, lm, ls, reading="C")


# --------------------------------------------------------------------------- spec test 6: gradient check

@pytest.mark.parametrize("family", ["gaussian", "laplace", ["gaussian", "laplace", "gaussian"]])
@pytest.mark.parametrize("dim", ["rows", "cols"])
def test_gradcheck_all_variants(family, dim):
    rng = np.random.default_rng(3)
    w = t64(rng.normal(size=(4, 3, 2, 2)) + 0.5).requires_grad_(True)
    mu = [0.0, 1.3, 3.1]          # norms of this w lie in ~[1, 5]: away from 0 and from the Laplace kinks

    def fn(weight):
        return regularizer("mixture", [(weight, dim)], [0.5, 0.3, 0.2], mu, [0.7, 0.5, 1.2], family=family)

    assert torch.autograd.gradcheck(fn, (w,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: regularizer("group_lasso", [(x, dim)]), (w,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: regularizer("l2", [(x, dim)]), (w,), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- stability

@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_stability_tiny_stds_and_huge_norms(dtype):
    x = np.array([0.0, 1e-3, 10.0, 1e3, 1e5])
    a, mu, s = [0.7, 0.3], [0.0, 5.0], [1e-4, 1e-3]
    for fam in ("gaussian", "laplace", ["gaussian", "laplace"]):
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        r = mixture_penalty(xt, a, mu, s, fam)
        (g,) = torch.autograd.grad(r, xt)
        assert torch.isfinite(r) and torch.isfinite(g).all()
        fams = fam if isinstance(fam, list) else [fam] * 2
        expected = closed_form_penalty(x, a, mu, s, fams)
        assert r.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-12)
    # huge weights through the norms
    w = torch.full((3, 4), 1e4, dtype=dtype, requires_grad=True)
    r = regularizer("mixture", [(w, "rows")], a, mu, s)
    (g,) = torch.autograd.grad(r, w)
    assert torch.isfinite(r) and torch.isfinite(g).all()


def test_zero_weight_component_is_allowed():
    x = t64([0.0, 2.0, 5.0])
    r0 = mixture_penalty(x, [1.0, 0.0], [0.0, 5.0], [1.0, 1.0])
    r1 = mixture_penalty(x, [1.0], [0.0], [1.0])
    assert r0.item() == pytest.approx(r1.item(), rel=1e-14)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mixture_penalty(xg, [1.0, 0.0], [0.0, 5.0], [1.0, 1.0]), xg)
    assert torch.isfinite(g).all()


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs,match", [
    (dict(weights=[0.5, 0.4], means=[0, 5], stds=[1, 1]), r"weights.*sum to 1"),
    (dict(weights=[1.2, -0.2], means=[0, 5], stds=[1, 1]), r"weights.*non-negative"),
    (dict(weights=[0.5, 0.5], means=[0, 5], stds=[1, 0]), r"stds.*> 0"),
    (dict(weights=[0.5, 0.5], means=[0, 5], stds=[1, -2]), r"stds.*> 0"),
    (dict(weights=[0.5, 0.5], means=[0, 5, 7], stds=[1, 1]), r"weights, means, stds.*equal lengths"),
    (dict(weights=[0.5, 0.5], means=[0, 5], stds=[1]), r"weights, means, stds.*equal lengths"),
    (dict(weights=[], means=[], stds=[]), r"weights.*at least one component"),
    (dict(weights=[0.5, 0.5], means=[0, float("nan")], stds=[1, 1]), r"means.*finite"),
    (dict(weights=[0.5, 0.5], means=[0, 5], stds=[1, 1], family="cauchy"), r"family.*gaussian, laplace"),
    (dict(weights=[0.5, 0.5], means=[0, 5], stds=[1, 1], family=["gaussian"]), r"family.*one entry per component"),
    (dict(weights=[0.5, 0.5], means=[0, 5], stds=[1, 1], family=["gaussian", "t"]), r"family.*gaussian, laplace"),
    (dict(weights=[0.5, 0.5], means=[0, 5], stds=[1, 1], sigma_is="std"), r"sigma_is.*scale, variance"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mixture_penalty(t64([1.0, 2.0]), **kwargs)
    with pytest.raises(ValueError, match=match):
        mixture_threshold(**kwargs)


def test_weight_sum_tolerance():
    x = t64([1.0])
    mixture_penalty(x, [0.5, 0.5 + 5e-7], [0, 5], [1, 1])        # within 1e-6
    with pytest.raises(ValueError, match="weights"):
        mixture_penalty(x, [0.5, 0.5 + 5e-6], [0, 5], [1, 1])


def test_other_argument_errors():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"dim.*rows, cols"):
        group_norms(w, "diag")
    with pytest.raises(ValueError, match="ndim"):
        group_norms(torch.randn(4))
    with pytest.raises(ValueError, match=r"kind.*mixture, group_lasso, l2, none"):
        regularizer("l1", [(w, "rows")])
    with pytest.raises(ValueError, match=r"group dim.*rows, cols"):
        regularizer("group_lasso", [(w, "row")])
    with pytest.raises(ValueError, match="needs weights, means and stds"):
        regularizer("mixture", [(w, "rows")])
    with pytest.raises(ValueError, match="at least one"):
        regularizer("l2", [])


# --------------------------------------------------------------------------- regularizer entry point

def test_regularizer_kinds():
    rng = np.random.default_rng(9)
    a, b = t64(rng.normal(size=(5, 4))), t64(rng.normal(size=(6, 5, 3, 3)))
    groups = [(a, "rows"), (b, "cols"), (a, "cols")]
    norms = torch.cat([group_norms(a, "rows"), group_norms(b, "cols"), group_norms(a, "cols")])
    np.testing.assert_allclose(all_group_norms(groups).numpy(), norms.numpy())
    assert regularizer("group_lasso", groups).item() == pytest.approx(norms.sum().item(), rel=1e-12)
    # l2 counts each tensor once although `a` is grouped twice
    assert regularizer("l2", groups).item() == pytest.approx((a ** 2).sum().item() + (b ** 2).sum().item(), rel=1e-12)
    assert l2_penalty([a, b, a]).item() == pytest.approx(regularizer("l2", groups).item(), rel=1e-12)
    hyp = dict(weights=[0.6, 0.4], means=[0.0, 2.0], stds=[0.5, 0.5])
    assert regularizer("mixture", groups, **hyp).item() == pytest.approx(mixture_penalty(norms, **hyp).item(),
                                                                        rel=1e-12)
    none = regularizer("none", groups)
    assert none.item() == 0.0 and none.dim() == 0


def test_a_regularizer_built_once_is_the_one_off_regularizer_in_every_dtype_and_under_autocast():
    """The training loop validates the hyperparameters once (Regularizer) and calls it every step; that must be
    the same R as the one-off call, for float32 and float64 weights alike, and autocast must not reach it."""
    hyp = dict(weights=[0.5, 0.3, 0.2], means=[0.0, 1.0, 3.0], stds=[0.2, 0.5, 1.0],
               family=["gaussian", "laplace", "gaussian"])
    reg = Regularizer("mixture", **hyp)
    rng = np.random.default_rng(4)
    for dtype in (torch.float64, torch.float32, torch.float64):
        for _ in range(2):
            a = torch.as_tensor(rng.normal(size=(7, 5)), dtype=dtype)
            b = torch.as_tensor(rng.normal(size=(4, 7, 3, 3)), dtype=dtype)
            groups = [(a, "rows"), (b, "cols")]
            got = reg(groups)
            assert got.dtype == dtype
            assert torch.equal(got, regularizer("mixture", groups, **hyp))
            x = np.concatenate([np.sqrt((a.double().numpy() ** 2).sum(1) + 1e-16),
                                np.sqrt((b.double().numpy() ** 2).sum((0, 2, 3)) + 1e-16)])
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            assert got.item() == pytest.approx(scipy_penalty(x, hyp["weights"], hyp["means"], hyp["stds"],
                                                             hyp["family"]), rel=tol)
    w = torch.randn(6, 4)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under = reg([(w, "rows")])
    assert under.dtype == torch.float32 and torch.equal(under, reg([(w, "rows")]))


# --------------------------------------------------------------------------- spec test 7: λ = 0 is prior art 1

@pytest.mark.parametrize("kind", ["mixture", "group_lasso", "l2", "none"])
def test_lambda_zero_reproduces_plain_training(kind):
    torch.manual_seed(0)
    base = SigmoidMLP(6, [5, 4], 3)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    models = []
    for use_reg in (False, True):
        model = SigmoidMLP(6, [5, 4], 3)
        model.load_state_dict(base.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if use_reg:
                groups = layer_groups(model, [("fc0", "rows"), ("fc1", "rows"), ("fc2", "cols")])
                loss = loss + 0.0 * regularizer(kind, groups, [0.5, 0.5], [0.0, 1.0], [0.2, 0.2])
            loss.backward()
            opt.step()
        models.append(model)
    for (n0, p0), (n1, p1) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert n0 == n1 and torch.equal(p0, p1)


# --------------------------------------------------------------------------- spec test 8: dynamics, threshold

def test_spec_thresholds():
    assert mixture_threshold([0.5, 0.5], [0.0, 5.0], [1.0, 1.0]) == pytest.approx(2.5, abs=1e-9)
    assert mixture_threshold([0.9, 0.1], [0.0, 5.0], [1.0, 1.0]) == pytest.approx(2.9394449, abs=1e-7)


@pytest.mark.parametrize("seed", range(6))
def test_threshold_matches_closed_form_equal_sigma(seed):
    rng = np.random.default_rng(seed)
    mu0, mu1 = rng.uniform(-1, 1), rng.uniform(1.5, 6)
    a0 = rng.uniform(0.2, 0.95)
    sigma = rng.uniform(0.3, 1.2)
    expected = (mu0 + mu1) / 2 + sigma ** 2 * math.log(a0 / (1 - a0)) / (mu1 - mu0)
    # a third, far "keep" component does not change the boundary between 0 and its nearest neighbour
    got = mixture_threshold([a0, 1 - a0], [mu0, mu1], [sigma, sigma])
    assert got == pytest.approx(expected, abs=1e-9)
    got3 = mixture_threshold([a0 * 0.9, (1 - a0) * 0.9, 0.1], [mu0, mu1, mu1 + 50], [sigma, sigma, sigma])
    assert got3 == pytest.approx(expected, abs=1e-6)
    # component order does not matter
    assert mixture_threshold([1 - a0, a0], [mu1, mu0], [sigma, sigma]) == pytest.approx(expected, abs=1e-9)
    # the weighted densities are equal at the threshold
    lp = [math.log(a0) + scipy.stats.norm(mu0, sigma).logpdf(got),
          math.log(1 - a0) + scipy.stats.norm(mu1, sigma).logpdf(got)]
    assert lp[0] == pytest.approx(lp[1], abs=1e-8)


def test_threshold_other_families_and_errors():
    # Laplace vs Laplace, equal b: α0/(2b) e^{−x/b} = α1/(2b) e^{−(μ1−x)/b}  ⇒  x = μ1/2 + b ln(α0/α1)/2
    t = mixture_threshold([0.8, 0.2], [0.0, 4.0], [1.0, 1.0], "laplace")
    assert t == pytest.approx(2.0 + math.log(4.0) / 2, abs=1e-9)
    t = mixture_threshold([0.5, 0.5], [0.0, 4.0], [0.5, 1.0], ["laplace", "gaussian"])
    assert math.log(0.5) + scipy.stats.laplace(0, 0.5).logpdf(t) == \
        pytest.approx(math.log(0.5) + scipy.stats.norm(4, 1).logpdf(t), abs=1e-8)
    # the delete component dominates beyond the keep mean: the search extends to the right
    t = mixture_threshold([0.999, 0.001], [0.0, 1.0], [1.0, 1.0])
    assert t == pytest.approx(0.5 + math.log(999), abs=1e-8)
    with pytest.raises(ValueError, match="keep component"):
        mixture_threshold([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="does not dominate"):
        mixture_threshold([0.01, 0.99], [0.0, 0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match="dominates everywhere"):
        mixture_threshold([0.99, 0.01], [0.0, 1.0], [3.0, 1.0])
    with pytest.raises(ValueError, match="delete_component"):
        mixture_threshold([0.5, 0.5], [0.0, 1.0], [1.0, 1.0], delete_component=2)


def test_pruned_mask():
    assert pruned_mask(torch.tensor([0.0, 2.49, 2.5, 7.0]), 2.5).tolist() == [True, True, False, False]


def _descend(w0: torch.Tensor, alphas, steps: int, lr: float, lam: float = 1.0, anchor: bool = False) -> torch.Tensor:
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = lam * regularizer("mixture", [(w, "rows")], alphas, [0.0, 5.0], [1.0, 1.0])
        if anchor:  # a stand-in task loss E(w) = ½||W − W0||²
            loss = loss + 0.5 * ((w - w0) ** 2).sum()
        loss.backward()
        opt.step()
    return group_norms(w.detach(), "rows", eps=0.0)


@pytest.mark.parametrize("alphas", [(0.5, 0.5), (0.9, 0.1)])
def test_spec_clustering_dynamics(alphas):
    w_star = mixture_threshold(alphas, [0.0, 5.0], [1.0, 1.0])
    start = torch.tensor([0.3, 1.0, 2.0, w_star - 0.2, w_star + 0.2, 3.5, 4.5, 6.0, 8.0], dtype=D64)
    directions = F.normalize(torch.randn(len(start), 4, generator=torch.Generator().manual_seed(0), dtype=D64), dim=1)
    final = _descend(directions * start[:, None], list(alphas), steps=400, lr=0.1)
    target = torch.where(start < w_star, 0.0, 5.0).to(D64)
    np.testing.assert_allclose(final.numpy(), target.numpy(), atol=1e-3)


def test_spec_adjustability_monotone_in_alpha0():
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(60, 5, generator=gen, dtype=D64) * torch.rand(60, 1, generator=gen, dtype=D64) * 3
    fractions, thresholds = [], []
    for a0 in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        tau = mixture_threshold([a0, 1 - a0], [0.0, 5.0], [1.0, 1.0])
        norms = _descend(w0, [a0, 1 - a0], steps=150, lr=0.1, lam=2.0, anchor=True)
        fractions.append(pruned_mask(norms, tau).double().mean().item())
        thresholds.append(tau)
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert all(b > a for a, b in zip(thresholds, thresholds[1:]))
    assert fractions[-1] > fractions[0]
    # the boundary also moves with μ1 and σ
    assert mixture_threshold([0.5, 0.5], [0.0, 6.0], [1.0, 1.0]) > mixture_threshold([0.5, 0.5], [0.0, 5.0], [1.0, 1.0])
    assert mixture_threshold([0.9, 0.1], [0.0, 5.0], [2.0, 2.0]) > mixture_threshold([0.9, 0.1], [0.0, 5.0], [1.0, 1.0])


# --------------------------------------------------------------------------- models, counters

def test_models_and_counters():
    mlp = SigmoidMLP(10, [8, 6], 3)
    assert mlp.layer_names == ("fc0", "fc1", "fc2")
    assert count_params(mlp) == 10 * 8 + 8 + 8 * 6 + 6 + 6 * 3 + 3
    assert count_flops(mlp, (10,)) == 10 * 8 + 8 * 6 + 6 * 3
    assert mlp(torch.randn(2, 10)).shape == (2, 3)
    cnn = SmallPrunableCNN(2, 5, (4, 6), (14, 14), fc_hidden=[7])
    assert cnn.layer_names == ("conv0", "conv1", "fc0", "fc1")
    assert cnn.flat_positions == 4       # 14 → 12 → 6 → 4 → 2
    assert count_params(cnn) == (2 * 9 * 4 + 4) + (4 * 9 * 6 + 6) + (24 * 7 + 7) + (7 * 5 + 5)
    assert count_flops(cnn, (2, 14, 14)) == 12 * 12 * 4 * 2 * 9 + 4 * 4 * 6 * 4 * 9 + 24 * 7 + 7 * 5
    assert cnn(torch.randn(3, 2, 14, 14)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"act.*sigmoid, relu"):
        SigmoidMLP(3, [2], 2, act="tanh")
    with pytest.raises(ValueError, match="image_hw"):
        SmallPrunableCNN(1, 2, (4, 4, 4), (8, 8))


# --------------------------------------------------------------------------- physical pruning

def _perturb(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)   # biases well away from 0 (relu(b) > 0 cases)


def _random_masks(model, spec, frac: float, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, dim in spec:
        w = getattr(model, name).weight
        n = w.shape[0 if dim == "rows" else 1]
        masks[(name, dim)] = torch.rand(n, generator=gen) < frac
    return masks


def _check_prune(model, masks, x):
    pruned = prune_model(model, masks)
    ref = masked_model(model, masks)
    with torch.no_grad():
        diff = (pruned(x) - ref(x)).abs().max().item()
    assert diff < 1e-5
    assert count_params(pruned) < count_params(model)
    shape = tuple(x.shape[1:])
    assert count_flops(pruned, shape) < count_flops(model, shape)
    assert count_params(ref) == count_params(model)
    return pruned


@pytest.mark.parametrize("act", ["sigmoid", "relu"])
@pytest.mark.parametrize("seed", range(3))
def test_prune_mlp_matches_masked(act, seed):
    torch.manual_seed(seed)
    model = SigmoidMLP(12, [16, 10, 8], 4, act=act)
    _perturb(model, seed)
    x = torch.randn(32, 12)
    rows = [("fc0", "rows"), ("fc1", "rows"), ("fc2", "rows")]
    _check_prune(model, _random_masks(model, rows, 0.5, seed), x)
    # columns too (fc0 columns = input features), mixed with rows
    mixed = rows + [("fc0", "cols"), ("fc1", "cols"), ("fc3", "cols")]
    pruned = _check_prune(model, _random_masks(model, mixed, 0.5, seed + 10), x)
    # pruning a pruned model again
    _check_prune(pruned, _random_masks(pruned, [("fc1", "rows"), ("fc0", "cols")], 0.5, seed + 20), x)


@pytest.mark.parametrize("act,pool", [("relu", "max"), ("sigmoid", "avg"), ("sigmoid", "max")])
@pytest.mark.parametrize("seed", range(2))
def test_prune_cnn_matches_masked(act, pool, seed):
    torch.manual_seed(seed)
    model = SmallPrunableCNN(3, 5, (6, 8), (14, 14), fc_hidden=[10], act=act, pool=pool)
    _perturb(model, seed)
    x = torch.randn(8, 3, 14, 14)
    rows = [("conv0", "rows"), ("conv1", "rows"), ("fc0", "rows")]
    pruned = _check_prune(model, _random_masks(model, rows, 0.5, seed), x)
    assert pruned.fc0.in_features == pruned.conv1.out_channels * model.flat_positions
    mixed = rows + [("conv0", "cols"), ("conv1", "cols"), ("fc0", "cols"), ("fc1", "cols")]
    pruned = _check_prune(model, _random_masks(model, mixed, 0.5, seed + 10), x)
    _check_prune(pruned, _random_masks(pruned, [("conv1", "rows"), ("fc0", "cols")], 0.5, seed + 20), x)


def test_prune_cnn_without_fc_hidden_and_whole_layer_deleted():
    torch.manual_seed(0)
    model = SmallPrunableCNN(1, 3, (4,), (10, 10), act="sigmoid")
    _perturb(model, 0)
    x = torch.randn(4, 1, 10, 10)
    _check_prune(model, {"conv0": torch.tensor([True, False, True, False])}, x)
    everything = {"conv0": torch.ones(4, dtype=torch.bool), ("conv0", "cols"): torch.ones(1, dtype=torch.bool)}
    pruned = _check_prune(model, everything, x)
    assert pruned.conv0.out_channels == 1     # one dead channel keeps the module valid


def test_spec_pruning_exactness_and_param_count():
    """Spec test 10: groups whose norm is exactly 0 are deleted; outputs unchanged; a row of W^l removes
    N_{l−1} + 1 + N_{l+1} parameters."""
    torch.manual_seed(3)
    model = SigmoidMLP(9, [7, 6], 4)
    _perturb(model, 3)
    with torch.no_grad():
        model.fc0.weight[2].zero_()
        model.fc1.weight[[1, 4]] = 0.0
    spec = [("fc0", "rows"), ("fc1", "rows")]
    masks = threshold_masks(model, spec, 1e-12)
    assert masks[("fc0", "rows")].tolist() == [False, False, True, False, False, False, False]
    assert masks[("fc1", "rows")].nonzero().flatten().tolist() == [1, 4]
    pruned = prune_model(model, masks)
    x = torch.randn(20, 9)
    with torch.no_grad():
        assert (pruned(x) - model(x)).abs().max().item() < 1e-5
    expected = 1 * (9 + 1 + 6) + 2 * (7 + 1 + 4) - 2   # the fc0 row and the fc1 rows share 2 weights
    assert count_params(model) - count_params(pruned) == expected
    single = prune_model(model, {"fc0": torch.tensor([False, False, True, False, False, False, False])})
    assert count_params(model) - count_params(single) == 9 + 1 + 6


def test_prune_errors():
    model = SigmoidMLP(4, [3], 2)
    with pytest.raises(ValueError, match="output layer"):
        prune_model(model, {"fc1": torch.tensor([True, False])})
    with pytest.raises(ValueError, match=r"unknown layer 'fc9'.*fc0, fc1"):
        prune_model(model, {"fc9": torch.tensor([True])})
    with pytest.raises(ValueError, match="expected 3 entries"):
        prune_model(model, {"fc0": torch.tensor([True, False])})
    with pytest.raises(ValueError, match="boolean"):
        masked_model(model, {"fc0": torch.tensor([1, 0, 1])})
    with pytest.raises(ValueError, match=r"group dim.*rows, cols"):
        masked_model(model, {("fc0", "diag"): torch.tensor([True, False, True])})
