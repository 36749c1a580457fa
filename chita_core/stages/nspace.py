"""n-space algebra shared by the stages: exact refits, inverses of K = lam I + A_S A_S^T, OBS
diagonals (docs/design.md, section 3).

On a support S the objective's minimum is, with c = b - A_S w_bar_S (push-through identity),

    f*(S) = 0.5 lam c^T K^{-1} c + 0.5 lam ||w_bar_{not S}||^2,   K = lam I + A_S A_S^T (n x n),

so refits with |S| > n, OBS saliencies and swap scores live in n-space; the |S| x |S| (let
alone p x p) matrix is never formed. Gathers and Grams are backend ops (BLAS / cuBLAS); the
small dense algebra is NumPy/CuPy LAPACK through the guarded solves of ``_linalg``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from .._linalg import REFINE_FROM, SPDSystem, least_squares, spd_inverse

__all__ = [
    "columns",
    "hinv_diag",
    "kinv_quad",
    "largest",
    "scoring_ridge",
    "shifted_inverse",
    "support_gram",
    "support_kinv",
    "support_values",
]

# Columns per block when a pass needs A's columns in float64 (bounded memory).
BLOCK_COLS = 2048
# Refits solve the normal (or n-space) equations only up to this condition number after
# equilibration, where they stay accurate to rounding with refinement; beyond, an SVD.
_NORMAL_EQ_COND = 1e6
# An ill-conditioned refit with |S| > n falls back to an SVD of the gathered A_S (8 n |S| bytes)
# up to this size; beyond it the n-space pseudo-inverse (exact for ridge well above rounding).
_SVD_BYTES = 1 << 30
# Refinement of a carried inverse (refined_values): at most this many steps, accepted when the
# n-space residual falls below this fraction of ||c||.
REFINE_STEPS = 3
_REFINE_TOL = 1e-11
# With ridge == 0 the n-space form needs a positive shift; this one is relative to the mean
# curvature and only used for scoring and OBS saliencies; objectives are always exact.
_SCORE_SHIFT = 1e-6


def columns(prob: Any, idx: Any) -> Any:
    """A[:, idx] as a float64 (n, len(idx)) workspace (never a copy of A)."""
    return prob.kernels.gather_columns(prob.A, idx)


def support_gram(prob: Any, idx: Any) -> Any:
    """A_S A_S^T (n x n float64), the backend's BLAS Gram over column panels."""
    K = prob.xp.empty((prob.n, prob.n))
    prob.kernels.support_gram(prob.A, idx, K)
    return K


def shifted_inverse(K: Any, lam: float) -> Any:
    """(K + lam I)^{-1}, K left unchanged."""
    xp = _xp(K)
    return spd_inverse(K + lam * xp.eye(K.shape[0]))


def support_kinv(prob: Any, idx: Any, lam: float) -> Any:
    return shifted_inverse(support_gram(prob, idx), lam)


def largest(prob: Any, v: Any, k: int) -> Any:
    """Sorted indices of the k largest entries of a non-negative vector (a selection, O(p))."""
    out = prob.xp.empty(k, dtype=np.int64)
    prob.kernels.topk(prob.xp.ascontiguousarray(v), k, out)
    return out


def scoring_ridge(prob: Any, scale: float | None = None) -> float:
    """The ridge of the n-space scores: the problem's, but at least 1e-6 times the mean
    curvature, so that tiny ridges score like ridge -> 0 instead of through the cancellation in
    (1 - a^T K^-1 a) / ridge. ``scale`` may pass the mean curvature (over column shards: of
    the global problem); by default it is ``prob.h``'s."""
    if scale is None:
        h = prob.h
        scale = float(h.mean()) if h.size else 0.0
    shift = _SCORE_SHIFT * scale if scale > 0 else 0.0
    if not shift > 0.0:  # all-zero (or underflowing) columns
        shift = prob.ridge if prob.ridge > 0 else _SCORE_SHIFT
    return max(prob.ridge, shift)


def kinv_quad(V: Any, Kinv: Any) -> Any:
    """a^T K^-1 a for every column a of V (in memory; products in V's and K^-1's precision,
    returned as float64), BLOCK_COLS columns at a time. Computed as rows of V^T (V^T K^-1)
    (K^-1 is symmetric): both factors of the elementwise product are then row-major, which
    took 0.10 s against 0.13 s for the column-wise form at n = 1000, 9,858 float32 columns."""
    xp = _xp(V)
    out = xp.empty(V.shape[1])
    for s0 in range(0, V.shape[1], BLOCK_COLS):
        Bt = V[:, s0 : s0 + BLOCK_COLS].T
        out[s0 : s0 + Bt.shape[0]] = xp.einsum("ij,ij->i", Bt, Bt @ Kinv)
    return out


def hinv_diag(prob: Any, idx: Any, Kinv: Any, lam: float) -> Any:
    """[H_S^{-1}]_qq for q in idx, H_S = A_S^T A_S + lam I, via Woodbury: (1 - a^T K^-1 a) / lam."""
    xp = prob.xp
    out = xp.empty(idx.size)
    for s0 in range(0, idx.size, BLOCK_COLS):
        block = columns(prob, idx[s0 : s0 + BLOCK_COLS])
        out[s0 : s0 + BLOCK_COLS] = 1.0 - kinv_quad(block, Kinv)
    # a^T K^{-1} a < 1 in exact arithmetic; rounding must not make a diagonal negative.
    return xp.maximum(out, np.finfo(float).eps) / lam


def support_values(
    prob: Any, support: Any, *, keep_inverse: bool = False, gram: Any = None
) -> tuple[Any, Any, Any]:
    """x_S minimising the objective with nonzeros on ``support`` only, accurate to rounding.

    In z = x - w_bar_S it is the ridge regression min ||A_S z - c||^2 + ridge ||z||^2 with
    c = b - A_S w_bar_S. With |S| <= n: the m x m normal equations (BLAS Gram, guarded Cholesky,
    iterative refinement against A_S itself), or an SVD of A_S when they are ill-conditioned.
    With |S| > n: z = A_S^T y, (ridge I + A_S A_S^T) y = c, an n x n system (BLAS Gram over
    column panels) refined against mat-vecs over A_S; the m x m matrix is never formed.
    Returns (x_S, the factored K or None, A_S A_S^T or None); the last two only with
    ``keep_inverse``, ridge > 0 and |S| > n (a later stage starts from them instead of forming
    them again: ``system.inverse()`` is K^{-1}, formed only when a stage asks for it). ``gram``
    may pass A_S A_S^T of the same support (it does not depend on the ridge: a ridge path on one
    support forms it once); it is read, never written."""
    A, b, ridge, kernels = prob.A, prob.b, prob.ridge, prob.kernels
    xp = prob.xp
    n = prob.n
    m = support.size
    wb = xp.ascontiguousarray(prob.w_bar[support])
    c = xp.empty(n)
    kernels.support_matvec(A, support, wb, c)
    c = b - c
    factored = None
    if m <= n:
        X = columns(prob, support)  # [n, m] float64, m <= n: at most n^2 numbers
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
        if gram is not None:
            K = gram.copy()
        else:
            K = support_gram(prob, support)
            if keep_inverse and ridge > 0:
                gram = K.copy()
        K[xp.diag_indices(n)] += ridge

        def apply(y: Any) -> Any:
            t = xp.empty(m)
            kernels.support_rmatvec(A, support, xp.ascontiguousarray(y), t)
            out = xp.empty(n)
            kernels.support_matvec(A, support, t, out)
            return out + ridge * y

        system = SPDSystem(K, cond_limit=_NORMAL_EQ_COND)
        if keep_inverse and ridge > 0:
            factored = system
        svd_bytes = 8 * m * (n if ridge == 0 else n + m)  # least_squares' matrix
        if not system.good and svd_bytes <= _SVD_BYTES:
            # Ill-conditioned beyond what n-space resolves accurately: SVD of A_S itself.
            z = least_squares(columns(prob, support), c, ridge)
        else:
            # apply costs 2 passes over A_S: refinement only where the conditioning asks.
            y = system.solve(c, apply, refine_from=REFINE_FROM)
            z = xp.empty(m)
            kernels.support_rmatvec(A, support, xp.ascontiguousarray(y), z)
    return z + wb, factored, gram


def refined_values(
    prob: Any, support: Any, Kinv: Any, *, product: Any = None, size: int | None = None
) -> Any:
    """x_S on ``support`` from an approximate inverse of the problem's own n-space matrix
    K = ridge I + A_S A_S^T (|S| > n, ridge > 0), by iterative refinement against the exact
    operator (two support passes per step): y <- y + K^-1 (c - K y). Returns None when the
    residual does not fall below 1e-11 ||c|| within REFINE_STEPS steps (the inverse was not
    close enough); the caller then solves from scratch. Over column shards ``prob`` is the
    rank's block, ``support`` its part of S, ``product(idx, x)`` the global A[:, idx] x (default
    the kernels' support mat-vec) and ``size`` the global |S|."""
    A, kernels, xp, ridge = prob.A, prob.kernels, prob.xp, prob.ridge
    m = support.size if size is None else size
    if not (ridge > 0 and m > prob.n and Kinv is not None):
        return None
    if product is None:
        product = partial(_matvec, prob)
    wb = xp.ascontiguousarray(prob.w_bar[support])
    c = prob.b - product(support, wb)
    scale = float(xp.linalg.norm(c))
    y = Kinv @ c
    t = xp.empty(support.size)
    for _ in range(REFINE_STEPS + 1):
        if support.size:
            kernels.support_rmatvec(A, support, y, t)
        res = c - product(support, t) - ridge * y
        if float(xp.linalg.norm(res)) <= _REFINE_TOL * scale:
            return wb + t  # t = A_S^T y of the accepted y
        y += Kinv @ res
    return None


def _matvec(prob: Any, idx: Any, x: Any) -> Any:
    """A[:, idx] x (n,), the kernels' support mat-vec."""
    out = prob.xp.empty(prob.n)
    prob.kernels.support_matvec(prob.A, idx, x, out)
    return out


def _xp(x: Any) -> Any:
    from .._interop import array_module

    return array_module(x)
