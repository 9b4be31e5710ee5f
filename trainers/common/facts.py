"""What the driver tells every worker of a run (its "run facts") and what a method's driver-side hook hands back:
typed, and each built in one place (:meth:`RunFacts.for_data`), so a worker reads attributes, not ``.get`` defaults.

Both travel to Ray Train workers, Tune trials and in-process loops inside the loop's config (pickled by Ray), so
they hold only plain values: ids, paths, sizes and the method's own precomputation."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal


def driver_niceness() -> int | None:
    """The driver's scheduling priority, which workers on its node match (``worker.match_driver_priority``)."""
    return os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None


@dataclass(frozen=True)
class LocalCheckpoints:
    """Where an in-process loop (local mode, an auxiliary job in local mode) keeps its checkpoints: ``dir`` (the
    run's storage), how many to ``keep``, and the optional ``(metric, mode)`` that ranks them."""

    dir: str
    keep: int
    score: tuple[str, str] | None = None


@dataclass(frozen=True)
class RunFacts:
    """``steps_per_epoch``: the collective steps every rank takes per epoch (same on all ranks). ``input_shape``,
    ``num_classes``, ``sizes`` (rows per split): the data as the driver validated it. ``cache_in_memory``: pull
    each shard into worker memory once. ``mlflow_run_id`` / ``tracking_uri`` / ``mlflow_pending_dir``: the run the
    chief logs into (None: log nothing, e.g. an auxiliary job or the benchmark). ``stop_file``: ``touch`` it to
    stop the run after its current unit. ``prepared``: the method's driver-side precomputation
    (:class:`Prepared.facts`). ``report_to``: where results and checkpoints go — ``ray`` (Ray Train), ``tune`` (a
    sweep trial's own process) or ``local`` (this process, checkpoints in ``local_checkpoints``)."""

    steps_per_epoch: int
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    cache_in_memory: bool = True
    run_name: str = "trainlab"
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    mlflow_pending_dir: str | None = None
    stop_file: str | None = None
    prepared: Any = None
    driver_niceness: int | None = None
    report_to: Literal["ray", "tune", "local"] = "ray"
    local_checkpoints: LocalCheckpoints | None = None

    @classmethod
    def for_data(cls, cfg, bundle, train_split: str, **kw) -> "RunFacts":
        """The facts of a job that trains on ``bundle``'s ``train_split`` with ``cfg``'s batch size."""
        return cls(steps_per_epoch=max(1, bundle.sizes[train_split] // cfg.train.batch_size),
                   input_shape=tuple(bundle.input_shape), num_classes=int(bundle.num_classes),
                   sizes=dict(bundle.sizes), cache_in_memory=getattr(getattr(cfg, "data", None), "cache_in_memory", True),
                   driver_niceness=driver_niceness(), **kw)

    def in_process(self, report_to: Literal["tune", "local"], checkpoints: LocalCheckpoints | None = None) -> "RunFacts":
        """The same facts for a loop run in this process (see ``worker.TrialSession``)."""
        if report_to == "local" and checkpoints is None:
            raise ValueError("a local-mode loop needs its checkpoint directory")
        return dataclasses.replace(self, report_to=report_to, local_checkpoints=checkpoints)


@dataclass(frozen=True)
class Prepared:
    """What ``MethodSpec.prepare`` returns: ``facts``, the method's own precomputation that every worker receives
    as ``RunFacts.prepared`` (a dataclass of the method's); and, when the method trains on datasets it derived
    (e.g. with batch-inference columns), those ``datasets`` with their ``sizes``, which replace the bundle's."""

    facts: Any = None
    datasets: dict | None = None
    sizes: dict[str, int] | None = None
