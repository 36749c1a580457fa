"""Exact refits of every row on its mask, batched over rows (docs/design.md, section 14.2).

With K the kept inputs of a row and P the pruned ones, the minimiser of
(w - w_bar)^T H (w - w_bar) with w_P = 0 solves ``H_KK w_K = (H w_bar)_K``. Rows with the same
number of kept weights are solved together: their H_KK are gathered into a (chunk, k, k) stack
and factored by one batched LAPACK call (NumPy's stacked ``solve``), chunk by chunk so that the
stack stays within ``_STACK_BYTES``. Where k is large (the stack's k^3 work per row beyond what
a few passes of conjugate gradients cost), :func:`pcg_refit` iterates on all rows at once with
one (rows x d) x (d x d) GEMM per step instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["exact_refit", "exact_refit_numpy", "pcg_refit", "refit"]

#: Bytes of the gathered (chunk, k, k) stack of H_KK per batched solve.
_STACK_BYTES = 128 << 20
#: Kept weights per row up to which the batched direct solve is used (k^3 / 3 per row against
#: about 40 CG steps of 2 d^2 each: the direct solve is cheaper below roughly k = 1500 at d = 2k).
DIRECT_MAX_K = 1024


def exact_refit(Hd: np.ndarray, HW: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The minimiser on every row's mask (a row with none kept is zero): the C++ kernel's
    Cholesky solve of each row's H_KK (``_core.row_swaps`` without exchanges, rows in
    parallel), or :func:`exact_refit_numpy` without the compiled module."""
    from ._swaps import _kernel, _search

    if _kernel() is None:  # pragma: no cover - the wheel always builds _core
        return exact_refit_numpy(Hd, HW, mask)
    return _search(Hd, None, HW, mask, 0, 0, 0.0)[1]


def exact_refit_numpy(Hd: np.ndarray, HW: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The same by batched NumPy solves: rows grouped by their number of kept weights, each
    group's H_KK gathered into (chunk, k, k) stacks."""
    rows, d = mask.shape
    out = np.zeros((rows, d))
    counts = mask.sum(axis=1)
    for k in np.unique(counts):
        k = int(k)
        if k == 0:
            continue
        members = np.flatnonzero(counts == k)
        idx = np.nonzero(mask[members])[1].reshape(members.size, k)  # sorted per row
        chunk = max(1, _STACK_BYTES // (8 * k * k))
        for c0 in range(0, members.size, chunk):
            sel, I = members[c0 : c0 + chunk], idx[c0 : c0 + chunk]
            G = Hd[I[:, :, None], I[:, None, :]]  # (chunk, k, k)
            rhs = np.take_along_axis(HW[sel], I, axis=1)[:, :, None]
            out[sel[:, None], I] = np.linalg.solve(G, rhs)[:, :, 0]
    return out


def pcg_refit(
    Hd: np.ndarray,
    HW: np.ndarray,
    mask: np.ndarray,
    W0: np.ndarray | None = None,
    *,
    tol: float = 1e-10,
    max_iter: int = 500,
) -> np.ndarray:
    """The same minimisers by conjugate gradients on all rows at once, Jacobi-preconditioned,
    from ``W0`` (masked; zeros if None): each step one masked (rows x d) x (d x d) product.
    Rows stop when their residual falls below ``tol`` times their right-hand side."""
    M = mask.astype(np.float64)
    X = np.zeros_like(HW) if W0 is None else W0 * M
    B = HW * M
    R = B - (X @ Hd) * M
    inv_diag = 1.0 / np.diagonal(Hd)
    Z = R * inv_diag
    P = Z.copy()
    rz = np.einsum("ij,ij->i", R, Z)
    target = tol * np.maximum(np.linalg.norm(B, axis=1), 1e-300)
    for _ in range(max_iter):
        active = np.linalg.norm(R, axis=1) > target
        if not active.any():
            break
        Q = (P @ Hd) * M
        pq = np.einsum("ij,ij->i", P, Q)
        alpha = np.where(active & (pq > 0), rz / np.where(pq > 0, pq, 1.0), 0.0)
        X += alpha[:, None] * P
        R -= alpha[:, None] * Q
        Z = R * inv_diag
        rz_new = np.einsum("ij,ij->i", R, Z)
        beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        P = Z + beta[:, None] * P
        rz = rz_new
    return X


def refit(Hd: np.ndarray, HW: np.ndarray, mask: np.ndarray, W0: np.ndarray | None = None):
    """Exact refit, directly where the rows keep at most ``DIRECT_MAX_K`` weights, else by
    :func:`pcg_refit` (warm-started from ``W0``)."""
    if int(mask.sum(axis=1).max(initial=0)) <= DIRECT_MAX_K:
        return exact_refit(Hd, HW, mask)
    return pcg_refit(Hd, HW, mask, W0)
