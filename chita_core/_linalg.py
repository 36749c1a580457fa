"""Guarded dense linear algebra: the one factorisation path of every backend.

Every symmetric positive (semi-)definite system the solver meets, the support Gram
``A_S^T A_S + ridge I`` (|S| <= n) or the n-space matrix ``K = ridge I + A_S A_S^T`` (|S| > n), goes
through :func:`spd_solve` or :func:`spd_inverse`. Both are written against the array namespace
(NumPy on the host, CuPy on a GPU), so every backend takes the same decisions:

1. Cholesky (LAPACK / cuSOLVER). It is accepted when it succeeds and its diagonal bounds the
   condition number below ``COND_LIMIT`` (``kappa >= (max L_ii / min L_ii)^2``); above
   ``_REFINE_FROM`` the solve is followed by iterative refinement against the caller's exact
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

__all__ = ["COND_LIMIT", "least_squares", "spd_inverse", "spd_solve"]

#: Largest condition number for which a Cholesky factor is trusted (beyond it the normal
#: equations lose more than half of float64's digits).
COND_LIMIT = 1e10
#: Iterative-refinement steps after a Cholesky solve; stops earlier once corrections stall.
_REFINE_STEPS = 2
#: Refinement runs only above this condition estimate: below it one solve is already accurate to
#: about kappa * eps, and the objective (quadratic in the error) to rounding.
_REFINE_FROM = 1e6
_EPS = float(np.finfo(np.float64).eps)


def _cholesky(K: Any) -> tuple[Any | None, float]:
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
    return (L if cond <= COND_LIMIT else None), cond


def _eigh(K: Any) -> tuple[Any, Any]:
    xp = array_module(K)
    evals, V = xp.linalg.eigh(0.5 * (K + K.T))
    return evals, V


def spd_inverse(K: Any) -> Any:
    """A symmetric positive definite inverse of the symmetric PSD matrix K (n x n).

    Exact (to rounding) when K is well-conditioned; otherwise the eigenvalues are floored at
    ``lambda_max / COND_LIMIT``. Callers use it for scores (OBS saliencies, swap and greedy
    scores), never for a final objective."""
    xp = array_module(K)
    if _cholesky(K)[0] is not None:
        # Positive definite and well-conditioned: LU inversion is the fastest route offered.
        Kinv = xp.linalg.inv(K)
        return 0.5 * (Kinv + Kinv.T)
    evals, V = _eigh(K)
    top = float(evals.max()) if evals.size else 0.0
    floor = top / COND_LIMIT if top > 0.0 else 1.0
    return (V / xp.maximum(evals, floor)) @ V.T


def spd_solve(K: Any, rhs: Any, apply: Callable[[Any], Any] | None = None) -> tuple[Any, bool]:
    """Solves ``K y = rhs`` for a symmetric PSD K; returns ``(y, well_conditioned)``.

    ``apply(y)`` is the exact operator (``K y`` computed from the data, e.g. with mat-vecs over
    A, not from the rounded K); when given, the solution is refined against it. A singular K
    gets the minimum-norm least-squares solution."""
    xp = array_module(K)
    L, cond = _cholesky(K)
    if L is not None:
        y = xp.linalg.solve(K, rhs)
        if apply is not None and cond > _REFINE_FROM:
            prev = None
            for _ in range(_REFINE_STEPS):
                dy = xp.linalg.solve(K, rhs - apply(y))
                size = float(xp.abs(dy).max()) if dy.size else 0.0
                if prev is not None and not size < 0.5 * prev:
                    break  # stalled: rounding level reached
                y = y + dy
                prev = size
                if size <= 4 * _EPS * max(float(xp.abs(y).max()), 1e-300):
                    break
        return y, True
    evals, V = _eigh(K)
    top = float(evals.max()) if evals.size else 0.0
    cut = top * _EPS * max(K.shape[0], 1)
    inv = xp.where(evals > cut, 1.0 / xp.where(evals > cut, evals, 1.0), 0.0)
    y = V @ (inv * (V.T @ rhs))
    if apply is not None:
        # One refinement step inside the range of K (the pseudo-inverse keeps it there).
        y = y + V @ (inv * (V.T @ (rhs - apply(y))))
    return y, False


def least_squares(X: Any, c: Any, ridge: float) -> Any:
    """argmin_z ||X z - c||^2 + ridge ||z||^2 through an SVD of X itself (not X^T X).

    Accurate to rounding whatever the condition number of X; with ridge == 0 and a rank-deficient
    X, the minimum-norm solution. Costs O(n m^2) for X of shape (n, m)."""
    xp = array_module(X)
    U, s, Vt = xp.linalg.svd(X, full_matrices=False)
    top = float(s.max()) if s.size else 0.0
    if ridge > 0.0:
        scale = s / (s * s + ridge)
    else:
        keep = s > top * _EPS * max(X.shape)
        scale = xp.where(keep, 1.0 / xp.where(keep, s, 1.0), 0.0)
    return Vt.T @ (scale * (U.T @ c))
