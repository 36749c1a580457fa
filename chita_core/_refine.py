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

__all__ = [
    "SwapStats",
    "exhaustive_support",
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
# With ridge == 0 the n-space form needs a positive shift; this one is relative to the mean
# curvature and only used for scoring and OBS saliencies; objectives are always exact.
_SCORE_SHIFT = 1e-6


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

    With ``keep_inverse`` it also returns K^{-1} = (ridge I + A_S A_S^T)^{-1} when it was the
    cheaper route (ridge > 0 and |S| > n: the push-through form, same cost as backsolve), else
    None; swap search then starts from it instead of forming the same Gram again."""
    A, b, w_bar, ridge = prob.A, prob.b, prob.w_bar, prob.ridge
    n = A.shape[0]
    if keep_inverse and ridge > 0 and support.size > n:
        Kinv = _support_kinv(kernels, A, support, ridge)
        c = np.empty(n)
        kernels.support_matvec(A, support, np.ascontiguousarray(w_bar[support]), c)
        w, r, f = _state_on(kernels, prob, support, Kinv @ (b - c))
        return w, r, f, Kinv
    values = np.empty(support.size)
    kernels.backsolve(A, b, support, np.ascontiguousarray(w_bar[support]), ridge, values)
    w = np.zeros(A.shape[1])
    w[support] = values
    r = np.empty(A.shape[0])
    kernels.support_matvec(A, support, values, r)
    r -= b
    f = objective_value(r, w, w_bar, ridge)
    return (w, r, f, None) if keep_inverse else (w, r, f)


def _scoring_ridge(prob: Any, h: np.ndarray) -> float:
    if prob.ridge > 0:
        return prob.ridge
    scale = float(h.mean()) if h.size else 0.0
    return _SCORE_SHIFT * scale if scale > 0 else _SCORE_SHIFT


def _inverse_spd(K: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite n x n matrix through its Cholesky factor."""
    L = np.linalg.cholesky(K)
    Linv = np.linalg.solve(L, np.eye(K.shape[0]))
    return Linv.T @ Linv


def _columns(A: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """A[:, idx] as a float64 (n, len(idx)) array: a small gathered workspace, not a copy of A."""
    return np.asarray(A[:, idx], dtype=np.float64)


def _support_kinv(kernels: Any, A: np.ndarray, idx: np.ndarray, lam: float) -> np.ndarray:
    n = A.shape[0]
    K = np.empty((n, n))
    kernels.support_gram(A, idx, K)
    K[np.diag_indices(n)] += lam
    return _inverse_spd(K)


def _hinv_diag(A: np.ndarray, idx: np.ndarray, Kinv: np.ndarray, lam: float) -> np.ndarray:
    """[H_S^{-1}]_qq for q in idx, H_S = A_S^T A_S + lam I, via Woodbury: (1 - a^T K^-1 a) / lam."""
    out = np.empty(idx.size)
    for s0 in range(0, idx.size, _BLOCK_COLS):
        V = _columns(A, idx[s0 : s0 + _BLOCK_COLS])
        out[s0 : s0 + V.shape[1]] = 1.0 - np.einsum("ij,ij->j", V, Kinv @ V)
    # a^T K^{-1} a < 1 in exact arithmetic; rounding must not make a diagonal negative.
    return np.maximum(out, np.finfo(float).eps) / lam


def obs_saliency(kernels: Any, prob: Any, h: np.ndarray) -> np.ndarray:
    """OBS saliency w_q^2 / [H^{-1}]_qq of every weight (H = A^T A + ridge I), O(n^2 p).

    w is the unconstrained minimiser of the objective (w_bar itself when b = A w_bar, the
    pruning case), obtained from the same n x n factor."""
    A, b, w_bar = prob.A, prob.b, prob.w_bar
    n, p = A.shape
    lam = _scoring_ridge(prob, h)
    every = np.arange(p, dtype=np.int64)
    Kinv = _support_kinv(kernels, A, every, lam)
    c = np.empty(n)
    kernels.support_matvec(A, every, w_bar, c)
    c = b - c
    w = np.empty(p)
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
    n, p = A.shape
    lam = _scoring_ridge(prob, h)
    support = np.arange(p, dtype=np.int64)
    oneshot = None
    for step in range(1, steps + 1):
        target = p - ((p - k) * step) // steps
        if target >= support.size:
            continue
        Kinv = _support_kinv(kernels, A, support, lam)
        c = np.empty(n)
        kernels.support_matvec(A, support, np.ascontiguousarray(w_bar[support]), c)
        c = b - c
        x = np.empty(support.size)
        kernels.support_rmatvec(A, support, Kinv @ c, x)
        x += w_bar[support]
        saliency = x * x / _hinv_diag(A, support, Kinv, lam)
        if oneshot is None and support.size == p:
            oneshot = np.sort(np.argpartition(-saliency, k - 1)[:k]).astype(np.int64)
        keep = np.argpartition(-saliency, target - 1)[:target]
        support = np.sort(support[keep])
    if oneshot is None:  # k == p: nothing to prune
        oneshot = support
    return support, oneshot


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
        # pinv: with lam == 0 and k > n the k x k blocks are singular (h_S is in their range).
        x = np.linalg.solve(Gs, hs) if lam > 0 else np.linalg.pinv(Gs, hermitian=True) @ hs
        q = np.einsum("nk,nk->n", hs[..., 0], x[..., 0])
        j = int(np.argmax(q))
        if q[j] > best_q:
            best_q, best = float(q[j]), batch[j]
    return best


def _pair_scores(
    G: np.ndarray, q: np.ndarray, s0: float, wv: np.ndarray, jn: np.ndarray, io: np.ndarray
) -> np.ndarray:
    """Change of c^T K^{-1} c for every pair (io[a] leaves, jn[b] enters): [len(io), len(jn)].

    With U = [a_j, a_i], D = diag(1, -1), delta = (-w_bar_j, w_bar_i): K' = K + U D U^T,
    c' = c + U delta, and c'^T K'^{-1} c' = c'^T K^{-1} c' - m^T (D + Q)^{-1} m with
    Q = U^T K^{-1} U, m = U^T K^{-1} c' (Woodbury)."""
    qj, qi = q[jn][None, :], q[io][:, None]
    gjj, gii = G[jn, jn][None, :], G[io, io][:, None]
    gij = G[np.ix_(io, jn)]
    dj, di = -wv[jn][None, :], wv[io][:, None]
    ckc = s0 + 2.0 * (dj * qj + di * qi) + dj * dj * gjj + di * di * gii + 2.0 * dj * di * gij
    m1 = qj + gjj * dj + gij * di
    m2 = qi + gij * dj + gii * di
    a11, a22, a12 = 1.0 + gjj, gii - 1.0, gij
    det = a11 * a22 - a12 * a12  # < 0: a_i^T K^{-1} a_i < 1 for a column of the support
    quad = (a22 * m1 * m1 - 2.0 * a12 * m1 * m2 + a11 * m2 * m2) / det
    return ckc - quad - s0


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
    n, p = A.shape
    k = support.size
    stats = SwapStats()
    best = (support, w, r, f_start)
    if k >= p or max_swaps <= 0:
        stats.seconds = time.perf_counter() - t0
        return (*best, stats)
    lam = _scoring_ridge(prob, h)
    S = support.copy()
    if Kinv is None or lam != prob.ridge:  # (the caller's K^-1 is read, never modified)
        Kinv = _support_kinv(kernels, A, S, lam)
    c = np.empty(n)
    kernels.support_matvec(A, S, np.ascontiguousarray(w_bar[S]), c)
    c = b - c
    g = np.empty(p)
    in_S = np.zeros(p, dtype=bool)
    m_in = int(min(n_candidates, p - k))  # columns screened to enter
    m_out = int(min(n_candidates, k))  # columns screened to leave
    tol = 1e-12 * max(abs(f_start), 1e-300)
    while stats.swaps < max_swaps and stats.rounds < max_rounds:
        stats.rounds += 1
        # Screen with the gradient at the current point (zero on S at an exact optimum).
        kernels.gradient(A, r, w, w_bar, ridge, g)
        in_S[:] = False
        in_S[S] = True
        outside = np.flatnonzero(~in_S)
        gain = g[outside] ** 2 / (h[outside] + lam)
        jn_cols = outside[np.argpartition(-gain, m_in - 1)[:m_in]]
        cost = w[S] ** 2 * (h[S] + lam) - 2.0 * w[S] * g[S]
        io_cols = S[np.argpartition(cost, m_out - 1)[:m_out]]
        cols = np.concatenate([jn_cols, io_cols])
        V = _columns(A, cols)  # [n, m_in + m_out]
        Y = Kinv @ V
        G = V.T @ Y
        e = Kinv @ c
        q = V.T @ e
        s0 = float(c @ e)
        wv = w_bar[cols]
        jn = np.arange(m_in)
        io = np.arange(m_in, m_in + m_out)
        free_j = np.ones(m_in, dtype=bool)
        free_i = np.ones(m_out, dtype=bool)
        new_S = set(S.tolist())
        c_new = c.copy()
        # K^{-1} itself is not needed inside the round (Y, G and q carry everything); its rank-2
        # corrections are collected and applied once, as one product, if the round is kept.
        corr_z: list[np.ndarray] = []
        corr_c: list[np.ndarray] = []
        while stats.swaps + len(corr_z) < max_swaps:
            jf, iff = jn[free_j], io[free_i]
            if jf.size == 0 or iff.size == 0:
                break
            delta = (
                0.5
                * lam
                * (
                    _pair_scores(G, q, s0, wv, jf, iff)
                    + (wv[iff] ** 2)[:, None]
                    - (wv[jf] ** 2)[None, :]
                )
            )
            a, bb = np.unravel_index(np.argmin(delta), delta.shape)
            if not delta[a, bb] < -tol:
                break
            jv, iv = int(jf[bb]), int(iff[a])
            u = [jv, iv]
            d = np.array([-wv[jv], wv[iv]])
            Q2 = G[np.ix_(u, u)]
            mvec = q[u] + Q2 @ d
            Cinv = np.linalg.inv(np.diag([1.0, -1.0]) + Q2)
            s0 += 2.0 * float(d @ q[u]) + float(d @ Q2 @ d) - float(mvec @ Cinv @ mvec)
            Gu = G[:, u].copy()
            Yu = Y[:, u].copy()
            q += Gu @ (d - Cinv @ mvec)
            G -= Gu @ Cinv @ Gu.T
            Y -= Yu @ (Cinv @ Gu.T)
            corr_z.append(Yu)
            corr_c.append(Cinv)
            c_new += V[:, u] @ d
            new_S.discard(int(cols[iv]))
            new_S.add(int(cols[jv]))
            free_j[jv] = False
            free_i[iv - m_in] = False
        if not corr_z:
            break
        Z = np.hstack(corr_z)  # [n, 2s]
        B = np.zeros((Z.shape[1], Z.shape[1]))
        for t, Cinv in enumerate(corr_c):
            B[2 * t : 2 * t + 2, 2 * t : 2 * t + 2] = Cinv
        Kinv_new = Kinv - Z @ B @ Z.T
        S_new = np.array(sorted(new_S), dtype=np.int64)
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
    x = np.empty(S.size)
    kernels.support_rmatvec(A, S, e, x)
    x += w_bar[S]
    w = np.zeros(A.shape[1])
    w[S] = x
    r = np.empty(A.shape[0])
    kernels.support_matvec(A, S, x, r)
    r -= b
    return w, r, objective_value(r, w, w_bar, ridge)
