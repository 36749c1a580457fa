"""Pruning baselines for the solver-quality benchmark (NumPy, float64).

All of them target the CHITA objective

    f(w) = 0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2    subject to  ||w||_0 <= k,

whose Hessian is ``H = A^T A + ridge I`` (the OBS quadratic when ``b = A @ w_bar``). Each returns a
dense float64 ``w`` of length p with at most k nonzeros, and does its whole job inside the call,
so it can be timed as it is.

- :func:`magnitude`: keep the k largest ``|w_bar|``.
- :func:`magnitude_backsolve`: the magnitude support, then the exact refit on it
  (:func:`chita_core.backsolve`).
- :func:`obs_saliency` / :func:`obs_oneshot_backsolve`: one-shot Optimal Brain Surgeon: keep the
  k largest ``w_bar_q^2 / [H^-1]_qq`` (the diagonal of ``H^-1`` from an ``n x n`` Cholesky factor
  by Woodbury, never a ``p x p`` matrix), then the exact refit.
- :func:`greedy_obs_dense` / :func:`greedy_obs_path`: greedy OBS with the dense ``p x p`` inverse
  Hessian: remove the weight of least saliency, apply the OBS update to the others, downdate
  ``H^-1``, repeat. Exact (one weight at a time); the downdates are applied lazily in blocks so
  that they run as matrix products, which changes the order of the floating-point operations but
  not the algorithm.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, NamedTuple

import numpy as np

import chita_core

__all__ = [
    "GREEDY_MAX_P",
    "GreedyPath",
    "greedy_obs_dense",
    "greedy_obs_path",
    "hinv_diagonal",
    "magnitude",
    "magnitude_backsolve",
    "obs_oneshot_backsolve",
    "obs_saliency",
    "support_backsolve",
    "top_k",
]

#: greedy_obs_dense holds a p x p float64 matrix (2.9 GB at p = 19 000); refuse beyond this.
GREEDY_MAX_P = 20_000


def _check_k(k: int, p: int) -> int:
    k = int(k)
    if not 1 <= k <= p:
        raise ValueError(f"`k` must be in 1..{p}, got {k}")
    return k


def _check_ridge(ridge: float, what: str) -> float:
    ridge = float(ridge)
    if not (np.isfinite(ridge) and ridge > 0.0):
        raise ValueError(
            f"{what} needs `ridge` > 0 (H = A^T A + ridge I must be invertible), got {ridge}"
        )
    return ridge


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted int64 indices of the k largest ``scores`` (selection, O(p); ties arbitrary)."""
    p = scores.shape[0]
    k = _check_k(k, p)
    if k == p:
        return np.arange(p, dtype=np.int64)
    idx = np.argpartition(scores, p - k)[p - k :]
    idx.sort()
    return idx.astype(np.int64, copy=False)


def magnitude(w_bar: Any, k: int) -> np.ndarray:
    """Keep the k largest ``|w_bar|``, zero the rest."""
    w_bar = np.asarray(w_bar, dtype=np.float64)
    support = top_k(np.abs(w_bar), k)
    w = np.zeros_like(w_bar)
    w[support] = w_bar[support]
    return w


def magnitude_backsolve(A: Any, b: Any, k: int, ridge: float, w_bar: Any) -> np.ndarray:
    """Magnitude support, then the exact minimiser of f on it (``chita_core.backsolve``)."""
    w_bar = np.asarray(w_bar, dtype=np.float64)
    support = top_k(np.abs(w_bar), k)
    return np.asarray(chita_core.backsolve(A, b, support, ridge=ridge, w_bar=w_bar), np.float64)


def _woodbury_factor(A: np.ndarray, ridge: float) -> np.ndarray:
    """``Linv`` (n x n, lower triangular) with ``Linv^T Linv = (ridge I + A A^T)^-1``."""
    n = A.shape[0]
    M = A @ A.T  # BLAS syrk: A and A.T share their data
    M[np.diag_indices(n)] += ridge
    L = np.linalg.cholesky(M)
    # The inverse of the factor once (O(n^3)); every block of columns is then one GEMM.
    return np.linalg.solve(L, np.eye(n))


def _gram_sym(X: np.ndarray) -> np.ndarray:
    """``X^T X``, symmetric, through :func:`_gram_upper` (no p x p syrk, see there)."""
    G = np.empty((X.shape[1], X.shape[1]))
    _gram_upper(X, G)
    iu = np.triu_indices(G.shape[0], 1)
    G.T[iu] = G[iu]
    return G


def hinv_diagonal(A: Any, ridge: float, *, block: int = 4096) -> np.ndarray:
    """Diagonal of ``H^-1``, ``H = A^T A + ridge I``, without forming a p x p matrix.

    For n < p by Woodbury, ``[H^-1]_qq = (1 - a_q^T (ridge I + A A^T)^-1 a_q) / ridge``, with the
    n x n Cholesky factor ``L`` of ``ridge I + A A^T``: ``a_q^T M^-1 a_q = ||L^-1 a_q||^2``, taken
    over blocks of ``block`` columns. For n >= p, ``H`` itself is factored. Each value is clipped
    below at ``1 / (||a_q||^2 + ridge)``, its exact lower bound, against cancellation.
    """
    ridge = _check_ridge(ridge, "hinv_diagonal")
    A = np.asarray(A, dtype=np.float64)
    n, p = A.shape
    out = np.empty(p)
    if n >= p:
        H = _gram_sym(A)
        H[np.diag_indices(p)] += ridge
        Linv = np.linalg.solve(np.linalg.cholesky(H), np.eye(p))
        np.einsum("ij,ij->j", Linv, Linv, out=out)  # H^-1 = Linv^T Linv
        return out
    Linv = _woodbury_factor(A, ridge)
    col_sq = np.einsum("ij,ij->j", A, A)
    for j0 in range(0, p, block):
        j1 = min(p, j0 + block)
        Y = Linv @ A[:, j0:j1]
        np.einsum("ij,ij->j", Y, Y, out=out[j0:j1])
    np.subtract(1.0, out, out=out)
    out /= ridge
    np.maximum(out, 1.0 / (col_sq + ridge), out=out)
    return out


def obs_saliency(A: Any, ridge: float, w_bar: Any, *, block: int = 4096) -> np.ndarray:
    """OBS saliency ``w_bar_q^2 / [H^-1]_qq``: the increase of f when weight q alone is removed
    and the others are moved optimally. Requires ``ridge > 0``."""
    ridge = _check_ridge(ridge, "obs_saliency")
    w_bar = np.asarray(w_bar, dtype=np.float64)
    return w_bar * w_bar / hinv_diagonal(A, ridge, block=block)


def obs_oneshot_backsolve(A: Any, b: Any, k: int, ridge: float, w_bar: Any) -> np.ndarray:
    """One-shot OBS: keep the k largest saliencies, then the exact refit on that support."""
    w_bar = np.asarray(w_bar, dtype=np.float64)
    support = top_k(obs_saliency(A, ridge, w_bar), k)
    return np.asarray(chita_core.backsolve(A, b, support, ridge=ridge, w_bar=w_bar), np.float64)


class GreedyPath(NamedTuple):
    """Result of :func:`greedy_obs_path`."""

    removed: np.ndarray  #: int64 weight indices in the order greedy OBS removed them
    seconds: np.ndarray  #: wall time from the call's start to each removal (set-up included)
    setup_seconds: float  #: forming H^-1 and the start point


def _blas_threads_setter() -> Any:
    """``limit(n)``: a context manager capping BLAS threads at n (no-op without threadpoolctl,
    which ships with scikit-learn), and the current BLAS thread count."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return (lambda n: contextlib.nullcontext()), None
    ctl = ThreadpoolController()
    current = max((i["num_threads"] for i in ctl.info() if i["user_api"] == "blas"), default=None)
    return (lambda n: ctl.limit(limits=n, user_api="blas")), current


def _gram_upper(W: np.ndarray, out: np.ndarray, chunk: int = 1024) -> None:
    """Upper triangle (and diagonal blocks) of ``W^T W`` into ``out``, by row-chunk GEMMs.

    Not ``W.T @ W``: NumPy sends that to BLAS syrk, and the OpenBLAS 0.3.31 bundled with NumPy
    2.4 segfaults on it with 2 threads for n = 1000, p >= 16 000 (single-threaded it works).
    """
    p = W.shape[1]
    for i0 in range(0, p, chunk):
        i1 = min(p, i0 + chunk)
        np.matmul(W[:, i0:i1].T, W[:, i0:], out=out[i0:i1, i0:])


def _dense_hinv_upper(A: np.ndarray, ridge: float) -> np.ndarray:
    """``H^-1`` as a p x p float64 matrix (C order), upper triangle and diagonal blocks valid.

    n < p: Woodbury, ``H^-1 = (I - W^T W) / ridge`` with ``W = L^-1 A`` (one n x p triangular
    solve and half a p x p Gram matrix, O(n p^2), instead of the O(p^3) of inverting H).
    n >= p: ``H`` is formed and inverted through its Cholesky factor,
    ``H^-1 = Linv^T Linv``.
    """
    n, p = A.shape
    # The only p x p allocation when n < p; zeros (calloc: untouched pages cost nothing) so that
    # the unused lower triangle holds no garbage for the whole-matrix operations below.
    Hinv = np.zeros((p, p))
    if n >= p:
        H = _gram_sym(A)
        H[np.diag_indices(p)] += ridge
        Linv = np.linalg.solve(np.linalg.cholesky(H), np.eye(p))
        _gram_upper(Linv, Hinv)
        return Hinv
    W = _woodbury_factor(A, ridge) @ A  # n x p
    _gram_upper(W, Hinv)
    del W
    np.negative(Hinv, out=Hinv)
    Hinv[np.diag_indices(p)] += 1.0
    Hinv /= ridge
    return Hinv


def _solve_h(A: np.ndarray, ridge: float, v: np.ndarray) -> np.ndarray:
    """``H^-1 v`` by Woodbury (n < p) or a Cholesky solve (n >= p)."""
    n, p = A.shape
    if n >= p:
        H = _gram_sym(A)
        H[np.diag_indices(p)] += ridge
        return np.linalg.solve(H, v)
    Linv = _woodbury_factor(A, ridge)
    return (v - A.T @ (Linv.T @ (Linv @ (A @ v)))) / ridge


def greedy_obs_path(
    A: Any,
    b: Any,
    ridge: float,
    w_bar: Any,
    n_remove: int,
    *,
    block: int = 192,
    chunk: int = 1024,
    compact_below: float = 0.85,
    max_p: int = GREEDY_MAX_P,
) -> GreedyPath:
    """Greedy OBS removal order, one weight at a time, with the dense inverse Hessian.

    Starts from the unconstrained minimiser ``w* = w_bar + H^-1 A^T (b - A w_bar)`` (``w_bar``
    itself in the pruning setting ``b = A w_bar``), where f is exactly the quadratic
    ``f(w*) + 0.5 (w - w*)^T H (w - w*)``. Each step removes ``q = argmin w_q^2 / [H^-1]_qq`` over
    the remaining weights, applies the OBS update ``w -= (w_q / [H^-1]_qq) H^-1 e_q`` (which makes
    w the exact minimiser of f on the remaining support) and downdates
    ``H^-1 -= H^-1 e_q e_q^T H^-1 / [H^-1]_qq``, which is the inverse of H restricted to the
    remaining weights. The path does not depend on the target k, so one call gives the supports of
    every sparsity up to ``n_remove`` removals.

    Implementation (same arithmetic, reordered): the rank-1 downdates are deferred. Within a
    block of ``block`` removals the current column of ``H^-1`` is the stored one minus the
    pending rank-1 terms (one matrix-vector product), and w and the diagonal are kept current
    every step. At the end of a block the pending terms are applied at once, as matrix products
    over ``chunk`` rows, to the upper triangle only (H^-1 is symmetric; a column is read as the
    upper part of its row plus the column above the diagonal). The stored matrix is compacted in
    place to the remaining weights whenever they fall below ``compact_below`` of its size. Only
    the set-up allocates p x p.
    """
    t0 = time.perf_counter()
    ridge = _check_ridge(ridge, "greedy_obs_path")
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w_bar = np.asarray(w_bar, dtype=np.float64)
    p = A.shape[1]
    if p > max_p:
        raise ValueError(f"greedy_obs_path forms a dense p x p matrix; p = {p} > max_p = {max_p}")
    n_remove = int(n_remove)
    if not 0 <= n_remove < p:
        raise ValueError(f"`n_remove` must be in 0..{p - 1}, got {n_remove}")

    H = _dense_hinv_upper(A, ridge)
    buf = H.reshape(-1)  # flat storage; the stored matrix is buf[:m*m] viewed as m x m
    # Unconstrained minimiser; w_bar up to rounding when b = A w_bar.
    w = w_bar + _solve_h(A, ridge, A.T @ (b - A @ w_bar))
    diag = H.diagonal().copy()
    act = np.arange(p, dtype=np.int64)  # original index of each stored row/column
    alive = np.ones(p, dtype=bool)
    n_alive = m = p
    # Pending downdates u_i = H^-1 e_q / sqrt(H^-1_qq), one per row, contiguous block x m (the
    # buffer is re-viewed when m shrinks).
    ubuf = np.empty(block * p)
    U = ubuf.reshape(block, p)
    nb = 0
    col = np.empty(p)
    sal = np.empty(p)
    removed = np.empty(n_remove, dtype=np.int64)
    seconds = np.empty(n_remove)
    setup = time.perf_counter() - t0

    # The per-step products are small: run them on one BLAS thread. On the 2-core benchmark
    # machine, with another process busy, OpenBLAS's threaded GEMV took 6 ms per step against
    # 0.5 ms on one thread. The block downdates get the threads back.
    blas_threads, n_threads = _blas_threads_setter()
    with np.errstate(divide="ignore", invalid="ignore"), blas_threads(1):  # 0/0: masked
        for step in range(n_remove):
            s = sal[:m]
            np.multiply(w, w, out=s)
            np.divide(s, diag, out=s)
            s[~alive] = np.inf
            j = int(np.argmin(s))
            c = col[:m]
            c[:j] = H[:j, j]  # upper triangle: column above the diagonal, then row j
            c[j:] = H[j, j:]
            if nb:
                c -= U[:nb, j].copy() @ U[:nb]
            d = c[j]
            w -= (w[j] / d) * c
            w[j] = 0.0
            u = U[nb]
            np.multiply(c, 1.0 / np.sqrt(d), out=u)
            diag -= u * u
            nb += 1
            alive[j] = False
            n_alive -= 1
            removed[step] = act[j]
            seconds[step] = time.perf_counter() - t0
            if nb == block and step + 1 < n_remove:
                with blas_threads(n_threads):
                    _downdate_upper(H, U[:nb], chunk)
                nb = 0
                if n_alive < compact_below * m:
                    keep = np.flatnonzero(alive)
                    with blas_threads(n_threads):
                        H = _compact(buf, H, keep, chunk)
                    m = keep.size
                    w, act, alive = w[keep], act[keep], np.ones(m, dtype=bool)
                    U = ubuf[: block * m].reshape(block, m)
                diag = H.diagonal().copy()
    return GreedyPath(removed, seconds, setup)


def _downdate_upper(H: np.ndarray, U: np.ndarray, chunk: int) -> None:
    """``H -= U^T U`` on the upper triangle (and the diagonal blocks), ``chunk`` rows at a time."""
    m = H.shape[0]
    prod = np.empty((min(chunk, m), m))
    for i0 in range(0, m, chunk):
        i1 = min(m, i0 + chunk)
        out = prod[: i1 - i0, : m - i0]
        np.matmul(U[:, i0:i1].T, U[:, i0:], out=out)
        H[i0:i1, i0:] -= out


def _compact(buf: np.ndarray, H: np.ndarray, keep: np.ndarray, chunk: int) -> np.ndarray:
    """``H[keep][:, keep]`` written in place into ``buf`` as an m' x m' matrix.

    New row i lands at ``buf[i*m' : (i+1)*m']``; the old rows still to be read (``keep[i'] >= i'``
    for later i') start at ``keep[i'] * m >= i' * m'``, past everything written so far, and each
    chunk of old rows is gathered before its new rows are written. ``keep`` is sorted, so the
    upper triangle stays the upper triangle.
    """
    mk = keep.size
    c = min(chunk, mk)
    sub = np.empty((c, mk))
    for i0 in range(0, mk, chunk):
        i1 = min(mk, i0 + chunk)
        np.take(H[keep[i0:i1]], keep, axis=1, out=sub[: i1 - i0])
        buf[i0 * mk : i1 * mk] = sub[: i1 - i0].reshape(-1)
    return buf[: mk * mk].reshape(mk, mk)


def greedy_obs_dense(A: Any, b: Any, k: int, ridge: float, w_bar: Any, **kwargs: Any) -> np.ndarray:
    """Greedy OBS (:func:`greedy_obs_path`) down to k weights, then ``chita_core.backsolve`` on
    the final support. For p <= ``GREEDY_MAX_P`` (20 000) only: it holds a p x p matrix."""
    w_bar = np.asarray(w_bar, dtype=np.float64)
    p = w_bar.shape[0]
    k = _check_k(k, p)
    if k == p:
        return np.asarray(chita_core.backsolve(A, b, np.arange(p), ridge=ridge, w_bar=w_bar))
    path = greedy_obs_path(A, b, ridge, w_bar, p - k, **kwargs)
    return support_backsolve(A, b, ridge, w_bar, path.removed)


def support_backsolve(A: Any, b: Any, ridge: float, w_bar: Any, removed: np.ndarray) -> np.ndarray:
    """``chita_core.backsolve`` on the complement of ``removed``."""
    p = np.asarray(w_bar).shape[0]
    mask = np.ones(p, dtype=bool)
    mask[removed] = False
    support = np.flatnonzero(mask).astype(np.int64)
    return np.asarray(chita_core.backsolve(A, b, support, ridge=ridge, w_bar=w_bar), np.float64)
