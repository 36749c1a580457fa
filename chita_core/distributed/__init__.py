"""One global problem over column shards on torch.distributed (docs/design.md, section 12.1).

Every rank of a process group holds a column block of ``A`` (``A_local``: n x p_r, the
gradients of its share of the weights, any layout and dtype the single-process solver reads),
the rank's slice of ``w_bar`` and the same ``b``. Rank r's block is columns
``offsets[r]:offsets[r + 1]`` of the global problem, in rank order. Products with a support and
support Grams are local partial sums plus one reduction of n or n^2 numbers; a length-p vector
is never gathered. Decisions read only numbers that are bit-identical on every rank (the
reductions add the ranks' partials in rank order on every rank), so every rank takes the same
ones, and errors found on any rank are raised on every rank.

Built (issue 15): :func:`objective`, :func:`backsolve`, :func:`topk` (the global selection,
ties to the lower global index) and :func:`iht`, whose plan is the single-process planner's on
the global shape and whose stages are the single-process stages run on the shards
(``_shard.py``: the rank's block as the stages' problem, the pipeline's context over shards):
the magnitude start and its exact refit, greedy OBS (``_greedy.py``: the screen's selections
global, each rank's workspace its own superset columns, a block's pool gathered, the n x n
algebra replicated on every rank), one-shot and multistep OBS and the enumeration of tiny
problems (``_greedy.py`` too), IHT with CHITA's line search on all columns or on CHITA's active
set with its expansion search, the exact refit on IHT's support and swap search (``_swaps.py``:
the screens' selections global, a round's candidate columns gathered, the n x n algebra
replicated on every rank), or IHT alone (``refine=False``).

Needs torch (``pip install torch``); gloo for CPU processes, NCCL for GPUs.
"""

from __future__ import annotations

import inspect
import operator
import time
from typing import Any

import numpy as np

from .._api import _INITS, _options, _result
from .._pipeline import DEFAULT_EFFORT, plan, run
from ._comm import Comm, ShardError
from ._iht import _never
from ._shard import PlanShape, Shard, ShardedContext
from ._topk import global_topk

__all__ = ["Shard", "ShardError", "backsolve", "iht", "objective", "solve", "topk"]


def iht(
    A_local: Any,
    b: Any,
    k: int,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    group: Any = None,
    w0: Any = None,
    max_iter: int | None = None,
    tol: float = 1e-6,
    init: str = "auto",
    active_set: bool = True,
    refine: bool = True,
    swaps: bool | int = True,
    effort: float = DEFAULT_EFFORT,
    memory_limit: int | None = None,
    backend: str = "auto",
) -> Any:
    """:func:`chita_core.iht` over column shards, on every rank of ``group``.

    ``A_local`` is this rank's column block (n x p_r), ``w_bar`` / ``w0`` its slices; ``k`` the
    global number of nonzeros. Returns an ``IHTResult`` whose ``w`` is this rank's slice,
    ``support`` its local indices (possibly none) and ``objective`` the global objective (the
    same on every rank), with the stages and the plan that ran.

    The single-process planner plans the solve from the global shape, and the single-process
    stages run on the shards, so it makes the single-process ``iht(A, b, k, ...)``'s decisions
    (the same stages, supports and iteration counts, objectives up to rounding) on any number of
    ranks: every ``init`` (greedy OBS, the OBS starts, the enumeration of tiny problems, the
    magnitude start, each with its exact refit), IHT (``active_set`` or not) with the refit on
    its support, swap search (``swaps``: True, a budget, or False), and IHT alone
    (``refine=False``). ``memory_limit`` caps greedy OBS's superset as in one process (each
    rank's workspace holds its share of it, at most the single-process workspace)."""
    t0 = time.perf_counter()
    shard = Shard(A_local, b, ridge, w_bar, group, backend)
    options = {name: value for name, value in locals().items() if name in _SOLVE_OPTIONS}
    return solve(shard, k, _t0=t0, **options)


#: iht's solver options (what it takes besides the problem): ``solve`` takes the same ones.
_SOLVE_OPTIONS = ("w0", "max_iter", "tol", "init", "active_set", "refine", "swaps", "effort",
                  "memory_limit")  # fmt: skip


def solve(
    shard: Shard, k: int, *, _t0: float | None = None, _magnitude: Any = None, **options: Any
) -> Any:
    """:func:`iht` on a prepared :class:`Shard` (validated once; its ``with_ridge`` siblings
    share its column norms and sigma_max^2), as ``chita_core._api.solve`` on a prepared
    Problem; ``options`` are iht's (its defaults where absent). ``_magnitude``: the magnitude +
    backsolve point over shards (``shard.point`` of the global top-k of |w_bar|) when the
    caller has it already."""
    t0 = time.perf_counter() if _t0 is None else _t0
    unknown = sorted(set(options) - set(_SOLVE_OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; iht takes {_SOLVE_OPTIONS}")
    o = {**_DEFAULTS, **options}
    w0 = o["w0"]
    prob, comm = shard.prob, shard.comm
    error = None
    start = prob.w_bar
    try:
        k = _integer(k, "k")
        opts = _options(o["max_iter"], o["tol"], o["init"], o["active_set"], o["refine"],
                        o["swaps"], o["effort"], None, o["memory_limit"])  # fmt: skip
        if w0 is not None:
            start = prob.vector(w0, "w0")
    except (TypeError, ValueError) as exc:
        error = exc
    comm.agree(error)
    max_swaps = -1 if opts.max_swaps is None else opts.max_swaps
    choices = [_INITS.index(opts.init), opts.active_set, opts.refine, max_swaps]
    iters = -1 if opts.max_iter is None else opts.max_iter
    comm.same(np.asarray([k, iters, *choices], dtype=np.int64),
              "k, max_iter, init, active_set, refine, swaps")  # fmt: skip
    memory = -1 if opts.memory_limit is None else opts.memory_limit
    comm.same(np.asarray([memory], dtype=np.int64), "memory_limit")
    comm.same(np.asarray([opts.tol, opts.effort]), "tol, effort")
    if not 1 <= k <= comm.p:
        raise ShardError(f"`k` must be in 1..{comm.p} (the global number of columns), got {k}")
    shape = PlanShape.of(shard)
    nonzeros = shard.count(int(np.count_nonzero(start)))
    with prob.stream(), np.errstate(all="ignore"):  # (as chita_core.iht: see _api.solve)
        stages = plan(shape, k, start, opts, nonzeros=nonzeros)
        seed = _magnitude if w0 is None else None
        ctx = ShardedContext(shard, k, start, _never, seed=seed)
        timings = run(ctx, stages)
    if not np.isfinite(ctx.best.f):
        raise ShardError("the objective is not representable in float64 at this scale")
    return _result(ctx, prob, timings, t0)


_DEFAULTS = {
    name: par.default
    for name, par in inspect.signature(iht).parameters.items()
    if name in _SOLVE_OPTIONS
}


def objective(
    A_local: Any,
    b: Any,
    w_local: Any,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    group: Any = None,
    backend: str = "auto",
) -> float:
    """The global ``0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2`` from every rank's block of A,
    of w and of w_bar (the same value on every rank). Reads only the columns where the rank's w
    is nonzero in F order; one reduction of n + 1 numbers."""
    shard = Shard(A_local, b, ridge, w_bar, group, backend)
    prob = shard.prob
    error = None
    try:
        w = prob.vector(w_local, "w_local")
    except (TypeError, ValueError) as exc:
        error = exc
    shard.comm.agree(error)
    nz = np.flatnonzero(w).astype(np.int64)
    r = shard.product(nz, w[nz]) - prob.b
    d = w - prob.w_bar
    penalty = shard.comm.total(float(d @ d)) if prob.ridge else 0.0
    return 0.5 * float(r @ r) + 0.5 * prob.ridge * penalty


def backsolve(
    A_local: Any,
    b: Any,
    support_local: Any,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    group: Any = None,
    backend: str = "auto",
) -> Any:
    """:func:`chita_core.backsolve` over shards: the exact minimiser with nonzeros on the union
    of the ranks' supports (``support_local``: this rank's local column indices, possibly
    none). Returns this rank's slice of w (length p_r, zero off its support).

    The same method as the single-process solve: with |S| <= n the |S| columns are gathered
    (at most n^2 numbers) and solved by every rank; with |S| > n the n x n system
    (ridge I + A_S A_S^T) y = b - A_S w_bar_S from the reduced partial Grams, refined against
    sharded mat-vecs where its conditioning asks; with an ill-conditioned system small enough
    for the SVD fallback, the SVD of the gathered columns."""
    shard = Shard(A_local, b, ridge, w_bar, group, backend)
    prob = shard.prob
    idx = shard.local_support(support_local)
    w = np.zeros(prob.p)
    w[idx] = shard.support_values(idx)[0]  # (on every rank: it holds collectives)
    return prob.output(w)


def topk(v_local: Any, k: int, *, group: Any = None) -> np.ndarray:
    """Sorted local indices of this rank's share of the k largest |v| over all ranks' slices
    (in rank order), ties to the lower global index: the single-process selection. Local work
    O(p_r) per round; at most 7 small gathers (4,096 integers at most)."""
    comm = Comm(group)
    error = None
    v = np.zeros(0)
    try:
        v = np.ascontiguousarray(np.asarray(v_local, dtype=np.float64))
        if v.ndim != 1:
            raise ValueError(f"`v_local` must be 1-D, got shape {v.shape}")
        k = _integer(k, "k")
    except (TypeError, ValueError) as exc:
        error = exc
    comm.agree(error)
    p = int(comm.gather(np.asarray([v.size], dtype=np.int64)).sum())
    comm.same(np.asarray([k], dtype=np.int64), "k")
    if not 0 <= k <= p:
        raise ShardError(f"`k` must be in 0..{p} (the global length), got {k}")
    return global_topk(comm, v, k)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__}") from None
