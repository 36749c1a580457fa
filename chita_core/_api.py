"""Public solver API: ``iht``, ``backsolve`` and ``objective``.

Each call prepares a :class:`~chita_core.Problem` (validation, one pass over A), asks the
planner for the stages to run (``_pipeline.plan``), runs them and returns the best point
(docs/design.md, section 6). Callers solving several k or ridges on one A build the Problem
once and call its methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._pipeline import (
    DEFAULT_EFFORT,
    Context,
    IterationLog,
    Options,
    PlannedStage,
    StageRecord,
    plan,
    run,
)
from ._point import Point
from ._problem import Problem
from ._validation import check_index, check_nonneg_float

__all__ = ["IHTProgress", "IHTResult", "backsolve", "iht", "objective", "solve"]

_INITS = ("auto", "magnitude", "obs", "obs_multistep", "greedy")


class IHTProgress(NamedTuple):
    """What ``callback`` receives after every iteration of :func:`iht`."""

    iteration: int  #: 1-based iteration number
    objective: float  #: objective after the iteration
    tau: float  #: accepted step size (0.0 if the iteration could not improve)
    support_changed: bool  #: whether the iteration moved the support


@dataclass(frozen=True)
class IHTResult:
    """Result of :func:`iht`. ``w`` and ``support`` come in the array library of ``A``."""

    w: Any  #: [p] solution, dtype of A, at most k nonzeros
    support: Any  #: [k] sorted int64 indices of the kept weights
    objective: float  #: 0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2
    n_iter: int  #: iterations run
    converged: bool  #: the relative objective decrease fell below ``tol``
    history: list[float] = field(repr=False)  #: objective before iteration 1, then after each
    backend: str = "cpp"  #: backend that ran the kernels
    elapsed: float = 0.0  #: wall-clock seconds, validation included
    #: (stage, objective after it, seconds) for each stage run: start supports, IHT, refits, swaps
    stages: list[StageRecord] = field(default_factory=list, repr=False)
    #: (stage, modeled seconds, measured seconds) for each stage the planner chose
    plan: list[PlannedStage] = field(default_factory=list, repr=False)


def _result(ctx: Any, prob: Any, timings: list[PlannedStage], t0: float) -> IHTResult:
    """The result of a pipeline run: its best point in the caller's library (``prob``: the
    problem, or a rank's block over shards, whose slice w is), its history, stage lines and plan
    timings."""
    best = ctx.best
    return IHTResult(
        w=prob.output(best.w),
        support=prob.output(best.support, cast=False),
        objective=best.f,
        n_iter=ctx.n_iter,
        converged=ctx.converged,
        history=ctx.history,
        backend=prob.backend,
        elapsed=time.perf_counter() - t0,
        stages=ctx.records,
        plan=timings,
    )


def iht(
    A: Any,
    b: Any,
    k: int,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    w0: Any = None,
    max_iter: int | None = None,
    tol: float = 1e-6,
    init: str = "auto",
    active_set: bool = True,
    refine: bool = True,
    swaps: bool | int = True,
    effort: float = DEFAULT_EFFORT,
    time_limit: float | None = None,
    memory_limit: int | None = None,
    backend: str = "auto",
    callback: Callable[[IHTProgress], bool | None] | None = None,
    verbose: bool = False,
    check_finite: bool = True,
) -> IHTResult:
    """Sparse least squares: CHITA's IHT, greedy OBS, exact refits and swap local search.

    Minimises ``0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2`` subject to at most ``k``
    nonzeros. A planner (docs/design.md, section 6) prices every stage with a cost model
    calibrated to this machine's memory bandwidth and BLAS rate and runs those that fit a
    budget of ``effort`` times the time of magnitude + backsolve; each stage keeps the best
    point found so far:

    1. start supports (``init``): the k largest ``|w0|`` (magnitude pruning when ``w0`` is
       ``w_bar``), refit exactly, so the result is never worse than "magnitude + backsolve";
       the OBS inits add the k largest OBS saliencies;
    2. IHT with CHITA's line search on CHITA's active set (docs/design.md, section 2), and an
       exact refit on its support; by default only where the budget leaves room after the
       stages below, or where the start has fewer than k nonzeros (no ``w_bar``);
    3. greedy OBS (``init`` "auto" where it fits, or "greedy"): backward elimination, one
       weight at a time with exact updates, from a superset of the best support so far;
    4. swap local search (``swaps``): exchanges of one kept and one pruned weight, each scored
       exactly through rank-2 updates of an ``n x n`` inverse, applied while they lower f.

    Parameters
    ----------
    A : array, shape (n, p)
        Per-sample gradients (or any design matrix), float32 or float64, C- or F-contiguous
        (F order is faster: support mat-vecs then read only the support's columns). NumPy,
        torch, JAX, CuPy or anything with ``__array_interface__``; never copied.
    b : array, shape (n,)
        Targets, same dtype as ``A``. For pruning, ``b = A @ w_bar``.
    k : int
        Number of weights to keep, ``1 <= k <= p``.
    ridge : float, default 0.0
        Weight of ``0.5 ||w - w_bar||^2``.
    w_bar : array, shape (p,), optional
        Reference (dense) weights; zeros if omitted.
    w0 : array, shape (p,), optional
        Starting point, hard-thresholded to ``k`` entries; defaults to ``w_bar``.
    max_iter : int, optional
        IHT iterations. Given, IHT always runs with that many; default: 100 for IHT alone
        (``refine=False``), 30 in the pipeline, where IHT runs if the budget allows.
    tol : float, default 1e-6
        Stop IHT when ``|f_old - f| <= tol * max(|f|, |f_old|, 1)``.
    init : {"auto", "magnitude", "obs", "obs_multistep", "greedy"}, default "auto"
        Start supports, each refit exactly, and greedy OBS. "magnitude": the k largest
        ``|w0|`` only. "obs": also the k largest OBS saliencies ``w_q^2 / [H^-1]_qq``
        (H = A^T A + ridge I through Woodbury, O(n^2 p)). "obs_multistep": OBS in 4 steps with
        refits in between (about 2.5x the cost; the one-shot OBS support comes with it).
        "greedy": greedy OBS (remove the least salient weight, update the others, repeat) from
        a superset of ``max(3k, 2n, p/4)`` columns, the best support so far plus the weights
        ranked highest by ``|w0|`` or by ``w0_j^2 (||a_j||^2 + ridge)``, whatever it costs; it
        runs in n-space, O(n m^2 / 2 + n^2 m) for m columns, never with a p x p matrix.
        "auto": magnitude, then greedy OBS from the largest superset that fits the budget
        left; where not even a small one fits, OBS saliencies when they fit. Tiny problems
        (p <= 32 and at most 2e5 supports) are also solved exactly by enumeration.
    active_set : bool, default True
        CHITA's active set: IHT on the floor(1.5 k) columns picked by a 1/L gradient step
        (L from power iterations), enlarged by full-gradient steps that lower f. Iterations
        then read only the active columns of A. False runs IHT on all columns.
    refine : bool, default True
        The pipeline above. False runs plain IHT from the thresholded ``w0``.
    swaps : bool or int, default True
        Swap local search: True lets the planner size it (up to 2000 swaps, and as many rounds
        of one gradient pass each as the budget allows, at most 20); an int sets the number of
        swaps (20 rounds at most), False or 0 turns it off. It stops earlier when no screened
        swap lowers f.
    effort : float, default 3.0
        The time the solve may take, as a multiple of the time of magnitude + backsolve on
        this problem (the planner fills 85% of it with modeled stage times, leaving room for
        the model's error), at least ``0.25 * effort`` seconds (0.75 s): stages that do not
        fit are not run. Larger
        values buy larger greedy supersets, more swap rounds and IHT; ``float("inf")`` runs
        every stage at full size.
    time_limit : float, optional
        A cap in seconds on the planned time (the budget), whatever ``effort`` says.
    memory_limit : int, optional
        A cap in bytes on the solver's workspaces beyond ``A`` and its O(p) vectors: greedy
        OBS's gathered columns (its superset is shrunk, or the stage dropped, to fit). Default:
        no cap (the superset is sized by time alone, up to n x p float32 / float64 values).
    backend : {"auto", "cpp", "numba", "cuda"}, default "auto"
        Kernel backend; "auto" takes the compiled one for host arrays (numba if it is
        missing) and "cuda" for arrays on a GPU.
    callback : callable, optional
        Called as ``callback(IHTProgress)`` after each IHT iteration; return True to stop
        (no later stage runs).
    verbose : bool, default False
        Print the plan, one line per stage and per iteration (objective, relative decrease,
        step, support moves, time) to stderr.
    check_finite : bool, default True
        Scan the inputs for NaN/Inf (A in the pass that computes its column norms).

    Returns
    -------
    IHTResult
        ``w`` (p,), ``support`` (k,) sorted int64, ``objective``, ``n_iter``, ``converged``,
        ``history`` (of the IHT stage), ``backend``, ``elapsed``, ``stages``, ``plan``.

    Examples
    --------
    >>> import numpy as np, chita_core
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((200, 500)) / np.sqrt(200)
    >>> w_true = np.zeros(500); w_true[[3, 50, 400]] = [2.0, -1.5, 1.0]
    >>> res = chita_core.iht(A, A @ w_true, k=3)
    >>> res.support.tolist()
    [3, 50, 400]
    >>> bool(res.objective < 1e-8)
    True
    """
    t0 = time.perf_counter()
    # Every argument is checked before a kernel reads A: the NaN/Inf scan (the column-norm pass)
    # runs in ``solve`` once k and the options are known to be valid.
    prob = Problem(
        A, b, ridge=ridge, w_bar=w_bar, backend=backend, check_finite=check_finite, _scan=False
    )
    return solve(
        prob,
        k,
        w0=w0,
        max_iter=max_iter,
        tol=tol,
        init=init,
        active_set=active_set,
        refine=refine,
        swaps=swaps,
        effort=effort,
        time_limit=time_limit,
        memory_limit=memory_limit,
        callback=callback,
        verbose=verbose,
        _t0=t0,
    )


def _options(
    max_iter: Any,
    tol: Any,
    init: Any,
    active_set: Any,
    refine: Any,
    swaps: Any,
    effort: Any,
    time_limit: Any,
    memory_limit: Any = None,
) -> Options:
    tol = check_nonneg_float(tol, "tol")
    if init not in _INITS:
        raise ValueError(f"`init` must be one of {', '.join(map(repr, _INITS))}; got {init!r}")
    if not isinstance(active_set, (bool, np.bool_)):
        raise TypeError(f"`active_set` must be a bool, got {type(active_set).__name__}")
    if not isinstance(refine, (bool, np.bool_)):
        raise TypeError(f"`refine` must be a bool, got {type(refine).__name__} {refine!r}")
    if isinstance(swaps, (bool, np.bool_)):
        max_swaps = None if swaps else 0
    else:
        max_swaps = check_index(swaps, "swaps", 0, np.iinfo(np.int64).max)
    if max_iter is not None:
        max_iter = check_index(max_iter, "max_iter", 0, np.iinfo(np.int64).max)
    effort = _positive(effort, "effort")
    if time_limit is not None:
        time_limit = _positive(time_limit, "time_limit")
    if memory_limit is not None:
        memory_limit = check_index(memory_limit, "memory_limit", 0, np.iinfo(np.int64).max)
    return Options(
        max_iter, tol, init, bool(active_set), bool(refine), max_swaps, effort, time_limit,
        memory_limit,
    )  # fmt: skip


def _positive(value: Any, name: str) -> float:
    """A positive float (inf allowed); a clear error naming the argument otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"`{name}` must be a positive number, got {type(value).__name__}")
    fvalue = float(value)
    if not fvalue > 0:  # (NaN fails too)
        raise ValueError(f"`{name}` must be positive, got {value!r}")
    return fvalue


def solve(
    prob: Problem,
    k: int,
    *,
    w0: Any = None,
    max_iter: int | None = None,
    tol: float = 1e-6,
    init: str = "auto",
    active_set: bool = True,
    refine: bool = True,
    swaps: bool | int = True,
    effort: float = DEFAULT_EFFORT,
    time_limit: float | None = None,
    memory_limit: int | None = None,
    callback: Callable[[IHTProgress], bool | None] | None = None,
    verbose: bool = False,
    _t0: float | None = None,
    _magnitude: Point | None = None,
) -> IHTResult:
    """:func:`iht` on a prepared problem (``Problem.iht``): plan, run, result. ``_magnitude``
    passes the magnitude + backsolve point when the caller has solved it already (the torch
    adapter compares it on the real loss), so the first stage does not solve it again."""
    t0 = time.perf_counter() if _t0 is None else _t0
    k = check_index(k, "k", 1, prob.p)
    opts = _options(
        max_iter, tol, init, active_set, refine, swaps, effort, time_limit, memory_limit
    )
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable or None, got {type(callback).__name__}")
    with prob.stream():
        start = prob.w_bar if w0 is None else prob.vector(w0, "w0")
    if prob.check_finite:
        prob.scan_finite()
    log = IterationLog(prob.backend, prob.shape, k) if verbose else None

    def on_iter(it: int, f_old: float, f_new: float, tau: float, changed: bool) -> bool:
        if log is not None:
            log.line(it, f_old, f_new, tau, changed)
        return bool(callback is not None and callback(IHTProgress(it, f_new, tau, changed)))

    # Floating-point range: the stages compare objectives and keep the best finite point, so
    # an overflow or underflow inside a score (problems scaled near 1e-150) only loses that
    # candidate; the result itself is checked below.
    with prob.stream(), np.errstate(all="ignore"):
        prob.check_magnitude(start)
        stages = plan(prob, k, start, opts)
        if log is not None:
            log.planned(stages)
        ctx = Context(prob, k, start, on_iter, log, seed=_magnitude if w0 is None else None)
        timings = run(ctx, stages)
        result = _result(ctx, prob, timings, t0)
    if not np.isfinite(result.objective):
        raise ValueError(
            "the objective of `A` and `b` is not representable in float64 at this scale "
            f"(got {result.objective}); rescale them: iht(A / s, b / s, k, ridge=ridge / s**2) "
            "has the same solution w"
        )
    return result


def backsolve(
    A: Any,
    b: Any,
    support: Any,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    backend: str = "auto",
    check_finite: bool = True,
) -> Any:
    """Exact minimiser of the objective with the nonzeros restricted to ``support``.

    Solves ``(A_S^T A_S + ridge I) w_S = A_S^T b + ridge w_bar_S``. When ``|S| > n`` it uses the
    push-through (Woodbury) form with an ``n x n`` factor, ``O(n^2 |S| + n^3)``; the
    ``|S| x |S|`` matrix is never formed. Every factorisation is guarded (equilibrated Cholesky
    with refinement; an SVD of the support columns when the system is ill-conditioned), so the
    result is optimal to rounding at any condition number. With ``ridge == 0`` and more support
    columns than rows, the problem has many minimisers; the one closest to ``w_bar`` is returned.

    Parameters
    ----------
    A : array, shape (n, p)
        As in :func:`iht`.
    b : array, shape (n,)
        Targets, same dtype as ``A``.
    support : array of int, shape (m,)
        Distinct column indices to keep (any order).
    ridge : float, default 0.0
        Weight of ``0.5 ||w - w_bar||^2``.
    w_bar : array, shape (p,), optional
        Reference weights; zeros if omitted.
    backend : {"auto", "cpp", "numba"}, default "auto"
    check_finite : bool, default True

    Returns
    -------
    w : array, shape (p,)
        Zero off ``support``; in the library and dtype of ``A``.

    Examples
    --------
    >>> import numpy as np, chita_core
    >>> rng = np.random.default_rng(1)
    >>> A = rng.standard_normal((50, 20))
    >>> b = rng.standard_normal(50)
    >>> w = chita_core.backsolve(A, b, [2, 5, 7])
    >>> ref = np.linalg.lstsq(A[:, [2, 5, 7]], b, rcond=None)[0]
    >>> bool(np.allclose(w[[2, 5, 7]], ref))
    True
    """
    prob = Problem(
        A, b, ridge=ridge, w_bar=w_bar, backend=backend, check_finite=check_finite, _scan=False
    )
    return prob.backsolve(support)  # (scans A once the support is known to be valid)


def objective(
    A: Any,
    b: Any,
    w: Any,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    backend: str = "auto",
    check_finite: bool = True,
) -> float:
    """``0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2``, accumulated in float64.

    Reads only the columns of ``A`` where ``w`` is nonzero when ``A`` is in F order.

    Examples
    --------
    >>> import numpy as np, chita_core
    >>> A = np.eye(3); b = np.ones(3)
    >>> chita_core.objective(A, b, np.array([1.0, 0.0, 0.0]))
    1.0
    """
    prob = Problem(
        A, b, ridge=ridge, w_bar=w_bar, backend=backend, check_finite=check_finite, _scan=False
    )
    return prob.objective(w)  # (scans A once w is known to be valid)
