"""Host implementations of the contract's dense-algebra ops, shared by the cpp and numba
backends: gathered columns and support Grams go through the BLAS NumPy links (SYRK for
``X @ X.T``), and the swap scores are NumPy expressions over candidate-sized matrices."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["gather_columns", "pool_eliminate", "support_gram", "swap_scores"]

# Column panels of the Gram: a float64 workspace of about this many bytes (at least 256
# columns), reused across panels, so A_S is never gathered whole.
_PANEL_BYTES = 64 << 20


def gather_columns(A: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """A[:, idx] as a float64 (n, m) F-ordered array (in F order, m contiguous column copies)."""
    out = np.empty((A.shape[0], idx.size), order="F")
    _gather_into(A, idx, out)
    return out


# Columns per chunk when a gather also converts the dtype: the chunk (in A's dtype) stays in
# cache on its way to the float64 output instead of making a full-size temporary.
_CAST_CHUNK = 512


def _gather_into(A: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    if not A.flags.f_contiguous:
        out[...] = A[:, idx]
        return
    rows = A.T  # C-ordered: each gathered row is one contiguous column of A
    if A.dtype == out.dtype:
        np.take(rows, idx, axis=0, out=out.T)
        return
    buf = np.empty((min(_CAST_CHUNK, idx.size), A.shape[0]), dtype=A.dtype)
    for s0 in range(0, idx.size, _CAST_CHUNK):
        part = idx[s0 : s0 + _CAST_CHUNK]
        np.take(rows, part, axis=0, out=buf[: part.size])
        out.T[s0 : s0 + part.size] = buf[: part.size]


def support_gram(A: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """out = A_S A_S^T (n x n, float64): column panels gathered into a reused float64 buffer,
    each panel's product one BLAS SYRK (NumPy dispatches ``X @ X.T`` to it)."""
    n, p = A.shape
    _check_gram_args(idx, p, out, n)
    K = out
    m = idx.size
    width = min(m, max(256, _PANEL_BYTES // (8 * max(n, 1))))
    if m == 0:
        K[...] = 0.0
        return
    buf = np.empty((n, width), order="F")
    for s0 in range(0, m, width):
        cols = idx[s0 : s0 + width]
        X = buf[:, : cols.size]
        _gather_into(A, cols, X)
        if s0 == 0:
            np.matmul(X, X.T, out=K)
        else:
            K += X @ X.T


def _check_gram_args(idx: np.ndarray, p: int, out: np.ndarray, n: int) -> None:
    """The contract's second line of defence (the solver validates before calling)."""
    if not (isinstance(out, np.ndarray) and out.dtype == np.float64):
        raise ValueError("`out` must be a float64 NumPy array")
    if out.shape != (n, n) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"`out` must be a writable C-contiguous ({n}, {n}) array")
    if not (isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1):
        raise ValueError("`idx` must be a 1-D int64 array")
    if idx.size and (idx[0] < 0 or idx[-1] >= p or np.any(np.diff(idx) <= 0)):
        raise ValueError(f"`idx` must be sorted, distinct and in [0, {p})")


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
    xp = _array_module(G)
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
    quad = (a22 * m1 * m1 - 2.0 * a12 * m1 * m2 + a11 * m2 * m2) / xp.where(ok, det, -1.0)
    delta = 0.5 * lam * (ckc - quad - s0 + wv[io][:, None] ** 2 - wv[jn][None, :] ** 2)
    return xp.where(ok & xp.isfinite(delta), delta, xp.inf)


def _array_module(x: Any) -> Any:
    from .._interop import array_module

    return array_module(x)


def pool_eliminate(G: np.ndarray, x: np.ndarray, count: int) -> np.ndarray:
    """Greedy OBS within a pool: the pool indices of ``count`` removals, in order, from the
    pool's n-space products ``G = A_C^T K^-1 A_C`` [c, c] and its exact optimum ``x`` [c] (both
    left unchanged). Each removal takes the live q of least saliency x_q^2 / max(1 - G_qq, eps)
    (ties and NaN scores: the lowest live index, NaN ranking as +inf) and moves the others to
    the new optimum: x += G[:, q] x_q / d_q, G += G[:, q] G[q, :] / d_q (stages/greedy.py).
    The NumPy reference of the compiled kernels (one Python step per removal). A stack
    G [batch, c, c], x [batch, c] gives [batch, count]."""
    if np.ndim(G) == 3:
        return np.stack([pool_eliminate(g, v, count) for g, v in zip(G, x, strict=True)])
    G = np.array(G, dtype=np.float64)
    x = np.array(x, dtype=np.float64)
    tiny = np.finfo(np.float64).eps
    live = np.ones(x.size, dtype=bool)
    order = np.empty(count, dtype=np.int64)
    for t in range(count):
        cand = np.flatnonzero(live)
        d = np.maximum(1.0 - G[cand, cand], tiny)
        s = x[cand] * x[cand] / d
        q = int(cand[np.argmin(np.where(np.isnan(s), np.inf, s))])
        order[t] = q
        live[q] = False
        dq = max(1.0 - G[q, q], tiny)
        g = G[:, q].copy()
        x += g * (x[q] / dq)
        G += np.outer(g / dq, g)
    return order
