"""chita_core.torch.prune_layerwise: layer-by-layer pruning of a model from calibration data
(docs/design.md, section 14.8).

For each prunable layer (``nn.Linear``; ``nn.Conv1d/2d/3d`` with ``groups=1`` through unfold),
a forward pre-hook accumulates ``H = X^T X / N`` of the layer's inputs over the calibration
batches (float64, on the layer's device; at most ``n_tokens`` input rows). With
``sequential=True`` the layers are pruned in the order the model runs them, each calibrated on
the outputs of the layers already pruned before it (as SparseGPT does): one pass over the
calibration data per group of layers that read the same input (q, k, v), each forward ended
once the group has its inputs. ``sequential=False`` collects every H in one pass of the dense
model. Each layer goes through :func:`chita_core.prune_layer`; its mask is registered with
``torch.nn.utils.prune``, so the pruned weights stay zero in later training.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune

from ..layer import prune_layer
from ._gradients import _Progress

__all__ = ["LayerReport", "LayerwiseReport", "prune_layerwise"]

_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class LayerReport:
    """One layer of :func:`prune_layerwise`."""

    name: str
    shape: tuple[int, int]  #: (rows, inputs) of the layer's weight as a matrix
    sparsity: float  #: fraction of the layer's weights that are zero after pruning
    error: float  #: reconstruction error sum_i (w_i - w_bar_i)^T H (w_i - w_bar_i)
    tokens: int  #: calibration rows that formed H
    seconds: float  #: calibration pass and solve
    solve_seconds: float = 0.0  #: the layer solver alone
    stages: list[Any] = field(repr=False, default_factory=list)


@dataclass
class LayerwiseReport:
    """What :func:`prune_layerwise` did; ``str(report)`` is a table."""

    layers: list[LayerReport]
    pattern: str
    seconds: float

    @property
    def solve_seconds(self) -> float:
        """The layer solvers' time alone (without the calibration passes)."""
        return sum(r.solve_seconds for r in self.layers)

    @property
    def sparsity(self) -> float:
        """Zero fraction over all pruned layers' weights together."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        zeros = sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers)
        return zeros / total if total else 0.0

    def __str__(self) -> str:
        lines = [
            f"chita_core.torch.prune_layerwise ({self.pattern}): {len(self.layers)} layers, "
            f"sparsity {self.sparsity:.2%}, {self.seconds:.2f} s"
        ]
        width = max((len(r.name) for r in self.layers), default=0)
        for r in self.layers:
            lines.append(
                f"  {r.name:<{width}}  {r.shape[0]}x{r.shape[1]}  sparsity {r.sparsity:7.2%}  "
                f"error {r.error:.4g}  ({r.tokens} rows, {r.seconds:.2f} s)"
            )
        return "\n".join(lines)


def _matrix(mod: nn.Module) -> torch.Tensor:
    """The layer's weight as (rows, inputs)."""
    return mod.weight.detach().reshape(mod.weight.shape[0], -1)


def _rows(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of its weight matrix's inputs (unfolded for convolutions)."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(mod, nn.Conv2d):
        cols = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(mod, nn.Conv1d):  # as a 2-D convolution of height 1
        cols = F.unfold(
            x.unsqueeze(2), (1, mod.kernel_size[0]), (1, mod.dilation[0]),
            (0, mod.padding[0]), (1, mod.stride[0]),
        )  # fmt: skip
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise TypeError(f"unfold of {type(mod).__name__} is not supported")


class _Accumulator:
    """H = X^T X / N of a layer's inputs, from a forward pre-hook, up to ``limit`` rows."""

    def __init__(self, mod: nn.Module, limit: int | None) -> None:
        d = _matrix(mod).shape[1]
        self.H = torch.zeros(d, d, dtype=torch.float64, device=mod.weight.device)
        self.n = 0
        self.limit = limit
        self.mod = mod
        self.handle = mod.register_forward_pre_hook(self._hook)

    def _hook(self, mod: nn.Module, args: tuple[Any, ...]) -> None:
        if self.limit is not None and self.n >= self.limit:
            return
        with torch.no_grad():
            X = _rows(mod, args[0].detach()).to(torch.float64)
            if self.limit is not None:
                X = X[: self.limit - self.n]
            self.H += X.T @ X
            self.n += X.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self.H / max(self.n, 1)


class _Stop(BaseException):
    """Raised by a hook to end a forward pass early (a BaseException, so that a model's own
    ``except Exception`` does not swallow it)."""


def _run(
    model: nn.Module,
    data: Iterable[Any],
    device: torch.device,
    *,
    start: Any = None,
    done: Any = None,
    limit: int | None = None,
) -> None:
    """Passes of the calibration batches through the model (no gradients): ``start()`` before
    each batch; a hook may end a batch's forward early by raising :class:`_Stop`; the loop ends
    once ``done()`` is true or after ``limit`` batches."""
    seen = 0
    with torch.no_grad():
        for batch in data:
            seen += 1
            if start is not None:
                start()
            try:
                if isinstance(batch, dict):
                    model(
                        **{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    )
                elif isinstance(batch, (tuple, list)):
                    if not batch or not torch.is_tensor(batch[0]):
                        raise TypeError(
                            "`data` batches must be tensors, dicts or (input, ...) tuples"
                        )
                    model(batch[0].to(device))
                elif torch.is_tensor(batch):
                    model(batch.to(device))
                else:
                    raise TypeError(
                        "`data` must yield tensors, dicts of model keyword arguments or (input, "
                        f"target) tuples, got {type(batch).__name__}"
                    )
            except _Stop:
                pass
            if (done is not None and done()) or (limit is not None and seen >= limit):
                break
    if not seen:
        raise ValueError("`data` yielded no batches")


def _groups(
    model: nn.Module, data: Iterable[Any], device: torch.device, targets: list
) -> tuple[list[list[tuple[str, nn.Module]]], dict[str, int]]:
    """The target layers in the order the model calls them, grouped where consecutive layers
    read the same input tensor (attention's q, k and v; an MLP's gate and up): their H does not
    depend on each other's pruning, so one calibration pass serves the group. Also each layer's
    calls per forward. From one forward of the first batch; layers it never called come last,
    alone."""
    order: list[str] = []
    key: dict[str, tuple] = {}
    calls: dict[str, int] = {}

    def hook(name: str):
        def f(mod: nn.Module, args: tuple[Any, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in key:
                x = args[0]
                order.append(name)
                key[name] = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)

        return f

    handles = [mod.register_forward_pre_hook(hook(name)) for name, mod in targets]
    try:
        _run(model, data, device, limit=1)
    finally:
        for h in handles:
            h.remove()
    by_name = dict(targets)
    groups: list[list[tuple[str, nn.Module]]] = []
    for name in order:
        if groups and key[groups[-1][-1][0]] == key[name]:
            groups[-1].append((name, by_name[name]))
        else:
            groups.append([(name, by_name[name])])
    groups += [[(n, m)] for n, m in targets if n not in key]
    return groups, calls


def _calibrate(
    model: nn.Module,
    data: Iterable[Any],
    device: torch.device,
    group: list[tuple[str, nn.Module]],
    calls: dict[str, int],
    n_tokens: int | None,
) -> list[_Accumulator]:
    """H of every layer of the group from one pass, each batch's forward ended once every layer
    of the group has seen all its calls, the pass once every H has its ``n_tokens`` rows."""
    accs = [_Accumulator(mod, n_tokens) for _, mod in group]
    seen = {name: 0 for name, _ in group}
    need = {name: calls.get(name, 0) for name, _ in group}

    def stopper(name: str):
        def f(mod: nn.Module, args: tuple[Any, ...]) -> None:
            seen[name] += 1
            if all(need[n] and seen[n] >= need[n] for n in seen):
                raise _Stop

        return f

    def start() -> None:
        for n in seen:
            seen[n] = 0

    def done() -> bool:
        return n_tokens is not None and all(a.n >= n_tokens for a in accs)

    stops = [mod.register_forward_pre_hook(stopper(name)) for name, mod in group]
    try:
        _run(model, data, device, start=start, done=done)
    finally:
        for h in stops:
            h.remove()
        for a in accs:
            a.handle.remove()
    return accs


def _select_layers(model: nn.Module, layers: Any) -> list[tuple[str, nn.Module]]:
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]
    if layers is not None:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        known = dict(named)
        missing = [w for w in wanted if w not in known]
        if missing:
            raise ValueError(f"`layers` names no prunable layer: {missing} (Linear/Conv modules)")
        named = [(n, m) for n, m in named if n in set(wanted)]
    out = []
    for name, mod in named:
        if isinstance(mod, nn.Conv3d) or getattr(mod, "groups", 1) != 1:
            raise ValueError(
                f"layer {name!r}: only Linear and groups=1 Conv1d/Conv2d layers are supported"
            )
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and (
            isinstance(mod.padding, str) or mod.padding_mode != "zeros"
        ):
            raise ValueError(
                f"layer {name!r}: convolutions with string padding or padding_mode "
                f"{mod.padding_mode!r} are not supported (explicit zero padding only)"
            )
        if hasattr(mod, "weight_orig"):
            raise ValueError(f"layer {name!r} already has a pruning mask; remove_masks() first")
        out.append((name, mod))
    if not out:
        raise ValueError("the model has no Linear or Conv layer to prune")
    return out


def prune_layerwise(
    model: nn.Module,
    data: Iterable[Any],
    sparsity: float | None = None,
    *,
    pattern: str = "unstructured",
    layers: Any = None,
    n_tokens: int | None = 8192,
    sequential: bool = True,
    progress: bool = True,
    solver: Any = None,
    **options: Any,
) -> LayerwiseReport:
    """Prune every Linear (and Conv) layer of ``model`` to ``sparsity`` / ``pattern`` layer by
    layer, minimising each layer's reconstruction error on the calibration ``data``.

    ``data``: re-iterable (a list or a DataLoader) of tensors, dicts of keyword arguments
    (``model(**batch)``, as Hugging Face models take) or (input, target) tuples.
    ``layers``: module names to prune (default: all Linear/Conv). ``n_tokens``: input rows per
    layer that form H (None: all). ``options``: passed to :func:`chita_core.prune_layer`
    (``damp``, ``budget``, ``effort``, ``search``, ``starts``). ``solver``: another layer
    solver with ``prune_layer``'s signature and result (``chita_core.layer.sparsegpt_layer``, or a
    baseline of one's own), so that baselines run through the same calibration. Returns a
    :class:`LayerwiseReport`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if n_tokens is not None and (isinstance(n_tokens, bool) or int(n_tokens) < 1):
        raise ValueError(f"`n_tokens` must be a positive integer or None, got {n_tokens!r}")
    unknown = set(options) - {"damp", "budget", "starts", "effort", "search"}
    if solver is not None and not callable(solver):
        raise TypeError(f"`solver` must be callable, got {type(solver).__name__}")
    solve = prune_layer if solver is None else solver
    if unknown and solver is None:
        raise TypeError(f"unknown option(s) for prune_layer: {sorted(unknown)}")
    if not isinstance(data, (list, tuple)) and iter(data) is data:
        raise TypeError("`data` must be re-iterable (a list or a DataLoader), not an iterator")
    targets = _select_layers(model, layers)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    reports: list[LayerReport] = []
    bar = _Progress(progress, len(targets), "prune_layerwise")
    try:
        if sequential:  # calibration groups in call order, one pass each (ended early)
            groups, calls = _groups(model, data, device, targets)
        else:  # every H from one pass of the dense model
            accs = {name: _Accumulator(mod, n_tokens) for name, mod in targets}
            try:
                _run(model, data, device)
            finally:
                for a in accs.values():
                    a.handle.remove()
            groups = [[t] for t in targets]
        for group in groups:
            t = time.perf_counter()
            if sequential:
                accs_g = _calibrate(model, data, device, group, calls, n_tokens)
                got = {n: a for (n, _), a in zip(group, accs_g, strict=True)}
            else:
                got = {group[0][0]: accs[group[0][0]]}
            share = (time.perf_counter() - t) / len(group)
            for name, mod in group:
                _prune_one(name, mod, got[name], share, solve, sparsity, pattern, options,
                           reports)  # fmt: skip
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return LayerwiseReport(reports, pattern, time.perf_counter() - t0)


def _prune_one(name, mod, acc, calib_seconds, solve, sparsity, pattern, options, reports):
    """Solve one layer from its accumulated H, write its weights and register its mask."""
    t = time.perf_counter()
    H, tokens = acc.value, acc.n
    if tokens == 0:
        raise ValueError(f"layer {name!r} received no input from `data`")
    W = _matrix(mod)
    ts = time.perf_counter()
    res = solve(W, H, sparsity, pattern=pattern, **options)
    ts = time.perf_counter() - ts
    keep = res.mask.reshape(mod.weight.shape).to(mod.weight.device)
    with torch.no_grad():
        mod.weight.copy_(res.W.reshape(mod.weight.shape))
    torch_prune.custom_from_mask(mod, "weight", keep)
    zero = float((mod.weight == 0).float().mean())
    reports.append(
        LayerReport(name, tuple(W.shape), zero, res.error, tokens,
                    calib_seconds + time.perf_counter() - t, ts, res.stages)
    )  # fmt: skip
