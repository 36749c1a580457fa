"""PyTorch adapter: prune a trained ``torch.nn.Module`` with chita_core in a few lines.

Typical use::

    report = chita_core.torch.prune(model, nn.CrossEntropyLoss(), loader, sparsity=0.9)
    print(report)

What :func:`prune` does (CHITA, and CHITA++ with ``stages > 1``):

1. draws ``n_grads`` samples from ``data`` and computes their per-sample gradients at the
   current weights with ``torch.func`` (``vmap`` over ``grad``), in chunks that bound memory,
   written straight into an (n, p) matrix ``A = G / sqrt(n)`` in F order on the model's device
   (the layout the solver reads fastest), so that ``0.5 ||A (w - w_bar)||^2`` is the
   empirical-Fisher model of the loss change; no p x p matrix is ever formed;
2. solves one global problem over all selected tensors (the solver decides how the sparsity is
   spread across layers) or, with ``per_layer=True``, one per tensor at the same sparsity
   (column slices of the same A: no copy);
3. writes the pruned weights back and registers masks with ``torch.nn.utils.prune``, so the
   pruned weights stay zero in later training; :func:`remove_masks` makes them permanent.

Tied weights (one Parameter held by several modules, e.g. an LM whose output layer shares the
embedding's ``weight``) are one variable: one block of columns in A, whose gradient is the sum
over the tensor's uses; every module holding it gets the same mask and keeps reading the one
``weight_orig`` Parameter, so the tie survives pruning, training and :func:`remove_masks`.

With ``stages > 1`` the target is reached through a schedule of sparsities, recomputing the
gradients at the pruned weights between stages. torch is an optional dependency
(``pip install "chita_core[torch]"``); ``import chita_core`` never imports it.
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ._api import IHTResult, solve
from ._problem import Problem
from .backends import get_backend

__all__ = ["PruneReport", "StageReport", "prune", "remove_masks", "schedule_sparsities"]

_SCHEDULES = ("poly", "exp", "linear")
_METHODS = ("chita", "magnitude", "magnitude+backsolve")
#: ``ridge=None`` tries these ridges, relative to the mean curvature of one weight (the mean
#: squared column norm of A), and keeps the solution with the lowest loss on the gradient samples.
RIDGE_SCALES = (0.01, 0.1, 1.0, 10.0)
#: Bytes of per-sample gradients held at once while A is built (bounds the vmap chunk).
_CHUNK_BYTES = 256 << 20
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class StageReport:
    """One stage of :func:`prune`."""

    target_sparsity: float  #: sparsity this stage prunes to
    k: int  #: weights kept (all selected tensors together)
    objective: float  #: the solver's objective at its solution
    ridge: float  #: ridge used (the one kept, when several were tried)
    loss: float  #: mean loss of the pruned model on the selection samples (see ``val_data``)
    chosen: str  #: the candidate kept: ``method``, or "magnitude+backsolve" when it had lower loss
    grad_seconds: float  #: building A (per-sample gradients)
    solve_seconds: float  #: the solver
    results: list[IHTResult] = field(repr=False)  #: solver results (one, or one per tensor)


@dataclass
class PruneReport:
    """What :func:`prune` did. ``str(report)`` is a readable table."""

    #: achieved sparsity: the fraction of the selected weights (all tensors together, a tied
    #: tensor once) that are exactly zero in the pruned model, for every ``method`` alike. It
    #: counts the weights the masks prune and any kept weight that is zero (e.g. zero in the
    #: dense model already), so it can exceed the target; the masks are the supports (exactly
    #: ``k`` kept entries, see ``stages[i].k``).
    sparsity: float
    #: name (as in ``model.named_parameters()``; a tied tensor under its first name) ->
    #: (fraction of its weights that are zero, as for ``sparsity``; number of weights)
    tensors: dict[str, tuple[float, int]]
    stages: list[StageReport]
    n_grads: int  #: samples in A
    method: str
    grad_seconds: float
    solve_seconds: float

    @property
    def objectives(self) -> list[float]:
        return [s.objective for s in self.stages]

    def __str__(self) -> str:
        lines = [
            f"chita_core.torch.prune ({self.method}): sparsity {self.sparsity:.2%} over "
            f"{sum(m for _, m in self.tensors.values()):,} weights, n_grads={self.n_grads}, "
            f"gradients {self.grad_seconds:.2f} s, solve {self.solve_seconds:.2f} s"
        ]
        for i, s in enumerate(self.stages, 1):
            lines.append(
                f"  stage {i}: sparsity {s.target_sparsity:.2%}, k={s.k:,}, objective "
                f"{s.objective:.6g}, ridge {s.ridge:.3g}, loss {s.loss:.4g}, kept {s.chosen} "
                f"({s.grad_seconds:.2f} s + "
                f"{s.solve_seconds:.2f} s)"
            )
        width = max(len(n) for n in self.tensors)
        for name, (sp, m) in self.tensors.items():
            lines.append(f"  {name:<{width}}  {sp:7.2%} of {m:,}")
        return "\n".join(lines)


def schedule_sparsities(sparsity: float, stages: int, schedule: str = "poly") -> list[float]:
    """Sparsity after each stage, ending at ``sparsity``.

    ``linear``: s t / T; ``poly``: s (1 - (1 - t/T)^3) (prunes most early, while the network is
    dense and the quadratic model most trustworthy relative to what is removed); ``exp``: the
    kept fraction shrinks geometrically, 1 - (1 - s)^(t / T)."""
    if schedule not in _SCHEDULES:
        raise ValueError(
            f"`schedule` must be one of {', '.join(map(repr, _SCHEDULES))}; got {schedule!r}"
        )
    out = []
    for t in range(1, stages + 1):
        x = t / stages
        if schedule == "linear":
            s = sparsity * x
        elif schedule == "poly":
            s = sparsity * (1.0 - (1.0 - x) ** 3)
        else:
            s = 1.0 - (1.0 - sparsity) ** x
        out.append(s)
    out[-1] = sparsity
    return out


# ----------------------------------------------------------------------------------------------
# Selecting parameters
# ----------------------------------------------------------------------------------------------


def _qualified(mod_name: str, attr: str) -> str:
    return f"{mod_name}.{attr}" if mod_name else attr


def _aliases(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """id(tensor) -> every (qualified name, module, attribute) that holds that parameter or
    buffer, one per distinct module (a module reachable by two paths counts once). A tied tensor
    has several; the first is its name in ``model.named_parameters()`` / ``named_buffers()``."""
    out: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mod_name, mod in model.named_modules():
        for attr, t in itertools.chain(mod._parameters.items(), mod._buffers.items()):
            if t is not None:
                out.setdefault(id(t), []).append((_qualified(mod_name, attr), mod, attr))
    return out


def _masked(mod: nn.Module, attr: str) -> bool:
    """Whether ``mod.attr`` is already reparametrised by a ``torch.nn.utils.prune`` mask."""
    return hasattr(mod, attr + "_mask") and attr + "_orig" in mod._parameters


def _already_masked(qual: str) -> ValueError:
    return ValueError(
        f"`params`: {qual} already carries a pruning mask; call "
        "chita_core.torch.remove_masks(model) first"
    )


def _select(model: nn.Module, params: Any) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    """The parameters to prune as (name, module, attribute, parameter), each parameter once.

    A parameter tied between modules (e.g. an embedding shared with the output layer) is one
    entry whatever alias selected it, named as in ``model.named_parameters()``; the module and
    attribute are its first alias (:func:`_aliases` lists them all)."""
    aliases = _aliases(model)
    by_id = {id(par): par for par in model.parameters()}
    by_name = dict(model.named_parameters(remove_duplicate=False))  # every alias's name
    module_names = {id(mod): name for name, mod in model.named_modules()}
    chosen: list[nn.Parameter] = []
    if params is None:
        for mod_name, mod in model.named_modules():
            if not isinstance(mod, _PRUNABLE):
                continue
            if _masked(mod, "weight"):  # pruned before
                raise _already_masked(_qualified(mod_name, "weight"))
            weight = mod._parameters.get("weight")
            if isinstance(weight, nn.Parameter) and weight.numel() > 0:  # empty: nothing to do
                chosen.append(weight)
        if not chosen:
            raise ValueError(
                "`model` has no Linear or Conv layer with a weight to prune; pass `params` "
                "(modules, parameters or parameter names)"
            )
    else:
        if isinstance(params, (str, nn.Module, nn.Parameter)):
            params = [params]
        try:
            items = list(params)
        except TypeError:
            raise TypeError(
                "`params` must be None or a list of modules, parameters or parameter names, got "
                f"{type(params).__name__}"
            ) from None
        if not items:
            raise ValueError(
                "`params` is empty: pass the modules, parameters or parameter names to prune, or "
                "None for the weights of every Linear and Conv layer"
            )
        for item in items:
            if isinstance(item, str):
                if item not in by_name:
                    mod_name, _, attr = item.rpartition(".")
                    try:
                        mod = model.get_submodule(mod_name)
                    except AttributeError:
                        mod = None
                    if mod is not None and _masked(mod, attr):
                        raise _already_masked(item)
                    raise ValueError(f"`params`: {item!r} is not a parameter of `model`")
                chosen.append(by_name[item])
            elif isinstance(item, nn.Parameter):
                if id(item) not in by_id:
                    raise ValueError(
                        f"`params`: a parameter of shape {tuple(item.shape)} is not in `model`"
                    )
                chosen.append(item)
            elif isinstance(item, nn.Module):
                mod_name = module_names.get(id(item))
                if mod_name is not None and _masked(item, "weight"):
                    raise _already_masked(_qualified(mod_name, "weight"))
                weight = getattr(item, "weight", None)
                if not isinstance(weight, nn.Parameter) or id(weight) not in by_id:
                    raise ValueError(
                        f"`params`: module {type(item).__name__} is not in `model` or has no "
                        "`weight` parameter"
                    )
                chosen.append(weight)
            else:
                raise TypeError(
                    "`params` entries must be modules, parameters or parameter names, got "
                    f"{type(item).__name__}"
                )
    out, seen = [], set()
    for par in chosen:
        if id(par) in seen:  # named twice, or through two aliases of a tied parameter
            continue
        seen.add(id(par))
        (qual, mod, attr), *_ = holders = aliases[id(par)]
        for q, m, a in holders:
            if a.endswith("_orig") and _masked(m, a[: -len("_orig")]):
                raise _already_masked(q[: -len("_orig")])
        if not par.is_floating_point():
            raise TypeError(f"`params`: {qual} is {par.dtype}, not floating point")
        if par.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"`params`: {qual} is {par.dtype}; chita_core computes the gradients and solves "
                "in float32 or float64: prune a float32 copy of the model (`model.float()`, with "
                f"float32 inputs) and cast it back afterwards (`model.to({par.dtype})`)"
            )
        if par.numel() == 0:
            raise ValueError(f"`params`: {qual} has no elements, so nothing to prune")
        out.append((qual, mod, attr, par))
    return out


# ----------------------------------------------------------------------------------------------
# Data and per-sample gradients
# ----------------------------------------------------------------------------------------------


def _draw(
    data: Iterable[Any], n: int | None, device: torch.device, name: str = "data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n samples of ``data`` (all of them when n is None) on ``device``."""
    xs, ys, got = [], [], 0
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                f"`{name}` must yield (input, target) pairs of tensors with the samples along the "
                f"first dimension, got {type(batch).__name__}"
            )
        x, y = (torch.as_tensor(t) for t in batch)
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"`{name}` batches must have inputs and targets with the same leading (sample) "
                f"dimension, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        take = x.shape[0] if n is None else min(n - got, x.shape[0])
        xs.append(x[:take].to(device))
        ys.append(y[:take].to(device))
        got += take
        if n is not None and got >= n:
            break
    if n is None and got == 0:
        raise ValueError(f"`{name}` yielded no samples")
    if n is not None and got < n:
        raise ValueError(
            f"`{name}` yielded {got} samples but n_grads={n} were requested; pass more data or "
            "a smaller `n_grads`"
        )
    return torch.cat(xs), torch.cat(ys)


class _Progress:
    """tqdm when installed, else nothing (``progress=False`` is always silent)."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                print(f"chita_core.torch: {desc} ({total})", file=sys.stderr)
            else:
                self.bar = tqdm(total=total, desc=desc, leave=False)

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _gradient_matrix(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    X: torch.Tensor,
    Y: torch.Tensor,
    selected: Sequence[tuple[str, nn.Module, str, nn.Parameter]],
    chunk: int | None,
    progress: bool,
) -> torch.Tensor:
    """A = G / sqrt(n) with G[i] the gradient of sample i's loss w.r.t. the selected tensors
    (flattened, concatenated), as an (n, p) F-ordered tensor on the model's device."""
    from torch.func import functional_call, grad, vmap

    names = [q for q, *_ in selected]
    sizes = [par.numel() for *_, par in selected]
    par0 = selected[0][3]
    n, p = X.shape[0], sum(sizes)
    storage = torch.empty((p, n), dtype=par0.dtype, device=par0.device)
    A = storage.t()  # (n, p), F order: column j contiguous
    state = {k: v.detach() for k, v in model.named_parameters()}
    state.update({k: v.detach() for k, v in model.named_buffers()})
    # Tied tensors: one entry in `state` (and in `sel`), under their named_parameters() name;
    # every other module holding them gets the very same tensor, so that a tied weight is one
    # variable and its gradient the sum over its uses. This is what functional_call's
    # tie_weights=True does, except that it also swaps a module reachable by two paths twice
    # and then restores it to the swapped-in tensor (torch 2.x), corrupting the model.
    tied = {
        q: holders[0][0]
        for holders in _aliases(model).values()
        if holders[0][0] in state
        for q, _, _ in holders[1:]
    }

    def sample_loss(sel: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        tensors = {**state, **sel}
        tensors.update({q: tensors[first] for q, first in tied.items()})
        out = functional_call(model, tensors, (x.unsqueeze(0),), tie_weights=False)
        loss = loss_fn(out, y.unsqueeze(0))
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                "`loss_fn` must return a scalar tensor (the mean or sum over the batch, e.g. "
                f"reduction='mean'), got {got}"
            )
        return loss

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    sel = {q: par.detach() for q, _, _, par in selected}
    if chunk is None:
        chunk = max(1, min(n, _CHUNK_BYTES // max(1, 3 * p * par0.element_size())))
    scale = 1.0 / math.sqrt(n)
    was_training = model.training
    model.eval()  # per-sample statistics: no batch-norm updates, no dropout
    bar = _Progress(progress, n, "per-sample gradients")
    try:
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            grads = per_sample(sel, X[i0:i1], Y[i0:i1])
            off = 0
            for name, size in zip(names, sizes, strict=True):
                storage[off : off + size, i0:i1] = grads[name].reshape(i1 - i0, size).t() * scale
                off += size
            bar.update(i1 - i0)
    finally:
        bar.close()
        model.train(was_training)
    return A


# ----------------------------------------------------------------------------------------------
# Solving and writing back
# ----------------------------------------------------------------------------------------------


def _column_blocks(A: torch.Tensor):
    """Column blocks of A upcast to float64, about 32 MB each: A itself is never copied."""
    step = max(1, (32 << 20) // (8 * max(1, A.shape[0])))
    for j0 in range(0, A.shape[1], step):
        yield j0, A[:, j0 : j0 + step].double()


def _matvec64(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A @ x accumulated in float64, by column blocks."""
    out = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
    for j0, block in _column_blocks(A):
        out += block @ x[j0 : j0 + block.shape[1]].double()
    return out


@dataclass
class _Block:
    """One problem of a stage: columns lo:hi of A (the whole A, or one tensor's), its k and the
    prepared Problem (validated once: one NaN scan and column-norm pass of A per stage), with
    the magnitude + backsolve point of each ridge solved so far (``iht`` starts from it)."""

    lo: int
    hi: int
    k: int
    problem: Problem
    magnitude: dict[float, Any] = field(default_factory=dict)

    def at(self, ridge: float) -> Problem:
        return self.problem.with_ridge(ridge)

    def magnitude_point(self, ridge: float) -> Any:
        """The exact refit on the k largest |w_bar| at ``ridge`` (solved once per ridge)."""
        if ridge not in self.magnitude:
            prob = self.at(ridge)
            with prob.stream():
                support = prob.xp.empty(self.k, dtype=np.int64)
                prob.kernels.topk(prob.w_bar, self.k, support)
                self.magnitude[ridge] = prob.point(support, keep_inverse=True)
        return self.magnitude[ridge]


def _blocks(
    A: torch.Tensor,
    w_bar: torch.Tensor,
    k_total: int,
    sizes: list[int],
    sparsity: float,
    per_layer: bool,
    backend: str,
) -> list[_Block]:
    """The problems of one stage: one global problem, or one per tensor. Built once per stage
    (b = A_block w_bar_block is one pass over A; the Problem's column norms another)."""
    if not per_layer:
        spans = [(0, A.shape[1], k_total)]
    else:
        spans, off = [], 0
        for size in sizes:
            spans.append((off, off + size, max(1, round((1.0 - sparsity) * size))))
            off += size
    out = []
    for lo, hi, k in spans:
        As, wbs = A[:, lo:hi], w_bar[lo:hi]
        bs = _matvec64(As, wbs).to(A.dtype)
        out.append(_Block(lo, hi, k, Problem(As, bs, w_bar=wbs, backend=backend)))
    return out


def _mean_curvature(blocks: list[_Block], p: int) -> float:
    """Mean over all p columns of ||A[:, j]||^2 (the average curvature of one weight), from the
    column norms the blocks' problems already hold."""
    return sum(float(b.problem.h.sum()) for b in blocks) / p


# Options of chita_core.iht that the adapter sets itself (from the model and the ridge path).
_OWN_OPTIONS = ("A", "b", "k", "ridge", "w_bar", "backend", "check_finite")


def _check_solver_options(options: dict[str, Any]) -> None:
    """TypeError naming any ``**solver_options`` entry that ``chita_core.iht`` does not take
    (or that prune sets itself), before any gradient work."""
    import inspect

    accepted = {
        name for name in inspect.signature(solve).parameters if not name.startswith("_")
    } - {"prob", "k"}
    for name in options:
        if name in _OWN_OPTIONS:
            raise TypeError(f"`{name}` is set by prune itself; it is not a solver option here")
        if name not in accepted:
            takes = ", ".join(sorted(accepted))
            raise TypeError(f"unknown solver option `{name}`; chita_core.iht takes {takes}")


def _solve(
    w_bar: torch.Tensor,
    blocks: list[_Block],
    method: str,
    ridge: float,
    solver_options: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, float, list[IHTResult]]:
    """(w, kept, objective, results) for one stage and one ridge; ``kept`` is the boolean
    support (exactly k entries per block, even where a kept weight happens to be zero)."""
    w = torch.zeros_like(w_bar)
    kept = torch.zeros(w_bar.shape, dtype=torch.bool, device=w_bar.device)
    results, f_total = [], 0.0
    for blk in blocks:
        lo, hi = blk.lo, blk.hi
        if method == "magnitude":
            wbs = w_bar[lo:hi]
            support = torch.topk(wbs.abs(), blk.k, sorted=False).indices.sort().values
            kept[lo:hi][support] = True
            w[lo:hi][support] = wbs[support]
            f_total += blk.at(ridge).objective(w[lo:hi])
            continue
        point = blk.magnitude_point(ridge)
        if method == "chita":
            res = solve(blk.at(ridge), blk.k, _magnitude=point, **solver_options)
            w[lo:hi] = res.w
            kept[lo:hi][res.support] = True
            results.append(res)
            f_total += res.objective
            continue
        prob = blk.at(ridge)
        w[lo:hi] = prob.output(point.w)
        kept[lo:hi][prob.output(point.support, cast=False)] = True
        f_total += point.f
    return w, kept, f_total, results


def _mean_loss(model, loss_fn, X, Y, batch: int = 1024) -> float:
    """Mean of ``loss_fn`` over the samples (in eval mode, without gradients)."""
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for i0 in range(0, X.shape[0], batch):
                out = model(X[i0 : i0 + batch])
                total += float(loss_fn(out, Y[i0 : i0 + batch])) * min(batch, X.shape[0] - i0)
    finally:
        model.train(was_training)
    return total / X.shape[0]


def _write_back(selected, w: torch.Tensor) -> None:
    off = 0
    with torch.no_grad():
        for _, _, _, par in selected:
            m = par.numel()
            par.copy_(w[off : off + m].view_as(par))
            off += m


def _is_real(value: Any) -> bool:
    """A real number (Python or NumPy scalar, ...), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(name: str, value: Any, low: int, what: str | None = None) -> int:
    """``value`` as a Python int >= low: anything ``operator.index`` accepts (int, NumPy
    integers, ...), but not a bool."""
    what = what or f"an integer >= {low}"
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be {what}, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"`{name}` must be {what}, got {value!r}") from None
    if out < low:
        raise ValueError(f"`{name}` must be {what}, got {value!r}")
    return out


def prune(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Iterable[Any],
    sparsity: float,
    *,
    params: Any = None,
    n_grads: int = 1000,
    ridge: float | None = None,
    stages: int = 1,
    schedule: str = "poly",
    per_layer: bool = False,
    method: str = "chita",
    backend: str = "auto",
    progress: bool = True,
    chunk_size: int | None = None,
    val_data: Iterable[Any] | None = None,
    **solver_options: Any,
) -> PruneReport:
    """Prune ``model`` in place to ``sparsity`` with chita_core; returns a :class:`PruneReport`.

    Parameters
    ----------
    model : torch.nn.Module
        Trained model, on the CPU or (with the CUDA backend) a GPU. Left in its train/eval
        mode; gradients are computed in eval mode.
    loss_fn : callable
        ``loss_fn(output, target)`` -> scalar loss (e.g. ``nn.CrossEntropyLoss()``); it is
        called on one sample at a time (batch dimension 1).
    data : iterable of (input, target)
        Batches with samples along the first dimension (a DataLoader, a list of pairs, ...);
        the first ``n_grads`` samples are used.
    sparsity : float in [0, 1)
        Fraction of the selected weights set to zero (any real number: Python or NumPy).
    params : optional
        What to prune: a non-empty list of modules (their ``weight``), parameters or parameter
        names. Default: the weights of every Linear and Conv layer (biases and norms are left
        alone; empty weights are skipped). A tied parameter is selected once, by any of its
        names (or several), and masked in every module that holds it. The selected tensors
        must be float32 or float64 (prune a ``model.float()`` copy of a half-precision model)
        on one device; a model on the meta device holds no data and is refused.
    n_grads : int, default 1000
        Samples in the gradient matrix A (its rows). Integers here and in ``stages`` and
        ``chunk_size`` may be NumPy integers (anything ``operator.index`` takes, not bools).
    ridge : float, optional
        Weight of ``0.5 ||w - w_bar||^2``, which keeps the solution where the quadratic model
        of the loss holds; finite and >= 0. Default: a short path, ``RIDGE_SCALES`` (0.01,
        0.1, 1, 10) times the mean squared column norm of A (the average curvature of one
        weight; 0 alone when every gradient is zero); each is solved and the solution with the
        lowest real loss on the ``n_grads`` samples is kept (at every stage, and for
        "magnitude+backsolve" alike).
    stages : int, default 1
        CHITA++: reach ``sparsity`` through ``stages`` solves following ``schedule``,
        recomputing the gradients at the pruned weights before each.
    schedule : {"poly", "exp", "linear"}, default "poly"
        Sparsity schedule for ``stages > 1`` (see :func:`schedule_sparsities`).
    per_layer : bool, default False
        Prune every tensor to the same sparsity (one problem per tensor) instead of one global
        problem in which the solver spreads the sparsity across layers.
    method : {"chita", "magnitude", "magnitude+backsolve"}, default "chita"
        The solver; the other two are the usual baselines (keep the largest weights, and
        optionally refit them exactly on the same quadratic model).
    backend : {"auto", "cpp", "numba", "cuda"}, default "auto"
        Solver backend; "auto" follows the model's device.
    progress : bool, default True
        Progress bars (tqdm) for the gradients and the stages.
    chunk_size : int, optional
        Samples per vmap chunk; default bounds the per-sample gradients held at once to 256 MB.
    val_data : iterable of (input, target), optional
        Samples whose mean loss chooses among the candidate solutions of a stage (the ridges
        of the path; chita or magnitude + backsolve). Default: the ``n_grads`` gradient samples.
        Samples not used for A (a validation split of the training data) choose more honestly.
    **solver_options
        Passed to :func:`chita_core.iht` (``init``, ``swaps``, ``max_iter``, ...).

    Returns
    -------
    PruneReport
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}")
    if not _is_real(sparsity):
        raise TypeError(f"`sparsity` must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1), got {sparsity!r}")
    sparsity = float(sparsity)
    n_grads = _integer("n_grads", n_grads, 1)
    stages = _integer("stages", stages, 1)
    if chunk_size is not None:
        chunk_size = _integer("chunk_size", chunk_size, 1, "a positive integer")
    if method not in _METHODS:
        raise ValueError(
            f"`method` must be one of {', '.join(map(repr, _METHODS))}; got {method!r}"
        )
    if ridge is not None:
        if not _is_real(ridge) or not (math.isfinite(float(ridge)) and float(ridge) >= 0.0):
            raise ValueError(f"`ridge` must be a finite number >= 0 or None, got {ridge!r}")
        ridge = float(ridge)
    targets = schedule_sparsities(sparsity, stages, schedule)
    meta = [
        name
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
        if t.is_meta
    ]
    if meta:
        more = f" and {len(meta) - 1} more" if len(meta) > 1 else ""
        raise ValueError(
            f"`model` has tensors on the meta device ({meta[0]}{more}): meta tensors hold no "
            "data (only shapes), so there are no weights to prune and no gradients to compute; "
            "chita_core runs on the CPU or CUDA GPUs: materialise the model first (e.g. "
            "`model.to_empty(device='cpu')`, then `model.load_state_dict(...)`)"
        )
    selected = _select(model, params)
    devices = {par.device for *_, par in selected}
    dtypes = {par.dtype for *_, par in selected}
    if len(devices) > 1 or len(dtypes) > 1:
        raise ValueError(
            "the selected tensors must share one device and dtype, got "
            f"{sorted(map(str, devices))} and {sorted(map(str, dtypes))}"
        )
    device = devices.pop()
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"`model` is on {device}; chita_core runs on the CPU or CUDA GPUs")
    get_backend(backend, on_device=device.type == "cuda")  # fail before any gradient work
    _check_solver_options(solver_options)
    holders = _aliases(model)  # every (module, attribute) holding each selected tensor
    sizes = [par.numel() for *_, par in selected]
    p = sum(sizes)

    X, Y = _draw(data, n_grads, device)
    Xv, Yv = (X, Y) if val_data is None else _draw(val_data, None, device, "val_data")
    stage_reports: list[StageReport] = []
    bar = _Progress(progress and stages > 1, stages, "stages")
    try:
        for target in targets:
            t0 = time.perf_counter()
            A = _gradient_matrix(model, loss_fn, X, Y, selected, chunk_size, progress)
            w_bar = torch.cat([par.detach().reshape(-1) for *_, par in selected])
            t1 = time.perf_counter()
            k = max(1, round((1.0 - target) * p))
            blocks = _blocks(A, w_bar, k, sizes, target, per_layer, backend)
            if ridge is not None or method == "magnitude":
                ridges = [0.0 if ridge is None else ridge]
            else:  # a short path of ridges; the real loss on the samples picks one
                curvature = _mean_curvature(blocks, p)
                # distinct ridges only: with zero curvature (all gradients zero, e.g. dead
                # ReLUs everywhere) the path collapses to ridge 0
                ridges = list(dict.fromkeys(scale * curvature for scale in RIDGE_SCALES))
            # chita also weighs magnitude + backsolve at each ridge, so that on the real loss it
            # is never worse than that baseline (the solver guarantees it on the quadratic).
            runs = [(lam, method) for lam in ridges]
            if method == "chita" and ridge is None:
                runs += [(lam, "magnitude+backsolve") for lam in ridges]
            best = None
            for lam, how in runs:
                w, kept, f, results = _solve(w_bar, blocks, how, lam, solver_options)
                _write_back(selected, w)
                loss = _mean_loss(model, loss_fn, Xv, Yv)
                if best is None or loss < best[0]:
                    best = (loss, lam, w, kept, f, results, how)
            loss, lam, w, kept, f, results, how = best
            _write_back(selected, w)
            t2 = time.perf_counter()
            stage_reports.append(
                StageReport(target, k, f, lam, loss, how, t1 - t0, t2 - t1, results)
            )
            del A, blocks
            bar.update(1)
    finally:
        bar.close()

    tensors: dict[str, tuple[float, int]] = {}
    zeros_total = 0
    off = 0
    for qual, _, _, par in selected:
        m = par.numel()
        keep = kept[off : off + m].view_as(par)
        off += m
        # zeros of the pruned tensor: the pruned entries and any kept entry that is zero
        zeros = int(((par.detach() == 0) | ~keep).sum())
        tensors[qual] = (zeros / m, m)
        zeros_total += zeros
        # the same mask on every (module, attribute) holding the tensor: each keeps reading the
        # one `<attr>_orig` Parameter (the tie survives training) through the one mask buffer
        shared = None
        for _, mod, attr in holders[id(par)]:
            torch_prune.custom_from_mask(mod, attr, keep.to(par.dtype))
            if shared is None:
                shared = getattr(mod, attr + "_mask")
            else:
                mod.register_buffer(attr + "_mask", shared)
    return PruneReport(
        sparsity=zeros_total / p,
        tensors=tensors,
        stages=stage_reports,
        n_grads=n_grads,
        method=method,
        grad_seconds=sum(s.grad_seconds for s in stage_reports),
        solve_seconds=sum(s.solve_seconds for s in stage_reports),
    )


def remove_masks(model: nn.Module) -> list[str]:
    """Makes every ``torch.nn.utils.prune`` mask in ``model`` permanent (the zeros stay, the
    masks and ``*_orig`` parameters go). Returns the names of the tensors unmasked (every
    module of a tied tensor: they end up holding the one Parameter again, still tied)."""
    done = []
    for mod_name, mod in model.named_modules():
        hooks = [
            h
            for h in mod._forward_pre_hooks.values()
            if isinstance(h, torch_prune.BasePruningMethod)
        ]
        for hook in hooks:
            names = [h._tensor_name for h in getattr(hook, "_pruning_methods", [hook])]
            for attr in dict.fromkeys(names):
                if hasattr(mod, attr + "_mask"):
                    torch_prune.remove(mod, attr)
                    done.append(f"{mod_name}.{attr}" if mod_name else attr)
    return done
