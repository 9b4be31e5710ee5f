"""Search spaces: the registry's defaults or a user's YAML, in one plain format.

A space maps dotted config keys to one distribution each::

    method.lambda3: {loguniform: [0.05, 20]}
    method.aggregation: {choice: [sq, abs]}
    train.lr: {uniform: [0.01, 0.2]}
    train.batch_size: {randint: [32, 257]}      # upper bound exclusive, like tune.randint
    model.width: {qrandint: [8, 64, 8]}
    train.epochs: 4                              # a plain value is fixed for every trial
"""
from __future__ import annotations

from typing import Any

from ray import tune

from trainers.common.config import ConfigError, build_config, dotted_to_nested, read_yaml

DISTRIBUTIONS = {
    "uniform": (tune.uniform, 2), "loguniform": (tune.loguniform, 2), "randint": (tune.randint, 2),
    "qrandint": (tune.qrandint, 3), "quniform": (tune.quniform, 3), "choice": (tune.choice, 1),
}


def load_space(path: str) -> dict[str, Any]:
    data = read_yaml(path, flag="--space")
    return data.get("space", data)


def to_tune(space: dict[str, Any], config_cls, base: dict | None = None) -> dict[str, Any]:
    """Validate a space against the method's config and turn it into Tune domains."""
    out: dict[str, Any] = {}
    ends: dict[str, list] = {}
    for key, spec in space.items():
        if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS:
            kind, args = next(iter(spec.items()))
            fn, nargs = DISTRIBUTIONS[kind]
            if kind == "choice":
                if not isinstance(args, list) or not args:
                    raise ConfigError(f"space.{key}: choice needs a non-empty list of values")
                samples = args
                out[key] = fn(args)
            else:
                if not isinstance(args, list) or len(args) != nargs or not all(isinstance(a, (int, float)) for a in args):
                    raise ConfigError(f"space.{key}: {kind} needs a list of {nargs} numbers, got {args!r}")
                if args[0] >= args[1] or (kind == "loguniform" and args[0] <= 0):
                    raise ConfigError(f"space.{key}: {kind} bounds {args[:2]} must satisfy "
                                      f"{'0 < ' if kind == 'loguniform' else ''}low < high")
                samples = [args[0], args[1] - (1 if kind == "randint" else 0)]
                out[key] = fn(*args)
        elif isinstance(spec, dict):
            raise ConfigError(f"space.{key}: unknown distribution {list(spec)}; allowed: {', '.join(DISTRIBUTIONS)}")
        else:
            samples = [spec]
            out[key] = spec
        ends[key] = samples
    # every end of every range must be a valid config value, with the other keys of the space at one of their own
    # values (their first): fields that depend on each other (shift_explainer's selection=threshold needs tau1,
    # which the space also samples) are valid together, as every trial sets them together
    first = {k: v[0] for k, v in ends.items()}
    for key, samples in ends.items():
        for v in samples:
            try:
                build_config(config_cls, base, dotted_to_nested({**first, key: v}))
            except ConfigError as e:
                raise ConfigError(f"space.{key} = {v!r} is not a valid config value:\n  {e}") from None
    return out
