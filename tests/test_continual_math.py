"""Unit tests of trainers/continual (rates, zeroing, masks, frozen updates, similarity) against numpy/scipy answers.

Numbering "spec test N" follows the known-answer and invariant tests of the implementation spec's §8.3. (not
shipped; docs/methods/continual.md describes the method) No Ray.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from trainers.continual import (Codebook, ContinualCNN, ContinualState, FrozenGuard, MaskedOptimizer,
                                PackedMask, apply_task, apply_zeroing_, candidate_tasks, capture_task_state,
                                check_table_principles, choose_candidate, codebook_codes, codebook_counts,
                                combine_counts, depth_groups, divergence, effective_weights, empty_ownership,
                                fit_codebook, forward_masks, free_pool, histogram_counts, histogram_edges, jsd,
                                jsd_from_counts, kl_divergence, layer_groups, layer_rates, load_task_state,
                                mask_from_nonzero, masked_forward, masked_weight_names, named_weights,
                                owned_from_masks, pack_mask, packed_nbytes, plan_allocation,
                                profile_is_nondecreasing, rate_for, rate_table, select_candidate, select_source,
                                select_zeroed, set_norm_eval, similarity, task1_layer_rates, task1_profile,
                                task1_rate, task_mask, task_rate_scalar, task_state_names, trainable_masks,
                                unpack_mask, update_masks, update_ownership, zero_count)

# VGG16 per-layer weight counts (spec §6, Fig. 6 reconstructed; CONV4-1 = 1,179,648 is stated)
VGG16 = [("CONV1-1", (64, 3, 3, 3)), ("CONV1-2", (64, 64, 3, 3)), ("CONV2-1", (128, 64, 3, 3)),
         ("CONV2-2", (128, 128, 3, 3)), ("CONV3-1", (256, 128, 3, 3)), ("CONV3-2", (256, 256, 3, 3)),
         ("CONV3-3", (256, 256, 3, 3)), ("CONV4-1", (512, 256, 3, 3)), ("CONV4-2", (512, 512, 3, 3)),
         ("CONV4-3", (512, 512, 3, 3)), ("CONV5-1", (512, 512, 3, 3)), ("CONV5-2", (512, 512, 3, 3)),
         ("CONV5-3", (512, 512, 3, 3)), ("Dense6", (4096, 25088)), ("Dense7", (4096, 4096)),
         ("Dense8", (1000, 4096))]
VGG16_TOTAL = 138_344_128


def vgg16_groups() -> dict[str, str]:
    kinds = ["dense" if n.startswith("Dense") else "conv" for n, _ in VGG16]
    return {n: g for (n, _), g in zip(VGG16, depth_groups(kinds))}


def vgg16_sizes() -> dict[str, int]:
    return {n: math.prod(s) for n, s in VGG16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


# --------------------------------------------------------------------------- spec test 1, 2: rate logic

@pytest.mark.parametrize("value, expected", [(0.0, (1.0, 0.95, 0.8)), (0.0999, (1.0, 0.95, 0.8)),
                                             (0.1, (0.9, 0.9, 0.75)), (0.4999, (0.9, 0.9, 0.75)),
                                             (0.5, (0.75, 0.75, 0.75)), (0.9, (0.5, 0.5, 0.5)),
                                             (1.0, (0.5, 0.5, 0.5))])
def test_spec_rate_lookup_boundaries(value, expected):
    assert tuple(rate_for(value, g) for g in ("conv4", "conv5", "dense")) == expected
    for g in ("conv1", "conv2", "conv3"):  # Fig. 8: no free weights after Fig. 5(a)
        assert rate_for(value, g) == 0.0


def test_rate_lookup_just_around_every_threshold():
    rows = [(1.0, 0.95, 0.8), (0.9, 0.9, 0.75), (0.75, 0.75, 0.75), (0.5, 0.5, 0.5)]
    for i, th in enumerate((0.1, 0.5, 0.9)):
        below, above = np.nextafter(th, 0.0), np.nextafter(th, 1.0)
        assert tuple(rate_for(below, g) for g in ("conv4", "conv5", "dense")) == rows[i]
        assert tuple(rate_for(th, g) for g in ("conv4", "conv5", "dense")) == rows[i + 1]
        assert tuple(rate_for(above, g) for g in ("conv4", "conv5", "dense")) == rows[i + 1]


def test_empty_free_pool_gets_rate_zero():
    groups = {"a": "conv4", "b": "conv5", "c": "dense"}
    rates = layer_rates(groups, 0.05, free_counts={"a": 0, "b": 10, "c": 0})
    assert rates == {"a": 0.0, "b": 0.95, "c": 0.0}
    assert layer_rates(groups, 0.95) == {"a": 0.5, "b": 0.5, "c": 0.5}
    with pytest.raises(ValueError, match=r"free_counts: no free-pool size for layers \['c'\]"):
        layer_rates(groups, 0.05, free_counts={"a": 1, "b": 1})


def test_spec_table_principles_and_profiles():
    assert check_table_principles() == []  # P2 and P3 hold for Fig. 8
    t = rate_table()
    for g, rs in t.rates.items():
        assert all(b <= a for a, b in zip(rs, rs[1:]))
    assert t.rates["conv4"][0] >= t.rates["conv5"][0] >= t.rates["dense"][0]
    assert profile_is_nondecreasing("fig5a") and profile_is_nondecreasing("fig5b")
    assert task1_profile("fig5a") == {"conv1": 0, "conv2": 0, "conv3": 0, "conv4": 0.5, "conv5": 0.5, "dense": 0.5}
    assert [task1_rate(g, "fig5b") for g in ("conv1", "conv2", "conv3", "conv4", "conv5", "dense")] == \
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    assert not profile_is_nondecreasing({"conv1": 0.5, "conv2": 0.1})
    bad = {"thresholds": [0.5], "rates": {"conv4": [0.5, 0.9], "conv5": [0.9, 0.1]}}
    problems = check_table_principles(bad)
    assert any(p.startswith("P3") and "conv4" in p for p in problems)
    assert any(p.startswith("P2") and "conv5" in p for p in problems)


def test_user_rate_table():
    t = {"thresholds": [0.3, 0.6], "rates": {"early": [0.0, 0.0, 0.0], "late": [0.8, 0.6, 0.4]}}
    assert [rate_for(x, "late", t) for x in (0.0, 0.29, 0.3, 0.6, 1.0)] == [0.8, 0.8, 0.6, 0.4, 0.4]
    assert rate_table(t).as_dict() == {"thresholds": [0.3, 0.6], "rates": t["rates"]}
    # default thresholds when only rates are given
    assert rate_for(0.5, "x", {"rates": {"x": [1, 0.9, 0.8, 0.7]}}) == 0.8
    assert rate_table(rate_table(t)) == rate_table(t)


def test_thresholds_alone_keep_the_fig8_rates():
    """A table with thresholds but no rates uses the Fig. 8 rates (4 bins), so a sweep can vary
    ``method.rate_table.thresholds`` and ``method.rate_table.rates`` as two independent keys."""
    t = rate_table({"thresholds": [0.05, 0.3, 0.7]})
    assert t.thresholds == (0.05, 0.3, 0.7) and t.rates == rate_table().rates
    assert [rate_for(x, "conv4", {"thresholds": [0.05, 0.3, 0.7]}) for x in (0.04, 0.05, 0.3, 0.69, 0.7)] == \
        [1.0, 0.9, 0.75, 0.75, 0.5]
    with pytest.raises(ValueError, match=r"rate_table\.rates: missing; .*exactly 3 values"):
        rate_table({"thresholds": [0.2, 0.6]})
    with pytest.raises(ValueError, match=r"rate_table: empty"):
        rate_table({})


@pytest.mark.parametrize("table, match", [
    ({"thresholds": [0.5, 0.1], "rates": {"conv4": [1, 1, 1]}}, r"rate_table\.thresholds.*strictly increasing"),
    ({"thresholds": [0.1, 0.1], "rates": {"conv4": [1, 1, 1]}}, r"rate_table\.thresholds"),
    ({"thresholds": [0.1, 1.5], "rates": {"conv4": [1, 1, 1]}}, r"rate_table\.thresholds.*\[0, 1\]"),
    ({"thresholds": [-0.1], "rates": {"conv4": [1, 1]}}, r"rate_table\.thresholds"),
    ({"thresholds": [], "rates": {"conv4": [1]}}, r"rate_table\.thresholds"),
    ({"thresholds": "abc", "rates": {"conv4": [1]}}, r"rate_table\.thresholds"),
    ({"thresholds": [0.5], "rates": {"conv4": [1.0]}}, r"rate_table\.rates\['conv4'\].*needs 2 rates"),
    ({"thresholds": [0.5], "rates": {"conv4": [1.0, 1.2]}}, r"rate_table\.rates\['conv4'\]\[1\].*\[0, 1\]"),
    ({"thresholds": [0.5], "rates": {"conv4": [-0.1, 0.5]}}, r"rate_table\.rates\['conv4'\]\[0\]"),
    ({"thresholds": [0.5], "rates": {"conv4": [float("nan"), 0.5]}}, r"rate_table\.rates\['conv4'\]\[0\]"),
    ({"thresholds": [0.5]}, r"rate_table\.rates: missing"),
    ({"thresholds": [0.5], "rates": {}}, r"rate_table\.rates"),
    ({"thresholds": [0.5], "rates": {"x": [0, 1]}, "bins": 3}, r"rate_table: unknown keys.*allowed values"),
])
def test_rate_table_validation(table, match):
    with pytest.raises(ValueError, match=match):
        rate_table(table)


def test_rate_and_profile_validation_errors():
    with pytest.raises(ValueError, match=r"group: .*'conv9'.*allowed values: conv1, conv2, conv3, conv4, conv5, dense"):
        rate_for(0.2, "conv9")
    for bad in (-0.01, 1.01, float("nan"), "x"):
        with pytest.raises(ValueError, match=r"jsd: must be .*\[0, 1\]"):
            rate_for(bad, "conv4")
    with pytest.raises(ValueError, match=r"task1_profile: unknown value 'fig5c'; allowed values: fig5a, fig5b"):
        task1_profile("fig5c")
    with pytest.raises(ValueError, match=r"task1_profile\['conv4'\].*\[0, 1\]"):
        task1_profile({"conv4": 2.0})
    with pytest.raises(ValueError, match=r"task1_profile: no rate for groups \['dense'\]"):
        task1_layer_rates({"a": "conv4", "b": "dense"}, {"conv4": 0.5})
    with pytest.raises(ValueError, match=r"rate_table\.rates: no rates for groups \['head'\]"):
        layer_rates({"a": "head"}, 0.2)


# --------------------------------------------------------------------------- layers → groups

def test_depth_groups_matches_vgg16_blocks():
    groups = vgg16_groups()
    for name, g in groups.items():
        expected = "dense" if name.startswith("Dense") else f"conv{name[4]}"
        assert g == expected, name
    assert depth_groups(["conv"] * 5 + ["dense"]) == ["conv1", "conv2", "conv3", "conv4", "conv5", "dense"]
    assert depth_groups(["conv", "conv", "dense", "dense"]) == ["conv4", "conv5", "dense", "dense"]
    assert depth_groups(["conv"] * 3) == ["conv3", "conv4", "conv5"]
    assert depth_groups(["conv"] * 7) == ["conv1", "conv2", "conv3", "conv4", "conv4", "conv5", "conv5"]  # 1,1,1,2,2
    with pytest.raises(ValueError, match=r"kinds\[1\].*allowed values: conv, dense"):
        depth_groups(["conv", "pool"])


def test_layer_groups_on_modules_and_overrides():
    m = ContinualCNN(image_hw=(8, 8))
    g = layer_groups(m)
    assert g == {"conv1.weight": "conv1", "conv2.weight": "conv2", "conv3.weight": "conv3", "conv4.weight": "conv4",
                 "conv5.weight": "conv5", "dense6.weight": "dense", "dense7.weight": "dense",
                 "dense8.weight": "dense"}
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 10))
    assert masked_weight_names(seq) == ["0.weight", "3.weight", "5.weight"]
    assert layer_groups(seq) == {"0.weight": "conv4", "3.weight": "conv5", "5.weight": "dense"}
    assert layer_groups(seq, overrides={"0": "conv1", "3.*": "conv3"}) == \
        {"0.weight": "conv1", "3.weight": "conv3", "5.weight": "dense"}
    assert layer_groups(seq, overrides={"5": "head"}, groups=None)["5.weight"] == "head"
    with pytest.raises(ValueError, match=r"overrides\['0'\]: unknown group 'head'; allowed values: conv1"):
        layer_groups(seq, overrides={"0": "head"})
    with pytest.raises(ValueError, match=r"overrides\['nope\*'\]: matches no masked layer"):
        layer_groups(seq, overrides={"nope*": "conv1"})
    with pytest.raises(ValueError, match="no Conv/Linear"):
        layer_groups(nn.ReLU())


# --------------------------------------------------------------------------- spec test 3: task-1 zero counts

def test_spec_vgg16_task1_zero_counts():
    sizes, groups = vgg16_sizes(), vgg16_groups()
    assert sum(sizes.values()) == VGG16_TOTAL
    assert sizes["CONV4-1"] == 1_179_648
    rates = task1_layer_rates(groups, "fig5a")
    for rounding in ("round", "floor", "ceil"):
        zeroed = {n: zero_count(rates[n], sizes[n], rounding) for n in sizes}
        assert zeroed["CONV4-1"] == 589_824
        for n in sizes:
            assert zeroed[n] == (0 if groups[n] in ("conv1", "conv2", "conv3") else sizes[n] // 2), n
        assert sum(zeroed.values()) == 68_304_896
        assert VGG16_TOTAL - sum(zeroed.values()) == 70_039_232


def test_spec_conv4_1_actual_zeroing():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(512, 256, 3, 3, generator=gen)
    z = select_zeroed(w, None, task1_rate("conv4"))
    assert int(z.sum()) == 589_824
    assert w[z].abs().max() <= w[~z].abs().min()


@pytest.mark.parametrize("jsd_value, conv4_1, conv5_1, dense6, dense7, dense8, total", [
    (0.05, 0, 58_983, 10_276_045, 1_677_722, 409_600, 12_540_316),
    (0.3, 58_983, 117_965, 12_845_056, 2_097_152, 512_000, 16_103_016),
    (0.7, 147_456, 294_912, 12_845_056, 2_097_152, 512_000, 17_076_224),
    (0.95, 294_912, 589_824, 25_690_112, 4_194_304, 1_024_000, 34_152_448),
])
def test_spec_section7_task2_new_weights_floor(jsd_value, conv4_1, conv5_1, dense6, dense7, dense8, total):
    sizes, groups = vgg16_sizes(), vgg16_groups()
    r1 = task1_layer_rates(groups, "fig5a")
    free2 = {n: zero_count(r1[n], sizes[n]) for n in sizes}  # task 1's zeroed weights = task 2's free pool
    r2 = layer_rates(groups, jsd_value, free2)
    new = {n: free2[n] - zero_count(r2[n], free2[n], "floor") for n in sizes}
    assert (new["CONV4-1"], new["CONV5-1"], new["Dense6"], new["Dense7"], new["Dense8"]) == \
        (conv4_1, conv5_1, dense6, dense7, dense8)
    assert sum(new.values()) == total
    for n in sizes:
        if groups[n] in ("conv1", "conv2", "conv3"):
            assert free2[n] == 0 and r2[n] == 0.0 and new[n] == 0


def test_zero_count_rounding_is_exact():
    assert [zero_count(0.5, 3, m) for m in ("round", "floor", "ceil")] == [2, 1, 2]  # half up, not banker's
    assert [zero_count(0.5, 5, m) for m in ("round", "floor", "ceil")] == [3, 2, 3]
    assert zero_count(0.29, 100, "floor") == 29  # 0.29 * 100 = 28.999999999999996 in floats
    assert zero_count(0.7, 10, "ceil") == 7      # 0.7 * 10 = 7.000000000000001 in floats
    assert zero_count(0.95, 1_179_648, "floor") == 1_120_665
    assert zero_count(0.95, 1_179_648, "round") == 1_120_666
    assert zero_count(0.0, 10) == 0 and zero_count(1.0, 10) == 10 and zero_count(0.3, 0) == 0
    with pytest.raises(ValueError, match=r"rounding: unknown value 'banker'; allowed values: round, floor, ceil"):
        zero_count(0.5, 3, "banker")
    with pytest.raises(ValueError, match=r"rate: .*\[0, 1\]"):
        zero_count(1.5, 3)
    with pytest.raises(ValueError, match=r"n_free"):
        zero_count(0.5, -1)


# --------------------------------------------------------------------------- spec tests 4, 5: magnitude, free pool

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rounding", ["round", "floor", "ceil"])
def test_spec_magnitude_criterion_within_free_pool(seed, rounding):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, 3, 3, generator=gen, dtype=torch.float64)
    owned = torch.rand(w.shape, generator=gen) < 0.4
    free = ~owned
    rate = float(torch.rand((), generator=gen))
    z = select_zeroed(w, free, rate, rounding=rounding)
    n_free = int(free.sum())
    k = zero_count(rate, n_free, rounding)
    assert int(z.sum()) == k
    assert not bool((z & owned).any())
    kept = free & ~z
    if k and int(kept.sum()):
        assert w[z].abs().max() <= w[kept].abs().min()
    # the same selection as numpy's stable argsort over the free entries
    wf, ff = w.numpy().ravel(), free.numpy().ravel()
    idx = np.flatnonzero(ff)
    expect = np.zeros(wf.size, bool)
    expect[idx[np.argsort(np.abs(wf[idx]), kind="stable")[:k]]] = True
    assert np.array_equal(z.numpy().ravel(), expect)
    # zeroing touches Z only
    w2 = w.clone()
    apply_zeroing_({"w": w2}, {"w": z})
    assert bool((w2[z] == 0).all()) and torch.equal(w2[~z], w[~z])


def test_magnitude_ties_break_by_index_and_errors():
    w = torch.tensor([0.5, -0.1, 0.1, 0.1, 2.0])
    assert select_zeroed(w, None, 0.4).tolist() == [False, True, True, False, False]
    half = torch.tensor([0.5, -0.1, 0.1, 0.1, 2.0], dtype=torch.bfloat16)
    assert select_zeroed(half, None, 0.4).tolist() == [False, True, True, False, False]
    with pytest.raises(ValueError, match="NaN or inf"):
        select_zeroed(torch.tensor([1.0, float("nan")]), None, 0.5)
    with pytest.raises(ValueError, match=r"free: mask shape"):
        select_zeroed(torch.ones(3), torch.ones(4, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match=r"granularity: unknown value 'row'; allowed values: weight, filter"):
        select_zeroed(torch.ones(3), None, 0.5, granularity="row")
    with pytest.raises(ValueError, match=r"filter_unit: .*allowed values: out_channel, kernel"):
        select_zeroed(torch.ones(3, 3), None, 0.5, granularity="filter", filter_unit="channel")
    with pytest.raises(ValueError, match=r"filter_norm: .*allowed values: l1, l2"):
        select_zeroed(torch.ones(3, 3), None, 0.5, granularity="filter", filter_norm="linf")


def _random_model(seed: int = 0) -> ContinualCNN:
    torch.manual_seed(seed)
    return ContinualCNN(image_hw=(8, 8), widths=(4, 6, 6, 8, 8), dense=(16, 12))


def _task(model, owned, rates, **kw):
    weights = named_weights(model)
    alloc = plan_allocation(weights, owned, rates, **kw)
    apply_zeroing_(model, alloc.zeroed)
    return alloc


def test_spec_ownership_sequence_reading_a():
    """Tests 5, 6, 8, 11 (Reading A) on a three-task sequence with perturbed weights between tasks."""
    model = _random_model()
    groups = layer_groups(model)
    weights = named_weights(model)
    owned = empty_ownership(weights)
    masks, history = {}, []
    a1 = _task(model, None, task1_layer_rates(groups))
    for n in weights:
        assert int(a1.zeroed[n].sum()) == zero_count(task1_layer_rates(groups)[n], weights[n].numel())
    masks[1] = task_mask(owned, a1.new)
    owned = update_ownership(owned, a1.new)
    assert all(torch.equal(masks[1][n], mask_from_nonzero(weights)[n]) for n in weights)
    history.append(sum(int(v.sum()) for v in owned.values()))
    for t, jsd_value in ((2, 0.05), (3, 0.95)):
        with torch.no_grad():  # "training" of the free pool (S70): give the free weights new values
            for n, w in weights.items():
                f = ~owned[n]
                w[f] = torch.randn(int(f.sum()))
        free = free_pool(owned)
        rates = layer_rates(groups, jsd_value, {n: int(f.sum()) for n, f in free.items()})
        alloc = _task(model, owned, rates)
        for n in weights:
            assert not bool((alloc.zeroed[n] & owned[n]).any())                  # Z ∩ A = ∅
            assert not bool((alloc.new[n] & owned[n]).any())                     # N ∩ A = ∅
            n_free = int(free[n].sum())
            assert int(alloc.new[n].sum()) == n_free - zero_count(rates[n], n_free)
        masks[t] = task_mask(owned, alloc.new, "A")
        assert all(torch.equal(masks[t][n], mask_from_nonzero(weights)[n]) for n in weights)  # test 11
        if jsd_value < 0.1:  # test 6 / P4: no new CONV4 weights, M^(2)|conv4 = M^(1)|conv4
            assert int(alloc.new["conv4.weight"].sum()) == 0
            assert torch.equal(masks[t]["conv4.weight"], masks[1]["conv4.weight"])
        before = sum(int(f.sum()) for f in free.values())
        owned = update_ownership(owned, alloc.new)
        after = sum(int((~a).sum()) for a in owned.values())
        assert after == before - sum(int(v.sum()) for v in alloc.new.values())   # test 8
        history.append(sum(int(v.sum()) for v in owned.values()))
    assert history == sorted(history)
    for n in weights:  # nested masks (Reading A)
        assert bool((masks[1][n] <= masks[2][n]).all()) and bool((masks[2][n] <= masks[3][n]).all())
    assert all(torch.equal(owned_from_masks(masks.values())[n], owned[n]) for n in owned)
    # a similar task allocates fewer new weights than a dissimilar one
    new2 = sum(int((masks[2][n] & ~masks[1][n]).sum()) for n in weights)
    new3 = sum(int((masks[3][n] & ~masks[2][n]).sum()) for n in weights)
    assert new2 < new3
    with pytest.raises(ValueError, match="already owns"):
        update_ownership(owned, {n: torch.ones_like(v) for n, v in owned.items()})


def test_reading_b_masks():
    a = {"w": torch.tensor([True, True, False, False, False, False])}       # A^(2): tasks 1 and 2
    m1 = {"w": torch.tensor([True, False, False, False, False, False])}
    new = {"w": torch.tensor([False, False, True, False, True, False])}
    mb = task_mask(a, new, "B", source_mask=m1)
    assert mb["w"].tolist() == [True, False, True, False, True, False]      # M^(s*) ∨ N
    assert task_mask(a, new, "A")["w"].tolist() == [True, True, True, False, True, False]
    with pytest.raises(ValueError, match="source_mask"):
        task_mask(a, new, "B")
    with pytest.raises(ValueError, match=r"reading: unknown value 'C'; allowed values: A, B"):
        task_mask(a, new, "C")
    empty = {"w": torch.zeros(6, dtype=torch.bool)}
    assert torch.equal(task_mask(empty, new, "B")["w"], new["w"])          # task 1: no source, both readings = N


# --------------------------------------------------------------------------- per-filter granularity

@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_per_filter_out_channel(norm):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(10, 4, 3, 3, generator=gen, dtype=torch.float64) * torch.rand(10, 1, 1, 1, generator=gen,
                                                                                dtype=torch.float64)
    z = select_zeroed(w, None, 0.35, granularity="filter", filter_norm=norm)
    per_ch = z.reshape(10, -1)
    assert bool((per_ch.all(1) | ~per_ch.any(1)).all())                      # whole filters only
    assert int(per_ch.all(1).sum()) == zero_count(0.35, 10)                  # round(3.5) = 4 filters
    wn = w.numpy().reshape(10, -1)
    score = np.abs(wn).sum(1) if norm == "l1" else np.sqrt((wn ** 2).sum(1))
    assert sorted(np.flatnonzero(per_ch.all(1).numpy())) == sorted(np.argsort(score, kind="stable")[:4])
    # task 2 on the free filters only; a free mask that splits a filter is rejected
    free = z
    z2 = select_zeroed(w, free, 0.5, granularity="filter", filter_norm=norm)
    assert int(z2.reshape(10, -1).all(1).sum()) == 2 and not bool((z2 & ~free).any())
    split = free.clone()
    split[np.flatnonzero(per_ch.all(1).numpy())[0], 0, 0, 0] = False
    with pytest.raises(ValueError, match="splits"):
        select_zeroed(w, split, 0.5, granularity="filter")


def test_per_filter_kernel_unit_and_linear():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(3, 4, 3, 3, generator=gen)
    z = select_zeroed(w, None, 0.5, granularity="filter", filter_unit="kernel")
    pairs = z.reshape(12, 9)
    assert bool((pairs.all(1) | ~pairs.any(1)).all()) and int(pairs.all(1).sum()) == 6
    lin = torch.randn(5, 7, generator=gen)
    zr = select_zeroed(lin, None, 0.4, granularity="filter")                 # rows = output units
    assert int(zr.all(1).sum()) == 2 and bool((zr.all(1) | ~zr.any(1)).all())
    zk = select_zeroed(lin, None, 0.4, granularity="filter", filter_unit="kernel")  # 1 weight per pair
    assert torch.equal(zk, select_zeroed(lin, None, 0.4))
    model = _random_model(1)
    alloc = plan_allocation(named_weights(model), None, task1_layer_rates(layer_groups(model)),
                            granularity="filter")
    for n, zz in alloc.zeroed.items():
        rows = zz.reshape(zz.shape[0], -1)
        assert bool((rows.all(1) | ~rows.any(1)).all()), n


# --------------------------------------------------------------------------- spec test 13: 1-bit storage

def test_spec_pack_round_trip_and_size():
    gen = torch.Generator().manual_seed(5)
    mask = {"a": torch.rand(3, 5, 7, generator=gen) < 0.5, "b": torch.rand(11, generator=gen) < 0.3,
            "c": torch.ones(2, 2, dtype=torch.bool)}
    n = 105 + 11 + 4
    p = pack_mask(mask)
    assert p.n_bits == n and p.nbytes == packed_nbytes(n) == math.ceil(n / 8) == 15
    out = unpack_mask(p)
    assert list(out) == ["a", "b", "c"]
    assert all(torch.equal(out[k], mask[k]) and out[k].dtype == torch.bool for k in mask)
    assert np.array_equal(p.bits, np.packbits(np.concatenate([mask[k].numpy().ravel() for k in mask])))
    q = PackedMask.from_dict(p.as_dict())
    assert all(torch.equal(unpack_mask(q)[k], mask[k]) for k in mask)
    with pytest.raises(ValueError, match=r"mask\['x'\]: expected a bool mask"):
        pack_mask({"x": torch.ones(3)})
    with pytest.raises(ValueError, match="do not hold"):
        PackedMask.from_dict({**p.as_dict(), "bits": p.bits[:-1]})


def test_spec_vgg16_mask_is_one_bit_per_weight():
    rng = np.random.default_rng(0)
    mask = {}
    for name, shape in VGG16:
        m = np.zeros(shape, dtype=np.bool_)
        m.reshape(-1)[rng.integers(0, m.size, 5)] = True
        mask[name] = m
    p = pack_mask(mask)
    assert p.n_bits == VGG16_TOTAL
    assert p.nbytes == 17_293_016 == VGG16_TOTAL // 8                      # ≈ 17.3 MB per task
    out = unpack_mask(p)
    for name, _ in (VGG16[0], VGG16[7], VGG16[13], VGG16[15]):
        assert np.array_equal(out[name].numpy(), mask[name])


# --------------------------------------------------------------------------- spec test 12: inference model

def test_spec_effective_weights_and_apply_task():
    model = _random_model(2)
    weights = named_weights(model)
    gen = torch.Generator().manual_seed(6)
    m = {n: torch.rand(w.shape, generator=gen) < 0.6 for n, w in weights.items()}
    eff = effective_weights(weights, m)
    for n, w in weights.items():
        assert torch.equal(eff[n][m[n]], w.detach()[m[n]])
        assert bool((eff[n][~m[n]] == 0).all()) and not bool(torch.signbit(eff[n][~m[n]]).any())
    original = copy.deepcopy(model.state_dict())
    inf = apply_task(model, {7: pack_mask(m)}, 7)
    assert all(torch.equal(model.state_dict()[k], original[k]) for k in original)   # the input model is untouched
    inf_w = named_weights(inf)
    assert all(torch.equal(inf_w[n], eff[n]) for n in eff)
    assert torch.equal(inf.dense8.bias, model.dense8.bias)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(apply_task(model, {7: m}, 7)(x), inf(x))
    assert torch.equal(apply_task(model, pack_mask(m))(x), inf(x))
    assert torch.equal(masked_forward(model, m, x), inf(x))
    with pytest.raises(ValueError, match="no mask for task 3"):
        apply_task(model, {7: m}, 3)


def test_masked_forward_gradients_only_reach_kept_entries():
    model = _random_model(3)
    weights = named_weights(model)
    m = {n: torch.rand(w.shape) < 0.5 for n, w in weights.items()}
    masked_forward(model, m, torch.randn(3, 1, 8, 8)).sum().backward()
    for n, w in weights.items():
        assert bool((w.grad[~m[n]] == 0).all())
        assert bool((w.grad[m[n]] != 0).any())


# --------------------------------------------------------------------------- R5 / spec test 7: bitwise frozen

OPTIMIZERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam_wd": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    "adamw_wd": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-1),
}


def _frozen_setup(seed: int = 0):
    model = _random_model(seed)
    weights = named_weights(model)
    alloc1 = plan_allocation(weights, None, task1_layer_rates(layer_groups(model)))
    apply_zeroing_(model, alloc1.zeroed)
    return model, alloc1


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("phase", ["S40", "S70", "S90"])
def test_spec_frozen_entries_bitwise_unchanged(opt_name, phase):
    model, alloc1 = _frozen_setup()
    groups = layer_groups(model)
    weights = named_weights(model)
    owned = alloc1.new
    if phase == "S40":
        upd, task, zero_set = update_masks("S40", alloc1.free, alloc1.new), 1, alloc1.zeroed
    else:
        free = free_pool(owned)
        rates = layer_rates(groups, 0.3, {n: int(f.sum()) for n, f in free.items()})
        if phase == "S70":
            upd, zero_set = update_masks("S70", free, rates=rates), {n: torch.zeros_like(f) for n, f in free.items()}
        else:
            with torch.no_grad():
                for n, w in weights.items():
                    w[free[n]] = torch.randn(int(free[n].sum()))
            alloc2 = plan_allocation(weights, owned, rates)
            apply_zeroing_(model, alloc2.zeroed)
            upd, zero_set = update_masks("S90", alloc2.free, alloc2.new), alloc2.zeroed
        task = 2
    trainable = trainable_masks(model, upd, task)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = MaskedOptimizer(OPTIMIZERS[opt_name](model.parameters()), FrozenGuard.from_model(model, trainable))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    for _ in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    changed = 0
    for n, p in model.named_parameters():
        frozen = ~trainable[n]
        assert torch.equal(p.detach()[frozen], before[n][frozen]), n        # bitwise, incl. Z (= 0) and A^(t-1)
        changed += int((p.detach()[~frozen] != before[n][~frozen]).sum())
    assert changed > 0
    for n, z in zero_set.items():
        assert bool((weights[n].detach()[z] == 0).all())
    if task == 2:  # biases are frozen after task 1 by default
        assert torch.equal(model.dense8.bias, before["dense8.bias"])


def test_gradient_masking_alone_is_not_enough():
    """Negative control: with only the gradient zeroed, momentum + weight decay still move frozen entries."""
    model, alloc1 = _frozen_setup()
    upd = update_masks("S70", free_pool(alloc1.new), freeze_full_rate=False)  # task-1 weights (non-zero) frozen
    params = named_weights(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, p in params.items():
            p.grad.mul_(upd[n])
        opt.step()
    moved = sum(int((params[n].detach()[~upd[n]] != before[n][~upd[n]]).sum()) for n in params)
    assert moved > 0


def test_guard_context_with_closure_and_full_masks():
    w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    b = nn.Parameter(torch.tensor([5.0]))
    guard = FrozenGuard([(w, torch.tensor([True, False, True])), (b, torch.tensor([False]))])
    opt = torch.optim.SGD([w, b], lr=0.5, momentum=0.9, weight_decay=0.1)
    mopt = MaskedOptimizer(opt, guard)

    def closure():
        mopt.zero_grad()
        loss = (w ** 2).sum() + b.sum()
        loss.backward()
        return loss

    for _ in range(3):
        mopt.step(closure)
    assert w[1].item() == 2.0 and b.item() == 5.0 and w[0].item() != 1.0
    assert mopt.param_groups is opt.param_groups                             # delegated
    assert mopt.state_dict()["param_groups"][0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="mask shape"):
        FrozenGuard([(w, torch.tensor([True]))])


def test_update_and_forward_masks_per_phase():
    free = {"a": torch.tensor([True, False, True]), "b": torch.tensor([True, True])}
    new = {"a": torch.tensor([True, False, False]), "b": torch.tensor([False, True])}
    src = {"a": torch.tensor([False, True, False]), "b": torch.tensor([False, False])}
    assert all(bool(v.all()) for v in update_masks("S20", free).values())
    assert update_masks("S90", free, new)["a"].tolist() == [True, False, False]
    s70 = update_masks("S70", free, rates={"a": 1.0, "b": 0.5})
    assert s70["a"].tolist() == [False, False, False] and s70["b"].tolist() == [True, True]   # P4
    assert update_masks("S70", free, rates={"a": 1.0, "b": 0.5}, freeze_full_rate=False)["a"].tolist() == \
        [True, False, True]
    with pytest.raises(ValueError, match="rates"):
        update_masks("S70", free)
    with pytest.raises(ValueError, match="new"):
        update_masks("S40", free)
    with pytest.raises(ValueError, match=r"phase: unknown value 'S50'; allowed values: S20, S40, S70, S90"):
        update_masks("S50", free)
    assert forward_masks("S70", "A", free) is None and forward_masks("S90", "B", free, new, src) is not None
    assert forward_masks("S70", "B", free, source_mask=src)["a"].tolist() == [True, True, True]
    assert forward_masks("S90", "B", free, new, src)["a"].tolist() == [True, True, False]
    assert forward_masks("S40", "B") is None
    with pytest.raises(ValueError, match="source_mask"):
        forward_masks("S70", "B", free)


# --------------------------------------------------------------------------- biases / normalisation per task

class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_bias_and_norm_policies():
    net = _BNNet()
    wm = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in named_weights(net).items()}
    t1 = trainable_masks(net, wm, 1)
    assert all(bool(t1[n].all()) for n in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"))
    t2 = trainable_masks(net, wm, 2)                                        # defaults: bias freeze, norm per task
    assert not bool(t2["conv.bias"].any()) and not bool(t2["fc.bias"].any())
    assert bool(t2["bn.weight"].all()) and bool(t2["bn.bias"].all())
    t2f = trainable_masks(net, wm, 2, bias_policy="per_task", norm_policy="freeze")
    assert bool(t2f["fc.bias"].all()) and not bool(t2f["bn.weight"].any())
    assert task_state_names(net) == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                     "bn.num_batches_tracked"]
    assert task_state_names(net, "per_task", "freeze") == ["conv.bias", "fc.bias"]
    with pytest.raises(ValueError, match=r"bias_policy: unknown value 'x'; allowed values: freeze, per_task"):
        trainable_masks(net, wm, 2, bias_policy="x")
    with pytest.raises(ValueError, match=r"norm_policy: .*allowed values: per_task, freeze"):
        task_state_names(net, norm_policy="x")
    net.train()
    set_norm_eval(net)
    assert net.training and not net.bn.training


def test_per_task_batchnorm_state_restores_task_outputs():
    torch.manual_seed(0)
    net = _BNNet()
    x1, x2 = torch.randn(16, 1, 8, 8), 3 + 2 * torch.randn(16, 1, 8, 8)
    weights = named_weights(net)
    alloc = plan_allocation(weights, None, {n: 0.5 for n in weights})
    apply_zeroing_(net, alloc.zeroed)
    m1 = task_mask(empty_ownership(weights), alloc.new)
    net.train()
    net(x1)                                                                 # task-1 BN statistics
    names = task_state_names(net)
    states = {1: capture_task_state(net, names)}
    net.eval()
    out1 = apply_task(net, {1: m1}, 1, states)(x1)
    # task 2: new BN statistics and affine values; the masked task-1 weights are frozen by a guard
    trainable = trainable_masks(net, update_masks("S70", free_pool(alloc.new), rates={n: 0.5 for n in weights}), 2)
    opt = MaskedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
                          FrozenGuard.from_model(net, trainable))
    net.train()
    for _ in range(3):
        opt.zero_grad()
        net(x2).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(net.bn.running_mean, states[1]["bn.running_mean"])
    states[2] = capture_task_state(net, names)
    net.eval()
    assert torch.equal(apply_task(net, {1: m1}, 1, states)(x1), out1)
    restored = copy.deepcopy(net)
    load_task_state(restored, states[1])
    assert torch.equal(restored.bn.running_var, states[1]["bn.running_var"])
    with pytest.raises(ValueError, match="not parameters/buffers"):
        capture_task_state(net, ["nope"])


# --------------------------------------------------------------------------- spec tests 9, 10: no forgetting

def _fit(model, x, y, trainable, steps, fwd=None, lr=0.005):
    opt = MaskedOptimizer(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2),
                          FrozenGuard.from_model(model, trainable))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(masked_forward(model, fwd, x), y).backward()
        opt.step()
    model.eval()


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("reading", ["A", "B"])
def test_spec_no_forgetting_three_tasks(digits, reading):
    imgs, labels = digits
    rng = np.random.default_rng(0)
    perms = [np.arange(64), rng.permutation(64), rng.permutation(64)]
    xs = [torch.from_numpy(imgs.reshape(-1, 64)[:, p].reshape(-1, 1, 8, 8).copy()) for p in perms]
    y = torch.from_numpy(labels)
    tr, ev = slice(0, 600), slice(600, 900)
    torch.manual_seed(0)
    model = ContinualCNN(image_hw=(8, 8))
    groups = layer_groups(model)
    weights = named_weights(model)
    state = ContinualState.for_model(model)
    edges = histogram_edges(0, 1, 16)
    cb = fit_codebook(np.concatenate([x[:200].numpy() for x in xs]), n_codes=24, proj_dim=16, seed=0)

    # task 1: S20, S30, S40
    _fit(model, xs[0][tr], y[tr], trainable_masks(model, update_masks("S20", empty_ownership(weights)), 1), 40)
    alloc = plan_allocation(weights, None, task1_layer_rates(groups))
    apply_zeroing_(model, alloc.zeroed)
    _fit(model, xs[0][tr], y[tr], trainable_masks(model, update_masks("S40", alloc.free, alloc.new), 1), 10)
    assert all(bool((weights[n].detach()[z] == 0).all()) for n, z in alloc.zeroed.items())
    state.add_task(1, task_mask(empty_ownership(weights), alloc.new, reading),
                   record={"counts": alloc.counts()}, counts=codebook_counts(xs[0][tr], cb))
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = xs[0][ev]
    out1 = apply_task(model, state.masks, 1)(probe)
    acc1 = _acc(apply_task(model, state.masks, 1), probe, y[ev])
    assert acc1 > 0.2                                                       # task 1 was learned (chance 0.1)
    owned1 = state.owned()

    for t in (2, 3):
        xt = xs[t - 1]
        counts = codebook_counts(xt[tr], cb)
        jsds = {s: jsd_from_counts(state.data_counts[s], counts) for s in state.learned_tasks()}
        assert jsd_from_counts(histogram_counts(xs[0][tr], edges), histogram_counts(xt[tr], edges)) < 0.02
        src, src_jsd = select_source(jsds, candidate_tasks(state.learned_tasks()))
        assert src_jsd > 0.3                                                # permuted tasks are told apart
        owned = state.owned()
        free = free_pool(owned)
        rates = layer_rates(groups, src_jsd, {n: int(f.sum()) for n, f in free.items()})
        src_mask = state.mask(src)
        with torch.no_grad():                                               # free weights start at exactly 0
            for n, w in weights.items():
                assert bool((w[free[n]] == 0).all())
        _fit(model, xt[tr], y[tr], trainable_masks(model, update_masks("S70", free, rates=rates), t), 15,
             fwd=forward_masks("S70", reading, free, source_mask=src_mask))
        alloc = plan_allocation(weights, owned, rates)
        apply_zeroing_(model, alloc.zeroed)
        mask_t = task_mask(owned, alloc.new, reading, src_mask)
        cand1 = copy.deepcopy(model.state_dict())
        _fit(model, xt[tr], y[tr], trainable_masks(model, update_masks("S90", free, alloc.new), t), 5,
             fwd=forward_masks("S90", reading, free, alloc.new, src_mask))
        cand2 = copy.deepcopy(model.state_dict())
        acc = []
        for sd in (cand1, cand2):
            model.load_state_dict(sd)
            acc.append(_acc(apply_task(model, {t: mask_t}, t), xt[ev], y[ev]))
        kept, which = choose_candidate(cand1, cand2, *acc)
        model.load_state_dict(kept)
        state.add_task(t, mask_t, record={"jsd": jsds, "source": src, "which": which}, counts=counts)
        if reading == "B":
            for n in weights:
                assert torch.equal(mask_t[n], src_mask[n] | alloc.new[n])
        # test 9: weights (and frozen biases) of task 1 are bitwise unchanged; test 10: so are its outputs
        for n, p in model.named_parameters():
            keep = owned1[n] if n in owned1 else torch.ones_like(p, dtype=torch.bool)
            assert torch.equal(p.detach()[keep], snap[n][keep]), n
        assert torch.equal(apply_task(model, state.masks, 1)(probe), out1)
    assert _acc(apply_task(model, state.masks, 1), probe, y[ev]) == acc1


# --------------------------------------------------------------------------- spec test 14: JSD

@pytest.mark.parametrize("seed", range(8))
def test_jsd_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    p, q = rng.random(n), rng.random(n)
    p[rng.random(n) < 0.3] = 0.0
    q[rng.random(n) < 0.3] = 0.0
    p[0] += 0.1
    q[-1] += 0.1
    expected = scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2
    assert jsd(p, q) == pytest.approx(expected, abs=1e-12)
    assert jsd(q, p) == pytest.approx(jsd(p, q), abs=1e-15)                 # symmetric
    assert 0.0 <= jsd(p, q) <= 1.0
    assert jsd(torch.tensor(p), list(q)) == pytest.approx(expected, abs=1e-12)
    assert jsd(p, q, base=math.e) == pytest.approx(scipy.spatial.distance.jensenshannon(p, q) ** 2, abs=1e-12)
    assert jsd(10 * p, q) == pytest.approx(expected, abs=1e-12)              # counts are normalised


def test_spec_jsd_known_answers():
    assert jsd([1, 0], [0.5, 0.5]) == pytest.approx(0.311278124459, abs=1e-12)
    rng = np.random.default_rng(0)
    p = rng.random(17)
    assert jsd(p, p) == 0.0
    assert jsd([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]) == 1.0
    for _ in range(5):  # disjoint supports give exactly 1 for arbitrary masses
        a, b = rng.random(9), rng.random(9)
        sel = rng.random(9) < 0.5
        sel[0], sel[1] = True, False
        assert jsd(np.where(sel, a, 0), np.where(sel, 0, b)) == 1.0
    assert jsd(np.eye(3), np.eye(3)[::-1]) == pytest.approx(2 / 3 * 1.0, abs=1e-12)   # 2-D = joint distribution
    assert similarity(0.25) == 0.75


def test_jsd_validation():
    with pytest.raises(ValueError, match=r"p: entries must be finite and >= 0"):
        jsd([-1, 2], [1, 1])
    with pytest.raises(ValueError, match=r"q: entries must be finite"):
        jsd([1, 2], [1, float("nan")])
    with pytest.raises(ValueError, match="same number of cells"):
        jsd([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="sum to 0"):
        jsd([0, 0], [1, 2])
    with pytest.raises(ValueError, match="base"):
        jsd([1], [1], base=1)
    with pytest.raises(ValueError, match=r"smoothing"):
        jsd_from_counts([1], [1], smoothing=-1)


def test_kl_divergence_and_measure_switch():
    rng = np.random.default_rng(1)
    p, q = rng.random(10) + 0.01, rng.random(10) + 0.01
    assert kl_divergence(p, q) == pytest.approx(scipy.stats.entropy(p, q, base=2), abs=1e-12)
    assert kl_divergence([1, 0], [0, 1]) == math.inf
    assert kl_divergence([1, 0], [0.5, 0.5]) == pytest.approx(1.0, abs=1e-15)
    assert divergence(p, q, "kl") == kl_divergence(p, q) and divergence(p, q) == jsd(p, q)
    with pytest.raises(ValueError, match=r"measure: unknown similarity measure 'l2'; allowed values: jsd, kl"):
        divergence(p, q, "l2")
    assert jsd_from_counts([0, 4], [2, 2], smoothing=1) == pytest.approx(jsd([1, 5], [3, 3]), abs=1e-15)


# --------------------------------------------------------------------------- estimators

def test_histogram_counts_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.random((50, 1, 8, 8))
    x[0, 0, 0, :3] = [0.0, 1.0, 0.5]
    edges = histogram_edges(0, 1, 10)
    got = histogram_counts(x, edges)
    assert got.dtype == np.int64 and np.array_equal(got, np.histogram(x, bins=edges)[0])
    assert np.array_equal(histogram_counts(torch.from_numpy(x).float(), edges),
                          np.histogram(torch.from_numpy(x).float().double().numpy(), bins=edges)[0])
    clipped = histogram_counts(np.array([-5.0, 0.05, 2.0, 1.0]), edges)      # out of range → end bins
    assert clipped.tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    pf = histogram_counts(x, edges, per_feature=True)
    assert pf.shape == (64, 10)
    flat = x.reshape(50, 64)
    for d in (0, 17, 63):
        assert np.array_equal(pf[d], np.histogram(flat[:, d], bins=edges)[0])
    assert np.array_equal(pf.sum(0), got)
    with pytest.raises(ValueError, match="edges"):
        histogram_counts(x, [0.5, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        histogram_counts(np.array([np.nan]), edges)
    with pytest.raises(ValueError, match="bins"):
        histogram_edges(0, 1, 0)


def test_per_feature_jsd_is_mean_of_per_position_jsd():
    rng = np.random.default_rng(3)
    a, b = rng.random((200, 6)), rng.random((150, 6)) ** 2
    edges = histogram_edges(0, 1, 8)
    ca, cb = histogram_counts(a, edges, True), histogram_counts(b, edges, True)
    expected = np.mean([scipy.spatial.distance.jensenshannon(ca[d], cb[d], base=2) ** 2 for d in range(6)])
    assert jsd_from_counts(ca, cb) == pytest.approx(expected, abs=1e-12)


def test_shard_summed_counts_equal_whole_dataset(digits):
    imgs, _ = digits
    x = imgs.reshape(-1, 1, 8, 8)
    edges = histogram_edges(0, 1, 17)
    cb = fit_codebook(x[:400], n_codes=16, proj_dim=8, seed=1)
    bounds = [0, 1, 250, 251, 900, 1400, len(x)]
    shards = [x[a:b] for a, b in zip(bounds, bounds[1:])]
    for fn in (lambda b: histogram_counts(b, edges), lambda b: histogram_counts(b, edges, per_feature=True),
               lambda b: codebook_counts(b, cb)):
        assert np.array_equal(combine_counts(fn(s) for s in shards), fn(x))
    assert np.array_equal(np.concatenate([codebook_codes(s, cb) for s in shards]), codebook_codes(x, cb))
    assert codebook_counts(x, cb).sum() == len(x)
    with pytest.raises(ValueError, match="same shape"):
        combine_counts([np.zeros(3, np.int64), np.zeros(4, np.int64)])
    with pytest.raises(ValueError, match="no shards"):
        combine_counts([])
    with pytest.raises(ValueError, match="integer"):
        combine_counts([np.zeros(3)])


def test_estimator_sanity_identical_disjoint_and_permuted(digits):
    imgs, _ = digits
    flat = imgs.reshape(-1, 64).astype(np.float64)
    edges = histogram_edges(0, 1, 16)
    # identical data → 0 for both estimators
    cb = fit_codebook(flat[:500], n_codes=16, proj_dim=8, seed=0)
    assert jsd_from_counts(histogram_counts(flat, edges), histogram_counts(flat.copy(), edges)) == 0.0
    assert jsd_from_counts(codebook_counts(flat, cb), codebook_counts(flat, cb)) == 0.0
    # disjoint value ranges → 1 for the histogram
    rng = np.random.default_rng(0)
    low, high = rng.uniform(0, 0.45, (100, 64)), rng.uniform(0.55, 1, (100, 64))
    assert jsd_from_counts(histogram_counts(low, edges), histogram_counts(high, edges)) == 1.0
    # permuted pixels: the pooled pixel histogram cannot tell the tasks apart (exactly 0), the codebook can
    perm = rng.permutation(64)
    a, b = flat[0::2], flat[1::2]
    bp = b[:, perm]
    assert jsd_from_counts(histogram_counts(b, edges), histogram_counts(bp, edges)) == 0.0
    ref = np.concatenate([a[:300], a[300:600][:, perm]])
    code = fit_codebook(ref, n_codes=32, proj_dim=16, seed=0)
    same = jsd_from_counts(codebook_counts(a, code), codebook_counts(b, code))
    permuted = jsd_from_counts(codebook_counts(a, code), codebook_counts(bp, code))
    assert same < 0.1 and permuted > 0.6
    # per-position histograms see the permutation too (a documented alternative)
    assert jsd_from_counts(histogram_counts(a, edges, True), histogram_counts(bp, edges, True)) > 0.1


def test_codebook_is_deterministic_and_serialisable(digits):
    imgs, _ = digits
    x = imgs[:300]
    c1, c2 = fit_codebook(x, 12, 6, seed=5), fit_codebook(torch.from_numpy(x), 12, 6, seed=5)
    for f in ("mean", "projection", "centroids"):
        assert np.array_equal(getattr(c1, f), getattr(c2, f))
    c3 = Codebook.from_dict(c1.as_dict())
    assert np.array_equal(codebook_counts(imgs, c3), codebook_counts(imgs, c1))
    assert not np.array_equal(fit_codebook(x, 12, 6, seed=6).projection, c1.projection)
    with pytest.raises(ValueError, match="n_codes"):
        fit_codebook(x[:5], n_codes=10)
    with pytest.raises(ValueError, match="proj_dim"):
        fit_codebook(x, proj_dim=0)
    with pytest.raises(ValueError, match="features"):
        codebook_counts(np.zeros((3, 10)), c1)


# --------------------------------------------------------------------------- spec test 15: source and candidates

def test_spec_source_selection():
    s, v = select_source({1: 0.6, 2: 0.2})
    assert (s, v) == (2, 0.2)
    assert tuple(rate_for(v, g) for g in ("conv4", "conv5", "dense")) == (0.9, 0.9, 0.75)
    assert select_source({1: 0.3, 2: 0.3, 3: 0.5}) == (1, 0.3)                # tie → first (earliest)
    assert select_source({1: 0.1, 2: 0.3, 3: 0.5}, candidates=[2, 3]) == (2, 0.3)
    with pytest.raises(ValueError, match="no learned task"):
        select_source({})
    with pytest.raises(ValueError, match="task 4 has no JSD"):
        select_source({1: 0.1}, candidates=[4])
    with pytest.raises(ValueError, match="NaN"):
        select_source({1: float("nan")})


def test_spec_candidate_sets():
    learned = [1, 2, 3, 4, 5, 6]
    rates = {1: 0.49, 2: 0.9, 3: 0.3, 4: 0.95, 5: 0.3, 6: 0.8}
    assert candidate_tasks(learned) == learned
    assert candidate_tasks(learned, "recent", k=2) == [5, 6]                               # (1)
    assert candidate_tasks(learned, 2, k=3, rates=rates) == [1, 3, 5]                      # (2)
    assert candidate_tasks(learned, "smallest_rate", k=1, rates=rates) == [3]              # tie → earlier
    assert candidate_tasks(learned, 3, rates=rates, tau=0.5) == [1, 3, 5]                  # (3), no cap
    assert candidate_tasks(learned, "rate_below", k=2, rates=rates, tau=0.5) == [3, 5]    # (3), K most recent
    assert candidate_tasks(learned, 4, k=2, rates=rates) == [3, 5, 6]                      # (4) union
    assert candidate_tasks(learned, 4, k=2, rates=rates, combine="intersection") == [5]
    assert candidate_tasks(learned, 5, k=2, rates=rates, tau=0.5) == [3, 5, 6]             # (5) union
    assert candidate_tasks(learned, 5, k=2, rates=rates, tau=0.5, combine="intersection") == [5]
    assert candidate_tasks(learned, 5, k=1, rates=rates, tau=0.1, combine="intersection") == [6]  # empty → (1)
    assert candidate_tasks(learned, "rate_below", rates=rates, tau=0.1) == []
    with pytest.raises(ValueError, match=r"candidate_policy: unknown policy 'best'; allowed values: all, recent"):
        candidate_tasks(learned, "best")
    with pytest.raises(ValueError, match=r"candidate_policy"):
        candidate_tasks(learned, 6)
    with pytest.raises(ValueError, match=r"k: candidate_policy='recent' needs K"):
        candidate_tasks(learned, 1)
    with pytest.raises(ValueError, match=r"rates: .*missing: \[6\]"):
        candidate_tasks(learned, 2, k=1, rates={s: 0.1 for s in learned[:-1]})
    with pytest.raises(ValueError, match=r"tau"):
        candidate_tasks(learned, 3, rates=rates)
    with pytest.raises(ValueError, match=r"combine: unknown mode 'and'; allowed values: union, intersection"):
        candidate_tasks(learned, 4, k=1, rates=rates, combine="and")
    with pytest.raises(ValueError, match=r"k: .*integer >= 1"):
        candidate_tasks(learned, 1, k=0)


def test_task_rate_scalar():
    assert task_rate_scalar({"a": 5, "b": 0}, {"a": 10, "b": 10}) == 0.25
    assert task_rate_scalar(3, 4) == 0.75 and task_rate_scalar(0, 0) == 0.0
    sizes, groups = vgg16_sizes(), vgg16_groups()
    r1 = task1_layer_rates(groups)
    assert task_rate_scalar({n: zero_count(r1[n], sizes[n]) for n in sizes}, sizes) == \
        pytest.approx(68_304_896 / VGG16_TOTAL)
    with pytest.raises(ValueError, match="zeroed"):
        task_rate_scalar(5, 4)


# --------------------------------------------------------------------------- spec test 16: S100

def test_spec_candidate_selection():
    c1, c2 = {"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}
    assert choose_candidate(c1, c2, 0.9, 0.8) == (c1, 1)
    assert choose_candidate(c1, c2, 0.7, 0.8) == (c2, 2)
    assert select_candidate(0.8, 0.8) == 2 and select_candidate(0.8, 0.8, tie="cand1") == 1
    with pytest.raises(ValueError, match=r"tie: unknown tie-break 'x'; allowed values: cand2, cand1"):
        select_candidate(0.1, 0.2, tie="x")
    with pytest.raises(ValueError, match="NaN"):
        select_candidate(float("nan"), 0.2)


# --------------------------------------------------------------------------- state container

def test_continual_state_round_trip():
    model = _random_model(4)
    weights = named_weights(model)
    st = ContinualState.for_model(model)
    assert not any(bool(v.any()) for v in st.owned().values())
    a1 = plan_allocation(weights, None, task1_layer_rates(layer_groups(model)))
    m1 = task_mask(st.owned(), a1.new)
    st.add_task(1, m1, record={"counts": a1.counts()}, counts=np.arange(4))
    assert all(torch.equal(st.owned()[n], m1[n]) for n in m1)
    assert st.records[1]["counts"]["zeroed"]["dense6.weight"] == zero_count(0.5, weights["dense6.weight"].numel())
    st2 = ContinualState.from_dict(st.as_dict())
    assert st2.learned_tasks() == [1] and all(torch.equal(st2.mask(1)[n], m1[n]) for n in m1)
    assert np.array_equal(st2.data_counts[1], np.arange(4))
    with pytest.raises(ValueError, match="already learned"):
        st.add_task(1, m1)
    with pytest.raises(ValueError, match="layers or shapes"):
        st.add_task(2, {"x": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no mask for task 9"):
        st.mask(9)
