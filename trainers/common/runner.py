"""The one loop skeleton every method runs on each worker: restore → units of learning → stop → conclude →
report → stop reason, with the collective calls in the same order on every rank.

A method writes a :class:`Learner` (its state, one unit of learning, what it concludes with) and its
``train_loop_per_worker`` is ``run_learner(w, learner)``. Why one skeleton: ``Worker.stop_requested`` and
``Worker.report`` are collectives (an all-reduce; Ray Train's report is a barrier), so every rank must make the
same calls in the same order, and the stop decision must be the same on every rank; written once here, a sixth
method cannot get it wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from trainers.common.worker import Worker

# how the runner says why a run stopped before its last unit
STOP_WHY = {"user_stop": "stop requested by the user", "completion_threshold": "completion threshold reached"}


@dataclass
class Unit:
    """The outcome of one unit of learning (an epoch, an evaluation interval, a task). ``metrics``: what is logged
    and reported. ``line``: rank 0's progress line. ``notes``: further lines said after it. ``done``: the method's
    own reason to stop here (e.g. ``completion_threshold``); it must be the same on every rank (decide it from
    all-reduced figures)."""

    metrics: dict[str, float]
    line: str = ""
    notes: list[str] = field(default_factory=list)
    done: str | None = None


class Learner(Protocol):
    """What a method provides. ``name``: its progress-line prefix; ``units``: how many units a full run has;
    ``unit_name``: what a unit is called ("epoch", "task"); ``max_reason``: the stop reason when all units ran;
    ``resumable``: whether a (re)started job restores the latest checkpoint."""

    name: str
    units: int
    unit_name: str
    max_reason: str
    resumable: bool

    def begin(self) -> None:
        """A fresh start (nothing restored): e.g. statistics of the untrained model. All ranks."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs, checkpointed with every report."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state."""

    def learn(self, unit: int) -> Unit:
        """One unit of learning (1-based). All ranks; collectives inside are the method's, the same on every rank."""

    def conclude(self, unit: int, reason: str, metrics: dict[str, float]) -> dict[str, float]:
        """The last unit (for ``reason``), before its report: final figures (merged into its metrics, so they reach
        MLflow, Tune and the summary) and artifacts. All ranks."""

    def stop_tags(self, unit: int) -> dict[str, str]:
        """Extra MLflow tags set with ``stop_reason`` (e.g. how many steps or tasks ran)."""

    def after(self, reason: str) -> None:
        """After the last report: final evaluation, plots, model logging. All ranks."""


class LearnerBase:
    """Defaults for the optional parts of :class:`Learner`."""

    unit_name = "epoch"
    max_reason = "max_epochs"
    resumable = True

    def begin(self) -> None:
        pass

    def conclude(self, unit: int, reason: str, metrics: dict[str, float]) -> dict[str, float]:
        return {}

    def stop_tags(self, unit: int) -> dict[str, str]:
        return {}

    def after(self, reason: str) -> None:
        pass


def run_learner(w: Worker, learner: Learner) -> str:
    """Train ``learner`` on this worker to the end of its units or an earlier stop; returns the stop reason.

    Per unit, on every rank: ``learn`` → ``stop_requested`` (all-reduce) → ``conclude`` if this is the last unit →
    ``report`` (Ray Train's barrier; rank 0 checkpoints). A restarted job continues after the checkpoint's unit."""
    try:
        return _run(w, learner)
    finally:
        w.close()


def _run(w: Worker, learner: Learner) -> str:
    start = 1
    state = w.restore() if learner.resumable else None
    if state is not None:
        learner.load_state_dict(state)
        start = int(state["epoch"]) + 1
    else:
        learner.begin()
    reason = learner.max_reason
    for u in range(start, learner.units + 1):
        out = learner.learn(u)
        user_stop = w.stop_requested()
        stop = out.done or ("user_stop" if user_stop else None) or (learner.max_reason if u == learner.units else None)
        if stop is not None:
            out.metrics.update(learner.conclude(u, stop, out.metrics))
        if out.line:
            w.say(out.line)
        for note in out.notes:
            w.say(note)
        w.report(u, out.metrics, learner.state_dict())
        if stop is not None:
            reason = stop
            if stop in STOP_WHY:
                w.say(f"[{learner.name}] stopping at {learner.unit_name} {u}: {STOP_WHY[stop]}")
            w.set_tags({"stop_reason": stop, **learner.stop_tags(u)})
            break
    learner.after(reason)
    return reason
