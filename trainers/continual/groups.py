"""Which weights ``continual`` masks, and the rate group of each masked layer (layers → groups).

Also the per-layer rates that follow from the groups (:func:`task1_layer_rates`, :func:`layer_rates`) and ``Masks``,
the type of the masked-parameter-name → tensor mappings of the sibling modules. Rule numbers are those of the
implementation spec the method was built from; ``docs/methods/continual.md`` describes the method. No Ray, no MLflow.

Masked layers and groups (§2.1, §2.9 [AMBIG]; :func:`layer_groups`, :func:`depth_groups`)
    Every Conv (nn.Conv1d/2d/3d, transposed included) and nn.Linear ``.weight`` is masked; biases and normalisation
    parameters never are. The rate tables are defined per VGG16 block group "conv1" … "conv5", "dense". Default
    mapping by depth, in module registration order (= forward order for sequential nets): all Linear layers →
    "dense"; the n conv layers are split into 5 consecutive blocks of sizes ⌊n/5⌋, the deepest n mod 5 blocks one
    larger (VGG16's 13 convs → 2, 2, 3, 3, 3 = CONV1-x … CONV5-x exactly; 5 convs → one per group; 2 convs →
    "conv4", "conv5"). ``overrides`` (fnmatch pattern on the parameter or module name → group) changes any of it.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from trainers.continual.rates import GROUPS, RateTable, rate_table, task1_profile

N_CONV_GROUPS = 5

_MASKED_TYPES = (nn.modules.conv._ConvNd, nn.Linear)

Masks = Mapping[str, Tensor]


def depth_groups(kinds: Sequence[str], n_conv_groups: int = N_CONV_GROUPS) -> list[str]:
    """Group of each layer from its kind ("conv" | "dense"), layers in forward order (see module docstring)."""
    for i, k in enumerate(kinds):
        if k not in ("conv", "dense"):
            raise ValueError(f"kinds[{i}]: unknown layer kind {k!r}; allowed values: conv, dense")
    if not (isinstance(n_conv_groups, int) and n_conv_groups >= 1):
        raise ValueError(f"n_conv_groups: must be an integer >= 1, got {n_conv_groups!r}")
    n = sum(1 for k in kinds if k == "conv")
    base, extra = divmod(n, n_conv_groups)
    sizes = [base + (1 if b >= n_conv_groups - extra else 0) for b in range(n_conv_groups)]
    conv_groups = [f"conv{b + 1}" for b, s in enumerate(sizes) for _ in range(s)]
    it = iter(conv_groups)
    return [next(it) if k == "conv" else "dense" for k in kinds]


def masked_weight_names(model: nn.Module) -> list[str]:
    """Names of the masked parameters: the ``weight`` of every Conv/Linear module, in registration order."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _MASKED_TYPES) and isinstance(getattr(mod, "weight", None), nn.Parameter):
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def named_weights(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """name → parameter of the masked layers (``names`` default :func:`masked_weight_names`)."""
    params = dict(model.named_parameters())
    names = masked_weight_names(model) if names is None else list(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"names: not parameters of the model: {unknown}")
    return {n: params[n] for n in names}


def layer_groups(model: nn.Module, overrides: Mapping[str, str] | None = None,
                 groups: Sequence[str] | None = GROUPS, n_conv_groups: int = N_CONV_GROUPS) -> dict[str, str]:
    """Masked parameter name → rate group, by depth (module docstring), then ``overrides``.

    ``overrides``: fnmatch pattern (matched against the parameter name and its module name) → group; later patterns
    win. ``groups``: the allowed group names (default the VGG16 groups; None accepts any non-empty name)."""
    names = masked_weight_names(model)
    if not names:
        raise ValueError("model: no Conv/Linear weights to mask")
    modules = dict(model.named_modules())
    kinds = ["dense" if isinstance(modules[n.rsplit(".", 1)[0] if "." in n else ""], nn.Linear) else "conv"
             for n in names]
    out = dict(zip(names, depth_groups(kinds, n_conv_groups)))
    for pattern, group in (overrides or {}).items():
        if not isinstance(group, str) or not group or (groups is not None and group not in groups):
            allowed = ", ".join(groups) if groups is not None else "any non-empty name"
            raise ValueError(f"overrides[{pattern!r}]: unknown group {group!r}; allowed values: {allowed}")
        hits = [n for n in names
                if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.rsplit(".", 1)[0], pattern)]
        if not hits:
            raise ValueError(f"overrides[{pattern!r}]: matches no masked layer; masked layers: {', '.join(names)}")
        for n in hits:
            out[n] = group
    return out


def task1_layer_rates(groups: Mapping[str, str], profile: str | Mapping[str, float] = "fig5a") -> dict[str, float]:
    """Per-layer task-1 rate (S10) from the layer → group mapping and the profile."""
    prof = task1_profile(profile)
    missing = sorted({g for g in groups.values() if g not in prof})
    if missing:
        raise ValueError(f"task1_profile: no rate for groups {missing}; the profile defines: {', '.join(prof)}")
    return {n: prof[g] for n, g in groups.items()}


def layer_rates(groups: Mapping[str, str], jsd: float, free_counts: Mapping[str, int] | None = None,
                table: RateTable | Mapping | None = None) -> dict[str, float]:
    """Per-layer rate for a task t ≥ 2 (S60): the Fig. 8 rate of the layer's group, 0 where the free pool is empty
    (P1; ``free_counts``: layer → |F_l|)."""
    t = rate_table(table)
    missing = sorted({g for g in groups.values() if g not in t.rates})
    if missing:
        raise ValueError(f"rate_table.rates: no rates for groups {missing}; the table defines: {', '.join(t.rates)}")
    row = t.row(jsd)
    if free_counts is not None:
        missing = [n for n in groups if n not in free_counts]
        if missing:
            raise ValueError(f"free_counts: no free-pool size for layers {missing}")
    return {n: 0.0 if free_counts is not None and int(free_counts[n]) == 0 else row[g] for n, g in groups.items()}
