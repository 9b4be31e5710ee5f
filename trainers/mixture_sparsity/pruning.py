"""Physical structured pruning of the networks in :mod:`trainers.mixture_sparsity.models` (spec §5 POST, §6).

Masks
    ``masks`` maps a layer group to a boolean vector, True = delete that group (see :func:`pruned_mask`):
    key ``"fc1"`` or ``("fc1", "rows")`` = rows of fc1 (its output units / output channels), key
    ``("fc1", "cols")`` = columns of fc1 (its input units / input channels; for the first fc after the
    flatten, single flattened features).

Reference: :func:`masked_model`
    A copy with the same architecture in which the deleted groups' weights are zero (what a mask-only tool
    gives); biases are untouched (the regularizer acts on weights only).

Physical pruning: :func:`prune_model` (spec §6 [IMPL CHOICE]) returns a new, smaller module that computes
the same function as the masked model:
    * Row i of layer l deleted: unit i has no inputs left, so it outputs the constant a_i = act(b^l_i)
      (sigmoid(b_i) ≠ 0; relu(b_i) > 0 when b_i > 0). Row i, b^l_i and the matching input columns of layer l+1
      are removed and the constant is folded into the next bias:  b^{l+1} += W^{l+1}[:, cols(i)] · a_i
      (summed over the kernel taps of a following conv — exact because convs and pools have no padding —
      and over the H'·W' flattened columns of channel i for conv → flatten → Linear).
    * Column j of layer l deleted: unit j of layer l−1 no longer reaches anything; when all of its columns
      are deleted it is removed entirely (row j and b^{l−1}_j of layer l−1, its columns of layer l), no fold.
      Columns of the first layer are input features / input channels: they are dropped with an
      ``input_index`` buffer (the pruned model still takes the full input). Single flattened features of a
      conv → Linear boundary whose channel stays are dropped with a ``flat_index`` buffer.
    * Rows of the output layer (classes) cannot be removed: ValueError.
    * No layer becomes zero-width: if every unit of a layer (or every input) is deleted, one dead unit
      (zero weights, zero bias, zero outgoing weights) is kept, which changes nothing in the function.

Cost counters
    :func:`count_params`: number of parameter elements (buffers such as the index vectors not included).
    :func:`count_flops`: multiply-accumulates (MACs) of the Linear/Conv2d layers for ONE sample; bias adds,
    activations and pooling are not counted. FLOPs in the "2 per MAC" convention are 2·MACs.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from trainers.mixture_sparsity.losses import GROUP_DIMS, group_norms, pruned_mask

MaskKey = str | tuple[str, str]


def _layer(model: nn.Module, name: str) -> nn.Module:
    names = getattr(model, "layer_names", None)
    if names is None:
        raise ValueError(f"{type(model).__name__} has no layer_names; use SigmoidMLP or SmallPrunableCNN")
    if name not in names:
        raise ValueError(f"unknown layer {name!r}; allowed values: {', '.join(names)}")
    return getattr(model, name)


def _normalise_masks(model: nn.Module, masks: Mapping[MaskKey, Tensor]) -> dict[tuple[str, str], Tensor]:
    """{(layer, dim): bool CPU tensor}; checks names, dims and lengths."""
    out: dict[tuple[str, str], Tensor] = {}
    for key, mask in masks.items():
        name, dim = (key, "rows") if isinstance(key, str) else tuple(key)
        if dim not in GROUP_DIMS:
            raise ValueError(f"masks: unknown group dim {dim!r} for layer {name!r}; allowed values: "
                             f"{', '.join(GROUP_DIMS)}")
        layer = _layer(model, name)
        mask = torch.as_tensor(mask).detach().to("cpu").flatten()
        if mask.dtype != torch.bool:
            raise ValueError(f"masks[{name!r}, {dim!r}]: must be a boolean vector (True = delete), got {mask.dtype}")
        n = layer.weight.shape[0 if dim == "rows" else 1]
        if mask.numel() != n:
            raise ValueError(f"masks[{name!r}, {dim!r}]: expected {n} entries (one per {dim[:-1]} of "
                             f"weight {tuple(layer.weight.shape)}), got {mask.numel()}")
        if (name, dim) in out:
            raise ValueError(f"masks: layer {name!r} {dim} given twice")
        out[(name, dim)] = mask
    return out


def layer_groups(model: nn.Module, spec: Sequence[tuple[str, str]]) -> list[tuple[Tensor, str]]:
    """[(weight tensor, dim)] of the named layer groups, e.g. [("fc0", "rows"), ("fc1", "rows")], ready for
    :func:`trainers.mixture_sparsity.losses.regularizer`."""
    groups = []
    for name, dim in spec:
        if dim not in GROUP_DIMS:
            raise ValueError(f"group dim {dim!r} of layer {name!r}: allowed values: {', '.join(GROUP_DIMS)}")
        groups.append((_layer(model, name).weight, dim))
    return groups


def threshold_masks(model: nn.Module, spec: Sequence[tuple[str, str]], threshold: float
                    ) -> dict[tuple[str, str], Tensor]:
    """{(layer, dim): exact group norm < threshold} for the named layer groups (eps = 0: exact norms)."""
    with torch.no_grad():
        return {(name, dim): pruned_mask(group_norms(w, dim, eps=0.0), threshold).cpu()
                for (name, dim), (w, _) in zip(spec, layer_groups(model, spec))}


def masked_model(model: nn.Module, masks: Mapping[MaskKey, Tensor]) -> nn.Module:
    """A deep copy with the deleted groups' weights set to 0 (same architecture; biases untouched)."""
    norm = _normalise_masks(model, masks)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for (name, dim), mask in norm.items():
            w = getattr(out, name).weight
            idx = mask.nonzero().flatten().to(w.device)
            if dim == "rows":
                w.index_fill_(0, idx, 0.0)
            else:
                w.index_fill_(1, idx, 0.0)
    return out


def _new_layer(old: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    kw = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(old, nn.Linear):
        new = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None, **kw)
    else:
        new = nn.utils.skip_init(nn.Conv2d, weight.shape[1], weight.shape[0], old.kernel_size, stride=old.stride,
                                 padding=old.padding, dilation=old.dilation, bias=bias is not None,
                                 padding_mode=old.padding_mode, **kw)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune_model(model: nn.Module, masks: Mapping[MaskKey, Tensor]) -> nn.Module:
    """A new, physically smaller module equal (up to float rounding) to ``masked_model(model, masks)``.

    See the module docstring for what is removed and how the constants of deleted units are folded."""
    norm = _normalise_masks(model, masks)
    names = list(model.layer_names)
    out_name = names[-1]
    if norm.get((out_name, "rows"), torch.zeros(1, dtype=torch.bool)).any():
        raise ValueError(f"masks[{out_name!r}, 'rows']: rows of the output layer are the classes and cannot be "
                         "pruned; group the output layer by 'cols' or leave it out")
    m = masked_model(model, norm)
    layers = [getattr(m, n) for n in names]
    for name, layer in zip(names, layers):
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"layer {name!r}: only nn.Linear and nn.Conv2d can be pruned, got {type(layer).__name__}")
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ValueError(f"layer {name!r}: grouped convolutions (groups={layer.groups}) are not supported")

    def mask(name: str, dim: str, n: int) -> Tensor:
        return norm.get((name, dim), torch.zeros(n, dtype=torch.bool))

    row_keep = [torch.ones(l.weight.shape[0], dtype=torch.bool) for l in layers]
    col_keep = [torch.ones(l.weight.shape[1], dtype=torch.bool) for l in layers]

    # input boundary: deleted columns of the first layer = input features / input channels
    in_del = mask(names[0], "cols", layers[0].weight.shape[1])
    if in_del.any():
        col_keep[0] = ~in_del
        if not col_keep[0].any():                     # keep one (zeroed) input so the first layer stays valid
            col_keep[0][0] = True
        base = m.input_index.cpu() if m.input_index is not None else torch.arange(in_del.numel())
        m.input_index = base[col_keep[0]].to(layers[0].weight.device)

    with torch.no_grad():
        for i in range(len(layers) - 1):
            prod, cons = layers[i], layers[i + 1]
            units = prod.weight.shape[0]
            n_cols = cons.weight.shape[1]
            spatial = m.flat_positions if names[i] == m.flatten_after else 1
            if spatial == 1:
                if n_cols != units:
                    raise ValueError(f"layers {names[i]!r} → {names[i + 1]!r}: {units} outputs feed {n_cols} inputs")
                col_unit, col_pos = torch.arange(n_cols), torch.zeros(n_cols, dtype=torch.long)
            else:
                feat = m.flat_index.cpu() if m.flat_index is not None else torch.arange(n_cols)
                col_unit, col_pos = feat // spatial, feat % spatial
            row_del = mask(names[i], "rows", units)
            col_del = mask(names[i + 1], "cols", n_cols)
            alive = torch.zeros(units, dtype=torch.long).index_add_(0, col_unit, (~col_del).long())
            unused = alive == 0                       # every column of the unit deleted: remove, nothing to fold
            removed = row_del | unused
            fold = row_del & ~unused                  # constant output act(b_i) still reaches the next layer
            if fold.any():
                bias = prod.bias if prod.bias is not None else prod.weight.new_zeros(prod.weight.shape[0])
                const = m.activation(bias.detach()).cpu().to(torch.float64)
                const = torch.where(fold, const, torch.zeros_like(const))
                if isinstance(cons, nn.Conv2d) and any(p != 0 for p in cons.padding) and (const != 0).any():
                    raise ValueError(f"layer {names[i + 1]!r}: cannot fold the constant outputs of deleted units "
                                     f"of {names[i]!r} into a padded convolution")
                w = cons.weight.detach().cpu().to(torch.float64)
                w2 = w.flatten(2).sum(dim=2) if w.dim() > 2 else w                  # (out, n_cols)
                shift = w2 @ const[col_unit]
                if cons.bias is None:
                    cons.bias = nn.Parameter(torch.zeros(cons.weight.shape[0], dtype=cons.weight.dtype,
                                                         device=cons.weight.device))
                cons.bias.add_(shift.to(cons.bias.dtype).to(cons.bias.device))
            col_keep[i + 1] = ~removed[col_unit] & ~col_del
            if removed.all():
                # every unit deleted: keep unit 0 as a dead unit (zero weights, zero bias, zero outgoing
                # columns) so that no layer has zero width; its constant, if any, is already folded above
                removed = removed.clone()
                removed[0] = False
                prod.weight[0].zero_()
                if prod.bias is not None:
                    prod.bias[0] = 0.0
                cols0 = (col_unit == 0).to(cons.weight.device)
                cons.weight[:, cols0] = 0.0
                col_keep[i + 1] = col_unit == 0
            row_keep[i] = ~removed
            if spatial != 1:
                rank = torch.cumsum((~removed).long(), 0) - 1
                keep = col_keep[i + 1]
                new_feat = rank[col_unit[keep]] * spatial + col_pos[keep]
                n_left = int((~removed).sum()) * spatial
                dense = new_feat.numel() == n_left and torch.equal(new_feat, torch.arange(n_left))
                m.flat_index = None if dense else new_feat.to(cons.weight.device)

        for name, layer, rk, ck in zip(names, layers, row_keep, col_keep):
            if bool(rk.all()) and bool(ck.all()):
                continue
            dev = layer.weight.device
            w = layer.weight.detach()[rk.to(dev)][:, ck.to(dev)]
            b = layer.bias.detach()[rk.to(dev)] if layer.bias is not None else None
            setattr(m, name, _new_layer(layer, w, b))
    return m


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (buffers not included)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates (MACs, NOT 2·MACs) of all nn.Linear / nn.Conv2d layers for ONE sample.

    ``input_shape``: the shape of one sample without the batch dim, e.g. (in_features,) or (C, H, W).
    Linear: in·out; Conv2d: out_elements · (in_channels/groups) · kh · kw. Biases, activations, pooling free."""
    total = 0

    def hook(mod: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += output.numel() * mod.in_features
        else:
            kh, kw = mod.kernel_size
            total += output.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [mod.register_forward_hook(hook) for mod in model.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
    try:
        p = next(model.parameters(), None)
        kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, **kw))
    finally:
        for h in handles:
            h.remove()
    return int(total)
