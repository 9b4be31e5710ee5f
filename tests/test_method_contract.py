"""The contract every registered method keeps, parametrised over the registry (a new method is covered without
editing a test): its quick config validates and survives a JSON round trip, its default search space is accepted by
`trainlab sweep` (real config fields, every range end valid with the other sampled fields; this found that
`trainlab sweep shift_explainer` refused its own space), its summary and sweep metrics are declared, and its embedded data
passes its own driver-side checks at the quick batch size."""
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
