"""Solver quality beyond plain IHT: exact refits, OBS starting supports, swap local search.

Everything here works on the objective restricted to a support S,

    f*(S) = min_x 0.5 ||A_S x - b||^2 + 0.5 lam ||x - w_bar_S||^2 + 0.5 lam ||w_bar_{not S}||^2
          = 0.5 lam c^T K^{-1} c + 0.5 lam ||w_bar_{not S}||^2,

with K = lam I + A_S A_S^T (n x n) and c = b - A_S w_bar_S (push-through identity). A swap
(i leaves S, j enters) changes K by the rank-2 term a_j a_j^T - a_i a_i^T and c by
a_i w_bar_i - a_j w_bar_j, so for a screened set of candidate columns V every pair is scored
exactly from G = V^T K^{-1} V and q = V^T K^{-1} c, and an applied swap updates G, q and
K^{-1} by rank-2 formulas: no pass over A, no p x p or |S| x |S| matrix.

The heavy passes over A (gradient, Gram of a support, mat-vecs) are backend kernels; the small
dense algebra (n x n and candidate-sized) is NumPy/LAPACK.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._iht import objective_value
from ._interop import array_module
from ._linalg import REFINE_FROM, SPDSystem, least_squares, spd_inverse

__all__ = [
    "SwapStats",
    "exhaustive_support",
    "greedy_cost",
    "greedy_obs_support",
    "greedy_screen",
    "greedy_screen_size",
    "obs_multistep_support",
    "obs_saliency",
    "refit",
    "swap_search",
]

# Exact enumeration of all supports for tiny problems: at most this many columns and supports.
_EXHAUSTIVE_MAX_P = 32
_EXHAUSTIVE_MAX_SUPPORTS = 200_000
_EXHAUSTIVE_BATCH = 20_000
_ROW_BLOCK = 8192
# Columns gathered per block when a pass needs A's columns in float64 (bounded memory).
_BLOCK_COLS = 2048
# Refits solve the normal (or n-space) equations only up to this condition number after
# equilibration, where they stay accurate to rounding with refinement; beyond, an SVD.
_NORMAL_EQ_COND = 1e6
# An ill-conditioned refit with |S| > n falls back to an SVD of the gathered A_S (8 n |S| bytes)
# up to this size; beyond it the n-space pseudo-inverse (exact for ridge well above rounding).
_SVD_BYTES = 1 << 30
# With ridge == 0 the n-space form needs a positive shift; this one is relative to the mean
# curvature and only used for scoring and OBS saliencies; objectives are always exact.
_SCORE_SHIFT = 1e-6
# Greedy OBS from a screened superset: removals per block (one GEMM over the superset's
# columns): 1 per _GREEDY_BLOCK_SHARE surviving columns, at most _GREEDY_BLOCK; each block's
# removals are chosen one at a time, exactly, within a pool of the block's size plus
# _GREEDY_POOL_EXTRA least salient weights.
_GREEDY_BLOCK = 32
_GREEDY_BLOCK_SHARE = 64
_GREEDY_POOL_EXTRA = 16
# Compact the greedy workspace to the surviving columns when they fall below this fraction.
_GREEDY_COMPACT = 0.8


@dataclass
class SwapStats:
    """What :func:`swap_search` did."""

    swaps: int = 0
    rounds: int = 0
    seconds: float = 0.0


def refit(
    kernels: Any, prob: Any, support: np.ndarray, *, keep_inverse: bool = False
) -> tuple[np.ndarray, np.ndarray, float] | tuple[np.ndarray, np.ndarray, float, Any]:
    """Exact minimiser on ``support`` (sorted int64): returns (w [p], r [n], objective).

    With ``keep_inverse`` it also returns K^{-1} = (ridge I + A_S A_S^T)^{-1} when it was formed
    on the way (ridge > 0 and |S| > n: the push-through form), else None; swap search then starts
    from it instead of forming the same Gram again."""
    A, b, w_bar, ridge = prob.A, prob.b, prob.w_bar, prob.ridge
    xp = array_module(b)
    values, Kinv = support_values(kernels, prob, support, keep_inverse=keep_inverse)
    w = xp.zeros(A.shape[1])
    w[support] = values
    r = xp.empty(A.shape[0])
    kernels.support_matvec(A, support, xp.ascontiguousarray(values), r)
    r -= b
    f = objective_value(r, w, w_bar, ridge)
    return (w, r, f, Kinv) if keep_inverse else (w, r, f)


def support_values(
    kernels: Any, prob: Any, support: np.ndarray, *, keep_inverse: bool = False
) -> tuple[np.ndarray, Any]:
    """x_S minimising the objective with nonzeros on ``support`` only, accurate to rounding.

    In z = x - w_bar_S it is the ridge regression min ||A_S z - c||^2 + ridge ||z||^2 with
    c = b - A_S w_bar_S. With |S| <= n: the m x m normal equations (BLAS Gram, guarded Cholesky,
    iterative refinement against A_S itself), or an SVD of A_S when they are ill-conditioned.
    With |S| > n: z = A_S^T y, (ridge I + A_S A_S^T) y = c, an n x n system refined against
    mat-vecs over A_S (the m x m matrix is never formed). Returns (x_S, K^{-1} or None)."""
    A, b, w_bar, ridge = prob.A, prob.b, prob.w_bar, prob.ridge
    xp = array_module(b)
    n = A.shape[0]
    m = support.size
    wb = xp.ascontiguousarray(w_bar[support])
    c = xp.empty(n)
    kernels.support_matvec(A, support, wb, c)
    c = b - c
    Kinv = None
    if m <= n:
        X = _columns(A, support)  # [n, m] float64, m <= n: at most n^2 numbers
        G = X.T @ X
        G[xp.diag_indices(m)] += ridge
        # Normal equations only where they stay backward stable enough (kappa(G) <= 1e6 after
        # equilibration); beyond, the SVD of the gathered columns.
        system = SPDSystem(G, cond_limit=_NORMAL_EQ_COND)
        if system.good:
            z = system.solve(X.T @ c, lambda v: X.T @ (X @ v) + ridge * v)
        else:
            z = least_squares(X, c, ridge)
    else:
        K = _support_gram(kernels, A, support)
        K[xp.diag_indices(n)] += ridge

        def apply(y: Any) -> Any:
            t = xp.empty(m)
            kernels.support_rmatvec(A, support, xp.ascontiguousarray(y), t)
            out = xp.empty(n)
            kernels.support_matvec(A, support, t, out)
            return out + ridge * y

        system = SPDSystem(K, cond_limit=_NORMAL_EQ_COND)
        if keep_inverse and ridge > 0:
            Kinv = system.inverse()  # formed first: the solve below then reuses it
        svd_bytes = 8 * m * (n if ridge == 0 else n + m)  # least_squares' matrix
        if not system.good and svd_bytes <= _SVD_BYTES:
            # Ill-conditioned beyond what n-space resolves accurately: SVD of A_S itself.
            z = least_squares(_columns(A, support), c, ridge)
        else:
            # apply costs 2 passes over A_S: refinement only where the conditioning asks.
            y = system.solve(c, apply, refine_from=REFINE_FROM)
            z = xp.empty(m)
            kernels.support_rmatvec(A, support, xp.ascontiguousarray(y), z)
    return z + wb, Kinv


def largest(kernels: Any, v: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the k largest entries of a non-negative vector (a selection, O(p))."""
    xp = array_module(v)
    out = xp.empty(k, dtype=np.int64)
    kernels.topk(xp.ascontiguousarray(v), k, out)
    return out


def _scoring_ridge(prob: Any, h: np.ndarray) -> float:
    """The ridge of the n-space scores: the problem's, but at least _SCORE_SHIFT times the mean
    curvature, so that tiny ridges score like ridge -> 0 instead of through the cancellation in
    (1 - a^T K^-1 a) / ridge."""
    scale = float(h.mean()) if h.size else 0.0
    shift = _SCORE_SHIFT * scale if scale > 0 else 0.0
    if not shift > 0.0:  # all-zero (or underflowing) columns
        shift = prob.ridge if prob.ridge > 0 else _SCORE_SHIFT
    return max(prob.ridge, shift)


def _columns(A: Any, idx: np.ndarray) -> np.ndarray:
    """A[:, idx] as a float64 (n, len(idx)) array: a small gathered workspace, not a copy of A.
    (A device matrix gathers through its own ``columns``.)"""
    if isinstance(A, np.ndarray):
        return np.asarray(A[:, idx], dtype=np.float64)
    return A.columns(idx)


def _support_gram(kernels: Any, A: Any, idx: np.ndarray) -> np.ndarray:
    xp = array_module(idx)
    n = A.shape[0]
    K = xp.empty((n, n))
    kernels.support_gram(A, idx, K)
    return K


def _shifted_inverse(K: np.ndarray, lam: float) -> np.ndarray:
    """(K + lam I)^{-1}, K left unchanged."""
    xp = array_module(K)
    return spd_inverse(K + lam * xp.eye(K.shape[0]))


def _support_kinv(kernels: Any, A: Any, idx: np.ndarray, lam: float) -> np.ndarray:
    return _shifted_inverse(_support_gram(kernels, A, idx), lam)


def _hinv_diag(A: np.ndarray, idx: np.ndarray, Kinv: np.ndarray, lam: float) -> np.ndarray:
    """[H_S^{-1}]_qq for q in idx, H_S = A_S^T A_S + lam I, via Woodbury: (1 - a^T K^-1 a) / lam."""
    xp = array_module(idx)
    out = xp.empty(idx.size)
    for s0 in range(0, idx.size, _BLOCK_COLS):
        out[s0 : s0 + _BLOCK_COLS] = 1.0 - _kinv_quad(_columns(A, idx[s0 : s0 + _BLOCK_COLS]), Kinv)
    # a^T K^{-1} a < 1 in exact arithmetic; rounding must not make a diagonal negative.
    return xp.maximum(out, np.finfo(float).eps) / lam


def _kinv_quad(V: np.ndarray, Kinv: np.ndarray) -> np.ndarray:
    """a^T K^-1 a for every column a of V (float64, in memory), _BLOCK_COLS columns at a time."""
    xp = array_module(V)
    out = xp.empty(V.shape[1])
    for s0 in range(0, V.shape[1], _BLOCK_COLS):
        B = V[:, s0 : s0 + _BLOCK_COLS]
        out[s0 : s0 + B.shape[1]] = (B * (Kinv @ B)).sum(axis=0)
    return out


def obs_saliency(kernels: Any, prob: Any, h: np.ndarray) -> np.ndarray:
    """OBS saliency w_q^2 / [H^{-1}]_qq of every weight (H = A^T A + ridge I), O(n^2 p).

    w is the unconstrained minimiser of the objective (w_bar itself when b = A w_bar, the
    pruning case), obtained from the same n x n factor."""
    A, b, w_bar = prob.A, prob.b, prob.w_bar
    xp = array_module(b)
    n, p = A.shape
    lam = _scoring_ridge(prob, h)
    every = xp.arange(p, dtype=np.int64)
    Kinv = _support_kinv(kernels, A, every, lam)
    c = xp.empty(n)
    kernels.support_matvec(A, every, w_bar, c)
    c = b - c
    w = xp.empty(p)
    kernels.support_rmatvec(A, every, Kinv @ c, w)
    w += w_bar
    return w * w / _hinv_diag(A, every, Kinv, lam)


def obs_multistep_support(
    kernels: Any, prob: Any, k: int, h: np.ndarray, steps: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Prune to k weights in ``steps`` OBS steps, refitting on the kept support in between.

    Returns (multistep support, one-shot OBS support): the first step's saliencies are those
    of all p weights, so the one-shot support comes for free."""
    A, b, w_bar = prob.A, prob.b, prob.w_bar
    xp = array_module(b)
    n, p = A.shape
    lam = _scoring_ridge(prob, h)
    support = xp.arange(p, dtype=np.int64)
    oneshot = None
    gram = None  # A_S A_S^T of the current support, downdated as columns leave
    for step in range(1, steps + 1):
        target = p - ((p - k) * step) // steps
        if target >= support.size:
            continue
        if gram is None:
            gram = _support_gram(kernels, A, support)
        Kinv = _shifted_inverse(gram, lam)
        c = xp.empty(n)
        kernels.support_matvec(A, support, xp.ascontiguousarray(w_bar[support]), c)
        c = b - c
        x = xp.empty(support.size)
        kernels.support_rmatvec(A, support, Kinv @ c, x)
        x += w_bar[support]
        saliency = x * x / _hinv_diag(A, support, Kinv, lam)
        if oneshot is None and support.size == p:
            oneshot = largest(kernels, saliency, k)
        keep = largest(kernels, saliency, target)
        dropped = xp.ones(support.size, dtype=bool)
        dropped[keep] = False
        removed, support = support[dropped], support[keep]
        # The next step's Gram: subtract the removed columns when they are the fewer.
        if step < steps and removed.size < support.size:
            gram -= _support_gram(kernels, A, removed)
        else:
            gram = None
    if oneshot is None:  # k == p: nothing to prune
        oneshot = support
    return support, oneshot


def greedy_cost(n: int, k: int, m: int) -> float:
    """Multiply-adds of :func:`greedy_obs_support` from ``m`` columns down to ``k``: the Gram
    and inverse of the superset, its initial diagonal, then per block the pool's products, the
    pass over the surviving columns and the rank-``block`` update of the n x n inverse."""
    n, k, m = float(n), float(k), float(m)
    # Per removal while more than n columns survive (blocks of B >= m / 64 > n / 64, pools
    # of B + 16): the pool's K^-1 A_C and G_CC, n^2 (B + 16) / B + n (B + 16)^2 / B, and the
    # rank-B update of K^-1, n^2. Below n survivors T = K^-1 A_S (n^3 once) replaces K^-1 and
    # a removal costs at most 2 n^2 + n (B + 16)^2 / B, bounded by the same.
    B = float(max(1, min(_GREEDY_BLOCK, math.ceil(max(m, n) / _GREEDY_BLOCK_SHARE))))
    P = B + _GREEDY_POOL_EXTRA
    per_removal = n * n * (P / B + 1.0) + n * P * P / B
    return 2.0 * n * n * m + 2.0 * n**3 + 0.5 * n * (m * m - k * k) + (m - k) * per_removal


def greedy_screen_size(
    n: int, p: int, k: int, multiple: float, budget: float, share: float = 0.25
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


def greedy_screen(
    kernels: Any, prob: Any, start: np.ndarray, forced: np.ndarray, m: int, h: np.ndarray
) -> np.ndarray:
    """The superset greedy OBS starts from: ``forced`` (the best support so far) plus the
    weights ranked highest by either magnitude ``|start|`` or the diagonal OBS (OBD) saliency
    ``start^2 (||a_j||^2 + lam)``: the union of the top t of both rankings, t as large as keeps
    it within m columns (bisection, each step two selections; no sort of p).

    Magnitude alone is blind to how the columns of A are scaled: multiply one layer's weights
    by 10 and divide its gradients by 10, and the problem is the same but the magnitude screen
    keeps that layer whole (greedy OBS from it was 1.5x worse than from all columns on a digits
    MLP at 90%). OBD sees the scaling but ignores correlations; the union of the two held up in
    both cases. Returns sorted int64 indices, at most m of them (at least ``forced``)."""
    xp = array_module(start)
    p = start.size
    lam = _scoring_ridge(prob, h)
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
            union[largest(kernels, mag, t)] = True
            union[largest(kernels, obd, t)] = True
        if int(union.sum()) <= m:
            chosen |= union
            lo = t + 1
        else:
            hi = t - 1
    return xp.flatnonzero(chosen).astype(np.int64)


def greedy_obs_support(
    kernels: Any,
    prob: Any,
    screen: np.ndarray,
    k: int,
    h: np.ndarray,
    *,
    block: int | None = None,
    pool: int | None = None,
) -> np.ndarray:
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
    formed. Returns the sorted int64 support of size k."""
    A, b, w_bar = prob.A, prob.b, prob.w_bar
    xp = array_module(b)
    n = A.shape[0]
    lam = _scoring_ridge(prob, h)
    tiny = np.finfo(float).eps
    S = screen
    AS = _columns(A, S)  # [n, m] float64 workspace
    Kinv = _shifted_inverse(AS @ AS.T, lam)
    c = b - AS @ w_bar[S]
    e = Kinv @ c  # K^-1 c: x = w_bar_S + A_S^T e
    x = w_bar[S] + AS.T @ e
    d = _kinv_quad(AS, Kinv)  # a_j^T K^-1 a_j
    # Once no more than n columns survive, T = K^-1 A_S (n x survivors) replaces K^-1: the
    # pool's columns are then read from T and no block does n x n work.
    T = None
    alive = xp.ones(S.size, dtype=bool)
    n_alive = S.size
    while n_alive > k:
        if T is None and n_alive <= n:
            keep = xp.flatnonzero(alive)
            S, AS, x, d = S[keep], AS[:, keep], x[keep], d[keep]
            alive = xp.ones(S.size, dtype=bool)
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
        C = xp.argpartition(sal, npool - 1)[:npool] if npool < S.size else xp.flatnonzero(alive)
        AC = AS[:, C]
        ZC = Kinv @ AC if T is None else T[:, C]
        G0 = AC.T @ ZC
        # The pool's exact x and cross terms, then greedy removals within it, one at a time.
        xc = w_bar[S[C]] + AC.T @ e
        G = G0.copy()
        live = np.ones(npool, dtype=bool)  # host bookkeeping: scalars only cross over
        order: list[int] = []
        for _ in range(nb):
            dc = xp.maximum(1.0 - xp.diagonal(G), tiny)
            s = xc * xc / dc
            s[xp.asarray(~live)] = xp.inf
            q = int(xp.argmin(s))
            g = G[:, q].copy()
            xc += g * (xc[q] / dc[q])
            G += xp.outer(g / dc[q], g)
            live[q] = False
            order.append(q)
        oq = xp.asarray(order)
        Q = C[oq]
        ZQ = ZC[:, oq]
        M = spd_inverse(xp.eye(nb) - G0[oq][:, oq])  # SPD: a_q^T K^-1 a_q < 1 on S
        c = c + AS[:, Q] @ w_bar[S[Q]]
        Y = AS.T @ ZQ  # [m, nb]: the pass over the surviving columns
        v = w_bar[S[Q]] + M @ (ZQ.T @ c)  # e changes by ZQ v
        e += ZQ @ v
        x += Y @ v
        d += ((Y @ M) * Y).sum(axis=1)
        if T is None:
            Kinv += ZQ @ M @ ZQ.T
        else:
            T += ZQ @ (M @ Y.T)
        alive[Q] = False
        n_alive -= nb
        if n_alive < _GREEDY_COMPACT * S.size and n_alive > k:
            keep = xp.flatnonzero(alive)
            S, AS, x, d = S[keep], AS[:, keep], x[keep], d[keep]
            if T is not None:
                T = T[:, keep]
            alive = xp.ones(S.size, dtype=bool)
    return xp.sort(S[alive]).astype(np.int64)


def exhaustive_support(prob: Any, k: int) -> np.ndarray | None:
    """The best support of size k by enumerating all of them, when p and C(p, k) are tiny.

    f*(S) = 0.5 ||b||^2 + 0.5 lam ||w_bar||^2 - 0.5 h_S^T G_S^{-1} h_S with G = A^T A + lam I
    (p x p, p <= 32) and h = A^T b + lam w_bar, so every support costs one k x k solve, done in
    batches. Returns None when the problem is too large to enumerate."""
    A, b, w_bar, lam = prob.A, prob.b, prob.w_bar, prob.ridge
    n, p = A.shape
    if p > _EXHAUSTIVE_MAX_P or math.comb(p, k) > _EXHAUSTIVE_MAX_SUPPORTS:
        return None
    G = lam * np.eye(p)
    h = lam * w_bar.copy()
    for i0 in range(0, n, _ROW_BLOCK):  # row blocks: A is never copied whole
        Ab = np.asarray(A[i0 : i0 + _ROW_BLOCK], dtype=np.float64)
        G += Ab.T @ Ab
        h += Ab.T @ b[i0 : i0 + _ROW_BLOCK]
    best_q, best = -np.inf, None
    combos = itertools.combinations(range(p), k)
    while True:
        batch = np.array(list(itertools.islice(combos, _EXHAUSTIVE_BATCH)), dtype=np.int64)
        if batch.size == 0:
            break
        Gs = G[batch[:, :, None], batch[:, None, :]]
        hs = h[batch][..., None]
        # pinv: with lam == 0 and k > n the k x k blocks are singular (h_S is in their range),
        # and with duplicate columns they are singular up to a tiny lam.
        x = np.linalg.pinv(Gs, hermitian=True) @ hs
        q = np.einsum("nk,nk->n", hs[..., 0], x[..., 0])
        j = int(np.argmax(q))
        if q[j] > best_q:
            best_q, best = float(q[j]), batch[j]
    return best


def swap_scores(
    G: np.ndarray,
    q: np.ndarray,
    s0: float,
    wv: np.ndarray,
    jn: np.ndarray,
    io: np.ndarray,
    lam: float,
) -> np.ndarray:
    """Change of f for every swap (io[a] leaves, jn[b] enters): [len(io), len(jn)].

    f changes by 0.5 lam (change of c^T K^{-1} c + w_bar_i^2 - w_bar_j^2). With
    U = [a_j, a_i], D = diag(1, -1), delta = (-w_bar_j, w_bar_i): K' = K + U D U^T,
    c' = c + U delta, and c'^T K'^{-1} c' = c'^T K^{-1} c' - m^T (D + Q)^{-1} m with
    Q = U^T K^{-1} U, m = U^T K^{-1} c' (Woodbury). (The CUDA backend fuses this in one kernel.)"""
    qj, qi = q[jn][None, :], q[io][:, None]
    gjj, gii = G[jn, jn][None, :], G[io, io][:, None]
    gij = G[io[:, None], jn[None, :]]
    dj, di = -wv[jn][None, :], wv[io][:, None]
    ckc = s0 + 2.0 * (dj * qj + di * qi) + dj * dj * gjj + di * di * gii + 2.0 * dj * di * gij
    m1 = qj + gjj * dj + gij * di
    m2 = qi + gij * dj + gii * di
    a11, a22, a12 = 1.0 + gjj, gii - 1.0, gij
    det = a11 * a22 - a12 * a12  # < 0: a_i^T K^{-1} a_i < 1 for a column of the support
    ok = det < 0.0  # rounding can break it for a degenerate pair: never chosen then
    xp = array_module(G)
    quad = (a22 * m1 * m1 - 2.0 * a12 * m1 * m2 + a11 * m2 * m2) / xp.where(ok, det, -1.0)
    delta = 0.5 * lam * (ckc - quad - s0 + wv[io][:, None] ** 2 - wv[jn][None, :] ** 2)
    return xp.where(ok & xp.isfinite(delta), delta, xp.inf)


def swap_search(
    kernels: Any,
    prob: Any,
    support: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    f_start: float,
    h: np.ndarray,
    *,
    max_swaps: int,
    n_candidates: int = 64,
    max_rounds: int = 100,
    Kinv: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, SwapStats]:
    """Swap local search from the exact optimum (w, r, f_start) on ``support``.

    Each round makes one gradient pass to screen ``n_candidates`` columns to enter (largest
    g_j^2 / (h_j + lam)) and to leave (smallest removal cost), scores every pair exactly, and
    applies improving swaps greedily (rescoring exactly after each) until none is left. The round
    is kept only if the exact objective, recomputed from A, went down; otherwise the search stops
    at the previous round. Returns (support, w, r, objective, stats), never worse than the start.
    ``Kinv`` may pass (lam I + A_S A_S^T)^{-1} for ``support`` when the caller already has it.
    """
    t0 = time.perf_counter()
    A, b, w_bar, ridge = prob.A, prob.b, prob.w_bar, prob.ridge
    xp = array_module(b)
    n, p = A.shape
    k = support.size
    stats = SwapStats()
    best = (support, w, r, f_start)
    if k >= p or max_swaps <= 0:
        stats.seconds = time.perf_counter() - t0
        return (*best, stats)
    lam = _scoring_ridge(prob, h)
    score = getattr(kernels, "swap_scores", swap_scores)
    S = support.copy()
    if Kinv is None or lam != prob.ridge:  # (the caller's K^-1 is read, never modified)
        Kinv = _support_kinv(kernels, A, S, lam)
    c = xp.empty(n)
    kernels.support_matvec(A, S, xp.ascontiguousarray(w_bar[S]), c)
    c = b - c
    g = xp.empty(p)
    in_S = xp.zeros(p, dtype=bool)
    m_in = int(min(n_candidates, p - k))  # columns screened to enter
    m_out = int(min(n_candidates, k))  # columns screened to leave
    tol = 1e-12 * max(abs(f_start), 1e-300)
    while stats.swaps < max_swaps and stats.rounds < max_rounds:
        stats.rounds += 1
        # Screen with the gradient at the current point (zero on S at an exact optimum).
        kernels.gradient(A, r, w, w_bar, ridge, g)
        in_S[:] = False
        in_S[S] = True
        outside = xp.flatnonzero(~in_S)
        jn_cols = outside[largest(kernels, g[outside] ** 2 / (h[outside] + lam), m_in)]
        cost = w[S] ** 2 * (h[S] + lam) - 2.0 * w[S] * g[S]
        io_cols = S[xp.argpartition(cost, m_out - 1)[:m_out]]
        cols = xp.concatenate([jn_cols, io_cols])
        V = _columns(A, cols)  # [n, m_in + m_out]
        Y = Kinv @ V
        G = xp.ascontiguousarray(V.T @ Y)
        e = Kinv @ c
        q = V.T @ e
        s0 = float(c @ e)
        wv = xp.ascontiguousarray(w_bar[cols])
        free_j = np.ones(m_in, dtype=bool)  # host bookkeeping: scalars only cross over
        free_i = np.ones(m_out, dtype=bool)
        entered: list[int] = []
        left: list[int] = []
        c_new = c.copy()
        # K^{-1} itself is not needed inside the round (Y, G and q carry everything); its rank-2
        # corrections are collected and applied once, as one product, if the round is kept.
        corr_z: list[np.ndarray] = []
        corr_c: list[np.ndarray] = []
        while stats.swaps + len(corr_z) < max_swaps:
            jf, iff = np.flatnonzero(free_j), m_in + np.flatnonzero(free_i)
            if jf.size == 0 or iff.size == 0:
                break
            delta = score(G, q, s0, wv, xp.asarray(jf), xp.asarray(iff), lam)
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
            free_i[iv - m_in] = False
        if not corr_z:
            break
        Z = xp.hstack(corr_z)  # [n, 2s]
        B = xp.zeros((Z.shape[1], Z.shape[1]))
        for t, Cinv in enumerate(corr_c):
            B[2 * t : 2 * t + 2, 2 * t : 2 * t + 2] = Cinv
        Kinv_new = Kinv - Z @ B @ Z.T
        in_S[cols[xp.asarray(left)]] = False
        in_S[cols[xp.asarray(entered)]] = True
        S_new = xp.flatnonzero(in_S).astype(np.int64)
        w_new, r_new, f_new = _state_on(kernels, prob, S_new, Kinv_new @ c_new)
        if not f_new < best[3]:
            break  # rounding drift or a bad round: keep the last state
        Kinv, c, S, w, r = Kinv_new, c_new, S_new, w_new, r_new
        best = (S, w, r, f_new)
        stats.swaps += len(corr_z)
    if stats.swaps:
        # The rank-2-updated inverse (and, with ridge == 0, its scoring shift) gives a point on
        # the final support, not necessarily the exact minimiser there: refit once.
        S = best[0]
        w_fit, r_fit, f_fit = refit(kernels, prob, S)
        if f_fit <= best[3]:
            best = (S, w_fit, r_fit, f_fit)
    stats.seconds = time.perf_counter() - t0
    return (*best, stats)


def _state_on(
    kernels: Any, prob: Any, S: np.ndarray, e: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """(w, r, exact objective) at x_S = w_bar_S + A_S^T e, the optimum on S when e = K^-1 c."""
    A, b, w_bar, ridge = prob.A, prob.b, prob.w_bar, prob.ridge
    xp = array_module(b)
    x = xp.empty(S.size)
    kernels.support_rmatvec(A, S, e, x)
    x += w_bar[S]
    w = xp.zeros(A.shape[1])
    w[S] = x
    r = xp.empty(A.shape[0])
    kernels.support_matvec(A, S, x, r)
    r -= b
    return w, r, objective_value(r, w, w_bar, ridge)
