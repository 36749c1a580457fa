"""chita_core.torch.prune: one or several pruning stages, and their report."""

from __future__ import annotations

import itertools
import math
import numbers
import operator
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .._api import IHTResult
from ..backends import get_backend
from ._gradients import _draw, _gradient_matrix, _Progress
from ._memory import MemoryPlan, plan_memory
from ._params import _aliases, _select, _write_back
from ._solve import LocalStage, _check_solver_options

_SCHEDULES = ("poly", "exp", "linear")
_METHODS = ("chita", "magnitude", "magnitude+backsolve")
#: ``ridge=None`` tries these ridges, relative to the mean curvature of one weight (the mean
#: squared column norm of A), and keeps the solution with the lowest loss on the gradient samples.
RIDGE_SCALES = (0.01, 0.1, 1.0, 10.0)
#: k >= DEGENERATE_RATIO x n_grads: the global quadratic model is close to degenerate (every
#: support of n or more columns fits the n gradient samples, the objective is then mostly the
#: ridge term, and magnitude + backsolve is near optimal). Measured on digits-MLP gradients
#: (p = 9,472): chita's objective 0.2-1.2% under magnitude + backsolve's at k/n = 37-148,
#: 1.2-14% at k/n = 9-15, 8-22% at 4, 42% at 1.
DEGENERATE_RATIO = 10


@dataclass
class StageReport:
    """One stage of :func:`prune`."""

    target_sparsity: float  #: sparsity this stage prunes to
    k: int  #: weights kept (all selected tensors together)
    objective: float  #: the solver's objective at its solution
    ridge: float  #: ridge used (the one kept, when several were tried)
    loss: float  #: mean loss of the pruned model on the selection samples (see ``val_data``)
    #: the candidate kept: ``method``, or "magnitude+backsolve" when it had lower loss; on the
    #: last of several stages "one-shot <method>" when the one-shot solve was kept
    chosen: str
    grad_seconds: float  #: building A (per-sample gradients)
    solve_seconds: float  #: the solver
    #: solver results (one, or one per tensor), without their ``w`` and ``support`` (None):
    #: the pruned weights are in the model and the masks in its ``weight_mask`` buffers
    results: list[IHTResult] = field(repr=False)
    #: k / n_grads; at DEGENERATE_RATIO or more the quadratic model is close to degenerate
    k_over_n: float = 0.0
    #: 1 - chita's objective / magnitude + backsolve's, at the ridge kept (None when only one
    #: of them ran): what the search bought on the quadratic model
    gain_over_backsolve: float | None = None

    @property
    def degenerate(self) -> bool:
        """k >> n: every support fits the samples; see DEGENERATE_RATIO."""
        return self.k_over_n >= DEGENERATE_RATIO


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
    memory: MemoryPlan | None = None  #: the memory plan (A, solver, limit), made before any work
    #: with stages > 1: whether the one-shot solve to the final sparsity (on the first A) had
    #: a lower selection loss than the last stage and was kept (``stages[-1]`` describes it)
    one_shot: bool = False

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
                + (f"; k = {s.k_over_n:.0f} n: degenerate" if s.degenerate else "")
            )
        width = max(len(n) for n in self.tensors)
        for name, (sp, m) in self.tensors.items():
            lines.append(f"  {name:<{width}}  {sp:7.2%} of {m:,}")
        return "\n".join(lines)


def schedule_sparsities(sparsity: float, stages: int, schedule: str = "exp") -> list[float]:
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


_A_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
             "float16": torch.float16}  # fmt: skip


def _storage_dtype(a_dtype: Any) -> torch.dtype | None:
    """``a_dtype`` as a torch dtype (None stays None), with an error naming it."""
    if a_dtype is None:
        return None
    name = a_dtype.removeprefix("torch.") if isinstance(a_dtype, str) else None
    if isinstance(a_dtype, torch.dtype):
        name = str(a_dtype).removeprefix("torch.")
    if name not in _A_DTYPES:
        raise ValueError(
            f"`a_dtype` must be one of {', '.join(_A_DTYPES)} (a torch dtype or its name) or "
            f"None, got {a_dtype!r}"
        )
    return _A_DTYPES[name]


def prune(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor] | None,
    data: Iterable[Any],
    sparsity: float,
    *,
    params: Any = None,
    n_grads: int | None = None,
    ridge: float | None = None,
    stages: int = 1,
    schedule: str = "exp",
    per_layer: bool = False,
    method: str = "chita",
    backend: str = "auto",
    progress: bool = True,
    chunk_size: int | None = None,
    val_data: Iterable[Any] | None = None,
    a_dtype: Any = None,
    memory_limit: int | None = None,
    group: Any = None,
    **solver_options: Any,
) -> PruneReport:
    """Prune ``model`` in place to ``sparsity`` with chita_core; returns a :class:`PruneReport`.

    Parameters
    ----------
    model : torch.nn.Module
        Trained model, on the CPU or (with the CUDA backend) a GPU. Left in its train/eval
        mode; gradients are computed in eval mode.
    loss_fn : callable or None
        ``loss_fn(output, target)`` -> scalar loss (e.g. ``nn.CrossEntropyLoss()``); for dict
        batches ``loss_fn(output, batch)``; None: the model's own loss (``output.loss``, as a
        Hugging Face model returns when the batch has ``labels``). It is called on one sample
        at a time (batch dimension 1).
    data : iterable of batches
        Batches with samples along the first dimension of every tensor (a DataLoader, a list,
        ...): ``(input, target)`` pairs, ``input`` a tensor, a tuple of positional inputs or a
        dict of keyword inputs, or dicts of keyword inputs (``model(**batch)``, as Hugging Face
        models take); the first ``n_grads`` samples are used. Per-sample gradients come from
        ``torch.func.vmap``; a model vmap cannot trace (data-dependent control flow, in-place
        updates, hooks) falls back, with one warning, to a backward pass per sample.
    sparsity : float in [0, 1)
        Fraction of the selected weights set to zero (any real number: Python or NumPy).
    params : optional
        What to prune: a non-empty list of modules (their ``weight``), parameters or parameter
        names. Default: the weights of every Linear and Conv layer (biases and norms are left
        alone; empty weights are skipped). A tied parameter is selected once, by any of its
        names (or several), and masked in every module that holds it. The selected tensors
        must be float32 or float64 (prune a ``model.float()`` copy of a half-precision model)
        on one device; a model on the meta device holds no data and is refused.
    n_grads : int, optional
        Samples in the gradient matrix A (its rows). Default: 1000, or as many as fit the
        memory (see ``memory_limit``), or as many as ``data`` has if fewer. An explicit value
        that does not fit is refused before any work, with what would fit. Integers here and in
        ``stages`` and ``chunk_size`` may be NumPy integers (anything ``operator.index`` takes,
        not bools).
    ridge : float, optional
        Weight of ``0.5 ||w - w_bar||^2``, which keeps the solution where the quadratic model
        of the loss holds; finite and >= 0. Default: a short path, ``RIDGE_SCALES`` (0.01,
        0.1, 1, 10) times the mean squared column norm of A (the average curvature of one
        weight; 0 alone when every gradient is zero); each is solved and the solution with the
        lowest real loss on the ``n_grads`` samples is kept (at every stage, and for
        "magnitude+backsolve" alike).
    stages : int, default 1
        CHITA++: reach ``sparsity`` through ``stages`` solves following ``schedule``,
        recomputing the gradients at the pruned weights before each. The one-shot solve to
        ``sparsity`` on the first stage's gradients (at the dense weights) stays a candidate:
        it is kept instead of the last stage where its selection loss is lower
        (``report.one_shot``), so the schedule never ends worse than one stage on that loss.
        (A byte-level transformer with 12.6M weights, n_grads = 128: 3 stages beat one at
        70%, 6.05 against 6.30 held-out perplexity, and lose at 90%, 18.0 against 13.5.)
    schedule : {"poly", "exp", "linear"}, default "exp"
        Sparsity schedule for ``stages > 1`` (see :func:`schedule_sparsities`). "exp" (the kept
        fraction shrinking geometrically) measured best of the two tried: the 12.6M-weight
        byte-level LM, 3 stages, 6.11 / 12.69 held-out perplexity at 70 / 90% against 6.14 /
        13.23 with "poly" (magnitude + backsolve 6.37 / 13.23); the demo's digits MLP, accuracy
        0.984 / 0.970 / 0.863 at 70 / 90 / 95% against 0.980 / 0.954 / 0.809.
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
    val_data : iterable of batches, optional
        Samples whose mean loss chooses among the candidate solutions of a stage (the ridges
        of the path; chita or magnitude + backsolve). Default: the ``n_grads`` gradient samples.
        Samples not used for A (a validation split of the training data) choose more honestly.
    a_dtype : torch.dtype or str, optional
        Storage type of the gradient matrix A: ``torch.float32`` / ``float64`` / ``bfloat16`` /
        ``float16`` (or their names). Default: the selected tensors' dtype. bfloat16 halves A's
        memory and, the solver's passes being bandwidth-bound, about halves their time; the
        solver still sums in float64 (short float32 partials) and keeps b, w in float32/64.
    memory_limit : int, optional
        Bytes that A and the solver may use: A (``n_grads x p`` entries of ``a_dtype``), the
        solver's O(p) vectors, the n x n algebra and the per-sample gradient chunk are planned
        against it before any work (``report.memory``), and what is left caps the solver's
        workspaces (greedy OBS's superset). Default: 85% of the device's free memory.
    group : torch.distributed process group, optional
        Prune on every rank of ``group`` (``torch.distributed.group.WORLD`` for all of them,
        e.g. under torchrun), each rank calling ``prune`` with the same model and arguments and
        its own ``data``: rank r computes the per-sample gradients of its n_r samples, an
        all-to-all turns the rows into column shards as they are computed (rank r ends with the
        gradients of all n = sum n_r samples on its block of about p / ranks columns, never all
        of A nor all of its rows), and the
        solve runs over the shards (:mod:`chita_core.distributed`); every rank then writes the
        same weights and masks. ``n_grads`` is the global n, split as evenly as possible over
        the ranks in rank order (None: each rank takes up to its share of the planned default,
        or all its data if it has fewer); the loss that chooses among the ridge candidates is
        summed over the ranks' samples (or their ``val_data``). ``method="chita"`` runs
        :func:`chita_core.distributed.iht` (the whole pipeline over shards, the same decisions
        as one process): options it does not take (``callback``, ``verbose``, ``time_limit``)
        raise NotImplementedError on every rank before any gradient work. With ``per_layer``
        the column blocks end at tensor boundaries (each the one nearest the even split) and
        each tensor's problem is solved on the rank that holds it by :func:`chita_core.iht`
        (every option taken, no collective inside a solve). With ``stages > 1`` every stage
        recomputes the rows at the pruned weights and exchanges them again. CPU models (gloo). The
        arguments other than ``data`` / ``val_data`` and the model must be the same on every
        rank (checked: a model that differs raises ShardError on every rank).
    **solver_options
        Passed to :func:`chita_core.iht` (``init``, ``swaps``, ``max_iter``, ...).

    Returns
    -------
    PruneReport
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable or None, got {type(loss_fn).__name__}")
    if not _is_real(sparsity):
        raise TypeError(f"`sparsity` must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1), got {sparsity!r}")
    sparsity = float(sparsity)
    if n_grads is not None:
        n_grads = _integer("n_grads", n_grads, 1)
    if memory_limit is not None:
        memory_limit = _integer("memory_limit", memory_limit, 1, "a positive number of bytes")
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
    a_dtype = _storage_dtype(a_dtype)
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
    if group is not None:  # samples split over the ranks, A over their columns
        from ._distributed import prune_sharded

        return prune_sharded(
            model, loss_fn, data, selected, holders, group=group, sparsity=sparsity,
            targets=targets, n_grads=n_grads, ridge=ridge, per_layer=per_layer, method=method,
            backend=backend, progress=progress, chunk_size=chunk_size, val_data=val_data,
            a_dtype=a_dtype, memory_limit=memory_limit, solver_options=solver_options,
        )  # fmt: skip

    itemsize = (a_dtype or selected[0][3].dtype).itemsize
    memory = plan_memory(n_grads, p, itemsize, device, memory_limit)
    samples = _draw(data, memory.n_grads, device, exact=n_grads is not None)
    if samples.n < memory.n_grads:  # the data had fewer (n_grads=None): the plan for those
        memory = plan_memory(samples.n, p, itemsize, device, memory.limit)
    solver_options = {
        **solver_options,
        "memory_limit": _workspace(memory, stages, method, selected),
    }
    held = samples if val_data is None else _draw(val_data, None, device, "val_data")

    def build(k: int, target: float, w_bar: torch.Tensor) -> tuple[LocalStage, float]:
        t0 = time.perf_counter()
        A = _gradient_matrix(model, loss_fn, samples, selected, chunk_size, progress, a_dtype)
        t1 = time.perf_counter()
        return LocalStage.build(A, w_bar, k, sizes, target, per_layer, backend), t1 - t0

    kept, reports, one_shot = _stages(model, loss_fn, held, selected, targets, method, ridge,
                                      solver_options, build, samples.n, progress)  # fmt: skip
    return _finish(selected, holders, kept, reports, samples.n, memory, method, one_shot)


def _workspace(memory: MemoryPlan, stages: int, method: str, selected: Any) -> int:
    """The solver's workspace (``memory_limit``): the plan's, less what the schedule holds
    beside the solver (with stages > 1, the one-shot candidate's weights and mask)."""
    workspace = memory.workspace_bytes
    if stages > 1 and method != "magnitude":
        p = sum(par.numel() for *_, par in selected)
        workspace = max(0, workspace - p * (selected[0][3].element_size() + 1))
    return workspace


def _stages(
    model: nn.Module,
    loss_fn: Any,
    held: Any,
    selected: Any,
    targets: list[float],
    method: str,
    ridge: float | None,
    solver_options: dict[str, Any],
    build: Callable[[int, float, torch.Tensor], tuple[Any, float]],
    n: int,
    progress: bool,
) -> tuple[torch.Tensor, list[StageReport], bool]:
    """The stages of :func:`prune` (one, or CHITA++'s schedule ``targets``): each builds its
    problems at the current weights (``build(k, target, w_bar)`` -> (stage, seconds spent on
    the gradients); a :class:`~chita_core.torch._solve.LocalStage`, or the sharded prune's), solves
    the ridge path, keeps the candidate with the lowest selection loss and writes it back.
    Returns (the last stage's support, the stage reports, whether the one-shot candidate was
    kept)."""
    p = sum(par.numel() for *_, par in selected)
    reports: list[StageReport] = []
    one_shot, one_shot_k, chose_one_shot, one_shot_objectives = None, 0, False, {}
    bar = _Progress(progress and len(targets) > 1, len(targets), "stages")
    try:
        for target in targets:
            t0 = time.perf_counter()
            k = max(1, round((1.0 - target) * p))
            w_bar = torch.cat([par.detach().reshape(-1) for *_, par in selected])
            stage, grad_seconds = build(k, target, w_bar)  # (its problems view this w_bar)
            runs = _runs(method, ridge, stage.curvature)
            if len(targets) > 1 and not reports and method != "magnitude":
                # The schedule is a heuristic: the one-shot solve to the final target, on this
                # first A (at the dense weights, no extra gradient pass), stays a candidate and
                # is kept at the end if its selection loss is lower than the last stage's.
                one_shot_k = max(1, round((1.0 - targets[-1]) * p))
                final = stage.final(one_shot_k, targets[-1])
                # Held until the last stage: its weights and mask (counted in the workspace).
                one_shot, one_shot_objectives = _choose(
                    model, loss_fn, held, selected, w_bar, final, runs, solver_options
                )
                _write_back(selected, w_bar)  # back to the dense weights for this stage
                del final
            best, objectives = _choose(
                model, loss_fn, held, selected, w_bar, stage, runs, solver_options
            )
            how = best[-1]
            if target == targets[-1] and one_shot is not None and one_shot[0] < best[0]:
                best, k, objectives = one_shot, one_shot_k, one_shot_objectives
                how, chose_one_shot = f"one-shot {best[-1]}", True
            w, kept = best[2], best[3]
            _write_back(selected, w)
            seconds = time.perf_counter() - t0
            solve_seconds = seconds - grad_seconds
            reports.append(
                _stage_report(target, k, best, how, objectives, grad_seconds, solve_seconds, n)
            )
            # Nothing of this stage but its mask is held while the next one builds its A.
            del stage, best, w, w_bar
            bar.update(1)
    finally:
        bar.close()
    return kept, reports, chose_one_shot


def _choose(
    model: nn.Module,
    loss_fn: Any,
    held: Any,
    selected: Any,
    w_bar: torch.Tensor,
    stage: Any,
    runs: list[tuple[float, str]],
    solver_options: dict[str, Any],
) -> tuple[tuple[Any, ...], dict[tuple[float, str], float]]:
    """Solves every (ridge, method) of ``runs`` on ``stage`` and keeps the one whose weights
    have the lowest mean loss on ``held`` (``stage.mean_loss``): ((loss, ridge, w, kept,
    objective, results, method), objectives). Leaves the model at the last solution tried (the
    caller writes back the one it keeps)."""
    best = None
    objectives = {}
    for lam, how in runs:
        w, kept, f, results = stage.solve(w_bar, how, lam, solver_options)
        objectives[lam, how] = f
        _write_back(selected, w)
        loss = stage.mean_loss(model, loss_fn, held)
        if best is None or loss < best[0]:
            best = (loss, lam, w, kept, f, results, how)
        # A candidate not kept is dropped before the next solve (its w, mask and the solver's
        # result: 13 to 17 bytes per weight).
        del w, kept, results
    assert best is not None
    return best, objectives


def _runs(
    method: str, ridge: float | None, curvature: Callable[[], float]
) -> list[tuple[float, str]]:
    """The (ridge, method) candidates of a stage: ``ridge``, or with ``ridge=None`` a short path
    of ridges (``RIDGE_SCALES`` x ``curvature()``, the mean curvature of one weight) whose real
    loss on the samples picks one; magnitude needs no ridge."""
    if ridge is not None or method == "magnitude":
        ridges = [0.0 if ridge is None else ridge]
    else:
        # distinct ridges only: with zero curvature (all gradients zero, e.g. dead ReLUs
        # everywhere) the path collapses to ridge 0
        c = curvature()
        ridges = list(dict.fromkeys(scale * c for scale in RIDGE_SCALES))
    # chita also weighs magnitude + backsolve at each ridge, so that on the real loss it is
    # never worse than that baseline (the solver guarantees it on the quadratic). Ridge by ridge
    # (the stage's problems hold one ridge's magnitude point at a time).
    methods = [method]
    if method == "chita" and ridge is None:
        methods.append("magnitude+backsolve")
    return [(lam, how) for lam in ridges for how in methods]


def _stage_report(
    target: float,
    k: int,
    best: tuple[Any, ...],
    how: str,
    objectives: dict[tuple[float, str], float],
    grad_seconds: float,
    solve_seconds: float,
    n: int,
) -> StageReport:
    """The report of a stage whose kept candidate is ``best`` (as :func:`_choose` returns it)
    and ``how`` its label, from n gradient samples."""
    loss, lam, _, _, f, results, _ = best
    pair = objectives.get((lam, "chita")), objectives.get((lam, "magnitude+backsolve"))
    gain = None if None in pair or pair[1] <= 0 else 1.0 - pair[0] / pair[1]
    return StageReport(
        target, k, f, lam, loss, how, grad_seconds, solve_seconds, results, k / n, gain
    )


def _finish(
    selected: Any,
    holders: dict[int, list[tuple[str, nn.Module, str]]],
    kept: torch.Tensor,
    stage_reports: list[StageReport],
    n: int,
    memory: MemoryPlan | None,
    method: str,
    one_shot: bool,
    stacklevel: int = 3,
) -> PruneReport:
    """Registers the masks ``kept`` (the pruned weights are in the model) and returns the
    report, warning when the last degenerate stage's k >> n (``stacklevel``: prune's caller)."""
    p = kept.numel()
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
    degenerate = [s for s in stage_reports if s.degenerate]
    if degenerate:
        s = degenerate[-1]
        bought = (
            f"; here chita's objective came {s.gain_over_backsolve:.2%} under magnitude + "
            "backsolve's"
            if s.gain_over_backsolve is not None
            else ""
        )
        warnings.warn(
            f"chita_core.torch.prune: k = {s.k:,} kept weights is {s.k_over_n:.0f}x n_grads = "
            f"{n:,}: the quadratic model is close to degenerate (every support of n or "
            "more weights fits the gradient samples, the objective is mostly the ridge term, and "
            f"magnitude + backsolve is near optimal{bought}). More samples make the model "
            "informative: raise n_grads (a_dtype=torch.bfloat16 halves A's memory)",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return PruneReport(
        sparsity=zeros_total / p,
        tensors=tensors,
        stages=stage_reports,
        n_grads=n,
        memory=memory,
        method=method,
        grad_seconds=sum(s.grad_seconds for s in stage_reports),
        solve_seconds=sum(s.solve_seconds for s in stage_reports),
        one_shot=one_shot,
    )
