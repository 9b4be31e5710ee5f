"""The contract every registered method keeps, parametrised over the registry (a new method is covered without
editing a test): its quick config validates and survives a JSON round trip, its default search space is accepted by
`trainlab sweep` (real config fields, every range end valid with the other sampled fields; this found that
`trainlab sweep shift_explainer` refused its own space), its summary and sweep metrics are declared, its embedded data
passes its own driver-side checks at the quick batch size, and its learner (the shared runner's interface) takes two
finite units, restores its state exactly (this found that ssd2gan's restored step count was not restored) and concludes."""
from __future__ import annotations

import pytest

from pipelines.run import load_config
from trainers import get_method, method_keys
from tuning.spaces import to_tune

KEYS = method_keys()


@pytest.mark.parametrize("key", KEYS)
def test_quick_config_validates_and_round_trips(key):
    spec = get_method(key)
    cfg = load_config(key, quick=True)
    assert isinstance(cfg, spec.config_cls)
    again = spec.config_cls.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg
    assert load_config(key) != cfg, "--quick changes something"


@pytest.mark.parametrize("key", KEYS)
def test_spec_declares_what_the_driver_and_sweeps_read(key):
    spec = get_method(key)
    assert spec.mode in ("max", "min") and spec.metric
    assert spec.summary_metrics, "the terminal summary shows something"
    assert spec.train_split
    for base in (load_config(key), load_config(key, quick=True)):  # what `trainlab sweep KEY [--quick]` validates
        space = to_tune(spec.search_space, spec.config_cls, base.model_dump(mode="json"))
        assert set(space) == set(spec.search_space)
    if spec.checkpoint_score is not None:
        assert spec.checkpoint_score[1] in ("max", "min")


@pytest.mark.parametrize("key", KEYS)
def test_embedded_data_passes_the_methods_checks(key, ray_session):
    spec = get_method(key)
    cfg = load_config(key, quick=True)
    bundle = spec.build_data(cfg)
    assert spec.train_split in bundle.sizes and bundle.sizes[spec.train_split] >= cfg.train.batch_size
    assert set(bundle.datasets) <= set(bundle.sizes)
    if spec.check is not None:
        spec.check(cfg, bundle)
    if spec.reports is not None:
        assert spec.reports(cfg, bundle) >= 1


def _difference(a, b, at: str = "state") -> str | None:
    """Where two checkpoint states first differ (tensors bitwise, arrays exactly, the rest by ==), or None."""
    import numpy as np
    import torch

    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return f"{at}: keys {sorted(map(str, a))} vs {sorted(map(str, b)) if isinstance(b, dict) else type(b)}"
        return next((d for k in a if (d := _difference(a[k], b[k], f"{at}[{k!r}]"))), None)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{at}: {len(a)} vs {len(b)} items"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _difference(x, y, f"{at}[{i}]"))), None)
    if isinstance(a, torch.Tensor):
        return None if isinstance(b, torch.Tensor) and torch.equal(a, b) else f"{at}: tensors differ"
    if isinstance(a, np.ndarray):
        return None if np.array_equal(a, b, equal_nan=True) else f"{at}: arrays differ"
    if isinstance(a, float) and a != a:
        return None if b != b else f"{at}: nan vs {b!r}"
    return None if a == b else f"{at}: {a!r} vs {b!r}"


@pytest.mark.parametrize("key", KEYS)
def test_learner_takes_two_finite_units_and_its_state_round_trips(key, ray_session, tmp_path):
    """Each method's learner in this process (local mode, the shared runner's parts called one by one): two units
    with finite metrics and a progress line; its state restores into a fresh learner exactly; the last unit's
    conclusion and the after-run work (evaluation, plots) run."""
    import math

    from pipelines.run import driver_context
    from trainers.common.facts import LocalCheckpoints, Prepared, RunFacts
    from trainers.common.worker import TrialSession, Worker

    spec = get_method(key)
    assert spec.learner is not None, "a method provides its learner (trainers.common.runner.Learner)"
    cfg = load_config(key, quick=True, sets=["scaling.num_workers=0"])
    bundle = spec.build_data(cfg)
    prepared = spec.prepare(cfg, bundle, driver_context()) if spec.prepare is not None else Prepared()
    datasets = prepared.datasets if prepared.datasets is not None else bundle.datasets
    sizes = prepared.sizes or bundle.sizes
    import dataclasses

    facts = RunFacts.for_data(cfg, dataclasses.replace(bundle, datasets=datasets, sizes=sizes), spec.train_split,
                              prepared=prepared.facts).in_process("local", LocalCheckpoints(str(tmp_path), 1))
    seen = {}

    def body(config):
        w = Worker(config, spec.config_cls)
        learner = spec.learner(w)
        assert learner.units >= 2
        learner.begin()
        for u in (1, 2):
            out = learner.learn(u)
            assert out.line.startswith(f"[{key}]")
            bad = {k: v for k, v in out.metrics.items() if isinstance(v, float) and math.isinf(v)}
            assert not bad, f"unit {u}: infinite metrics {bad}"
            assert any(math.isfinite(v) for v in out.metrics.values())
        state = learner.state_dict()
        again = spec.learner(w)
        again.load_state_dict(state)
        assert _difference(state, again.state_dict()) is None, "a restored learner holds the same state"
        final = learner.conclude(2, learner.max_reason, out.metrics)
        # NaN marks a figure that does not apply (e.g. hue on grey images) and is not logged; inf never is
        assert not [k for k, v in final.items() if isinstance(v, float) and math.isinf(v)]
        learner.after(learner.max_reason)
        seen["ok"] = True

    TrialSession(datasets).run(body, {"cfg": cfg.model_dump(mode="json"), "run": facts})
    assert seen.get("ok")
