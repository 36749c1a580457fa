"""Exact swap local search in every row (docs/design.md, section 14.6).

From a feasible mask K of a row, the best exchange of one kept input i for one pruned input j
is made while it lowers the row's objective ``(w - w_bar)^T H (w - w_bar)`` (refitted exactly
on the mask). Every pair is scored exactly: with ``u = H_KK^-1 H_{K,j}``, the Schur complement
``s_j = H_jj - H_{j,K} u`` and the gradient ``g_j = H_{j,K} w - b_j``, adding j alone lowers the
objective by ``g_j^2 / s_j``, moves w to ``w + u g_j / s_j`` and the inverse's diagonal to
``[H_KK^-1]_ii + u_i^2 / s_j``; removing i then costs ``w_i'^2 / [H_{K+j}^-1]_ii``. For N:M only
pairs within one group of M are exchanged, so every group keeps N.

The C++ kernel ``_core.row_swaps`` runs each row on its own (rows in parallel): the inverse of
H_KK (LAPACK potrf / potri) and ``C = H_{:,K} H_KK^-1`` (one GEMM) once, then per exchange the
pairs by decreasing ``g_j^2 / s_j`` (a bound on every pair with j, so few are visited), a
bordering and a downdate of the inverse and one pass over the pruned rows of C; at the end a
fresh Cholesky solve gives the exact minimiser. Its BLAS and LAPACK are SciPy's, registered
from their Cython capsules. :func:`swap_search_numpy` is the NumPy reference.
"""

from __future__ import annotations

import threading

import numpy as np

from ._problem import LayerProblem, _core_module, round_half_up
from ._refit import exact_refit_numpy

__all__ = ["swap_search", "swap_search_numpy", "swap_sweep"]

#: An exchange is made only when it lowers the row's objective by more than this fraction of it.
TOL = 1e-9
#: The kernel refactors H_KK from scratch after this many exchanges (bounds rounding drift).
REFRESH = 64

_registered = False
_lock = threading.Lock()


def _kernel():
    """``_core`` with SciPy's BLAS / LAPACK registered, or None without the compiled module."""
    global _registered
    core = _core_module()
    if core is None:
        return None
    with _lock:
        if not _registered:
            from scipy.linalg import cython_blas, cython_lapack

            core.set_lapack(cython_blas.__pyx_capi__, cython_lapack.__pyx_capi__)
            _registered = True
    return core


def _group(prob: LayerProblem) -> int:
    return prob.pattern.m if prob.pattern.kind == "nm" else 0


def swap_search(
    prob: LayerProblem, mask: np.ndarray, *, max_swaps: int | None = None, tol: float = TOL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Swap search from ``mask`` in every row: returns (mask, W, swaps per row), W the exact
    minimiser on the new mask. ``max_swaps`` caps each row's exchanges (default d)."""
    return _search(prob.Hd, prob.W_bar, prob.HW, mask, _group(prob), max_swaps, tol)


def _search(Hd, W_bar, HW, mask, m, max_swaps, tol):
    core = _kernel()
    if core is None:  # pragma: no cover - the wheel always builds _core
        return _search_numpy(Hd, W_bar, HW, mask, m, max_swaps, tol)
    B = np.ascontiguousarray(HW)
    rows, d = B.shape
    cap = d if max_swaps is None else int(max_swaps)
    Hd = np.ascontiguousarray(Hd)
    c0 = np.zeros(rows) if W_bar is None else np.einsum("ij,ij->i", W_bar, B)
    out = np.ascontiguousarray(mask, dtype=bool).copy()
    W = np.empty((rows, d))
    swaps = np.empty(rows, dtype=np.int64)
    from threadpoolctl import threadpool_limits

    # Rows run on OpenMP threads, each calling BLAS: one BLAS thread per call.
    with threadpool_limits(limits=1, user_api="blas"):
        core.row_swaps(Hd, B, c0, m, cap, float(tol), REFRESH, out, W, swaps)
    bad = np.flatnonzero(swaps < 0)
    if bad.size:  # H_KK not positive definite in floating point: the start, refitted
        out[bad] = mask[bad]
        W[bad] = exact_refit_numpy(Hd, B[bad], mask[bad])
        swaps[bad] = 0
    return out, W, swaps


def swap_sweep(prob: LayerProblem, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The swap search on blocks of ``block`` consecutive inputs, left to right, as SparseGPT
    sweeps (section 14.6): with U the upper factor of Hd^-1 (U^T U = Hd^-1) and earlier blocks
    fixed, choosing block B's weights v costs exactly (v - w_B)^T H_B (v - w_B) with
    H_B = (U_BB^T U_BB)^-1 once the inputs after B move optimally, by
    ``W_R += (v - w_B) U_BB^-1 U_BR``. Each block's mask (its share of every row's budget, or
    its N:M groups) is the swap search's on H_B from the saliency w^2 / [U_BB^T U_BB]_jj.
    Returns (W, mask); the kept weights of earlier blocks are not refitted (the caller does)."""
    from scipy.linalg import solve_triangular

    from ._sparsegpt import _inverse_factor

    pat = prob.pattern
    rows, d = prob.rows, prob.d
    m = _group(prob)
    if m:
        block = max(m, block - block % m)
    U = _inverse_factor(prob.Hd)
    W = prob.W_bar.copy()
    mask = np.zeros((rows, d), dtype=bool)
    pruned = 0  # every row's, so far (row budgets: the same in every row)
    for b0 in range(0, d, block):
        b1 = min(d, b0 + block)
        n = b1 - b0
        Ub = U[b0:b1, b0:b1]
        Ui = solve_triangular(Ub, np.eye(n), lower=False)
        HB = Ui @ Ui.T
        HB = 0.5 * (HB + HB.T)
        wB = W[:, b0:b1].copy()
        sal = wB * wB / np.einsum("ij,ij->j", Ub, Ub)[None, :]
        if m:
            start = _project(sal, -1, pat.n, m)
        else:
            share = round_half_up((1.0 - pat.keep / d) * b1) - pruned
            start = _project(sal, n - share, 0, 0)
            pruned += share
        out, V, _ = _search(HB, wB, wB @ HB, start, m, None, TOL)
        mask[:, b0:b1] = out
        W[:, b0:b1] = V
        if b1 < d:
            W[:, b1:] += solve_triangular(Ub, (V - wB).T, lower=False, trans=1).T @ U[b0:b1, b1:]
    return W, mask


def _project(s: np.ndarray, k: int, n: int, m: int) -> np.ndarray:
    """Each row's top k of ``s`` (k >= 0), or each group's top n of m."""
    from ._problem import Pattern

    rows, d = s.shape
    if k >= 0:
        return Pattern("row", rows, d, keep=k).project(s)
    return Pattern("nm", rows, d, n=n, m=m).project(s)


def swap_search_numpy(
    prob: LayerProblem, mask: np.ndarray, *, max_swaps: int | None = None, tol: float = TOL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`swap_search` in NumPy, one row at a time with every quantity recomputed from a
    fresh inverse per exchange: the reference of the kernel (slow; tests and fallback)."""
    return _search_numpy(prob.Hd, prob.W_bar, prob.HW, mask, _group(prob), max_swaps, tol)


def _search_numpy(Hd, W_bar, B, mask, m, max_swaps, tol):
    rows, d = W_bar.shape
    cap = d if max_swaps is None else int(max_swaps)
    c0 = np.einsum("ij,ij->i", W_bar, B)
    out = np.asarray(mask, dtype=bool).copy()
    swaps = np.zeros(rows, dtype=np.int64)
    for r in range(rows):
        K = np.flatnonzero(out[r])
        if K.size in (0, d):
            continue
        while swaps[r] < cap:
            J = np.setdiff1d(np.arange(d), K)
            Kinv = np.linalg.inv(Hd[np.ix_(K, K)])
            w = Kinv @ B[r, K]
            err = c0[r] - B[r, K] @ w
            U = Kinv @ Hd[np.ix_(K, J)]
            s = np.diagonal(Hd)[J] - np.einsum("kj,kj->j", Hd[np.ix_(K, J)], U)
            g = Hd[np.ix_(J, K)] @ w - B[r, J]
            ok = s > 1e-12 * np.diagonal(Hd)[J]
            s_ = np.where(ok, s, 1.0)
            wp = w[:, None] + U * (g / s_)[None, :]
            dinv = np.diagonal(Kinv)[:, None] + U**2 / s_[None, :]
            delta = wp**2 / dinv - (g**2 / s_)[None, :]
            delta[:, ~ok] = np.inf
            if m:
                delta[(K[:, None] // m) != (J[None, :] // m)] = np.inf
            t, jj = np.unravel_index(np.argmin(delta), delta.shape)
            if not delta[t, jj] < -tol * max(err, 0.0):
                break
            K = np.sort(np.append(np.delete(K, t), J[jj]))
            swaps[r] += 1
        out[r] = False
        out[r, K] = True
    return out, exact_refit_numpy(Hd, B, out), swaps
