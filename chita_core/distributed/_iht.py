"""IHT with CHITA's line search over column shards, on all columns or on CHITA's active set
(docs/design.md, sections 2 and 12.1).

``sharded_step`` is the backends' ``chita_step`` (the same thresholds, ladders and candidate
evaluation; backends/numba_kernels.py is its reading copy) with every global quantity formed
from local parts: maxima and minima of local scalars, sums through ``Comm.total``, supports
through the global top-k. Like ``chita_step`` it takes ``cols``, the rank's columns of a
subproblem (its share of the active set), so the active set never copies A. Every branch reads
numbers that are the same bits on every rank, so every rank follows the same path and issues the
same collectives.

Per step, each rank reads its block of A (or its active columns) once for the gradient (local,
no communication) and the changed support columns once per candidate; communication is a few
scalars, one n-vector per mat-vec (the step's A d, and each candidate's entering / leaving
columns) and the top-k's histogram rounds (at most 9 gathers of 256 integers) per candidate.

The active set's step size 1/L needs ``Problem.lipschitz``: ``sharded_sigma2`` runs the power
iterations of ``_problem._power_sigma2`` on sharded mat-vecs from the same random start vector,
each rank drawing only its own slice of it (``_start_slice``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._point import Point
from .._problem import _LIPSCHITZ_MARGIN, _POWER_ITERS
from ..backends import constants as _constants
from ..stages.iht import _EXPANSION_STEPS, _MAX_EXPANSIONS, IHTRun
from ._topk import global_topk

__all__ = ["active_set_iht", "plain_iht", "sharded_sigma2"]

# _problem._power_sigma2's start: np.random.default_rng(_POWER_SEED).standard_normal(p).
_POWER_SEED = 0
_MASK64 = (1 << 64) - 1


def _never(*_: Any) -> bool:
    """The default iteration callback: never stops (a callback must answer the same on every
    rank)."""
    return False


def _max(comm: Any, x: float) -> float:
    return float(comm.gather(np.asarray([x])).max())


def _min(comm: Any, x: float) -> float:
    return float(comm.gather(np.asarray([x])).min())


def _count(comm: Any, m: int) -> int:
    return int(comm.gather(np.asarray([m], dtype=np.int64)).sum())


def sharded_step(
    shard: Any,
    k: int,
    g: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    support: np.ndarray,
    f: float,
    cols: np.ndarray | None = None,
) -> tuple[float, float, int, bool, np.ndarray]:
    """One CHITA step over shards; updates w and r in place and returns
    (f_new, tau, n_candidates, support_changed, new local support).

    With ``cols`` (sorted local column indices, possibly none on a rank) the step runs on the
    subproblem of every rank's ``cols``, as ``chita_step(..., cols)``: g, w and support are
    then local to ``cols`` and the objective is the subproblem's (ridge term over ``cols``)."""
    comm, prob = shard.comm, shard.prob
    b, ridge = prob.b, prob.ridge
    w_bar = prob.w_bar if cols is None else prob.w_bar[cols]

    def columns(idx: np.ndarray) -> np.ndarray:
        return idx if cols is None else cols[idx]

    inf = np.inf
    # Largest |g| off the support, and whether any rank has a column off it (k < p of the
    # (sub)problem, which a rank cannot see alone): one gather.
    off = np.ones(w.size, dtype=bool)
    off[support] = False
    part = [float(np.abs(g[off]).max()) if off.any() else 0.0, float(off.any())]
    both = comm.gather(np.asarray(part))
    mx = float(both[:, 0].max())
    # The support-preserving step bound tau_chg.
    tau_chg = inf
    if both[:, 1].any():
        wi, gi = w[support], g[support]
        agi = np.abs(gi)
        toward = wi * gi > 0.0
        away = ~toward & (agi < mx)
        denom = np.where(toward, agi + mx, mx - agi)
        ok = (toward | away) & (denom > 0.0)
        bound = float((np.abs(wi[ok]) / denom[ok]).min()) if ok.any() else inf
        tau_chg = _min(comm, bound)
    # Exact minimiser along d = g restricted to S.
    d = np.ascontiguousarray(g[support])
    Ad = shard.product(columns(support), d)
    dd = comm.total(float(d @ d))
    curv = float(Ad @ Ad) + ridge * dd
    dmax = _max(comm, float(np.abs(d).max()) if d.size else 0.0)
    stationary = dmax <= _constants.STATIONARY * mx
    tau_star = dd / curv if (not stationary and dd > 0.0 and curv > 0.0) else 0.0
    if 0.0 < tau_star < tau_chg:
        w[support] -= tau_star * d
        r -= tau_star * Ad
        return shard.value(r, w, w_bar), tau_star, 0, False, support

    wbar_sq = comm.total(float(w_bar @ w_bar)) if ridge != 0.0 else 0.0

    def candidate(tau: float) -> tuple[float, bool, np.ndarray, np.ndarray, np.ndarray]:
        v = w - tau * g
        cidx = global_topk(comm, v, k)
        cx = v[cidx]
        leaving = np.setdiff1d(support, cidx, assume_unique=True)
        entering = np.setdiff1d(cidx, support, assume_unique=True)
        didx = np.concatenate([leaving, entering])
        order = np.argsort(didx, kind="stable")
        didx = didx[order].astype(np.int64)
        dval = np.concatenate([-v[leaving], v[entering]])[order]
        nd = _count(comm, didx.size)
        if nd == 0:
            cr = r - tau * Ad
        elif nd < k:
            cr = r - tau * Ad + shard.product(columns(didx), dval)
        else:
            cr = shard.product(columns(cidx), cx) - b
        fc = 0.5 * float(cr @ cr)
        if ridge != 0.0:
            wb = w_bar[cidx]
            dl = cx - wb
            fc += 0.5 * ridge * (wbar_sq + comm.total(float(dl @ dl) - float(wb @ wb)))
        return fc, nd > 0, cidx, cx, cr

    n_cand = 0
    accepted = False
    best: tuple[float, bool, np.ndarray, np.ndarray, np.ndarray] | None = None
    tau_best, f_best = 0.0, f
    for ladder in range(2):
        if ladder == 0:
            tau = tau_star if tau_chg == inf else tau_chg / _constants.TAU_CHG_SHRINK
            steps = _constants.FORWARD_STEPS
        else:
            if accepted:
                break
            tau = tau_star
            steps = _constants.BACKTRACK_STEPS
        if not tau > 0.0:
            continue
        for _ in range(steps):
            cand = candidate(tau)
            n_cand += 1
            improved = cand[0] < f_best
            if improved:
                f_best, tau_best, accepted, best = cand[0], tau, True, cand
            if improved == (ladder == 1):
                break
            tau = tau * _constants.LADDER_FACTOR if ladder == 0 else tau / _constants.LADDER_FACTOR
    if not accepted or best is None:
        return f, 0.0, n_cand, False, support
    _, changed, cidx, cx, cr = best
    w[support] = 0.0
    w[cidx] = cx
    r[:] = cr
    return f_best, tau_best, n_cand, changed, cidx


def plain_iht(
    shard: Any, k: int, start: np.ndarray, max_iter: int, tol: float, on_iter: Any = _never
) -> IHTRun:
    """stages/iht.py: plain_iht over shards: IHT on all columns from H_k(start)."""
    prob = shard.prob
    support = global_topk(shard.comm, start, k)
    first = Point.at(shard, support, start[support])
    run = IHTRun(first.support, first.w, first.r, first.f)
    run.history.append(run.f)
    g = np.empty(prob.p)
    for it in range(1, max_iter + 1):
        prob.kernels.gradient(prob.A, run.r, run.w, prob.w_bar, prob.ridge, g)
        f_new, tau, _, changed, run.support = sharded_step(
            shard, k, g, run.w, run.r, run.support, run.f
        )
        if run.record(it, f_new, tau, changed, tol, on_iter):
            break
    return run


def active_set_iht(
    shard: Any,
    k: int,
    start: np.ndarray,
    max_iter: int,
    tol: float,
    on_iter: Any = _never,
    *,
    max_expansions: int = _MAX_EXPANSIONS,
) -> IHTRun:
    """stages/iht.py: active_set_iht over shards (docs/design.md, section 2.4).

    The active set is the global floor(1.5 k) largest entries of the 1/L gradient step from
    ``start``; each rank holds its own active columns (possibly none) and IHT runs
    ``sharded_step`` on them (``cols``). The expansion search tries H_k(w - tau g) over all
    columns for tau = 2^t / (2 L), t = 0..9; the best that lowers f joins the active set and
    IHT resumes. ``max_iter`` bounds the IHT iterations over all rounds."""
    comm, prob = shard.comm, shard.prob
    A, b, w_bar, ridge, kernels = prob.A, prob.b, prob.w_bar, prob.ridge, prob.kernels
    size = min(comm.p, max(k, (3 * k) // 2))
    L = _LIPSCHITZ_MARGIN * (sharded_sigma2(shard) + ridge)
    # 1/L gradient step from the (dense) start.
    r0 = shard.product(np.arange(prob.p, dtype=np.int64), start) - b
    g = np.empty(prob.p)
    kernels.gradient(A, r0, start, w_bar, ridge, g)
    # L == 0 only when A and ridge are zero: then g is zero too and the step is the start.
    active = global_topk(comm, start - g / L if L > 0 else start, size)

    # IHT starts from H_k(start) restricted to the active set (ties to the lower global index:
    # the ranks' active columns in rank order are the global active set in order).
    support = active[global_topk(comm, np.ascontiguousarray(start[active]), k)]
    first = Point.at(shard, support, start[support])
    run = IHTRun(first.support, first.w, first.r, first.f)
    run.history.append(run.f)
    it = 0
    while True:
        # IHT on the active columns. sharded_step works with the subproblem's objective, which
        # lacks the constant 0.5 ridge ||w_bar off the active set||^2: summed over the ranks'
        # inactive columns directly (no difference of squares to cancel).
        wb_act = w_bar[active]
        inactive = np.ones(prob.p, dtype=bool)
        inactive[active] = False
        wb_off = w_bar[inactive]
        off = 0.5 * ridge * comm.total(float(wb_off @ wb_off)) if ridge != 0.0 else 0.0
        w_loc = run.w[active]
        local = np.searchsorted(active, run.support).astype(np.int64)
        g_loc = np.zeros(active.size)
        while it < max_iter:
            it += 1
            if active.size:
                kernels.support_rmatvec(A, active, run.r, g_loc)
            if ridge != 0.0:
                g_loc += ridge * (w_loc - wb_act)
            f_loc, tau, _, changed, local = sharded_step(
                shard, k, g_loc, w_loc, run.r, local, run.f - off, active
            )
            if run.record(it, f_loc + off, tau, changed, tol, on_iter):
                break
        run.w[:] = 0.0
        run.w[active] = w_loc
        run.support = active[local]
        if run.stopped or it >= max_iter or run.expansions >= max_expansions or not L > 0:
            return run

        # Expansion search over all columns.
        kernels.gradient(A, run.r, run.w, w_bar, ridge, g)
        best = None
        for t in range(_EXPANSION_STEPS):
            v = run.w - (2.0**t / (2.0 * L)) * g
            cand = global_topk(comm, v, k)
            point = Point.at(shard, cand, v[cand])
            if point.f < (run.f if best is None else best.f):
                best = point
        if best is None:
            return run
        run.expansions += 1
        run.support, run.w, run.r, run.f = best.support, best.w, best.r, best.f
        run.history.append(run.f)
        active = np.union1d(active, run.support)


def sharded_sigma2(shard: Any) -> float:
    """_problem._power_sigma2 over shards: the same power iterations on A^T A from the same
    start vector, A v a local partial and one reduction of n, A^T (A v) local, the scaled norms
    a global max and a rank-order sum. sigma2 equals the single-process estimate up to the
    rounding of those sums (bit-identical on every rank)."""
    comm, prob = shard.comm, shard.prob
    every = np.arange(prob.p, dtype=np.int64)
    v = _start_slice(comm, prob.p)
    v /= _scaled_norm(comm, v)
    zeros = np.zeros(prob.p)
    sigma2 = 0.0
    for _ in range(_POWER_ITERS):
        Av = shard.product(every, v)
        prob.kernels.gradient(prob.A, Av, zeros, zeros, 0.0, v)  # v = A_r^T A v
        sigma2 = _scaled_norm(comm, v)
        if sigma2 == 0.0:
            break
        v /= sigma2
    return sigma2


def _scaled_norm(comm: Any, v: np.ndarray) -> float:
    """_problem.scaled_norm of the global vector whose slices the ranks hold."""
    m = _max(comm, float(np.abs(v).max()) if v.size else 0.0)
    if m == 0.0 or not np.isfinite(m):
        return m
    u = v / m
    return m * float(np.sqrt(comm.total(float(u @ u))))


def _start_slice(comm: Any, p_local: int) -> np.ndarray:
    """This rank's slice of the power iterations' start, the global
    ``np.random.default_rng(_POWER_SEED).standard_normal(p)``, bit for bit.

    The normals come from a rejection sampler that consumes a variable number of raw draws, so
    a rank cannot skip ahead to its slice; instead the generator is handed along the ranks:
    rank r draws its p_r normals and passes the PCG64 state (6 integers, one gather each round)
    to rank r + 1. Every rank draws only its own slice (O(p_r) work and memory, no length-p
    vector anywhere); the chain is sequential, O(p) draws of wall time once per solve."""
    rng = np.random.default_rng(_POWER_SEED) if comm.rank == 0 else None
    mine = np.zeros(0)
    for owner in range(comm.size):
        if owner == comm.rank:
            assert rng is not None
            mine = rng.standard_normal(p_local)
        if owner + 1 == comm.size:
            break
        state = _pcg_state(rng) if owner == comm.rank else np.zeros(6, dtype=np.int64)
        states = comm.gather(state)
        if owner + 1 == comm.rank:
            rng = _pcg_generator(states[owner])
    return mine


def _pcg_state(rng: Any) -> np.ndarray:
    """A PCG64 generator's state as 6 int64 (the 128-bit state and increment in halves)."""
    s = rng.bit_generator.state
    state, inc = s["state"]["state"], s["state"]["inc"]
    words = [state >> 64, state & _MASK64, inc >> 64, inc & _MASK64, s["has_uint32"]]
    return np.asarray([*words, s["uinteger"]], dtype=np.uint64).view(np.int64)


def _pcg_generator(words: np.ndarray) -> Any:
    """The generator whose state ``_pcg_state`` wrote."""
    hi, lo, inc_hi, inc_lo, has, uint = (int(x) for x in words.view(np.uint64))
    bits = np.random.PCG64()
    bits.state = {
        "bit_generator": "PCG64",
        "state": {"state": hi << 64 | lo, "inc": inc_hi << 64 | inc_lo},
        "has_uint32": has,
        "uinteger": uint,
    }
    return np.random.Generator(bits)
