"""Half-precision A on the host (float16 and bfloat16): the C++ kernels against the float64
reference on the rounded values, the solver against its own float64 solve of the same numbers,
and the interop rules (views of NumPy / torch / JAX arrays, never a copy; results in float32)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import reference as ref
from conftest import layout

import chita_core
from chita_core.backends import get_backend

BF16 = np.dtype(ml_dtypes.bfloat16)
HALF = [np.dtype(np.float16), BF16]


def _half(A64: np.ndarray, dtype: np.dtype, order: str) -> tuple[np.ndarray, np.ndarray]:
    """(A rounded to ``dtype`` in ``order``, its exact float64 values)."""
    A = np.asarray(A64.astype(dtype), order=order)
    return A, A.astype(np.float64)


def _host_kernels(backend: str):
    """The kernel module of a host backend (the cpp and numba backends both read 16-bit A)."""
    return get_backend(backend)[1]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("order", ["C", "F"])
def test_every_16_bit_pattern_is_read_exactly(dtype, order, backend):
    """Each of the 65,536 encodings (subnormals, Inf, NaN, -0 included) widened by the kernels
    equals NumPy's / ml_dtypes' own conversion, in both layouts."""
    kernels = _host_kernels(backend)
    codes = np.arange(1 << 16, dtype=np.uint16).view(dtype)
    with np.errstate(invalid="ignore"):  # (ml_dtypes warns on its NaN encodings)
        expected = codes.astype(np.float64)
    zeros = np.zeros(codes.size)
    out = np.empty(codes.size)
    row = np.asarray(codes.reshape(1, -1), order=order)
    kernels.gradient(row, np.ones(1), zeros, zeros, 0.0, out)  # out = A^T [1] = A's values
    col = np.asarray(codes.reshape(-1, 1), order=order)
    out_n = np.empty(codes.size)
    kernels.support_matvec(col, np.zeros(1, np.int64), np.ones(1), out_n)  # out = A [1]
    for got in (out, out_n):
        same = (got == expected) | (np.isnan(got) & np.isnan(expected))
        assert same.all(), np.flatnonzero(~same)[:10]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(1, 9), (7, 1), (37, 530), (300, 4100), (1003, 700)])
def test_kernels_match_float64_reference(dtype, order, shape, backend):
    kernels = _host_kernels(backend)
    n, p = shape
    rng = np.random.default_rng(n * p)
    A, exact = _half(rng.standard_normal(shape), dtype, order)
    y = rng.standard_normal(n)
    w, w_bar = rng.standard_normal(p), rng.standard_normal(p)
    out_p = np.empty(p)
    # The kernels form products and partial sums of a few terms in float32 and sum the partials
    # in float64: each result within a few float32 ulps of the sum of its terms' magnitudes.
    bound = 4 * 2.0**-24 * (np.abs(exact).T @ np.abs(y)) + 1e-12
    # Supports dense (C order: whole rows streamed) and sparse (C order: gathered) in a row.
    for m in sorted({max(1, p // 3), max(1, p // 20)}):
        idx = np.sort(rng.choice(p, m, replace=False)).astype(np.int64)
        x = rng.standard_normal(m)
        out_n, out_m = np.empty(n), np.empty(m)
        kernels.support_matvec(A, idx, x, out_n)
        bound_n = 4 * 2.0**-24 * (np.abs(exact[:, idx]) @ np.abs(x)) + 1e-12
        assert np.all(np.abs(out_n - ref.support_matvec(exact, idx, x)) <= bound_n)
        kernels.support_rmatvec(A, idx, y, out_m)
        assert np.all(np.abs(out_m - ref.support_rmatvec(exact, idx, y)) <= bound[idx])
    kernels.gradient(A, y, w, w_bar, 0.3, out_p)
    assert np.all(np.abs(out_p - ref.gradient(exact, y, w, w_bar, 0.3)) <= bound)
    kernels.column_sqnorms(A, out_p)
    sq = (exact**2).sum(axis=0)
    assert np.all(np.abs(out_p - sq) <= 4 * 2.0**-24 * sq + 1e-300)


def _problem(seed: int, n: int = 50, p: int = 400):
    rng = np.random.default_rng(seed)
    A64 = rng.standard_normal((n, p)) * rng.uniform(0.1, 3.0, size=p)
    w_bar = rng.standard_normal(p)
    return A64, A64 @ w_bar + 0.1 * rng.standard_normal(n), w_bar


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("seed", [0, 1])
def test_solve_equals_the_float64_solve_of_the_rounded_matrix(dtype, order, seed, backend):
    """The passes sum short float32 partials in float64, so the half-precision solve makes the
    float64 solve's decisions on the same numbers: the same support, the objective up to
    float32 rounding."""
    A64, b, w_bar = _problem(seed)
    A, exact = _half(A64, dtype, order)
    for k in (10, 60, 200):
        half = chita_core.iht(A, b, k, ridge=0.05, w_bar=w_bar, backend=backend)
        full = chita_core.iht(exact, b, k, ridge=0.05, w_bar=w_bar, backend=backend)
        np.testing.assert_array_equal(half.support, full.support)
        assert half.objective == pytest.approx(full.objective, rel=1e-6)
        assert half.w.dtype == np.float32  # not A's storage type, which would round w
        # The objective reported is the objective of the weights returned (up to their float32
        # rounding), on the float64 reference.
        f = ref.objective(exact, b, half.w, 0.05, w_bar)
        assert f == pytest.approx(half.objective, rel=1e-5)
    bs = chita_core.backsolve(A, b, half.support, ridge=0.05, w_bar=w_bar)
    bs64 = chita_core.backsolve(exact, b, half.support, ridge=0.05, w_bar=w_bar)
    assert bs.dtype == np.float32
    np.testing.assert_allclose(bs, bs64.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_torch_and_jax_half_tensors_are_read_in_place():
    torch = pytest.importorskip("torch")
    A64, b, w_bar = _problem(3)
    exact_bf16 = A64.astype(BF16).astype(np.float64)
    expected = chita_core.iht(exact_bf16, b, 40, ridge=0.1, w_bar=w_bar)
    for order in ("C", "F"):
        t = torch.from_numpy(layout(A64, order).copy()).to(torch.bfloat16)
        t = t if order == "C" else t.t().contiguous().t()
        view = chita_core._interop.as_host_array(t, "A", copy_ok=False)
        assert view.dtype == BF16 and view.ctypes.data == t.data_ptr()  # no copy
        got = chita_core.iht(t, torch.from_numpy(b), 40, ridge=0.1, w_bar=torch.from_numpy(w_bar))
        assert isinstance(got.w, torch.Tensor) and got.w.dtype == torch.float32
        np.testing.assert_array_equal(np.asarray(got.support), expected.support)
        assert got.objective == pytest.approx(expected.objective, rel=1e-6)
    t16 = torch.from_numpy(A64).to(torch.float16)
    got = chita_core.iht(t16, torch.from_numpy(b).half(), 40, ridge=0.1)
    exact16 = A64.astype(np.float16).astype(np.float64)
    bh = b.astype(np.float16).astype(np.float64)
    assert got.objective == pytest.approx(chita_core.iht(exact16, bh, 40, ridge=0.1).objective)

    jnp = pytest.importorskip("jax.numpy")
    j = jnp.asarray(A64, dtype=jnp.bfloat16)
    got = chita_core.iht(j, b, 40, ridge=0.1, w_bar=w_bar)  # a read-only view
    np.testing.assert_array_equal(np.asarray(got.support), expected.support)


def test_half_inputs_checked():
    A64, b, _ = _problem(4, n=20, p=60)
    A = A64.astype(BF16)
    # Vectors: A's dtype or float32/float64 with a 16-bit A; another 16-bit type is refused.
    chita_core.iht(A, b.astype(np.float32), 10)
    with pytest.raises(TypeError, match="`b`"):
        chita_core.iht(A, b.astype(np.float16), 10)
    # A float32 A still refuses half vectors (no silent mixing).
    with pytest.raises(TypeError, match="`b`"):
        chita_core.iht(A64.astype(np.float32), b.astype(np.float16), 10)
    bad = A.copy()
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match="`A`"):
        chita_core.iht(bad, b, 10)
    with pytest.raises(TypeError, match=r"`A`.*float16 or bfloat16"):
        chita_core.iht(A64.astype(np.int16), b, 10)
