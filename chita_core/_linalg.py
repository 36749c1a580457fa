"""Guarded dense linear algebra: the one factorisation path of every backend.

Every symmetric positive (semi-)definite system the solver meets, the support Gram
``A_S^T A_S + ridge I`` (|S| <= n) or the n-space matrix ``K = ridge I + A_S A_S^T`` (|S| > n), goes
through :class:`SPDSystem` (or :func:`spd_inverse`), written against the array namespace
(NumPy on the host, CuPy on a GPU), so every backend takes the same decisions:

0. Power-of-two Jacobi equilibration (exact), so column scales spread over many orders of
   magnitude are not mistaken for ill-conditioning.
1. Cholesky (LAPACK / cuSOLVER). It is accepted when it succeeds and its diagonal bounds the
   condition number below a limit (``kappa >= (max L_ii / min L_ii)^2``); solves are then
   followed by iterative refinement against the caller's exact operator where asked.
2. Otherwise (not positive definite in floating point, tiny ridges, column scales spread over many
   orders of magnitude) a symmetric eigendecomposition: solves use the pseudo-inverse (eigenvalues
   below ``n eps lambda_max`` dropped, the minimum-norm solution), inverses floor the eigenvalues at
   ``lambda_max / COND_LIMIT`` (a positive definite stand-in, used only for scoring).

No path raises on a symmetric input with finite entries; a least-squares solve that needs more
accuracy than the normal equations can give (see :func:`least_squares`) uses an SVD of the
columns themselves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg import lapack

from ._interop import array_module

__all__ = [
    "COND_LIMIT",
    "REFINE_FROM",
    "SPDSystem",
    "least_squares",
    "serial_lapack",
    "spd_inverse",
]

#: Largest condition number for which a Cholesky factor is trusted (beyond it the normal
#: equations lose more than half of float64's digits).
COND_LIMIT = 1e10
#: Iterative-refinement steps after a Cholesky solve; stops earlier once corrections stall.
_REFINE_STEPS = 2
#: Callers whose exact operator costs passes over A refine only above this condition estimate:
#: below it one solve is already accurate to about kappa * eps, the objective to rounding.
REFINE_FROM = 1e6
_EPS = float(np.finfo(np.float64).eps)


def _jacobi(d: Any) -> Any:
    """Powers of two near 1 / sqrt(d) (1 where d is not positive): a diagonal scaling that is
    exact in floating point and removes column / row scales from the conditioning."""
    xp = array_module(d)
    ok = d > 0.0
    e = xp.where(ok, xp.round(-0.5 * xp.log2(xp.where(ok, d, 1.0))), 0.0)
    return xp.ldexp(xp.ones_like(d), e.astype(np.int32))


class _SerialSciPyBLAS:
    """Runs SciPy's LAPACK calls on one thread where SciPy ships its own BLAS next to NumPy's
    (the PyPI wheels: two OpenBLAS builds, each with its own thread pool). Their threads spin
    after each call and starve the other library's: SciPy's potri on 2 threads between NumPy's
    GEMMs made greedy OBS 3x slower on the digits gradients (2.3 s against 0.65 s). Where both
    share one BLAS, or threadpoolctl is missing, nothing changes.

    A reentrant context: the outermost entry sets SciPy's BLAS to one thread and the matching
    exit restores the user's setting (raising the count again wakes the pool, about 10 ms of
    spinning, so a solve enters once around all its work rather than per call)."""

    def __init__(self) -> None:
        self._controller: Any = None
        self._looked = False
        self._depth = 0
        self._prev = 0
        self._lock = threading.Lock()

    @staticmethod
    def _find() -> Any:
        import scipy

        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            return None
        root = os.path.dirname(os.path.abspath(scipy.__file__))
        own = (root + os.sep, root + ".libs" + os.sep)
        libs = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        mine = [c for c in libs if os.path.abspath(c.filepath).startswith(own)]
        return mine[0] if mine and len(libs) > len(mine) else None

    def __enter__(self) -> None:
        with self._lock:
            if not self._looked:
                self._controller, self._looked = self._find(), True
            self._depth += 1
            if self._depth == 1 and self._controller is not None:
                self._prev = self._controller.num_threads
                if self._prev != 1:
                    self._controller.set_num_threads(1)

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._controller is not None and self._prev != 1:
                self._controller.set_num_threads(self._prev)


#: ``with serial_lapack:`` around a solve: SciPy's LAPACK runs on one thread inside it.
serial_lapack = _SerialSciPyBLAS()


def _cholesky(Ks: Any) -> Any:
    """Lower Cholesky factor of the symmetric matrix Ks, or None where it is not positive
    definite in floating point (LAPACK potrf on the host, cuSOLVER through CuPy on a GPU)."""
    xp = array_module(Ks)
    if Ks.shape[0] == 0:
        return Ks.copy()
    if xp is np:
        potrf = lapack.get_lapack_funcs("potrf", (Ks,))
        with serial_lapack:
            L, info = potrf(Ks, lower=1, clean=1, overwrite_a=0)
        return L if info == 0 else None
    L = xp.linalg.cholesky(Ks)  # CuPy returns NaN instead of raising
    return L


def _condition(L: Any) -> float:
    """Cholesky's condition estimate (max L_ii / min L_ii)^2 (inf without a factor)."""
    if L is None:
        return np.inf
    if L.shape[0] == 0:
        return 1.0
    d = L.diagonal()
    lo, hi = float(d.min()), float(d.max())
    if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0.0):
        return np.inf
    return (hi / lo) ** 2


def _cholesky_solve(L: Any, v: Any) -> Any:
    """(L L^T)^{-1} v: two triangular solves with the factor, O(n^2) per right-hand side
    (LAPACK potrs on the host, cuBLAS trsm through CuPy on a GPU)."""
    xp = array_module(L)
    if L.shape[0] == 0:
        return xp.zeros_like(v, dtype=np.float64)
    if xp is np:
        potrs = lapack.get_lapack_funcs("potrs", (L,))
        with serial_lapack:
            out, info = potrs(L, v, lower=1)
        if info != 0:  # (only on an illegal argument: the factor exists)
            raise np.linalg.LinAlgError(f"potrs: illegal argument {-info}")
        return out
    from cupyx.scipy.linalg import solve_triangular

    return solve_triangular(L, solve_triangular(L, v, lower=True), lower=True, trans="T")


def _cholesky_inverse(L: Any, Ks: Any) -> Any:
    """(L L^T)^{-1} = Ks^{-1}, symmetric. On the host LAPACK potri from the factor: n^3 / 3
    multiply-adds, a third of an LU inverse (0.03 s against 0.05 to 0.09 s at n = 1000). On a
    GPU CuPy's inverse of Ks."""
    xp = array_module(L)
    if L.shape[0] == 0:
        return xp.zeros((0, 0))
    if xp is np:
        potri = lapack.get_lapack_funcs("potri", (L,))
        with serial_lapack:
            inner, info = potri(L, lower=1)
        if info != 0:  # (only on an illegal argument or a zero pivot, which potrf excluded)
            raise np.linalg.LinAlgError(f"potri failed (info {info})")
        return np.tril(inner) + np.tril(inner, -1).T
    inner = xp.linalg.inv(Ks)
    return 0.5 * (inner + inner.T)


class SPDSystem:
    """A symmetric PSD matrix K (n x n), equilibrated and factored once.

    K is scaled to D K D with D a power-of-two Jacobi scaling (exact), so row / column scales do
    not count as ill-conditioning and nothing overflows. A Cholesky factorisation decides:
    ``good`` when it succeeds with a condition estimate ``(max L_ii / min L_ii)^2`` at most
    ``cond_limit`` (solves are then triangular solves with the factor, or products with the inverse
    once :meth:`inverse` has formed it). Otherwise a symmetric eigendecomposition of the scaled
    matrix stands in."""

    def __init__(self, K: Any, cond_limit: float = COND_LIMIT) -> None:
        xp = self.xp = array_module(K)
        self.D = _jacobi(xp.diagonal(K).copy())
        Ks = (K * self.D[:, None]) * self.D[None, :]
        self._L = _cholesky(Ks)  # lower factor of D K D, None where Cholesky fails
        self.cond = _condition(self._L)
        self.good = self.cond <= cond_limit
        # D K D itself only where a path needs it (CuPy's inverse), so that a kept system
        # holds one n x n matrix on the host.
        self._Ks = Ks if xp is not np else None
        self._inner: Any = None  # (D K D)^{-1}, once inverse() has formed it
        if not self.good:
            self._L = None
            self._evals, self._V = xp.linalg.eigh(0.5 * (Ks + Ks.T))

    def _apply_inverse(self, v: Any) -> Any:
        """K^{-1} v when good, else the pseudo-inverse (eigenvalues below n eps lambda_max
        dropped: the minimum-norm solution of the scaled system)."""
        xp, D = self.xp, self.D
        if self.good and self._inner is not None:
            return D * (self._inner @ (D * v))
        if self.good:  # two triangular solves with the factor: O(n^2) per right-hand side
            return D * _cholesky_solve(self._L, D * v)
        evals, V = self._evals, self._V
        top = float(evals.max()) if evals.size else 0.0
        cut = top * _EPS * max(evals.size, 1)
        inv = xp.where(evals > cut, 1.0 / xp.where(evals > cut, evals, 1.0), 0.0)
        return D * (V @ (inv * (V.T @ (D * v))))

    def solve(
        self, rhs: Any, apply: Callable[[Any], Any] | None = None, *, refine_from: float = 0.0
    ) -> Any:
        """y with K y = rhs. ``apply(y)`` is the exact operator (K y from the data, e.g. with
        mat-vecs over A, not from the rounded K); when given and the condition estimate exceeds
        ``refine_from`` (0: always; callers with a costly ``apply`` pass ``REFINE_FROM``), the
        solution is refined against it until corrections stall."""
        xp, D = self.xp, self.D
        y = self._apply_inverse(rhs)
        if apply is None or not self.cond > refine_from:
            return y
        steps = _REFINE_STEPS if self.good else 1
        prev = None
        for _ in range(steps):
            dy = self._apply_inverse(rhs - apply(y))
            size = float(xp.abs(dy / D).max()) if dy.size else 0.0
            if prev is not None and not size < 0.5 * prev:
                break  # stalled: rounding level reached
            y = y + dy
            prev = size
            if size <= 4 * _EPS * max(float(xp.abs(y / D).max()), 1e-300):
                break
        return y

    def inverse(self) -> Any:
        """K^{-1}, exact to rounding when ``good``; otherwise a positive definite stand-in with
        the scaled eigenvalues floored at ``lambda_max / COND_LIMIT`` (used only for scores)."""
        xp, D = self.xp, self.D
        if self.good:
            if self._inner is None:
                self._inner = _cholesky_inverse(self._L, self._Ks)
            inner = self._inner
        else:
            evals, V = self._evals, self._V
            top = float(evals.max()) if evals.size else 0.0
            floor = top / COND_LIMIT if top > 0.0 else 1.0
            inner = (V / xp.maximum(evals, floor)) @ V.T
        return (inner * D[:, None]) * D[None, :]


def spd_inverse(K: Any) -> Any:
    """A symmetric positive definite inverse of the symmetric PSD matrix K (see
    :meth:`SPDSystem.inverse`)."""
    return SPDSystem(K).inverse()


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
