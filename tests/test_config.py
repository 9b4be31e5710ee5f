"""Config, resource and search-space validation: every bad input gets one message naming the field."""
from __future__ import annotations

import pytest

from pipelines.cluster import ResourceError, ResourceRequest, check_resources
from pipelines.run import load_config
from trainers import UnknownMethodError, get_method, method_keys
from trainers.common.config import ConfigError, parse_set_args


def test_registry_lists_decorrelation_and_builds_its_spec():
    assert "decorrelation" in method_keys()
    spec = get_method("decorrelation")
    assert spec.metric in spec.summary_metrics and spec.mode in ("max", "min")
    cfg = load_config("decorrelation")
    assert cfg.method.variant == "A" and cfg.train.batch_size % cfg.scaling.num_workers == 0


def test_unknown_method_names_the_allowed_ones():
    with pytest.raises(UnknownMethodError, match="allowed: decorrelation"):
        get_method("decorelation")


def test_layers_merge_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.3\n  epochs: 7\nmethod:\n  variant: B\n")
    cfg = load_config("decorrelation", str(f), ["train.lr=0.01", "method.layers_unlabelled=[conv2, fc1]"],
                      quick=True, overrides={"seed": 5})
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 7 and cfg.method.variant == "B"
    assert cfg.method.layers_unlabelled == ["conv2", "fc1"] and cfg.seed == 5
    assert cfg.train.batch_size == get_method("decorrelation").quick["train"]["batch_size"]


BAD = [
    (["train.lr=-1"], "train.lr", "greater than 0"),
    (["train.lr=abc"], "train.lr", "valid number"),
    (["train.epochs=0"], "train.epochs", ">= 1"),
    (["train.optimizer=rmsprop"], "train.optimizer", "'sgd', 'adam' or 'adamw'"),
    (["train.momentum=1.0"], "train.momentum", "< 1"),
    (["train.precision=fp8"], "train.precision", "'fp32' or 'bf16'"),
    (["method.variant=D"], "method.variant", "'A', 'B', 'C', 'generic', 'supervised' or 'decov'"),
    (["method.lambda3=-0.5"], "method.lambda3", ">= 0"),
    (["method.aggregation=cube"], "method.aggregation", "'sq' or 'abs'"),
    (["method.reduction=median"], "method.reduction", "'gap', 'gmp' or 'flatten'"),
    (["method.layers_unlabelled=[]"], "method.layers_unlabelled", "at least 1"),
    (["method.lamda3=1"], "method.lamda3", "unknown key"),
    (["method.variant=supervised", "method.lambda2=0"], "method.lambda2", "must be > 0"),
    (["scaling.num_workers=-1"], "scaling.num_workers", ">= 0"),
    (["scaling.num_workers=3", "train.batch_size=64"], "train.batch_size", "multiple of scaling.num_workers"),
    (["scaling.cpus_per_worker=0"], "scaling.cpus_per_worker", "greater than 0"),
    (["scaling.data_cpus=0"], "scaling.data_cpus", ">= 0.25"),
    (["data.image_size=4"], "data.image_size", ">= 8"),
    (["data.shift=[melt]"], "data.shift.0", "'thicken', 'rotate', 'noise', 'invert' or 'blur'"),
    (["data.val_fraction=0.9"], "data.val_fraction", "<= 0.45"),
    (["seed=-3"], "seed", ">= 0"),
    (["model.name=resnet"], "model.name", "'cnn' or 'mlp'"),
    (["nonsense=1"], "nonsense", "unknown key"),
    (["trainlr=1"], "trainlr", "allowed keys"),
    (["train.lr"], "train.lr", "expected key=value"),
]


@pytest.mark.parametrize("sets,field,fragment", BAD, ids=[b[0][0] for b in BAD])
def test_bad_config_values_are_rejected_with_the_field_named(sets, field, fragment):
    with pytest.raises(ConfigError) as ei:
        load_config("decorrelation", sets=sets)
    msg = str(ei.value)
    assert field in msg and fragment in msg, msg


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("decorrelation", str(f))
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config("decorrelation", str(f))
    with pytest.raises(ConfigError, match="file not found"):
        load_config("decorrelation", str(tmp_path / "missing.yaml"))


def test_set_values_are_typed_yaml():
    assert parse_set_args(["a.b=3", "a.c=0.5", "d=[x, y]", "e=true"]) == {"a": {"b": 3, "c": 0.5}, "d": ["x", "y"], "e": True}


@pytest.mark.parametrize("req,res,fragment", [
    (ResourceRequest(3, 1, False, 1), {"CPU": 2}, "num_workers: 3 worker(s)"),
    (ResourceRequest(1, 1, False, 1), {"CPU": 1}, "allowed: num_workers <= 0"),
    (ResourceRequest(1, 1, True, 1), {"CPU": 8}, "--gpu: the Ray cluster has no GPU"),
    (ResourceRequest(4, 1, True, 1), {"CPU": 16, "GPU": 2}, "need 4 GPUs"),
])
def test_impossible_resource_requests_fail_fast(req, res, fragment):
    with pytest.raises(ResourceError) as ei:
        check_resources(req, resources=res)
    assert fragment in str(ei.value)


def test_resource_request_that_fits_passes_and_concurrency_counts():
    check_resources(ResourceRequest(2, 1, False, 1), resources={"CPU": 3})
    with pytest.raises(ResourceError, match="2 concurrent trial"):
        check_resources(ResourceRequest(2, 1, False, 1), concurrent=2, resources={"CPU": 5})


def test_search_space_validation():
    from tuning.spaces import to_tune

    cls = get_method("decorrelation").config_cls
    space = to_tune(get_method("decorrelation").search_space, cls)
    assert set(space) == set(get_method("decorrelation").search_space)
    for bad, frag in [({"method.lambda3": {"loguniform": [0, 1]}}, "0 < low < high"),
                      ({"method.lambda3": {"gaussian": [0, 1]}}, "unknown distribution"),
                      ({"method.lambda3": {"uniform": [-1, 1]}}, "method.lambda3 = -1"),
                      ({"method.variant": {"choice": ["A", "Z"]}}, "method.variant = 'Z'"),
                      ({"train.lrr": 0.1}, "unknown key")]:
        with pytest.raises(ConfigError) as ei:
            to_tune(bad, cls)
        assert frag in str(ei.value), str(ei.value)
