"""Regression tests for the hardening defects of the solver API (issue 11): lazy views, tiny
ridges, guarded factorisations, a zero Lipschitz estimate, ill-conditioned refits, and inputs
that used to get NumPy's raw messages. Every reference here is an independent float64 NumPy
computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from reference import objective as ref_objective

import chita_core


def _backends() -> list[str]:
    return [b for b, why in chita_core.available_backends().items() if why is None and b != "cuda"]


BACKENDS = _backends()


def _lstsq_optimum(A: np.ndarray, b: np.ndarray, S: np.ndarray, ridge: float, w_bar=None):
    """min over w with support S, through an SVD of the augmented system (exact)."""
    A = np.asarray(A, np.float64)
    p = A.shape[1]
    w_bar = np.zeros(p) if w_bar is None else w_bar
    X = A[:, S]
    c = b - X @ w_bar[S]
    M = np.vstack([X, np.sqrt(ridge) * np.eye(S.size)]) if ridge > 0 else X
    rhs = np.concatenate([c, np.zeros(S.size)]) if ridge > 0 else c
    z = np.linalg.lstsq(M, rhs, rcond=1e-15)[0]
    w = np.zeros(p)
    w[S] = z + w_bar[S]
    return w, ref_objective(A, b, w, ridge, w_bar)


# ------------------------------------------------------------------ lazy torch views (defect 2)


@pytest.fixture
def tt():
    return pytest.importorskip("torch")


def test_torch_negative_bit_vectors_read_with_their_sign(tt):
    g = tt.Generator().manual_seed(0)
    A = tt.randn(30, 50, generator=g, dtype=tt.float64)
    b = tt.randn(30, generator=g, dtype=tt.float64)
    w = tt.zeros(50, dtype=tt.float64)
    w[:4] = 1.0
    neg_b = (-b)._neg_view()  # holds -b in memory, reads as b
    assert neg_b.is_neg()
    want = ref_objective(A.numpy(), b.numpy(), w.numpy(), 0.0, np.zeros(50))
    assert chita_core.objective(A, neg_b, w) == pytest.approx(want, rel=1e-12)
    z = tt.complex(tt.zeros(30, dtype=tt.float64), b)
    assert chita_core.objective(A, z.conj().imag, w) == pytest.approx(
        ref_objective(A.numpy(), -b.numpy(), w.numpy(), 0.0, np.zeros(50)), rel=1e-12
    )
    neg_w = (-w)._neg_view()
    assert chita_core.objective(A, b, neg_w) == pytest.approx(want, rel=1e-12)
    res = chita_core.iht(A, b, 4, w_bar=(-w)._neg_view())
    assert res.objective == pytest.approx(
        ref_objective(A.numpy(), b.numpy(), res.w.numpy(), 0.0, w.numpy()), rel=1e-10
    )


def test_torch_negative_bit_matrix_is_refused(tt):
    A = tt.randn(10, 20, dtype=tt.float64)
    with pytest.raises(ValueError, match=r"`A`.*negative bit"):
        chita_core.objective((-A)._neg_view(), tt.zeros(10, dtype=tt.float64), tt.zeros(20))


def test_zero_stride_vector_and_matrix():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((12, 9))
    b = np.broadcast_to(np.float64(0.5), (12,))
    w = np.arange(9.0)
    assert chita_core.objective(A, b, w) == pytest.approx(
        ref_objective(A, np.full(12, 0.5), w, 0.0, np.zeros(9)), rel=1e-12
    )
    with pytest.raises(ValueError, match="`A` must be C- or F-contiguous"):
        chita_core.objective(np.broadcast_to(A[0], (12, 9)), np.zeros(12), w)


def test_big_endian_vectors_accepted_matrix_refused_clearly():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((15, 8))
    b = rng.standard_normal(15)
    w = rng.standard_normal(8)
    want = ref_objective(A, b, w, 0.0, np.zeros(8))
    assert chita_core.objective(A, b.astype(">f8"), w.astype(">f8")) == pytest.approx(want)
    S = np.array([1, 4], dtype=">i8")
    assert np.allclose(chita_core.backsolve(A, b, S), chita_core.backsolve(A, b, [1, 4]))
    with pytest.raises(TypeError, match="`A` has non-native byte order"):
        chita_core.objective(A.astype(">f8"), b, w)


def test_masked_arrays_refused():
    A = np.ma.masked_array(np.eye(3), mask=np.eye(3) > 0)
    with pytest.raises(TypeError, match="`A` is a numpy masked array"):
        chita_core.objective(A, np.ones(3), np.ones(3))
    with pytest.raises(TypeError, match="`b` is a numpy masked array"):
        chita_core.iht(np.eye(3), np.ma.masked_array(np.ones(3), mask=[1, 0, 0]), 1)


def test_ragged_lists_get_the_package_message():
    with pytest.raises(ValueError, match="`A` is a nested sequence"):
        chita_core.objective([[1.0, 2.0], [1.0]], [1.0, 2.0], [1.0, 0.0])


# ------------------------------------------------------------------------- tiny ridges (defect 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ridge", [1e-12, 1e-10, 1e-8, 1e-7])
def test_tiny_ridge_behaves_like_ridge_zero(backend, ridge):
    rng = np.random.default_rng(0)
    n, p, k = 100, 400, 40
    A = rng.standard_normal((n, p))
    b = rng.standard_normal(n)
    r0 = chita_core.iht(A, b, k, backend=backend)
    _, f_ref = _lstsq_optimum(A, b, np.asarray(r0.support), ridge)
    res = chita_core.iht(A, b, k, ridge=ridge, backend=backend)
    assert res.objective <= f_ref * (1 + 1e-3)
    assert res.objective == pytest.approx(
        ref_objective(A, b, np.asarray(res.w), ridge, np.zeros(p)), rel=1e-9
    )


# ----------------------------------------------------- guarded factorisations (defect 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ridge", [1e-300, 1e-16, 1e-13, 1e-12])
def test_tiny_ridges_never_raise_from_linalg(backend, ridge):
    rng = np.random.default_rng(2)
    n, p = 50, 400
    A = rng.standard_normal((n, p))
    w_bar = rng.standard_normal(p)
    res = chita_core.iht(A, A @ w_bar, 40, ridge=ridge, w_bar=w_bar, backend=backend)
    w = np.asarray(res.w)
    assert np.count_nonzero(w) <= 40
    assert res.objective == pytest.approx(ref_objective(A, A @ w_bar, w, ridge, w_bar), rel=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spread", [6, 9, 12])
@pytest.mark.parametrize("low", [0, 6])
@pytest.mark.parametrize("ridge", [0.0, 1e-6, 1.0])
def test_column_scales_spread_over_many_orders(backend, spread, low, ridge):
    rng = np.random.default_rng(3)
    n, p, k = 50, 400, 40
    scales = np.logspace(low, low + spread, p)[rng.permutation(p)]
    A = rng.standard_normal((n, p)) * scales
    w_bar = rng.standard_normal(p)
    b = A @ w_bar
    res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, backend=backend)
    w = np.asarray(res.w)
    assert np.count_nonzero(w) <= k
    f = ref_objective(A, b, w, ridge, w_bar)
    assert res.objective == pytest.approx(
        f, rel=1e-7, abs=1e-9 * ref_objective(A, b, 0 * w, 0, w_bar)
    )
    magnitude = np.sort(np.argsort(-np.abs(w_bar), kind="stable")[:k])
    _, f_mag = _lstsq_optimum(A, b, magnitude, ridge, w_bar)
    assert res.objective <= f_mag * (1 + 1e-7) + 1e-12 * ref_objective(A, b, 0 * w, 0, w_bar)


def test_guarded_inverse_and_solve_on_singular_matrices():
    from chita_core._linalg import SPDSystem, least_squares, spd_inverse

    rng = np.random.default_rng(4)
    V = rng.standard_normal((6, 3))
    K = V @ V.T  # rank 3, PSD
    Kinv = spd_inverse(K)
    assert np.all(np.linalg.eigvalsh(Kinv) > 0)
    rhs = K @ rng.standard_normal(6)  # in the range of K
    system = SPDSystem(K)
    assert not system.good
    y = system.solve(rhs, lambda v: K @ v)
    assert np.allclose(K @ y, rhs, atol=1e-10 * np.abs(rhs).max())
    # Well-conditioned once equilibrated, though its diagonal spans 1e-6..1e6: exact solves.
    d = np.logspace(-3, 3, 6)
    W = rng.standard_normal((6, 6))
    K2 = (W @ W.T + 6 * np.eye(6)) * d[:, None] * d[None, :]
    system = SPDSystem(K2)
    assert system.good
    rhs2 = rng.standard_normal(6)
    assert np.allclose(system.solve(rhs2, lambda v: K2 @ v), np.linalg.solve(K2, rhs2), rtol=1e-10)
    assert np.allclose(system.inverse() @ K2, np.eye(6), atol=1e-9)
    X = rng.standard_normal((8, 5))
    c = rng.standard_normal(8)
    ref = np.linalg.solve(X.T @ X + 0.3 * np.eye(5), X.T @ c)
    assert np.allclose(least_squares(X, c, 0.3), ref, rtol=1e-12)


def test_cholesky_path_factor_inverse_and_solve_against_float64():
    """The LAPACK path (potrf, potrs, potri): inverse and solve of a well-conditioned
    SPD matrix agree with NumPy's float64 inverse; an empty system is the identity."""
    from chita_core._linalg import SPDSystem

    rng = np.random.default_rng(5)
    W = rng.standard_normal((40, 60))
    K = W @ W.T + 0.5 * np.eye(40)
    K *= np.logspace(-2, 2, 40)[:, None] * np.logspace(-2, 2, 40)[None, :]  # row/column scales
    system = SPDSystem(K)
    assert system.good
    Kinv = np.linalg.inv(K)
    inv = system.inverse()
    np.testing.assert_array_equal(inv, inv.T)
    np.testing.assert_allclose(inv, Kinv, rtol=1e-9, atol=1e-9 * np.abs(Kinv).max())
    rhs = rng.standard_normal(40)
    np.testing.assert_allclose(system.solve(rhs), Kinv @ rhs, rtol=1e-9)
    empty = SPDSystem(np.zeros((0, 0)))
    assert empty.good and empty.inverse().shape == (0, 0) and empty.solve(np.zeros(0)).size == 0
    assert not SPDSystem(-np.eye(3)).good  # not positive definite: no factor


def _scipy_blas():
    """threadpoolctl's controller of SciPy's own BLAS where it is not NumPy's, else None."""
    from chita_core._linalg import serial_lapack

    return serial_lapack._find()


def test_scipy_blas_serial_inside_a_solve_and_restored_after():
    """Inside a solve SciPy's LAPACK runs on one thread (its pool would starve NumPy's); the
    user's setting comes back afterwards, also after nested entries and errors."""
    from chita_core._linalg import serial_lapack

    controller = _scipy_blas()
    if controller is None:
        pytest.skip("SciPy shares NumPy's BLAS here: nothing to serialise")
    before = controller.num_threads
    controller.set_num_threads(2)
    try:
        with serial_lapack:
            assert controller.num_threads == 1
            with serial_lapack:
                assert controller.num_threads == 1
            assert controller.num_threads == 1
        assert controller.num_threads == 2
        with pytest.raises(RuntimeError), serial_lapack:
            raise RuntimeError("inside")
        assert controller.num_threads == 2
        rng = np.random.default_rng(6)
        A = rng.standard_normal((30, 200))
        chita_core.iht(A, A @ rng.standard_normal(200), 40, ridge=0.1)
        assert controller.num_threads == 2
    finally:
        controller.set_num_threads(before)


# ------------------------------------------------- a zero Lipschitz estimate (defect 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [0.0, 1e-300, 1e-150, 1e-100, 1e60])
@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_zero_and_extreme_scales(backend, scale, ridge):
    rng = np.random.default_rng(5)
    G = rng.standard_normal((20, 30))
    w_bar = rng.standard_normal(30)
    A, b = G * scale, (G @ w_bar) * scale
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = chita_core.iht(A, b, 5, ridge=ridge, w_bar=w_bar, backend=backend)
    w = np.asarray(res.w)
    assert np.count_nonzero(w) <= 5
    assert np.isfinite(res.objective)
    if scale >= 1e-100 and ridge == 0:  # representable: the same support as the unscaled problem
        r1 = chita_core.iht(G, G @ w_bar, 5, w_bar=w_bar, backend=backend)
        assert np.array_equal(np.asarray(res.support), np.asarray(r1.support))
        assert res.objective == pytest.approx(r1.objective * scale**2, rel=1e-9)


def test_magnitude_beyond_float64_is_a_clear_error():
    G = np.random.default_rng(6).standard_normal((20, 30))
    with pytest.raises(ValueError, match="`A` and `b` are too large in magnitude"):
        chita_core.iht(G * 1e150, G.sum(axis=1) * 1e150, 5)


# -------------------------------------------------- ill-conditioned backsolve (defect 8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cond", [1e4, 1e8, 1e10, 1e12])
@pytest.mark.parametrize("ridge", [0.0, 1e-12, 1e-6])
@pytest.mark.parametrize("shape", [(200, 40), (40, 120)])
def test_backsolve_exact_on_ill_conditioned_supports(backend, cond, ridge, shape):
    rng = np.random.default_rng(7)
    n, m = shape
    r = min(n, m)
    U, _ = np.linalg.qr(rng.standard_normal((n, r)))
    V, _ = np.linalg.qr(rng.standard_normal((m, r)))
    X = (U * np.logspace(0, -np.log10(cond), r)) @ V.T
    A = np.asfortranarray(np.hstack([X, rng.standard_normal((n, 7))]))
    b = rng.standard_normal(n)
    S = np.arange(m)
    w = np.asarray(chita_core.backsolve(A, b, S, ridge=ridge, backend=backend))
    f = ref_objective(A, b, w, ridge, np.zeros(A.shape[1]))
    _, f_ref = _lstsq_optimum(A, b, S, ridge)
    # Rounding level: eps times the scale of the terms that cancel (||b||^2).
    slack = 1e-9 * float(b @ b)
    assert f <= f_ref * (1 + 1e-9) + slack
    assert np.all(w[m:] == 0)


def test_unpickled_arrays_are_read_in_place():
    """Arrays that come back from pickle (or multiprocessing) carry their own dtype instances:
    still float32 / float64 to every kernel."""
    import pickle

    rng = np.random.default_rng(3)
    A = np.asfortranarray(rng.standard_normal((30, 80)).astype(np.float32))
    w_bar = rng.standard_normal(80).astype(np.float32)
    b = (A.astype(np.float64) @ w_bar).astype(np.float32)
    A2, b2, w2 = (pickle.loads(pickle.dumps(x)) for x in (A, b, w_bar))
    for backend in ("cpp", "numba"):
        if chita_core.available_backends()[backend] is not None:
            continue
        ref = chita_core.iht(A, b, 10, ridge=0.1, w_bar=w_bar, backend=backend)
        got = chita_core.iht(A2, b2, 10, ridge=0.1, w_bar=w2, backend=backend)
        assert got.objective == ref.objective
        np.testing.assert_array_equal(got.support, ref.support)
