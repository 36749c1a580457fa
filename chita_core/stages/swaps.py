"""Swap local search (docs/design.md, section 5).

A swap (i leaves S, j enters) changes K = lam I + A_S A_S^T by the rank-2 term
a_j a_j^T - a_i a_i^T and c = b - A_S w_bar_S by a_i w_bar_i - a_j w_bar_j, so for a screened
set of candidate columns V every pair is scored exactly from G = V^T K^{-1} V and
q = V^T K^{-1} c (the backend's ``swap_scores``), and an applied swap updates G, q and K^{-1}
by rank-2 formulas: no pass over A, no p x p or |S| x |S| matrix.

What the search does over all of A's columns at once (counts, the screens' selections, the
candidates' columns, K^{-1} of a support, the comparison of supports) goes through
:class:`SwapColumns`; chita_core.distributed runs the same search over column shards with its
sharded counterpart (docs/design.md, section 12.1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._point import Point
from .nspace import columns, largest, scoring_ridge, support_kinv

__all__ = ["SwapColumns", "SwapStats", "Swaps", "swap_search"]

# Columns screened to enter and to leave per round.
N_CANDIDATES = 128
# The pool of entering candidates a full gradient pass ranks (a multiple of N_CANDIDATES), and
# the rounds screened from it (pool and support gradients only) between full passes.
POOL_FACTOR = 8
POOL_ROUNDS = 4


@dataclass
class SwapStats:
    """What :func:`swap_search` did."""

    swaps: int = 0
    rounds: int = 0
    seconds: float = 0.0


class SwapColumns:
    """The operations of swap search on all of A's columns, for one process: ``prob`` is the
    problem points are made on, ``local`` the one whose kernels read the columns held here (the
    same problem). chita_core.distributed's ``ShardColumns`` implements them over column shards
    (``local`` the rank's block, counts and sums over the ranks, global selections), so that
    :func:`swap_search` runs unchanged on every rank."""

    def __init__(self, prob: Any) -> None:
        self.prob = self.local = prob

    def count(self, m: int) -> int:
        """The total of a count of local columns."""
        return m

    def total(self, x: float) -> float:
        """The total of a sum over local columns."""
        return x

    def scoring_ridge(self) -> float:
        return scoring_ridge(self.prob)

    def largest(self, v: Any, k: int) -> Any:
        """Sorted local indices of the k largest entries of a non-negative vector."""
        return largest(self.prob, v, k)

    def smallest(self, v: Any, k: int) -> Any:
        """Local indices of the k smallest entries of v (any order)."""
        return self.prob.xp.argpartition(v, k - 1)[:k]

    def same_support(self, a: Any, b: Any) -> bool:
        return bool(self.prob.xp.array_equal(a, b))

    def kinv(self, S: Any, lam: float) -> Any:
        """(lam I + A_S A_S^T)^{-1}."""
        return support_kinv(self.prob, S, lam)

    def candidates(self, entering: Any, leaving: Any) -> tuple[Any, Any, Any, int]:
        """The candidates of a round: ``cols`` (what :meth:`owned` reads), their columns V
        (n x c float64: the entering ones, then the leaving ones), their w_bar and the number
        entering."""
        cols = self.prob.xp.concatenate([entering, leaving])
        V = columns(self.prob, cols)  # [n, n_in + m_out]
        return cols, V, self.prob.xp.ascontiguousarray(self.prob.w_bar[cols]), entering.size

    def owned(self, cols: Any, positions: list[int]) -> tuple[Any, Any]:
        """The local column indices of the candidates at ``positions`` held here, and those
        positions."""
        pos = self.prob.xp.asarray(positions)
        return cols[pos], pos

    def check_round(self, s0: float, entered: list[int], left: list[int]) -> None:
        """After a round's swaps (over shards: that every rank applied the same ones)."""


@dataclass
class Swaps:
    """Stage: swap local search from the best point so far (its exact optimum), at most
    ``max_swaps`` swaps in ``max_rounds`` rounds (each one gradient pass). With ``from_iht``,
    from IHT's refit instead, when IHT beat the start supports but a later stage beat it (two
    basins: local search from the worse one sometimes ends lower)."""

    max_swaps: int
    max_rounds: int
    from_iht: bool = False
    have_inverse: bool = False  # (for the cost model: the start carries K's factor)
    if_budget: bool = False  # run only if the budget left at run time covers it (_pipeline.run)
    name: str = "swaps"
    done: SwapStats | None = None  # what the last run did (None: it had nothing to do)

    def __post_init__(self) -> None:
        if self.from_iht:
            self.name = "swaps from iht"

    def run(self, ctx: Any) -> None:
        self.done = None
        ops = ctx.swap_columns(ctx.prob)
        if not self.from_iht:
            point, self.done = swap_search(
                ctx.prob, ctx.best, max_swaps=self.max_swaps, max_rounds=self.max_rounds, ops=ops
            )
            ctx.offer(f"swaps ({self.done.swaps} in {self.done.rounds} rounds)", point)
            return
        # A second basin: IHT's refit, where it beat the starts but a later stage beat it.
        origin = ctx.iht_point
        if origin is None or ctx.same_support(origin.support, ctx.best.support):
            return
        point, self.done = swap_search(
            ctx.prob, origin, max_swaps=self.max_swaps, max_rounds=self.max_rounds, ops=ops
        )
        ctx.offer(
            f"local search from IHT's support ({self.done.swaps} swaps in "
            f"{self.done.rounds} rounds)",
            point,
        )

    def repriced(self, model: Any, k: int) -> float:
        """The modeled cost of the rounds and swaps the last run made (0 if it had none)."""
        if self.done is None:
            return 0.0
        return model.swaps(k, self.done.rounds, self.done.swaps, self.have_inverse)


def swap_search(
    prob: Any,
    start: Point,
    *,
    max_swaps: int,
    n_candidates: int = N_CANDIDATES,
    max_rounds: int = 100,
    ops: SwapColumns | None = None,
) -> tuple[Point, SwapStats]:
    """Swap local search from ``start``, the exact optimum on its support.

    Each round screens ``n_candidates`` columns to enter (largest g_j^2 / (h_j + lam)) and to
    leave (smallest removal cost), scores every pair exactly, and applies improving swaps
    greedily (rescoring exactly after each) until none is left. The entering columns come from a
    pool of the best ``POOL_FACTOR * n_candidates`` outside columns of a full gradient pass; in
    between full passes only the pool's and the support's gradients are formed (two support
    mat-vecs instead of a pass over A). A full pass runs every ``POOL_ROUNDS`` rounds and before
    the search may stop: it stops only when a round screened from a full gradient finds no
    improving swap. A round is kept only if the exact objective, recomputed from A, went down;
    otherwise the search stops at the previous round. Returns (point, stats), never worse than
    the start; the start's ``kinv`` (lam I + A_S A_S^T)^{-1}, when it has one, is read (never
    modified) instead of forming the same Gram again.

    ``ops`` (default ``SwapColumns(prob)``) does what reads or selects over all columns; over
    column shards ``prob`` is the rank's shard, ``start`` a point with the rank's support and w
    and the global r and f, and every rank runs this function with the same decisions.
    """
    t0 = time.perf_counter()
    ops = SwapColumns(prob) if ops is None else ops
    local = ops.local  # the columns held here: vectors of length p, kernels
    A, w_bar, ridge, kernels, xp = local.A, local.w_bar, local.ridge, local.kernels, local.xp
    p = local.p
    h = local.h
    k = ops.count(start.support.size)
    p_all = ops.count(p)
    stats = SwapStats()
    best = start
    if k >= p_all or max_swaps <= 0:
        stats.seconds = time.perf_counter() - t0
        return best, stats
    lam = ops.scoring_ridge()
    S, w, r = start.support.copy(), start.w, start.r
    Kinv = start.inverse() if lam == ridge else None
    if Kinv is None:
        Kinv = ops.kinv(S, lam)
    c = -prob.residual(S, w_bar[S])  # b - A_S w_bar_S
    g = xp.empty(p)
    in_S = xp.zeros(p, dtype=bool)
    in_S[S] = True
    m_in = int(min(n_candidates, p_all - k))  # columns screened to enter
    m_out = int(min(n_candidates, k))  # columns screened to leave
    pool_size = int(min(p_all - k, POOL_FACTOR * m_in))
    pool = None  # outside columns ranked best by the last full gradient (sorted)
    since_full = 0
    # Where K^-1 is the problem's own (lam == ridge > 0), f on a support is the n-space value
    # 0.5 ridge (c^T K^-1 c + ||w_bar off S||^2) and the optimum's residual is -ridge K^-1 c, so
    # rounds between full passes touch A only through the candidates' columns; the full pass
    # first checks the rounds since the last one against A (the exact point there), and a
    # drift that did not lower the exact f sends the search back to the last checked state.
    nspace = lam == ridge and ridge > 0
    checked = start  # the last point that came from A
    unchecked = False  # rounds accepted in n-space since then
    f_cur = start.f
    swaps_checked = 0
    tol = 1e-12 * max(abs(start.f), 1e-300)
    while stats.swaps < max_swaps and stats.rounds < max_rounds:
        full = pool is None or since_full >= POOL_ROUNDS
        if full and unchecked:
            point = _point_on(ops, S, Kinv @ c)
            if not point.f < checked.f:
                break  # drift: the rounds since the last check are dropped below
            checked, best, w, r, f_cur = point, point, point.w, point.r, point.f
            unchecked, swaps_checked = False, stats.swaps
        stats.rounds += 1
        # Screen with the gradient at the current point (zero on S at an exact optimum).
        if full:
            kernels.gradient(A, r, w, w_bar, ridge, g)
            outside = xp.flatnonzero(~in_S)
            pool = outside[ops.largest(g[outside] ** 2 / (h[outside] + lam), pool_size)]
            g_pool, g_S = g[pool], g[S]
            since_full = 0
        else:
            pool = pool[~in_S[pool]]
            g_pool = _support_gradient(local, pool, r, w)
            g_S = None  # zero at the optimum on S, up to rounding
            since_full += 1
        take = min(m_in, ops.count(pool.size))
        jn_cols = pool[ops.largest(g_pool**2 / (h[pool] + lam), take)] if take else pool[:0]
        cost = w[S] ** 2 * (h[S] + lam)
        if g_S is not None:
            cost -= 2.0 * w[S] * g_S
        io_cols = S[ops.smallest(cost, m_out)]
        cols, V, wv, n_in = ops.candidates(jn_cols, io_cols)
        Y = Kinv @ V
        G = xp.ascontiguousarray(V.T @ Y)
        e = Kinv @ c
        q = V.T @ e
        s0 = float(c @ e)
        free_j = np.ones(n_in, dtype=bool)  # host bookkeeping: scalars only cross over
        free_i = np.ones(m_out, dtype=bool)
        entered: list[int] = []
        left: list[int] = []
        c_new = c.copy()
        # K^{-1} itself is not needed inside the round (Y, G and q carry everything); its rank-2
        # corrections are collected and applied once, as one product, if the round is kept.
        corr_z: list[Any] = []
        corr_c: list[Any] = []
        while stats.swaps + len(corr_z) < max_swaps:
            jf, iff = np.flatnonzero(free_j), n_in + np.flatnonzero(free_i)
            if jf.size == 0 or iff.size == 0:
                break
            delta = kernels.swap_scores(G, q, s0, wv, xp.asarray(jf), xp.asarray(iff), lam)
            flat = int(xp.argmin(delta))
            a, bb = divmod(flat, jf.size)
            if not float(delta[a, bb]) < -tol:
                break
            jv, iv = int(jf[bb]), int(iff[a])
            u = xp.asarray([jv, iv])
            d = xp.stack([-wv[jv], wv[iv]])
            Q2 = G[u][:, u]
            mvec = q[u] + Q2 @ d
            Cinv = xp.linalg.inv(xp.asarray([[1.0, 0.0], [0.0, -1.0]]) + Q2)
            s0 += 2.0 * float(d @ q[u]) + float(d @ Q2 @ d) - float(mvec @ Cinv @ mvec)
            Gu = G[:, u]
            Yu = Y[:, u]
            q += Gu @ (d - Cinv @ mvec)
            G -= Gu @ Cinv @ Gu.T
            Y -= Yu @ (Cinv @ Gu.T)
            corr_z.append(Yu)
            corr_c.append(Cinv)
            c_new += V[:, u] @ d
            entered.append(jv)
            left.append(iv)
            free_j[jv] = False
            free_i[iv - n_in] = False
        ops.check_round(s0, entered, left)
        if not corr_z:
            if full:
                break  # no improving swap among the best candidates of a full screen
            since_full = POOL_ROUNDS  # the pool is spent: screen everything next round
            continue
        Z = xp.hstack(corr_z)  # [n, 2s]
        B = xp.zeros((Z.shape[1], Z.shape[1]))
        for t, Cinv in enumerate(corr_c):
            B[2 * t : 2 * t + 2, 2 * t : 2 * t + 2] = Cinv
        Kinv_new = Kinv - Z @ B @ Z.T
        out_idx, _ = ops.owned(cols, left)
        in_idx, enter = ops.owned(cols, entered)
        in_S[out_idx] = False
        in_S[in_idx] = True
        S_new = xp.flatnonzero(in_S).astype(np.int64)
        e_new = Kinv_new @ c_new
        if nspace:
            wb = w_bar[S_new]
            off = prob.wbar_sq - ops.total(float(wb @ wb))
            f_new = 0.5 * ridge * (float(c_new @ e_new) + max(off, 0.0))
            if not f_new < f_cur:
                in_S[S_new] = False  # rounding drift or a bad round: keep the last state
                in_S[S] = True
                break
            # The screens of the next rounds: r = -ridge e at the optimum, and x of the
            # columns that moved (the others' x drift a little; they only rank candidates).
            w = w.copy()
            w[out_idx] = 0.0
            w[in_idx] = wv[enter] + V[:, enter].T @ e_new
            Kinv, c, S, r, f_cur = Kinv_new, c_new, S_new, -ridge * e_new, f_new
            unchecked = True
        else:
            point = _point_on(ops, S_new, e_new)
            if not point.f < best.f:
                in_S[S_new] = False  # rounding drift or a bad round: keep the last state
                in_S[S] = True
                break
            Kinv, c, S, w, r = Kinv_new, c_new, S_new, point.w, point.r
            best = checked = point
            swaps_checked = stats.swaps + len(corr_z)
        stats.swaps += len(corr_z)
    if unchecked:  # rounds since the last check: polished and checked now, else dropped
        end = _polish(ops, checked, Point(S, w, r, f_cur), Kinv, lam, exact=False)
        if end.f < checked.f:
            best, swaps_checked = end, stats.swaps
        else:
            best = checked
        stats.swaps = swaps_checked
    elif stats.swaps:
        best = _polish(ops, start, best, Kinv, lam)
    stats.seconds = time.perf_counter() - t0
    return best, stats


def _support_gradient(prob: Any, idx: Any, r: Any, w: Any) -> Any:
    """g[idx] = A[:, idx]^T r + ridge (w - w_bar)[idx]: one support mat-vec."""
    out = prob.xp.empty(idx.size)
    if idx.size:
        prob.kernels.support_rmatvec(prob.A, idx, r, out)
        if prob.ridge:
            out += prob.ridge * (w[idx] - prob.w_bar[idx])
    return out


def _polish(
    ops: SwapColumns, start: Point, end: Point, Kinv: Any, lam: float, *, exact: bool = True
) -> Point:
    """The exact optimum on the end support. The rank-2-updated inverse gives a point near it;
    where it is the inverse of the problem's own K (lam == ridge), the refit refines from it
    (support passes, no new Gram); otherwise (a scoring shift) it solves from scratch. ``exact``
    says whether ``end`` itself came from A (else only the refit is a candidate)."""
    S = end.support
    if ops.same_support(S, start.support):  # a round trip: the start is exact there
        return start if start.f <= end.f or not exact else end
    fit = ops.prob.point(S, guess=Kinv if lam == ops.local.ridge else None)
    return fit if fit.f <= end.f or not exact else end


def _point_on(ops: SwapColumns, S: Any, e: Any) -> Point:
    """The point x_S = w_bar_S + A_S^T e, the optimum on S when e = K^-1 c (exact r and f)."""
    local = ops.local
    x = local.xp.empty(S.size)
    if S.size:
        local.kernels.support_rmatvec(local.A, S, e, x)
    x += local.w_bar[S]
    return Point.at(ops.prob, S, x)
