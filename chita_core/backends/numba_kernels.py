"""Numba CPU-fallback backend: the kernel contract of ``chita_core/_core.pyi`` in pure Python.

Used when the compiled ``_core`` module is missing, or on request. Every public function here has
the name, argument order and in-place semantics of its ``_core`` counterpart, so tests and the
solver driver can swap one backend for the other. With the host BLAS ops of ``backends/host.py``
(``gather_columns``, ``support_gram``, ``swap_scores``, as in the cpp backend) this module is a
complete backend of ``backends/protocol.py``. The step's thresholds and ladders are those of
``backends/constants.py`` (shared with the C++ and CUDA kernels), passed to the jitted step as
arguments: numba's cache would freeze module globals at their first compiled value.

Layout handling: ``A`` is never copied. A C-contiguous ``A`` (n, p) goes to the row kernels as is;
an F-contiguous ``A`` is passed as ``A.T``, a C-contiguous (p, n) view whose rows are the columns
of ``A``, to the column kernels. All accumulation is in float64 whatever the dtype of ``A``
(float32, float64, or float16 / bfloat16 read through integer views of their bits: ``_wide``).

Determinism: every reduction has a fixed summation order that does not depend on the thread
count (parallel loops only split independent outputs, or fixed chunks reduced in a fixed order),
so results are bit-identical from run to run on one machine.

Kernels compile on first use (``cache=True`` keeps them on disk afterwards).

Threads and fork: unless the user chose numba's threading layer (``NUMBA_THREADING_LAYER`` or
``NUMBA_THREADING_LAYER_PRIORITY`` in the environment, ``numba.config.THREADING_LAYER`` set in
code, or a layer already started by their own numba code), importing this module selects
``tbb`` when it is installed and works (thread- and fork-safe), else ``workqueue`` (fork-safe,
not thread-safe), never GNU OpenMP (not fork-safe). Under a layer that is not thread-safe every
call into a parallel kernel holds one module-level lock, so Python threads take turns instead of
aborting the process; the lock is renewed in a forked child. A child forked from a process that
had started the GNU OpenMP layer cannot run parallel numba code: the kernels raise RuntimeError.
"""

from __future__ import annotations

import operator
import os
import sys
import threading
import warnings

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from . import constants as _constants
from .host import gather_columns, support_gram, swap_scores

__all__ = [
    "chita_step",
    "column_sqnorms",
    "gather_columns",
    "gradient",
    "num_threads",
    "pool_eliminate",
    "support_gram",
    "support_matvec",
    "support_rmatvec",
    "swap_scores",
    "topk",
]

# fastmath for the dot-product loops only: reassociation lets LLVM vectorise float64 reductions
# (the order is fixed at compile time, so still deterministic). No nnan/ninf: the step logic
# compares against +inf.
_FM = {"reassoc", "contract"}
_JIT = dict(cache=True, nogil=True)

# Below this many multiply-adds a kernel runs serially (same idea as the C++ kParallelWork).
_PAR_WORK = 1 << 15
# Fixed chunking constants (they fix summation orders, so changing them changes the last bits).
_SMV_COLS_PER_CHUNK = 256  # F-order support mat-vec: columns per partial accumulator
_SMV_MAX_CHUNKS = 32
_SMV_ROWBLOCK = 512  # F-order support mat-vec with large n: rows per block
_SMV_ROWBLOCK_MIN_N = 4096
_GRAD_COLBLOCK = 2048  # C-order gradient: max columns per block
_RMV_CHUNK = 1024  # C-order transposed support mat-vec: support entries per chunk


# ----------------------------------------------------------------------------------------------
# Threading layer, thread and fork safety (set up before any parallel kernel compiles or runs)
# ----------------------------------------------------------------------------------------------


def _started_layer():
    """The threading layer numba has started in this process, or None if none yet."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def _tbb_works():
    """Whether numba's TBB layer would load (TBB installed, recent enough, extension loads)."""
    try:
        from numba.np.ufunc import parallel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check = getattr(parallel, "_check_tbb_version_compatible", None)
            if check is not None:
                check()
            from numba.np.ufunc import tbbpool  # noqa: F401
    except Exception:
        return False
    return True


def _choose_threading_layer():
    """Selects a fork-safe layer (tbb, else workqueue) unless the user already chose one."""
    if _started_layer() is not None:
        return  # started by the user's own numba code: theirs, and it cannot change now
    if "NUMBA_THREADING_LAYER" in os.environ or "NUMBA_THREADING_LAYER_PRIORITY" in os.environ:
        return
    if str(numba.config.THREADING_LAYER).lower() != "default":
        return  # set in code (numba.config.THREADING_LAYER = ...)
    numba.config.THREADING_LAYER = "tbb" if _tbb_works() else "workqueue"


_choose_threading_layer()

# How the wrappers enter a parallel kernel. _UNKNOWN until the first call looks at the layer
# numba started; _FREE: directly (thread-safe layer); _SERIAL: holding _kernel_lock (workqueue);
# _FORKED_OMP: refused (a child of a process that had started GNU OpenMP: numba would kill it).
_UNKNOWN, _FREE, _SERIAL, _FORKED_OMP = 0, 1, 2, 3
_mode = _UNKNOWN
_kernel_lock = threading.Lock()

_FORKED_OMP_MSG = (
    "chita_core's numba backend cannot run in this process: it was forked from a process that "
    "had started numba's GNU OpenMP threading layer ('omp'), which is not fork-safe (numba would "
    "terminate the process). Use backend='cpp', start worker processes with multiprocessing's "
    "'spawn' or 'forkserver' method, or choose a fork-safe layer (NUMBA_THREADING_LAYER=tbb or "
    "workqueue) before numba's first parallel call."
)


def _is_gnu_omp(layer):
    if layer != "omp":
        return False
    omppool = sys.modules.get("numba.np.ufunc.omppool")
    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


def _resolve_mode():
    global _mode
    numba.get_num_threads()  # starts numba's threading layer if nothing has yet
    if _mode == _UNKNOWN:
        _mode = _SERIAL if _started_layer() == "workqueue" else _FREE
    return _mode


def _after_fork_in_child():
    global _kernel_lock, _mode
    # The parent's lock may have been held by a thread that does not exist in the child.
    _kernel_lock = threading.Lock()
    if _is_gnu_omp(_started_layer()):
        _mode = _FORKED_OMP


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
# Imported for the first time in a forked child (the package was imported before the fork).
if sys.modules["chita_core"].forked_child and _is_gnu_omp(_started_layer()):
    _mode = _FORKED_OMP


def _run(kernel, *args):
    """kernel(*args), serialised or refused as the active threading layer requires."""
    mode = _mode
    if mode == _FREE:
        return kernel(*args)
    if mode == _UNKNOWN:
        mode = _resolve_mode()
    if mode == _SERIAL:
        with _kernel_lock:
            return kernel(*args)
    if mode == _FORKED_OMP:
        raise RuntimeError(_FORKED_OMP_MSG)
    return kernel(*args)


# ----------------------------------------------------------------------------------------------
# Storage of A: float32 / float64, or 16-bit codes (numba has no CPU float16 or bfloat16 type)
# ----------------------------------------------------------------------------------------------
# A 16-bit A reaches the kernels as an integer view of its bits, and the view's dtype names the
# format: uint16 holds bfloat16 codes, int16 holds IEEE float16 codes (``_mat``). Every read of an
# element of A goes through ``_wide``, which numba specialises per dtype at compile time, so the
# float kernels compile to what they were and the 16-bit ones decode in registers (exact: every
# 16-bit value is a float32). Products and sums stay float64 as for float32 A.


@intrinsic
def _bits_as_f32(typingctx, u):
    """The float32 whose bit pattern is the uint32 ``u`` (an LLVM bitcast; no memory trip)."""
    if u != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


def _wide(x):  # pragma: no cover - replaced by the overload inside jitted code
    """float64 value of one stored element of A (inside numba kernels only)."""
    raise NotImplementedError


@overload(_wide)
def _wide_overload(x):
    if isinstance(x, types.Float):
        return lambda x: np.float64(x)
    if x == types.uint16:  # bfloat16: the high half of a float32

        def from_bfloat16(x):
            return np.float64(_bits_as_f32(np.uint32(np.uint32(x) << np.uint32(16))))

        return from_bfloat16
    if x == types.int16:  # float16 (the same decoding as chita::f16 in csrc)

        def from_float16(x):
            h = np.uint32(np.uint16(x))
            sign = np.uint32((h & np.uint32(0x8000)) << np.uint32(16))
            em = np.uint32(h & np.uint32(0x7FFF))  # exponent and mantissa
            # Inf / NaN (payload kept); normal (exponent rebiased by 127 - 15); subnormal or 0
            # (em x 2^-24, exact in float32).
            special = np.uint32(np.uint32(em << np.uint32(13)) | np.uint32(0x7F800000))
            normal = np.uint32(np.uint32(em << np.uint32(13)) + np.uint32(112 << 23))
            code = special if em >= np.uint32(0x7C00) else normal
            mag = np.float64(_bits_as_f32(code))
            mag = mag if em >= np.uint32(0x0400) else np.float64(em) * 5.9604644775390625e-08
            return -mag if sign else mag

        return from_float16
    return None


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


@numba.njit(fastmath=_FM, **_JIT)
def _dot_row_vec(a, x):
    """sum_i float64(a[i]) * x[i] for two 1-D contiguous arrays of equal length."""
    s = 0.0
    for i in range(a.shape[0]):
        s += _wide(a[i]) * x[i]
    return s


@numba.njit(fastmath=_FM, **_JIT)
def _sumsq(x):
    """sum_i x[i]^2 in float64 (x may be float32)."""
    s = 0.0
    for i in range(x.shape[0]):
        a = _wide(x[i])
        s += a * a
    return s


@numba.njit(**_JIT)
def _check_idx(idx, p):
    """0: ok, 1: out of range, 2: not strictly increasing."""
    prev = -1
    for t in range(idx.shape[0]):
        j = idx[t]
        if j < 0 or j >= p:
            return 1
        if j <= prev:
            return 2
        prev = j
    return 0


# ----------------------------------------------------------------------------------------------
# support_matvec: out = A[:, idx] @ x
# ----------------------------------------------------------------------------------------------


@numba.njit(fastmath=_FM, parallel=True, **_JIT)
def _smv_cols(At, idx, x, out):
    """F order (At = A.T, (p, n) C-contiguous): reads only the rows idx of At."""
    n = At.shape[1]
    m = idx.shape[0]
    if m == 0:
        for i in range(n):
            out[i] = 0.0
        return
    if n >= _SMV_ROWBLOCK_MIN_N:
        # Parallel over row blocks; each output sums over the support in order.
        nb = (n + _SMV_ROWBLOCK - 1) // _SMV_ROWBLOCK
        for blk in prange(nb):
            i0 = blk * _SMV_ROWBLOCK
            i1 = min(n, i0 + _SMV_ROWBLOCK)
            acc = np.zeros(i1 - i0)
            for s in range(m):
                c = At[idx[s]]
                xs = x[s]
                for i in range(i0, i1):
                    acc[i - i0] += _wide(c[i]) * xs
            for i in range(i0, i1):
                out[i] = acc[i - i0]
        return
    # Small n: fixed chunks of the support, each with its own length-n accumulator, summed in
    # chunk order. The chunk count depends on m only, not on the thread count.
    nch = m // _SMV_COLS_PER_CHUNK
    if nch > _SMV_MAX_CHUNKS:
        nch = _SMV_MAX_CHUNKS
    if nch < 1 or m * n < _PAR_WORK:
        nch = 1
    if nch == 1:
        for i in range(n):
            out[i] = 0.0
        for s in range(m):
            c = At[idx[s]]
            xs = x[s]
            for i in range(n):
                out[i] += _wide(c[i]) * xs
        return
    part = np.zeros((nch, n))
    for ch in prange(nch):
        s0 = (ch * m) // nch
        s1 = ((ch + 1) * m) // nch
        acc = part[ch]
        for s in range(s0, s1):
            c = At[idx[s]]
            xs = x[s]
            for i in range(n):
                acc[i] += _wide(c[i]) * xs
    for i in range(n):
        sm = 0.0
        for ch in range(nch):
            sm += part[ch, i]
        out[i] = sm


@numba.njit(fastmath=_FM, parallel=True, **_JIT)
def _smv_rows(A, idx, x, out, xd):
    """C order. Dense support (m >= p/16): scatter x into xd (length p, float64) and stream whole
    rows; sparse support: gather the support entries of each row."""
    n = A.shape[0]
    p = A.shape[1]
    m = idx.shape[0]
    if m * 16 >= p:
        for j in range(p):
            xd[j] = 0.0
        for s in range(m):
            xd[idx[s]] = x[s]
        for i in prange(n):
            out[i] = _dot_row_vec(A[i], xd)
    else:
        for i in prange(n):
            row = A[i]
            sm = 0.0
            for s in range(m):
                sm += _wide(row[idx[s]]) * x[s]
            out[i] = sm


@numba.njit(**_JIT)
def _smv(M, fmode, idx, x, out, xd):
    if fmode:
        _smv_cols(M, idx, x, out)
    else:
        _smv_rows(M, idx, x, out, xd)


@numba.njit(**_JIT)
def _smv_local(M, fmode, cols, idx, x, out, xd):
    """_smv on the subproblem A[:, cols] (local indices idx); empty cols means all of A."""
    if cols.shape[0] == 0:
        _smv(M, fmode, idx, x, out, xd)
    else:
        gidx = np.empty(idx.shape[0], dtype=np.int64)
        for t in range(idx.shape[0]):
            gidx[t] = cols[idx[t]]
        _smv(M, fmode, gidx, x, out, xd)


# ----------------------------------------------------------------------------------------------
# support_rmatvec: out = A[:, idx]^T @ y
# ----------------------------------------------------------------------------------------------


@numba.njit(fastmath=_FM, parallel=True, **_JIT)
def _srmv_cols(At, idx, y, out):
    m = idx.shape[0]
    for s in prange(m):
        out[s] = _dot_row_vec(At[idx[s]], y)


@numba.njit(fastmath=_FM, parallel=True, **_JIT)
def _srmv_rows(A, idx, y, out):
    n = A.shape[0]
    m = idx.shape[0]
    nch = (m + _RMV_CHUNK - 1) // _RMV_CHUNK
    for ch in prange(nch):
        s0 = ch * _RMV_CHUNK
        s1 = min(m, s0 + _RMV_CHUNK)
        acc = np.zeros(s1 - s0)
        for i in range(n):
            row = A[i]
            yi = y[i]
            for s in range(s0, s1):
                acc[s - s0] += _wide(row[idx[s]]) * yi
        for s in range(s0, s1):
            out[s] = acc[s - s0]


# ----------------------------------------------------------------------------------------------
# gradient: out = A^T r + ridge (w - w_bar)
# ----------------------------------------------------------------------------------------------


@numba.njit(fastmath=_FM, parallel=True, **_JIT)
def _grad_cols(At, r, w, w_bar, ridge, out):
    p = At.shape[0]
    for j in prange(p):
        out[j] = _dot_row_vec(At[j], r) + ridge * (w[j] - w_bar[j])


@numba.njit(fastmath=_FM, parallel=True, **_JIT)
def _grad_rows(A, r, w, w_bar, ridge, out, bs):
    """C order. Column blocks of bs columns: every column sums over the rows in the same order
    whatever the block size, so bs only balances the threads."""
    n = A.shape[0]
    p = A.shape[1]
    nb = (p + bs - 1) // bs
    for blk in prange(nb):
        j0 = blk * bs
        ln = min(bs, p - j0)
        acc = np.zeros(ln)
        i = 0
        while i + 4 <= n:
            r0 = A[i, j0 : j0 + ln]
            r1 = A[i + 1, j0 : j0 + ln]
            r2 = A[i + 2, j0 : j0 + ln]
            r3 = A[i + 3, j0 : j0 + ln]
            y0 = r[i]
            y1 = r[i + 1]
            y2 = r[i + 2]
            y3 = r[i + 3]
            for t in range(ln):
                acc[t] += (_wide(r0[t]) * y0 + _wide(r1[t]) * y1) + (
                    _wide(r2[t]) * y2 + _wide(r3[t]) * y3
                )
            i += 4
        while i < n:
            r0 = A[i, j0 : j0 + ln]
            y0 = r[i]
            for t in range(ln):
                acc[t] += _wide(r0[t]) * y0
            i += 1
        for t in range(ln):
            out[j0 + t] = acc[t] + ridge * (w[j0 + t] - w_bar[j0 + t])


@numba.njit(fastmath=_FM, parallel=True, **_JIT)
def _sqnorms_cols(At, out):
    for j in prange(At.shape[0]):
        out[j] = _sumsq(At[j])


@numba.njit(fastmath=_FM, parallel=True, **_JIT)
def _sqnorms_rows(A, out, bs):
    """C order, column blocks of bs columns; every column sums its rows in order."""
    n = A.shape[0]
    p = A.shape[1]
    for blk in prange((p + bs - 1) // bs):
        j0 = blk * bs
        ln = min(bs, p - j0)
        acc = np.zeros(ln)
        for i in range(n):
            row = A[i, j0 : j0 + ln]
            for t in range(ln):
                a = _wide(row[t])
                acc[t] += a * a
        for t in range(ln):
            out[j0 + t] = acc[t]


# ----------------------------------------------------------------------------------------------
# topk: radix select on the bit pattern of |v|
# ----------------------------------------------------------------------------------------------

_DIGIT_BITS = 16
_NBINS = 1 << _DIGIT_BITS


@numba.njit(**_JIT)
def _pick_digit(hist, need):
    """Digit d holding the need-th largest key; returns (d, keys above d)."""
    above = 0
    d = _NBINS - 1
    while d > 0:
        h = hist[d]
        if above + h >= need:
            return d, above
        above += h
        d -= 1
    return 0, above


@numba.njit(**_JIT)
def _topk_impl(v, k, out, absbuf, cand, hist):
    """out[:k] = ascending indices of the k largest |v| (ties to the lower index).

    absbuf: float64 [p] scratch, cand: uint64 [p] scratch, hist: int64 [2**16] scratch."""
    p = v.shape[0]
    if k >= p:
        for i in range(p):
            out[i] = i
        return
    for i in range(p):
        absbuf[i] = abs(v[i])
    keys = absbuf.view(np.uint64)

    shift = np.uint64(64 - _DIGIT_BITS)
    dmask = np.uint64(_NBINS - 1)
    # Pass 1: top digit over all p keys.
    for d in range(_NBINS):
        hist[d] = 0
    for i in range(p):
        hist[np.int64(keys[i] >> shift)] += 1
    need = np.int64(k)
    d, above = _pick_digit(hist, need)
    need -= above
    prefix = np.uint64(d) << shift
    mask = ~np.uint64(0) << shift
    # Keep only keys sharing the prefix, then refine one digit at a time.
    nc = 0
    for i in range(p):
        key = keys[i]
        if (key & mask) == prefix:
            cand[nc] = key
            nc += 1
    for _ in range(64 // _DIGIT_BITS - 1):
        shift = shift - np.uint64(_DIGIT_BITS)
        for d in range(_NBINS):
            hist[d] = 0
        for t in range(nc):
            hist[np.int64((cand[t] >> shift) & dmask)] += 1
        d, above = _pick_digit(hist, need)
        need -= above
        prefix = prefix | (np.uint64(d) << shift)
        mask = ~np.uint64(0) << shift
        kept = 0
        for t in range(nc):
            key = cand[t]
            if (key & mask) == prefix:
                cand[kept] = key
                kept += 1
        nc = kept
    # prefix is the threshold key T: all keys > T are in, plus the `need` lowest-index keys == T.
    thresh = prefix
    pos = 0
    eq_left = need
    for i in range(p):
        key = keys[i]
        if key > thresh:
            out[pos] = i
            pos += 1
        elif key == thresh and eq_left > 0:
            out[pos] = i
            pos += 1
            eq_left -= 1


@numba.njit(**_JIT)
def _topk_entry(v, k, out):
    p = v.shape[0]
    _topk_impl(
        v, k, out, np.empty(p), np.empty(p, dtype=np.uint64), np.empty(_NBINS, dtype=np.int64)
    )


# ----------------------------------------------------------------------------------------------
# chita_step
# ----------------------------------------------------------------------------------------------


@numba.njit(**_JIT)
def _objective(r, w, w_bar, ridge):
    """0.5 ||r||^2 + 0.5 ridge ||w - w_bar||^2 (the ridge sum only when ridge != 0)."""
    f = 0.5 * _sumsq(r)
    if ridge != 0.0:
        s = 0.0
        for j in range(w.shape[0]):
            dlt = w[j] - w_bar[j]
            s += dlt * dlt
        f += 0.5 * ridge * s
    return f


@numba.njit(**_JIT)
def _eval_candidate(
    M,
    fmode,
    b,
    w_bar,
    ridge,
    wbar_sq,
    g,
    w,
    r,
    Ad,
    support,
    tau,
    v,
    cidx,
    cx,
    cr,
    didx,
    dval,
    delta,
    xd,
    absbuf,
    cand,
    hist,
    cols,
):
    """Objective of the candidate H_k(w - tau g); leaves its support in cidx, its values in cx
    and its residual A_cand cx - b in cr. Returns (f_c, support changed).

    The residual is formed as r - tau A d + A_in v_in - A_out v_out (v = w - tau g), reading only
    the columns that enter or leave; if as many as k move it is recomputed from scratch."""
    n = b.shape[0]
    p = w.shape[0]
    k = cidx.shape[0]
    for j in range(p):
        v[j] = w[j] - tau * g[j]
    _topk_impl(v, k, cidx, absbuf, cand, hist)
    for t in range(k):
        cx[t] = v[cidx[t]]
    # Sorted merge of the old and new supports: leaving (-v) and entering (+v) coordinates.
    nd = 0
    a = 0
    c = 0
    while a < k or c < k:
        if c == k or (a < k and support[a] < cidx[c]):
            didx[nd] = support[a]
            dval[nd] = -v[support[a]]
            nd += 1
            a += 1
        elif a == k or cidx[c] < support[a]:
            didx[nd] = cidx[c]
            dval[nd] = v[cidx[c]]
            nd += 1
            c += 1
        else:
            a += 1
            c += 1
    if nd == 0:
        for i in range(n):
            cr[i] = r[i] - tau * Ad[i]
    elif nd < k:
        _smv_local(M, fmode, cols, didx[:nd], dval[:nd], delta, xd)
        for i in range(n):
            cr[i] = r[i] - tau * Ad[i] + delta[i]
    else:
        _smv_local(M, fmode, cols, cidx, cx, cr, xd)
        for i in range(n):
            cr[i] -= b[i]
    fc = 0.5 * _sumsq(cr)
    if ridge != 0.0:
        # ||x - w_bar||^2 over all p: w_bar^2 off the candidate support, (v - w_bar)^2 on it.
        reg = wbar_sq
        for t in range(k):
            j = cidx[t]
            dj = cx[t] - w_bar[j]
            reg += dj * dj - w_bar[j] * w_bar[j]
        fc += 0.5 * ridge * reg
    return fc, nd > 0


@numba.njit(**_JIT)
def _chita_step_impl(
    M,
    fmode,
    b,
    w_bar,
    ridge,
    g,
    w,
    r,
    support,
    f,
    cols,
    stationary_tol,
    tau_chg_shrink,
    forward_steps,
    backtrack_steps,
    ladder_factor,
):
    """The step of the contract; the last five arguments are the shared constants STATIONARY,
    TAU_CHG_SHRINK, FORWARD_STEPS, BACKTRACK_STEPS and LADDER_FACTOR (backends/constants.py)."""
    n = b.shape[0]
    p = w.shape[0]  # local: len(cols) on a subproblem
    k = support.shape[0]
    inf = np.inf
    xd = np.empty(M.shape[1]) if not fmode else np.empty(0)  # C order: scatter over all of A

    # m = max |g_j| off the support; tau_chg = support-preserving bound (+inf when k == p).
    tau_chg = inf
    mx = 0.0
    if k < p:
        t = 0
        for j in range(p):
            if t < k and support[t] == j:
                t += 1
                continue
            a = abs(g[j])
            if a > mx:
                mx = a
        for t in range(k):
            i = support[t]
            wi = w[i]
            gi = g[i]
            agi = abs(gi)
            if wi * gi > 0.0:
                denom = agi + mx  # moving towards zero
            elif agi < mx:
                denom = mx - agi  # moving away, but slower than the strongest outsider grows
            else:
                continue
            if denom > 0.0:
                term = abs(wi) / denom
                if term < tau_chg:
                    tau_chg = term

    # Exact minimiser along d = g restricted to S.
    d = np.empty(k)
    for t in range(k):
        d[t] = g[support[t]]
    Ad = np.empty(n)
    _smv_local(M, fmode, cols, support, d, Ad, xd)
    dd = _sumsq(d)
    curv = _sumsq(Ad) + ridge * dd
    # At an exact refit the gradient on S is rounding noise: treat S as stationary (as the C++).
    dmax = 0.0
    for t in range(k):
        if abs(d[t]) > dmax:
            dmax = abs(d[t])
    stationary = dmax <= stationary_tol * mx
    if not stationary and dd > 0.0 and curv > 0.0:
        tau_star = dd / curv
    else:
        tau_star = 0.0

    if tau_star > 0.0 and tau_star < tau_chg:
        for t in range(k):
            i = support[t]
            w[i] -= tau_star * d[t]
        for i in range(n):
            r[i] -= tau_star * Ad[i]
        return _objective(r, w, w_bar, ridge), tau_star, 0, False

    # Hard-thresholded candidates.
    wbar_sq = _sumsq(w_bar) if ridge != 0.0 else 0.0
    v = np.empty(p)
    absbuf = np.empty(p)
    cand = np.empty(p, dtype=np.uint64)
    hist = np.empty(_NBINS, dtype=np.int64)
    didx = np.empty(2 * k, dtype=np.int64)
    dval = np.empty(2 * k)
    delta = np.empty(n)
    cidx = np.empty(k, dtype=np.int64)
    cx = np.empty(k)
    cr = np.empty(n)
    bidx = np.empty(k, dtype=np.int64)
    bx = np.empty(k)
    br = np.empty(n)

    n_cand = 0
    accepted = False
    best_changed = False
    tau_best = 0.0
    f_best = f
    # Ladder 0, forward doubling from just below the support-changing step: keep improving
    # candidates, stop at the first that does not. Ladder 1, only if nothing improved (e.g.
    # tau_chg == 0 because the support holds zeros): backtrack from tau_star and stop at the
    # first improvement.
    for ladder in range(2):
        if ladder == 0:
            tau = tau_star if tau_chg == inf else tau_chg / tau_chg_shrink
            steps = forward_steps
        else:
            if accepted:
                break
            tau = tau_star
            steps = backtrack_steps
        if not tau > 0.0:
            continue
        for _ in range(steps):
            fc, chg = _eval_candidate(
                M,
                fmode,
                b,
                w_bar,
                ridge,
                wbar_sq,
                g,
                w,
                r,
                Ad,
                support,
                tau,
                v,
                cidx,
                cx,
                cr,
                didx,
                dval,
                delta,
                xd,
                absbuf,
                cand,
                hist,
                cols,
            )
            n_cand += 1
            improved = fc < f_best
            if improved:
                f_best = fc
                tau_best = tau
                accepted = True
                best_changed = chg
                cidx, bidx = bidx, cidx
                cx, bx = bx, cx
                cr, br = br, cr
            if improved == (ladder == 1):
                break
            if ladder == 0:
                tau *= ladder_factor
            else:
                tau /= ladder_factor
    if not accepted:
        return f, 0.0, n_cand, False

    for t in range(k):
        w[support[t]] = 0.0
    for t in range(k):
        support[t] = bidx[t]
        w[bidx[t]] = bx[t]
    for i in range(n):
        r[i] = br[i]
    return f_best, tau_best, n_cand, best_changed


# ----------------------------------------------------------------------------------------------
# Python wrappers: cheap validation, then the kernels
# ----------------------------------------------------------------------------------------------


# The integer view that carries each 16-bit format into the kernels (see ``_wide``).
_CODES = {"bfloat16": np.uint16, "float16": np.int16}


def _mat(A, name="A"):
    """(M, fmode): M is A (C order) or A.T (F order), a C-contiguous 2-D view. Never copies."""
    if not isinstance(A, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy.ndarray, got {type(A).__name__}")
    if A.dtype.itemsize == 2 and A.dtype.name in _CODES:
        A = A.view(_CODES[A.dtype.name])  # same strides and contiguity: a view of the bits
    elif A.dtype != np.float32 and A.dtype != np.float64:
        raise TypeError(
            f"`{name}` must have dtype float32, float64, float16 or bfloat16, got {A.dtype}"
        )
    if A.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (n, p), got {A.ndim}-D with shape {A.shape}")
    if A.flags.c_contiguous:
        return A, False
    if A.flags.f_contiguous:
        return A.T, True
    raise ValueError(
        f"`{name}` must be C- or F-contiguous (it is never copied); got strides {A.strides}"
    )


def _vec(x, name, length, what="", writable=False):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float64:
        raise TypeError(f"`{name}` must have dtype float64, got {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {x.shape}")
    if x.shape[0] != length:
        raise ValueError(f"`{name}` has length {x.shape[0]} but {what} is {length}")
    if not x.flags.c_contiguous:
        raise ValueError(f"`{name}` must be C-contiguous")
    if writable and not x.flags.writeable:
        raise ValueError(f"`{name}` must be writeable")
    return x


def _index(x, name, p, length=None, what="", writable=False):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.int64:
        raise TypeError(f"`{name}` must have dtype int64, got {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {x.shape}")
    if length is not None and x.shape[0] != length:
        raise ValueError(f"`{name}` has length {x.shape[0]} but {what} is {length}")
    if not x.flags.c_contiguous:
        raise ValueError(f"`{name}` must be C-contiguous")
    if writable and not x.flags.writeable:
        raise ValueError(f"`{name}` must be writeable")
    code = _check_idx(x, p)
    if code == 1:
        raise ValueError(f"`{name}` has entries outside [0, {p})")
    if code == 2:
        raise ValueError(f"`{name}` must be sorted ascending with unique entries")
    return x


def _scalar(x, name):
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a real number, got bool")
    try:
        return float(x)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a real number, got {type(x).__name__}") from None


def _shape(A):
    return A.shape[0], A.shape[1]


def support_matvec(A, idx, x, out):
    """out[i] = sum_j A[i, idx[j]] * x[j]   # A [n, p], idx [m], x [m], out [n]"""
    M, fmode = _mat(A)
    n, p = _shape(A)
    _index(idx, "idx", p)
    m = idx.shape[0]
    _vec(x, "x", m, "the length of `idx`")
    _vec(out, "out", n, "the number of rows of `A`", writable=True)
    if fmode:
        _run(_smv_cols, M, idx, x, out)
    else:
        _run(_smv_rows, M, idx, x, out, np.empty(p) if m * 16 >= p else np.empty(0))


def support_rmatvec(A, idx, y, out):
    """out[j] = sum_i A[i, idx[j]] * y[i]   # A [n, p], idx [m], y [n], out [m]"""
    M, fmode = _mat(A)
    n, p = _shape(A)
    _index(idx, "idx", p)
    m = idx.shape[0]
    _vec(y, "y", n, "the number of rows of `A`")
    _vec(out, "out", m, "the length of `idx`", writable=True)
    if fmode:
        _run(_srmv_cols, M, idx, y, out)
    else:
        _run(_srmv_rows, M, idx, y, out)


def gradient(A, r, w, w_bar, ridge, out):
    """out = A^T r + ridge * (w - w_bar)   # A [n, p], r [n], w [p], w_bar [p], out [p]"""
    M, fmode = _mat(A)
    n, p = _shape(A)
    _vec(r, "r", n, "the number of rows of `A`")
    _vec(w, "w", p, "the number of columns of `A`")
    _vec(w_bar, "w_bar", p, "the number of columns of `A`")
    ridge = _scalar(ridge, "ridge")
    _vec(out, "out", p, "the number of columns of `A`", writable=True)
    if fmode:
        _run(_grad_cols, M, r, w, w_bar, ridge, out)
    else:
        nt = numba.get_num_threads()
        want = -(-p // (4 * nt))
        bs = _GRAD_COLBLOCK if want >= _GRAD_COLBLOCK else max(64, -(-want // 64) * 64)
        _run(_grad_rows, M, r, w, w_bar, ridge, out, bs)


def column_sqnorms(A, out):
    """out[j] = sum_i A[i, j]^2   # A [n, p], out [p]"""
    M, fmode = _mat(A)
    _, p = _shape(A)
    _vec(out, "out", p, "the number of columns of `A`", writable=True)
    if fmode:
        _run(_sqnorms_cols, M, out)
    else:
        _run(_sqnorms_rows, M, out, _GRAD_COLBLOCK)


def topk(v, k, out):
    """out = sorted indices of the k largest |v|; ties go to the lower index. 1 <= k <= p."""
    if not isinstance(v, np.ndarray):
        raise TypeError(f"`v` must be a numpy.ndarray, got {type(v).__name__}")
    if v.dtype != np.float64:
        raise TypeError(f"`v` must have dtype float64, got {v.dtype}")
    if v.ndim != 1:
        raise ValueError(f"`v` must be 1-D, got shape {v.shape}")
    if not v.flags.c_contiguous:
        raise ValueError("`v` must be C-contiguous")
    p = v.shape[0]
    if isinstance(k, (bool, np.bool_)):
        raise TypeError("`k` must be an integer, got bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"`k` must be an integer, got {type(k).__name__}") from None
    if not 1 <= k <= p:
        raise ValueError(f"`k` must be in 1..{p} (the length of `v`), got {k}")
    if not isinstance(out, np.ndarray):
        raise TypeError(f"`out` must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.int64:
        raise TypeError(f"`out` must have dtype int64, got {out.dtype}")
    if out.ndim != 1 or out.shape[0] != k:
        raise ValueError(f"`out` must have shape ({k},) (k), got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("`out` must be C-contiguous and writeable")
    _topk_entry(v, k, out)


def chita_step(A, b, w_bar, ridge, g, w, r, support, f, cols=None):
    """One CHITA line-search step; updates w, r, support in place. With ``cols`` the step runs
    on A[:, cols] (local vectors of length len(cols)).

    Returns (f_new, tau, n_candidates, support_changed)."""
    M, fmode = _mat(A)
    n, p = _shape(A)
    if cols is None:
        cols = np.empty(0, dtype=np.int64)
        what = "the number of columns of `A`"
    else:
        _index(cols, "cols", p)
        p = cols.shape[0]
        what = "the length of `cols`"
    _vec(b, "b", n, "the number of rows of `A`")
    _vec(w_bar, "w_bar", p, what)
    ridge = _scalar(ridge, "ridge")
    _vec(g, "g", p, what)
    _vec(w, "w", p, what, writable=True)
    _vec(r, "r", n, "the number of rows of `A`", writable=True)
    _index(support, "support", p, writable=True)
    if support.shape[0] < 1:
        raise ValueError(f"`support` must have length k in 1..{p}, got 0")
    f = _scalar(f, "f")
    f_new, tau, n_cand, changed = _run(
        _chita_step_impl,
        M,
        fmode,
        b,
        w_bar,
        ridge,
        g,
        w,
        r,
        support,
        f,
        cols,
        # Read at each call (never frozen into the compiled kernel or its on-disk cache).
        _constants.STATIONARY,
        _constants.TAU_CHG_SHRINK,
        _constants.FORWARD_STEPS,
        _constants.BACKTRACK_STEPS,
        _constants.LADDER_FACTOR,
    )
    return float(f_new), float(tau), int(n_cand), bool(changed)


def num_threads():
    """Threads the kernels use (numba's current thread count)."""
    return int(numba.get_num_threads())


# ----------------------------------------------------------------------------------------------
# Greedy OBS within a pool (the maths: backends/host.py pool_eliminate)
# ----------------------------------------------------------------------------------------------


@numba.njit(**_JIT)
def _pool_eliminate(G, x, count, order):
    c = x.shape[0]
    tiny = np.finfo(np.float64).eps
    live = np.ones(c, dtype=np.bool_)
    g = np.empty(c)
    for t in range(count):
        q = -1
        best = np.inf
        for i in range(c):
            if not live[i]:
                continue
            s = x[i] * x[i] / max(1.0 - G[i, i], tiny)
            if q < 0 or s < best:  # (NaN never compares less: it ranks as +inf)
                q = i
                best = np.inf if np.isnan(s) else s
        order[t] = q
        live[q] = False
        dq = max(1.0 - G[q, q], tiny)
        step = x[q] / dq
        for i in range(c):
            g[i] = G[i, q]
        for i in range(c):
            x[i] += g[i] * step
            gi = g[i] / dq
            for j in range(c):
                G[i, j] += gi * g[j]


def pool_eliminate(G, x, count):
    """Pool indices of ``count`` greedy removals, in order (host.pool_eliminate's maths; G and x
    are left unchanged; a stack G [batch, c, c] gives [batch, count])."""
    if np.ndim(G) == 3:
        return np.stack([pool_eliminate(g, v, count) for g, v in zip(G, x, strict=True)])
    G = np.array(G, dtype=np.float64, order="C")
    x = np.array(x, dtype=np.float64)
    if G.ndim != 2 or G.shape != (x.size, x.size):
        raise ValueError(f"`G` must be ({x.size}, {x.size}) to match `x`, got {G.shape}")
    count = operator.index(count)
    if not 0 <= count <= x.size:
        raise ValueError(f"`count` must lie in [0, {x.size}], got {count}")
    order = np.empty(count, dtype=np.int64)
    _pool_eliminate(G, x, count, order)
    return order
