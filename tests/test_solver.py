"""The public solver API (iht, backsolve, objective, show_config) against the reference:
invariants, objectives and support sets (not iterates), determinism, docstring examples."""

from __future__ import annotations

import io

import numpy as np
import pytest
import reference as ref

import chita_core
import chita_core._api
from chita_core import IHTProgress, IHTResult
from chita_core.backends import BACKENDS, DEVICE_BACKENDS

# Relative to max(|f|, 1), the scale of the solver's own stopping rule: f comes from a residual that
# is updated (not recomputed) each iteration, so it may rise by rounding-level amounts.
HISTORY_SLACK = 1e-12


def plain_iht(*args, **kwargs):
    """IHT alone (no refits, no swaps): the algorithm the reference in tests/reference.py runs."""
    return chita_core.iht(*args, active_set=False, refine=False, swaps=False, **kwargs)


def _f_scale(prob, ridge=0.0):
    """Size of the problem's objective (f at w = 0): objectives are judged against this, since
    f itself may cancel to ~0 (interpolating supports, the pruning start w = w_bar)."""
    f = 0.5 * float(prob.b64 @ prob.b64)
    if prob.w_bar is not None:
        f += 0.5 * ridge * float(prob.w_bar64 @ prob.w_bar64)
    return f


def _both_backends():
    reasons = chita_core.available_backends()
    missing = {b: reasons[b] for b in BACKENDS if reasons[b] is not None}
    if missing:
        pytest.skip(f"needs every backend; unavailable: {missing}")


def _check_result(res, prob, k, ridge, backend, tol):
    A = prob.A
    p = A.shape[1]
    assert isinstance(res, IHTResult)
    assert res.backend == backend
    w = np.asarray(res.w)
    assert w.shape == (p,) and w.dtype == A.dtype
    support = np.asarray(res.support)
    assert support.dtype == np.int64 and support.shape == (k,)
    assert np.all(np.diff(support) > 0), "support must be sorted and unique"
    assert np.all((support >= 0) & (support < p))
    assert np.count_nonzero(w) <= k
    off = np.ones(p, dtype=bool)
    off[support] = False
    assert not np.any(w[off]), "nonzeros outside the reported support"
    # History: objective before iteration 1, then after each; non-increasing.
    h = np.asarray(res.history)
    assert len(h) == res.n_iter + 1
    assert res.objective == h[-1]
    assert np.all(h[1:] <= h[:-1] + HISTORY_SLACK * np.maximum(np.abs(h[:-1]), 1.0)), h
    assert res.elapsed > 0
    # The reported objective is the objective of the returned w (rounded to the dtype of A).
    w_bar = prob.w_bar
    f_api = chita_core.objective(A, prob.b, res.w, ridge=ridge, w_bar=w_bar, backend=backend)
    f_ref = ref.objective(prob.A64, prob.b64, w, ridge, prob.w_bar64)
    # Objectives are judged against the size of the problem (f at w = 0 or at the start), not
    # against f itself, which may cancel to ~0 on an interpolating support.
    f_scale = max(0.5 * float(prob.b64 @ prob.b64), res.history[0], f_ref)
    tol.close(f_api, f_ref, scale=f_scale)
    tol.close(res.objective, f_ref, kind="output", scale=f_scale)


# ----------------------------------------------------------------------------------------------
# iht: invariants and agreement with the reference
# ----------------------------------------------------------------------------------------------

IHT_CASES = [
    # (n, p, k, ridge, pruning, seed)
    (50, 300, 10, 0.0, False, 0),
    (50, 300, 10, 0.5, True, 1),
    (120, 80, 15, 0.0, False, 2),  # n > p
    (30, 40, 1, 0.0, False, 3),  # k = 1
    (40, 25, 25, 0.1, True, 4),  # k = p
    (1, 30, 2, 0.0, False, 5),  # n = 1
]


@pytest.mark.parametrize(
    ("n", "p", "k", "ridge", "pruning", "seed"),
    IHT_CASES,
    ids=[f"{c[0]}x{c[1]}-k{c[2]}-ridge{c[3]}" for c in IHT_CASES],
)
def test_iht_invariants_and_reference(
    backend, make_problem, dtype, order, tol, n, p, k, ridge, pruning, seed
):
    prob = make_problem(n, p, dtype=dtype, order=order, seed=seed, pruning=pruning)
    res = plain_iht(prob.A, prob.b, k, ridge=ridge, w_bar=prob.w_bar, backend=backend)
    _check_result(res, prob, k, ridge, backend, tol)
    expected = ref.iht(prob.A64, prob.b64, k, ridge=ridge, w_bar=prob.w_bar64)
    assert min([s.margin for s in expected.steps] + [1.0]) > 1e-10, "data not tie-free enough"
    np.testing.assert_array_equal(np.asarray(res.support), expected.support)
    assert res.n_iter == expected.n_iter
    assert res.converged == expected.converged
    tol.close(res.objective, expected.objective, kind="solve", scale=_f_scale(prob, ridge))
    tol.close(res.history, expected.history, kind="solve", scale=_f_scale(prob, ridge))


@pytest.mark.parametrize("order", ["C", "F"])
def test_planted_support_recovery(backend, make_problem, dtype, tol, order):
    n, p, k = 200, 1000, 10
    prob = make_problem(n, p, dtype=dtype, order=order, seed=30, k=k)
    res = chita_core.iht(prob.A, prob.b, k, backend=backend, max_iter=200)
    np.testing.assert_array_equal(np.asarray(res.support), prob.support_true)
    assert res.converged
    assert res.objective < 1e-6 * (0.5 * float(prob.b64 @ prob.b64))
    np.testing.assert_allclose(np.asarray(res.w, dtype=np.float64), prob.w_true, atol=1e-2)
    # Refit on the recovered support: the planted coefficients up to the dtype of the data.
    w = chita_core.backsolve(prob.A, prob.b, res.support, backend=backend)
    atol = 1e-8 if dtype == np.float64 else 1e-4  # b = A w_true was rounded to float32
    np.testing.assert_allclose(np.asarray(w, dtype=np.float64), prob.w_true, atol=atol)


@pytest.mark.parametrize(
    ("n", "p", "k", "ridge", "pruning", "seed"),
    [(60, 500, 12, 0.0, False, 40), (60, 500, 12, 0.3, True, 41), (150, 90, 20, 0.0, False, 42)],
)
def test_backends_agree(make_problem, dtype, order, n, p, k, ridge, pruning, seed):
    _both_backends()
    prob = make_problem(n, p, dtype=dtype, order=order, seed=seed, pruning=pruning)
    results = {
        b: plain_iht(prob.A, prob.b, k, ridge=ridge, w_bar=prob.w_bar, backend=b) for b in BACKENDS
    }
    cpp, numba = results["cpp"], results["numba"]
    np.testing.assert_array_equal(cpp.support, numba.support)
    assert cpp.n_iter == numba.n_iter
    np.testing.assert_allclose(cpp.objective, numba.objective, rtol=1e-9)
    np.testing.assert_allclose(cpp.history, numba.history, rtol=1e-9, atol=1e-12)


def test_best_subset_lower_bound_and_tiny_optimum(backend, make_problem, dtype, order, tol):
    # No k-sparse w beats the best subset; on a planted noiseless problem IHT attains it.
    noisy = make_problem(40, 12, dtype=dtype, order=order, seed=50)
    res = chita_core.iht(noisy.A, noisy.b, 3, backend=backend)
    _, _, f_best = ref.best_subset(noisy.A64, noisy.b64, 3)
    assert res.objective >= f_best * (1 - 1e-9)

    planted = make_problem(40, 12, dtype=dtype, order=order, seed=51, k=3)
    res = chita_core.iht(planted.A, planted.b, 3, backend=backend, max_iter=300, tol=1e-12)
    S_best, _, f_best = ref.best_subset(planted.A64, planted.b64, 3)
    np.testing.assert_array_equal(np.asarray(res.support), S_best)
    assert res.objective <= f_best + 1e-9 * float(planted.b64 @ planted.b64)


def test_full_support_is_least_squares(backend, make_problem, dtype, order, tol):
    # k = p with n > p: IHT is gradient descent with exact line search on a least-squares fit.
    prob = make_problem(60, 8, dtype=dtype, order=order, seed=52)
    res = chita_core.iht(prob.A, prob.b, 8, backend=backend, max_iter=500, tol=1e-14)
    w_ls = np.linalg.lstsq(prob.A64, prob.b64, rcond=None)[0]
    f_ls = ref.objective(prob.A64, prob.b64, w_ls)
    np.testing.assert_array_equal(np.asarray(res.support), np.arange(8))
    assert res.objective == pytest.approx(f_ls, rel=1e-8)


# ----------------------------------------------------------------------------------------------
# ridge, w_bar, w0, max_iter, tol
# ----------------------------------------------------------------------------------------------


def test_pruning_full_support_keeps_w_bar(backend, make_problem, dtype, order):
    # b = A @ w_bar and k = p: the start w_bar is already optimal (f = 0 up to rounding of b).
    prob = make_problem(30, 50, dtype=dtype, order=order, seed=60, pruning=True)
    res = chita_core.iht(prob.A, prob.b, 50, ridge=0.2, w_bar=prob.w_bar, backend=backend)
    np.testing.assert_array_equal(np.asarray(res.support), np.arange(50))
    f0 = ref.objective(prob.A64, prob.b64, prob.w_bar64)
    assert res.history[0] == pytest.approx(f0, rel=1e-10, abs=1e-12 * _f_scale(prob))
    assert res.objective <= f0 + 1e-12 * _f_scale(prob)
    np.testing.assert_allclose(np.asarray(res.w), prob.w_bar, rtol=1e-5)


def test_large_ridge_keeps_largest_w_bar(backend, make_problem, dtype, order):
    # ridge -> inf: f ~ ridge/2 ||w - w_bar||^2, whose k-sparse minimiser is H_k(w_bar).
    prob = make_problem(30, 200, dtype=dtype, order=order, seed=61, pruning=True)
    k = 20
    res = chita_core.iht(prob.A, prob.b, k, ridge=1e6, w_bar=prob.w_bar, backend=backend)
    S = ref.topk(prob.w_bar64, k)
    np.testing.assert_array_equal(np.asarray(res.support), S)
    np.testing.assert_allclose(np.asarray(res.w)[S], prob.w_bar[S], rtol=1e-4)


def test_ridge_and_w_bar_enter_objective(backend, make_problem, dtype, order, tol):
    prob = make_problem(40, 150, dtype=dtype, order=order, seed=62, pruning=True)
    k = 15
    plain = chita_core.iht(prob.A, prob.b, k, w_bar=prob.w_bar, backend=backend)
    ridged = chita_core.iht(prob.A, prob.b, k, ridge=2.0, w_bar=prob.w_bar, backend=backend)
    for res, ridge in [(plain, 0.0), (ridged, 2.0)]:
        f_ref = ref.objective(prob.A64, prob.b64, np.asarray(res.w), ridge, prob.w_bar64)
        tol.close(res.objective, f_ref, kind="output", scale=_f_scale(prob, ridge))
    # The ridge term is counted: the ridged objective includes 0.5 * 2 * ||w - w_bar||^2 > 0.
    w = np.asarray(ridged.w, dtype=np.float64)
    assert ridged.objective >= float((w - prob.w_bar64) @ (w - prob.w_bar64)) * (1 - 1e-6)


@pytest.mark.parametrize("with_w_bar", [False, True])
def test_max_iter_zero_returns_thresholded_start(backend, make_problem, dtype, order, with_w_bar):
    prob = make_problem(25, 60, dtype=dtype, order=order, seed=63, pruning=True)
    w_bar = prob.w_bar if with_w_bar else None
    k = 7
    res = plain_iht(prob.A, prob.b, k, w_bar=w_bar, max_iter=0, backend=backend)
    assert res.n_iter == 0 and not res.converged
    assert len(res.history) == 1
    if with_w_bar:
        S = ref.topk(prob.w_bar64, k)
        expected = np.zeros(60, dtype=dtype)
        expected[S] = prob.w_bar[S]
    else:
        S = np.arange(k)  # all-zero start: ties go to the lowest indices
        expected = np.zeros(60, dtype=dtype)
    np.testing.assert_array_equal(np.asarray(res.support), S)
    np.testing.assert_array_equal(np.asarray(res.w), expected)
    f0 = ref.objective(prob.A64, prob.b64, expected, 0.0, prob.w_bar64 if with_w_bar else None)
    assert res.objective == pytest.approx(f0, rel=1e-12)


def test_w0_respected(backend, make_problem, make_vector, dtype, order, tol):
    prob = make_problem(40, 120, dtype=dtype, order=order, seed=64, pruning=True)
    k = 10
    w0 = make_vector(120, seed=65, dtype=dtype)
    start = plain_iht(prob.A, prob.b, k, w_bar=prob.w_bar, w0=w0, max_iter=0, backend=backend)
    S0 = ref.topk(w0.astype(np.float64), k)
    np.testing.assert_array_equal(np.asarray(start.support), S0)
    np.testing.assert_array_equal(np.asarray(start.w)[S0], w0[S0])
    # And the iterations from w0 follow the reference from w0 (not from w_bar).
    res = plain_iht(prob.A, prob.b, k, ridge=0.1, w_bar=prob.w_bar, w0=w0, backend=backend)
    expected = ref.iht(prob.A64, prob.b64, k, ridge=0.1, w_bar=prob.w_bar64, w0=w0)
    default = ref.iht(prob.A64, prob.b64, k, ridge=0.1, w_bar=prob.w_bar64)
    assert expected.history[0] != pytest.approx(default.history[0])
    tol.close(res.history[0], expected.history[0], kind="solve", scale=_f_scale(prob, 0.1))
    np.testing.assert_array_equal(np.asarray(res.support), expected.support)
    tol.close(res.objective, expected.objective, kind="solve", scale=_f_scale(prob, 0.1))


def test_tol_and_max_iter_stop(backend, make_problem):
    prob = make_problem(50, 300, seed=66)
    few = plain_iht(prob.A, prob.b, 10, max_iter=3, tol=0.0, backend=backend)
    assert few.n_iter == 3 and not few.converged
    loose = plain_iht(prob.A, prob.b, 10, tol=0.5, backend=backend)
    h = loose.history
    assert loose.converged
    assert abs(h[-2] - h[-1]) <= 0.5 * max(abs(h[-1]), abs(h[-2]), 1.0)
    tight = plain_iht(prob.A, prob.b, 10, tol=1e-10, max_iter=1000, backend=backend)
    assert tight.n_iter >= loose.n_iter
    assert tight.objective <= loose.objective


# ----------------------------------------------------------------------------------------------
# callback
# ----------------------------------------------------------------------------------------------


def test_callback_receives_progress(backend, make_problem):
    prob = make_problem(50, 300, seed=70)
    seen: list[IHTProgress] = []
    res = plain_iht(prob.A, prob.b, 10, backend=backend, callback=seen.append)
    assert len(seen) == res.n_iter >= 2
    for i, prog in enumerate(seen, start=1):
        assert isinstance(prog, IHTProgress)
        assert prog.iteration == i
        assert prog.objective == res.history[i]
        assert isinstance(prog.support_changed, bool)
        assert prog.tau >= 0.0
    assert any(prog.support_changed for prog in seen)
    # A callback returning None/False never stops the run.
    plain = plain_iht(prob.A, prob.b, 10, backend=backend)
    falsy = plain_iht(prob.A, prob.b, 10, backend=backend, callback=lambda prog: False)
    assert plain.history == res.history == falsy.history


def test_callback_true_stops(backend, make_problem):
    prob = make_problem(50, 300, seed=71)
    calls = []

    def stop_at_3(prog):
        calls.append(prog.iteration)
        return prog.iteration == 3

    res = plain_iht(prob.A, prob.b, 10, backend=backend, callback=stop_at_3, tol=0.0)
    assert calls == [1, 2, 3]
    assert res.n_iter == 3
    assert len(res.history) == 4
    assert res.objective == res.history[-1]


# ----------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
def test_deterministic(backend, make_problem, dtype, order):
    prob = make_problem(120, 3000, dtype=dtype, order=order, seed=80)  # parallel kernel paths
    a = chita_core.iht(prob.A, prob.b, 30, ridge=0.1, backend=backend)
    b = chita_core.iht(prob.A, prob.b, 30, ridge=0.1, backend=backend)
    assert np.asarray(a.w).tobytes() == np.asarray(b.w).tobytes()
    assert a.history == b.history
    np.testing.assert_array_equal(a.support, b.support)


@pytest.mark.parametrize("order", ["C", "F"])
def test_numba_independent_of_thread_count(make_problem, order):
    # chita_core.backends.numba_kernels promises bit-identical results whatever the thread count.
    reason = chita_core.available_backends()["numba"]
    if reason is not None:
        pytest.skip(reason)
    import numba

    prob = make_problem(120, 3000, order=order, seed=81)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = chita_core.iht(prob.A, prob.b, 30, ridge=0.1, backend="numba")
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = chita_core.iht(prob.A, prob.b, 30, ridge=0.1, backend="numba")
        w1 = chita_core.backsolve(prob.A, prob.b, np.arange(0, 3000, 7), backend="numba")
        numba.set_num_threads(1)
        w2 = chita_core.backsolve(prob.A, prob.b, np.arange(0, 3000, 7), backend="numba")
    finally:
        numba.set_num_threads(before)
    assert one.history == many.history
    assert one.w.tobytes() == many.w.tobytes()
    assert w1.tobytes() == w2.tobytes()


# ----------------------------------------------------------------------------------------------
# backsolve and objective (public API)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "p", "m", "ridge", "pruning"),
    [(60, 100, 10, 0.0, False), (60, 100, 10, 0.7, True), (20, 200, 50, 0.5, True)],
)
def test_backsolve_api(backend, make_problem, dtype, order, tol, n, p, m, ridge, pruning):
    prob = make_problem(n, p, dtype=dtype, order=order, seed=90, pruning=pruning)
    rng = np.random.default_rng(91)
    support = rng.choice(p, size=m, replace=False)  # unsorted, int64
    assert np.any(np.diff(support) < 0)
    w = chita_core.backsolve(
        prob.A, prob.b, support, ridge=ridge, w_bar=prob.w_bar, backend=backend
    )
    assert isinstance(w, np.ndarray) and w.shape == (p,) and w.dtype == dtype
    S = np.sort(support)
    w_bar = prob.w_bar64 if pruning else np.zeros(p)
    expected = np.zeros(p)
    expected[S] = ref.backsolve(prob.A64, prob.b64, S, w_bar[S], ridge)
    tol.close(w, expected, kind="output", scale=float(np.max(np.abs(expected))))
    off = np.ones(p, dtype=bool)
    off[S] = False
    assert not np.any(w[off])
    # Any order and integer type of the support gives the same answer.
    for variant in (S, S[::-1].astype(np.int32), S.tolist(), S.astype(np.uint16)):
        again = chita_core.backsolve(
            prob.A, prob.b, variant, ridge=ridge, w_bar=prob.w_bar, backend=backend
        )
        np.testing.assert_array_equal(again, w)


def test_backsolve_beats_every_other_value_on_support(backend, make_problem):
    prob = make_problem(40, 30, seed=92)
    S = np.array([2, 5, 11, 29])
    w = chita_core.backsolve(prob.A, prob.b, S, backend=backend)
    f = chita_core.objective(prob.A, prob.b, w)
    rng = np.random.default_rng(93)
    for _ in range(5):
        v = w.copy()
        v[S] += 1e-3 * rng.standard_normal(4)
        assert chita_core.objective(prob.A, prob.b, v) > f


@pytest.mark.parametrize("ridge", [0.0, 1.5])
def test_objective_api(backend, make_problem, make_vector, dtype, order, tol, ridge):
    prob = make_problem(30, 70, dtype=dtype, order=order, seed=94, pruning=True)
    rng = np.random.default_rng(95)
    sparse = np.zeros(70, dtype=dtype)
    sparse[rng.choice(70, 9, replace=False)] = rng.standard_normal(9).astype(dtype)
    dense = make_vector(70, seed=96, dtype=dtype)
    zero = np.zeros(70, dtype=dtype)
    for w in (sparse, dense, zero):
        got = chita_core.objective(
            prob.A, prob.b, w, ridge=ridge, w_bar=prob.w_bar, backend=backend
        )
        assert isinstance(got, float)
        f_ref = ref.objective(prob.A64, prob.b64, w, ridge, prob.w_bar64)
        tol.close(got, f_ref, scale=_f_scale(prob, ridge))
    # Zero weights: 0.5 ||b||^2 + 0.5 ridge ||w_bar||^2.
    f0 = chita_core.objective(prob.A, prob.b, zero, ridge=ridge, w_bar=prob.w_bar)
    expected = 0.5 * float(prob.b64 @ prob.b64) + 0.5 * ridge * float(prob.w_bar64 @ prob.w_bar64)
    assert f0 == pytest.approx(expected, rel=1e-12)
    # w_bar omitted means zeros.
    f_nobar = chita_core.objective(prob.A, prob.b, dense, ridge=ridge, backend=backend)
    assert f_nobar == pytest.approx(ref.objective(prob.A64, prob.b64, dense, ridge), rel=1e-12)


def test_objective_docstring_value():
    assert chita_core.objective(np.eye(3), np.ones(3), np.array([1.0, 0.0, 0.0])) == 1.0


# ----------------------------------------------------------------------------------------------
# Docs, configuration, backend selection
# ----------------------------------------------------------------------------------------------


def test_show_config_lists_backends():
    buf = io.StringIO()
    chita_core.show_config(file=buf)
    text = buf.getvalue()
    assert text.startswith(f"chita_core {chita_core.__version__}")
    assert "backends:" in text
    backend_lines = text.split("backends:", 1)[1].strip().splitlines()
    assert len(backend_lines) == len(BACKENDS) + len(DEVICE_BACKENDS)
    for name, reason in chita_core.available_backends().items():
        line = next(ln for ln in backend_lines if ln.strip().startswith(name + " "))
        if reason is None:
            assert line.strip().endswith("available") and "unavailable" not in line
        else:
            assert "unavailable" in line and reason in line
    cfg = chita_core.config()
    assert cfg["backends"] == chita_core.available_backends()


def test_show_config_default_stdout(capsys):
    chita_core.show_config()
    out = capsys.readouterr().out
    assert "backends:" in out and "cpp" in out and "numba" in out


def test_cpp_backend_is_built():
    # The C++ extension is always built (docs/design.md section 7.2): missing it is a failure, not a
    # skip. A common cause: running `python -m pytest` from the source tree puts the source
    # package (without the compiled module) ahead of the installed one on sys.path.
    reason = chita_core.available_backends()["cpp"]
    assert reason is None, f"{reason} (chita_core imported from {chita_core.__file__})"


def test_auto_backend_prefers_cpp_then_numba(monkeypatch, make_problem):
    from chita_core import backends as _backends

    prob = make_problem(20, 40, seed=97)
    avail = chita_core.available_backends()
    first = next(b for b in BACKENDS if avail[b] is None)
    assert chita_core.iht(prob.A, prob.b, 3, backend="auto").backend == first
    if avail["numba"] is None:
        monkeypatch.setitem(_backends._probes, "cpp", _backends._Probe(None, "simulated"))
        assert chita_core.iht(prob.A, prob.b, 3, backend="auto").backend == "numba"


# ----------------------------------------------------------------------------------------------
# CHITA's active set
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ridge", "pruning"), [(0.0, False), (0.2, True)])
def test_active_set_iht_invariants(backend, make_problem, dtype, order, ridge, pruning):
    from chita_core.stages.iht import IHTColumns, active_set_iht

    n, p, k = 60, 500, 12
    prob = make_problem(n, p, dtype=dtype, order=order, seed=95, pruning=pruning)
    P = chita_core.Problem(prob.A, prob.b, ridge=ridge, w_bar=prob.w_bar, backend=backend)
    start = P.w_bar if pruning else np.zeros(p)
    run = active_set_iht(IHTColumns(P), k, start, 200, 1e-10, lambda *a: False)
    assert run.support.shape == (k,) and np.all(np.diff(run.support) > 0)
    assert np.count_nonzero(run.w) <= k and np.all(
        run.w[np.setdiff1d(np.arange(p), run.support)] == 0
    )
    np.testing.assert_allclose(
        run.r, prob.A64 @ run.w - prob.b64, atol=1e-9 * np.abs(prob.b64).max()
    )
    f = ref.objective(prob.A64, prob.b64, run.w, ridge, P.w_bar)
    assert run.f == pytest.approx(f, rel=1e-9)
    hist = np.asarray(run.history)
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1]) + 1e-300)


def test_active_set_recovers_planted_support(backend, make_problem):
    n, p, k = 200, 1000, 10
    prob = make_problem(n, p, seed=30, k=k, order="F")
    res = chita_core.iht(prob.A, prob.b, k, backend=backend, refine=False, swaps=False)
    np.testing.assert_array_equal(np.asarray(res.support), prob.support_true)
    assert res.stages[-1][0] == "active-set iht"


def test_active_set_false_runs_plain_iht(make_problem):
    prob = make_problem(60, 300, seed=96)
    a = chita_core.iht(prob.A, prob.b, 10, active_set=False, refine=False, swaps=False)
    b = plain_iht(prob.A, prob.b, 10)
    np.testing.assert_array_equal(a.w, b.w)
    assert a.history == b.history
    with pytest.raises(TypeError, match="active_set"):
        chita_core.iht(prob.A, prob.b, 10, active_set="yes")


def test_max_iter_default_depends_on_pipeline(make_problem):
    # max_iter=None: 30 IHT iterations inside the refine pipeline, 100 for IHT alone; an
    # explicit value is honoured in both. tol=0 keeps IHT going while it still moves.
    prob = make_problem(50, 400, seed=97)
    counts = []
    for kwargs in ({}, {"max_iter": 45}):
        pipeline = chita_core.iht(prob.A, prob.b, 20, tol=0.0, **kwargs)
        alone = plain_iht(prob.A, prob.b, 20, tol=0.0, **kwargs)
        counts.append((pipeline.n_iter, alone.n_iter))
    (pipe_default, alone_default), (pipe_45, alone_45) = counts
    # This problem keeps IHT moving for more than 100 iterations, so the caps are what stop it.
    assert (pipe_default, alone_default) == (30, 100)
    assert (pipe_45, alone_45) == (45, 45)
