"""chita_core.distributed on 2 and 3 CPU processes over gloo (spawned per test): the same
selections, refits and objectives as the single-process solver on the same problem, uneven
shards, a rank with no columns in the support, and errors raised on every rank."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference as ref

pytest.importorskip("torch")
import torch.distributed as dist

import chita_core

sys.path.insert(0, str(Path(__file__).parent))
from dist_worker import (
    ACTIVE_CASES,
    GREEDY_BLOCKS,
    GREEDY_CASES,
    GREEDY_SCREEN,
    PIPELINE_CASES,
    PIPELINE_OPTIONS,
    PIPELINE_ZERO,
    SWAP_CASES,
    ZERO_CASES,
    blocks,
    pipeline_cases,
    problem,
    supports,
    zero_block,
)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

WORKER = Path(__file__).parent / "dist_worker.py"
TIMEOUT = 180  # seconds for a whole group; a hang fails the test instead of CI


def _launch(case: str, world: int, tmp_path: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), case, str(r), str(world), str(store), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"{case} on {world} ranks did not finish in {TIMEOUT} s (a hang)")
    for r, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {r} exited with {proc.returncode}:\n{logs[r][-3000:]}"
    out = []
    for r in range(world):
        with np.load(tmp_path / f"rank{r}.npz") as z:
            out.append({key: z[key] for key in z.files})
    return out


def _topk_reference(v: np.ndarray, k: int) -> np.ndarray:
    """The k largest |v|, ties to the lower index (a stable sort, independent of the kernels)."""
    order = np.argsort(-np.abs(v), kind="stable")
    return np.sort(order[:k])


@pytest.mark.parametrize("world", [2, 3])
def test_topk_equals_the_single_process_selection(world, tmp_path):
    ranks = _launch("topk", world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    rng = np.random.default_rng(7)
    v = np.round(rng.standard_normal(1000), 1)
    v[::17] = 0.0
    v[5::31] = -v[4::31][: v[5::31].size]
    for k in (0, 1, 37, 500, 999, 1000):
        got = np.concatenate([r[f"k{k}"] for r in ranks])
        assert np.all(np.diff(got) > 0)
        np.testing.assert_array_equal(got, _topk_reference(v, k))
        if k:
            single = np.empty(k, dtype=np.int64)
            chita_core.backends.get_backend("auto")[1].topk(v, k, single)
            np.testing.assert_array_equal(got, single)


@pytest.mark.parametrize("world", [2, 3])
def test_backsolve_and_objective_equal_the_single_process_solve(world, tmp_path):
    ranks = _launch("solve", world, tmp_path)
    for r in ranks:
        assert str(r["error"]) == ""
    n, p = 40, 301
    A, b, w_bar = problem(3, n, p)
    edges = blocks(p, world)
    for ridge in (0.0, 0.3):
        for t, S in enumerate(supports(3, p, [25, 40, 120], *edges[0])):
            w = np.concatenate([r[f"w_{ridge}_{t}"] for r in ranks])
            assert w.shape == (p,) and np.all(w[np.setdiff1d(np.arange(p), S)] == 0)
            single = chita_core.backsolve(A, b, S, ridge=ridge, w_bar=w_bar)
            x_ref, f_ref = ref.support_objective(A, b, S, ridge, w_bar)
            np.testing.assert_allclose(w, single, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(w, x_ref, rtol=1e-7, atol=1e-8)
            f_single = chita_core.objective(A, b, w, ridge=ridge, w_bar=w_bar)
            for r in ranks:  # the same global objective on every rank
                assert float(r[f"f_{ridge}_{t}"]) == pytest.approx(f_single, rel=1e-12)
            assert f_single == pytest.approx(f_ref, rel=1e-9, abs=1e-12)


def test_a_prepared_shard_solves_as_iht_at_every_ridge(tmp_path):
    """distributed.solve on one Shard (and its with_ridge siblings, sharing its column norms and
    sigma_max^2) gives iht's supports and objectives on the same block, and the single
    process's."""
    ranks = _launch("prepared", 2, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    A, b, w_bar = problem(3, 40, 301)
    for ridge in (0.0, 0.3):
        for k in (5, 60):
            single = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, swaps=False)
            support = np.concatenate([r[f"s_{ridge}_{k}"] for r in ranks])
            np.testing.assert_array_equal(support, single.support)
            for r in ranks:
                assert bool(r[f"same_{ridge}_{k}"])
                f_solve, f_iht = r[f"f_{ridge}_{k}"]
                assert f_solve == pytest.approx(f_iht, rel=1e-12)
                assert f_solve == pytest.approx(single.objective, rel=1e-9)
    # the siblings' power iterations filled the shard's cache (shared, not recomputed)
    assert all(bool(r["known"]) for r in ranks)


def test_groups_that_are_not_process_groups_or_lack_the_rank_raise(tmp_path):
    ranks = _launch("groups", 2, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    A, b, _ = problem(3, 40, 301)
    for r in ranks:
        for key in ("str", "int"):
            assert "`group` must be a torch.distributed process group" in str(r[f"err_{key}"])
            assert f"got {key}" in str(r[f"err_{key}"])
    single = chita_core.iht(A, b, 5).objective
    assert float(ranks[0]["sub"]) == pytest.approx(single, rel=1e-9)
    assert "`group` does not contain this process" in str(ranks[1]["sub_err"])


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("b_differs", r"`b` must be the same on every rank"),
        ("n_differs", r"number of rows"),
        ("nan", r"rank 0: ValueError: .*`A`"),
        ("no_columns", r"rank 2: ValueError: `A_local` has no columns"),
        ("bad_support", r"rank 1: ValueError: .*`support`"),
    ],
)
def test_bad_input_raises_on_every_rank(case, match, tmp_path):
    ranks = _launch(case, 3, tmp_path)
    for r, out in enumerate(ranks):
        message = str(out["error"])
        assert message.startswith("ShardError"), (r, message)
        assert re.search(match, message), (r, message)


@pytest.mark.parametrize("world", [2, 3])
def test_plain_iht_makes_the_single_process_decisions(world, tmp_path):
    ranks = _launch("iht", world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    A, b, w_bar = problem(3, 40, 301)
    for ridge in (0.0, 0.3):
        for k in (1, 17, 60, 300):
            key = f"{ridge}_{k}"
            single = chita_core.iht(
                A, b, k, ridge=ridge, w_bar=w_bar, refine=False, active_set=False
            )
            support = np.concatenate([r[f"s_{key}"] for r in ranks])
            w = np.concatenate([r[f"w_{key}"] for r in ranks])
            np.testing.assert_array_equal(support, single.support)
            np.testing.assert_allclose(w, single.w, rtol=1e-8, atol=1e-10)
            assert all(int(r[f"it_{key}"]) == single.n_iter for r in ranks)
            for r in ranks:  # the global objective, the same on every rank
                assert float(r[f"f_{key}"]) == pytest.approx(single.objective, rel=1e-9)
            # ... and the objective of the weights returned (float64 reference).
            f = ref.objective(A, b, w, ridge, w_bar)
            assert f == pytest.approx(single.objective, rel=1e-9)
    w0 = w_bar.copy()
    w0[slice(*blocks(301, world)[0])] = 0.0
    single = chita_core.iht(
        A, b, 25, ridge=0.1, w_bar=w_bar, w0=w0, refine=False, active_set=False, max_iter=3
    )
    np.testing.assert_allclose(np.concatenate([r["w_w0"] for r in ranks]), single.w, atol=1e-10)
    assert float(ranks[0]["f_w0"]) == pytest.approx(single.objective, rel=1e-9)


def _same_active_set_run(ranks, key, A, b, ridge, k, w_bar):
    """The sharded active-set IHT run `key` made the single-process decisions: the same support,
    iteration count and expansions (the history's length), objectives up to rounding."""
    single = chita_core.iht(
        A, b, k, ridge=ridge, w_bar=w_bar, refine=False, active_set=True, max_iter=40
    )
    support = np.concatenate([r[f"s_{key}"] for r in ranks])
    w = np.concatenate([r[f"w_{key}"] for r in ranks])
    np.testing.assert_array_equal(support, single.support)
    np.testing.assert_allclose(w, single.w, rtol=1e-8, atol=1e-10)
    for r in ranks:  # the same iterations, expansions and global objective on every rank
        assert int(r[f"it_{key}"]) == single.n_iter
        np.testing.assert_allclose(r[f"h_{key}"], single.history, rtol=1e-9)
        assert float(r[f"f_{key}"]) == pytest.approx(single.objective, rel=1e-9)
    f = ref.objective(A, b, w, ridge, w_bar)  # the weights returned (float64 reference)
    assert f == pytest.approx(single.objective, rel=1e-9)
    return single


@pytest.mark.parametrize("world", [2, 3])
def test_active_set_iht_makes_the_single_process_decisions(world, tmp_path):
    ranks = _launch("active", world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    A, b, w_bar = problem(3, 40, 301)
    # The power iterations start from the single process's random vector, bit for bit, and
    # reach its sigma_max^2 up to the rounding of the reductions (the same bits on every rank).
    start = np.concatenate([r["start"] for r in ranks])
    np.testing.assert_array_equal(start, np.random.default_rng(0).standard_normal(301))
    assert len({float(r["sigma2"]) for r in ranks}) == 1
    sigma2 = chita_core.Problem(A, b).sigma2
    assert float(ranks[0]["sigma2"]) == pytest.approx(sigma2, rel=1e-12)
    expansions = []
    for key, (ridge, k, wb) in ACTIVE_CASES.items():
        single = _same_active_set_run(ranks, key, A, b, ridge, k, w_bar if wb else None)
        expansions.append(len(single.history) - 1 - single.n_iter)
    assert expansions == [6, 10, 0, 2]  # the expansion search ran, up to its limit


@pytest.mark.parametrize("world", [2, 3])
def test_active_set_iht_with_a_rank_owning_no_active_column(world, tmp_path):
    ranks = _launch("active_zero", world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    A, _, w_bar = problem(3, 40, 301)
    A, b, w_bar = zero_block(A, w_bar, *blocks(301, world)[0])
    for key, (ridge, k, wb) in ZERO_CASES.items():
        single = _same_active_set_run(ranks, key, A, b, ridge, k, w_bar if wb else None)
        assert ranks[0][f"s_{key}"].size == 0
        assert len(single.history) - 1 > single.n_iter  # with expansions


def _same_pipeline_runs(ranks, case, plain, zero, world, tiny=None):
    """The sharded pipeline runs of ``case`` made the single-process decisions: the same plan,
    stage lines (swap counts included), supports and iteration counts, objectives to rounding
    and against the float64 reference. Returns the single-process results by key."""
    singles = {}
    for key, (A_, b_, wb_, (ridge, k, wb, options)) in pipeline_cases(plain, zero, world, tiny):
        wb_ = wb_ if wb else None
        single = chita_core.iht(
            A_, b_, k, ridge=ridge, w_bar=wb_, **PIPELINE_OPTIONS[case], **options
        )
        support = np.concatenate([r[f"s_{key}"] for r in ranks])
        w = np.concatenate([r[f"w_{key}"] for r in ranks])
        np.testing.assert_array_equal(support, single.support, err_msg=key)
        np.testing.assert_allclose(w, single.w, rtol=1e-8, atol=1e-10, err_msg=key)
        labels = [s.stage for s in single.stages] or [""]
        for r in ranks:  # the same plan, stages, iterations and objective on every rank
            assert r[f"pl_{key}"].tolist() == [s.stage for s in single.plan], key
            assert r[f"st_{key}"].tolist() == labels, key
            assert int(r[f"it_{key}"]) == single.n_iter, key
            assert float(r[f"f_{key}"]) == pytest.approx(single.objective, rel=1e-9), key
        f = ref.objective(A_, b_, w, ridge, wb_)
        assert f == pytest.approx(single.objective, rel=1e-9), key
        singles[key] = single
    return singles


@pytest.mark.parametrize("world", [2, 3])
def test_pipeline_makes_the_single_process_decisions(world, tmp_path):
    """refine=True, init="magnitude", swaps=False: the single-process plan (the same stages,
    IHT planned or not), the same supports, iteration counts and stage lines, objectives to
    rounding and against the float64 reference; a rank owning no support column."""
    ranks = _launch("pipeline", world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    _same_pipeline_runs(ranks, "pipeline", PIPELINE_CASES, PIPELINE_ZERO, world)
    # The cases cover both plans, both kept points and a rank owning no support column.
    plans = {key: ranks[0][f"pl_{key}"].tolist() for key in [*PIPELINE_CASES, *PIPELINE_ZERO]}
    assert plans["m3"] == ["magnitude", "iht"] and plans["m4"] == ["magnitude"]
    assert ranks[0]["st_m5"].tolist() == ["magnitude + refit", "active-set iht + refit"]
    assert ranks[0]["st_m7"].tolist() == ["magnitude + refit"]
    assert ranks[0]["s_mz"].size == 0


def _swaps_made(label: str) -> int:
    """The number of swaps a swap stage's line reports."""
    return int(re.search(r"\((\d+) (?:in|swaps in) ", label).group(1))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", ["swaps", "swaps_more"])
def test_swap_search_makes_the_single_process_decisions(case, world, tmp_path):
    """init="magnitude" with swap search (both searches, swaps=True or a budget): the
    single-process plan, stage lines with the same numbers of swaps and rounds, supports,
    objectives to rounding and against the float64 reference, with a scoring shift (ridge 0)
    and ridge > 0, k < n and k > n, from the magnitude point's kept factor, and a rank owning
    no support column."""
    ranks = _launch(case, world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    singles = _same_pipeline_runs(ranks, case, *SWAP_CASES[case], world)
    made = {}
    for key, single in singles.items():
        lines = [s for s in single.stages if "swaps" in s.stage]
        made[key] = [_swaps_made(s.stage) for s in lines]
        before = single.stages[len(single.stages) - len(lines) - 1].objective
        if made[key][0]:  # the first search swapped and lowered f
            assert lines[0].objective < before, key
    if case == "swaps":
        assert made == {"s1": [10, 10], "s3": [22, 22]}
        return
    assert made == {"s4": [37], "s5": [5], "s6": [0], "sz": made["sz"]}
    assert made["sz"][0] > 0 and ranks[0]["s_sz"].size == 0
    assert [s.stage for s in singles["s4"].plan][-1] == "swaps from iht"  # (planned, not run)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", ["greedy", "starts"])
def test_greedy_obs_and_the_starts_make_the_single_process_decisions(case, world, tmp_path):
    """init="greedy", "auto", "obs" and "obs_multistep": the single-process plan, stage lines
    (greedy OBS's superset size included), supports, objectives to rounding and against the
    float64 reference, with ridge 0 and > 0, k < n and k > n, supersets capped by the budget and
    by memory_limit, auto planning greedy OBS, multistep OBS or the enumeration, and a rank
    owning no superset column."""
    ranks = _launch(case, world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    plain, zero, tiny = GREEDY_CASES[case]
    singles = _same_pipeline_runs(ranks, case, plain, zero, world, tiny)
    lines = {key: [s.stage for s in single.stages] for key, single in singles.items()}
    greedy = {key: next((s for s in line if s.startswith("greedy obs")), None)
              for key, line in lines.items()}  # fmt: skip
    if case == "greedy":
        assert greedy == {
            "g1": "greedy obs from 80 + refit",
            "g2": "greedy obs from 179 + refit",
            "g4": "greedy obs from 301 + refit",
            "gz": "greedy obs from 80 + refit",
        }
        # Rank 0's block is zero (so is its w_bar): last by magnitude and OBD, outside the
        # superset of 80 of the 201 other columns, and outside the support.
        assert ranks[0]["s_gz"].size == 0
        return
    assert greedy["g3"] == "greedy obs from 80 + refit" and "swaps" in lines["g3"][-2]
    assert greedy["g5"] == "greedy obs from 50 + refit"  # (memory_limit)
    assert greedy["g6"] == "greedy obs from 79 + refit"  # (the budget)
    assert lines["o1"][1] == "obs + refit" and greedy["o1"] is None
    for key in ("o2", "o3"):
        assert lines[key][1:3] == ["obs + refit", "obs_multistep + refit"], key
    assert [s.stage for s in singles["o3"].plan] == ["magnitude", "obs"]
    assert lines["e1"][1] == "exhaustive + refit"


@pytest.mark.parametrize("world", [2, 3])
def test_greedy_obs_over_shards_is_the_single_process_elimination(world, tmp_path):
    """greedy_obs_support over shards, from a screen of which rank 0 owns no column: the
    single-process supports (textbook, block = pool = 1, and blocked), and textbook greedy OBS
    of the float64 reference (dense H_S^-1 every step)."""
    ranks = _launch("greedy_screen", world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    A, b, w_bar = problem(3, 40, 301)
    ridge, k = GREEDY_SCREEN
    screen = supports(3, 301, [120], *blocks(301, world)[0])[0]
    prob = chita_core.Problem(A, b, ridge=ridge, w_bar=w_bar)
    for key, options in GREEDY_BLOCKS.items():
        got = np.concatenate([r[f"s_{key}"] for r in ranks])
        single = chita_core.stages.greedy.greedy_obs_support(prob, screen, k, **options)
        np.testing.assert_array_equal(got, single, err_msg=key)
        assert ranks[0][f"s_{key}"].size == 0
    expected, _ = ref.greedy_obs(A, b, k, ridge, w_bar, start=screen)
    np.testing.assert_array_equal(np.concatenate([r["s_one"] for r in ranks]), expected)
