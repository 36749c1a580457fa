"""One global problem over column shards on torch.distributed (docs/design.md, section 12.1).

Every rank of a process group holds a column block of ``A`` (``A_local``: n x p_r, the
gradients of its share of the weights, any layout and dtype the single-process solver reads),
the rank's slice of ``w_bar`` and the same ``b``. Rank r's block is columns
``offsets[r]:offsets[r + 1]`` of the global problem, in rank order. Products with a support and
support Grams are local partial sums plus one reduction of n or n^2 numbers; a length-p vector
is never gathered. Decisions read only numbers that are bit-identical on every rank (the
reductions add the ranks' partials in rank order on every rank), so every rank takes the same
ones, and errors found on any rank are raised on every rank.

Built so far (issue 15): :func:`objective`, :func:`backsolve`, :func:`topk` (the global
selection, ties to the lower global index) and :func:`iht` with ``refine=False`` (IHT with
CHITA's line search on all columns, or with ``active_set=True`` on CHITA's active set with its
expansion search: the single-process ``iht(..., refine=False, active_set=...)``); the sharded
pipeline stages (refits, greedy OBS, swap search) are not built yet.

Needs torch (``pip install torch``); gloo for CPU processes, NCCL for GPUs.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .._linalg import REFINE_FROM, SPDSystem, least_squares
from .._pipeline import PLAIN_ITERS, StageRecord
from .._problem import Problem
from ..stages.nspace import _NORMAL_EQ_COND, _SVD_BYTES, support_values
from ._comm import Comm, ShardError
from ._iht import active_set_iht, plain_iht
from ._topk import global_topk

__all__ = ["ShardError", "backsolve", "iht", "objective", "topk"]


class _Shard:
    """This rank's validated block of the global problem and the group's layout."""

    def __init__(
        self, A_local: Any, b: Any, ridge: float, w_bar: Any, group: Any, backend: str
    ) -> None:
        self.comm = comm = Comm(group)
        error = None
        try:
            self.prob = Problem(A_local, b, ridge=ridge, w_bar=w_bar, backend=backend)
        except (TypeError, ValueError) as exc:
            error = exc
        comm.agree(error)
        prob = self.prob
        comm.same(np.asarray([prob.n], dtype=np.int64), "the number of rows of `A_local` (n)")
        comm.same(prob.b, "b")
        comm.same(np.asarray([prob.ridge]), "ridge")
        comm.layout(prob.p)

    def local_support(self, support: Any) -> np.ndarray:
        """Validated sorted local indices (may be empty on a rank), agreed on every rank."""
        error = None
        idx = np.zeros(0, dtype=np.int64)
        try:
            arr = np.asarray(support)
            if arr.size:
                idx = self.prob.indices(arr)
            elif arr.ndim != 1:
                raise ValueError(f"`support` must be 1-D, got shape {arr.shape}")
        except (TypeError, ValueError) as exc:
            error = exc
        self.comm.agree(error)
        return idx

    def count(self, m_local: int) -> int:
        return int(self.comm.gather(np.asarray([m_local], dtype=np.int64)).sum())

    def product(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A[:, S] values over all ranks (n,): local partial, then one reduction."""
        prob = self.prob
        part = np.zeros(prob.n)
        if idx.size:
            prob.kernels.support_matvec(prob.A, idx, np.ascontiguousarray(values), part)
        return self.comm.total(part)


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
    refine: bool = True,
    active_set: bool = True,
    backend: str = "auto",
) -> Any:
    """:func:`chita_core.iht` over column shards, on every rank of ``group``.

    ``A_local`` is this rank's column block (n x p_r), ``w_bar`` / ``w0`` its slices; ``k`` the
    global number of nonzeros. Returns an ``IHTResult`` whose ``w`` is this rank's slice,
    ``support`` its local indices (possibly none) and ``objective`` the global objective (the
    same on every rank).

    Only IHT without refits runs over shards so far: pass ``refine=False``, with or without
    ``active_set``; it makes the single-process ``iht(A, b, k, refine=False,
    active_set=...)``'s decisions (the same supports and iteration counts, objectives up to
    rounding) on any number of ranks. The default pipeline (``refine=True``) raises
    NotImplementedError on every rank."""
    import time

    from .._api import IHTResult

    t0 = time.perf_counter()
    shard = _Shard(A_local, b, ridge, w_bar, group, backend)
    prob, comm = shard.prob, shard.comm
    comm.same(np.asarray([bool(refine), bool(active_set)]), "refine, active_set")
    if refine:
        raise NotImplementedError(
            "chita_core.distributed.iht runs IHT without refits only so far (refine=False, "
            "with or without active_set); the sharded refits, greedy OBS and swap search of "
            "the default pipeline are not built yet"
        )
    error = None
    start = prob.w_bar
    try:
        k = _integer(k, "k")
        if w0 is not None:
            start = prob.vector(w0, "w0")
        if max_iter is not None:
            max_iter = _integer(max_iter, "max_iter")
            if max_iter < 0:
                raise ValueError(f"`max_iter` must be >= 0, got {max_iter}")
        if isinstance(tol, bool) or not (float(tol) >= 0.0):
            raise ValueError(f"`tol` must be a number >= 0, got {tol!r}")
    except (TypeError, ValueError) as exc:
        error = exc
    comm.agree(error)
    comm.same(np.asarray([k, -1 if max_iter is None else max_iter], dtype=np.int64), "k, max_iter")
    comm.same(np.asarray([float(tol)]), "tol")
    if not 1 <= k <= comm.p:
        raise ShardError(f"`k` must be in 1..{comm.p} (the global number of columns), got {k}")
    iters = PLAIN_ITERS if max_iter is None else max_iter
    driver = active_set_iht if active_set else plain_iht
    run = driver(shard, k, start, iters, float(tol))
    if not np.isfinite(run.f):
        raise ShardError("the objective is not representable in float64 at this scale")
    elapsed = time.perf_counter() - t0
    return IHTResult(
        w=prob.output(run.w),
        support=prob.output(run.support, cast=False),
        objective=run.f,
        n_iter=run.n_iter,
        converged=run.converged,
        history=run.history,
        backend=prob.backend,
        elapsed=elapsed,
        stages=[StageRecord("active-set iht" if active_set else "iht", run.f, elapsed)],
    )


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
    shard = _Shard(A_local, b, ridge, w_bar, group, backend)
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
    shard = _Shard(A_local, b, ridge, w_bar, group, backend)
    prob = shard.prob
    idx = shard.local_support(support_local)
    w = np.zeros(prob.p)
    w[idx] = _support_values(shard, idx)  # (on every rank: it holds collectives)
    return prob.output(w)


def _support_values(shard: _Shard, idx: np.ndarray) -> np.ndarray:
    """x on this rank's part of the support (nspace.support_values over shards)."""
    prob, comm = shard.prob, shard.comm
    n, ridge = prob.n, prob.ridge
    m = shard.count(idx.size)
    wb = np.ascontiguousarray(prob.w_bar[idx])
    if m == 0:
        return wb
    if m <= n:
        # At most n^2 numbers: every rank solves the gathered problem as one process would.
        X = np.concatenate(comm.gather_ragged(prob.kernels.gather_columns(prob.A, idx)), axis=1)
        wbs = np.concatenate(comm.gather_ragged(wb[None, :]), axis=1)[0]
        small = Problem(np.asfortranarray(X), prob.b, ridge=ridge, w_bar=wbs, check_finite=False)
        x = support_values(small, np.arange(m, dtype=np.int64))[0]
        return x[_mine(comm, idx.size)]
    c = prob.b - shard.product(idx, wb)
    K = np.zeros((n, n))
    if idx.size:
        prob.kernels.support_gram(prob.A, idx, K)
    K = comm.total(K)
    K[np.diag_indices(n)] += ridge

    def apply(y: Any) -> Any:
        t = np.empty(idx.size)
        if idx.size:
            prob.kernels.support_rmatvec(prob.A, idx, np.ascontiguousarray(y), t)
        return shard.product(idx, t) + ridge * y

    system = SPDSystem(K, cond_limit=_NORMAL_EQ_COND)
    svd_bytes = 8 * m * (n if ridge == 0 else n + m)
    if not system.good and svd_bytes <= _SVD_BYTES:
        X = np.concatenate(comm.gather_ragged(prob.kernels.gather_columns(prob.A, idx)), axis=1)
        z = least_squares(X, c, ridge)[_mine(comm, idx.size)]
    else:
        y = system.solve(c, apply, refine_from=REFINE_FROM)
        z = np.empty(idx.size)
        if idx.size:
            prob.kernels.support_rmatvec(prob.A, idx, np.ascontiguousarray(y), z)
    return z + wb


def _mine(comm: Comm, m_local: int) -> slice:
    """This rank's entries of a vector laid out over the support in rank order."""
    counts = comm.gather(np.asarray([m_local], dtype=np.int64))[:, 0]
    lo = int(counts[: comm.rank].sum())
    return slice(lo, lo + m_local)


def topk(v_local: Any, k: int, *, group: Any = None) -> np.ndarray:
    """Sorted local indices of this rank's share of the k largest |v| over all ranks' slices
    (in rank order), ties to the lower global index: the single-process selection. Local work
    O(p_r) per round; 9 small gathers (256 integers each)."""
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
