"""One rank of a chita_core.distributed test (run by tests/test_distributed.py as a process).

``python tests/dist_worker.py CASE RANK WORLD STORE OUT``: joins a gloo group through the file
store STORE, builds the case's global problem from its seed (every rank the same), takes its
column block (uneven by design) and writes what it computed, or the exception it raised, to
OUT/rank{RANK}.npz.
"""

from __future__ import annotations

import sys
import traceback

import numpy as np


def blocks(p: int, world: int) -> list[tuple[int, int]]:
    """Uneven column blocks: rank r gets a share proportional to r + 1 (rank 0 the smallest)."""
    weights = np.arange(1, world + 1, dtype=float)
    edges = np.concatenate([[0], np.round(np.cumsum(weights) / weights.sum() * p)]).astype(int)
    return [(int(edges[r]), int(edges[r + 1])) for r in range(world)]


def problem(seed: int, n: int, p: int):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, p)) * rng.uniform(0.2, 2.0, p)
    w_bar = rng.standard_normal(p)
    b = A @ w_bar + 0.1 * rng.standard_normal(n)
    return np.asfortranarray(A), b, w_bar


def supports(seed: int, p: int, sizes: list[int], lo: int, hi: int) -> list[np.ndarray]:
    """Global supports of the given sizes, the first one avoiding [lo, hi) (a rank with none)."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for t, m in enumerate(sizes):
        pool = np.setdiff1d(np.arange(p), np.arange(lo, hi)) if t == 0 else np.arange(p)
        out.append(np.sort(rng.choice(pool, m, replace=False)))
    return out


# Active-set IHT cases, key: (ridge, k, with w_bar). With w_bar the start is w_bar, without it
# zero (H_k of the start is then a tie: the first k active columns). In the single process
# (max_iter 40) they end after 6 and after 10 expansions (the most), after 40 iterations with
# none, and with an active set of every column (k = 201) after 2.
ACTIVE_CASES = {
    "a": (0.0, 1, True),
    "b": (0.3, 5, False),
    "c": (0.3, 17, True),
    "d": (0.3, 201, True),
}
# On the problem with a zero block (zero_block): 1 to 10 expansions.
ZERO_CASES = {"z1": (0.3, 5, True), "z2": (0.0, 10, False)}

# The pipeline (refine=True, init="magnitude", swaps=False), key: (ridge, k, with w_bar, options).
# In the single process: refits with k < n = 40 and k > n, ridge 0 and > 0; IHT planned by the
# budget (m1, m2), only because the start (zero) has fewer than k nonzeros (m3: effort 1e-3,
# which leaves it out in m4), as asked (max_iter: m5, m6, m7); IHT beats the magnitude refit
# except in m5 and m7, where it ends on the magnitude support (the context then returns the best
# point instead of solving it again; m7: max_iter 0, no IHT line); plain IHT (m6).
PIPELINE_CASES = {
    "m1": (0.0, 17, True, {}),
    "m2": (0.3, 60, True, {}),
    "m3": (0.3, 60, False, {"effort": 1e-3}),
    "m4": (0.3, 17, True, {"effort": 1e-3}),
    "m5": (0.3, 120, True, {"max_iter": 2}),
    "m6": (0.0, 25, True, {"active_set": False, "max_iter": 5}),
    "m7": (0.3, 17, True, {"max_iter": 0}),
}
# On the problem with a zero block: rank 0 owns no support column.
PIPELINE_ZERO = {"mz": (0.3, 10, True, {})}
# The pipeline with swap search (init="magnitude", swaps as given), as PIPELINE_CASES. In the
# single process: both searches (from the best point and from IHT's refit) run and swap, with
# a scoring shift (ridge 0, k < n: s1, where the scores are as sensitive as K^-1 is to
# rounding) and with ridge > 0 and k > n, accepted in n-space (s3); from the magnitude point
# and the factor of K its refit kept (s4: no IHT point, the second search planned but not run);
# a budget of 5 swaps, ridge > 0 and k < n (s5); ridge 0 with k > n, where f is 0 and no swap
# is left (s6); rank 0 owning no support column (sz).
# Two groups (two tests: each under 20 s on 3 ranks of a loaded 2-core machine), key: the
# group's cases on the seeded problem and on the problem with a zero block.
SWAP_CASES = {
    "swaps": ({"s1": (0.0, 17, True, {}), "s3": (0.3, 60, True, {})}, {}),
    "swaps_more": (
        {"s4": (0.3, 60, True, {"max_iter": 0}), "s5": (0.3, 10, True, {"swaps": 5}),
         "s6": (0.0, 60, True, {})},
        {"sz": (0.3, 10, True, {})},
    ),
}  # fmt: skip

# Greedy OBS and the other starts (init="greedy", "auto", "obs", "obs_multistep"), as
# PIPELINE_CASES, the third dict's cases on a tiny problem (tiny_problem). In the single process:
# greedy OBS with ridge 0 and k < n (g1: a superset of 2n = 80 columns, T = K^-1 A_S from 40
# survivors on), ridge > 0 and k > n (g2: the carried K^-1 refines the refit), a superset of
# every column with ridge 0 and k > n (g4), rank 0 owning no superset column (gz: its block
# zero, ranked last by magnitude and OBD); the whole default pipeline after it (g3: auto, both
# swap searches), a superset capped by memory_limit (g5: 50 columns) and by the budget (g6:
# auto, effort 0.01: 79 columns); one-shot OBS (o1), multistep OBS (o2: with the Gram
# downdated between steps), auto planning multistep OBS where greedy OBS does not fit (o3:
# effort 1e-3); enumeration (e1: auto, p = 24, k = 3, with greedy OBS and both searches after).
# Two groups (two tests: each under 20 s on 3 ranks of a loaded 2-core machine).
GREEDY_CASES = {
    "greedy": (
        {"g1": (0.0, 17, True, {"init": "greedy", "swaps": False}),
         "g2": (0.3, 60, True, {"init": "greedy", "swaps": False}),
         "g4": (0.0, 120, True, {"init": "greedy", "swaps": False})},
        {"gz": (0.3, 10, True, {"init": "auto", "swaps": False})},
        {},
    ),
    "starts": (
        {"g3": (0.3, 17, True, {}),
         "g5": (0.3, 17, True, {"init": "greedy", "swaps": False, "memory_limit": 24_000}),
         "g6": (0.3, 17, True, {"effort": 0.01}),
         "o1": (0.3, 17, True, {"init": "obs", "swaps": False}),
         "o2": (0.0, 17, True, {"init": "obs_multistep", "swaps": False}),
         "o3": (0.3, 60, True, {"effort": 1e-3})},
        {},
        {"e1": (0.3, 3, True, {})},
    ),
}  # fmt: skip
STAGE_CASES = {**SWAP_CASES, **GREEDY_CASES}
# greedy_obs_support over shards on a screen of 120 columns none of which rank 0 owns (ridge,
# k), textbook (block = pool = 1) and blocked, by key: its keyword arguments.
GREEDY_SCREEN = (0.3, 17)
GREEDY_BLOCKS = {"one": {"block": 1, "pool": 1}, "blocked": {}}


# The options every case of the pipeline tests passes.
PIPELINE_OPTIONS = {
    "pipeline": {"init": "magnitude", "swaps": False},
    "swaps": {"init": "magnitude"},
    "swaps_more": {"init": "magnitude"},
    "greedy": {},
    "starts": {},
}


def pipeline_cases(plain: dict, zero: dict, world: int, tiny: dict | None = None) -> list:
    """[(key, (A, b, w_bar, case))]: the ``plain`` cases on the seeded problem, the ``zero``
    ones on it with rank 0's block zero (zero_block), the ``tiny`` ones on tiny_problem."""
    A, b, w_bar = problem(3, 40, 301)
    Az, bz, wz = zero_block(A, w_bar, *blocks(301, world)[0])
    At, bt, wt = tiny_problem()
    return (
        [(key, (A, b, w_bar, case)) for key, case in plain.items()]
        + [(key, (Az, bz, wz, case)) for key, case in zero.items()]
        + [(key, (At, bt, wt, case)) for key, case in (tiny or {}).items()]
    )


def tiny_problem():
    """n = 10, p = 24: small enough for the enumeration of all supports (init="auto")."""
    return problem(3, 10, 24)


def zero_block(A: np.ndarray, w_bar: np.ndarray, lo: int, hi: int):
    """The problem with columns lo:hi of A and entries lo:hi of w_bar zero, and a new b."""
    A, w_bar = A.copy(order="F"), w_bar.copy()
    A[:, lo:hi] = 0.0
    w_bar[lo:hi] = 0.0
    return A, A @ w_bar + 0.1 * np.random.default_rng(5).standard_normal(A.shape[0]), w_bar


def _store(out: dict, key: str, res, lo: int) -> None:
    out[f"w_{key}"], out[f"s_{key}"] = res.w, res.support + lo
    out[f"f_{key}"], out[f"it_{key}"] = np.asarray(res.objective), np.asarray(res.n_iter)
    out[f"h_{key}"] = np.asarray(res.history)
    out[f"st_{key}"] = np.asarray([s.stage for s in res.stages] or [""])
    out[f"pl_{key}"] = np.asarray([s.stage for s in res.plan])


def run(case: str, rank: int, world: int) -> dict:
    import chita_core.distributed as cd

    if case == "topk":
        rng = np.random.default_rng(7)
        p = 1000
        v = np.round(rng.standard_normal(p), 1)  # many exact ties
        v[::17] = 0.0
        v[5::31] = -v[4::31][: v[5::31].size]  # |v| ties of opposite signs
        lo, hi = blocks(p, world)[rank]
        out = {}
        for k in (0, 1, 37, 500, 999, 1000):
            out[f"k{k}"] = cd.topk(v[lo:hi], k) + lo
        return out
    n, p = 40, 301
    A, b, w_bar = problem(3, n, p)
    lo, hi = blocks(p, world)[rank]
    out = {}
    if case == "iht":
        for ridge in (0.0, 0.3):
            for k in (1, 17, 60, 300):
                res = cd.iht(A[:, lo:hi], b, k, ridge=ridge, w_bar=w_bar[lo:hi],
                             refine=False, active_set=False)  # fmt: skip
                key = f"{ridge}_{k}"
                out[f"w_{key}"], out[f"s_{key}"] = res.w, res.support + lo
                out[f"f_{key}"] = np.asarray(res.objective)
                out[f"it_{key}"] = np.asarray(res.n_iter)
        # A start with no weight on rank 0's block: rank 0 holds no support column at first.
        w0 = w_bar.copy()
        w0[slice(*blocks(p, world)[0])] = 0.0
        res = cd.iht(A[:, lo:hi], b, 25, ridge=0.1, w_bar=w_bar[lo:hi], w0=w0[lo:hi],
                     refine=False, active_set=False, max_iter=3)  # fmt: skip
        out["w_w0"], out["f_w0"] = res.w, np.asarray(res.objective)
        return out
    if case == "active":
        from chita_core.distributed._iht import _start_slice, sharded_sigma2
        from chita_core.distributed._shard import Shard

        # The power iterations' start and sigma_max^2 over shards (the step size 1/L).
        shard = Shard(A[:, lo:hi], b, 0.0, None, None, "auto")
        out["start"] = _start_slice(shard.comm, hi - lo)
        out["sigma2"] = np.asarray(sharded_sigma2(shard))
        for key, (ridge, k, wb) in ACTIVE_CASES.items():
            res = cd.iht(A[:, lo:hi], b, k, ridge=ridge, w_bar=w_bar[lo:hi] if wb else None,
                         refine=False, active_set=True, max_iter=40)  # fmt: skip
            _store(out, key, res, lo)
        return out
    if case == "active_zero":
        # Rank 0's block is zero columns with zero w_bar: 0 in the 1/L step and in every
        # expansion step, so rank 0 never owns an active column.
        A, b, w_bar = zero_block(A, w_bar, *blocks(p, world)[0])
        for key, (ridge, k, wb) in ZERO_CASES.items():
            res = cd.iht(A[:, lo:hi], b, k, ridge=ridge, w_bar=w_bar[lo:hi] if wb else None,
                         refine=False, active_set=True, max_iter=40)  # fmt: skip
            _store(out, key, res, lo)
        return out
    if case == "pipeline" or case in STAGE_CASES:
        plain, zero, *tiny = STAGE_CASES.get(case, (PIPELINE_CASES, PIPELINE_ZERO))
        for key, (A_, b_, wb_, (ridge, k, wb, options)) in pipeline_cases(
            plain, zero, world, *tiny
        ):
            lo_, hi_ = blocks(A_.shape[1], world)[rank]
            res = cd.iht(A_[:, lo_:hi_], b_, k, ridge=ridge, w_bar=wb_[lo_:hi_] if wb else None,
                         **PIPELINE_OPTIONS[case], **options)  # fmt: skip
            _store(out, key, res, lo_)
        return out
    if case == "greedy_screen":
        from chita_core.distributed._greedy import ShardGreedyColumns
        from chita_core.distributed._shard import Shard
        from chita_core.stages.greedy import greedy_obs_support

        ridge, k = GREEDY_SCREEN
        screen = supports(3, p, [120], *blocks(p, world)[0])[0]
        shard = Shard(A[:, lo:hi], b, ridge, w_bar[lo:hi], None, "auto")
        mine = screen[(screen >= lo) & (screen < hi)] - lo
        for key, options in GREEDY_BLOCKS.items():
            got = greedy_obs_support(shard.prob, mine, k, ops=ShardGreedyColumns(shard), **options)
            out[f"s_{key}"] = got + lo
        return out
    if case == "solve":
        for ridge in (0.0, 0.3):
            for t, S in enumerate(supports(3, p, [25, 40, 120], *blocks(p, world)[0])):
                mine = S[(S >= lo) & (S < hi)] - lo
                w = cd.backsolve(A[:, lo:hi], b, mine, ridge=ridge, w_bar=w_bar[lo:hi])
                out[f"w_{ridge}_{t}"] = w
                out[f"f_{ridge}_{t}"] = np.asarray(
                    cd.objective(A[:, lo:hi], b, w, ridge=ridge, w_bar=w_bar[lo:hi])
                )
        return out
    if case == "prepared":
        # One Shard, solved at several ridges and k: what iht gives on the block each time.
        shard = cd.Shard(A[:, lo:hi], b, w_bar=w_bar[lo:hi])
        for ridge in (0.0, 0.3):
            for k in (5, 60):
                res = cd.solve(shard.with_ridge(ridge), k, swaps=False)
                again = cd.iht(A[:, lo:hi], b, k, ridge=ridge, w_bar=w_bar[lo:hi], swaps=False)
                out[f"f_{ridge}_{k}"] = np.asarray([res.objective, again.objective])
                out[f"s_{ridge}_{k}"] = res.support + lo
                out[f"same_{ridge}_{k}"] = np.asarray(np.array_equal(res.support, again.support))
        out["known"] = np.asarray(shard.sigma2_known)
        return out
    if case == "groups":
        # A group that is not a process group, and one this rank is not in: clear errors; the
        # subgroup of rank 0 alone solves as one process.
        import torch.distributed as dist

        for key, group in {"str": "WORLD", "int": 3}.items():
            try:
                cd.iht(A, b, 5, group=group)
            except TypeError as exc:
                out[f"err_{key}"] = np.asarray(str(exc))
        sub = dist.new_group([0])  # (a collective: every rank calls it)
        try:
            out["sub"] = np.asarray(cd.iht(A, b, 5, group=sub).objective)
        except ValueError as exc:
            out["sub_err"] = np.asarray(str(exc))
        return out
    # Error cases: every rank must raise (none may wait in a collective).
    bad_b, bad_A = b.copy(), A[:, lo:hi].copy(order="F")
    if case == "b_differs" and rank == world - 1:
        bad_b[3] += 1e-9
    if case == "n_differs" and rank == 1:
        bad_A, bad_b = np.asfortranarray(bad_A[:-1]), bad_b[:-1]
    if case == "nan" and rank == 0:
        bad_A[2, 0] = np.nan
    if case == "no_columns" and rank == 2:
        bad_A = np.asfortranarray(bad_A[:, :0])
    if case == "bad_support" and rank == 1:
        S = np.asarray([hi - lo + 5])  # outside the rank's block
    else:
        S = np.asarray([0])
    cd.backsolve(bad_A, bad_b, S, ridge=0.1, w_bar=w_bar[lo:hi])
    return out


def main() -> None:
    case, rank, world, store, out = sys.argv[1:6]
    rank, world = int(rank), int(world)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = run(case, rank, world)
        result["error"] = np.asarray("")
    except Exception as exc:  # reported to the test, which checks the type and message
        result = {"error": np.asarray(f"{type(exc).__name__}: {exc}")}
        traceback.print_exc()
    np.savez(f"{out}/rank{rank}.npz", **result)
    dist.barrier()  # every rank past its last collective before any tears the group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
