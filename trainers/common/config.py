"""Typed run configuration shared by every method, and its loading from YAML / ``--set``.

A run's config is one pydantic model: the common sections (``seed``, ``train``, ``scaling``,
``tracking``) defined here plus each method's ``data``, ``model`` and ``method`` sections defined
in ``trainers/<method>/config.py``. Every numeric field states its range in the schema, and every
error is reported as ``<dotted.field>: <what is wrong> (allowed: ...)`` before any worker starts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names the field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainSection(Section):
    epochs: int = Field(12, ge=1, le=10_000, description="passes over the labelled training split")
    batch_size: int = Field(64, ge=2, le=65_536, description="GLOBAL batch size, split evenly over workers")
    lr: float = Field(2e-3, gt=0, le=10.0, description="learning rate")
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    weight_decay: float = Field(0.0, ge=0, le=1)
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = autocast on GPU; losses stay fp32")
    max_failures: int = Field(1, ge=-1, le=100, description="worker failures to recover from (Ray FailureConfig)")
    checkpoints_to_keep: int = Field(2, ge=1, le=1000)


class ScalingSection(Section):
    num_workers: int = Field(1, ge=0, le=1024, description=(
        "Ray Train data-parallel workers; 0 = Ray Train's local mode: the loop runs in the driver process "
        "(no worker actors, no restart on failure; checkpoints still kept, a rerun of the run name resumes)"))
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, le=256)
    data_cpus: float = Field(1.0, ge=0.25, le=256, description="CPUs kept free for Ray Data tasks")

    @property
    def local(self) -> bool:
        """Ray Train's local mode (``ScalingConfig(num_workers=0)``): one process, the driver's."""
        return self.num_workers == 0

    @property
    def world_size(self) -> int:
        """How many processes train: the workers, or the driver alone in local mode."""
        return max(1, self.num_workers)


class TrackingSection(Section):
    experiment: str | None = Field(None, description="MLflow experiment; default trainlab/<method>")
    log_model: bool = True
    system_metrics: bool = Field(True, description="log CPU, memory, disk, network (and GPU where present) of each "
                                                   "node to the run (MLflow's system metrics monitor)")
    system_metrics_interval_s: float = Field(5.0, ge=0.5, le=3600, description="seconds between system samples")


@dataclass(frozen=True)
class Knob:
    """A config value that budget calibration (``tuning.budget``) turns, in a search coordinate ``u``.

    ``metric`` must grow (weakly) with ``u``; ``overrides(u)`` is the config layer that sets it;
    ``shown(u)`` is the value in the config's own units (for logs)."""
    name: str
    lo: float
    hi: float
    start: float
    overrides: Callable[[float], dict]
    metric: str
    target: float
    tolerance: float
    max_runs: int
    shown: Callable[[float], float]


class BaseRunConfig(Section):
    """Sections every method has. Methods subclass this and add ``data``, ``model``, ``method``."""

    seed: int = Field(0, ge=0, le=2**31 - 1)
    train: TrainSection = TrainSection()
    scaling: ScalingSection = ScalingSection()
    tracking: TrackingSection = TrackingSection()

    @model_validator(mode="after")
    def _batch_divides_over_workers(self):
        n, b = self.scaling.world_size, self.train.batch_size
        if b % n or b // n < 2:
            raise ValueError(
                f"train.batch_size ({b}) must be a multiple of scaling.num_workers ({n}) with at least "
                f"2 samples per worker; allowed: a multiple of {n} that is >= {2 * n}")
        return self

    def budget_knob(self) -> Knob | None:
        """Methods with a budget mode return what calibration turns (see :class:`Knob`); others None."""
        return None


# ---------------------------------------------------------------------------------------------
# Loading: defaults < quick overrides < YAML file < --set key=value < explicit CLI flags
# ---------------------------------------------------------------------------------------------

def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dotted_to_nested(flat: dict[str, Any]) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {key if key.isprintable() else repr(key)}: empty component in dotted key")
        cur = nested
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"--set {key if key.isprintable() else repr(key)}: '{p}' is set both as a value "
                                  "and as a section")
        cur[parts[-1]] = value
    return nested


def parse_set_args(items: list[str] | None) -> dict:
    """``["train.lr=0.1", "method.variant=B"]`` -> nested dict; values parsed as YAML scalars."""
    flat: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=0.01")
        key, raw = item.split("=", 1)
        shown = key if key.isprintable() else repr(key)     # a message is one line, whatever the key holds
        try:
            flat[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"--set {shown}: value {raw!r} is not valid YAML ({why}); quote it, e.g. "
                              f"--set '{shown}=\"...\"'") from None
    return dotted_to_nested(flat)


def read_yaml(path: str | Path, flag: str = "--config") -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} {p}: file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{flag} {p}: not valid YAML{where} ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} {p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _allowed(cls: type[BaseModel], loc: tuple) -> str:
    """Describe the allowed keys / values for an error at ``loc`` in model ``cls``."""
    model: Any = cls
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        model = fields[part].annotation
    fields = getattr(model, "model_fields", None)
    if not fields:
        return ""
    last = loc[-1]
    if last not in fields:
        return f" (allowed keys: {', '.join(sorted(fields))})"
    f = fields[last]
    bounds = []
    for m in f.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{sym} {getattr(m, attr)}")
    return f" (allowed: {' and '.join(bounds)})" if bounds else ""


def format_validation_error(cls: type[BaseModel], err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        field = ".".join(loc) or "<config>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = e.get("input")
        got_s = f" (got {got!r})" if e["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"{field}: {msg}{got_s}{_allowed(cls, loc) if e['type'] in ('extra_forbidden', 'greater_than', 'greater_than_equal', 'less_than', 'less_than_equal') else ''}")
    return "invalid config:\n  " + "\n  ".join(lines)


def build_config(cls: type[BaseRunConfig], *layers: dict | None) -> BaseRunConfig:
    """Merge dict layers over the class defaults (later wins) and validate into ``cls``; raise
    :class:`ConfigError`. Starting from the defaults keeps a method's own section defaults (e.g. its
    ``train.epochs``) when a layer sets only some keys of that section."""
    merged: dict = cls().model_dump(mode="json")
    for layer in layers:
        if layer:
            merged = _merge(merged, layer)
    try:
        return cls.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(cls, e)) from None


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> ``{"train.lr": 0.05, ...}`` (lists kept as their string form)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def describe_fields(model_cls: type[BaseModel], base: BaseModel | None = None, prefix: str = "") -> list[dict]:
    """Every config field of ``model_cls`` as ``{field, type, default, allowed, description}``: the dotted name
    ``--set`` takes, the default (``base``'s value where given, e.g. a ``--quick`` config), the range or choices the
    schema enforces, and the field's description (``trainlab run METHOD --describe``)."""
    import annotated_types
    import typing

    rows: list[dict] = []
    for name, info in model_cls.model_fields.items():
        value = getattr(base, name) if base is not None else info.get_default(call_default_factory=True)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, value if isinstance(value, BaseModel) else None, f"{prefix}{name}."))
            continue
        bounds = []
        for m in info.metadata:
            for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if isinstance(m, getattr(annotated_types, attr.capitalize())):
                    bounds.append(f"{op} {getattr(m, attr)}")
        choices = [a for a in typing.get_args(ann) if typing.get_origin(ann) is Literal]
        if not choices:  # Optional[Literal[...]]
            for arg in typing.get_args(ann):
                if typing.get_origin(arg) is Literal:
                    choices = list(typing.get_args(arg)) + (["null"] if type(None) in typing.get_args(ann) else [])
        type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append({"field": prefix + name, "type": "choice" if choices else type_name,
                     "default": value.model_dump(mode="json") if isinstance(value, BaseModel) else value,
                     "allowed": ", ".join(map(str, choices)) if choices else " and ".join(bounds),
                     "description": info.description or ""})
    return rows
