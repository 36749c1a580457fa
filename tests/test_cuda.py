"""The CUDA backend: every kernel against the float64 reference, the whole solver against the
CPU backend, and the interop rules (no copy of A, caller's stream and library).

Everything but the first test needs a GPU, CuPy and the compiled ``_cuda`` module, and skips
with the registry's reason elsewhere (CI has nvcc but no GPU: it compiles the module and runs the
first test only)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import reference as ref
from conftest import layout, tie_free_vector

import chita_core
from chita_core import _core


def test_cuda_module_imports_without_a_gpu():
    """Where the build compiled _cuda, importing it (and chita_core) must work with no GPU."""
    if "_cuda built" not in _core.build_info:
        pytest.skip(f"_cuda not part of this build: {_core.build_info}")
    cuda = importlib.import_module("chita_core._cuda")
    count = cuda.device_count()
    assert isinstance(count, int) and count >= 0
    assert "CUDA" in cuda.build_info
    reason = chita_core.available_backends()["cuda"]
    assert (reason is None) == (count > 0 and importlib.util.find_spec("cupy") is not None)


_REASON = chita_core.available_backends()["cuda"]
gpu = pytest.mark.skipif(_REASON is not None, reason=f"CUDA backend unavailable: {_REASON}")

# Storage dtypes; half types accumulate in float32 inside a thread.
DTYPES = ["float64", "float32", "float16", "bfloat16"]
RTOL = {"float64": 1e-12, "float32": 1e-12, "float16": 2e-6, "bfloat16": 2e-6}
SHAPES = [(30, 50), (40, 12), (1, 20), (25, 1), (64, 700), (300, 5000)]


def _device_A(A64: np.ndarray, dtype: str, order: str):
    """(device array, DeviceMatrix, exact float64 values the kernels read) for A64 rounded to
    ``dtype``; bfloat16 goes through torch (CuPy has no bfloat16)."""
    import cupy as cp

    from chita_core._device import device_matrix

    if dtype == "bfloat16":
        import torch

        t = torch.from_numpy(layout(A64, order).copy()).to(torch.bfloat16)
        t = t.contiguous() if order == "C" else t.t().contiguous().t()
        dev = t.cuda()
        exact = dev.cpu().to(torch.float64).numpy()
    else:
        host = layout(A64.astype(dtype), order)
        dev = cp.asfortranarray(host) if order == "F" else cp.ascontiguousarray(host)
        exact = host.astype(np.float64)
    return dev, device_matrix(dev)[0], exact


def _k():
    from chita_core.backends import cuda_kernels

    return cuda_kernels


def _close(actual, desired, rtol, scale, msg=""):
    import cupy as cp

    np.testing.assert_allclose(
        cp.asnumpy(actual), desired, rtol=rtol, atol=rtol * max(scale, 1e-300), err_msg=msg
    )


@gpu
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matvec_family(dtype, order, shape):
    import cupy as cp

    n, p = shape
    rng = np.random.default_rng(1)
    _, A, exact = _device_A(rng.standard_normal((n, p)), dtype, order)
    kern = _k()
    for label, idx in ref.idx_variants(p).items():
        x = rng.standard_normal(idx.size)
        out = cp.full(n, cp.nan)
        kern.support_matvec(A, cp.asarray(idx), cp.asarray(x), out)
        scale = float(np.max(np.abs(exact[:, idx]) @ np.abs(x), initial=0.0))
        _close(out, ref.support_matvec(exact, idx, x), RTOL[dtype], scale, label)
        y = rng.standard_normal(n)
        out = cp.full(idx.size, cp.nan)
        kern.support_rmatvec(A, cp.asarray(idx), cp.asarray(y), out)
        scale = float(np.max(np.abs(exact[:, idx]).T @ np.abs(y), initial=0.0))
        _close(out, ref.support_rmatvec(exact, idx, y), RTOL[dtype], scale, label)
    r, w, w_bar = rng.standard_normal(n), rng.standard_normal(p), rng.standard_normal(p)
    g = cp.full(p, cp.nan)
    kern.gradient(A, cp.asarray(r), cp.asarray(w), cp.asarray(w_bar), 0.3, g)
    scale = float(np.max(np.abs(exact).T @ np.abs(r)))
    _close(g, ref.gradient(exact, r, w, w_bar, 0.3), RTOL[dtype], scale, "gradient")
    kern.gradient(A, cp.asarray(r), None, None, 0.0, g)
    _close(g, exact.T @ r, RTOL[dtype], scale, "A^T r")
    h = cp.full(p, cp.nan)
    kern.column_sqnorms(A, h)
    _close(h, (exact**2).sum(axis=0), RTOL[dtype], float(np.max((exact**2).sum(axis=0))))
    for label, idx in ref.idx_variants(p).items():
        K = cp.full((n, n), cp.nan)
        kern.support_gram(A, cp.asarray(idx), K)
        As = exact[:, idx]
        _close(K, As @ As.T, RTOL[dtype], float(np.max(np.abs(As) @ np.abs(As).T, initial=0)))
        X = kern.gather_columns(A, cp.asarray(idx))
        assert X.dtype == cp.float64 and X.shape == (n, idx.size)
        np.testing.assert_array_equal(cp.asnumpy(X), As, err_msg=label)  # a conversion: exact


@gpu
@pytest.mark.parametrize("p", [1, 7, 1000, 300_001])
def test_topk_matches_cpu_exactly(p):
    import cupy as cp

    rng = np.random.default_rng(p)
    cases = {
        "tie-free": tie_free_vector(rng, p),
        "ties": rng.integers(-3, 4, size=p).astype(np.float64),  # many equal |v|, zeros
        "zeros": np.zeros(p),
    }
    for label, v in cases.items():
        for k in sorted({1, max(1, p // 10), max(1, p // 2), p}):
            out = cp.empty(k, dtype=cp.int64)
            _k().topk(cp.asarray(v), k, out)
            expected = np.empty(k, dtype=np.int64)
            _core.topk(v, k, expected)
            np.testing.assert_array_equal(cp.asnumpy(out), expected, err_msg=f"{label} k={k}")
            np.testing.assert_array_equal(expected, ref.topk(v, k))


@gpu
@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (17, 300), (64, 4096), (5, 50_000)])
def test_row_top_mask_matches_cpu_exactly(shape):
    """The layer-wise row and N:M masks: the CUDA kernel = the C++ kernel = the NumPy reference,
    with ties, NaN, -0.0 and negative scores; through Pattern.project on CuPy scores too."""
    import cupy as cp

    from chita_core.layer._problem import Pattern

    rows, d = shape
    rng = np.random.default_rng(d)
    ties = rng.integers(-3, 4, size=shape).astype(np.float64)
    ties[rng.random(shape) < 0.05] = np.nan
    ties[ties == 0] = np.where(rng.random(int((ties == 0).sum())) < 0.5, -0.0, 0.0)
    cases = {"normal": rng.standard_normal(shape), "ties": ties}
    for label, s in cases.items():
        patterns = [(k, 0, 0) for k in sorted({0, 1, d // 3, d // 2, d - 1, d})]
        patterns += [(-1, n, m) for n, m in [(2, 4), (1, 4), (4, 8), (0, 2)] if d % m == 0]
        for k, n, m in patterns:
            expected = np.empty(shape, dtype=bool)
            _core.row_top_mask(s, k, n, m, expected)
            out = cp.empty(shape, dtype=cp.bool_)
            _k().row_top_mask(cp.asarray(s), k, n, m, out)
            np.testing.assert_array_equal(cp.asnumpy(out), expected, err_msg=f"{label} {k} {n}:{m}")
            kind = "row" if k >= 0 else "nm"
            prob = Pattern(kind=kind, rows=rows, d=d, keep=max(k, 0), n=n, m=m)
            np.testing.assert_array_equal(prob.project_numpy(s), expected)
            np.testing.assert_array_equal(cp.asnumpy(prob.project(cp.asarray(s))), expected)


@gpu
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_chita_step_matches_cpu(dtype, order, ridge):
    """Same decisions (support, step) and values as the C++ step, with and without cols."""
    import cupy as cp

    n, p, k = 80, 600, 30
    rng = np.random.default_rng(3)
    _, A, exact = _device_A(rng.standard_normal((n, p)) / np.sqrt(n), dtype, order)
    host = layout(exact.astype(dtype), order)
    b = rng.standard_normal(n)
    w_bar = tie_free_vector(rng, p)
    for cols in (None, np.sort(rng.choice(p, size=200, replace=False)).astype(np.int64)):
        P = p if cols is None else cols.size
        wb = w_bar if cols is None else w_bar[cols]
        support = np.sort(rng.choice(P, size=k, replace=False)).astype(np.int64)
        w = np.zeros(P)
        w[support] = tie_free_vector(rng, k)
        glob = support if cols is None else cols[support]
        r = exact[:, glob] @ w[support] - b
        g_full = exact.T @ r
        g = (g_full if cols is None else g_full[cols]) + ridge * (w - wb)
        f = ref.objective(exact[:, cols] if cols is not None else exact, b, w, ridge, wb)
        host_state = (w.copy(), r.copy(), support.copy())
        cpu = _core.chita_step(host, b, wb, ridge, g, *host_state, f, cols)
        dw, dr, ds = cp.asarray(w), cp.asarray(r), cp.asarray(support)
        dcols = None if cols is None else cp.asarray(cols)
        gpu_res = _k().chita_step(
            A, cp.asarray(b), cp.asarray(wb), ridge, cp.asarray(g), dw, dr, ds, f, dcols
        )
        assert gpu_res[2:] == tuple(cpu[2:])
        np.testing.assert_allclose(gpu_res[:2], cpu[:2], rtol=1e-10)
        np.testing.assert_array_equal(cp.asnumpy(ds), host_state[2])
        np.testing.assert_allclose(cp.asnumpy(dw), host_state[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cp.asnumpy(dr), host_state[1], rtol=1e-10, atol=1e-12)


@gpu
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("m", [5, 40, 150])  # m <= n (normal equations) and m > n (Woodbury)
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_backsolve(dtype, order, m, ridge):
    """The public backsolve on CuPy arrays: its dense algebra runs on the device through the
    contract ops (gather_columns, support_gram; the backend has no backsolve kernel)."""
    import cupy as cp

    n, p = 60, 300
    if ridge == 0.0 and m > n:
        pytest.skip("many minimisers without ridge: covered on the host")
    rng = np.random.default_rng(4)
    dev, _, exact = _device_A(rng.standard_normal((n, p)), dtype, order)
    b = rng.standard_normal(n).astype(dtype)
    w_bar = rng.standard_normal(p).astype(dtype)
    idx = np.sort(rng.choice(p, size=m, replace=False)).astype(np.int64)
    w = chita_core.backsolve(dev, cp.asarray(b), idx, ridge=ridge, w_bar=cp.asarray(w_bar))
    assert isinstance(w, cp.ndarray) and w.dtype == np.dtype(dtype) and w.shape == (p,)
    off = np.ones(p, dtype=bool)
    off[idx] = False
    assert not cp.asnumpy(w)[off].any()
    expected = ref.backsolve(exact, b.astype(np.float64), idx, w_bar[idx].astype(np.float64), ridge)
    rtol = 1e-8 if dtype == "float64" else 2e-6  # w comes back in A's dtype
    _close(w[cp.asarray(idx)].astype(cp.float64), expected, rtol, float(np.max(np.abs(expected))))


@gpu
def test_swap_scores_match_numpy():
    import cupy as cp

    from chita_core.backends.host import swap_scores

    rng = np.random.default_rng(5)
    m = 50
    V = rng.standard_normal((20, m))
    K = np.eye(20) * 0.5 + V[:, :10] @ V[:, :10].T
    Kinv = np.linalg.inv(K)
    G, q, wv = V.T @ Kinv @ V, V.T @ Kinv @ rng.standard_normal(20), rng.standard_normal(m)
    jn, io = np.arange(0, 30), np.arange(30, 50)
    expected = swap_scores(G, q, 1.7, wv, jn, io, 0.5)
    got = _k().swap_scores(
        cp.asarray(G), cp.asarray(q), 1.7, cp.asarray(wv), cp.asarray(jn), cp.asarray(io), 0.5
    )
    _close(got, expected, 1e-12, float(np.max(np.abs(expected))))


# ----------------------------------------------------------------------------------------------
# The solver
# ----------------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "options",
    [{"active_set": False, "refine": False, "swaps": False}, {}],
    ids=["plain", "default"],
)
def test_solver_agrees_with_cpu(make_problem, dtype, order, options):
    import cupy as cp

    n, p, k = 100, 2000, 150
    prob = make_problem(n, p, dtype=np.dtype(dtype), order=order, seed=7, pruning=True)
    cpu = chita_core.iht(prob.A, prob.b, k, ridge=0.05, w_bar=prob.w_bar, **options)
    A = cp.asfortranarray(prob.A) if order == "F" else cp.ascontiguousarray(prob.A)
    res = chita_core.iht(
        A, cp.asarray(prob.b), k, ridge=0.05, w_bar=cp.asarray(prob.w_bar), **options
    )
    assert res.backend == "cuda" and isinstance(res.w, cp.ndarray)
    assert res.w.dtype == prob.A.dtype and res.support.dtype == cp.int64
    np.testing.assert_array_equal(cp.asnumpy(res.support), cpu.support)
    f_ref = ref.objective(
        prob.A64, prob.b64, cp.asnumpy(res.w).astype(np.float64), 0.05, prob.w_bar64
    )
    assert res.objective == pytest.approx(cpu.objective, rel=1e-8)
    assert res.objective == pytest.approx(f_ref, rel=1e-5)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_cuda_input_no_copy_caller_stream(make_problem, dtype):
    torch = pytest.importorskip("torch")
    from chita_core._device import device_matrix

    n, p, k = 64, 800, 80
    prob = make_problem(n, p, seed=8, pruning=True)
    tdt = getattr(torch, dtype)
    A = torch.from_numpy(np.asfortranarray(prob.A)).to(tdt).cuda()
    A = A.t().contiguous().t()  # F order
    w_bar = torch.from_numpy(prob.w_bar).to(tdt).cuda()
    b = (A.double() @ w_bar.double()).to(tdt)
    assert device_matrix(A)[0].ptr == A.data_ptr()  # the kernels read the caller's memory
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        res = chita_core.iht(A, b, k, ridge=0.01, w_bar=w_bar)
        w = chita_core.backsolve(A, b, res.support, ridge=0.01, w_bar=w_bar)
        f = chita_core.objective(A, b, res.w, ridge=0.01, w_bar=w_bar)
    stream.synchronize()
    assert isinstance(res.w, torch.Tensor) and res.w.device == A.device and res.w.dtype == tdt
    assert int((res.w != 0).sum()) <= k
    A64, wb64 = A.double().cpu().numpy(), w_bar.double().cpu().numpy()
    b64, S = b.double().cpu().numpy(), res.support.cpu().numpy()
    expected = ref.backsolve(A64, b64, S, wb64[S], 0.01)
    # w comes back in A's (half) dtype: compare at that precision.
    np.testing.assert_allclose(w[res.support].double().cpu().numpy(), expected, rtol=1e-2)
    f_ref = ref.objective(A64, b64, res.w.double().cpu().numpy(), 0.01, wb64)
    assert f == pytest.approx(f_ref, rel=1e-4)


@gpu
def test_device_errors(make_problem):
    import cupy as cp

    prob = make_problem(20, 50, seed=9, pruning=True)
    A = cp.asarray(prob.A)
    with pytest.raises(ValueError, match="`b` is on the host"):
        chita_core.iht(A, prob.b, 5)
    with pytest.raises(ValueError, match="backend 'cpp' runs on the host"):
        chita_core.iht(A, cp.asarray(prob.b), 5, backend="cpp")
    with pytest.raises(TypeError, match="`w_bar` has dtype float32"):
        chita_core.iht(A, cp.asarray(prob.b), 5, w_bar=cp.asarray(prob.w_bar, dtype=cp.float32))
    bad = A.copy()
    bad[3, 7] = cp.nan
    with pytest.raises(ValueError, match="`A` contains NaN or Inf"):
        chita_core.iht(bad, cp.asarray(prob.b), 5)
    with pytest.raises(ValueError, match="C- or F-contiguous"):
        chita_core.iht(cp.asarray(np.zeros((20, 100)))[:, ::2], cp.asarray(prob.b), 5)
