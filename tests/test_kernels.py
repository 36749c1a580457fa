"""Every op of the kernel contract (chita_core/backends/protocol.py, semantics in
chita_core/_core.pyi), on every backend (cpp, numba, and cuda through the host-array adapter of
conftest.py), against the float64 NumPy reference in tests/reference.py; both dtypes of A, both
layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from conftest import on_device

from chita_core.backends import host
from chita_core.backends.protocol import OPS

CONTRACT = (*OPS, "num_threads")

# (n, p): n < p (the usual wide case), n > p, a single row, a single column, 1 x 1, and one shape
# above the kernels' parallel threshold (n * p >= 2**15 multiply-adds).
SHAPES = [(30, 50), (40, 12), (1, 20), (25, 1), (1, 1), (64, 700)]


# ----------------------------------------------------------------------------------------------
# The contract itself
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONTRACT)
def test_backend_implements_contract(kernels, name):
    assert callable(getattr(kernels, name, None)), f"{kernels.__name__} lacks `{name}`"


def test_num_threads_positive_int(kernels):
    nt = kernels.num_threads()
    assert isinstance(nt, int) and nt >= 1


# ----------------------------------------------------------------------------------------------
# support_matvec / support_rmatvec
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_support_matvec(kernels, make_problem, dtype, order, tol, shape):
    n, p = shape
    A = make_problem(n, p, dtype=dtype, order=order, seed=1).A
    rng = np.random.default_rng(2)
    for label, idx in ref.idx_variants(p).items():
        x = rng.standard_normal(idx.size)
        out = np.full(n, np.nan)  # `out` is written, never read
        kernels.support_matvec(A, idx, x, out)
        scale = float(np.max(np.abs(A.astype(np.float64)[:, idx]) @ np.abs(x)))
        tol.close(out, ref.support_matvec(A, idx, x), scale=scale, err_msg=label)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_support_rmatvec(kernels, make_problem, dtype, order, tol, shape):
    n, p = shape
    A = make_problem(n, p, dtype=dtype, order=order, seed=3).A
    rng = np.random.default_rng(4)
    y = rng.standard_normal(n)
    for label, idx in ref.idx_variants(p).items():
        out = np.full(idx.size, np.nan)
        kernels.support_rmatvec(A, idx, y, out)
        scale = float(np.max(np.abs(A.astype(np.float64)[:, idx]).T @ np.abs(y)))
        tol.close(out, ref.support_rmatvec(A, idx, y), scale=scale, err_msg=label)


def test_support_matvec_parallel_column_chunks(kernels, make_problem, dtype, order, tol):
    # Large supports split into chunks / per-thread partial sums in both backends.
    A = make_problem(100, 1500, dtype=dtype, order=order, seed=5).A
    idx = np.arange(0, 1500, 1, dtype=np.int64)
    x = np.random.default_rng(6).standard_normal(idx.size)
    out = np.empty(100)
    kernels.support_matvec(A, idx, x, out)
    scale = float(np.max(np.abs(A.astype(np.float64)) @ np.abs(x)))
    tol.close(out, ref.support_matvec(A, idx, x), scale=scale)


# ----------------------------------------------------------------------------------------------
# gradient
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("ridge", [0.0, 0.7])
def test_gradient(kernels, make_problem, dtype, order, tol, shape, ridge):
    n, p = shape
    A = make_problem(n, p, dtype=dtype, order=order, seed=7).A
    rng = np.random.default_rng(8)
    r, w, w_bar = rng.standard_normal(n), rng.standard_normal(p), rng.standard_normal(p)
    out = np.full(p, np.nan)
    kernels.gradient(A, r, w, w_bar, ridge, out)
    expected = ref.gradient(A, r, w, w_bar, ridge)
    scale = float(np.max(np.abs(A.astype(np.float64)).T @ np.abs(r) + ridge * np.abs(w - w_bar)))
    tol.close(out, expected, scale=scale)


def test_gradient_wide_c_order_blocks(kernels, make_problem, tol, dtype):
    # p not a multiple of any block size, above the parallel threshold.
    A = make_problem(40, 4999, dtype=dtype, order="C", seed=9).A
    rng = np.random.default_rng(10)
    r, w, w_bar = rng.standard_normal(40), rng.standard_normal(4999), rng.standard_normal(4999)
    out = np.empty(4999)
    kernels.gradient(A, r, w, w_bar, 0.25, out)
    tol.close(out, ref.gradient(A, r, w, w_bar, 0.25), scale=float(np.abs(r).sum()))


@pytest.mark.parametrize("n", [2, 5])
def test_gradient_very_wide_c_order(kernels, tol, n):
    # p = 2e6: the per-thread partials of the C++ row split (threads x p float64) exceed a
    # quarter of any usual L3, so the column-chunked C-order path runs (5 rows: the 4-row
    # sweep plus a remainder row).
    p = 2_000_000
    rng = np.random.default_rng(11)
    A = rng.standard_normal((n, p), dtype=np.float32)
    r, w, w_bar = rng.standard_normal(n), rng.standard_normal(p), np.zeros(p)
    out = np.empty(p)
    kernels.gradient(A, r, w, w_bar, 0.5, out)
    tol.close(out, ref.gradient(A, r, w, w_bar, 0.5), scale=float(np.abs(r).sum()))


# ----------------------------------------------------------------------------------------------
# topk
# ----------------------------------------------------------------------------------------------


def _topk(kernels, v, k):
    out = np.full(k, -7, dtype=np.int64)
    kernels.topk(np.ascontiguousarray(v, dtype=np.float64), k, out)
    return out


@pytest.mark.parametrize("p", [1, 2, 7, 1000, 5000])
def test_topk_tie_free(kernels, make_vector, p):
    v = make_vector(p, seed=p)
    for k in sorted({1, max(1, p // 3), max(1, p - 1), p}):
        got = _topk(kernels, v, k)
        np.testing.assert_array_equal(got, ref.topk(v, k), err_msg=f"k={k}")


def test_topk_magnitudes_not_values(kernels):
    v = np.array([-5.0, 1.0, 4.0, -3.0, 2.0])
    np.testing.assert_array_equal(_topk(kernels, v, 2), [0, 2])
    np.testing.assert_array_equal(_topk(kernels, v, 3), [0, 2, 3])


@pytest.mark.parametrize(
    ("v", "k", "expected"),
    [
        ([3.0, 3.0, 3.0, 3.0], 2, [0, 1]),  # all equal: lowest indices
        ([1.0, 1.0, 1.0, 1.0, 1.0], 5, [0, 1, 2, 3, 4]),
        ([-1.0, 1.0], 1, [0]),  # |-1| == |1|: lower index
        ([1.0, -1.0], 1, [0]),
        ([0.5, -2.0, 2.0, 2.0, 0.1], 2, [1, 2]),
        ([0.5, -2.0, 2.0, 2.0, 0.1], 3, [1, 2, 3]),
        ([0.0, 0.0, 0.0], 1, [0]),  # all zero
        ([0.0, 0.0, 0.0], 3, [0, 1, 2]),
        ([-0.0, 0.0, 1.0], 2, [0, 2]),  # -0.0 ties with +0.0
        ([0.0, -0.0, 1.0], 2, [0, 2]),
        ([0.0, -0.0, -0.0, 0.0, 1.0], 3, [0, 1, 4]),
        ([0.0, -0.0, 5e-324, 0.0], 1, [2]),  # the smallest subnormal beats zero
        ([1.0, np.inf, -np.inf, 3.0], 2, [1, 2]),
        ([2.0, 1e-300, -1e300, 2.0], 2, [0, 2]),
    ],
)
def test_topk_ties_zeros(kernels, v, k, expected):
    v = np.array(v, dtype=np.float64)
    got = _topk(kernels, v, k)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, ref.topk(v, k))


@pytest.mark.parametrize("p", [10, 999, 4096])
def test_topk_many_ties(kernels, p):
    # Few distinct magnitudes with both signs and signed zeros: every boundary is a tie.
    rng = np.random.default_rng(p)
    v = rng.integers(-3, 4, size=p).astype(np.float64)
    v[rng.random(p) < 0.2] = -0.0
    for k in [1, p // 7 + 1, p // 2, p - 1, p]:
        np.testing.assert_array_equal(_topk(kernels, v, k), ref.topk(v, k), err_msg=f"k={k}")


def test_topk_values_sharing_high_bits(kernels):
    # Magnitudes that share their top 16/32/48 bits exercise every radix pass.
    base = 1.2345
    bits = np.array([base], dtype=np.float64).view(np.uint64)[0]
    keys = bits + np.array([0, 1, 2, 3, 1 << 20, (1 << 20) + 1, 1 << 36, 5], dtype=np.uint64)
    v = keys.view(np.float64) * np.array([1, -1, 1, -1, 1, -1, 1, -1])
    for k in range(1, v.size + 1):
        np.testing.assert_array_equal(_topk(kernels, v, k), ref.topk(v, k), err_msg=f"k={k}")


@pytest.mark.slow
def test_topk_parallel_path_with_ties(kernels):
    # p above the parallel threshold (2**15): ties straddle the per-thread ranges.
    p = 100_003
    rng = np.random.default_rng(11)
    v = rng.integers(-4, 5, size=p).astype(np.float64)
    for k in [1, 11_111, 50_000, 77_777, p - 1]:
        np.testing.assert_array_equal(_topk(kernels, v, k), ref.topk(v, k), err_msg=f"k={k}")
    w = rng.standard_normal(p)
    np.testing.assert_array_equal(_topk(kernels, w, 1234), ref.topk(w, 1234))


def test_topk_output_sorted_int64(kernels, make_vector):
    v = make_vector(300, seed=12)
    out = _topk(kernels, v, 40)
    assert out.dtype == np.int64
    assert np.all(np.diff(out) > 0)
    assert set(out.tolist()) == set(np.argsort(-np.abs(v))[:40].tolist())


# ----------------------------------------------------------------------------------------------
# chita_step
# ----------------------------------------------------------------------------------------------


def _state(prob, k, kind, seed):
    """(w, support) for a scenario. Values on the support are float64."""
    p = prob.A.shape[1]
    rng = np.random.default_rng(seed)
    w = np.zeros(p)
    if kind == "near":  # planted support, slightly perturbed: the exact step keeps the support
        S = prob.support_true
        w[S] = prob.w_true[S] * (1 + 0.05 * rng.standard_normal(S.size))
    elif kind == "random":  # a wrong support, off-support gradient large: support changes
        S = np.sort(rng.choice(p, size=k, replace=False)).astype(np.int64)
        w[S] = rng.standard_normal(k) * 0.1
    elif kind == "zeros":  # zeros on the support: tau_chg == 0, backtracking from tau_star
        S = np.arange(k, dtype=np.int64)
    elif kind == "full":  # k == p: nothing can enter, tau_chg == inf
        S = np.arange(p, dtype=np.int64)
        w[:] = rng.standard_normal(p)
    else:
        raise AssertionError(kind)
    return w, S


def _run_step(kernels, A, b, w_bar, ridge, w, S):
    """The backend's step and the reference step from the same state; inputs left untouched."""
    r = ref.residual(A, b, w)
    g = ref.gradient(A, r, w, w_bar, ridge)
    f = ref.objective(A, b, w, ridge, w_bar)
    expected = ref.chita_step(A, b, w_bar, ridge, g, w, r, S, f)
    w_k, r_k, S_k = w.copy(), r.copy(), S.copy()
    f_new, tau, n_cand, changed = kernels.chita_step(
        A, np.asarray(b, np.float64), w_bar, ridge, g, w_k, r_k, S_k, f
    )
    return f, (f_new, tau, n_cand, changed, w_k, r_k, S_k), expected


def _check_invariants(A, b, w_bar, ridge, f, got, k, tol):
    f_new, tau, n_cand, changed, w, r, S = got
    assert isinstance(f_new, float) and isinstance(tau, float)
    assert isinstance(n_cand, int) and isinstance(changed, bool)
    assert f_new <= f, f"objective went up: {f} -> {f_new}"
    assert S.dtype == np.int64 and S.size == k
    assert np.all(np.diff(S) > 0), f"support not sorted/unique: {S}"
    off = np.ones(w.size, dtype=bool)
    off[S] = False
    assert not np.any(w[off]), "nonzeros outside the support"
    assert np.count_nonzero(w) <= k
    scale = float(np.max(np.abs(A.astype(np.float64)) @ np.abs(w)) + np.max(np.abs(b)))
    tol.close(r, ref.residual(A, b, w), kind="solve", scale=scale, err_msg="r != A w - b")
    tol.close(
        f_new,
        ref.objective(A, b, w, ridge, w_bar),
        kind="solve",
        scale=max(abs(f), 1e-300),
        err_msg="f_new is not the objective at the new w",
    )
    assert tau >= 0.0
    if tau == 0.0:
        assert f_new == f


def _check_same_as_reference(got, expected, tol, f):
    f_new, tau, n_cand, changed, w, r, S = got
    assert expected.margin > 1e-10, "test data is not tie-free enough to compare decisions"
    np.testing.assert_array_equal(S, expected.support)
    assert n_cand == expected.n_candidates, (n_cand, expected.branch)
    assert changed == expected.support_changed
    if expected.branch == "kept":
        assert n_cand == 0 and not changed
    tol.close(tau, expected.tau, kind="solve", scale=abs(expected.tau))
    tol.close(f_new, expected.f, kind="solve", scale=max(abs(f), 1e-300))
    tol.close(w, expected.w, kind="solve")
    tol.close(r, expected.r, kind="solve", scale=float(np.max(np.abs(expected.r)) + 1.0))


STEP_CASES = [
    # (n, p, k, kind, ridge, pruning, expected reference branch)
    (60, 200, 5, "near", 0.0, False, "kept"),
    (60, 200, 5, "random", 0.0, False, "forward"),
    (60, 200, 5, "zeros", 0.0, False, "backtrack"),
    (60, 200, 5, "random", 0.5, True, "forward"),
    (60, 200, 5, "near", 0.3, True, "kept"),
    (30, 12, 12, "full", 0.0, False, "kept"),
    (30, 12, 12, "full", 0.4, True, "kept"),
    (40, 90, 1, "random", 0.0, False, "forward"),
    (40, 90, 1, "zeros", 0.2, True, "backtrack"),
    (1, 15, 3, "random", 0.0, False, None),
    (20, 1, 1, "full", 0.0, False, "kept"),
    (200, 60, 20, "random", 0.0, False, "forward"),  # n > p
]


@pytest.mark.parametrize(
    ("n", "p", "k", "kind", "ridge", "pruning", "branch"),
    STEP_CASES,
    ids=[f"{c[0]}x{c[1]}-k{c[2]}-{c[3]}-ridge{c[4]}" for c in STEP_CASES],
)
def test_chita_step_matches_reference(
    kernels, make_problem, dtype, order, tol, n, p, k, kind, ridge, pruning, branch
):
    plant = k if kind == "near" else None
    prob = make_problem(n, p, dtype=dtype, order=order, seed=13 + k, k=plant, pruning=pruning)
    w_bar = prob.w_bar64 if prob.w_bar is not None else np.zeros(p)
    w, S = _state(prob, k, kind, seed=14)
    f, got, expected = _run_step(kernels, prob.A, prob.b64, w_bar, ridge, w, S)
    if branch is not None:
        assert expected.branch == branch, "scenario does not exercise the intended branch"
    _check_invariants(prob.A, prob.b64, w_bar, ridge, f, got, k, tol)
    _check_same_as_reference(got, expected, tol, f)
    if branch in ("forward", "backtrack"):
        assert got[0] < f, "a support-changing candidate was expected to improve f"


def test_chita_step_trajectory(kernels, make_problem, dtype, order, tol):
    """Twenty IHT iterations from w = 0: every step is checked against the reference step from
    the backend's own state, so rounding never accumulates into diverging trajectories."""
    n, p, k = 80, 400, 8
    prob = make_problem(n, p, dtype=dtype, order=order, seed=15, k=k, noise=0.05)
    A, b, w_bar = prob.A, prob.b64, np.zeros(p)
    S = np.arange(k, dtype=np.int64)
    w = np.zeros(p)
    branches = set()
    for _ in range(20):
        f, got, expected = _run_step(kernels, A, b, w_bar, 0.0, w, S)
        _check_invariants(A, b, w_bar, 0.0, f, got, k, tol)
        if expected.margin > 1e-10:  # decisions are only comparable away from near-ties
            _check_same_as_reference(got, expected, tol, f)
            branches.add(expected.branch)
        w, S = got[4], got[6]
        assert f >= got[0]
    assert {"kept", "backtrack"} <= branches or {"kept", "forward"} <= branches, branches
    np.testing.assert_array_equal(S, prob.support_true)


def test_chita_step_no_improvement_leaves_state(kernels, make_problem, dtype, order):
    # At the exact minimiser on the best support, nothing improves: state unchanged, tau = 0.
    prob = make_problem(40, 8, dtype=dtype, order=order, seed=16)
    A, b = prob.A, prob.b64
    S = np.arange(8, dtype=np.int64)
    w = np.zeros(8)
    w[S] = ref.backsolve(A, b, S, np.zeros(8), 0.0)
    r = ref.residual(A, b, w)
    g = np.zeros(8)  # exactly stationary (what the reference gradient is up to rounding)
    f = ref.objective(A, b, w)
    w0, r0, S0 = w.copy(), r.copy(), S.copy()
    f_new, tau, n_cand, changed = kernels.chita_step(A, b, np.zeros(8), 0.0, g, w, r, S, f)
    assert (f_new, tau, n_cand, changed) == (f, 0.0, 0, False)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(r, r0)
    np.testing.assert_array_equal(S, S0)


# ----------------------------------------------------------------------------------------------
# gather_columns / support_gram: the dense algebra on gathered columns (BLAS on every backend)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gather_columns(kernels, make_problem, dtype, order, shape):
    n, p = shape
    A = make_problem(n, p, dtype=dtype, order=order, seed=17).A
    A64 = A.astype(np.float64)
    for label, idx in ref.idx_variants(p, seed=18).items():
        X = kernels.gather_columns(A, idx)
        assert X.dtype == np.float64 and X.shape == (n, idx.size), label
        np.testing.assert_array_equal(X, A64[:, idx], err_msg=label)  # a conversion: exact


def test_gather_columns_empty(kernels, make_problem, dtype, order):
    A = make_problem(7, 9, dtype=dtype, order=order, seed=19).A
    X = kernels.gather_columns(A, np.zeros(0, dtype=np.int64))
    assert X.dtype == np.float64 and X.shape == (7, 0)


def _check_gram(kernels, out, A64, idx, label):
    A_S = A64[:, idx]
    scale = float(np.max(np.abs(A_S) @ np.abs(A_S).T))
    np.testing.assert_allclose(
        out, A_S @ A_S.T, rtol=1e-12, atol=1e-12 * scale, err_msg=f"idx={label}"
    )
    if on_device(kernels):  # cuBLAS GEMM: symmetric to rounding
        np.testing.assert_allclose(out, out.T, rtol=0, atol=1e-12 * scale, err_msg=label)
    else:  # NumPy's X @ X.T is one SYRK, mirrored: exactly symmetric
        np.testing.assert_array_equal(out, out.T, err_msg=f"idx={label}: not symmetric")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_support_gram(kernels, make_problem, dtype, order, shape):
    n, p = shape
    A = make_problem(n, p, dtype=dtype, order=order, seed=20).A
    A64 = A.astype(np.float64)
    for label, idx in ref.idx_variants(p, seed=21).items():
        out = np.full((n, n), np.nan)  # written, never read
        kernels.support_gram(A, idx, out)
        _check_gram(kernels, out, A64, idx, label)


def test_support_gram_several_panels(kernels, monkeypatch, make_problem, dtype, order):
    # The Gram accumulates over column panels gathered into a reused workspace: make the panels
    # small (host: its 256-column minimum; CUDA: 100 columns) so that 600 columns take several.
    monkeypatch.setattr(host, "_PANEL_BYTES", 0)
    module = getattr(kernels, "_module", kernels)
    if hasattr(module, "_PANEL"):
        monkeypatch.setattr(module, "_PANEL", 100)
    n, p = 64, 700
    A = make_problem(n, p, dtype=dtype, order=order, seed=22).A
    idx = np.sort(np.random.default_rng(23).choice(p, size=600, replace=False)).astype(np.int64)
    out = np.full((n, n), np.nan)
    kernels.support_gram(A, idx, out)
    _check_gram(kernels, out, A.astype(np.float64), idx, "600 of 700")


def test_support_gram_empty_support_is_zero(kernels, make_problem):
    A = make_problem(6, 9, seed=24).A
    out = np.full((6, 6), np.nan)
    kernels.support_gram(A, np.zeros(0, dtype=np.int64), out)
    np.testing.assert_array_equal(out, np.zeros((6, 6)))


# ----------------------------------------------------------------------------------------------
# Second line of defence: the kernels re-check shapes and dtypes
# ----------------------------------------------------------------------------------------------


def _bad_calls():
    """(label, call(kernels, A, b), expected exception) for malformed kernel arguments."""
    idx = np.array([1, 2], dtype=np.int64)
    S = np.array([0, 1], dtype=np.int64)
    z = np.zeros
    return [
        ("matvec-out-too-short", lambda K, A, b: K.support_matvec(A, idx, z(2), z(9)), ValueError),
        ("matvec-x-too-long", lambda K, A, b: K.support_matvec(A, idx, z(3), z(10)), ValueError),
        (
            "matvec-x-float32",
            lambda K, A, b: K.support_matvec(A, idx, z(2, np.float32), z(10)),
            TypeError,
        ),
        (
            "matvec-idx-int32",
            lambda K, A, b: K.support_matvec(A, idx.astype(np.int32), z(2), z(10)),
            TypeError,
        ),
        (
            "matvec-strided-A",
            lambda K, A, b: K.support_matvec(A[:, ::2], idx, z(2), z(10)),
            ValueError,
        ),
        ("matvec-A-1d", lambda K, A, b: K.support_matvec(A[0], idx, z(2), z(10)), ValueError),
        (
            "gradient-int-A",
            lambda K, A, b: K.gradient(A.astype(np.int64), b, z(20), z(20), 0.0, z(20)),
            TypeError,
        ),
        (
            "gradient-w-short",
            lambda K, A, b: K.gradient(A, b, z(19), z(20), 0.0, z(20)),
            ValueError,
        ),
        ("topk-k0", lambda K, A, b: K.topk(np.ones(5), 0, z(0, np.int64)), ValueError),
        ("topk-k-above-p", lambda K, A, b: K.topk(np.ones(5), 6, z(6, np.int64)), ValueError),
        (
            "topk-out-wrong-length",
            lambda K, A, b: K.topk(np.ones(5), 2, z(3, np.int64)),
            ValueError,
        ),
        ("topk-out-float", lambda K, A, b: K.topk(np.ones(5), 2, z(2)), TypeError),
        (
            "step-g-long",
            lambda K, A, b: K.chita_step(A, b, z(20), 0.0, z(21), z(20), -b, S.copy(), 1.0),
            ValueError,
        ),
        (
            "step-support-int32",
            lambda K, A, b: K.chita_step(
                A, b, z(20), 0.0, z(20), z(20), -b, S.astype(np.int32), 1.0
            ),
            TypeError,
        ),
    ]


@pytest.mark.parametrize(("label", "call", "exc"), _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_kernels_recheck_shapes_and_dtypes(kernels, make_problem, label, call, exc):
    prob = make_problem(10, 20, seed=21)
    with pytest.raises(exc):
        call(kernels, prob.A, prob.b64)


def test_kernels_never_modify_inputs(kernels, make_problem):
    prob = make_problem(15, 40, seed=22, order="F")
    A, b = prob.A, prob.b64
    A0 = A.copy(order="K")
    rng = np.random.default_rng(23)
    w = np.zeros(40)
    S = np.array([3, 9, 20], dtype=np.int64)
    w[S] = rng.standard_normal(3)
    r = ref.residual(A, b, w)
    g = ref.gradient(A, r, w, np.zeros(40), 0.0)
    g0, b0 = g.copy(), b.copy()
    kernels.chita_step(A, b, np.zeros(40), 0.0, g, w, r, S, ref.objective(A, b, w))
    kernels.support_gram(A, S, np.empty((15, 15)))
    kernels.gather_columns(A, S)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(b, b0)
    np.testing.assert_array_equal(g, g0)
    assert math.isfinite(float(r @ r))


# ----------------------------------------------------------------------------------------------
# chita_step on a column subset (CHITA's active set)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_chita_step_on_columns_equals_step_on_the_copy(kernels, make_problem, dtype, order, ridge):
    # The step on A[:, cols] through the column map must be the step on an explicit copy of the
    # subproblem: same branch, support, step and (up to rounding) state.
    n, p, P, k = 40, 300, 70, 8
    prob = make_problem(n, p, dtype=dtype, order=order, seed=90)
    rng = np.random.default_rng(91)
    cols = np.sort(rng.choice(p, P, replace=False)).astype(np.int64)
    sub = np.asarray(prob.A[:, cols], order=order)
    w_bar = rng.standard_normal(P)
    for trial in range(4):
        w = np.zeros(P)
        support = np.sort(rng.choice(P, k, replace=False)).astype(np.int64)
        w[support] = rng.standard_normal(k) * (trial + 1)
        r = sub.astype(np.float64) @ w - prob.b64
        f = ref.objective(sub, prob.b64, w, ridge, w_bar)
        g = ref.gradient(sub, r, w, w_bar, ridge)
        states = []
        for A, c in ((prob.A, cols), (sub, None)):
            ws, rs, ss = w.copy(), r.copy(), support.copy()
            out = kernels.chita_step(A, prob.b64, w_bar, ridge, g, ws, rs, ss, f, c)
            states.append((out, ws, rs, ss))
        (o1, w1, r1, s1), (o2, w2, r2, s2) = states
        np.testing.assert_array_equal(s1, s2)
        assert o1[2:] == o2[2:]  # candidates evaluated, support changed
        np.testing.assert_allclose(o1[:2], o2[:2], rtol=1e-12)
        np.testing.assert_allclose(w1, w2, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r1, r2, rtol=1e-12, atol=1e-12 * np.abs(r).max())
        assert o1[0] <= f * (1 + 1e-12)


def test_chita_step_rejects_bad_columns(kernels, make_problem):
    # (On a GPU too: an out-of-range column would be read outside A. The check is one small
    # reduction; the step reads its scalars back anyway.)
    prob = make_problem(10, 50, seed=92)
    P = 5
    args = (prob.b64, np.zeros(P), 0.0, np.ones(P), np.zeros(P), np.zeros(10))
    for cols in (np.array([3, 1, 2, 4, 5]), np.array([0, 1, 2, 3, 50]), np.array([0, 1, 1, 2, 3])):
        with pytest.raises(ValueError, match="cols"):
            kernels.chita_step(
                prob.A, *args, np.arange(2, dtype=np.int64), 1.0, cols.astype(np.int64)
            )


# ----------------------------------------------------------------------------------------------
# pool_eliminate: greedy OBS's removals within a pool, from n-space products
# ----------------------------------------------------------------------------------------------


def _pool_problem(seed: int, n: int = 12, m: int = 30, pool: int = 10):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, m))
    b = rng.standard_normal(n)
    w_bar = rng.standard_normal(m)
    lam = 0.3
    C = np.sort(rng.choice(m, size=pool, replace=False))
    Kinv = np.linalg.inv(lam * np.eye(n) + A @ A.T)  # every column on the support, m > n
    G0 = A[:, C].T @ Kinv @ A[:, C]
    x = ref.backsolve(A, b, np.arange(m), w_bar, lam)
    return A, b, w_bar, lam, C, G0, x[C]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pool_eliminate_is_greedy_obs_within_the_pool(kernels, seed):
    A, b, w_bar, lam, C, G0, xC = _pool_problem(seed)
    count = 6
    G_in, x_in = G0.copy(), xC.copy()
    order = kernels.pool_eliminate(G0, xC, count)
    kept, path = ref.greedy_obs(A, b, A.shape[1] - count, lam, w_bar, candidates=C)
    assert min(margin for _, margin in path) > 1e-6  # (the seeded order is tie-free)
    assert order.dtype == np.int64
    np.testing.assert_array_equal(C[order], [q for q, _ in path])
    np.testing.assert_array_equal(kept, np.setdiff1d(np.arange(A.shape[1]), C[order]))
    np.testing.assert_array_equal(G0, G_in)  # the inputs are left unchanged
    np.testing.assert_array_equal(xC, x_in)


def test_pool_eliminate_ties_and_degenerate_scores(kernels):
    c = 6
    # Equal saliencies (x = 0): the lowest live index each time.
    np.testing.assert_array_equal(
        kernels.pool_eliminate(np.zeros((c, c)), np.zeros(c), 4), [0, 1, 2, 3]
    )
    # NaN scores rank last; a column with d = 1 (1 - d floored at eps) is the most salient.
    x = np.array([np.nan, 1.0, 2.0, 0.5, 3.0, 1.5])
    G = np.zeros((c, c))
    G[3, 3] = 1.0
    np.testing.assert_array_equal(kernels.pool_eliminate(G, x, 4), [1, 5, 2, 4])
    assert kernels.pool_eliminate(G, x, 0).size == 0
    with pytest.raises(ValueError, match="count"):
        kernels.pool_eliminate(G, x, c + 1)


@pytest.mark.parametrize("seed", [0, 3])
def test_pool_eliminate_numpy_reference_matches_the_kernels(seed):
    """backends/host.py's NumPy loop (the CUDA backend's fallback without _core) takes the same
    removals as the textbook reference."""
    A, b, w_bar, lam, C, G0, xC = _pool_problem(seed)
    _, path = ref.greedy_obs(A, b, A.shape[1] - 5, lam, w_bar, candidates=C)
    np.testing.assert_array_equal(C[host.pool_eliminate(G0, xC, 5)], [q for q, _ in path])
    x = np.array([np.nan, 1.0, 2.0, 0.5, 3.0, 1.5])
    G = np.zeros((6, 6))
    G[3, 3] = 1.0
    np.testing.assert_array_equal(host.pool_eliminate(G, x, 6), [1, 5, 2, 4, 3, 0])
