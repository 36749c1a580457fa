"""The solver-quality pipeline of ``chita_core.iht``: the kernel it adds (column_sqnorms; the
support Gram is a contract op, tests/test_kernels.py), its start supports (magnitude, OBS,
multistep OBS), exact refits, swap local search (chita_core/stages/) and the options that
drive them (``init``, ``refine``, ``swaps``, ``IHTResult.stages``). Baselines and optima come
from tests/reference.py (dense float64 NumPy, brute force), never from chita_core itself.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import re

import numpy as np
import pytest
import reference as ref
from conftest import TOLERANCES, _make_problem, layout, skip_on_device, tie_free_vector

import chita_core
from chita_core._point import Point
from chita_core.backends import BACKENDS, get_backend
from chita_core.stages import greedy as _greedy
from chita_core.stages import starts as _starts
from chita_core.stages.swaps import swap_search

# Relative slack for "never worse than": objectives are exact float64 but summed in different
# orders by the solver and the reference.
SLACK = 1e-9


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    """The refinement stages and the reference do many small (n x n, candidate-sized) dense
    products and factorizations; a multi-threaded BLAS only adds contention on them (5-8x
    slower on a busy 2-core machine). Results do not depend on it beyond rounding."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: tests only get slower
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def _numba_single_thread():
    try:
        import numba
    except ImportError:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


@pytest.fixture
def solver_backend(backend):
    """``backend`` for solver-level tests. numba runs on one thread here: its results are
    bit-identical for every thread count (tests/test_solver.py checks that), and its parallel
    regions (one per Cholesky column, per gradient, ...) cost milliseconds each on a busy 2-core
    machine, which would make these hundreds of small solves take minutes. The kernel tests keep
    numba's default thread count; the C++ backend always runs with its default threads."""
    if backend != "numba":
        yield backend
        return
    with _numba_single_thread():
        yield backend


@pytest.fixture
def solver_kernels(solver_backend):
    return get_backend(solver_backend)[1]


def _both_backends():
    reasons = chita_core.available_backends()
    missing = {b: reasons[b] for b in BACKENDS if reasons[b] is not None}
    if missing:
        pytest.skip(f"needs every backend; unavailable: {missing}")


def _f_zero(A, b, ridge, w_bar):
    """f at w = 0: the size of a problem, for absolute slack where the optimum cancels to ~0."""
    p = A.shape[1]
    return ref.objective(A, b, np.zeros(p), ridge, w_bar)


def _le(f, bound, scale, rel=SLACK):
    """f <= bound up to rel relative to |bound|, plus rounding level relative to the problem."""
    return f <= bound + rel * abs(bound) + 1e-13 * scale


def correlated_pruning_problem(n, p, seed, order="C", dtype=np.float64, rho=0.8):
    """Pruning setup (dense tie-free w_bar, b = A w_bar) with columns sharing a random factor
    (A = (Z + rho u v^T) D / sqrt(n), D a log-normal column scaling): magnitude pruning ignores
    the scaling and correlation and OBS ignores the interactions between pruned weights, so
    neither baseline is optimal."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, p))
    u = rng.standard_normal((n, 1))
    v = rng.uniform(0.5, 1.5, size=(1, p))
    scale = np.exp(0.5 * rng.standard_normal(p))
    A = layout(((Z + rho * u * v) * scale / np.sqrt(n)).astype(dtype), order)
    w_bar = tie_free_vector(rng, p, dtype)
    b = (A.astype(np.float64) @ w_bar.astype(np.float64)).astype(dtype)
    return A, b, w_bar


def _problem_on(kernels, A, b, ridge, w_bar):
    """The solver's prepared problem on the backend of ``kernels``."""
    name = next(b for b in BACKENDS if get_backend(b)[1] is kernels)
    return chita_core.Problem(A, b, ridge=ridge, w_bar=w_bar, backend=name)


def _refit(prob, support):
    """(w, r, f) of the exact refit on ``support``."""
    point = prob.point(support)
    return point.w, point.r, point.f


def _swap_search(prob, support, w, r, f, **options):
    """swap_search from the point (support, w, r, f): (support, w, r, f, stats)."""
    end, stats = swap_search(prob, Point(support, w, r, f), **options)
    return end.support, end.w, end.r, end.f, stats


def _plain_iht_kwargs():
    """Options that turn the pipeline off: plain IHT as in tests/reference.py (and CHITA's
    active set off too, where this version of ``iht`` has that option)."""
    kw = {"refine": False, "swaps": False}
    if "active_set" in inspect.signature(chita_core.iht).parameters:
        kw["active_set"] = False
    return kw


def _iht_stage_index(res):
    """Index of the IHT stage ("iht + refit", or a variant such as "active-set iht + refit")."""
    idx = [i for i, s in enumerate(res.stages) if "iht" in s[0]]
    assert len(idx) == 1, res.stages
    return idx[0]


_SWAP_LABEL = re.compile(r"^swaps \((\d+) in (\d+) rounds\)$")


def _stage_names(res):
    return [s[0] for s in res.stages]


def _swap_count(res):
    """(swaps, rounds) parsed from the swaps stage label, or None without a swaps stage."""
    found = [s[0] for s in res.stages if s[0].startswith("swaps")]
    if not found:
        return None
    assert len(found) == 1, res.stages
    m = _SWAP_LABEL.match(found[0])
    assert m, f"unexpected swaps stage label {found[0]!r}"
    return int(m.group(1)), int(m.group(2))


# ----------------------------------------------------------------------------------------------
# 1. Kernel column_sqnorms against NumPy float64 (support_gram: tests/test_kernels.py)
# ----------------------------------------------------------------------------------------------

# n < p, n > p, one row, one column, 1 x 1, and one shape above the parallel threshold.
SHAPES = [(30, 50), (40, 12), (1, 20), (25, 1), (1, 1), (64, 700)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_column_sqnorms(kernels, make_problem, dtype, order, shape):
    n, p = shape
    A = make_problem(n, p, dtype=dtype, order=order, seed=101).A
    out = np.full(p, np.nan)  # written, never read
    kernels.column_sqnorms(A, out)
    A64 = A.astype(np.float64)
    # Sums of squares: no cancellation, so an elementwise relative tolerance holds.
    np.testing.assert_allclose(out, np.einsum("ij,ij->j", A64, A64), rtol=1e-12, atol=0)


def test_column_sqnorms_wide_c_order_blocks(kernels, make_problem, dtype):
    # p not a multiple of any block size, above the parallel threshold.
    A = make_problem(40, 4999, dtype=dtype, order="C", seed=102).A
    out = np.empty(4999)
    kernels.column_sqnorms(A, out)
    A64 = A.astype(np.float64)
    np.testing.assert_allclose(out, np.einsum("ij,ij->j", A64, A64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [2, 5])
def test_column_sqnorms_very_wide_c_order(kernels, n):
    # p = 2e6, C order: the C++ per-thread row-split partials would not fit in cache, so the
    # column-chunked path runs (n = 5: the 4-row sweep plus a remainder row).
    p = 2_000_000
    rng = np.random.default_rng(103)
    A = rng.standard_normal((n, p), dtype=np.float32)
    out = np.empty(p)
    kernels.column_sqnorms(A, out)
    expected = np.zeros(p)
    for i in range(n):
        row = A[i].astype(np.float64)
        expected += row * row
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=0)


def _bad_out_calls():
    # (support_gram is an op on gathered columns through BLAS now, tests/test_kernels.py; its
    # arguments are the solver's own, validated once, not re-checked.)
    return [
        ("sqnorms-short", lambda K, A: K.column_sqnorms(A, np.empty(19)), ValueError),
        ("sqnorms-long", lambda K, A: K.column_sqnorms(A, np.empty(21)), ValueError),
        ("sqnorms-2d", lambda K, A: K.column_sqnorms(A, np.empty((20, 1))), ValueError),
        ("sqnorms-strided", lambda K, A: K.column_sqnorms(A, np.empty(40)[::2]), ValueError),
        ("sqnorms-readonly", lambda K, A: K.column_sqnorms(A, _readonly(np.empty(20))), ValueError),
        # Dtype errors are TypeError for every 1-D vector of the kernel contract.
        ("sqnorms-float32", lambda K, A: K.column_sqnorms(A, np.empty(20, np.float32)), TypeError),
    ]


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    ("label", "call", "exc"), _bad_out_calls(), ids=[c[0] for c in _bad_out_calls()]
)
def test_new_kernels_reject_bad_out(kernels, make_problem, label, call, exc):
    if label in ("sqnorms-2d", "sqnorms-strided", "sqnorms-readonly"):
        skip_on_device(
            kernels,
            "a device copy of `out` has no host strides or read-only flag, and the CUDA "
            "wrappers check dtype, contiguity and size only",
        )
    A = make_problem(10, 20, seed=107).A
    with pytest.raises(exc):
        call(kernels, A)


# ----------------------------------------------------------------------------------------------
# 2. Default iht never worse than magnitude + backsolve and one-shot OBS + backsolve
# ----------------------------------------------------------------------------------------------

# (n, p, ridge / mean squared column norm, kept fraction, order, seed)
BASELINE_CASES = [
    (n, p, rf, keep, order, 200 + i)
    for i, (n, p, rf, keep, order) in enumerate(
        [
            (60, 200, 1e-3, 0.5, "C"),
            (60, 200, 1e-3, 0.1, "F"),
            (60, 200, 1e-1, 0.5, "F"),
            (60, 200, 1e-1, 0.1, "C"),
            (100, 240, 1e-3, 0.5, "F"),
            (100, 240, 1e-3, 0.1, "C"),
            (100, 240, 1e-1, 0.5, "C"),
            (100, 240, 1e-1, 0.1, "F"),
            (40, 300, 1e-3, 0.1, "C"),
            (40, 300, 1e-1, 0.5, "F"),
            (120, 150, 1e-3, 0.5, "C"),  # n close to p
            (120, 150, 1e-1, 0.1, "F"),
        ]
    )
]


def _baselines(A, b, w_bar, k, ridge):
    """(f of magnitude + backsolve, f of one-shot dense OBS + backsolve), all in NumPy."""
    S_mag = ref.topk(w_bar, k)
    _, f_mag = ref.support_objective(A, b, S_mag, ridge, w_bar)
    sal = ref.obs_saliency(A, b, ridge, w_bar)
    S_obs = np.sort(np.argsort(-sal, kind="stable")[:k])
    _, f_obs = ref.support_objective(A, b, S_obs, ridge, w_bar)
    return f_mag, f_obs


def test_default_never_worse_than_magnitude_or_obs(solver_backend):
    rows, bad = [], []
    for n, p, rf, keep, order, seed in BASELINE_CASES:
        A, b, w_bar = correlated_pruning_problem(n, p, seed, order)
        ridge = rf * float(np.mean(np.sum(A * A, axis=0)))
        k = max(1, round(keep * p))
        f_mag, f_obs = _baselines(A, b, w_bar, k, ridge)
        res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, backend=solver_backend)
        scale = _f_zero(A, b, ridge, w_bar)
        case = f"n={n} p={p} k={k} ridge={ridge:.3g} {order} seed={seed}"
        rows.append((case, res.objective, f_mag, f_obs))
        if not (_le(res.objective, f_mag, scale) and _le(res.objective, f_obs, scale)):
            bad.append(
                f"{case}: iht {res.objective:.12g}, magnitude {f_mag:.12g}, obs {f_obs:.12g}"
            )
    assert not bad, "default iht worse than a baseline:\n" + "\n".join(bad)
    # The cases are meant to be hard for both baselines: the default must beat the better one by
    # more than 1e-6 relative on most of them, or this test checks nothing.
    strict = sum(f < (1 - 1e-6) * min(fm, fo) for _, f, fm, fo in rows)
    assert strict >= 0.75 * len(rows), rows


# ----------------------------------------------------------------------------------------------
# 3. Tiny problems: the default reaches the exact best subset
# ----------------------------------------------------------------------------------------------


def _tiny_instances():
    """(n, p, k, ridge, pruning, seed): n in {5, 30}, p in {8, 12}, k in {1, 3, p//2, p-1},
    ridge in {0, 0.1}, regression (b random) and pruning (b = A w_bar). Includes n < k with
    ridge > 0 (n = 5, k = 6, 7, 11)."""
    out = []
    for n in (5, 30):
        for p in (8, 12):
            for k in sorted({1, 3, p // 2, p - 1}):
                for ridge in (0.0, 0.1):
                    for pruning in (False, True):
                        seed = 7 * n + 100 * p + 3 * k + int(10 * ridge) + 1000 * pruning
                        out.append((n, p, k, ridge, pruning, seed))
    return out


TINY = _tiny_instances()


@functools.cache
def _tiny_optimum(n, p, k, ridge, pruning, seed):
    prob = _make_problem(n, p, seed=seed, pruning=pruning)
    S, _, f_opt = ref.best_subset(prob.A64, prob.b64, k, ridge, prob.w_bar64)
    return prob, S, f_opt


def _tiny_gaps(backend):
    """[(instance, relative gap to the optimum, stages)] for the default iht on TINY."""
    out = []
    for inst in TINY:
        k, ridge = inst[2], inst[3]
        prob, _, f_opt = _tiny_optimum(*inst)
        res = chita_core.iht(prob.A, prob.b, k, ridge=ridge, w_bar=prob.w_bar, backend=backend)
        f0 = _f_zero(prob.A64, prob.b64, ridge, prob.w_bar64)
        # No k-sparse point beats the best subset.
        assert res.objective >= f_opt - 1e-9 * max(f_opt, 1e-12 * f0), inst
        gap = (res.objective - f_opt) / max(f_opt, 1e-12 * f0)
        out.append((inst, gap, res.stages))
    return out


def test_tiny_default_reaches_best_subset(solver_backend):
    assert len(TINY) >= 20
    assert any(n < k and ridge > 0 for n, _, k, ridge, _, _ in TINY)
    gaps = _tiny_gaps(solver_backend)
    failures = [(inst, gap) for inst, gap, _ in gaps if gap > 1e-9]
    rate = 1 - len(failures) / len(gaps)
    msg = (
        f"default iht found the best subset on {len(gaps) - len(failures)}/{len(gaps)} tiny "
        f"instances ({rate:.1%}); misses (n, p, k, ridge, pruning, seed) -> relative gap:\n"
        + "\n".join(f"  {inst} -> {gap:.3g}" for inst, gap in failures)
    )
    # Tiny problems (p <= 32, at most 2e5 supports) are enumerated exactly by the default, so
    # every instance must reach the best subset (swap search alone stops at 1-swap local optima).
    assert rate == 1.0, msg
    assert all(any(label.startswith("exhaustive") for label, _, _ in st) for _, _, st in gaps)


# ----------------------------------------------------------------------------------------------
# 4. The returned w is the exact minimiser on its own support
# ----------------------------------------------------------------------------------------------

# (n, p, k, ridge, kind, seed); kind: "regression" (b random, w_bar = 0), "pruning"
# (b = A w_bar, make_problem), "correlated" (correlated_pruning_problem). Several make the swap
# search move (ridge 0 and ridge > 0, k < n and k > n).
OWN_SUPPORT_CASES = [
    (60, 300, 30, 0.0, "correlated", 301),  # ridge 0, k < n, swaps move
    (60, 300, 30, 3e-5, "correlated", 301),  # tiny ridge > 0 (1e-5 x mean column norm), k < n
    (60, 300, 100, 0.0, "correlated", 302),  # ridge 0, k > n
    (60, 300, 150, 0.01, "correlated", 303),  # ridge > 0, swaps move
    (40, 120, 10, 0.0, "regression", 304),
    (40, 120, 60, 0.3, "pruning", 305),
    (5, 8, 4, 0.0, "regression", 847),  # tiny, ridge 0, k < n
    (100, 80, 20, 0.0, "regression", 306),  # n > p
    (30, 100, 50, 0.1, "regression", 307),  # k > n, ridge > 0
]


def _own_support_problem(n, p, kind, seed, dtype=np.float64, order="C"):
    if kind == "correlated":
        A, b, w_bar = correlated_pruning_problem(n, p, seed, order, dtype)
        return A, b, w_bar
    prob = _make_problem(n, p, seed=seed, dtype=dtype, order=order, pruning=(kind == "pruning"))
    return prob.A, prob.b, prob.w_bar


@pytest.mark.parametrize(
    ("n", "p", "k", "ridge", "kind", "seed"),
    OWN_SUPPORT_CASES,
    ids=[f"{c[0]}x{c[1]}-k{c[2]}-ridge{c[3]}-{c[4]}" for c in OWN_SUPPORT_CASES],
)
def test_result_is_exact_refit_on_its_support(solver_backend, dtype, n, p, k, ridge, kind, seed):
    order = "CF"[seed % 2]
    A, b, w_bar = _own_support_problem(n, p, kind, seed, dtype, order)
    res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, backend=solver_backend)
    A64, b64 = A.astype(np.float64), b.astype(np.float64)
    wb64 = None if w_bar is None else w_bar.astype(np.float64)
    S = np.asarray(res.support)
    w_opt, f_opt = ref.support_objective(A64, b64, S, ridge, wb64)
    w = np.asarray(res.w, dtype=np.float64)
    f_scale = _f_zero(A64, b64, ridge, wb64)
    info = (
        f"objective={res.objective!r}, exact refit on the same support={f_opt!r}, "
        f"stages={res.stages}"
    )
    if ridge > 0 or k <= n:  # unique minimiser on S (else any interpolating w is optimal)
        rtol = 1e-8 if dtype == np.float64 else 2e-6  # res.w is stored in the dtype of A
        np.testing.assert_allclose(
            w, w_opt, rtol=rtol, atol=rtol * float(np.max(np.abs(w_opt))), err_msg=info
        )
    # The objective is the one of the exact refit on the support ...
    assert abs(res.objective - f_opt) <= 1e-8 * f_opt + 1e-12 * f_scale, info
    # ... and of the returned w (rounded to the dtype of A), by the API and by the reference.
    f_api = chita_core.objective(A, b, res.w, ridge=ridge, w_bar=w_bar, backend=solver_backend)
    f_ref = ref.objective(A64, b64, w, ridge, wb64)
    tol = TOLERANCES[np.dtype(dtype)]
    tol.close(f_api, f_ref, scale=f_scale)
    tol.close(res.objective, f_ref, kind="output", scale=f_scale)


# ----------------------------------------------------------------------------------------------
# 5. Options: refine, swaps, init, stages
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ridge", "pruning", "seed"), [(0.0, False, 401), (0.5, True, 402)])
def test_refine_false_swaps_false_is_plain_iht(
    solver_backend, make_problem, order, ridge, pruning, seed
):
    prob = make_problem(50, 300, order=order, seed=seed, pruning=pruning)
    kw = _plain_iht_kwargs()
    res = chita_core.iht(
        prob.A, prob.b, 10, ridge=ridge, w_bar=prob.w_bar, backend=solver_backend, **kw
    )
    expected = ref.iht(prob.A64, prob.b64, 10, ridge=ridge, w_bar=prob.w_bar64)
    assert min([s.margin for s in expected.steps] + [1.0]) > 1e-10, "data not tie-free enough"
    np.testing.assert_array_equal(np.asarray(res.support), expected.support)
    assert res.n_iter == expected.n_iter
    f_scale = _f_zero(prob.A64, prob.b64, ridge, prob.w_bar64)
    TOLERANCES[np.dtype(np.float64)].close(
        res.objective, expected.objective, kind="solve", scale=f_scale
    )
    assert _stage_names(res) == ["iht"]
    # refine=False alone is plain IHT too (swaps need the refit machinery).
    kw.pop("swaps")
    res2 = chita_core.iht(
        prob.A, prob.b, 10, ridge=ridge, w_bar=prob.w_bar, backend=solver_backend, **kw
    )
    np.testing.assert_array_equal(np.asarray(res2.w), np.asarray(res.w))
    assert _stage_names(res2) == ["iht"]


def _swappy_problem():
    """A problem on which the default makes well over 5 swaps."""
    A, b, w_bar = correlated_pruning_problem(60, 300, 303)
    return A, b, w_bar, 150, 0.01


def test_swaps_zero_and_false_disable_swaps(solver_backend):
    A, b, w_bar, k, ridge = _swappy_problem()
    kw = dict(ridge=ridge, w_bar=w_bar, init="magnitude", backend=solver_backend)
    default = chita_core.iht(A, b, k, **kw)
    assert _swap_count(default)[0] > 5, default.stages  # the search does move here
    for off in (0, False):
        res = chita_core.iht(A, b, k, swaps=off, **kw)
        assert _swap_count(res) is None, res.stages
        # Without swaps the result is the best of the earlier stages.
        assert res.objective == min(s[1] for s in res.stages)
        assert res.objective >= default.objective * (1 - SLACK)


@pytest.mark.parametrize("budget", [1, 5])
def test_swaps_int_is_a_budget(solver_backend, budget):
    A, b, w_bar, k, ridge = _swappy_problem()
    base = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, swaps=0, backend=solver_backend)
    res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, swaps=budget, backend=solver_backend)
    n_swaps, _ = _swap_count(res)
    assert 1 <= n_swaps <= budget, res.stages
    # The support differs from the swap-free result in at most `budget` positions.
    moved = np.setdiff1d(np.asarray(res.support), np.asarray(base.support)).size
    assert moved <= n_swaps, (moved, res.stages)
    assert res.objective <= base.objective


def test_swaps_true_budget_is_min_k_and_p_minus_k(solver_backend):
    # swaps=True allows min(k, p - k, 2000) swaps (documented): few when k is small.
    A, b, w_bar = correlated_pruning_problem(40, 120, 502)
    for k in (1, 2, 3):
        res = chita_core.iht(A, b, k, ridge=0.05, w_bar=w_bar, backend=solver_backend)
        assert _swap_count(res)[0] <= k, res.stages


def test_swaps_budget_matches_direct_swap_search(solver_kernels, solver_backend):
    # iht(swaps=5) = swap_search(max_swaps=5) from the best point of the earlier stages.
    A, b, w_bar, k, ridge = _swappy_problem()
    base = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, swaps=0, backend=solver_backend)
    res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, swaps=5, backend=solver_backend)
    prob = _problem_on(solver_kernels, A, b, ridge, w_bar)
    S0 = np.asarray(base.support)
    w0, r0, f0 = _refit(prob, S0)
    S, _, _, f, stats = _swap_search(prob, S0, w0, r0, f0, max_swaps=5)
    assert stats.swaps <= 5
    assert _swap_count(res) == (stats.swaps, stats.rounds)
    np.testing.assert_array_equal(np.asarray(res.support), S)
    np.testing.assert_allclose(res.objective, f, rtol=1e-12)


def test_init_magnitude_runs_no_obs(solver_backend):
    A, b, w_bar, k, ridge = _swappy_problem()
    res = chita_core.iht(
        A, b, k, ridge=ridge, w_bar=w_bar, init="magnitude", backend=solver_backend
    )
    names = _stage_names(res)
    assert names[0] == "magnitude + refit", names
    assert not any("obs" in s for s in names), names
    # The magnitude stage is magnitude + backsolve, computed independently.
    _, f_mag = ref.support_objective(A, b, ref.topk(w_bar, k), ridge, w_bar)
    np.testing.assert_allclose(res.stages[0][1], f_mag, rtol=1e-9)
    assert res.objective <= f_mag * (1 + SLACK)


@pytest.mark.parametrize("init", ["obs", "obs_multistep"])
def test_init_obs_runs_its_stage(solver_backend, init):
    A, b, w_bar, k, ridge = _swappy_problem()
    res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, init=init, backend=solver_backend)
    names = _stage_names(res)
    assert f"{init} + refit" in names, names
    f_stage = dict((s[0], s[1]) for s in res.stages)[f"{init} + refit"]
    assert res.objective <= f_stage * (1 + SLACK)
    if init == "obs":
        # One-shot OBS + backsolve, computed densely.
        _, f_obs = _baselines(A, b, w_bar, k, ridge)
        np.testing.assert_allclose(f_stage, f_obs, rtol=1e-9)


def test_init_auto_runs_greedy_obs_on_small_problems(solver_backend):
    A, b, w_bar, k, ridge = _swappy_problem()
    res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, backend=solver_backend)
    names = _stage_names(res)
    # Affordable greedy OBS supersedes the OBS starts: magnitude, IHT, greedy OBS from the whole
    # support (max(3k, 2n, p/4) = 450 > p = 300 columns), swaps.
    assert names[0] == "magnitude + refit" and names[1].endswith("iht + refit"), names
    assert names[2] == "greedy obs from 300 + refit", names
    assert names[3].startswith("swaps") and len(names) == 4, names


def test_init_auto_adds_obs_where_greedy_is_over_budget(solver_backend, monkeypatch):
    monkeypatch.setattr(chita_core._pipeline, "_GREEDY_SHARE", 0.0)  # greedy OBS never fits
    A, b, w_bar, k, ridge = _swappy_problem()
    res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, backend=solver_backend)
    names = _stage_names(res)
    # Small n^2 p: multistep OBS, with the one-shot OBS support from its first step.
    assert names[:3] == ["magnitude + refit", "obs + refit", "obs_multistep + refit"], names
    assert _iht_stage_index(res) == 3 and names[3].endswith("iht + refit"), names
    assert names[4].startswith("swaps") and len(names) == 5, names


@pytest.mark.parametrize("init", ["auto", "magnitude", "obs", "obs_multistep", "greedy"])
@pytest.mark.parametrize("swaps", [True, 0, 3])
def test_stages_best_so_far(solver_backend, init, swaps):
    A, b, w_bar = correlated_pruning_problem(40, 120, 501)
    k, ridge = 24, 0.05
    res = chita_core.iht(
        A, b, k, ridge=ridge, w_bar=w_bar, init=init, swaps=swaps, backend=solver_backend
    )
    assert res.stages, "refine=True records stages"
    for label, f_value, seconds in res.stages:
        assert isinstance(label, str) and np.isfinite(f_value) and seconds >= 0
    f = [s[1] for s in res.stages]
    scale = _f_zero(A, b, ridge, w_bar)
    # Start supports may be worse than each other; from the IHT stage on each stage reports the
    # best point so far, so stage objectives never rise, and the result is the last one.
    first_iht = _iht_stage_index(res)
    for i in range(first_iht, len(f)):
        assert _le(f[i], min(f[:i]), scale), res.stages
    assert _le(res.objective, min(f), scale), res.stages
    assert res.objective == f[-1], res.stages


# ----------------------------------------------------------------------------------------------
# 6. swap_search directly
# ----------------------------------------------------------------------------------------------

SWAP_CASES = [
    # (n, p, k, ridge, kind, seed)
    (60, 300, 30, 0.0, "correlated", 301),
    (60, 300, 30, 3e-5, "correlated", 301),  # tiny ridge > 0
    (60, 300, 150, 0.01, "correlated", 303),
    (40, 120, 10, 0.0, "regression", 601),
    (40, 120, 10, 0.2, "regression", 602),
    (30, 100, 50, 0.1, "regression", 307),
    (40, 120, 20, 0.0, "pruning", 603),
]


@pytest.mark.parametrize(
    ("n", "p", "k", "ridge", "kind", "seed"),
    SWAP_CASES,
    ids=[f"{c[0]}x{c[1]}-k{c[2]}-ridge{c[3]}-{c[4]}" for c in SWAP_CASES],
)
def test_swap_search_monotone_and_exact(solver_kernels, order, n, p, k, ridge, kind, seed):
    A, b, w_bar = _own_support_problem(n, p, kind, seed, order=order)
    prob = _problem_on(solver_kernels, A, b, ridge, w_bar)
    wb = prob.w_bar
    # Start from the magnitude support of w_bar (pruning) or of A^T b (regression), refit.
    start = wb if w_bar is not None else A.T @ b
    S0 = ref.topk(start, k)
    w0, r0, f0 = _refit(prob, S0)
    S, w, r, f, stats = _swap_search(prob, S0.copy(), w0, r0, f0, max_swaps=1000)
    assert stats.swaps >= 1, "the case should make the search move"
    assert f <= f0, (f, f0)
    assert S.dtype == np.int64 and S.size == k and np.all(np.diff(S) > 0)
    assert not np.any(np.delete(w, S)), "nonzeros off the returned support"
    # Returned state is consistent ...
    r_ref = A @ w - b
    np.testing.assert_allclose(
        r,
        r_ref,
        rtol=0,
        atol=1e-12 * float((np.abs(A) @ np.abs(w)).max()) + 1e-12 * float(np.abs(b).max()),
    )
    assert f == pytest.approx(ref.objective(A, b, w, ridge, wb), rel=1e-12, abs=1e-300)
    # ... and is the exact refit on the returned support (the unique minimiser there: k <= n).
    assert ridge > 0 or k <= n
    w_opt, f_opt = ref.support_objective(A, b, S, ridge, wb)
    np.testing.assert_allclose(
        w,
        w_opt,
        rtol=1e-8,
        atol=1e-8 * float(np.max(np.abs(w_opt))),
        err_msg=f"swap_search returned w off the exact refit ({stats}); f={f!r}, refit f={f_opt!r}",
    )


def _near_duplicate_problem(p, k, seed, ridge):
    """Planted k-sparse regression; column 0 is a near copy of planted column 3. The start
    support holds column 0 instead of 3: the single swap 0 -> 3 lowers f by a large factor."""
    n = 40
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, p)) / np.sqrt(n)
    others = rng.choice(np.arange(4, p), size=k - 1, replace=False)
    planted = np.sort(np.concatenate([[3], others]))
    w_true = np.zeros(p)
    w_true[planted] = rng.uniform(1.0, 2.0, size=k) * rng.choice([-1.0, 1.0], size=k)
    A[:, 0] = A[:, 3] + 0.05 * rng.standard_normal(n) / np.sqrt(n)
    b = A @ w_true + 0.01 * rng.standard_normal(n)
    start = np.sort(np.concatenate([[0], others])).astype(np.int64)
    return A, b, start, planted.astype(np.int64)


@pytest.mark.parametrize("ridge", [0.0, 1e-4])
def test_swap_search_finds_near_duplicate_swap(solver_kernels, ridge):
    # p - k = 8 <= k: every pruned column is a candidate to enter.
    A, b, start, planted = _near_duplicate_problem(20, 12, 611, ridge)
    prob = _problem_on(solver_kernels, A, b, ridge, None)
    w0, r0, f0 = _refit(prob, start)
    _, f_good = ref.support_objective(A, b, planted, ridge)
    assert f_good < 0.5 * f0  # the swap matters
    S, _, _, f, stats = _swap_search(prob, start, w0, r0, f0, max_swaps=10)
    assert 3 in S and 0 not in S, (S, stats)
    assert f <= f_good * (1 + 1e-6)


@pytest.mark.parametrize("ridge", [0.0, 1e-4])
def test_swap_search_near_duplicate_few_kept(solver_kernels, ridge):
    # Same construction with k = 5 of p = 20: 15 pruned columns, fewer than n_candidates = 64, so
    # all of them should be screened as candidates to enter, as with k = 12 above.
    A, b, start, planted = _near_duplicate_problem(20, 5, 612, ridge)
    prob = _problem_on(solver_kernels, A, b, ridge, None)
    w0, r0, f0 = _refit(prob, start)
    _, f_good = ref.support_objective(A, b, planted, ridge)
    assert f_good < 0.9 * f0  # the swap matters
    S, _, _, f, stats = _swap_search(prob, start, w0, r0, f0, max_swaps=10)
    assert f <= f_good * (1 + 1e-6), (
        f"swap_search stopped at f={f!r} on {S.tolist()} ({stats}); the single swap 0 -> 3 "
        f"gives {f_good!r}"
    )


def _all_single_swaps(A, b, S, ridge, w_bar):
    """min over every single swap of the exact refit objective, and the swap (leave, enter)."""
    p = A.shape[1]
    best = (np.inf, None)
    inside = set(S.tolist())
    for i in inside:
        for j in range(p):
            if j in inside:
                continue
            S2 = np.array(sorted(inside - {i} | {j}), dtype=np.int64)
            _, f2 = ref.support_objective(A, b, S2, ridge, w_bar)
            if f2 < best[0]:
                best = (f2, (i, j))
    return best


@pytest.mark.parametrize(
    ("n", "p", "k", "ridge", "seed"),
    [
        (30, 12, 1, 0.1, 621),
        (30, 12, 3, 0.1, 622),
        (30, 12, 3, 0.0, 623),
        (30, 12, 6, 0.1, 624),
        (5, 8, 1, 0.1, 625),
        (5, 12, 3, 0.1, 626),
    ],
)
def test_swap_search_ends_at_one_swap_local_optimum(solver_kernels, n, p, k, ridge, seed):
    # With k and p - k both below n_candidates (64) every pair (leave, enter) is scored exactly,
    # so when the search stops with budget left no single swap may lower f any more.
    prob0 = _make_problem(n, p, seed=seed, pruning=True)
    A, b, w_bar = prob0.A64, prob0.b64, prob0.w_bar64
    prob = _problem_on(solver_kernels, A, b, ridge, w_bar)
    S0 = ref.topk(w_bar, k)
    w0, r0, f0 = _refit(prob, S0)
    S, _, _, f, stats = _swap_search(prob, S0, w0, r0, f0, max_swaps=1000)
    assert stats.swaps < 1000 and stats.rounds < 100
    assert f <= f0
    f_swap, pair = _all_single_swaps(A, b, S, ridge, w_bar)
    f_here = ref.support_objective(A, b, S, ridge, w_bar)[1]
    assert f_swap >= f_here * (1 - 1e-9), (
        f"swap_search stopped on {S.tolist()} with f={f_here!r} ({stats}) but swapping "
        f"(leave, enter)={pair} gives {f_swap!r}"
    )


# ----------------------------------------------------------------------------------------------
# 7. OBS saliencies and multistep OBS
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "p", "ridge", "pruning", "seed"),
    [
        (40, 300, 0.05, True, 701),
        (40, 300, 1.0, False, 702),
        (120, 80, 0.01, True, 703),  # n > p
        (1, 30, 0.5, True, 704),  # one row
        (60, 200, 1e-3, True, 705),
    ],
)
def test_obs_saliency_matches_dense(solver_kernels, dtype, order, n, p, ridge, pruning, seed):
    prob0 = _make_problem(n, p, dtype=dtype, order=order, seed=seed, pruning=pruning)
    prob = _problem_on(solver_kernels, prob0.A, prob0.b, ridge, prob0.w_bar)
    got = _starts.obs_saliency(prob)
    expected = ref.obs_saliency(prob0.A64, prob0.b64, ridge, prob0.w_bar64)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12 * float(np.max(expected)))


def _multistep_vs_oneshot(solver_kernels):
    rows = []
    for i in range(12):
        n, p = (40, 200) if i % 2 else (80, 160)
        A, b, w_bar = correlated_pruning_problem(n, p, 720 + i, "F" if i % 3 else "C")
        ridge = (1e-3 if i % 4 < 2 else 1e-1) * float(np.mean(np.sum(A * A, axis=0)))
        k = p // 10 if i % 2 else p // 2
        prob = _problem_on(solver_kernels, A, b, ridge, w_bar)
        S_multi, S_free = _starts.obs_multistep_support(prob, k)
        sal = _starts.obs_saliency(prob)
        S_one = np.sort(np.argpartition(-sal, k - 1)[:k]).astype(np.int64)
        # The first multistep step ranks all p weights: its top k is the one-shot support.
        np.testing.assert_array_equal(S_free, S_one)
        rows.append(
            (
                i,
                k,
                S_multi,
                ref.support_objective(A, b, S_multi, ridge, w_bar)[1],
                ref.support_objective(A, b, S_one, ridge, w_bar)[1],
            )
        )
    return rows


def test_obs_multistep_support(solver_kernels):
    rows = _multistep_vs_oneshot(solver_kernels)
    for i, k, S, _, _ in rows:
        assert S.dtype == np.int64 and S.shape == (k,), (i, S)
        assert np.all(np.diff(S) > 0), f"case {i}: not sorted/distinct"
    wins = sum(fm <= fo * (1 + SLACK) for _, _, _, fm, fo in rows)
    assert wins >= 0.7 * len(rows), [(i, fm, fo) for i, _, _, fm, fo in rows]


def test_obs_multistep_single_step_is_one_shot(solver_kernels):
    # steps=1 is one-shot OBS.
    A, b, w_bar = correlated_pruning_problem(40, 150, 730)
    prob = _problem_on(solver_kernels, A, b, 0.01, w_bar)
    sal = ref.obs_saliency(A, b, 0.01, w_bar)
    for k in (1, 15, 149):
        S, S_one = _starts.obs_multistep_support(prob, k, steps=1)
        np.testing.assert_array_equal(S, np.sort(np.argsort(-sal, kind="stable")[:k]))
        np.testing.assert_array_equal(S_one, S)


# ----------------------------------------------------------------------------------------------
# 7b. Greedy OBS from a superset against the textbook (dense |S| x |S|) greedy OBS
# ----------------------------------------------------------------------------------------------

GREEDY_CASES = [
    # (n, p, k, ridge factor, problem kind, seed)
    (30, 80, 20, 1e-2, "correlated", 801),
    (30, 80, 5, 1e-1, "pruning", 802),
    (60, 50, 10, 1e-3, "regression", 803),  # n > p
    (20, 90, 60, 1e-2, "correlated", 804),  # k > n
]


def _greedy_problem(kind, n, p, seed, dtype=np.float64, order="F"):
    A, b, w_bar = _own_support_problem(n, p, kind, seed, dtype, order)
    return A, b, w_bar


def _clear_path(path, k_removed, margin=1e-6):
    """The first ``k_removed`` reference removals were decided by a clear saliency margin (else
    two exact implementations may legitimately pick differently)."""
    return all(m > margin for _, m in path[:k_removed])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("n", "p", "k", "rf", "kind", "seed"),
    GREEDY_CASES,
    ids=[f"{c[0]}x{c[1]}-k{c[2]}-{c[4]}" for c in GREEDY_CASES],
)
def test_greedy_obs_one_at_a_time_is_textbook_greedy(
    solver_kernels, order, dtype, n, p, k, rf, kind, seed
):
    """block = pool = 1: every removal is the least salient weight, exactly."""
    A, b, w_bar = _greedy_problem(kind, n, p, seed, dtype, order)
    ridge = rf * float(np.mean(np.sum(np.asarray(A, np.float64) ** 2, axis=0)))
    prob = _problem_on(solver_kernels, A, b, ridge, w_bar)
    rng = np.random.default_rng(seed)
    screens = [np.arange(p), np.sort(rng.choice(p, size=(p + k) // 2, replace=False))]
    for screen in screens:
        expected, path = ref.greedy_obs(A, b, k, ridge, w_bar, start=screen)
        assert _clear_path(path, len(path)), "test problem has near-tied saliencies"
        got = _greedy.greedy_obs_support(prob, screen.astype(np.int64), k, block=1, pool=1)
        assert got.dtype == np.int64 and got.shape == (k,)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("n", "p", "k", "rf", "kind", "seed"),
    GREEDY_CASES,
    ids=[f"{c[0]}x{c[1]}-k{c[2]}-{c[4]}" for c in GREEDY_CASES],
)
def test_greedy_obs_blocks_with_full_pools_are_exact(solver_kernels, n, p, k, rf, kind, seed):
    """When the pool holds every surviving weight, the within-pool removals are exact greedy and
    the Woodbury block updates carry x, d and K^-1 across blocks: textbook greedy again."""
    A, b, w_bar = _greedy_problem(kind, n, p, seed)
    ridge = rf * float(np.mean(np.sum(A * A, axis=0)))
    prob = _problem_on(solver_kernels, A, b, ridge, w_bar)
    expected, _ = ref.greedy_obs(A, b, k, ridge, w_bar)
    for block in (3, 16):
        got = _greedy.greedy_obs_support(prob, np.arange(p, dtype=np.int64), k, block=block, pool=p)
        np.testing.assert_array_equal(got, expected)


def test_greedy_obs_default_blocks_close_to_textbook(solver_kernels):
    """Default blocks (removals chosen within pools 16 larger): within 2% of textbook greedy,
    and far better than magnitude + backsolve on problems where that is weak."""
    rows = []
    for i in range(6):
        n, p = (40, 240) if i % 2 else (60, 200)
        A, b, w_bar = correlated_pruning_problem(n, p, 810 + i, "F" if i % 3 else "C")
        ridge = (1e-3 if i < 3 else 1e-1) * float(np.mean(np.sum(A * A, axis=0)))
        k = p // 10 if i % 2 else p // 4
        prob = _problem_on(solver_kernels, A, b, ridge, w_bar)
        got = _greedy.greedy_obs_support(prob, np.arange(p, dtype=np.int64), k)
        assert got.shape == (k,) and np.all(np.diff(got) > 0)
        S_ref, _ = ref.greedy_obs(A, b, k, ridge, w_bar)
        f_got = ref.support_objective(A, b, got, ridge, w_bar)[1]
        f_ref = ref.support_objective(A, b, S_ref, ridge, w_bar)[1]
        f_mag = ref.support_objective(A, b, ref.topk(w_bar, k), ridge, w_bar)[1]
        rows.append((i, f_got, f_ref, f_mag))
    assert all(f <= 1.02 * fr for _, f, fr, _ in rows), rows
    assert sum(f < 0.9 * fm for _, f, _, fm in rows) >= 4, rows


def test_greedy_obs_ridge_zero_and_edges(solver_kernels):
    A, b, w_bar = correlated_pruning_problem(30, 70, 820, "F")
    prob = _problem_on(solver_kernels, A, b, 0.0, w_bar)
    for k in (1, 35, 69):
        got = _greedy.greedy_obs_support(prob, np.arange(70, dtype=np.int64), k)
        assert got.shape == (k,) and np.all(np.diff(got) > 0) and got[-1] < 70
    # A screen of exactly k columns is returned as it is.
    screen = np.array([3, 9, 40], dtype=np.int64)
    got = _greedy.greedy_obs_support(prob, screen, 3)
    np.testing.assert_array_equal(got, screen)


def _reference_screen(start, h, lam, forced, m):
    """Union of the top t by |start| and by start^2 (h + lam), forced always in, t the largest
    with at most m columns; by full sorts."""
    mag, obd = np.abs(start), start * start * (h + lam)
    mag[forced] = obd[forced] = np.inf
    rank_mag = np.empty(start.size, dtype=np.int64)
    rank_obd = np.empty(start.size, dtype=np.int64)
    rank_mag[np.argsort(-mag, kind="stable")] = np.arange(start.size)
    rank_obd[np.argsort(-obd, kind="stable")] = np.arange(start.size)
    best = np.asarray(forced)
    for t in range(1, m + 1):
        union = np.flatnonzero(np.minimum(rank_mag, rank_obd) < t)
        if union.size > m:
            break
        best = np.union1d(union, forced)
    return best


@pytest.mark.parametrize("m", [7, 40, 111, 300])
def test_greedy_screen_is_union_of_magnitude_and_obd(solver_kernels, m):
    A, b, w_bar = correlated_pruning_problem(30, 300, 840, "F")
    # One half of the weights 10x larger with 10x smaller gradients: the same problem to OBS
    # and OBD, not to magnitude.
    A = np.asfortranarray(A.copy())
    A[:, :150] /= 10
    w_bar = w_bar.copy()
    w_bar[:150] *= 10
    b = A @ w_bar
    prob = _problem_on(solver_kernels, A, b, 0.01, w_bar)
    forced = np.array([2, 160, 299], dtype=np.int64)
    got = _greedy.greedy_screen(prob, prob.w_bar, forced, m)
    expected = _reference_screen(w_bar, prob.h, 0.01, forced, m)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64 and got.size <= max(m, forced.size)
    assert got.size >= m // 2 and np.isin(forced, got).all()
    if m >= 40:  # both halves are represented: magnitude alone would take the first half only
        assert (got < 150).sum() < got.size and (got >= 150).sum() > 0


def test_default_also_searches_from_the_iht_support(solver_backend):
    """With swaps=True, IHT's support (better than the starts, worse than greedy OBS) gets its
    own swap search; here that one ends lower, and its end point is the exact result."""
    prob = _make_problem(40, 300, seed=950, pruning=False)
    A, b, w_bar, k = prob.A, prob.b, prob.w_bar, 30
    res = chita_core.iht(A, b, k, ridge=0.01, w_bar=w_bar, backend=solver_backend)
    names = _stage_names(res)
    assert names[-1].startswith("local search from IHT's support"), names
    f = dict((s[0], s[1]) for s in res.stages)
    iht_f = f[names[1]]
    greedy_f = f[names[2]]
    assert names[2].startswith("greedy obs") and greedy_f < iht_f < res.stages[0][1], res.stages
    assert res.objective < res.stages[3][1] * (1 - 1e-9), res.stages  # it found a lower point
    _, f_exact = ref.support_objective(A, b, np.asarray(res.support), 0.01, w_bar)
    np.testing.assert_allclose(res.objective, f_exact, rtol=1e-9)
    # An explicit budget runs one search only (so it bounds the moves from the swap-free result).
    res3 = chita_core.iht(A, b, k, ridge=0.01, w_bar=w_bar, swaps=3, backend=solver_backend)
    assert not any(s.startswith("local search") for s in _stage_names(res3)), res3.stages


def test_greedy_cost_and_screen_size():
    n, k = 1000, 1000
    costs = [_greedy.greedy_cost(n, k, m) for m in (1001, 2000, 3000, 6000)]
    assert all(a < b for a, b in itertools.pairwise(costs))
    # Unlimited budget: max(3k, 2n, p / 4), capped by p.
    assert _greedy.greedy_screen_size(n, 10_000, k, np.inf) == 3000
    assert _greedy.greedy_screen_size(n, 2500, k, np.inf) == 2500
    assert _greedy.greedy_screen_size(n, 6000, 100, np.inf) == 2000  # 2n > p / 4 > 3k
    assert _greedy.greedy_screen_size(n, 40_000, 100, np.inf) == 10_000  # p / 4
    # A budget: the largest m within it.
    budget = _greedy.greedy_cost(n, k, 2500)
    m = _greedy.greedy_screen_size(n, 10_000, k, budget)
    assert m == 2500 and _greedy.greedy_cost(n, k, m + 1) > budget
    # Nothing to remove, or not even one removal affordable.
    assert _greedy.greedy_screen_size(n, k, k, np.inf) is None
    assert _greedy.greedy_screen_size(n, 10_000, k, 1.0) is None


def test_init_greedy_runs_its_stage(solver_backend):
    A, b, w_bar = correlated_pruning_problem(40, 400, 830, "F")
    k, ridge = 40, 0.01
    res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, init="greedy", backend=solver_backend)
    names = _stage_names(res)
    # max(3k, 2n, p/4) = 120 columns: the support IHT reached plus the top |w_bar| and OBD ranks.
    assert names[2] == "greedy obs from 120 + refit", names
    assert not any(s.startswith("obs") for s in names), names
    f_stage = res.stages[2][1]
    assert res.objective <= f_stage * (1 + SLACK)
    # IHT stays on the magnitude support here, so the superset is built around it; textbook
    # greedy OBS from that superset (dense, one removal at a time) reaches the same objective
    # up to the blocking (2%), far below the magnitude start.
    assert res.stages[1][1] == res.stages[0][1], res.stages
    prob = _problem_on(get_backend(solver_backend)[1], A, b, ridge, w_bar)
    screen = _greedy.greedy_screen(prob, prob.w_bar, ref.topk(w_bar, k), 120)
    assert screen.size == 120
    S_ref, _ = ref.greedy_obs(A, b, k, ridge, w_bar, start=screen)
    f_ref = ref.support_objective(A, b, S_ref, ridge, w_bar)[1]
    assert f_stage <= 1.02 * f_ref and f_ref <= 1.02 * f_stage, (f_stage, f_ref)
    assert f_stage < 0.5 * res.stages[0][1], res.stages


# ----------------------------------------------------------------------------------------------
# 8. Validation of the new arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"init": "bogus"}, ValueError, "init"),
        ({"init": "OBS"}, ValueError, "init"),
        ({"init": None}, ValueError, "init"),
        ({"refine": 1}, TypeError, "refine"),
        ({"refine": "yes"}, TypeError, "refine"),
        ({"refine": None}, TypeError, "refine"),
        ({"swaps": -1}, ValueError, "swaps"),
        ({"swaps": 2.5}, TypeError, "swaps"),
        ({"swaps": 3.0}, TypeError, "swaps"),
        ({"swaps": "5"}, TypeError, "swaps"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_new_arguments_validated(solver_backend, make_problem, kwargs, exc, name):
    prob = make_problem(10, 20, seed=801)
    with pytest.raises(exc, match=f"`{name}`"):
        chita_core.iht(prob.A, prob.b, 3, backend=solver_backend, **kwargs)


def test_new_arguments_accept_numpy_scalars(solver_backend, make_problem):
    prob = make_problem(10, 20, seed=802)
    res = chita_core.iht(
        prob.A, prob.b, 3, refine=np.True_, swaps=np.int64(2), backend=solver_backend
    )
    assert res.stages and _swap_count(res)[0] <= 2


# ----------------------------------------------------------------------------------------------
# 9. Determinism and backend agreement
# ----------------------------------------------------------------------------------------------


def test_default_deterministic(solver_backend, order):
    # ridge > 0 and ridge = 0 (shifted scoring); both make the swap search move.
    for ridge, k, seed in ((0.05, 20, 910), (0.0, 8, 911)):
        A, b, w_bar = correlated_pruning_problem(30, 120, seed, order)
        r1 = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, backend=solver_backend)
        r2 = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, backend=solver_backend)
        assert _swap_count(r1)[0] >= 1, r1.stages
        assert r1.w.tobytes() == r2.w.tobytes()
        np.testing.assert_array_equal(r1.support, r2.support)
        assert r1.objective == r2.objective
        assert [s[:2] for s in r1.stages] == [s[:2] for s in r2.stages]


@pytest.mark.parametrize(
    ("n", "p", "k", "ridge", "kind", "seed"),
    [
        (60, 300, 150, 0.01, "correlated", 303),
        (60, 300, 30, 0.05, "correlated", 901),
        (40, 120, 10, 0.2, "regression", 602),
        (50, 200, 100, 0.3, "pruning", 902),
        (40, 120, 10, 0.0, "regression", 304),  # ridge 0
    ],
)
def test_backends_agree_on_default(order, n, p, k, ridge, kind, seed):
    _both_backends()
    A, b, w_bar = _own_support_problem(n, p, kind, seed, order=order)
    with _numba_single_thread():  # bit-identical to any thread count, and fast on a busy machine
        res = {bk: chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, backend=bk) for bk in BACKENDS}
    cpp, numba = res["cpp"], res["numba"]
    np.testing.assert_allclose(cpp.objective, numba.objective, rtol=1e-7)
    assert _stage_names(cpp) == _stage_names(numba)
    np.testing.assert_array_equal(cpp.support, numba.support)
