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
  not the algorithm. :func:`greedy_obs_rank1` is the textbook form it is checked against: one
  in-place BLAS ``dsyr`` rank-1 downdate per removed weight.

Dense-Hessian baselines (``bench/obs_vs_chita.py``), each with a build / factor / prune / refit
time split (:class:`Pruned`) and a memory check before the ``p x p`` allocation
(:class:`DenseMemoryError` instead of a crash):

- :func:`dense_hinv`: ``H^-1`` as a dense ``p x p`` matrix, either literally (form ``H``, Cholesky,
  invert from the factor, LAPACK ``potrf`` + ``potri`` in place: O(n p^2 + p^3)) or by Woodbury
  (``H^-1 = (I - W^T W) / ridge``, ``W = L^-1 A``: O(n p^2), the faster route when n < p).
- :func:`oneshot_obs_dense`: one-shot OBS from the dense ``H^-1`` with the exact joint update.
- :func:`greedy_obs_sweep`: :func:`greedy_obs_path` timed per target k.
- :func:`oneshot_obs_woodbury` and :func:`magnitude_refit`: the same split for the two baselines
  that need no ``p x p`` matrix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

import chita_core
from bench.harness import memory_available

__all__ = [
    "GREEDY_MAX_P",
    "DenseMemoryError",
    "GreedyPath",
    "Pruned",
    "check_memory",
    "dense_bytes",
    "dense_hinv",
    "greedy_obs_dense",
    "greedy_obs_path",
    "greedy_obs_rank1",
    "greedy_obs_sweep",
    "hinv_diagonal",
    "magnitude",
    "magnitude_backsolve",
    "magnitude_refit",
    "obs_oneshot_backsolve",
    "obs_saliency",
    "oneshot_obs_dense",
    "oneshot_obs_woodbury",
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
    #: the set-up split: ``build`` (Gram products), ``factor`` (Cholesky and inverse), ``start``
    setup_split: dict[str, float] | None = None


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


class DenseMemoryError(MemoryError):
    """A dense baseline would not fit in the memory available now; raised before allocating."""

    def __init__(self, what: str, needed_bytes: int, available_bytes: int | None, limit: int):
        self.needed_bytes = int(needed_bytes)
        self.available_bytes = available_bytes
        self.limit_bytes = int(limit)
        super().__init__(
            f"{what} needs about {needed_bytes / 2**30:.2f} GiB; {limit / 2**30:.2f} GiB may be "
            f"used (MemAvailable {(available_bytes or 0) / 2**30:.2f} GiB less headroom)"
        )


#: Headroom kept free when checking a dense allocation: BLAS buffers, page faults of other
#: processes on a shared machine. A run that would leave less than this is refused.
MEMORY_HEADROOM = 0.15


def check_memory(what: str, needed_bytes: int, available_bytes: int | None = None) -> None:
    """Raise :class:`DenseMemoryError` when ``needed_bytes`` exceeds what may be allocated.

    The limit is ``MemAvailable`` (``/proc/meminfo``, via :func:`bench.harness.memory_available`)
    less ``max(1 GiB, MEMORY_HEADROOM * MemAvailable)``. Without ``/proc/meminfo`` nothing is
    checked.
    """
    avail = memory_available() if available_bytes is None else available_bytes
    if avail is None:
        return
    limit = avail - max(1 << 30, int(MEMORY_HEADROOM * avail))
    if needed_bytes > limit:
        raise DenseMemoryError(what, needed_bytes, avail, limit)


def dense_bytes(
    method: str, n: int, p: int, ks: Sequence[int] = (), *, block: int = 192, chunk: int = 1024
) -> int:
    """Bytes a dense baseline allocates beyond its inputs (the estimate :func:`check_memory` uses).

    ``"greedy"``: ``H^-1`` (8 p^2), ``W = L^-1 A`` while the Gram is formed (8 n p), the pending
    downdates and the chunk products (8 p (block + chunk)). ``"oneshot"``: ``H^-1``, ``W``, plus
    the larger joint-update system over ``ks``: ``H^-1[Q, Q]`` (8 |Q|^2) when ``|Q| <= k``, else
    ``H_SS`` and ``A_S`` (8 (k^2 + n k)). ``n x n`` work arrays (3 of them) in both.
    """
    base = 8 * (p * p + n * p + 3 * n * n)
    if method == "greedy":
        return base + 8 * p * (block + chunk + 8)
    if method == "oneshot":
        upd = 0
        for k in ks:
            q = p - int(k)
            upd = max(upd, 8 * q * q if q <= k else 8 * (k * k + n * k))
        return base + upd + 8 * p * (chunk + 8)
    raise ValueError(f"`method` must be 'greedy' or 'oneshot', got {method!r}")


def _symmetrize_upper(H: np.ndarray, chunk: int = 1024) -> None:
    """Copy the upper triangle of the square C-order ``H`` into its lower triangle, in place."""
    p = H.shape[0]
    for i0 in range(0, p, chunk):
        i1 = min(p, i0 + chunk)
        H[i0:i1, :i0] = H[:i0, i0:i1].T
        blk = H[i0:i1, i0:i1]
        low = np.tril_indices(i1 - i0, -1)
        blk[low] = blk.T[low]


def dense_hinv(
    A: Any,
    ridge: float,
    *,
    route: str = "auto",
    symmetric: bool = False,
    times: dict[str, float] | None = None,
) -> np.ndarray:
    """``H^-1``, ``H = A^T A + ridge I``, as a dense p x p float64 matrix (C order).

    Parameters
    ----------
    A : array, shape (n, p)
    ridge : float
        > 0.
    route : {"auto", "cholesky", "woodbury"}
        ``"cholesky"``: what a dense-Hessian OBS user does: form ``H`` (upper triangle, by
        row-chunk GEMMs, O(n p^2 / 2)), factor it and invert from the factor, LAPACK ``dpotrf``
        then ``dpotri`` in place in the same p x p buffer (O(p^3 / 3) + O(2 p^3 / 3)).
        ``"woodbury"``: ``H^-1 = (I - W^T W) / ridge``, ``W = L^-1 A``, L the Cholesky factor of
        the n x n ``ridge I + A A^T`` (O(n^3) + O(n p^2)): the same matrix up to rounding, far
        cheaper when n << p. ``"auto"``: Woodbury when n < p, else Cholesky.
    symmetric : bool
        Fill the lower triangle too; otherwise only the upper triangle (with the diagonal) is
        valid, the lower one holds zeros or garbage.
    times : dict, optional
        Filled with ``build`` (the Gram products, p x p or n x n, and W) and ``factor`` (the
        Cholesky factorizations and inverses) in seconds.

    The p x p buffer is the only allocation of that size; call :func:`check_memory` first.
    """
    from scipy.linalg import lapack

    ridge = _check_ridge(ridge, "dense_hinv")
    A = np.asarray(A, dtype=np.float64)
    n, p = A.shape
    if route == "auto":
        route = "woodbury" if n < p else "cholesky"
    if route not in ("cholesky", "woodbury"):
        raise ValueError(f"`route` must be 'auto', 'cholesky' or 'woodbury', got {route!r}")
    t0 = time.perf_counter()
    # zeros (calloc: untouched pages cost nothing) so that the unused lower triangle holds no
    # garbage for the whole-matrix operations of greedy_obs_path.
    Hinv = np.zeros((p, p))
    if route == "cholesky":
        _gram_upper(A, Hinv)
        Hinv[np.diag_indices(p)] += ridge
        t1 = time.perf_counter()
        # Hinv.T is the same buffer in F order, where H's upper triangle is the lower one:
        # LAPACK works on it in place (f2py copies only non-F-contiguous input).
        F = Hinv.T
        c, info = lapack.dpotrf(F, lower=1, overwrite_a=1, clean=0)
        if info != 0 or not np.shares_memory(c, Hinv):
            raise np.linalg.LinAlgError(f"dpotrf failed (info {info}) or copied its input")
        c, info = lapack.dpotri(c, lower=1, overwrite_c=1)
        if info != 0 or not np.shares_memory(c, Hinv):
            raise np.linalg.LinAlgError(f"dpotri failed (info {info}) or copied its input")
        t2 = time.perf_counter()
        build, factor = t1 - t0, t2 - t1
    else:
        Linv = _woodbury_factor(A, ridge)
        t1 = time.perf_counter()
        W = Linv @ A  # n x p
        _gram_upper(W, Hinv)
        del W
        np.negative(Hinv, out=Hinv)
        Hinv[np.diag_indices(p)] += 1.0
        Hinv /= ridge
        t2 = time.perf_counter()
        factor, build = t1 - t0, t2 - t1
    if symmetric:
        t3 = time.perf_counter()
        _symmetrize_upper(Hinv)
        build += time.perf_counter() - t3
    if times is not None:
        times["build"] = times.get("build", 0.0) + build
        times["factor"] = times.get("factor", 0.0) + factor
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
    route: str = "auto",
    check_mem: bool = False,
) -> GreedyPath:
    """Greedy OBS removal order, one weight at a time, with the dense inverse Hessian.

    This is the blocked form of the in-place rank-1 downdate of :func:`greedy_obs_rank1` (the
    same sequence of removals, OBS updates and rank-1 downdates, with the downdates applied as
    GEMMs 192 at a time); ``python -m bench.obs_vs_chita --selfcheck`` checks the two against
    each other.

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

    ``H^-1`` comes from :func:`dense_hinv` (``route``); ``check_mem`` runs :func:`check_memory`
    on :func:`dense_bytes` first and raises :class:`DenseMemoryError` instead of allocating.
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

    if check_mem:
        check_memory(
            f"greedy OBS (p = {p})", dense_bytes("greedy", A.shape[0], p, block=block, chunk=chunk)
        )
    split: dict[str, float] = {}
    H = dense_hinv(A, ridge, route=route, times=split)
    buf = H.reshape(-1)  # flat storage; the stored matrix is buf[:m*m] viewed as m x m
    t_start = time.perf_counter()
    # Unconstrained minimiser; w_bar up to rounding when b = A w_bar.
    w = w_bar + _solve_h(A, ridge, A.T @ (b - A @ w_bar))
    diag = H.diagonal().copy()
    split["start"] = time.perf_counter() - t_start
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
    return GreedyPath(removed, seconds, setup, split)


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


# --------------------------------------------------------------------------------------------
# Dense-Hessian OBS baselines with a time split, for bench/obs_vs_chita.py
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pruned:
    """One pruned solution of a baseline and what it cost.

    ``seconds`` splits the wall time a user asking for this k alone would pay: ``build`` (Gram
    products: ``H`` or ``A A^T`` and ``W``), ``factor`` (Cholesky factorizations and inverses),
    ``prune`` (saliencies, selection, for greedy OBS the removal path down to k) and ``refit``
    (the exact minimiser on the kept support). Work shared between several k (the set-up of
    ``H^-1``, the greedy path) is counted in full for each k.
    """

    k: int
    w: np.ndarray  #: [p] float64, at most k nonzeros
    seconds: dict[str, float]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))


def _unconstrained_minimiser(
    A: np.ndarray, b: np.ndarray, w_bar: np.ndarray, Hinv: np.ndarray
) -> np.ndarray:
    """``w* = w_bar + H^-1 A^T (b - A w_bar)`` with the dense symmetric ``H^-1``."""
    r = b - A @ w_bar
    if not r.any():  # the pruning setting b = A w_bar, exactly
        return w_bar.copy()
    return w_bar + Hinv @ (A.T @ r)


def oneshot_obs_dense(
    A: Any,
    b: Any,
    ks: Sequence[int],
    ridge: float,
    w_bar: Any,
    *,
    route: str = "auto",
    check_mem: bool = True,
) -> list[Pruned]:
    """One-shot OBS with the dense inverse Hessian and the exact joint update, for each k in ks.

    1. build + factor: ``H^-1`` by :func:`dense_hinv` (``route``), made symmetric, and the
       unconstrained minimiser ``w*`` (``w_bar`` when ``b = A w_bar``).
    2. prune: saliencies ``w*_q^2 / [H^-1]_qq`` from the diagonal, the pruned set Q = the
       ``p - k`` smallest.
    3. refit: the exact joint OBS update ``w = w* - H^-1[:, Q] (H^-1[Q, Q])^-1 w*_Q`` (Cholesky
       of the dense ``|Q| x |Q|`` block; the product as one GEMV with ``H^-1`` on a vector that
       is zero off Q, so no p x |Q| copy). For this quadratic the joint update is the exact
       minimiser on the kept support S, so when ``k < |Q|`` the cheaper equivalent is taken:
       ``(A_S^T A_S + ridge I) w_S = A_S^T b + ridge w_bar_S``, a dense k x k Cholesky solve.
       ``info["update"]`` says which.

    ``check_mem``: :func:`check_memory` on :func:`dense_bytes` before any p x p allocation
    (raises :class:`DenseMemoryError`).
    """
    from scipy.linalg import cho_factor, cho_solve

    ridge = _check_ridge(ridge, "oneshot_obs_dense")
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w_bar = np.asarray(w_bar, dtype=np.float64)
    n, p = A.shape
    ks = [_check_k(k, p) for k in ks]
    if check_mem:
        check_memory(f"one-shot dense OBS (p = {p})", dense_bytes("oneshot", n, p, ks))
    shared: dict[str, float] = {}
    Hinv = dense_hinv(A, ridge, route=route, symmetric=True, times=shared)
    t0 = time.perf_counter()
    w_star = _unconstrained_minimiser(A, b, w_bar, Hinv)
    diag = Hinv.diagonal().copy()
    saliency = w_star * w_star / diag
    shared["prune"] = time.perf_counter() - t0
    out = []
    for k in ks:
        t0 = time.perf_counter()
        keep = top_k(saliency, k)
        mask = np.ones(p, dtype=bool)
        mask[keep] = False
        Q = np.flatnonzero(mask)
        t1 = time.perf_counter()
        if Q.size == 0:
            w, update = w_star.copy(), "none"
        elif Q.size <= k:
            M = Hinv[np.ix_(Q, Q)]  # symmetric: its F-order view M.T is factored in place
            z = np.zeros(p)
            z[Q] = cho_solve(cho_factor(M.T, overwrite_a=True, check_finite=False), w_star[Q])
            del M
            w = w_star - Hinv @ z
            w[Q] = 0.0
            update = "H^-1[Q,Q]"
        else:
            AS = A[:, keep]
            HS = AS.T @ AS
            HS[np.diag_indices(k)] += ridge
            rhs = AS.T @ b + ridge * w_bar[keep]
            w = np.zeros(p)
            w[keep] = cho_solve(cho_factor(HS.T, overwrite_a=True, check_finite=False), rhs)
            del AS, HS
            update = "H_SS"
        t2 = time.perf_counter()
        sec = {
            "build": shared["build"],
            "factor": shared["factor"],
            "prune": shared["prune"] + (t1 - t0),
            "refit": t2 - t1,
        }
        out.append(Pruned(k, w, sec, {"update": update, "route": route, "pruned": int(Q.size)}))
    return out


def greedy_obs_sweep(
    A: Any,
    b: Any,
    ks: Sequence[int],
    ridge: float,
    w_bar: Any,
    *,
    route: str = "auto",
    check_mem: bool = True,
    **kwargs: Any,
) -> list[Pruned]:
    """Greedy OBS (:func:`greedy_obs_path`, blocked) run once down to ``min(ks)``; for each k the
    support it had after ``p - k`` removals, refit by ``chita_core.backsolve`` (a no-op up to
    rounding: the OBS updates already leave the exact minimiser on the support, but the blocked
    path does not keep w for every k).

    Time split per k: ``build`` / ``factor`` of the set-up (:func:`dense_hinv`, plus the start
    point in ``build``), ``prune`` = path time from the end of the set-up to the (p - k)-th
    removal, ``refit`` = the backsolve.
    """
    w_bar = np.asarray(w_bar, dtype=np.float64)
    p = w_bar.shape[0]
    ks = [_check_k(k, p) for k in ks]
    n_remove = p - min(ks)
    path = greedy_obs_path(
        A,
        b,
        ridge,
        w_bar,
        n_remove,
        route=route,
        check_mem=check_mem,
        max_p=max(p, GREEDY_MAX_P),
        **kwargs,
    )
    split = path.setup_split or {}
    out = []
    for k in ks:
        t0 = time.perf_counter()
        w = support_backsolve(A, b, ridge, w_bar, path.removed[: p - k])
        t_bs = time.perf_counter() - t0
        at = float(path.seconds[p - k - 1]) if k < p else path.setup_seconds
        sec = {
            "build": split.get("build", 0.0) + split.get("start", 0.0),
            "factor": split.get("factor", 0.0),
            "prune": at - path.setup_seconds,
            "refit": t_bs,
        }
        out.append(Pruned(k, w, sec, {"route": route, "removed": p - k}))
    return out


def greedy_obs_rank1(
    A: Any, b: Any, ridge: float, w_bar: Any, n_remove: int, *, route: str = "auto"
) -> GreedyPath:
    """Greedy OBS, textbook form: one in-place rank-1 downdate of the dense ``H^-1`` per removal.

    Each step: saliency ``w_q^2 / [H^-1]_qq`` over the remaining weights (into a preallocated
    buffer), the column ``c = H^-1 e_q`` copied into a preallocated vector, the OBS update
    ``w -= (w_q / c_q) c``, and ``H^-1 -= c c^T / c_q`` by BLAS ``dsyr`` on the upper triangle,
    in place (F-order view of the buffer; no per-step allocation of vectors or matrices). The
    removed row and column become exactly zero, so the matrix stays the inverse Hessian of the
    remaining weights. O(p^2) memory traffic per step: the reference that
    :func:`greedy_obs_path` (the same arithmetic, blocked into GEMMs) is checked against, and
    the speed it is compared with at small p.
    """
    from scipy.linalg import blas

    t0 = time.perf_counter()
    ridge = _check_ridge(ridge, "greedy_obs_rank1")
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w_bar = np.asarray(w_bar, dtype=np.float64)
    p = A.shape[1]
    n_remove = int(n_remove)
    if not 0 <= n_remove < p:
        raise ValueError(f"`n_remove` must be in 0..{p - 1}, got {n_remove}")
    split: dict[str, float] = {}
    H = dense_hinv(A, ridge, route=route, symmetric=True, times=split)
    t_start = time.perf_counter()
    w = _unconstrained_minimiser(A, b, w_bar, H)
    split["start"] = time.perf_counter() - t_start
    F = H.T  # F-contiguous view of the symmetric buffer: dsyr updates it in place
    diag = np.diagonal(F)  # a view: tracks the downdates
    alive = np.ones(p, dtype=bool)
    sal = np.empty(p)
    c = np.empty(p)
    removed = np.empty(n_remove, dtype=np.int64)
    seconds = np.empty(n_remove)
    setup = time.perf_counter() - t0
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 on removed weights: masked
        for step in range(n_remove):
            np.multiply(w, w, out=sal)
            np.divide(sal, diag, out=sal)
            sal[~alive] = np.inf
            q = int(np.argmin(sal))
            c[: q + 1] = F[: q + 1, q]  # upper triangle of column q, then row q to the right
            c[q:] = F[q, q:]
            d = c[q]
            w -= (w[q] / d) * c
            w[q] = 0.0
            F = blas.dsyr(-1.0 / d, c, lower=0, a=F, overwrite_a=1)
            alive[q] = False
            removed[step] = q
            seconds[step] = time.perf_counter() - t0
    if not np.shares_memory(F, H):
        raise RuntimeError("dsyr copied the matrix instead of updating it in place")
    return GreedyPath(removed, seconds, setup, split)


def oneshot_obs_woodbury(
    A: Any, b: Any, ks: Sequence[int], ridge: float, w_bar: Any
) -> list[Pruned]:
    """One-shot OBS without any p x p matrix: the diagonal of ``H^-1`` by Woodbury
    (:func:`hinv_diagonal`, O(n^2 p)), then ``chita_core.backsolve`` on the kept support
    (Woodbury, O(n^2 k)). Same supports and objectives as :func:`oneshot_obs_dense` up to
    rounding (saliencies of ``w_bar``, which is ``w*`` when ``b = A w_bar``).

    Split: ``factor`` = the n x n Cholesky and its inverse, ``build`` = ``A A^T``, ``prune`` =
    the saliency pass and the selection, ``refit`` = the backsolve.
    """
    ridge = _check_ridge(ridge, "oneshot_obs_woodbury")
    A = np.asarray(A, dtype=np.float64)
    w_bar = np.asarray(w_bar, dtype=np.float64)
    n, p = A.shape
    ks = [_check_k(k, p) for k in ks]
    t0 = time.perf_counter()
    M = A @ A.T
    M[np.diag_indices(n)] += ridge
    t1 = time.perf_counter()
    Linv = np.linalg.solve(np.linalg.cholesky(M), np.eye(n))
    t2 = time.perf_counter()
    col_sq = np.einsum("ij,ij->j", A, A)
    d = np.empty(p)
    for j0 in range(0, p, 4096):
        Y = Linv @ A[:, j0 : j0 + 4096]
        np.einsum("ij,ij->j", Y, Y, out=d[j0 : j0 + 4096])
    d = np.maximum((1.0 - d) / ridge, 1.0 / (col_sq + ridge))
    saliency = w_bar * w_bar / d
    t3 = time.perf_counter()
    out = []
    for k in ks:
        t4 = time.perf_counter()
        keep = top_k(saliency, k)
        t5 = time.perf_counter()
        w = np.asarray(chita_core.backsolve(A, b, keep, ridge=ridge, w_bar=w_bar), np.float64)
        t6 = time.perf_counter()
        sec = {"build": t1 - t0, "factor": t2 - t1, "prune": t3 - t2 + t5 - t4, "refit": t6 - t5}
        out.append(Pruned(k, w, sec))
    return out


def magnitude_refit(A: Any, b: Any, ks: Sequence[int], ridge: float, w_bar: Any) -> list[Pruned]:
    """Magnitude pruning + exact refit (:func:`magnitude_backsolve`), prune / refit split."""
    w_bar = np.asarray(w_bar, dtype=np.float64)
    out = []
    for k in ks:
        t0 = time.perf_counter()
        keep = top_k(np.abs(w_bar), k)
        t1 = time.perf_counter()
        w = np.asarray(chita_core.backsolve(A, b, keep, ridge=ridge, w_bar=w_bar), np.float64)
        t2 = time.perf_counter()
        out.append(Pruned(k, w, {"build": 0.0, "factor": 0.0, "prune": t1 - t0, "refit": t2 - t1}))
    return out
