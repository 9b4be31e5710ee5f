"""Zeroing rates of ``continual`` (JP7600768B2): the task-1 profiles (Fig. 5) and the task t ≥ 2 table (Fig. 8).

In this patent "initialization" (初期化) means setting a weight to exactly 0; the "initialization rate" is the per-layer
fraction of the free pool that is zeroed (PackNet's pruning ratio). Rule numbers are those of the implementation spec
the method was built from; ``docs/methods/continual.md`` describes the method. Plain Python: no torch, no Ray, no
MLflow. The argument checks that the sibling modules share (``_choice``, ``_rate_value``) live here too.

Rates (R1, R7, R8; :class:`RateTable`, :func:`rate_for`, :func:`task1_profile`)
    Task 1: Fig. 5(a) {conv1–3: 0, conv4, conv5, dense: 0.5} (default), Fig. 5(b) {0.1, 0.2, 0.3, 0.4, 0.5, 0.5}, or
    a user mapping group → rate ∈ [0, 1]. Task t ≥ 2: Fig. 8, bins [0, θ_1), [θ_1, θ_2), …, [θ_m, 1] with
    θ = (0.1, 0.5, 0.9) (JSD exactly at a threshold belongs to the upper bin; "0.9≦JSD" is the last row):
        conv1–3: 0 0 0 0 (no free weights after Fig. 5(a))   conv4: 1.00 .90 .75 .50
        conv5:   .95 .90 .75 .50                               dense: .80 .75 .75 .50
    Thresholds must be strictly increasing in [0, 1], rates in [0, 1]. P1: a layer whose free pool is empty gets 0.
    The same table is reused for every t ≥ 2 [AMBIG; "same processing as task 2"].
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

GROUPS = ("conv1", "conv2", "conv3", "conv4", "conv5", "dense")
TASK1_PROFILES: dict[str, dict[str, float]] = {
    "fig5a": {"conv1": 0.0, "conv2": 0.0, "conv3": 0.0, "conv4": 0.5, "conv5": 0.5, "dense": 0.5},
    "fig5b": {"conv1": 0.1, "conv2": 0.2, "conv3": 0.3, "conv4": 0.4, "conv5": 0.5, "dense": 0.5},
}
DEFAULT_THRESHOLDS = (0.1, 0.5, 0.9)
DEFAULT_TABLE_RATES: dict[str, tuple[float, ...]] = {
    "conv1": (0.0, 0.0, 0.0, 0.0), "conv2": (0.0, 0.0, 0.0, 0.0), "conv3": (0.0, 0.0, 0.0, 0.0),
    "conv4": (1.0, 0.9, 0.75, 0.5), "conv5": (0.95, 0.9, 0.75, 0.5), "dense": (0.8, 0.75, 0.75, 0.5),
}


def _choice(field_name: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name}: unknown value {value!r}; allowed values: {', '.join(allowed)}")


def _rate_value(field_name: str, v) -> float:
    try:
        r = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{field_name}: a rate must be a number in [0, 1], got {v!r}") from None
    if not (0.0 <= r <= 1.0):
        raise ValueError(f"{field_name}: a rate must be in [0, 1], got {v!r}")
    return r


def _jsd_value(jsd) -> float:
    try:
        x = float(jsd)
    except (TypeError, ValueError):
        raise ValueError(f"jsd: must be a number in [0, 1], got {jsd!r}") from None
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"jsd: must be in [0, 1] (base-2 Jensen–Shannon divergence), got {jsd!r}")
    return x


def task1_profile(profile: str | Mapping[str, float] = "fig5a") -> dict[str, float]:
    """The task-1 rate per group (R7): "fig5a" (default), "fig5b", or a user mapping group → rate in [0, 1]."""
    if isinstance(profile, str):
        _choice("task1_profile", profile, tuple(TASK1_PROFILES))
        return dict(TASK1_PROFILES[profile])
    if not isinstance(profile, Mapping) or not profile:
        raise ValueError(f"task1_profile: expected one of {', '.join(TASK1_PROFILES)} or a non-empty mapping "
                         f"group → rate in [0, 1], got {profile!r}")
    return {str(g): _rate_value(f"task1_profile[{g!r}]", r) for g, r in profile.items()}


def task1_rate(group: str, profile: str | Mapping[str, float] = "fig5a") -> float:
    """Task-1 rate of one group under ``profile``."""
    prof = task1_profile(profile)
    if group not in prof:
        raise ValueError(f"group: no task-1 rate for group {group!r}; allowed values: {', '.join(prof)}")
    return prof[group]


def profile_is_nondecreasing(profile: str | Mapping[str, float] = "fig5a", order: Sequence[str] = GROUPS) -> bool:
    """R7's preference: the task-1 rate does not decrease with depth (groups in ``order``, shallow first)."""
    prof = task1_profile(profile)
    vals = [prof[g] for g in order if g in prof]
    return all(b >= a for a, b in zip(vals, vals[1:]))


@dataclass(frozen=True)
class RateTable:
    """The task t ≥ 2 rate table (R8, Fig. 8): JSD thresholds and, per group, one rate per JSD bin.

    Build it with :func:`rate_table` (validated); ``thresholds`` θ_1 < … < θ_m in [0, 1]; ``rates[g]`` has m + 1
    entries in [0, 1]; bin i = [θ_i, θ_{i+1}) with θ_0 = 0 and the last bin [θ_m, 1]."""
    thresholds: tuple[float, ...]
    rates: dict[str, tuple[float, ...]] = field(hash=False)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.rates)

    def bin_index(self, jsd) -> int:
        x = _jsd_value(jsd)
        return sum(1 for th in self.thresholds if x >= th)

    def lookup(self, jsd, group: str) -> float:
        if group not in self.rates:
            raise ValueError(f"group: no rates for group {group!r} in the rate table; allowed values: "
                             f"{', '.join(self.rates)}")
        return self.rates[group][self.bin_index(jsd)]

    def row(self, jsd) -> dict[str, float]:
        i = self.bin_index(jsd)
        return {g: r[i] for g, r in self.rates.items()}

    def as_dict(self) -> dict:
        return {"thresholds": list(self.thresholds), "rates": {g: list(r) for g, r in self.rates.items()}}


def rate_table(table: RateTable | Mapping | None = None) -> RateTable:
    """Validated :class:`RateTable`: None → Fig. 8; a RateTable; or {"thresholds": [...], "rates": {group: [...]}}
    (a missing "thresholds" means the default (0.1, 0.5, 0.9); missing "rates" mean the Fig. 8 rates, which need
    exactly 3 thresholds — so a sweep can vary ``method.rate_table.thresholds`` and ``method.rate_table.rates``
    independently)."""
    if table is None:
        return RateTable(DEFAULT_THRESHOLDS, dict(DEFAULT_TABLE_RATES))
    if isinstance(table, RateTable):
        thresholds, rates = table.thresholds, table.rates
    elif isinstance(table, Mapping):
        unknown = set(table) - {"thresholds", "rates"}
        if unknown:
            raise ValueError(f"rate_table: unknown keys {sorted(unknown)}; allowed values: thresholds, rates")
        if not table:
            raise ValueError("rate_table: empty; expected keys thresholds and/or rates")
        thresholds = table.get("thresholds", DEFAULT_THRESHOLDS)
        rates = table.get("rates", DEFAULT_TABLE_RATES)
        if "rates" not in table:
            try:
                n_th = len(thresholds)
            except TypeError:
                n_th = -1
            if n_th != len(DEFAULT_THRESHOLDS):
                raise ValueError(f"rate_table.rates: missing; the default Fig. 8 rates have "
                                 f"{len(DEFAULT_THRESHOLDS) + 1} JSD bins, so thresholds without rates need exactly "
                                 f"{len(DEFAULT_THRESHOLDS)} values, got {thresholds!r}; otherwise give a mapping "
                                 "group → one rate per JSD bin")
    else:
        raise ValueError(f"rate_table: expected a RateTable or a mapping with keys thresholds, rates; got {table!r}")
    try:
        th = tuple(float(x) for x in thresholds)
    except (TypeError, ValueError):
        raise ValueError(f"rate_table.thresholds: expected a list of numbers in [0, 1], got {thresholds!r}") from None
    if not th or any(not (0.0 <= x <= 1.0) for x in th) or any(b <= a for a, b in zip(th, th[1:])):
        raise ValueError(f"rate_table.thresholds: must be a non-empty, strictly increasing list of values in "
                         f"[0, 1], got {list(thresholds)}")
    if not isinstance(rates, Mapping) or not rates:
        raise ValueError(f"rate_table.rates: expected a non-empty mapping group → rates, got {rates!r}")
    out: dict[str, tuple[float, ...]] = {}
    for g, rs in rates.items():
        if isinstance(rs, (str, bytes)) or not isinstance(rs, Iterable):
            raise ValueError(f"rate_table.rates[{g!r}]: expected {len(th) + 1} rates, got {rs!r}")
        rs = list(rs)
        if len(rs) != len(th) + 1:
            raise ValueError(f"rate_table.rates[{g!r}]: needs {len(th) + 1} rates (one per JSD bin, "
                             f"len(thresholds) + 1), got {len(rs)}")
        out[str(g)] = tuple(_rate_value(f"rate_table.rates[{g!r}][{i}]", r) for i, r in enumerate(rs))
    return RateTable(th, out)


def rate_for(jsd: float, group: str, table: RateTable | Mapping | None = None) -> float:
    """The Fig. 8 rate of ``group`` ("conv4", "conv5", "dense", …) for a task whose source JSD is ``jsd`` (R8)."""
    return rate_table(table).lookup(jsd, group)


def check_table_principles(table: RateTable | Mapping | None = None,
                           depth_order: Sequence[str] = ("conv4", "conv5", "dense")) -> list[str]:
    """Violations of P3 (every group's rate non-increasing in JSD) and P2 (in the first, most-similar bin the rate
    does not increase along ``depth_order``); [] if none. The patent calls Fig. 8 an example, so a user table is
    not rejected for violating them."""
    t = rate_table(table)
    problems = []
    for g, rs in t.rates.items():
        if any(b > a for a, b in zip(rs, rs[1:])):
            problems.append(f"P3: rates of {g!r} increase with JSD: {list(rs)}")
    first = [(g, t.rates[g][0]) for g in depth_order if g in t.rates]
    for (ga, a), (gb, b) in zip(first, first[1:]):
        if b > a:
            problems.append(f"P2: in the lowest-JSD bin {gb!r} ({b}) has a larger rate than shallower {ga!r} ({a})")
    return problems
