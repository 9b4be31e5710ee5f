"""What ``continual`` may change in each training phase (R5), and what it keeps per task (biases, normalisation).

Rule numbers are those of the implementation spec the method was built from; ``docs/methods/continual.md``
describes the method. No Ray, no MLflow.

Training constraints (R5; :func:`update_masks`, :func:`forward_masks`, :class:`FrozenGuard`, :class:`MaskedOptimizer`)
    Updated set G per phase: S20 all; S40 N^(1); S70 F^(t) (layers with r_l = 1 excluded by default — P4 "CONV4-X is
    not updated" — since all of their free weights are zeroed at S80 anyway; ``freeze_full_rate=False`` trains
    them); S90 N^(t). Frozen entries (everything outside G: earlier tasks' weights, zeroed weights) are kept
    BITWISE unchanged by masking the UPDATE, not only the gradient: the guard zeroes their gradient, snapshots the
    parameters before ``optimizer.step()`` and writes the snapshot back into the frozen entries after it, so
    momentum, Adam moments and (decoupled) weight decay cannot move them.
    Forward masks: Reading A needs none (U ∪ F is every weight at S70; at S90 the only masked-out entries are Z,
    which are 0). Reading B uses W ⊙ 1[M^(s*) ∪ F] at S70 and W ⊙ M^(t) at S90 (:func:`masked_forward`).

Biases and normalisation layers (§6 [AMBIG]; :func:`task_state_names`, :func:`capture_task_state`)
    ``bias_policy="freeze"`` (default, the spec's IMPL-CHOICE): biases (every unmasked parameter outside
    normalisation layers) train during task 1 only, then stay frozen for all tasks. ``"per_task"``: they train in
    every task and a copy per task is stored and loaded at inference.
    ``norm_policy="per_task"`` (default): the affine parameters and running statistics of BatchNorm/GroupNorm/
    LayerNorm/InstanceNorm modules are task-specific — each task trains them (start: the source task's copy) and
    a copy per task is stored; they are tiny, and frozen task-1 statistics would be wrong for a task whose input
    distribution differs (which the JSD measures). ``"freeze"``: trained in task 1 only, then frozen with the
    modules kept in eval mode (:func:`set_norm_eval`, running statistics unchanged).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from trainers.continual.allocation import READINGS
from trainers.continual.groups import Masks, masked_weight_names
from trainers.continual.rates import _choice

PHASES = ("S20", "S40", "S70", "S90")
BIAS_POLICIES = ("freeze", "per_task")
NORM_POLICIES = ("per_task", "freeze")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# --------------------------------------------------------------------------- training constraints (R5)

def update_masks(phase: str, free: Masks, new: Masks | None = None, rates: Mapping[str, float] | None = None,
                 freeze_full_rate: bool = True) -> dict[str, Tensor]:
    """Which entries of each masked weight an optimizer step may change (R5 table), name → bool.

    S20: all (task 1 training). S40: N^(1). S70: F^(t), minus the layers with rate 1 when ``freeze_full_rate``
    (needs ``rates``). S90: N^(t)."""
    _choice("phase", phase, PHASES)
    if phase == "S20":
        return {n: torch.ones_like(f, dtype=torch.bool) for n, f in free.items()}
    if phase in ("S40", "S90"):
        if new is None:
            raise ValueError(f"new: phase {phase} updates only the new weights N^(t); pass them")
        return {n: new[n].to(free[n].device, torch.bool).clone() for n in free}
    if freeze_full_rate and rates is None:
        raise ValueError("rates: phase S70 with freeze_full_rate=True needs the per-layer rates")
    return {n: (torch.zeros_like(f) if freeze_full_rate and float(rates[n]) >= 1.0 else f.clone())
            for n, f in free.items()}


def forward_masks(phase: str, reading: str = "A", free: Masks | None = None, new: Masks | None = None,
                  source_mask: Masks | None = None) -> dict[str, Tensor] | None:
    """The forward mask of a training phase (§5), or None when the plain forward is already right (Reading A,
    and S20/S40 in both readings). Reading B: S70 → M^(s*) ∪ F^(t); S90 → M^(s*) ∪ N^(t)."""
    _choice("phase", phase, PHASES)
    _choice("reading", reading, READINGS)
    if reading == "A" or phase in ("S20", "S40"):
        return None
    if source_mask is None:
        raise ValueError("source_mask: Reading B needs M^(s*) for the forward mask")
    other = free if phase == "S70" else new
    if other is None:
        raise ValueError(f"{'free' if phase == 'S70' else 'new'}: needed for the Reading B forward mask of {phase}")
    return {n: source_mask[n].to(other[n].device, torch.bool) | other[n] for n in other}


def masked_forward(model: nn.Module, masks: Masks | None, *args, **kwargs):
    """model(*args) with W ⊙ mask for the masked parameters (torch.func.functional_call; gradients reach only the
    kept entries). ``masks`` None → plain forward. Pass the bare module, not a DDP wrapper."""
    if masks is None:
        return model(*args, **kwargs)
    params = dict(model.named_parameters())
    override = {n: torch.where(m.to(params[n].device), params[n], torch.zeros((), dtype=params[n].dtype,
                                                                                device=params[n].device))
                for n, m in masks.items()}
    return torch.func.functional_call(model, override, args, kwargs)


def _norm_param_names(model: nn.Module) -> tuple[set[str], set[str]]:
    params, buffers = set(), set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _NORM_TYPES):
            prefix = f"{mod_name}." if mod_name else ""
            params |= {prefix + n for n, _ in mod.named_parameters(recurse=False)}
            buffers |= {prefix + n for n, b in mod.named_buffers(recurse=False) if b is not None}
    return params, buffers


def trainable_masks(model: nn.Module, weight_masks: Masks, task_index: int, bias_policy: str = "freeze",
                    norm_policy: str = "per_task") -> dict[str, Tensor]:
    """name → bool update mask for EVERY parameter: ``weight_masks`` (from :func:`update_masks`) for the masked
    weights; biases / normalisation parameters per policy (trainable in task 1; afterwards only if per-task)."""
    _choice("bias_policy", bias_policy, BIAS_POLICIES)
    _choice("norm_policy", norm_policy, NORM_POLICIES)
    if not (isinstance(task_index, int) and task_index >= 1):
        raise ValueError(f"task_index: tasks are numbered from 1, got {task_index!r}")
    norm_params, _ = _norm_param_names(model)
    out = {}
    for n, p in model.named_parameters():
        if n in weight_masks:
            m = weight_masks[n].to(p.device, torch.bool)
            if m.shape != p.shape:
                raise ValueError(f"weight_masks[{n!r}]: shape {tuple(m.shape)} differs from {tuple(p.shape)}")
            out[n] = m
        else:
            policy = norm_policy if n in norm_params else bias_policy
            train = task_index == 1 or policy == "per_task"
            out[n] = torch.full(p.shape, train, dtype=torch.bool, device=p.device)
    return out


class FrozenGuard:
    """Keeps the frozen entries (update mask False) of parameters bitwise unchanged across an optimizer step.

    Use ``with guard: optimizer.step()`` (or ``scaler.step(optimizer)``), or :class:`MaskedOptimizer`. On entry the
    frozen gradient entries are zeroed and the parameters snapshotted; on exit the snapshot is written back into the
    frozen entries (``torch.where``), whatever momentum, Adam moments or weight decay did. Parameters with every
    entry trainable cost nothing."""

    def __init__(self, pairs: Iterable[tuple[Tensor, Tensor]]):
        self._pairs = []
        for p, m in pairs:
            m = torch.as_tensor(m, dtype=torch.bool, device=p.device)
            if m.shape != p.shape:
                raise ValueError(f"mask shape {tuple(m.shape)} differs from the parameter shape {tuple(p.shape)}")
            if not bool(m.all()):
                self._pairs.append((p, m))
        self._saved: list[Tensor] | None = None

    @classmethod
    def from_model(cls, model: nn.Module, trainable: Masks) -> "FrozenGuard":
        """From name → update mask (e.g. :func:`trainable_masks`); parameters not named are left free."""
        params = dict(model.named_parameters())
        unknown = [n for n in trainable if n not in params]
        if unknown:
            raise ValueError(f"trainable: not parameters of the model: {unknown}")
        return cls((params[n], m) for n, m in trainable.items())

    def mask_grads(self) -> None:
        for p, m in self._pairs:
            if p.grad is not None:
                p.grad.masked_fill_(~m, 0.0)

    def __enter__(self) -> "FrozenGuard":
        self.mask_grads()
        self._saved = [p.detach().clone() for p, _ in self._pairs]
        return self

    def __exit__(self, *exc) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        with torch.no_grad():
            for (p, m), s in zip(self._pairs, saved):
                p.copy_(torch.where(m, p, s))


class MaskedOptimizer:
    """An optimizer whose ``step`` runs inside a :class:`FrozenGuard`; everything else is delegated.

    Build LR schedulers on the inner ``optimizer`` (they check its type). With DDP, build the guard from the bare
    module (``ddp.module``) so that the parameter names match the masks."""

    def __init__(self, optimizer: torch.optim.Optimizer, guard: FrozenGuard):
        self.optimizer = optimizer
        self.guard = guard

    def step(self, closure=None):
        with self.guard:
            return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name):
        if name in ("optimizer", "guard"):  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)


# --------------------------------------------------------------------------- per-task biases / normalisation

def norm_modules(model: nn.Module) -> list[nn.Module]:
    """BatchNorm/InstanceNorm/GroupNorm/LayerNorm modules of the model."""
    return [m for m in model.modules() if isinstance(m, _NORM_TYPES)]


def set_norm_eval(model: nn.Module) -> None:
    """Put the normalisation modules in eval mode (``norm_policy="freeze"`` after task 1): running statistics are
    used and not updated. Call after ``model.train()``, which would undo it."""
    for m in norm_modules(model):
        m.eval()


def task_state_names(model: nn.Module, bias_policy: str = "freeze", norm_policy: str = "per_task") -> list[str]:
    """The parameter/buffer names that are stored per task under the policies (not the masked weights)."""
    _choice("bias_policy", bias_policy, BIAS_POLICIES)
    _choice("norm_policy", norm_policy, NORM_POLICIES)
    masked = set(masked_weight_names(model))
    norm_params, norm_buffers = _norm_param_names(model)
    names = []
    for n, _ in model.named_parameters():
        if n in masked:
            continue
        if (norm_policy if n in norm_params else bias_policy) == "per_task":
            names.append(n)
    if norm_policy == "per_task":
        names += [n for n, _ in model.named_buffers() if n in norm_buffers]
    return names


def capture_task_state(model: nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    """Detached CPU copies of the named parameters/buffers (a task's per-task state)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"names: not parameters/buffers of the model: {missing}")
    return {n: tensors[n].detach().cpu().clone() for n in names}


def load_task_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy a captured per-task state back into the model, in place."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for n, v in state.items():
            if n not in tensors:
                raise ValueError(f"state: {n!r} is not a parameter/buffer of the model")
            tensors[n].copy_(v.to(tensors[n].device))
