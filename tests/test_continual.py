"""continual on the spine: config and data validation, the per-task loop without Ray (one process), predict, and
end to end through the CLI and with 2 Ray Train workers (real Ray, real MLflow).

The math itself (rates, zeroing, masks, JSD, FrozenGuard) is tested in tests/test_continual_math.py; here the
loop that strings it together. "spec test N" = the implementation spec's §8.3. (not shipped;
docs/methods/continual.md describes the method)
"""
from __future__ import annotations

import glob
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import mlflow_artifacts, mlflow_runs
from pipelines.cli import app
from pipelines.data import (DataValidationError, _validate_task_parquet, embedded_task_stream,
                            task_stream_from_arrays, write_task_parquet)
from pipelines.run import load_config
from trainers.common.config import ConfigError
from trainers.continual import ContinualState, predict
from trainers.continual.groups import layer_groups, named_weights
from trainers.continual.learner import (ContinualLearner, TaskData, TaskNet, accuracy_summary, build_model,
                                        choose_source, local_labels, task_rates)
from trainers.continual.prepare import check
from trainers.continual.similarity import codebook_counts, fit_codebook, jsd_from_counts


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- config and driver-side checks

BAD = [
    (["method.rate_table={rates: {conv4: [1.2, 0.9, 0.75, 0.5]}}"], "method.rate_table", "[0, 1]"),
    (["method.rate_table={thresholds: [0.5, 0.1, 0.9], rates: {conv4: [1, 0.9, 0.75, 0.5]}}"],
     "method.rate_table", "strictly increasing"),
    (["method.rate_table={thresholds: [0.1, 1.5], rates: {conv4: [1, 0.9, 0.75]}}"], "method.rate_table",
     "strictly increasing"),
    (["method.rate_table={rates: {conv4: [1, 0.9]}}"], "method.rate_table", "needs 4 rates"),
    (["method.rate_table={rates: {conv9: [1, 0.9, 0.75, 0.5]}}"], "method.rate_table", "unknown groups"),
    (["method.task1_profile={conv4: 1.5}"], "task1_profile", "[0, 1]"),
    (["method.task1_profile=fig5c"], "method.task1_profile", "fig5a"),
    (["method.group_overrides={dense6: conv9}"], "method.group_overrides", "unknown group 'conv9'"),
    (["method.packnet_rate=1.5"], "method.packnet_rate", "less than or equal to 1"),
    (["method.variant=ewc"], "method.variant", "'method', 'packnet' or 'finetune'"),
    (["method.candidate_policy=recent"], "method.candidate_k", "needs K"),
    (["method.candidate_policy=rate_below"], "method.candidate_tau", "needs τ"),
    (["method.measure=kl"], "method.measure", "explicit method.rate_table"),
    (["data.num_tasks=0"], "data.num_tasks", "greater than or equal to 1"),
    (["model.widths=[8, 16]"], "model.widths", "at least 5"),
    (["method.finetune_epochs=-1"], "method.finetune_epochs", "greater than or equal to 0"),
]


@pytest.mark.parametrize("sets,field,fragment", BAD, ids=[b[0][0][:50] for b in BAD])
def test_bad_config_values_are_rejected_with_the_field_named(sets, field, fragment):
    with pytest.raises(ConfigError) as ei:
        load_config("continual", sets=sets)
    msg = str(ei.value)
    assert field in msg and fragment in msg, msg


def _bundle(names=("a", "b", "c"), classes=((0, 1), (2, 3), (4, 5)), shape=(1, 8, 8), n=100):
    sizes = {f"task{i}_train": n for i in range(1, len(names) + 1)}
    return SimpleNamespace(input_shape=shape, num_classes=max(map(len, classes)), task_names=names,
                           task_classes=classes, sizes=sizes, num_tasks=len(names))


@pytest.mark.parametrize("sets,bundle,fragment", [
    (["method.group_overrides={fc*: dense}"], _bundle(), "method.group_overrides: overrides['fc*']: matches no "
                                                         "masked layer"),
    (["method.rate_table={rates: {conv4: [1, 0.9, 0.75, 0.5]}}"], _bundle(),
     "method.rate_table: no rates for groups ['conv1', 'conv2', 'conv3', 'conv5', 'dense']"),
    (["method.task1_profile={conv4: 0.5}"], _bundle(), "method.task1_profile"),
    (["train.batch_size=64"], _bundle(n=40), "train.batch_size: 64 is larger than task 'a'"),
    ([], _bundle(shape=(64,)), "model: ContinualCNN needs image inputs"),
])
def test_driver_side_checks_name_the_field(sets, bundle, fragment):
    with pytest.raises(ValueError) as ei:
        check(load_config("continual", sets=sets), bundle)
    assert fragment in str(ei.value), str(ei.value)


def test_group_overrides_move_layers_between_groups():
    cfg = load_config("continual", sets=["method.group_overrides={dense8: conv5, conv1: conv4}"])
    check(cfg, _bundle())
    g = layer_groups(build_model(cfg.model, (1, 8, 8), 2), cfg.method.group_overrides)
    assert g["dense8.weight"] == "conv5"
    assert g["conv1.weight"] == "conv4" and g["conv2.weight"] == "conv2" and g["dense6.weight"] == "dense"


# --------------------------------------------------------------------------- task streams (no Ray)

def test_embedded_streams_have_the_documented_tasks_and_are_deterministic():
    split = embedded_task_stream("split", 5, 8, seed=3)
    assert [sorted(set(t["train"][1])) for t in split] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert all(set(t["eval"][1]) == set(t["train"][1]) for t in split)
    again = embedded_task_stream("split", 5, 8, seed=3)
    assert all(np.array_equal(a["train"][0], b["train"][0]) for a, b in zip(split, again))
    perm = embedded_task_stream("permuted", 3, 8)
    x0, x1 = perm[0]["train"][0], perm[1]["train"][0]
    assert np.array_equal(np.sort(x0.reshape(len(x0), -1), 1), np.sort(x1.reshape(len(x1), -1), 1))
    assert not np.array_equal(x0, x1)                         # same pixels, another layout
    nd = embedded_task_stream("near_duplicate", 3, 8)
    assert [t["name"] for t in nd] == ["digits01", "digits01-noisy", "digits23-inverted"]
    with pytest.raises(ValueError, match="data.num_tasks: 4 is not allowed for the 'near_duplicate' stream"):
        embedded_task_stream("near_duplicate", 4, 8)
    with pytest.raises(ValueError, match="data.source: 'cifar'"):
        embedded_task_stream("cifar", 2, 8)


def _tiny_tasks():
    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    y = np.tile([0, 1, 2, 3], 10)
    return [{"name": "a", "train": (x[:20], y[:20] % 2), "eval": (x[20:30], y[20:30] % 2)},
            {"name": "b", "train": (x[:20], 2 + y[:20] % 2), "eval": (x[30:], 2 + y[30:] % 2)}]


def test_bad_task_streams_are_rejected_naming_the_task():
    tasks = _tiny_tasks()
    empty = [tasks[0], {**tasks[1], "eval": (tasks[1]["eval"][0][:0], tasks[1]["eval"][1][:0])}]
    with pytest.raises(DataValidationError, match="task 'b' has no eval rows"):
        task_stream_from_arrays(empty, "s")
    unseen = [tasks[0], {**tasks[1], "eval": (tasks[1]["eval"][0], tasks[1]["eval"][1] + 5)}]
    with pytest.raises(DataValidationError, match=r"task 'b' has eval labels \[7, 8\] that its train rows never show"):
        task_stream_from_arrays(unseen, "s")
    one_class = [{**tasks[0], "train": (tasks[0]["train"][0], np.zeros(20, np.int64)),
                  "eval": (tasks[0]["eval"][0], np.zeros(10, np.int64))}]
    with pytest.raises(DataValidationError, match="fewer than 2 classes"):
        task_stream_from_arrays(one_class, "s")
    with pytest.raises(DataValidationError, match="the task stream is empty"):
        task_stream_from_arrays([], "s")


def test_task_parquet_validation(tmp_path):
    tasks = embedded_task_stream("split", 3, 8)
    path = tmp_path / "stream.parquet"
    write_task_parquet(tasks, str(path))
    info = _validate_task_parquet(str(path), None, ["digits45", "digits01"], 0, 0.2)
    assert info["order"] == ["digits45", "digits01"] and info["classes"] == ((4, 5), (0, 1))
    assert info["input_shape"] == (1, 8, 8)
    assert info["sizes"]["task1_train"] == len(tasks[2]["train"][1]) and info["sizes"]["task2_eval"] == len(
        tasks[0]["eval"][1])
    with pytest.raises(DataValidationError, match=r"data.task_order names \['digits99'\]"):
        _validate_task_parquet(str(path), None, ["digits01", "digits99"], 0, 0.2)
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    labels = t.column("label").to_numpy().copy()
    is_eval = np.asarray(t.column("split").to_pylist()) == "eval"
    first = np.asarray(t.column("task").to_pylist()) == "digits01"
    labels[is_eval & first] = 7           # eval labels the task's train rows never show
    pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels)),
                   tmp_path / "bad.parquet")
    with pytest.raises(DataValidationError, match=r"task 'digits01' has eval labels \[7\]"):
        _validate_task_parquet(str(tmp_path / "bad.parquet"), None, None, 0, 0.2)
    pq.write_table(t.drop_columns(["task"]), tmp_path / "notask.parquet")
    with pytest.raises(DataValidationError, match="column 'task' is missing"):
        _validate_task_parquet(str(tmp_path / "notask.parquet"), None, None, 0, 0.2)


def test_ray_data_bodies_select_rows_and_count_them_without_ray(tmp_path):
    """The map_batches bodies of the Ray paths, called on plain batches: parquet row selection per split/task
    (sizes agree with the validator) and per-task estimator counts (shard sums = whole-task counts)."""
    import pyarrow.parquet as pq

    from pipelines.data import _select_task_rows
    from trainers.continual.prepare import _task_counts
    from trainers.continual.similarity import histogram_counts, histogram_edges

    tasks = embedded_task_stream("split", 3, 8)
    path = tmp_path / "stream.parquet"
    write_task_parquet(tasks, str(path))
    info = _validate_task_parquet(str(path), None, ["digits23", "digits01"], 0, 0.2)
    table = pq.read_table(path)
    for split in ("train", "eval"):
        out = _select_task_rows(table, split=split, column="image", shape=(1, 8, 8), d=64, has_split=True, seed=0,
                                val_fraction=0.2, order=("digits23", "digits01"))
        t = out.column("t").to_numpy()
        assert out.num_rows == info["sizes"][split] and set(t) == {1, 2}
        assert set(out.column("y").to_numpy()[t == 1]) == {2, 3}
        assert out.column("x").combine_chunks().to_numpy().shape == (out.num_rows, 1, 8, 8)
    x = np.concatenate([tk["train"][0] for tk in tasks])
    tt = np.concatenate([np.full(len(tk["train"][1]), i + 1) for i, tk in enumerate(tasks)])
    edges = histogram_edges(0, 1, 16)
    halves = [_task_counts({"x": x[sl], "t": tt[sl]}, estimator="histogram", num_tasks=3, edges=edges)
              for sl in (slice(0, 400), slice(400, None))]
    total = {}
    for h in halves:
        for t, c in zip(h["t"], h["counts"]):
            total[int(t)] = total.get(int(t), 0) + c
    assert all(np.array_equal(total[i + 1], histogram_counts(tk["train"][0], edges)) for i, tk in enumerate(tasks))


# --------------------------------------------------------------------------- the loop in one process

def _stream(kind="split", n=3, size=8, seed=0):
    tasks = embedded_task_stream(kind, n, size, seed)

    def cat(k):
        return {"x": torch.from_numpy(np.concatenate([t[k][0] for t in tasks])),
                "y": torch.from_numpy(np.concatenate([t[k][1] for t in tasks])),
                "t": torch.from_numpy(np.concatenate([np.full(len(t[k][1]), i + 1) for i, t in enumerate(tasks)]))}

    classes = [tuple(sorted(set(t["train"][1].tolist()))) for t in tasks]
    ref = np.concatenate([t["train"][0][:150] for t in tasks])
    cb = fit_codebook(ref, 16, 16, seed=seed)
    c = [codebook_counts(t["train"][0], cb) for t in tasks]
    jsd = [[0.0 if i == j else jsd_from_counts(a, b) for j, b in enumerate(c)] for i, a in enumerate(c)]
    return tasks, cat("train"), cat("eval"), classes, jsd


def _learner(sets, kind="split", n=3, seed=0):
    tasks, tr, ev, classes, jsd = _stream(kind, n)
    cfg = load_config("continual", quick=True, sets=[f"data.source={kind}", f"data.num_tasks={n}"] + sets)
    torch.manual_seed(seed)
    base = build_model(cfg.model, (1, 8, 8), max(map(len, classes)))
    data = TaskData(tr, ev, classes, {i + 1: len(t["train"][1]) for i, t in enumerate(tasks)},
                    cfg.train.batch_size, cfg.train.batch_size, seed=cfg.seed)
    return ContinualLearner(cfg, TaskNet(base), jsd, data), tasks, classes


SGD = ["train.optimizer=sgd", "train.momentum=0.9", "train.weight_decay=0.01", "train.lr=0.05"]


def test_no_forgetting_owned_weights_bitwise_fixed_under_momentum_and_weight_decay():
    """Spec tests 7, 8, 9, 10, 11 (Reading A) in one 3-task run: owned weights bit-identical after later tasks,
    zeroed weights exactly 0, masks nested, capacity accounting, accuracy of old tasks unchanged (bwt = 0)."""
    L, _, _ = _learner(SGD)
    snaps = []
    for t in (1, 2, 3):
        m = L.learn(t)
        w = {k: v.detach().clone() for k, v in named_weights(L.base, L.names).items()}
        snaps.append((w, L.state.mask(t), L.state.owned()))
        assert m["bwt"] == 0.0                                       # exactly, not approximately
        assert all(bool((w[n][~snaps[-1][2][n]] == 0).all()) for n in w)  # everything not owned is exactly 0
    for t, (w_t, m_t, owned_t) in enumerate(snaps[:-1], 1):
        for n in L.names:
            now = named_weights(L.base, L.names)[n].detach()
            assert torch.equal(now[owned_t[n]], w_t[n][owned_t[n]]), (t, n)   # spec test 9: bitwise
            assert bool((m_t[n] <= snaps[t][1][n]).all())                    # spec test 11: nested masks
    acc = L.matrix
    assert all(acc[j][i] == acc[i][i] for j in range(3) for i in range(j + 1))  # spec test 10
    owned = [sum(int(o[n].sum()) for n in L.names) for _, _, o in snaps]
    news = [L.state.records[t]["counts"]["new"] for t in (1, 2, 3)]
    assert owned == [sum(news[0].values()), sum(news[0].values()) + sum(news[1].values()),
                     sum(sum(v.values()) for v in news)]                         # spec test 8
    for t in (2, 3):   # the later tasks did train: their new weights moved away from the 0 they started at
        new = snaps[t - 1][2]
        assert any(bool((snaps[t - 1][0][n][new[n] & ~snaps[t - 2][2][n]] != 0).any()) for n in L.names)


def test_similar_tasks_allocate_fewer_new_weights_and_finetune_forgets():
    """Spec test 17: a near-duplicate task (JSD < 0.1) takes fewer new weights than a dissimilar one (JSD ≥ 0.9);
    the no-mask baseline forgets (negative bwt) while the method does not."""
    L, _, _ = _learner([], kind="near_duplicate")
    ms = [L.learn(t) for t in (1, 2, 3)]
    assert ms[1]["jsd_to_source"] < 0.1 <= 0.9 <= ms[2]["jsd_to_source"]
    assert ms[1]["new_weights"] < ms[2]["new_weights"]
    r2 = L.state.records[2]["rates"]
    assert r2["conv4.weight"] == 1.0 and r2["conv1.weight"] == 0.0   # P4: no new conv4 weights, P1: empty pool
    assert L.state.records[2]["counts"]["new"]["conv4.weight"] == 0
    assert ms[2]["bwt"] == 0.0 and L.matrix[0][0] > 0.9
    F, _, _ = _learner(["method.variant=finetune", "train.epochs=4"], kind="split")
    fm = [F.learn(t) for t in (1, 2, 3)]
    assert fm[-1]["bwt"] < -0.2, F.matrix
    assert fm[-1]["new_weights"] == 0.0


def test_reading_b_packnet_and_filter_granularity_run_and_do_not_forget():
    for sets in (["method.reading=B"], ["method.variant=packnet", "method.packnet_rate=0.5"],
                 ["method.granularity=filter", "method.bias_policy=per_task"]):
        L, _, _ = _learner(sets)
        ms = [L.learn(t) for t in (1, 2, 3)]
        assert ms[-1]["bwt"] == 0.0, sets
        if "method.reading=B" in sets:
            rec = L.state.records[3]
            src = L.state.mask(rec["source"])
            m3, new3 = L.state.mask(3), rec["counts"]["new"]
            assert all(int(m3[n].sum()) == int(src[n].sum()) + new3[n] for n in L.names)  # M3 = M(s*) ∪ N3
        if "method.variant=packnet" in sets:
            free1 = L.state.records[1]["counts"]["free"]
            assert all(v == round(0.5 * free1[n]) for n, v in L.state.records[1]["counts"]["zeroed"].items())


def test_a_restored_learner_continues_exactly_where_it_stopped():
    """Checkpoint semantics: the state after task 2 loaded into a fresh learner gives task 3 bit for bit."""
    L, _, _ = _learner([])
    for t in (1, 2):
        L.learn(t)
    saved = L.state_dict()
    m3 = L.learn(3)
    R, _, _ = _learner([], seed=123)          # another init: everything must come from the checkpoint
    R.load_state_dict(saved)
    r3 = R.learn(3)
    assert r3 == m3 and R.matrix == L.matrix
    assert all(torch.equal(a, b) for a, b in zip(R.base.state_dict().values(), L.base.state_dict().values()))


class _StubAcc(ContinualLearner):
    """``accuracy`` answers from ``queue`` while it is non-empty (stubbed S100 accuracies), else for real."""
    queue: list

    def accuracy(self, t, net):
        return self.queue.pop(0) if self.queue else super().accuracy(t, net)


def _spy_phases(L):
    """Record the bare model's state right after every train_phase, keyed by (task, phase)."""
    after, orig = {}, L.train_phase

    def spy(t, epochs, trainable, phase):
        out = orig(t, epochs, trainable, phase)
        after[(t, phase)] = {k: v.clone() for k, v in L.base.state_dict().items()}
        return out

    L.train_phase = spy
    return after


_S100_MASKS: dict[str, bytes] = {}


@pytest.mark.parametrize("acc, kept", [((0.9, 0.5), 1), ((0.5, 0.9), 2), ((0.7, 0.7), 2)])
def test_s100_keeps_the_more_accurate_candidate(acc, kept):
    """Spec test 16 with the accuracies stubbed (task 2): candidate 1 wins → the weights right after S80 zeroing
    are kept; candidate 2 (or a tie) → the fine-tuned ones. The mask is the same either way."""
    L, _, _ = _learner([])
    L.__class__, L.queue = _StubAcc, []
    after = _spy_phases(L)
    L.learn(1)
    L.queue = list(acc)
    m = L.learn(2)
    assert m["s100_choice"] == float(kept) and (m["acc_cand1"], m["acc_cand2"]) == acc
    mask = L.state.mask(2)
    bits = L.state.masks[2].bits.tobytes()
    assert _S100_MASKS.setdefault("task2", bits) == bits          # the same mask whichever candidate is kept
    now = named_weights(L.base, L.names)
    for n in L.names:
        expect = (torch.where(mask[n], after[(2, 0)][n], torch.zeros(())) if kept == 1 else after[(2, 1)][n])
        assert torch.equal(now[n].detach(), expect), n
        assert bool((now[n].detach()[~mask[n]] == 0).all())


def test_task_1_has_no_candidate_selection():
    """R10: "for task 1 there is no candidate selection: the S40 output is the target model" — even when the
    model right after S30 would score higher, task 1 keeps its fine-tuned weights and logs no S100 metrics."""
    L, _, _ = _learner([])
    L.__class__, L.queue = _StubAcc, [0.9, 0.5]      # what an S100 on task 1 would see: cand1 better
    after = _spy_phases(L)
    m = L.learn(1)
    assert not {"s100_choice", "acc_cand1", "acc_cand2"} & set(m)
    assert L.state.records[1]["s100_choice"] is None
    now = L.base.state_dict()
    assert all(torch.equal(now[k], after[(1, 1)][k]) for k in now)   # = the S40 output


class _BNNet(nn.Module):
    """Two conv layers with BatchNorm and a linear head: normalisation layers inside the masked loop."""

    def __init__(self, head: int = 2):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4, head)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


@pytest.mark.parametrize("policy", ["freeze", "per_task"])
def test_normalisation_layers_do_not_forget_and_per_task_state_starts_from_the_source(policy):
    """A network with BatchNorm: under norm_policy "freeze" the running statistics stay those of task 1 (the
    modules are kept in eval mode from task 2 on), under "per_task" each task has its own copy and task t starts
    from the SOURCE task's copy (here task 3's source is task 1, not the last task). Either way every earlier
    task's inference outputs are bitwise unchanged by later tasks (spec test 10)."""
    tasks, tr, ev, classes, _ = _stream("split", 3)
    jsd = [[0.0, 0.6, 0.2], [0.6, 0.0, 0.7], [0.2, 0.7, 0.0]]            # task 3 → source task 1
    cfg = load_config("continual", quick=True, sets=["data.num_tasks=3", "train.epochs=2",
                                                     f"method.norm_policy={policy}", "method.bias_policy=per_task"]
                      + SGD)
    torch.manual_seed(0)
    base = _BNNet(2)
    data = TaskData(tr, ev, classes, {i + 1: len(t["train"][1]) for i, t in enumerate(tasks)},
                    cfg.train.batch_size, cfg.train.batch_size, seed=0)
    L = ContinualLearner(cfg, TaskNet(base), jsd, data)
    start = {}
    orig = L.train_phase

    def spy(t, epochs, trainable, phase):
        if phase == 0:
            start[t] = {k: v.clone() for k, v in L.base.state_dict().items()}
        return orig(t, epochs, trainable, phase)

    L.train_phase = spy
    x = torch.from_numpy(tasks[0]["eval"][0][:16])
    outs, bn1 = {}, {}
    for t in (1, 2, 3):
        m = L.learn(t)
        outs[t] = {s: L.inference_model(s).eval()(x).detach() for s in range(1, t + 1)}
        bn1[t] = L.base.bn1.running_mean.clone()
        assert m["bwt"] == 0.0
    assert L.state.records[3]["source"] == 1
    for s in (1, 2):
        for t in range(s + 1, 4):
            assert torch.equal(outs[t][s], outs[s][s]), (s, t)
    if policy == "freeze":
        assert torch.equal(bn1[3], bn1[1]) and torch.equal(bn1[2], bn1[1])
        assert "bn1.running_mean" not in L.state.task_states[1]
    else:
        ts = L.state.task_states
        for k in ("bn1.running_mean", "bn1.weight", "conv1.bias"):
            assert torch.equal(start[3][k], ts[1][k]) and not torch.equal(ts[1][k], ts[2][k]), k


def test_per_task_helpers():
    assert accuracy_summary([[0.9], [0.8, 0.7], [0.6, 0.7, 0.5]]) == (pytest.approx(0.6), pytest.approx(-0.15))
    assert accuracy_summary([[0.5]]) == (0.5, 0.0)
    assert local_labels(torch.tensor([4, 5, 5]), (4, 5)).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        local_labels(torch.tensor([3]), (4, 5))
    cfg = load_config("continual")
    st = ContinualState(("w",), ((2,),))
    for s in (1, 2):
        st.add_task(s, {"w": torch.tensor([s == 1, s == 2])}, record={"rate_scalar": 0.5})
    jsd = [[0, 0.3, 0.6], [0.3, 0, 0.2], [0.6, 0.2, 0]]
    assert choose_source(cfg.method, 3, st, jsd) == (2, 0.2, [1, 2])        # spec test 15
    rates = task_rates(cfg.method, {"a": "conv4", "b": "dense", "c": "conv1"}, 3, 0.2, {"a": 5, "b": 5, "c": 0})
    assert rates == {"a": 0.9, "b": 0.75, "c": 0.0}
    pk = load_config("continual", sets=["method.variant=packnet", "method.packnet_rate=0.3"]).method
    assert task_rates(pk, {"a": "conv1", "b": "dense"}, 1, float("nan"), {"a": 4, "b": 0}) == {"a": 0.3, "b": 0.0}


def test_predict_from_a_checkpoint_matches_the_masked_model(tmp_path):
    """R11: predict(checkpoint, task, x) = argmax of the task's first C_t logits of W ⊙ M^(task), as a global
    label; bad inputs are one clear error. Also through `trainlab predict continual`."""
    L, tasks, classes = _learner([])
    for t in (1, 2):
        L.learn(t)
    meta = {"input_shape": [1, 8, 8], "head": 2, "model": L.cfg.model.model_dump(mode="json"), "variant": "method",
            "task_names": [t["name"] for t in tasks], "task_classes": [list(c) for c in classes]}
    ck = tmp_path / "checkpoint_000002"
    ck.mkdir()
    torch.save({**L.state_dict(), "meta": meta, "epoch": 2}, ck / "state.pt")
    x = tasks[0]["eval"][0]
    labels, logits = predict(ck, 1, x, return_logits=True)
    ref = L.inference_model(1)(torch.from_numpy(x))[:, :2]
    assert torch.equal(torch.from_numpy(logits), ref.detach())
    assert set(labels.tolist()) <= {0, 1} and (labels == tasks[0]["eval"][1]).mean() == L.matrix[1][0]
    assert set(predict(ck, "digits23", tasks[1]["eval"][0]).tolist()) <= {2, 3}
    assert predict(ck, 1, x[0]).shape == (1,)
    with pytest.raises(ValueError, match=r"--task 3: the checkpoint has learned tasks \[1, 2\]"):
        predict(ck, 3, x)
    with pytest.raises(ValueError, match="--input: inputs of shape"):
        predict(ck, 1, x[:, :, :4])
    with pytest.raises(ValueError, match="no state.pt found"):
        predict(tmp_path / "nowhere", 1, x)
    np.save(tmp_path / "x.npy", x)
    res = CliRunner().invoke(app, ["predict", "continual", "--checkpoint", str(ck), "--task", "1", "--input",
                                   str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")])
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(tmp_path / "y.npy"), labels)
    res = CliRunner().invoke(app, ["predict", "ssd2gan", "--checkpoint", str(ck), "--task", "1", "--input",
                                   str(tmp_path / "x.npy")])
    assert res.exit_code == 2 and "allowed: continual" in res.output


# --------------------------------------------------------------------------- e2e (real Ray, real MLflow)

def _metric_history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.mark.e2e
def test_quick_run_logs_the_accuracy_matrix_and_does_not_forget(ray_session, workdir):
    from conftest import mlflow_client

    # local mode (Ray Train's num_workers=0): Ray Train's workers are the 2-worker and SIGKILL tests'
    res = CliRunner().invoke(app, ["run", "continual", "--quick", "--num-workers", "0"])
    assert res.exit_code == 0, res.output
    (run,) = mlflow_runs("trainlab/continual")
    assert run.info.status == "FINISHED" and run.data.tags["variant"] == "method"
    assert run.data.tags["task_order"] == "digits01,digits23,digits45"
    m, c = run.data.metrics, mlflow_client()
    assert m["bwt"] == 0.0 and m["epoch"] == 3.0
    for i in (1, 2, 3):
        hist = _metric_history(c, run.info.run_id, f"acc_task_{i}")
        assert sorted(hist) == list(range(i, 4))                        # acc_task_i at steps j = i..3
        assert len(set(hist.values())) == 1                             # never changes after it is learned
    assert m["avg_acc"] == pytest.approx(np.mean([m[f"acc_task_{i}"] for i in (1, 2, 3)]))
    assert m["avg_acc"] > 0.7
    jsd = _metric_history(c, run.info.run_id, "jsd_to_source")
    assert sorted(jsd) == [2, 3] and all(0 <= v <= 1 for v in jsd.values())
    new, free = (_metric_history(c, run.info.run_id, k) for k in ("new_weights", "free_weights"))
    assert all(free[j + 1] == free[j] - new[j + 1] for j in (1, 2))     # capacity accounting
    arts = mlflow_artifacts(run.info.run_id)
    for a in ("plots/accuracy_matrix.png", "plots/capacity.png", "masks/masks.npz", "continual_log.json"):
        assert a in arts, arts
    ckpt = run.data.tags["checkpoint"]
    x = embedded_task_stream("split", 3, 16)[1]["eval"][0]
    assert set(predict(ckpt, 2, x).tolist()) <= {2, 3}
    # the run's MLflow model predicts for the task given per call, as `predict` on the checkpoint does
    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                            filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list")
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    for task in ("1", "2", "digits45"):
        assert np.array_equal(model.predict(x, params={"task": task}), predict(ckpt, task, x))
    with pytest.raises(ValueError, match="--task: continual predicts with one task's masks"):
        model.predict(x)


def _final_and_task_checkpoints(storage: str) -> list[dict]:
    files = glob.glob(os.path.join(storage, "checkpoint_*", "state.pt"))
    return sorted((torch.load(f, weights_only=False) for f in files), key=lambda s: s["epoch"])


@pytest.mark.e2e
def test_two_workers_keep_owned_weights_bitwise_with_sgd_momentum_and_weight_decay(ray_session, workdir):
    """2 Ray Train workers (gloo, DDP): masks computed on both workers agree (checked in the loop), and the
    weights each task owns are bit-identical in every later checkpoint under SGD momentum + weight decay."""
    from pipelines.run import train

    cfg = load_config("continual", quick=True, sets=SGD + ["scaling.num_workers=2", "train.checkpoints_to_keep=3",
                                                           "train.batch_size=32"])
    res = train("continual", cfg)
    assert res.metrics["bwt"] == 0.0
    states = _final_and_task_checkpoints(res.storage_path)
    assert [s["epoch"] for s in states] == [1, 2, 3]
    final = states[-1]["model"]
    for s in states[:-1]:
        cs = ContinualState.from_dict(s["continual"])
        owned = cs.owned()
        for n in cs.names:
            key = n
            assert torch.equal(final[key][owned[n]], s["model"][key][owned[n]]), (s["epoch"], n)
            assert bool((s["model"][key][~owned[n]] == 0).all())
        assert math.isfinite(s["history"][-1]["avg_acc"])


@pytest.mark.e2e
def test_user_parquet_stream_through_ray_data_and_the_whole_dataset_jsd(ray_session, tmp_path):
    """A parquet task stream with a task order is read with Ray Data; prepare's JSD (counts summed over Ray Data
    batches) equals the JSD of the whole task arrays computed in one piece."""
    from pipelines.data import read_task_parquet
    from trainers.continual.prepare import prepare

    tasks = embedded_task_stream("near_duplicate", 3, 8)
    path = tmp_path / "s.parquet"
    write_task_parquet(tasks, str(path))
    cfg = load_config("continual", sets=[f"data.source={path}", "data.task_order=[digits23-inverted, digits01, "
                                                                "digits01-noisy]", "method.estimator=histogram"])
    ts = read_task_parquet(str(path), None, cfg.data.task_order, 0, 0.2)
    assert ts.task_names == ("digits23-inverted", "digits01", "digits01-noisy")
    assert ts.task_classes == ((2, 3), (0, 1), (0, 1)) and ts.num_classes == 2
    assert ts.sizes["train"] == sum(len(t["train"][1]) for t in tasks)
    rows = ts.datasets["eval"].take_all()
    assert {int(r["t"]) for r in rows} == {1, 2, 3} and len(rows) == ts.sizes["eval"]
    check(cfg, ts)
    prep = prepare(cfg, ts).facts
    from trainers.continual.similarity import histogram_counts, histogram_edges
    e = histogram_edges(0, 1, 32)
    order = [2, 0, 1]
    direct = [histogram_counts(tasks[i]["train"][0], e) for i in order]
    assert prep.counts == [c.tolist() for c in direct]
    # pooled intensity histograms: the noisy copy is nearer to task 1 than the inverted digits are (≈ 0.16 vs 0.21;
    # the codebook estimator, the default, separates them far better: ≈ 0.01 vs 1.0)
    assert prep.jsd[1][2] == jsd_from_counts(direct[1], direct[2]) < prep.jsd[0][1]


@pytest.mark.e2e
def test_tiny_sweep_nests_trials_and_logs_the_best_config(ray_session, workdir):
    """`trainlab sweep continual --quick`, 2 trials over a space of continual entries (the registry's task-1
    profile and the Fig. 8 JSD thresholds as their own key): one MLflow parent run, 2 nested child runs with
    ``avg_acc``, and the best trial's config on the parent (``best.*`` params and ``best_config.yaml``)."""
    import yaml

    from conftest import mlflow_client
    from trainers import get_method

    space = {"method.task1_profile": get_method("continual").search_space["method.task1_profile"],
             "method.rate_table.thresholds": {"choice": [[0.1, 0.5, 0.9], [0.05, 0.3, 0.7]]}}
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    res = CliRunner().invoke(app, ["sweep", "continual", "--quick", "--num-samples", "2", "--max-concurrent", "2",
                                   "--scheduler", "fifo", "--space", str(workdir / "space.yaml"),
                                   "--set", "data.num_tasks=2", "--set", "data.image_size=8",
                                   "--set", "train.epochs=2", "--set", "tracking.log_model=false"])
    assert res.exit_code == 0, res.output
    runs = mlflow_runs("trainlab/continual")
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    accs = [c.data.metrics["avg_acc"] for c in children]
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert parent.data.metrics["best_avg_acc"] == pytest.approx(max(accs))
    best = children[accs.index(max(accs))]
    profile = parent.data.params["best.method.task1_profile"]
    thresholds = parent.data.params["best.method.rate_table.thresholds"]
    if accs.count(max(accs)) == 1:   # a tie may name either child
        assert profile == best.data.params["method.task1_profile"]
        assert thresholds == best.data.params["method.rate_table.thresholds"]
    for c in children:
        assert c.data.params["method.task1_profile"] in ("fig5a", "fig5b")
        assert yaml.safe_load(c.data.params["method.rate_table.thresholds"]) in ([0.1, 0.5, 0.9], [0.05, 0.3, 0.7])
    cfg = yaml.safe_load(open(mlflow_client().download_artifacts(parent.info.run_id, "best_config.yaml",
                                                                 str(workdir))))
    assert cfg["method"]["task1_profile"] == profile
    assert cfg["method"]["rate_table"]["thresholds"] == yaml.safe_load(thresholds)
    assert cfg["data"]["num_tasks"] == 2 and cfg["train"]["epochs"] == 2
