"""The CUDA backend's kernels, with the same names and contract as ``_core`` (see _core.pyi):
every op of ``backends/protocol.py``, the dense-algebra ones (``gather_columns``,
``support_gram``, ``swap_scores``) with cuBLAS through CuPy and the fused swap-score kernel.

``A`` is a :class:`~chita_core._device.DeviceMatrix` (never copied); vectors are float64 and
index arrays int64 CuPy arrays, contiguous, on A's device. Each call hands raw pointers to the
compiled ``_cuda`` module together with CuPy's current stream, which the solver sets to the
caller's stream, so the kernels order with the caller's own work. Only scalars come back to the
host (the step's objective, step size and candidate count).
"""

from __future__ import annotations

from typing import Any

import cupy as cp
import numpy as np

from .. import _cuda

__all__ = [
    "chita_step",
    "column_sqnorms",
    "device_count",
    "gather_columns",
    "gradient",
    "num_threads",
    "pool_eliminate",
    "row_top_mask",
    "support_gram",
    "support_matvec",
    "support_rmatvec",
    "swap_scores",
    "topk",
]

_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)
# Support columns gathered per panel (float64 [n, panel] workspace) for Gram products.
_PANEL = 2048


def device_count() -> int:
    return int(_cuda.device_count())


def num_threads() -> int:
    return 1


def _stream() -> int:
    return int(cp.cuda.get_current_stream().ptr)


def _ptr(x: Any, name: str, dtype: np.dtype, length: int | None = None) -> int:
    """Device pointer of a contiguous CuPy array of ``dtype`` (and ``length``), checked."""
    if not isinstance(x, cp.ndarray):
        raise TypeError(
            f"`{name}` must be a CuPy array, got {type(x).__module__}.{type(x).__name__}"
        )
    if x.dtype != dtype:
        raise TypeError(f"`{name}` must have dtype {dtype}, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"`{name}` must be contiguous")
    if length is not None and x.size != length:
        raise ValueError(f"`{name}` must have {length} entries, got {x.size}")
    return int(x.data.ptr)


def support_matvec(A: Any, idx: Any, x: Any, out: Any) -> None:
    m = idx.size
    _cuda.support_matvec(
        A, _ptr(idx, "idx", _I64), m, _ptr(x, "x", _F64, m), _ptr(out, "out", _F64, A.n), _stream()
    )


def support_rmatvec(A: Any, idx: Any, y: Any, out: Any) -> None:
    m = idx.size
    _cuda.support_rmatvec(
        A, _ptr(idx, "idx", _I64), m, _ptr(y, "y", _F64, A.n), _ptr(out, "out", _F64, m), _stream()
    )


def gradient(A: Any, r: Any, w: Any, w_bar: Any, ridge: float, out: Any) -> None:
    wp = 0 if w is None else _ptr(w, "w", _F64, A.p)
    wbp = 0 if w_bar is None else _ptr(w_bar, "w_bar", _F64, A.p)
    _cuda.gradient(
        A, _ptr(r, "r", _F64, A.n), wp, wbp, float(ridge), _ptr(out, "out", _F64, A.p), _stream()
    )


def column_sqnorms(A: Any, out: Any) -> None:
    _cuda.column_sqnorms(A, _ptr(out, "out", _F64, A.p), _stream())


def gather_columns(A: Any, idx: Any) -> Any:
    """A[:, idx] converted to float64, as an [n, len(idx)] CuPy array (F order)."""
    out = cp.empty((idx.size, A.n))  # row t = column idx[t] of A
    _cuda.gather_columns(A, _ptr(idx, "idx", _I64), idx.size, int(out.data.ptr), _stream())
    return out.T


def support_gram(A: Any, idx: Any, out: Any) -> None:
    """out = A_S A_S^T (n x n): panels of gathered columns, products through cuBLAS (CuPy)."""
    K = out.reshape(A.n, A.n)
    _ptr(out, "out", _F64, A.n * A.n)
    K[...] = 0.0
    for s0 in range(0, idx.size, _PANEL):
        V = gather_columns(A, idx[s0 : s0 + _PANEL])
        K += V @ V.T


def topk(v: Any, k: int, out: Any) -> None:
    if not 1 <= k <= v.size:
        raise ValueError(f"`k` must be in [1, {v.size}], got {k}")
    _cuda.topk(_ptr(v, "v", _F64), v.size, int(k), _ptr(out, "out", _I64, k), _stream())


def row_top_mask(s: Any, k: int, n: int, m: int, mask: Any) -> None:
    """``_core.row_top_mask`` on the GPU: ``mask`` (rows x d, bool) = each row's ``k`` largest
    ``s`` (k >= 0), or each group of ``m`` consecutive entries' ``n`` largest (k < 0)."""
    if s.ndim != 2 or mask.shape != s.shape:
        raise ValueError(f"`s` and `mask` must be 2-D of one shape, got {s.shape} and {mask.shape}")
    rows, d = s.shape
    if mask.dtype != np.bool_:
        raise TypeError(f"`mask` must have dtype bool, got {mask.dtype}")
    sp = _ptr(s, "s", _F64) if s.size else 0
    mp = _ptr(mask.view(cp.uint8), "mask", np.dtype(np.uint8)) if mask.size else 0
    _cuda.row_top_mask(sp, rows, d, int(k), int(n), int(m), mp, _stream())


def chita_step(
    A: Any,
    b: Any,
    w_bar: Any,
    ridge: float,
    g: Any,
    w: Any,
    r: Any,
    support: Any,
    f: float,
    cols: Any = None,
) -> tuple[float, float, int, bool]:
    P = A.p if cols is None else cols.size
    colp = 0 if cols is None else _ptr(cols, "cols", _I64)
    if cols is not None:
        _check_sorted_in_range(cols, "cols", A.p)
    _check_sorted_in_range(support, "support", P)
    f_new, tau, n_cand, changed = _cuda.chita_step(
        A,
        _ptr(b, "b", _F64, A.n),
        _ptr(w_bar, "w_bar", _F64, P),
        float(ridge),
        _ptr(g, "g", _F64, P),
        _ptr(w, "w", _F64, P),
        _ptr(r, "r", _F64, A.n),
        _ptr(support, "support", _I64),
        support.size,
        float(f),
        colp,
        P,
        _stream(),
    )
    return float(f_new), float(tau), int(n_cand), bool(changed)


def _check_sorted_in_range(idx: Any, name: str, bound: int) -> None:
    """The kernels index A (and the local vectors) with these: an out-of-range or unsorted
    index would read outside A on the device. One small reduction, a scalar back."""
    if idx.size == 0:
        return
    bad = (idx[0] < 0) | (idx[-1] >= bound)
    if idx.size > 1:
        bad = bad | cp.any(idx[1:] <= idx[:-1])
    if bool(bad):
        raise ValueError(f"`{name}` must be sorted, distinct and in [0, {bound})")


def pool_eliminate(G: Any, x: Any, count: int) -> Any:
    """Greedy OBS within a pool on the host (a few KB cross over once per block instead of a
    launch and a sync per removal): the C++ kernel where ``_core`` is built, else NumPy's."""
    try:
        from .cpp import pool_eliminate as eliminate
    except ImportError:  # pragma: no cover - _core is built with the CUDA module
        from .host import pool_eliminate as eliminate
    return cp.asarray(eliminate(cp.asnumpy(G), cp.asnumpy(x), count))


def swap_scores(G: Any, q: Any, s0: float, wv: Any, jn: Any, io: Any, lam: float) -> Any:
    """Fused form of ``backends.host.swap_scores``: change of f for every swap (io[a] leaves,
    jn[b] enters), [len(io), len(jn)]."""
    m = q.size
    jn = cp.ascontiguousarray(jn, dtype=cp.int64)
    io = cp.ascontiguousarray(io, dtype=cp.int64)
    out = cp.empty((io.size, jn.size))
    _cuda.swap_scores(
        _ptr(G, "G", _F64, m * m),
        m,
        _ptr(q, "q", _F64, m),
        float(s0),
        _ptr(wv, "wv", _F64, m),
        _ptr(jn, "jn", _I64),
        jn.size,
        _ptr(io, "io", _I64),
        io.size,
        float(lam),
        _ptr(out, "out", _F64),
        _stream(),
    )
    return out
