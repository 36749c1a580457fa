"""The global problem over column shards as the pipeline's stages see it (docs/design.md,
section 12.1).

``Shard`` is one rank's validated block of the global problem and the group's layout; it
offers what the stages ask of a problem (``Point.at``: ``xp``, ``p``, ``residual``, ``value``;
``Context.point``: ``point``; swap search: ``wbar_sq``) over the shards: vectors are the
rank's slices, residuals and objectives global, the same bits on every rank. ``ShardedContext``
is the pipeline's ``Context`` with the column operations the stages take from it (the top-k,
the comparison of supports, the IHT drivers, swap search's ``ShardColumns``, greedy OBS's
``ShardGreedyColumns``) over the shards, and ``PlanShape`` the global quantities that
``_pipeline.plan`` reads, so that the single-process planner plans the sharded solve and
``_pipeline.run`` runs the single-process stages on it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._linalg import REFINE_FROM, SPDSystem, least_squares
from .._pipeline import Context
from .._point import Point
from .._problem import Problem, RidgeFree, _Cache
from ..stages.nspace import _NORMAL_EQ_COND, _SVD_BYTES, refined_values, support_values
from ._comm import Comm
from ._greedy import ShardGreedyColumns
from ._iht import ShardIHTColumns, sharded_sigma2
from ._swaps import ShardColumns
from ._topk import global_topk

__all__ = ["PlanShape", "Shard", "ShardedContext"]


class Shard(RidgeFree):
    """This rank's validated block of the global problem (``prob``: a single-process
    ``Problem`` on the rank's columns, its slice of ``w_bar`` and the same ``b``) and the
    group's layout (``comm``). ``p`` is the rank's number of columns, the length of its vectors
    (``comm.p`` is the global one)."""

    xp = np  # (the sharded solver works on host arrays)

    def __init__(
        self,
        A_local: Any,
        b: Any,
        ridge: float = 0.0,
        w_bar: Any = None,
        group: Any = None,
        backend: str = "auto",
    ) -> None:
        self.comm = comm = Comm(group)
        error = None
        try:
            if len(getattr(A_local, "shape", ())) == 2 and A_local.shape[1] == 0:
                raise ValueError(
                    f"`A_local` has no columns (shape {tuple(A_local.shape)}): every rank of the "
                    "group must hold at least one column of the global problem (split the "
                    "columns over fewer ranks)"
                )
            self.prob = Problem(A_local, b, ridge=ridge, w_bar=w_bar, backend=backend)
        except (TypeError, ValueError) as exc:
            error = exc
        comm.agree(error)
        prob = self.prob
        comm.same(np.asarray([prob.n], dtype=np.int64), "the number of rows of `A_local` (n)")
        comm.same(prob.b, "b")
        comm.same(np.asarray([prob.ridge]), "ridge")
        comm.layout(prob.p)
        self._cache = _Cache()  # (sigma2 and wbar_sq; the column norms are the block's)

    def with_ridge(self, ridge: float) -> Shard:
        """The same shard at another ridge (the same on every rank, checked): it shares the
        block, b, w_bar and what does not depend on the ridge (the column norms, sigma_max^2,
        ||w_bar||^2), so nothing is validated or computed again."""
        error = None
        other = copy.copy(self)
        try:
            other.prob = self.prob.with_ridge(ridge)
        except (TypeError, ValueError) as exc:
            error = exc
        self.comm.agree(error)
        self.comm.same(np.asarray([other.prob.ridge]), "ridge")
        return other

    @property
    def p(self) -> int:
        return self.prob.p

    @property
    def ridge(self) -> float:
        return self.prob.ridge

    def _wbar_sq(self) -> float:
        """||w_bar||^2 of the global problem (a rank-order sum)."""
        wb = self.prob.w_bar
        return self.comm.total(float(wb @ wb))

    def _sigma2(self) -> float:
        """sigma_max(A)^2 of the global A (sharded power iterations)."""
        return sharded_sigma2(self)

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
        """The sum over ranks of a local count."""
        return int(self.comm.gather(np.asarray([m_local], dtype=np.int64)).sum())

    def same_support(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether every rank's local supports ``a`` and ``b`` are the same (one gather)."""
        equal = a.size == b.size and bool(np.array_equal(a, b))
        return self.count(int(not equal)) == 0

    def partial(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """This rank's part of A[:, S] values (n,): its columns ``idx``."""
        prob = self.prob
        part = np.zeros(prob.n)
        if idx.size:
            prob.kernels.support_matvec(prob.A, idx, np.ascontiguousarray(values), part)
        return part

    def product(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A[:, S] values over all ranks (n,): local partial, then one reduction."""
        return self.comm.total(self.partial(idx, values))

    # -- the problem as the stages see it ----------------------------------------------------

    def residual(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Problem.residual over shards: A[:, S] values - b, S the ranks' ``idx``."""
        return self.product(idx, values) - self.prob.b

    def value(self, r: np.ndarray, w: np.ndarray, w_bar: np.ndarray | None = None) -> float:
        """Problem.value over shards: 0.5 ||r||^2 + 0.5 ridge ||w - w_bar||^2, the ridge term
        summed over the ranks' slices (``w_bar``: a subproblem's slice, default the rank's)."""
        ridge = self.prob.ridge
        f = 0.5 * float(r @ r)
        if ridge != 0.0:
            d = w - (self.prob.w_bar if w_bar is None else w_bar)
            f += 0.5 * ridge * self.comm.total(float(d @ d))
        return f

    def point(self, support: np.ndarray, *, keep_inverse: bool = False, guess: Any = None) -> Point:
        """Point.refit over shards: the exact minimiser on the ranks' ``support`` (local sorted
        indices), r and f from one sharded support mat-vec. With ``keep_inverse`` the point
        keeps the factor of the reduced K where the push-through form formed it (ridge > 0,
        |S| > n; the same bits on every rank); ``guess`` (an approximate K^-1, the same on every
        rank) is refined against sharded mat-vecs before a full solve."""
        return Point.refit(
            self, support, keep_inverse=keep_inverse, guess=guess,
            solve=Shard.support_values, refine=Shard.refined_values,
        )  # fmt: skip

    def refined_values(self, idx: np.ndarray, Kinv: Any) -> Any:
        """nspace.refined_values over shards: this rank's part of x, or None on every rank."""
        return refined_values(self.prob, idx, Kinv, product=self.product, size=self.count(idx.size))

    def support_values(
        self, idx: np.ndarray, *, keep_inverse: bool = False, gram: Any = None
    ) -> tuple[np.ndarray, Any, None]:
        """nspace.support_values over shards: (x on this rank's part of the support, the
        factored K with ``keep_inverse`` where it was formed (ridge > 0, |S| > n), None: the
        Gram is not kept). ``gram`` is not taken (no stage over shards passes one)."""
        prob, comm = self.prob, self.comm
        n, ridge = prob.n, prob.ridge
        m = self.count(idx.size)
        wb = np.ascontiguousarray(prob.w_bar[idx])
        if m == 0:
            return wb, None, None
        if m <= n:
            # At most n^2 numbers: every rank solves the gathered problem as one process would.
            X = self.gathered(idx)
            wbs = np.concatenate(comm.gather_ragged(wb[None, :]), axis=1)[0]
            small = Problem(X, prob.b, ridge=ridge, w_bar=wbs, check_finite=False)
            x = support_values(small, np.arange(m, dtype=np.int64))[0]
            return x[self._mine(idx.size)], None, None
        c = prob.b - self.product(idx, wb)
        K = np.zeros((n, n))
        if idx.size:
            prob.kernels.support_gram(prob.A, idx, K)
        K = comm.total(K)
        K[np.diag_indices(n)] += ridge

        def apply(y: Any) -> Any:
            t = np.empty(idx.size)
            if idx.size:
                prob.kernels.support_rmatvec(prob.A, idx, np.ascontiguousarray(y), t)
            return self.product(idx, t) + ridge * y

        system = SPDSystem(K, cond_limit=_NORMAL_EQ_COND)
        factored = system if keep_inverse and ridge > 0 else None
        svd_bytes = 8 * m * (n if ridge == 0 else n + m)
        if not system.good and svd_bytes <= _SVD_BYTES:
            z = least_squares(self.gathered(idx), c, ridge)[self._mine(idx.size)]
        else:
            y = system.solve(c, apply, refine_from=REFINE_FROM)
            z = np.empty(idx.size)
            if idx.size:
                prob.kernels.support_rmatvec(prob.A, idx, np.ascontiguousarray(y), z)
        return z + wb, factored, None

    def gathered(self, idx: np.ndarray) -> np.ndarray:
        """Every rank's columns ``idx`` in rank order (n x |S| float64, F order) on every rank:
        only for small supports (the callers gather at most n^2 numbers, or an SVD's)."""
        parts = self.comm.gather_ragged(self.prob.kernels.gather_columns(self.prob.A, idx))
        return np.asfortranarray(np.concatenate(parts, axis=1))

    def _mine(self, m_local: int) -> slice:
        """This rank's entries of a vector laid out over the support in rank order."""
        counts = self.comm.gather(np.asarray([m_local], dtype=np.int64))[:, 0]
        lo = int(counts[: self.comm.rank].sum())
        return slice(lo, lo + m_local)


class ShardedContext(Context):
    """The pipeline's ``Context`` over shards (``prob`` a :class:`Shard`, ``start`` the rank's
    slice, points with the rank's support and w and the global r and f): the global top-k
    (ties to the lower global index), supports compared over every rank (one gather, so that
    ``Context.point`` refits on every rank or on none), and the IHT drivers', swap search's
    and greedy OBS's operations over shards. Every rank then runs the same stages through the
    same branches."""

    iht_columns = ShardIHTColumns
    swap_columns = ShardColumns
    greedy_columns = ShardGreedyColumns

    def largest(self, v: Any, k: int) -> Any:
        return global_topk(self.prob.comm, v, k)

    def same_support(self, a: Any, b: Any) -> bool:
        return self.prob.same_support(a, b)


@dataclass(frozen=True)
class PlanShape:
    """What ``_pipeline.plan`` reads of a problem, for the global problem over shards: the
    global shape, the storage (one dtype and layout on every rank, agreed) and the ridge. The
    sharded solver works on host arrays (``where``); ``sigma2_known`` as for a Problem: whether
    the Shard (or a ``with_ridge`` sibling) ran its power iterations already."""

    n: int
    p: int
    itemsize: int
    f_order: bool
    ridge: float
    where: None = None
    sigma2_known: bool = False

    @classmethod
    def of(cls, shard: Shard) -> PlanShape:
        prob = shard.prob
        storage = np.asarray([prob.itemsize, prob.f_order], dtype=np.int64)
        shard.comm.same(storage, "the dtype and layout of `A_local`")
        return cls(prob.n, shard.comm.p, prob.itemsize, prob.f_order, prob.ridge,
                   sigma2_known=shard.sigma2_known)  # fmt: skip
