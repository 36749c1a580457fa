"""Greedy OBS from a screened superset, in n-space (docs/design.md, section 4).

Backward elimination: remove the weight whose removal raises f the least, move the others to
the new optimum, repeat, with exact rank-1 updates of n-space quantities; blocked so that each
block is a few GEMMs. ``greedy_cost`` counts its multiply-adds (the planner turns them into
seconds with the measured BLAS rate).

What the stage does over all of A's columns at once (the screen's selections and counts, the
superset's K^-1 and c, a block's pool) goes through :class:`GreedyColumns`; chita_core.distributed
runs the same elimination over column shards with its sharded counterpart (docs/design.md,
section 12.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._linalg import spd_inverse
from .nspace import columns, kinv_quad, shifted_inverse, support_gram
from .swaps import SwapColumns

__all__ = [
    "GreedyColumns",
    "GreedyOBS",
    "greedy_cost",
    "greedy_obs_support",
    "greedy_screen",
    "greedy_screen_size",
]

# Removals per block (one GEMM over the superset's columns): 1 per _GREEDY_BLOCK_SHARE surviving
# columns, at most _GREEDY_BLOCK; each block's removals are chosen one at a time, exactly,
# within a pool of the block's size plus _GREEDY_POOL_EXTRA least salient weights.
_GREEDY_BLOCK = 32
_GREEDY_BLOCK_SHARE = 64
_GREEDY_POOL_EXTRA = 16
# Compact the greedy workspace to the surviving columns when they fall below this fraction.
_GREEDY_COMPACT = 0.8
# Blocks whose update of every surviving column's x and d is deferred and done as one GEMM: at
# most this many, and while their removals are at most 1% of the surviving columns (at digits
# MLP size, 3 blocks of 32 among 9,000 columns; on small problems no deferral).
_GREEDY_DEFER = 4
# The superset: at least this multiple of k columns (and 2n, and a quarter of p), as the budget
# allows (greedy_screen_size).
SCREEN_MULTIPLE = 3.0
SCREEN_SHARE = 0.25


@dataclass
class GreedyOBS:
    """Stage: greedy OBS down to k from a superset of ``m`` columns: the best support so far
    plus the weights ranked highest by |start| or by their OBD saliency; the result is refit."""

    m: int
    name: str = "greedy obs"

    def run(self, ctx: Any) -> None:
        ops = ctx.greedy_columns(ctx.prob)
        best = ctx.best
        screen = greedy_screen(ops.local, ctx.start, best.support, self.m, ops=ops)
        known = (best.support, best.gram) if best.gram is not None else None
        support, kinv = greedy_obs_support(
            ops.local, screen, ctx.k, return_inverse=True, known=known, ops=ops
        )
        point = ctx.point(support, guess=kinv)
        ctx.offer(f"greedy obs from {ops.count(screen.size)} + refit", point)


class GreedyColumns(SwapColumns):
    """The operations of greedy OBS and of the OBS starts (stages/starts.py) on all of A's
    columns, for one process: swap search's (counts, the scoring ridge, selections, K^-1) and
    Grams, c = b - A_S w_bar_S, a block's pool, the whole problem for enumeration.
    chita_core.distributed's ``ShardGreedyColumns`` implements them over column shards
    (``local`` the rank's block, each rank's workspace its own superset columns, the pool's
    columns gathered, the n x n algebra replicated), so that :func:`greedy_obs_support` runs
    unchanged on every rank."""

    def gram(self, S: Any) -> Any:
        """A_S A_S^T (n x n)."""
        return support_gram(self.local, S)

    def whole(self, max_p: int) -> tuple[Any, Any]:
        """The problem on all columns where there are at most ``max_p`` of them (else None),
        and the map from its column indices to the local ones."""
        return (self.local if self.local.p <= max_p else None), (lambda support: support)

    def screen_kinv(self, S: Any, lam: float, known: Any) -> Any:
        """(lam I + A_S A_S^T)^-1 of the superset S (``known``: see ``_screen_gram``)."""
        return shifted_inverse(_screen_gram(self.local, S, known), lam)

    def minus_support(self, S: Any) -> Any:
        """b - A_S w_bar_S."""
        return _minus_support(self.local, S)

    def pool(self, AS: Any, S: Any, C: Any, T: Any) -> tuple[Any, Any, Any, Any]:
        """A block's pool ``C`` (workspace positions held here, as ``smallest`` returned them):
        its columns in float64 (n x |C|), their w_bar, their columns of T = K^-1 A_S (None
        while T is not formed), and each pool entry's workspace position here (-1 where
        another rank holds it)."""
        TC = None if T is None else T[:, C]
        return self.local.xp.asarray(AS[:, C], dtype=np.float64), self.local.w_bar[S[C]], TC, C

    def check(self, x: Any, name: str) -> None:
        """That the replicated ``x`` is the same on every rank (over shards)."""


def greedy_cost(n: int, k: int, m: int, known: int = 0) -> float:
    """Multiply-adds of :func:`greedy_obs_support` from ``m`` columns down to ``k``: the Gram
    and inverse of the superset, its initial diagonal, then per block the pool's products, the
    pass over the surviving columns and the rank-``block`` update of the n x n inverse.
    ``known``: columns whose Gram comes with the start point (its SYRK, n^2 / 2 each, saved)."""
    n, k, m = float(n), float(k), float(m)
    saved = 0.5 * n * n * min(float(known), m)
    # Per removal while more than n columns survive (blocks of B >= m / 64 > n / 64, pools
    # of B + 16): the pool's K^-1 A_C and G_CC, n^2 (B + 16) / B + n (B + 16)^2 / B, and the
    # rank-B update of K^-1, n^2. Below n survivors T = K^-1 A_S (n^3 once) replaces K^-1 and
    # a removal costs at most 2 n^2 + n (B + 16)^2 / B, bounded by the same.
    B = float(max(1, min(_GREEDY_BLOCK, math.ceil(max(m, n) / _GREEDY_BLOCK_SHARE))))
    P = B + _GREEDY_POOL_EXTRA
    per_removal = n * n * (P / B + 1.0) + n * P * P / B
    # n^3 / 2: the superset's Cholesky factor and inverse from it; n^3: T = K^-1 A_S once
    # below n survivors.
    total = 2.0 * n * n * m + 1.5 * n**3 + 0.5 * n * (m * m - k * k) + (m - k) * per_removal
    return total - saved


def greedy_screen_size(
    n: int,
    p: int,
    k: int,
    budget: float,
    multiple: float = SCREEN_MULTIPLE,
    share: float = SCREEN_SHARE,
) -> int | None:
    """Size of the superset greedy OBS starts from: the largest of ``multiple * k`` columns, 2n
    (up to that size the n x n algebra, O(n^3) anyway, dominates the cost) and ``share * p``
    (at high sparsity a screen by magnitude and OBD should not decide about more than
    1 - share of the weights on its own), capped by p and by ``budget`` multiply-adds
    (:func:`greedy_cost`); None when not even one removal fits."""
    hi = min(p, max(math.ceil(multiple * k), 2 * n, math.ceil(share * p)))
    if hi <= k or greedy_cost(n, k, k + 1) > budget:
        return None
    lo = k + 1  # greedy_cost grows with m: bisect for the largest m within budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if greedy_cost(n, k, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def greedy_screen(prob: Any, start: Any, forced: Any, m: int, *, ops: Any = None) -> Any:
    """The superset greedy OBS starts from: ``forced`` (the best support so far) plus the
    weights ranked highest by either magnitude ``|start|`` or the diagonal OBS (OBD) saliency
    ``start^2 (||a_j||^2 + lam)``: the union of the top t of both rankings, t as large as keeps
    it within m columns (bisection, each step two selections; no sort of p).

    Magnitude alone is blind to how the columns of A are scaled: multiply one layer's weights
    by 10 and divide its gradients by 10, and the problem is the same but the magnitude screen
    keeps that layer whole (greedy OBS from it was 1.5x worse than from all columns on a digits
    MLP at 90%). OBD sees the scaling but ignores correlations; the union of the two held up in
    both cases. Returns sorted int64 indices, at most m of them (at least ``forced``).
    ``ops``: the :class:`GreedyColumns` the selections and counts go through (over shards:
    ``prob`` and ``start`` the rank's, m and t global)."""
    ops = GreedyColumns(prob) if ops is None else ops
    xp = prob.xp
    p = start.size
    h = prob.h
    lam = ops.scoring_ridge()
    mag = xp.abs(start)
    obd = start * start * (h + lam)
    mag[forced] = xp.inf
    obd[forced] = xp.inf
    chosen = xp.zeros(p, dtype=bool)
    chosen[forced] = True
    lo, hi = m // 2, m  # |top t of both| lies between t and 2t
    while lo <= hi:
        t = (lo + hi) // 2
        union = xp.zeros(p, dtype=bool)
        if t > 0:
            union[ops.largest(mag, t)] = True
            union[ops.largest(obd, t)] = True
        if ops.count(int(union.sum())) <= m:
            chosen |= union
            lo = t + 1
        else:
            hi = t - 1
    return xp.flatnonzero(chosen).astype(np.int64)


def greedy_obs_support(
    prob: Any,
    screen: Any,
    k: int,
    *,
    block: int | None = None,
    pool: int | None = None,
    return_inverse: bool = False,
    known: Any = None,
    ops: Any = None,
) -> Any:
    """Greedy OBS (backward elimination) from the columns ``screen`` down to ``k`` of them.

    Greedy OBS removes, one at a time, the weight whose removal raises f the least (saliency
    x_q^2 / [H_S^-1]_qq at the exact optimum x on the current support S) and moves the others
    to the new optimum. Here it runs in n-space: with K = lam I + A_S A_S^T,
    [H_S^-1]_qq = (1 - d_q) / lam with d_q = a_q^T K^-1 a_q, and x_S = w_bar_S + A_S^T K^-1 c,
    c = b - A_S w_bar_S. Removing q changes K by -a_q a_q^T, so x and d follow from
    G_jq = a_j^T K^-1 a_q: x_j += G_jq x_q / (1 - d_q), d_j += G_jq^2 / (1 - d_q).

    Blocked: each block takes the ``pool`` weights of least saliency, forms their exact
    G_CC = A_C^T K^-1 A_C, removes ``block`` of them one at a time with the rank-1 updates
    above restricted to the pool, then brings x and d of every surviving column and K^-1 up to
    date at once (Woodbury with the removed set Q: one GEMM A_S^T K^-1 A_Q). That is exact
    greedy OBS except that a block's removals are chosen within its pool (a weight outside the
    pool would have to become the least salient within the same block). Default ``block``:
    one per 64 surviving columns, at most 32; default ``pool``: ``block`` + 16. block = pool = 1
    is textbook greedy OBS. Once no more than n columns survive, T = K^-1 A_S replaces K^-1
    (no n x n work per block from there).

    The superset's columns are gathered into an [n, |screen|] float64 workspace, so the cost is
    :func:`greedy_cost` multiply-adds and 8 n |screen| bytes; no p x p or |S| x |S| matrix is
    formed. Returns the sorted int64 support of size k.

    ``ops``: the :class:`GreedyColumns` through which what concerns all columns goes (over
    shards ``prob`` and ``screen`` are the rank's: its workspace holds its own superset
    columns, sizes and counts are global, a pool is gathered, the n x n algebra replicated)."""
    ops = GreedyColumns(prob) if ops is None else ops
    w_bar, xp = prob.w_bar, prob.xp
    n = prob.n
    lam = ops.scoring_ridge()
    tiny = np.finfo(float).eps
    S = screen
    width = ops.count(S.size)  # the workspace's columns, over all ranks
    # The workspace: A's columns in float32 where A is float32 on the host and the pools have
    # their default slack (the values are A's own, so exact; the passes over the surviving
    # columns then run in SGEMM at half the bytes, and only the x and d that choose the next
    # pools carry float32 products: each pool's own quantities are formed in float64).
    # Otherwise float64.
    narrow = pool is None and prob.where is None and workspace_itemsize(prob) == 4
    AS = _workspace(prob, S, narrow)  # [n, m]
    Kinv = ops.screen_kinv(S, lam, known)
    c = ops.minus_support(S)
    e = Kinv @ c  # K^-1 c: x = w_bar_S + A_S^T e
    x = w_bar[S] + _rmatvec(prob, S, e)
    # a_j^T K^-1 a_j: it only ranks columns for the pools (each pool's own d is formed from
    # G0 in float64), so with the float32 workspace it is an SGEMM too.
    d = kinv_quad(AS, Kinv.astype(np.float32) if narrow else Kinv)
    # Once no more than n columns survive, T = K^-1 A_S (n x survivors) replaces K^-1: the
    # pool's columns are then read from T and no block does n x n work.
    T = None
    alive = xp.ones(S.size, dtype=bool)
    n_alive = width
    # The pass over the surviving columns that brings x and d up to date (Y = A_S^T Z_Q) is
    # deferred over up to _GREEDY_DEFER blocks and done as one wider GEMM: each block's own
    # quantities (the pool's x and cross terms, e, K^-1) stay exact, only the choice of the
    # next pools reads x and d that lag by a few blocks.
    # K^-1's own update (K^-1 += Z_Q M Z_Q^T) is deferred with them, as one GEMM; meanwhile the
    # pools read K^-1 A_C with the pending corrections applied (exact, a few n x 32 products).
    pending: list[tuple[Any, Any, Any]] = []  # (Z_Q, v, M) of blocks not yet in x, d, K^-1

    def flush() -> None:
        nonlocal x, d, Kinv
        if not pending:
            return
        Z = xp.hstack([z for z, _, _ in pending])
        dt = AS.dtype
        Ycat = AS.T @ Z.astype(dt, copy=False)  # (an SGEMM when narrow)
        at = 0
        for z, v, M in pending:
            Y = Ycat[:, at : at + z.shape[1]]
            at += z.shape[1]
            # (In the workspace's precision: float64 operands would make NumPy cast Y.)
            x += Y @ v.astype(dt, copy=False)
            d += xp.einsum("ij,ij->i", Y @ M.astype(dt, copy=False), Y)
        Kinv += xp.hstack([z @ M for z, _, M in pending]) @ Z.T
        pending.clear()

    def kinv_times(X: Any) -> Any:
        """K^-1 X with the pending blocks' updates of K^-1 applied."""
        out = Kinv @ X
        for z, _, M in pending:
            out += z @ (M @ (z.T @ X))
        return out

    def wide(X: Any) -> Any:
        return xp.asarray(X, dtype=np.float64)

    while n_alive > k:
        if T is None and n_alive <= n:
            flush()
            keep = xp.flatnonzero(alive)
            S, AS, x, d = S[keep], AS[:, keep], x[keep], d[keep]
            alive = xp.ones(S.size, dtype=bool)
            AS = wide(AS)  # (at most n columns left: float64 from here on)
            narrow = False
            width = n_alive
            T, Kinv = Kinv @ AS, None
        if block is None:
            nb = max(1, min(_GREEDY_BLOCK, -(-n_alive // _GREEDY_BLOCK_SHARE)))
        else:
            nb = block
        nb = min(nb, n_alive - k)
        npool = nb + _GREEDY_POOL_EXTRA if pool is None else pool
        npool = min(max(npool, nb), n_alive)
        sal = x * x / xp.maximum(1.0 - d, tiny)
        sal[~alive] = xp.inf
        C = ops.smallest(sal, npool) if npool < width else xp.flatnonzero(alive)
        AC, wc, TC, place = ops.pool(AS, S, C, T)
        ZC = kinv_times(AC) if T is None else TC
        G0 = AC.T @ ZC
        # The pool's exact x and cross terms, then greedy removals within it, one at a time
        # (the backend's pool_eliminate: one compiled loop over the block's removals).
        xc = wc + AC.T @ e
        oq = xp.asarray(prob.kernels.pool_eliminate(G0, xc, nb))
        Q = place[oq]
        Q = Q[Q >= 0]  # (the removed columns held here)
        ZQ = ZC[:, oq]
        M = spd_inverse(xp.eye(nb) - G0[oq][:, oq])  # SPD: a_q^T K^-1 a_q < 1 on S
        c = c + AC[:, oq] @ wc[oq]
        v = wc[oq] + M @ (ZQ.T @ c)  # e changes by ZQ v
        e += ZQ @ v
        alive[Q] = False
        n_alive -= nb
        if T is None:
            pending.append((ZQ, v, M))
            # (An explicit pool gets x and d up to date every block: with pool = block = 1
            # this is textbook greedy OBS, which chooses from exact saliencies.)
            stale = sum(z.shape[1] for z, _, _ in pending)
            if pool is not None or len(pending) >= _GREEDY_DEFER or stale * 100 >= n_alive:
                flush()
        else:
            Y = AS.T @ ZQ  # [m, nb]: the pass over the surviving columns
            x += Y @ v
            d += ((Y @ M) * Y).sum(axis=1)
            T += ZQ @ (M @ Y.T)
        if n_alive < _GREEDY_COMPACT * width and n_alive > k:
            flush()
            keep = xp.flatnonzero(alive)
            S, AS, x, d = S[keep], AS[:, keep], x[keep], d[keep]
            if T is not None:
                T = T[:, keep]
            alive = xp.ones(S.size, dtype=bool)
            width = n_alive
    flush()  # (K^-1 of the result, for return_inverse)
    ops.check(e, "greedy OBS's K^-1 c")
    support = xp.sort(S[alive]).astype(np.int64)
    if not return_inverse:
        return support
    # K^-1 of the result, carried by the downdates, where it is the problem's own
    # (ridge I + A_S A_S^T)^-1: the refit refines from it instead of forming the Gram again.
    exact_k = T is None and lam == prob.ridge and prob.ridge > 0
    if exact_k and ops.count(int(not bool(xp.all(xp.diff(S[alive]) > 0)))):
        exact_k = False  # (S stays sorted through compaction; guard the invariant anyway)
    return support, (Kinv if exact_k else None)


def workspace_itemsize(prob: Any) -> int:
    """Bytes per entry of greedy OBS's gathered n x m workspace: 4 (float32, exact) for a
    float32 or 16-bit A on the host, else 8 (float64). Reads ``where`` and ``itemsize`` only
    (the planner passes the global shape of a sharded problem)."""
    return 4 if prob.where is None and prob.itemsize <= 4 else 8


def _workspace(prob: Any, S: Any, narrow: bool) -> Any:
    """A[:, S] as an (n, m) F-ordered workspace: float32 (A's own values, exact for a float32
    or 16-bit A) when ``narrow``, else float64 (the backend's gather)."""
    if not narrow:
        return columns(prob, S)
    AS = np.take(prob.A.T, S, axis=0).T if prob.A.flags.f_contiguous else prob.A[:, S]
    return AS.astype(np.float32, order="F", copy=False)


def _minus_support(prob: Any, S: Any) -> Any:
    """b - A_S w_bar_S, accumulated in float64 by the backend's support mat-vec."""
    out = prob.xp.empty(prob.n)
    prob.kernels.support_matvec(prob.A, S, prob.xp.ascontiguousarray(prob.w_bar[S]), out)
    return prob.b - out


def _rmatvec(prob: Any, S: Any, y: Any) -> Any:
    out = prob.xp.empty(S.size)
    if S.size:  # (over shards a rank may hold no superset column)
        prob.kernels.support_rmatvec(prob.A, S, prob.xp.ascontiguousarray(y), out)
    return out


def _screen_gram(prob: Any, S: Any, known: Any) -> Any:
    """A_S A_S^T for the screen S. ``known`` may pass (T, A_T A_T^T) for a subset T of S (the
    best point's support, whose refit formed its Gram): then only the other columns' Gram is
    added (the screen is the best support plus a few more columns)."""
    if known is not None:
        T, gram_T = known
        extra = S[~prob.xp.isin(S, T)]
        if extra.size + T.size == S.size:  # T lies inside S
            K = gram_T.copy()
            if extra.size:
                K += support_gram(prob, extra)
            return K
    return support_gram(prob, S)
