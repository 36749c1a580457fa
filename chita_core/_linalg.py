"""Guarded dense linear algebra: the one factorisation path of every backend.

Every symmetric positive (semi-)definite system the solver meets, the support Gram
``A_S^T A_S + ridge I`` (|S| <= n) or the n-space matrix ``K = ridge I + A_S A_S^T`` (|S| > n), goes
through :func:`spd_solve` or :func:`spd_inverse`. Both are written against the array namespace
(NumPy on the host, CuPy on a GPU), so every backend takes the same decisions:

1. Cholesky (LAPACK / cuSOLVER). It is accepted when it succeeds and its diagonal bounds the
   condition number below ``COND_LIMIT`` (``kappa >= (max L_ii / min L_ii)^2``); above
   ``REFINE_FROM`` the solve is followed by iterative refinement against the caller's exact
   operator, so a well-conditioned system costs one factorisation and nothing more.
2. Otherwise (not positive definite in floating point, tiny ridges, column scales spread over many
   orders of magnitude) a symmetric eigendecomposition: solves use the pseudo-inverse (eigenvalues
   below ``n eps lambda_max`` dropped, the minimum-norm solution), inverses floor the eigenvalues at
   ``lambda_max / COND_LIMIT`` (a positive definite stand-in, used only for scoring).

No path raises on a symmetric input with finite entries; a least-squares solve that needs more
accuracy than the normal equations can give (see :func:`least_squares`) uses an SVD of the
columns themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._interop import array_module

__all__ = ["COND_LIMIT", "REFINE_FROM", "least_squares", "spd_inverse", "spd_solve"]

#: Largest condition number for which a Cholesky factor is trusted (beyond it the normal
#: equations lose more than half of float64's digits).
COND_LIMIT = 1e10
#: Iterative-refinement steps after a Cholesky solve; stops earlier once corrections stall.
_REFINE_STEPS = 2
#: Callers whose exact operator costs passes over A refine only above this condition estimate:
#: below it one solve is already accurate to about kappa * eps, the objective to rounding.
REFINE_FROM = 1e6
_EPS = float(np.finfo(np.float64).eps)


def _cholesky(K: Any, cond_limit: float = COND_LIMIT) -> tuple[Any | None, float]:
    """(lower Cholesky factor of K, condition estimate), the factor None when the factorisation
    fails or K is too ill-conditioned."""
    xp = array_module(K)
    if K.shape[0] == 0:
        return K, 1.0
    try:
        L = xp.linalg.cholesky(K)
    except np.linalg.LinAlgError:  # NumPy; CuPy returns NaN instead of raising
        return None, np.inf
    d = xp.diagonal(L)
    lo, hi = float(d.min()), float(d.max())
    if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0.0):
        return None, np.inf
    cond = (hi / lo) ** 2
    return (L if cond <= cond_limit else None), cond


def _eigh(K: Any) -> tuple[Any, Any]:
    xp = array_module(K)
    evals, V = xp.linalg.eigh(0.5 * (K + K.T))
    return evals, V


def _power_of_two_scale(K: Any) -> float:
    """2^e near the largest diagonal entry of K: dividing by it is exact and keeps the
    factorisation away from overflow and underflow whatever the scale of the problem."""
    top = float(abs(array_module(K).diagonal(K)).max()) if K.shape[0] else 0.0
    if not (top > 0.0 and np.isfinite(top)):
        return 1.0
    return float(np.ldexp(1.0, int(np.frexp(top)[1])))


def spd_inverse(K: Any) -> Any:
    """A symmetric positive definite inverse of the symmetric PSD matrix K (n x n).

    Exact (to rounding) when K is well-conditioned; otherwise the eigenvalues are floored at
    ``lambda_max / COND_LIMIT``. Callers use it for scores (OBS saliencies, swap and greedy
    scores), never for a final objective."""
    xp = array_module(K)
    scale = _power_of_two_scale(K)
    K = K / scale
    if _cholesky(K)[0] is not None:
        # Positive definite and well-conditioned: LU inversion is the fastest route offered.
        Kinv = xp.linalg.inv(K)
        return (0.5 / scale) * (Kinv + Kinv.T)
    evals, V = _eigh(K)
    top = float(evals.max()) if evals.size else 0.0
    floor = top / COND_LIMIT if top > 0.0 else 1.0
    return ((V / xp.maximum(evals, floor)) @ V.T) / scale


def _jacobi(d: Any) -> Any:
    """Powers of two near 1 / sqrt(d) (1 where d is not positive): a diagonal scaling that is
    exact in floating point and removes column / row scales from the conditioning."""
    xp = array_module(d)
    ok = d > 0.0
    e = xp.where(ok, xp.round(-0.5 * xp.log2(xp.where(ok, d, 1.0))), 0.0)
    return xp.ldexp(xp.ones_like(d), e.astype(np.int32))


def spd_solve(
    K: Any,
    rhs: Any,
    apply: Callable[[Any], Any] | None = None,
    *,
    refine_from: float = 0.0,
    cond_limit: float = COND_LIMIT,
) -> tuple[Any, bool]:
    """Solves ``K y = rhs`` for a symmetric PSD K; returns ``(y, well_conditioned)``.

    K is equilibrated first (D K D with D a power-of-two Jacobi scaling, exact), so columns of
    very different scales do not count as ill-conditioning. ``apply(y)`` is the exact operator
    (``K y`` computed from the data, e.g. with mat-vecs over A, not from the rounded K); when
    given, the solution is refined against it. A singular K gets the minimum-norm least-squares
    solution (of the equilibrated system). Refinement runs when the condition estimate exceeds
    ``refine_from`` (0: always; callers with a costly ``apply`` pass ``REFINE_FROM``). Above
    ``cond_limit`` it reports ``well_conditioned=False`` (and uses the eigendecomposition), so a
    caller holding the columns themselves can switch to :func:`least_squares`."""
    xp = array_module(K)
    D = _jacobi(xp.diagonal(K).copy())
    Ks = (K * D[:, None]) * D[None, :]

    def solve_scaled(v: Any) -> Any:
        return D * xp.linalg.solve(Ks, D * v)

    L, cond = _cholesky(Ks, cond_limit)
    if L is not None:
        y = solve_scaled(rhs)
        if apply is not None and cond > refine_from:
            prev = None
            for _ in range(_REFINE_STEPS):
                dy = solve_scaled(rhs - apply(y))
                size = float(xp.abs(dy / D).max()) if dy.size else 0.0
                if prev is not None and not size < 0.5 * prev:
                    break  # stalled: rounding level reached
                y = y + dy
                prev = size
                if size <= 4 * _EPS * max(float(xp.abs(y / D).max()), 1e-300):
                    break
        return y, True
    evals, V = _eigh(Ks)
    top = float(evals.max()) if evals.size else 0.0
    cut = top * _EPS * max(K.shape[0], 1)
    inv = xp.where(evals > cut, 1.0 / xp.where(evals > cut, evals, 1.0), 0.0)

    def pinv_scaled(v: Any) -> Any:
        return D * (V @ (inv * (V.T @ (D * v))))

    y = pinv_scaled(rhs)
    if apply is not None:
        # One refinement step inside the range of K (the pseudo-inverse keeps it there).
        y = y + pinv_scaled(rhs - apply(y))
    return y, False


def least_squares(X: Any, c: Any, ridge: float) -> Any:
    """argmin_z ||X z - c||^2 + ridge ||z||^2 through an SVD (never X^T X).

    The columns are equilibrated first (power-of-two scaling, exact); with ridge > 0 the SVD is
    of the augmented matrix [X; sqrt(ridge) I] (so use it for X with m <= n columns, or with
    ridge == 0). Accurate to rounding whatever the condition number; with ridge == 0 and a
    rank-deficient X, the minimum-norm solution of the equilibrated system. O(n m^2)."""
    xp = array_module(X)
    m = X.shape[1]
    D = _jacobi((X * X).sum(axis=0) + ridge)
    M = X * D[None, :]
    rhs = c
    if ridge > 0.0:
        M = xp.concatenate([M, (np.sqrt(ridge) * D)[None, :] * xp.eye(m)], axis=0)
        rhs = xp.concatenate([c, xp.zeros(m)])
    U, s, Vt = xp.linalg.svd(M, full_matrices=False)
    top = float(s.max()) if s.size else 0.0
    keep = s > top * _EPS * max(M.shape)
    inv = xp.where(keep, 1.0 / xp.where(keep, s, 1.0), 0.0)

    def solve(v: Any) -> Any:
        return Vt.T @ (inv * (U.T @ v))

    def value(u: Any) -> float:
        t = M @ u - rhs
        return float(t @ t)

    u = solve(rhs)
    f = value(u)
    # The singular vectors of small singular values carry errors of about eps s_max / s_i;
    # refinement against M itself removes them. A step is kept only if it lowers the objective.
    for _ in range(_REFINE_STEPS):
        u2 = u + solve(rhs - M @ u)
        f2 = value(u2)
        if not f2 < f:
            break
        u, f = u2, f2
    return D * u
