"""The one registry of trainlab methods. The CLI, the sweeps, the benchmarks and the tests all read ``METHODS``.

Adding a method = one subpackage ``trainers/<key>/`` whose ``spec.py`` holds ``PATENT``, ``SUMMARY`` and
``spec() -> MethodSpec``, and one line in ``METHODS`` below (README, "Add a method"). Spec modules are imported
only when asked for, and import torch only inside ``spec()``, so listing the methods stays fast.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class MethodSpec:
    key: str
    patent: str
    summary: str
    config_cls: type                      # pydantic model: trainers.<key>.config
    train_loop: Callable[[dict], None]    # train_loop_per_worker, runs on every Ray Train worker
    build_data: Callable[[Any], Any]      # validated config -> pipelines.data.DataBundle (Ray Datasets)
    train_split: str                      # the split whose size sets the steps per epoch
    metric: str                           # what sweeps optimise ...
    mode: str                             # ... "max" or "min"
    search_space: dict[str, dict]         # dotted key -> {"loguniform": [lo, hi]} | {"choice": [...]} ...
    quick: dict = field(default_factory=dict)       # overrides for --quick (well under a minute)
    summary_metrics: tuple[str, ...] = ()            # shown in the terminal summary table
    variant_field: str | None = "variant"            # method.<field> reported as the MLflow tag
    learner: type | None = None                      # its trainers.common.runner.Learner: (Worker) -> units of learning
    check: Callable[[Any, Any], None] | None = None  # driver-side (cfg, bundle) checks before workers start
    prepare: Callable[[Any, Any, Any], Any] | None = None  # driver-side (cfg, bundle, DriverContext) ->
    #                                        trainers.common.facts.Prepared: facts for every worker (RunFacts.prepared)
    #                                        and optionally derived datasets that replace what the trainer trains on
    checkpoint_score: tuple[str, str] | None = None  # (metric, "max"|"min"): keep the best checkpoints by it
    reports: Callable[[Any, Any], int] | None = None  # (cfg, bundle) -> results a whole run reports to Tune
    #                                                  (default: train.epochs, one per epoch)
    # verbs a method may offer on a trained run's checkpoint (the CLI holds no method names):
    predict: Callable[[str, Any, Any], Any] | None = None  # `trainlab predict`: (checkpoint, task, inputs) -> labels
    explain: Callable[[str, list | None, str | None], tuple] | None = None  # `trainlab explain`: (checkpoint,
    #                                                  --set overrides, output path) -> (PNG path, figures)


def methods_with(hook: str) -> list[str]:
    """The keys whose spec offers ``hook`` (``"predict"``, ``"explain"``); imports every spec."""
    return [k for k in METHODS if getattr(get_method(k), hook) is not None]


# key -> the module holding the method's spec (one line per method)
METHODS: dict[str, str] = {
    "decorrelation": "trainers.decorrelation.spec",
    "ssd2gan": "trainers.ssd2gan.spec",
    "mixture_sparsity": "trainers.mixture_sparsity.spec",
    "continual": "trainers.continual.spec",
    "shift_explainer": "trainers.shift_explainer.spec",
}


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return f"unknown method {self.args[0]!r}; allowed: {', '.join(METHODS)}"


def method_keys() -> list[str]:
    return list(METHODS)


def _spec_module(key: str):
    if key not in METHODS:
        raise UnknownMethodError(key)
    return importlib.import_module(METHODS[key])


@functools.cache
def get_method(key: str) -> MethodSpec:
    spec = _spec_module(key).spec()
    if spec.key != key:
        raise RuntimeError(f"{METHODS[key]}.spec() returned the spec of {spec.key!r}, registered as {key!r}")
    return spec


def method_summaries() -> dict[str, tuple[str, str]]:
    """key -> (patent, one line), without importing torch (fast ``trainlab methods``)."""
    return {k: (_spec_module(k).PATENT, _spec_module(k).SUMMARY) for k in METHODS}
