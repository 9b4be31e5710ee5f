"""Unit tests of trainers/shift_explainer (interpolation, selection, losses, grid generation, metrics, models)
against numpy/scipy computations and closed forms. No Ray.

Numbering "spec test N" follows the known-answer and property tests of the implementation spec's §8.3. (not shipped;
docs/methods/shift_explainer.md describes the method)
"""
from __future__ import annotations

import math
import re

import matplotlib.colors
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F

from trainers.shift_explainer import (Decoder, DomainDiscriminator, Encoder, Grid, JointDiscriminator,
                                      LossConditionedGenerator, StyleTransformer, bigan_d_loss, bigan_eg_loss,
                                      circular_distance, cycle_loss, generate_diagonal, generate_grid,
                                      grid_fidelity, hue, ink, interpolate, interpolate_joint, latent_invariance,
                                      latent_prior, per_sample_loss, recon_loss, rgb_hue, select_pair, shift_test,
                                      style_d_loss, style_g_loss, vae_loss)

D64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _threads(one_torch_thread):
    yield


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=D64)


# =========================================================================== interpolation (spec tests 1, 3, 4)

def test_spec1_interpolation_known_answer():
    Z, L = interpolate([2.7, 0.3], [1.1, 3.1], 0.1, 0.9, 3)
    assert Z.shape == (5, 2) and L.shape == (5,)
    assert Z.dtype == D64 and L.dtype == D64
    np.testing.assert_allclose(Z.numpy(), [[2.7, 0.3], [2.3, 1.0], [1.9, 1.7], [1.5, 2.4], [1.1, 3.1]],
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(L.numpy(), [0.1, 0.3, 0.5, 0.7, 0.9], rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_interpolation_random_vs_numpy_linspace(seed):
    rng = np.random.default_rng(seed)
    d, k = int(rng.integers(1, 9)), int(rng.integers(0, 12))
    z1, z2 = rng.normal(size=d) * 3, rng.normal(size=d) * 3
    l1, l2 = rng.exponential(), rng.exponential()
    t = np.linspace(0.0, 1.0, k + 2)
    z_ref = z1[None, :] + t[:, None] * (z2 - z1)[None, :]  # a different (but equivalent) formula
    l_ref = l1 + t * (l2 - l1)
    for fn in (interpolate, interpolate_joint):
        Z, L = fn(z1, z2, l1, l2, k)
        assert Z.shape == (k + 2, d) and L.shape == (k + 2,)
        np.testing.assert_allclose(Z.numpy(), z_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(L.numpy(), l_ref, rtol=0, atol=1e-12)
    # even spacing: all consecutive differences equal
    Z, L = interpolate(z1, z2, l1, l2, k)
    np.testing.assert_allclose(np.diff(Z.numpy(), axis=0), np.tile((z2 - z1) / (k + 1), (k + 1, 1)), atol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_spec3_joint_equals_separate(k):
    g = torch.Generator().manual_seed(k)
    z1, z2 = torch.randn(5, dtype=D64, generator=g), torch.randn(5, dtype=D64, generator=g)
    Zs, Ls = interpolate(z1, z2, 0.05, 2.5, k)
    Zj, Lj = interpolate_joint(z1, z2, 0.05, 2.5, k)
    assert Zj.shape == Zs.shape and Lj.shape == Ls.shape
    assert float((Zj - Zs).abs().max()) <= 1e-12 and float((Lj - Ls).abs().max()) <= 1e-12


def test_spec4_endpoints_exact_and_monotone():
    z1 = torch.tensor([0.1, -7.3, 1e-8, 3.3333333], dtype=torch.float32)
    z2 = torch.tensor([5.7, 2.2, -4.4, 0.7], dtype=torch.float32)
    for fn in (interpolate, interpolate_joint):
        Z, L = fn(z1, z2, torch.tensor(0.123), torch.tensor([1.987]), 5)
        assert Z.dtype == torch.float32 and L.dtype == torch.float32  # float32 stays float32
        assert torch.equal(Z[0], z1) and torch.equal(Z[-1], z2)
        assert L[0].item() == torch.tensor(0.123).item() and L[-1].item() == torch.tensor(1.987).item()
        assert bool((L[1:] > L[:-1]).all())  # strictly increasing for L1 < L2
    # float64 endpoints bitwise, and decreasing when L1 > L2
    a, b = np.array([0.1, 0.7]), np.array([0.3, -0.2])
    Z, L = interpolate(a, b, 2.0, 0.2, 4)
    assert torch.equal(Z[0], t64(a)) and torch.equal(Z[-1], t64(b))
    assert L[0].item() == 2.0 and L[-1].item() == 0.2
    assert bool((L[1:] < L[:-1]).all())
    Z, L = interpolate(a, b, 0.3, 0.9, 0)  # K = 0: only the endpoints
    assert Z.shape == (2, 2) and torch.equal(Z, t64(np.stack([a, b])))


def test_interpolation_differentiable():
    z1 = torch.tensor([1.0, 2.0], requires_grad=True)
    Z, _ = interpolate(z1, torch.tensor([3.0, 5.0]), 0.0, 1.0, 3)
    Z.sum().backward()
    # d/dz1 Σ_k (1 − t_k) = Σ_k (1 − k/4) = 2.5 per component
    np.testing.assert_allclose(z1.grad.numpy(), [2.5, 2.5], atol=1e-6)


def test_interpolation_bad_arguments():
    for fn in (interpolate, interpolate_joint):
        for bad in (-1, True, 1.5, "3", None):
            with pytest.raises(ValueError, match=r"k: .*allowed: an integer >= 0"):
                fn([0.0], [1.0], 0.0, 1.0, bad)
        with pytest.raises(ValueError, match=r"^z1: must be a 1-D vector"):
            fn([[0.0, 1.0]], [0.0, 1.0], 0.0, 1.0, 3)
        with pytest.raises(ValueError, match=r"^z2: must be a 1-D vector"):
            fn([0.0, 1.0], 5.0, 0.0, 1.0, 3)
        with pytest.raises(ValueError, match=r"^z1, z2: need the same dimension"):
            fn([0.0, 1.0], [0.0, 1.0, 2.0], 0.0, 1.0, 3)
        with pytest.raises(ValueError, match=r"^z2: all entries must be finite"):
            fn([0.0, 1.0], [0.0, math.nan], 0.0, 1.0, 3)
        with pytest.raises(ValueError, match=r"^l1: must be finite"):
            fn([0.0], [1.0], math.inf, 1.0, 3)
        with pytest.raises(ValueError, match=r"^l2: must be a scalar"):
            fn([0.0], [1.0], 0.0, [1.0, 2.0], 3)


# =========================================================================== grid / diagonal (spec tests 2, 3)

class StubDecoder:
    """Mock G: an image whose channels are filled with [z0, z1, l] (spec §8.3 test 2)."""

    def __init__(self, hw=(2, 3)):
        self.calls, self.rows, self.hw = 0, [], hw

    def __call__(self, z, l):
        self.calls += 1
        self.rows.append(z.shape[0])
        vals = torch.stack([z[:, 0], z[:, 1], l], dim=1)  # (n, 3)
        return vals[:, :, None, None].expand(-1, -1, *self.hw).clone()


def _real_pair(hw=(2, 3)):
    x1 = torch.full((3, *hw), -1.0, dtype=D64)
    x1[0, 0, 0] = 42.0
    x2 = torch.full((3, *hw), -2.0, dtype=D64)
    x2[2, -1, -1] = 17.0
    return x1, x2


def test_spec2_grid_known_answer():
    Z, L = interpolate([2.7, 0.3], [1.1, 3.1], 0.1, 0.9, 3)
    x1, x2 = _real_pair()
    dec = StubDecoder()
    g = generate_grid(dec, x1, x2, Z, L)
    assert isinstance(g, Grid) and g.layout == "grid"
    assert dec.calls == 1 and dec.rows == [23]  # one batched call, 23 generated cells
    assert g.images.shape == (5, 5, 3, 2, 3) and g.is_real.shape == (5, 5)
    assert g.is_real.sum() == 2 and bool(g.is_real[0, 0]) and bool(g.is_real[4, 4]) and g.n_generated == 23
    assert torch.equal(g.images[0, 0], x1) and torch.equal(g.images[4, 4], x2)
    assert torch.equal(g.z, Z) and torch.equal(g.l, L)
    for i in range(5):
        for j in range(5):
            if (i, j) in ((0, 0), (4, 4)):
                continue
            cell = g.images[i, j]
            # cell [i][j] = G(Z_j, L_i): feature from the column, loss from the row (loss is vertical)
            np.testing.assert_allclose(cell[0].numpy(), float(Z[j, 0]), atol=0)
            np.testing.assert_allclose(cell[1].numpy(), float(Z[j, 1]), atol=0)
            np.testing.assert_allclose(cell[2].numpy(), float(L[i]), atol=0)
    # the example cell of the text: (Z1 = 2.3, Z2 = 1.0), L = 0.1 is in row 0, column 1
    assert g.images[0, 1, :, 0, 0].tolist() == pytest.approx([2.3, 1.0, 0.1], abs=1e-12)
    # loss increases downward, features change left to right
    assert float(g.images[3, 2, 2, 0, 0]) > float(g.images[1, 2, 2, 0, 0])
    assert float(g.images[2, 0, 0, 0, 0]) == pytest.approx(2.7) and float(g.images[2, 3, 0, 0, 0]) == pytest.approx(1.5)


def test_grid_different_axis_counts():
    Z, _ = interpolate([0.0, 1.0], [4.0, -1.0], 0.0, 1.0, 3)   # 5 columns
    _, L = interpolate([0.0], [1.0], 0.2, 0.8, 1)              # 3 rows
    x1, x2 = _real_pair()
    dec = StubDecoder()
    g = generate_grid(dec, x1, x2, Z, L)
    assert g.images.shape == (3, 5, 3, 2, 3) and dec.rows == [13]
    assert torch.equal(g.images[0, 0], x1) and torch.equal(g.images[2, 4], x2)
    assert g.is_real.nonzero().tolist() == [[0, 0], [2, 4]]
    assert float(g.images[2, 0, 2, 0, 0]) == pytest.approx(0.8) and float(g.images[0, 4, 0, 0, 0]) == 4.0
    assert float(g.images[1, 3, 1, 0, 0]) == pytest.approx(float(Z[3, 1]))


def test_spec3_diagonal_known_answer():
    Z, L = interpolate_joint([2.7, 0.3], [1.1, 3.1], 0.1, 0.9, 3)
    x1, x2 = _real_pair()
    dec = StubDecoder()
    g = generate_diagonal(dec, x1, x2, Z, L)
    assert g.layout == "diagonal" and g.images.shape == (1, 5, 3, 2, 3) and g.is_real.shape == (1, 5)
    assert dec.rows == [3]
    assert g.is_real[0].tolist() == [True, False, False, False, True]
    assert torch.equal(g.images[0, 0], x1) and torch.equal(g.images[0, 4], x2)
    for k in (1, 2, 3):
        assert g.images[0, k, :, 1, 2].tolist() == pytest.approx([float(Z[k, 0]), float(Z[k, 1]), float(L[k])],
                                                                 abs=0)
    # K = 0: just the two real items, no decoder call
    dec0 = StubDecoder()
    g0 = generate_diagonal(dec0, x1, x2, Z[[0, -1]], L[[0, -1]])
    assert dec0.calls == 0 and g0.images.shape == (1, 2, 3, 2, 3) and torch.equal(g0.images[0, 1], x2)


def test_generation_detaches_inputs():
    """x(1) may come out of the style transformer with a graph (claim 6); the grid holds plain values."""
    Z, L = interpolate([0.0, 1.0], [1.0, 0.0], 0.0, 1.0, 1)
    x1, x2 = _real_pair()
    x1 = x1.clone().requires_grad_(True)
    for gen in (generate_grid, generate_diagonal):
        g = gen(StubDecoder(), x1 * 1.0, x2, Z, L)
        assert not g.images.requires_grad
        assert torch.equal(g.images[0, 0], x1.detach()) and g.images.numpy().shape[:2] == g.is_real.shape


def test_generation_bad_arguments():
    Z, L = interpolate([0.0, 1.0], [1.0, 0.0], 0.0, 1.0, 2)
    x1, x2 = _real_pair()
    with pytest.raises(ValueError, match=r"^Z, L: the diagonal layout needs as many"):
        generate_diagonal(StubDecoder(), x1, x2, Z, L[:3])
    with pytest.raises(ValueError, match=r"^x1, x2: need two single images"):
        generate_grid(StubDecoder(), x1[None], x2[None], Z, L)
    with pytest.raises(ValueError, match=r"^Z: need shape"):
        generate_grid(StubDecoder(), x1, x2, Z[:1], L)
    with pytest.raises(ValueError, match=r"^L: need shape"):
        generate_grid(StubDecoder(), x1, x2, Z, L[:, None])
    with pytest.raises(ValueError, match=r"^decode: must return a tensor of shape \(14, 3, 2, 3\)"):
        generate_grid(StubDecoder(hw=(4, 4)), x1, x2, Z, L)


# =========================================================================== per-sample loss (spec test 6)

def test_per_sample_loss_vs_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)) * 3
    y = rng.integers(0, 4, size=7)
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    ce_ref = -logp[np.arange(7), y]
    p_ref = np.exp(logp[np.arange(7), y])
    ce = per_sample_loss(t64(logits), torch.as_tensor(y))
    omp = per_sample_loss(t64(logits), torch.as_tensor(y), kind="one_minus_p")
    assert ce.shape == (7,) and ce.dtype == D64
    np.testing.assert_allclose(ce.numpy(), ce_ref, rtol=1e-12)
    np.testing.assert_allclose(omp.numpy(), 1.0 - p_ref, rtol=1e-10, atol=1e-14)
    assert bool((omp >= 0).all() and (omp <= 1).all())
    f32 = per_sample_loss(torch.as_tensor(logits, dtype=torch.float32), y)
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), ce_ref, rtol=1e-5)
    # 1 − p stays accurate (not 0) when p is within float eps of 1
    tiny = per_sample_loss(t64([[40.0, 0.0]]), [0], kind="one_minus_p")
    assert float(tiny[0]) == pytest.approx(math.exp(-40.0), rel=1e-9)


def test_spec6_loss_semantics_logistic_model():
    w, b = np.array([2.0, -1.0]), 0.5
    x = np.array([[1.0, 0.0], [-1.0, 1.0]])      # w·x + b = 2.5 (class 1 predicted), -2.5 (class 0 predicted)
    y = np.array([1, 1])                          # so sample 0 is correct, sample 1 is misclassified
    s = x @ w + b
    logits = t64(np.stack([np.zeros(2), s], axis=1))  # 2-class softmax of [0, s] == logistic σ(s)
    for kind in ("ce", "one_minus_p"):
        L = per_sample_loss(logits, y, kind=kind)
        assert float(L[0]) < float(L[1])
    ce = per_sample_loss(logits, y)
    np.testing.assert_allclose(ce.numpy(), np.log1p(np.exp(-s)), rtol=1e-12)  # −log σ(s)
    np.testing.assert_allclose(per_sample_loss(logits, y, "one_minus_p").numpy(), 1 - scipy.special.expit(s),
                               rtol=1e-12)


def test_per_sample_loss_bad_arguments():
    lg = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"^y: labels must lie in \[0, 3\]"):
        per_sample_loss(lg, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"^y: labels must lie in \[0, 3\]"):
        per_sample_loss(lg, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"^y: labels must be integers"):
        per_sample_loss(lg, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"^y: need shape \(3,\)"):
        per_sample_loss(lg, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^logits: need shape \(N, C\)"):
        per_sample_loss(torch.zeros(4), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"^kind: unknown value 'nll'; allowed values: ce, one_minus_p"):
        per_sample_loss(lg, torch.tensor([0, 1, 2]), kind="nll")


# =========================================================================== selection (spec test 5)

L1 = np.array([0.30, 0.02, 0.50, 0.01, 0.90])
Y1 = np.array([0, 1, 1, 2, 0])
L2 = np.array([1.20, 3.00, 0.40, 2.50, 0.05])
Y2 = np.array([1, 5, 0, 2, 1])


def test_spec5_extreme_mode():
    assert select_pair(L1, L2, Y1, Y2, same_class=False) == (3, 1)  # argmin L1, argmax L2
    assert select_pair(L1, L2, None, None, same_class=False) == (3, 1)
    # same_class: the argmax (index 1) has class 5, absent in pool 1 → next largest (index 3, class 2);
    # x1 = argmin over the pool-1 rows of class 2 → index 3
    assert select_pair(L1, L2, Y1, Y2) == (3, 3)
    # the class restricts x1: make pool-2's top class 0 → x1 = argmin over class-0 rows {0, 4} = 0, not 3
    y2 = np.array([1, 0, 0, 2, 1])
    assert select_pair(L1, L2, Y1, y2) == (0, 1)
    # ties → lowest index, as numpy
    assert select_pair(np.array([0.1, 0.1]), np.array([2.0, 2.0]), None, None, same_class=False) == (0, 0)


def test_extreme_same_class_no_shared_class():
    with pytest.raises(ValueError, match=r"^same_class: the two pools share no class \(domain-1 classes \[0, 1\], "
                                         r"domain-2 classes \[7, 8\]\)"):
        select_pair([0.1, 0.2], [1.0, 2.0], [0, 1], [7, 8])


def test_spec5_threshold_mode_candidates_and_coverage():
    tau1, tau2 = 0.30, 1.0
    c1, c2 = set(np.flatnonzero(L1 <= tau1)), set(np.flatnonzero(L2 >= tau2))
    assert c1 == {0, 1, 3} and c2 == {0, 1, 3}
    picks = {select_pair(L1, L2, Y1, Y2, mode="threshold", tau1=tau1, tau2=tau2, same_class=False, seed=s)
             for s in range(200)}
    assert {p[0] for p in picks} == c1 and {p[1] for p in picks} == c2  # uniform: every candidate is hit
    # determinism given the seed
    a = select_pair(L1, L2, Y1, Y2, mode="threshold", tau1=tau1, tau2=tau2, seed=7)
    assert a == select_pair(L1, L2, Y1, Y2, mode="threshold", tau1=tau1, tau2=tau2, seed=7)
    # same_class: pool-2 candidate classes {1, 5, 2}; pool-1 candidate classes {0, 1, 2} → class 5 excluded
    picks = {select_pair(L1, L2, Y1, Y2, mode="threshold", tau1=tau1, tau2=tau2, seed=s) for s in range(200)}
    assert picks == {(1, 0), (3, 3)}
    for i1, i2 in picks:
        assert Y1[i1] == Y2[i2] and L1[i1] <= tau1 and L2[i2] >= tau2


def test_threshold_strict_vs_non_strict_at_a_tie():
    l1, l2 = np.array([0.1, 0.2, 0.5]), np.array([0.9, 0.7])
    nonstrict = {select_pair(l1, l2, None, None, mode="threshold", tau1=0.2, tau2=0.7, same_class=False,
                             seed=s)[0] for s in range(100)}
    strict = {select_pair(l1, l2, None, None, mode="threshold", tau1=0.2, tau2=0.7, strict=True,
                          same_class=False, seed=s)[0] for s in range(100)}
    assert nonstrict == {0, 1} and strict == {0}
    # tau2 is inclusive (≥): at the tie 0.7, index 1 is a candidate
    i2s = {select_pair(l1, l2, None, None, mode="threshold", tau1=0.5, tau2=0.7, same_class=False, seed=s)[1]
           for s in range(100)}
    assert i2s == {0, 1}
    with pytest.raises(ValueError, match=r"^method.tau1: 0.1 selects no domain-1 sample .*strict.*allowed: "
                                         r"a value > 0.1$"):
        select_pair(l1, l2, None, None, mode="threshold", tau1=0.1, tau2=0.7, strict=True, same_class=False)


def test_threshold_error_messages_name_the_field_and_range():
    l1, l2 = np.array([0.0004, 1.0, 3.2]), np.array([0.5, 2.0])
    with pytest.raises(ValueError) as e:
        select_pair(l1, l2, None, None, mode="threshold", tau1=0.0001, tau2=1.0, same_class=False)
    assert str(e.value) == ("method.tau1: 0.0001 selects no domain-1 sample (domain-1 losses span "
                            "[0.0004, 3.2]); allowed: a value >= 0.0004")
    with pytest.raises(ValueError) as e:
        select_pair(l1, l2, None, None, mode="threshold", tau1=1.0, tau2=2.5, same_class=False)
    assert str(e.value) == ("method.tau2: 2.5 selects no domain-2 sample (domain-2 losses span [0.5, 2]); "
                            "allowed: a value <= 2")
    # the quoted bound is rounded in the safe direction, and it really selects something
    l1b, l2b = np.array([0.0012345, 1.0]), np.array([0.5, 2.98765])
    with pytest.raises(ValueError, match=re.escape("span [0.00123, 1]); allowed: a value >= 0.00124")):
        select_pair(l1b, l2b, None, None, mode="threshold", tau1=0.001, tau2=0.6, same_class=False)
    with pytest.raises(ValueError, match=re.escape("span [0.5, 2.99]); allowed: a value <= 2.98")):
        select_pair(l1b, l2b, None, None, mode="threshold", tau1=1.0, tau2=3.0, same_class=False)
    assert select_pair(l1b, l2b, None, None, mode="threshold", tau1=0.00124, tau2=2.98, same_class=False) == (0, 1)
    # same_class empties the candidate set: say so
    with pytest.raises(ValueError, match=r"^method.tau1, method.tau2: with same_class=True the candidates share no "
                                         r"class \(method.tau1 = 1 selects domain-1 classes \[0, 1\], method.tau2 = "
                                         r"1 selects domain-2 classes \[3\]\)"):
        select_pair(l1, l2, [0, 1, 2], [2, 3], mode="threshold", tau1=1.0, tau2=1.0)
    for name, kw in (("method.tau1", {"tau2": 1.0}), ("method.tau2", {"tau1": 1.0})):
        with pytest.raises(ValueError, match=rf"^{re.escape(name)}: required in threshold selection mode"):
            select_pair(l1, l2, None, None, mode="threshold", same_class=False, **kw)
    with pytest.raises(ValueError, match=r"^method.tau1: must be a finite number"):
        select_pair(l1, l2, None, None, mode="threshold", tau1=math.nan, tau2=1.0, same_class=False)


def test_selection_bad_arguments():
    with pytest.raises(ValueError, match=r"^loss1: the domain-1 pool is empty"):
        select_pair([], [1.0], None, None, same_class=False)
    with pytest.raises(ValueError, match=r"^loss2: the domain-2 pool is empty"):
        select_pair([1.0], np.array([]), None, None, same_class=False)
    with pytest.raises(ValueError, match=r"^loss1: all losses must be finite"):
        select_pair([1.0, math.nan], [1.0], None, None, same_class=False)
    with pytest.raises(ValueError, match=r"^y1: labels are required when same_class=True"):
        select_pair([1.0], [1.0], None, [0])
    with pytest.raises(ValueError, match=r"^y2: need shape \(2,\)"):
        select_pair([1.0], [1.0, 2.0], [0], [0])
    with pytest.raises(ValueError, match=r"^mode: unknown value 'random'; allowed values: extreme, threshold"):
        select_pair([1.0], [1.0], [0], [0], mode="random")


# =========================================================================== generative-model losses

def test_recon_losses_vs_hand_computation():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(3, 2, 4, 4))
    xh = rng.uniform(0.01, 0.99, size=(3, 2, 4, 4))
    assert float(recon_loss(t64(x), t64(xh))) == pytest.approx(((x - xh) ** 2).mean(), rel=1e-12)
    assert float(recon_loss(t64(x), t64(xh), "l1")) == pytest.approx(np.abs(x - xh).mean(), rel=1e-12)
    bce = -(x * np.log(xh) + (1 - x) * np.log(1 - xh)).mean()
    assert float(recon_loss(t64(x), t64(xh), "bce")) == pytest.approx(bce, rel=1e-12)
    # clamp: x̂ = 0 or 1 stays finite (log(1e-6) per wrong element)
    b = recon_loss(t64([[1.0, 0.0]]), t64([[0.0, 1.0]]), "bce")
    assert float(b) == pytest.approx(-math.log(1e-6), rel=1e-9)
    assert math.isfinite(float(recon_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), "bce")))
    with pytest.raises(ValueError, match=r"^x: kind='bce' needs targets in \[0, 1\]"):
        recon_loss(torch.tensor([1.5]), torch.tensor([0.5]), "bce")
    with pytest.raises(ValueError, match=r"^x, x_hat: need the same shape"):
        recon_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"^kind: unknown value 'l2'; allowed values: mse, l1, bce"):
        recon_loss(torch.zeros(2), torch.zeros(2), "l2")


def test_vae_loss_kl_vs_numpy():
    rng = np.random.default_rng(2)
    x, xh = rng.uniform(size=(4, 3, 4, 4)), rng.uniform(0.05, 0.95, size=(4, 3, 4, 4))
    mu, lv = rng.normal(size=(4, 5)), rng.normal(size=(4, 5)) * 0.5
    # KL(N(μ, σ²) || N(0, 1)) per dim = log(1/σ) + (σ² + μ²)/2 − 1/2
    sig = np.exp(0.5 * lv)
    kl_ref = (np.log(1.0 / sig) + (sig ** 2 + mu ** 2) / 2 - 0.5).sum(axis=1).mean()
    for kind, beta in (("mse", 1.0), ("bce", 0.25), ("l1", 0.0)):
        total, recon, kl = vae_loss(t64(x), t64(xh), t64(mu), t64(lv), beta=beta, kind=kind)
        assert float(recon) == pytest.approx(float(recon_loss(t64(x), t64(xh), kind)), rel=1e-14)
        assert float(kl) == pytest.approx(kl_ref, rel=1e-12)
        assert float(total) == pytest.approx(float(recon) + beta * kl_ref / (3 * 4 * 4), rel=1e-12)
    _, _, kl0 = vae_loss(t64(x), t64(xh), torch.zeros(4, 5, dtype=D64), torch.zeros(4, 5, dtype=D64))
    assert float(kl0) == 0.0
    with pytest.raises(ValueError, match=r"^beta: the KL weight must be a finite number >= 0"):
        vae_loss(t64(x), t64(xh), t64(mu), t64(lv), beta=-1.0)
    with pytest.raises(ValueError, match=r"^mu, logvar: need equal shapes"):
        vae_loss(t64(x), t64(xh), t64(mu), t64(lv[:, :3]))


def test_bigan_losses_vs_bce_with_logits():
    g = torch.Generator().manual_seed(3)
    r, f = torch.randn(6, dtype=D64, generator=g) * 2, torch.randn(6, dtype=D64, generator=g) * 2
    one, zero = torch.ones(6, dtype=D64), torch.zeros(6, dtype=D64)
    ref_d = F.binary_cross_entropy_with_logits(r, one) + F.binary_cross_entropy_with_logits(f, zero)
    ref_eg = F.binary_cross_entropy_with_logits(r, zero) + F.binary_cross_entropy_with_logits(f, one)
    assert float(bigan_d_loss(r, f)) == pytest.approx(float(ref_d), rel=1e-12)
    assert float(bigan_eg_loss(r, f)) == pytest.approx(float(ref_eg), rel=1e-12)
    # hand value: logits 0 → log 2 per term; stable at huge logits
    assert float(bigan_d_loss(torch.zeros(3), torch.zeros(3))) == pytest.approx(2 * math.log(2), rel=1e-6)
    assert float(bigan_d_loss(torch.tensor([100.0]), torch.tensor([-100.0]))) == pytest.approx(0.0, abs=1e-30)
    assert float(bigan_eg_loss(torch.tensor([100.0]), torch.tensor([-100.0]))) == pytest.approx(200.0, rel=1e-6)
    with pytest.raises(ValueError, match=r"^d_real: empty logits"):
        bigan_d_loss(torch.zeros(0), torch.zeros(2))


def test_latent_prior():
    z = latent_prior(500, 4, generator=torch.Generator().manual_seed(0))
    assert z.shape == (500, 4) and z.dtype == torch.float32
    assert torch.equal(z, latent_prior(500, 4, generator=torch.Generator().manual_seed(0)))
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1.0) < 0.1
    with pytest.raises(ValueError, match=r"^d: the latent dimension"):
        latent_prior(3, 0)
    with pytest.raises(ValueError, match=r"^n: the number of samples"):
        latent_prior(-1, 2)


def test_cycle_and_style_losses_vs_hand():
    a = t64([[0.0, 0.5], [1.0, 0.25]])
    b = t64([[0.5, 0.5], [0.0, 0.75]])
    assert float(cycle_loss(a, b)) == pytest.approx((0.5 + 0 + 1 + 0.5) / 4, rel=1e-14)
    r, f = t64([1.0, -2.0]), t64([0.5, 3.0])
    sig = scipy.special.expit
    ref_d = -np.mean(np.log(sig([1.0, -2.0]))) - np.mean(np.log(1 - sig([0.5, 3.0])))
    assert float(style_d_loss(r, f)) == pytest.approx(ref_d, rel=1e-12)
    assert float(style_g_loss(f)) == pytest.approx(-np.mean(np.log(sig([0.5, 3.0]))), rel=1e-12)
    with pytest.raises(ValueError, match=r"^x, x_hat: need the same shape"):
        cycle_loss(torch.zeros(2, 2), torch.zeros(2, 3))


# =========================================================================== image proxies

def _square(rgb, size=8, lo=2, hi=6):
    img = torch.zeros(3, size, size, dtype=D64)
    img[:, lo:hi, lo:hi] = t64(rgb)[:, None, None]
    return img


def test_ink_counts():
    imgs = torch.stack([_square([1.0, 0, 0]), _square([0, 0.6, 0], lo=0, hi=8), torch.zeros(3, 8, 8, dtype=D64),
                        _square([0.4, 0.4, 0.4])])
    np.testing.assert_allclose(ink(imgs).numpy(), [16 / 64, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(ink(imgs, threshold=0.3).numpy(), [16 / 64, 1.0, 0.0, 16 / 64])
    gray = torch.zeros(2, 1, 4, 4)
    gray[0, 0, 0, :3] = 0.9
    np.testing.assert_allclose(ink(gray).numpy(), [3 / 16, 0.0])
    with pytest.raises(ValueError, match=r"^images: need shape \(N, C, H, W\) with C = 1 or 3"):
        ink(torch.zeros(2, 2, 4, 4))


def test_hue_known_colours():
    imgs = torch.stack([_square([1.0, 0, 0]), _square([0, 1.0, 0]), _square([0, 0, 0.8]),
                        _square([1.0, 1.0, 0]), torch.zeros(3, 8, 8, dtype=D64), _square([0.9, 0.9, 0.9])])
    h = hue(imgs)
    np.testing.assert_allclose(h[:4].numpy(), [0.0, 1 / 3, 2 / 3, 1 / 6], atol=1e-12)
    assert math.isnan(float(h[4])) and math.isnan(float(h[5]))  # no ink; grey ink has no hue
    # circular mean across the wrap: half the ink at hue 0.95, half at 0.05 → 0 (not the arithmetic 0.5)
    c_a = matplotlib.colors.hsv_to_rgb([0.95, 1.0, 1.0])
    c_b = matplotlib.colors.hsv_to_rgb([0.05, 1.0, 1.0])
    img = torch.zeros(3, 4, 4, dtype=D64)
    img[:, :2] = t64(c_a)[:, None, None]
    img[:, 2:] = t64(c_b)[:, None, None]
    hv = float(hue(img[None])[0])
    assert min(hv, 1 - hv) < 1e-9
    # the dark background (below the ink threshold) does not count, whatever its hue
    img2 = _square([0, 1.0, 0])
    img2[0, :2, :] = 0.3  # dim red pixels, max 0.3 < 0.5
    assert float(hue(img2[None])[0]) == pytest.approx(1 / 3, abs=1e-12)
    np.testing.assert_array_equal(hue(torch.rand(3, 1, 4, 4)).numpy(), np.zeros(3))  # grayscale → zeros


def test_rgb_hue_matches_matplotlib():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(2, 3, 5, 6))
    x[0, :, 0, 0] = [0.5, 0.5, 0.2]  # ties at the max
    x[0, :, 0, 1] = [0.3, 0.7, 0.7]
    x[0, :, 0, 2] = [0.6, 0.1, 0.6]
    x[1, :, 1, 1] = [0.4, 0.4, 0.4]  # grey → 0
    h, c = rgb_hue(t64(x))
    ref = matplotlib.colors.rgb_to_hsv(np.moveaxis(x, 1, -1))[..., 0]
    np.testing.assert_allclose(h.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), x.max(axis=1) - x.min(axis=1), atol=1e-15)


# =========================================================================== fidelity (spec tests 9-11)

def test_grid_fidelity_known_values():
    gl = np.array([0.1, 0.3, 0.5, 0.7])
    rl = np.array([[0.2, 0.1, 5.0],
                   [0.4, 0.3, 5.0],
                   [0.3, 0.6, 5.0],
                   [0.9, 0.8, 5.0]])        # column 2 constant → skipped
    ik = np.array([[0.10, 0.12, 0.11],
                   [0.20, 0.22, 0.18],
                   [0.30, 0.28, 0.33],
                   [0.40, 0.41, 0.39]])
    hu = np.array([[0.95, 0.50, 0.05],
                   [0.95, 0.50, 0.05],
                   [0.90, 0.50, 0.10],
                   [0.95, np.nan, 0.70]])
    m = grid_fidelity(rl, gl, ik, hu)
    rho0 = scipy.stats.spearmanr(gl, rl[:, 0]).statistic
    rho1 = scipy.stats.spearmanr(gl, rl[:, 1]).statistic
    assert rho0 == pytest.approx(0.8) and rho1 == pytest.approx(1.0)
    assert m["loss_axis_spearman"] == pytest.approx((rho0 + rho1) / 2, rel=1e-12)
    assert m["feature_axis_loss_spread"] == pytest.approx(np.mean([np.std(r) for r in rl]), rel=1e-12)
    assert m["loss_axis_loss_spread"] == pytest.approx(np.mean([np.std(rl[:, j]) for j in range(3)]), rel=1e-12)
    rho_ink = np.mean([scipy.stats.spearmanr(gl, ik[:, j]).statistic for j in range(3)])
    assert m["thickness_loss_axis_spearman"] == pytest.approx(rho_ink, rel=1e-12) and rho_ink == pytest.approx(1.0)
    assert m["thickness_change_loss_axis"] == pytest.approx(np.mean([0.30, 0.29, 0.28]), rel=1e-12)
    assert m["thickness_change_feature_axis"] == pytest.approx(np.mean([0.01, -0.02, 0.03, -0.01]), rel=1e-12)
    # circular: 0.95 vs 0.05 is 0.1 apart, not 0.9; rows: 0.1, 0.1, 0.2, |0.70 − 0.95| = 0.25
    assert m["hue_change_feature_axis"] == pytest.approx(np.mean([0.1, 0.1, 0.2, 0.25]), rel=1e-12)
    # columns: 0.0, NaN (skipped), 0.35
    assert m["hue_change_loss_axis"] == pytest.approx(0.35 / 2, rel=1e-12)
    assert set(m) == {"loss_axis_spearman", "feature_axis_loss_spread", "loss_axis_loss_spread",
                      "thickness_loss_axis_spearman", "thickness_change_loss_axis", "thickness_change_feature_axis",
                      "hue_change_feature_axis", "hue_change_loss_axis"}


def test_grid_fidelity_undefined_and_errors():
    gl = np.array([0.1, 0.5, 0.9])
    flat = np.ones((3, 2))
    m = grid_fidelity(flat, gl, flat, np.full((3, 2), np.nan))
    assert math.isnan(m["loss_axis_spearman"]) and math.isnan(m["thickness_loss_axis_spearman"])
    assert math.isnan(m["hue_change_loss_axis"]) and m["feature_axis_loss_spread"] == 0.0
    assert circular_distance(0.98, 0.01) == pytest.approx(0.03) and circular_distance(0.0, 0.5) == 0.5
    with pytest.raises(ValueError, match=r"^grid_l: need shape \(3,\)"):
        grid_fidelity(flat, gl[:2], flat, flat)
    with pytest.raises(ValueError, match=r"^ink_vals: need shape \(3, 2\)"):
        grid_fidelity(flat, gl, np.ones((2, 3)), flat)
    with pytest.raises(ValueError, match=r"^realised_loss: need an \(R, Cc\) array"):
        grid_fidelity(np.ones(3), gl, flat, flat)


def test_spec10_latent_invariance_formula():
    d = 3

    def decode(z, l):  # "image" (n, 1, 1, d + 1) holding [z, l]
        return torch.cat([z, l[:, None]], dim=1)[:, None, None, :]

    def make_encode(alpha):
        return lambda x: x[:, 0, 0, :d] + alpha * x[:, 0, 0, d:]  # leaks alpha·L into every latent dim

    z = torch.randn(5, d, dtype=D64)
    z1, z2 = t64([0.0, 0.0, 0.0]), t64([3.0, 4.0, 0.0])  # ‖z1 − z2‖ = 5
    for alpha in (0.0, 0.5, 2.0):
        v = latent_invariance(make_encode(alpha), decode, z, 0.1, 0.9, z1, z2)
        assert v == pytest.approx(abs(alpha) * 0.8 * math.sqrt(d) / 5.0, rel=1e-12, abs=1e-15)
    # per-row losses: mean over rows of |α (la_n − lb_n)| √d / 5
    la, lb = t64([0.0, 1.0, 0.0, 2.0, 0.5]), t64([1.0, 1.0, 0.0, 0.0, 0.0])
    v = latent_invariance(make_encode(1.0), decode, z, la, lb, z1, z2)
    assert v == pytest.approx(np.mean([1, 0, 0, 2, 0.5]) * math.sqrt(d) / 5.0, rel=1e-12)
    with pytest.raises(ValueError, match=r"^z1, z2: must differ"):
        latent_invariance(make_encode(1.0), decode, z, 0.1, 0.9, z1, z1)
    with pytest.raises(ValueError, match=r"^l_a: need a scalar or shape \(5,\)"):
        latent_invariance(make_encode(1.0), decode, z, la[:2], 0.9, z1, z2)


# =========================================================================== shift test

def test_shift_test_vs_scipy_and_power():
    rng = np.random.default_rng(5)
    p1 = rng.dirichlet([2.0, 2.0, 2.0], size=300)
    p_same = rng.dirichlet([2.0, 2.0, 2.0], size=300)
    p_shift = rng.dirichlet([6.0, 1.0, 1.0], size=300)
    out = shift_test(p1, p_shift)
    ref = [scipy.stats.ks_2samp(p1[:, c], p_shift[:, c]) for c in range(3)]
    assert out["pvalue"] == pytest.approx(min(1.0, 3 * min(r.pvalue for r in ref)), rel=1e-12)
    assert out["pvalue_min"] == pytest.approx(min(r.pvalue for r in ref), rel=1e-12)
    assert out["ks_stat_max"] == pytest.approx(max(r.statistic for r in ref), rel=1e-12)
    conf = scipy.stats.ks_2samp(p1.max(axis=1), p_shift.max(axis=1))
    assert out["ks_confidence_pvalue"] == pytest.approx(conf.pvalue, rel=1e-12)
    assert out["ks_confidence_stat"] == pytest.approx(conf.statistic, rel=1e-12)
    assert out["pvalue"] < 1e-6
    same = shift_test(torch.as_tensor(p1), p_same)
    assert same["pvalue"] > 0.05 and same["ks_stat_max"] < 0.15
    assert shift_test(p1, p1)["pvalue"] == 1.0  # Bonferroni is capped at 1
    with pytest.raises(ValueError, match=r"^p1, p2: need the same number of classes"):
        shift_test(p1, p1[:, :2])
    with pytest.raises(ValueError, match=r"^p2: need softmax probabilities of shape \(N, C\)"):
        shift_test(p1, p1[:, 0])


# =========================================================================== models (spec tests 8, 12, 13)

SHAPE = (3, 16, 16)


def test_model_shapes_and_ranges():
    torch.manual_seed(0)
    x = torch.rand(4, *SHAPE)
    enc = Encoder(SHAPE, 6)
    assert enc(x).shape == (4, 6)
    mu, lv = Encoder(SHAPE, 6, variational=True)(x)
    assert mu.shape == lv.shape == (4, 6)
    dec = Decoder(SHAPE, 6)
    z = torch.randn(4, 6)
    out = dec(z, torch.rand(4))
    assert out.shape == (4, *SHAPE) and bool((out > 0).all() and (out < 1).all())
    with torch.no_grad():
        assert torch.equal(dec(z, torch.full((4,), 0.3)), dec(z, torch.full((4, 1), 0.3)))
        # the condition matters (it is injected twice)
        assert float((dec(z, torch.zeros(4)) - dec(z, torch.full((4,), 3.0))).abs().max()) > 1e-3
    # 1-channel, 8×8 and width/latent variations
    small = Decoder((1, 8, 8), 2, width=8)
    assert small(torch.randn(2, 2), torch.rand(2)).shape == (2, 1, 8, 8)


def test_loss_conditioned_generator_interfaces():
    torch.manual_seed(1)
    x = torch.rand(5, *SHAPE)
    l = torch.rand(5) * 2
    for kind in ("ae", "vae", "bigan"):
        g = LossConditionedGenerator(SHAPE, latent_dim=4, kind=kind, loss_mean=0.7, loss_std=0.2)
        assert float(g.loss_mean) == pytest.approx(0.7) and float(g.loss_std) == pytest.approx(0.2)
        assert "loss_mean" in g.state_dict() and "loss_std" in g.state_dict()
        z = g.encode(x)
        assert z.shape == (5, 4)
        # decode takes RAW losses: G(z, (l − mean)/std)
        assert torch.allclose(g.decode(z, l), g.decoder(z, (l - 0.7) / 0.2), atol=1e-6)
        out = g(x, l)
        assert out["x_hat"].shape == x.shape and out["z"].shape == (5, 4)
        if kind == "vae":
            mu, lv = g.encode_dist(x)
            assert torch.equal(z, mu) and out["mu"].shape == out["logvar"].shape == (5, 4)
            assert torch.allclose(out["mu"], mu) and not torch.allclose(out["z"], mu)  # reparameterised sample
        else:
            assert set(out) == {"x_hat", "z"}
            with pytest.raises(ValueError, match=r"^kind: encode_dist needs kind='vae'"):
                g.encode_dist(x)
    with pytest.raises(ValueError, match=r"^kind: unknown value 'gan'; allowed values: ae, vae, bigan"):
        LossConditionedGenerator(SHAPE, kind="gan")
    with pytest.raises(ValueError, match=r"^loss_std: must be a finite number > 0"):
        LossConditionedGenerator(SHAPE, loss_std=0.0)


@pytest.mark.parametrize("bad", [(3, 16, 12), (3, 18, 18), (5, 16, 16), (0, 16, 16), (3, 16), "rgb"])
def test_bad_image_shape(bad):
    for build in (lambda: Encoder(bad, 4), lambda: Decoder(bad, 4), lambda: LossConditionedGenerator(bad),
                  lambda: JointDiscriminator(bad, 4), lambda: StyleTransformer(bad),
                  lambda: DomainDiscriminator(bad)):
        with pytest.raises(ValueError, match=r"^image_shape: need \(C, H, W\)"):
            build()


def test_spec13_joint_discriminator_takes_x_z_l():
    torch.manual_seed(2)
    g = LossConditionedGenerator(SHAPE, latent_dim=4, kind="bigan")
    d = JointDiscriminator(SHAPE, 4)
    x = torch.rand(3, *SHAPE)
    z = latent_prior(3, 4, generator=torch.Generator().manual_seed(0))
    l = torch.rand(3)
    s_real = d(x, g.encode(x), g.normalize_loss(l))                # (x, E(x) | L)
    s_fake = d(g.decode(z, l), z, g.normalize_loss(l))             # (G(z, L), z | L)
    assert s_real.shape == s_fake.shape == (3,)
    with torch.no_grad():  # D is conditioned on L
        assert float((d(x, z, torch.full((3,), 2.0)) - d(x, z, torch.full((3,), -2.0))).abs().max()) > 1e-4
    loss = bigan_d_loss(s_real, s_fake) + bigan_eg_loss(s_real, s_fake)
    loss.backward()
    assert all(p.grad is not None for p in g.encoder.parameters()) and g.decoder.fc.weight.grad is not None
    with pytest.raises(ValueError, match=r"^z: need shape \(3, 4\)"):
        d(x, torch.zeros(3, 5), l)
    with pytest.raises(ValueError, match=r"^x: need shape \(N, 3, 16, 16\)"):
        d(torch.rand(3, 1, 16, 16), z, l)


def test_spec12_style_transformer_shapes():
    torch.manual_seed(3)
    st = StyleTransformer(SHAPE)
    d1 = DomainDiscriminator(SHAPE)
    x2 = torch.rand(4, *SHAPE)
    a = st(x2)
    assert a.shape == x2.shape and bool((a > 0).all() and (a < 1).all())
    a2, back = st.cycle(x2)
    assert torch.equal(a2, a) and back.shape == x2.shape
    assert torch.equal(st.to_domain1(x2), a) and not torch.allclose(st.to_domain2(x2), a)  # separate A and B
    assert d1(a).shape == (4,)
    loss = cycle_loss(x2, back) + style_g_loss(d1(a))
    loss.backward()
    assert all(p.grad is not None for p in st.parameters())


def test_spec8_tiny_autoencoder_fits_blobs():
    """A tiny loss-conditioned AE fits 64 random-blob 8×8 images; the error on 32 held-out blobs drops well
    below that of the mean image (spec test 8); the decoder's output shape equals the input shape."""
    g = torch.Generator().manual_seed(0)
    n_train, n_test = 64, 32
    n = n_train + n_test
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    cx, cy = torch.rand(n, generator=g) * 5 + 1.5, torch.rand(n, generator=g) * 5 + 1.5
    s = torch.rand(n, generator=g) * 1.0 + 0.8
    imgs = torch.exp(-((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) / (2 * s[:, None, None] ** 2))
    imgs = imgs[:, None]
    losses = s - 0.8  # a stand-in per-sample "classifier loss" tied to blob size
    tr, te = slice(0, n_train), slice(n_train, n)
    torch.manual_seed(0)
    model = LossConditionedGenerator((1, 8, 8), latent_dim=4, width=16, kind="ae",
                                     loss_mean=float(losses.mean()), loss_std=float(losses.std()))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    baseline = float(recon_loss(imgs[te], imgs[tr].mean(0, keepdim=True).expand_as(imgs[te])))
    with torch.no_grad():
        start = float(recon_loss(imgs[te], model(imgs[te], losses[te])["x_hat"]))
    for _ in range(300):
        opt.zero_grad()
        loss = recon_loss(imgs[tr], model(imgs[tr], losses[tr])["x_hat"])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(imgs[te], losses[te])["x_hat"]
    held_out = float(recon_loss(imgs[te], out))
    assert out.shape == imgs[te].shape
    print(f"held-out mse {held_out:.2e}, mean-image baseline {baseline:.2e}, untrained {start:.2e}")
    assert held_out < 0.2 * baseline and held_out < 0.1 * start and held_out < 5e-3, (held_out, baseline, start)
