"""The prepared problem, points, the planner and its budget (docs/design.md, section 6).

Objectives are checked against tests/reference.py (dense float64 NumPy); the planner's decisions
against its own cost model (never against wall-clock time: machines here are shared)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref

import chita_core
from chita_core import _pipeline
from chita_core._pipeline import CostModel, Options, Rates, measure_rates, plan


def _pruning_problem(n=60, p=400, seed=0, dtype=np.float64, order="F"):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, p)) * np.exp(0.3 * rng.standard_normal(p)) / np.sqrt(n)
    A = np.asarray(A, dtype=dtype, order=order)
    w_bar = rng.standard_normal(p).astype(dtype)
    b = (A.astype(np.float64) @ w_bar.astype(np.float64)).astype(dtype)
    return A, b, w_bar


def _options(**kw):
    base = dict(
        max_iter=None,
        tol=1e-6,
        init="auto",
        active_set=True,
        refine=True,
        max_swaps=None,
        effort=3.0,
        time_limit=None,
    )
    base.update(kw)
    return Options(**base)


# ----------------------------------------------------------------------------------------------
# Problem
# ----------------------------------------------------------------------------------------------


def test_problem_methods_match_the_functions(backend):
    A, b, w_bar = _pruning_problem()
    prob = chita_core.Problem(A, b, ridge=0.1, w_bar=w_bar, backend=backend)
    k = 40
    res = prob.iht(k)
    same = chita_core.iht(A, b, k, ridge=0.1, w_bar=w_bar, backend=backend)
    assert res.objective == same.objective
    np.testing.assert_array_equal(res.support, same.support)
    S = np.asarray(res.support)
    w = prob.backsolve(S)
    w_ref, f_ref = ref.support_objective(A, b, S, 0.1, w_bar)
    np.testing.assert_allclose(prob.objective(w), f_ref, rtol=1e-10)
    np.testing.assert_allclose(w[S], w_ref[S], rtol=1e-8, atol=1e-10 * np.abs(w_ref).max())


def test_with_ridge_shares_the_passes_over_A(backend, monkeypatch):
    A, b, w_bar = _pruning_problem(seed=1)
    prob = chita_core.Problem(A, b, ridge=0.1, w_bar=w_bar, backend=backend)
    h, sigma2 = prob.h, prob.sigma2
    other = prob.with_ridge(2.0)
    assert other.ridge == 2.0 and prob.ridge == 0.1
    assert other.h is h and other.sigma2 == sigma2  # computed once, shared
    np.testing.assert_allclose(other.lipschitz, 1.05 * (sigma2 + 2.0))
    # The derived problem solves the problem at its own ridge.
    S = np.arange(0, 400, 7)
    _, f_ref = ref.support_objective(A, b, S, 2.0, w_bar)
    np.testing.assert_allclose(other.objective(other.backsolve(S)), f_ref, rtol=1e-10)
    with pytest.raises(ValueError, match="`ridge`"):
        prob.with_ridge(-1.0)
    # sigma_max^2 against the dense value (power iterations bound it from below, 4 of them).
    s_true = np.linalg.norm(A.astype(np.float64), 2) ** 2
    assert 0.5 * s_true <= sigma2 <= s_true * (1 + 1e-9)


def test_a_support_gram_carries_over_to_another_ridge(backend, monkeypatch):
    """A_S A_S^T does not depend on the ridge: a refit at another ridge that is passed the
    Gram of a first one forms none, and solves its own ridge (against the float64 reference)."""
    A, b, w_bar = _pruning_problem(seed=2)
    prob = chita_core.Problem(A, b, ridge=0.1, w_bar=w_bar, backend=backend)
    S = np.arange(0, A.shape[1], 2, dtype=np.int64)  # |S| > n: the n-space refit
    assert S.size > A.shape[0]
    first = prob.point(S, keep_inverse=True)
    assert first.gram is not None
    gram = first.gram.copy()
    other = prob.with_ridge(3.0)
    fail = lambda *a: pytest.fail("the Gram was formed again")  # noqa: E731
    monkeypatch.setattr(other.kernels, "support_gram", fail)
    second = other.point(S, keep_inverse=True, gram=first.gram)
    np.testing.assert_array_equal(first.gram, gram)  # read, never written
    _, f_ref = ref.support_objective(A, b, S, 3.0, w_bar)
    np.testing.assert_allclose(second.f, f_ref, rtol=1e-10)


def test_problem_rejects_bad_input_once():
    A, b, _ = _pruning_problem()
    with pytest.raises(ValueError, match="`b`"):
        chita_core.Problem(A, b[:-1])
    bad = A.copy()
    bad[3, 17] = np.nan
    with pytest.raises(ValueError, match=r"`A` contains NaN or Inf \(first in column 17\)"):
        chita_core.Problem(bad, b)
    prob = chita_core.Problem(A, b)
    with pytest.raises(ValueError, match="`k`"):
        prob.iht(0)
    assert "Problem(n=60, p=400" in repr(prob)


# ----------------------------------------------------------------------------------------------
# Planner
# ----------------------------------------------------------------------------------------------


def _names(stages):
    return [s.name for s, _ in stages]


def test_small_problems_run_every_stage():
    # Magnitude + backsolve costs microseconds here: the 0.5 s floor holds every stage.
    A, b, w_bar = _pruning_problem()
    prob = chita_core.Problem(A, b, ridge=0.1, w_bar=w_bar)
    stages = plan(prob, 40, prob.w_bar, _options())
    assert _names(stages)[:1] == ["magnitude"]
    assert {"iht", "greedy obs", "swaps"} <= set(_names(stages))
    assert all(cost >= 0 for _, cost in stages)


def test_budget_decides_what_runs(monkeypatch):
    A, b, w_bar = _pruning_problem()
    prob = chita_core.Problem(A, b, ridge=0.1, w_bar=w_bar)
    # A slow machine: every rate a million times lower. Now the floor is small against the
    # baseline, and the budget (effort x magnitude + backsolve) leaves stages out.
    slow = Rates(bandwidth=3e4, scattered=1e4, flops=4e4, op=1e-3)
    monkeypatch.setattr(_pipeline, "HOST_RATES", slow)
    tight = plan(prob, 40, prob.w_bar, _options(effort=1.0))
    assert _names(tight) == ["magnitude"]
    roomy = plan(prob, 40, prob.w_bar, _options(effort=math.inf))
    assert {"greedy obs", "swaps", "iht"} <= set(_names(roomy))
    # Each chosen stage fits: the planned total stays within effort x baseline.
    for effort in (2.0, 5.0, 20.0):
        stages = plan(prob, 40, prob.w_bar, _options(effort=effort))
        baseline = stages[0][1]
        assert sum(c for _, c in stages) <= effort * baseline * (1 + 1e-9), (effort, stages)
    # time_limit caps the budget in seconds.
    capped = plan(prob, 40, prob.w_bar, _options(effort=math.inf, time_limit=1e-9))
    assert _names(capped) == ["magnitude"]
    # Explicit requests run whatever they cost.
    forced = plan(prob, 40, prob.w_bar, _options(effort=1.0, max_iter=5, init="greedy"))
    assert {"iht", "greedy obs"} <= set(_names(forced))


def test_memory_limit_caps_greedy_obs_workspace():
    """memory_limit (bytes beyond A and the O(p) vectors) shrinks greedy OBS's superset to fit
    its gathered workspace, and drops the stage when not even k + 1 columns fit."""
    from chita_core._pipeline import greedy_workspace_bytes

    A, b, w_bar = _pruning_problem()
    prob = chita_core.Problem(A, b, ridge=0.1, w_bar=w_bar)
    free = {s.name: s for s, _ in plan(prob, 40, prob.w_bar, _options())}
    m_free = free["greedy obs"].m
    limit = greedy_workspace_bytes(prob, (40 + m_free) // 2)
    capped = {s.name: s for s, _ in plan(prob, 40, prob.w_bar, _options(memory_limit=limit))}
    assert 40 < capped["greedy obs"].m < m_free
    assert greedy_workspace_bytes(prob, capped["greedy obs"].m) <= limit
    none = plan(prob, 40, prob.w_bar, _options(memory_limit=greedy_workspace_bytes(prob, 40)))
    assert "greedy obs" not in _names(none)
    # The solve under the cap is still a valid (k-sparse, finite) solution, no worse than
    # magnitude + backsolve.
    res = chita_core.iht(A, b, 40, ridge=0.1, w_bar=w_bar, memory_limit=limit)
    mb = chita_core.iht(A, b, 40, ridge=0.1, w_bar=w_bar, refine=True, effort=1e-9)
    assert np.count_nonzero(res.w) <= 40 and res.objective <= mb.objective * (1 + 1e-12)
    with pytest.raises(ValueError, match="`memory_limit`"):
        chita_core.iht(A, b, 40, memory_limit=-1)


def test_plan_does_not_depend_on_the_machine(monkeypatch):
    # Without time_limit the plan is priced at the reference rates: whatever this process
    # measures (a loaded or a fast machine), the same problem gets the same plan and result.
    A, b, w_bar = _pruning_problem(n=200, p=20_000, seed=4)
    prob = chita_core.Problem(A, b, ridge=0.1, w_bar=w_bar)
    before = [(s.name, c) for s, c in plan(prob, 2000, prob.w_bar, _options(effort=1.5))]
    for rates in (Rates(1e3, 1e3, 1e3, 1.0), Rates(1e15, 1e15, 1e15, 1e-12)):
        monkeypatch.setitem(_pipeline._RATES, prob.backend, rates)
        after = [(s.name, c) for s, c in plan(prob, 2000, prob.w_bar, _options(effort=1.5))]
        assert after == before


def test_iht_runs_when_the_start_is_no_support(monkeypatch):
    A, b, _ = _pruning_problem()
    prob = chita_core.Problem(A, b, ridge=0.1)  # no w_bar: the magnitude start is all zero
    slow = Rates(bandwidth=3e4, scattered=1e4, flops=4e4, op=1e-3)
    monkeypatch.setattr(_pipeline, "HOST_RATES", slow)
    assert "iht" in _names(plan(prob, 40, prob.w_bar, _options(effort=1.0)))


def test_refine_false_is_plain_iht_only():
    A, b, w_bar = _pruning_problem()
    prob = chita_core.Problem(A, b, w_bar=w_bar)
    stages = plan(prob, 40, prob.w_bar, _options(refine=False))
    assert _names(stages) == ["iht"] and stages[0][0].max_iter == _pipeline.PLAIN_ITERS


def test_result_reports_the_plan(backend):
    A, b, w_bar = _pruning_problem(seed=3)
    res = chita_core.iht(A, b, 40, ridge=0.1, w_bar=w_bar, backend=backend)
    assert res.plan[0].stage == "magnitude"
    assert all(p.modeled >= 0 and p.seconds >= 0 for p in res.plan)
    # The stages' best-so-far objectives end at the result.
    assert res.objective == res.stages[-1].objective


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"effort": 0.0}, ValueError, "`effort`"),
        ({"effort": -1}, ValueError, "`effort`"),
        ({"effort": float("nan")}, ValueError, "`effort`"),
        ({"effort": "high"}, TypeError, "`effort`"),
        ({"effort": True}, TypeError, "`effort`"),
        ({"time_limit": 0}, ValueError, "`time_limit`"),
        ({"time_limit": "1s"}, TypeError, "`time_limit`"),
    ],
)
def test_bad_budget_options(kw, exc, match):
    A, b, w_bar = _pruning_problem()
    with pytest.raises(exc, match=match):
        chita_core.iht(A, b, 10, w_bar=w_bar, **kw)


def test_cost_model_grows_with_the_work():
    rates = Rates(bandwidth=2e10, scattered=1e10, flops=3e10, op=1e-6)
    m = CostModel(n=1000, p=268_336, itemsize=4, f_order=True, rates=rates)
    k = 26_834
    assert m.refit(2 * k) > m.refit(k) > m.refit(k // 4)
    assert m.swaps(k, 20, 1000, True) > m.swaps(k, 5, 300, True)
    assert m.swaps(k, 5, 300, False) > m.swaps(k, 5, 300, True)  # forming K^-1 costs a Gram
    assert m.greedy(k, 3 * k) > m.greedy(k, 2 * k)
    c_order = CostModel(n=1000, p=268_336, itemsize=4, f_order=False, rates=rates)
    assert c_order.cols_pass(k) == c_order.full_pass() > m.cols_pass(k)


def test_rates_are_measured_once():
    A, b, w_bar = _pruning_problem()
    prob = chita_core.Problem(A, b, w_bar=w_bar)
    first = measure_rates(prob)
    assert measure_rates(prob.with_ridge(1.0)) is first
    assert first.bandwidth > 0 and 0 < first.scattered <= first.bandwidth
    assert first.flops > 0 and first.op > 0


# ----------------------------------------------------------------------------------------------
# Refits from a carried inverse; greedy OBS's float32 workspace
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_refit_from_a_carried_inverse_is_exact(dtype):
    A, b, w_bar = _pruning_problem(n=50, p=600, seed=5, dtype=dtype)
    prob = chita_core.Problem(A, b, ridge=0.3, w_bar=w_bar)
    S = np.sort(np.random.default_rng(5).choice(600, 200, replace=False)).astype(np.int64)
    w_ref, f_ref = ref.support_objective(A, b, S, 0.3, w_bar)
    X = A[:, S].astype(np.float64)
    exact_inv = np.linalg.inv(0.3 * np.eye(50) + X @ X.T)
    rng = np.random.default_rng(6)
    for guess in (exact_inv, exact_inv * (1 + 1e-4 * rng.standard_normal(exact_inv.shape))):
        point = prob.point(S, guess=guess)  # refined: converges from a near inverse
        np.testing.assert_allclose(point.f, f_ref, rtol=1e-10)
        np.testing.assert_allclose(point.w[S], w_ref[S], rtol=1e-7, atol=1e-9)
    # A useless guess does not converge in 3 steps: the full solve gives the same point.
    point = prob.point(S, guess=np.eye(50))
    np.testing.assert_allclose(point.f, f_ref, rtol=1e-10)


def test_greedy_float32_workspace_matches_float64():
    # Greedy OBS on float32 A uses a float32 workspace for the ranking passes; each pool's own
    # quantities are float64, so the result matches the float64 workspace on the same values.
    from chita_core.stages import greedy

    A, b, w_bar = _pruning_problem(n=80, p=3000, seed=7, dtype=np.float32)
    k = 300
    results = []
    for A_in in (A, A.astype(np.float64, order="F")):
        prob = chita_core.Problem(
            A_in, b.astype(A_in.dtype), ridge=0.05, w_bar=w_bar.astype(A_in.dtype)
        )
        screen = greedy.greedy_screen(prob, prob.w_bar, ref.topk(w_bar, k), 1200)
        S = greedy.greedy_obs_support(prob, screen, k)
        results.append(ref.support_objective(A, b, S, 0.05, w_bar)[1])
    f32, f64 = results
    np.testing.assert_allclose(f32, f64, rtol=1e-3)
    f_mag = ref.support_objective(A, b, ref.topk(w_bar, k), 0.05, w_bar)[1]
    assert f32 < f_mag  # and it did its job


class _Recorded:
    """A stage that only records that it ran and what its work re-prices to."""

    def __init__(self, name, cost=None, if_budget=False):
        self.name, self.cost, self.if_budget, self.ran = name, cost, if_budget, False

    def run(self, ctx):
        self.ran = True

    def repriced(self, model, k):
        return self.cost


@pytest.mark.parametrize(("first_cost", "runs"), [(0.3, True), (None, False), (0.6, False)])
def test_run_gates_budget_stages_on_the_repriced_work(first_cost, runs):
    """An ``if_budget`` stage runs only where the budget minus the modeled cost of the work done
    so far covers it: the first stage planned at 0.6 s re-prices to ``first_cost`` (None: its
    planned cost counts); the gated one costs 0.5 s of a 1.0 s budget."""
    A, b, w_bar = _pruning_problem()
    prob = chita_core.Problem(A, b, w_bar=w_bar)
    ctx = _pipeline.Context(prob, 40, prob.w_bar, lambda *a: False)
    first, gated = _Recorded("first", first_cost), _Recorded("gated", 0.5, if_budget=True)
    model = CostModel(60, 400, 8, True, _pipeline.HOST_RATES)
    timings = _pipeline.run(ctx, _pipeline.Plan([(first, 0.6), (gated, 0.5)], 1.0, model))
    assert first.ran and gated.ran is runs
    assert [t.stage for t in timings] == (["first", "gated"] if runs else ["first"])


def _planted_ar(n, p, seed=0, rho=0.5):
    """bench/quality.py's synthetic instance: AR(rho) columns, 10% planted weights, w_bar
    their noisy copy, b = A w_bar, ridge = 1e-3 x the mean squared column norm."""
    rng = np.random.default_rng(seed)
    A = np.empty((n, p), order="F")
    A[:, 0] = rng.standard_normal(n)
    for j in range(1, p):
        A[:, j] = rho * A[:, j - 1] + np.sqrt(1 - rho * rho) * rng.standard_normal(n)
    w_true = np.zeros(p)
    w_true[rng.choice(p, size=p // 10, replace=False)] = rng.standard_normal(p // 10)
    w_bar = w_true + 0.05 * rng.standard_normal(p)
    return A, A @ w_bar, w_bar, 1e-3 * float((A * A).sum(axis=0).mean())


def test_second_swap_search_runs_when_the_first_stops_early():
    """On the planted problem at 95% the first swap search stops after a few rounds (no
    improving swap), far below its planned worst case: re-priced, it leaves the budget for the
    search from IHT's support, which the planned costs alone would not fit, and which lowers
    f further (0.17 -> 0.09 of magnitude + backsolve in bench/quality.py)."""
    A, b, w_bar, ridge = _planted_ar(500, 5000)
    k = 250
    prob = chita_core.Problem(A, b, ridge=ridge, w_bar=w_bar)
    planned = plan(prob, k, prob.w_bar, _options())
    assert _names(planned)[-2:] == ["swaps", "swaps from iht"]
    assert sum(c for _, c in planned) > planned.budget  # the worst case does not fit
    res = prob.iht(k)
    ran = [s.stage for s in res.plan]
    assert ran[-2:] == ["swaps", "swaps from iht"]
    labels = [s.stage for s in res.stages]
    first = labels.index(next(x for x in labels if x.startswith("swaps (")))
    assert labels[-1].startswith("local search from IHT's support")
    assert res.stages[-1].objective < res.stages[first].objective
    _, f_ref = ref.support_objective(A, b, res.support, ridge, w_bar)
    assert res.objective == pytest.approx(f_ref, rel=1e-9)
