"""The IHT drivers' operations over column shards (docs/design.md, sections 2 and 12.1):
``ShardIHTColumns``, with which stages/iht.py's drivers run IHT with CHITA's line search on all
columns or on CHITA's active set on every rank.

``sharded_step`` is the backends' ``chita_step`` (the same thresholds, ladders and candidate
evaluation; backends/numba_kernels.py is its reading copy) with every global quantity formed
from local parts: maxima and minima of local scalars, sums through ``Comm.total``, supports
through the global top-k. Like ``chita_step`` it takes ``cols``, the rank's columns of a
subproblem (its share of the active set), so the active set never copies A. Every branch reads
numbers that are the same bits on every rank, so every rank follows the same path and issues the
same collectives.

Per step, each rank reads its block of A (or its active columns) once for the gradient (local,
no communication) and the changed support columns once per candidate; communication is two
gathers (the largest |g| off the support; then the step's A d with ||d||^2, max |d|, the
step bound and ||w_bar||^2 together), the objective's ridge term where a step is taken, and
per candidate the top-k's histogram rounds (at most 7 small gathers) and one gather
of its moved columns' product with their count and ridge term.

The active set's step size 1/L needs ``Problem.lipschitz``: ``sharded_sigma2`` runs the power
iterations of ``_problem._power_sigma2`` (``_problem.power_iterations``) on sharded mat-vecs
from the same random start vector, each rank drawing only its own slice of it
(``_start_slice``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._problem import power_iterations
from ..backends import constants as _constants
from ..stages.iht import IHTColumns
from ._topk import global_topk

__all__ = ["ShardIHTColumns", "sharded_sigma2", "sharded_step"]

# _problem._power_sigma2's start: np.random.default_rng(_POWER_SEED).standard_normal(p).
_POWER_SEED = 0
_MASK64 = (1 << 64) - 1


def _never(*_: Any) -> bool:
    """The default iteration callback: never stops (a callback must answer the same on every
    rank)."""
    return False


class ShardIHTColumns(IHTColumns):
    """stages/iht.py's IHTColumns over column shards: ``prob`` the Shard (points, residuals and
    objectives of the global problem), ``local`` the rank's block; the global top-k (ties to the
    lower global index), counts and sums over the ranks and the sharded CHITA step (the
    Lipschitz constant is the Shard's, from sharded power iterations)."""

    def __init__(self, shard: Any) -> None:
        self.prob, self.local, self.comm = shard, shard.prob, shard.comm

    def largest(self, v: Any, k: int) -> Any:
        return global_topk(self.comm, np.ascontiguousarray(v), k)

    def count(self, m: int) -> int:
        return _count(self.comm, m)

    def total(self, x: float) -> float:
        return self.comm.total(x)

    def step(
        self, k: int, g: Any, w: Any, r: Any, support: Any, f: float, w_bar: Any, cols: Any = None
    ) -> tuple[float, float, bool, Any]:
        f_new, tau, _, changed, support = sharded_step(self.prob, k, g, w, r, support, f, w_bar,
                                                       cols)  # fmt: skip
        return f_new, tau, changed, support


def _max(comm: Any, x: float) -> float:
    return float(comm.gather(np.asarray([x])).max())


def _reduce(
    comm: Any, sums: list[Any], maximum: float = 0.0, minimum: float = 0.0
) -> tuple[np.ndarray, float, float]:
    """One gather for several reductions: the rank-order sums of the concatenated ``sums``
    (each entry the bits ``Comm.total`` gives it alone), the maximum of the local ``maximum``
    and the minimum of the local ``minimum``."""
    local = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in sums])
    parts = comm.gather(np.concatenate([local, [maximum, minimum]]))
    acc = parts[0, : local.size].copy()
    for part in parts[1:]:
        acc += part[: local.size]
    return acc, float(parts[:, -2].max()), float(parts[:, -1].min())


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
    w_bar: np.ndarray,
    cols: np.ndarray | None = None,
) -> tuple[float, float, int, bool, np.ndarray]:
    """One CHITA step over shards; updates w and r in place and returns
    (f_new, tau, n_candidates, support_changed, new local support).

    With ``cols`` (sorted local column indices, possibly none on a rank) the step runs on the
    subproblem of every rank's ``cols``, as ``chita_step(..., cols)``: g, w and support are
    then local to ``cols`` and the objective is the subproblem's (ridge term over ``cols``;
    ``w_bar`` is the subproblem's)."""
    comm, prob = shard.comm, shard.prob
    b, ridge = prob.b, prob.ridge

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
    # The support-preserving step bound tau_chg (its local part), and A d, ||d||^2, max |d| and
    # ||w_bar||^2 (needed if candidates are tried) for d = g restricted to S: one gather.
    bound = inf
    if both[:, 1].any():
        wi, gi = w[support], g[support]
        agi = np.abs(gi)
        toward = wi * gi > 0.0
        away = ~toward & (agi < mx)
        denom = np.where(toward, agi + mx, mx - agi)
        ok = (toward | away) & (denom > 0.0)
        bound = float((np.abs(wi[ok]) / denom[ok]).min()) if ok.any() else inf
    d = np.ascontiguousarray(g[support])
    wbs = float(w_bar @ w_bar) if ridge != 0.0 else 0.0
    sums, dmax, tau_chg = _reduce(
        comm, [shard.partial(columns(support), d), [float(d @ d), wbs]],
        float(np.abs(d).max()) if d.size else 0.0, bound,
    )  # fmt: skip
    n = prob.n
    Ad, dd, wbar_sq = sums[:n], float(sums[n]), float(sums[n + 1])
    # Exact minimiser along d.
    curv = float(Ad @ Ad) + ridge * dd
    stationary = dmax <= _constants.STATIONARY * mx
    tau_star = dd / curv if (not stationary and dd > 0.0 and curv > 0.0) else 0.0
    if 0.0 < tau_star < tau_chg:
        w[support] -= tau_star * d
        r -= tau_star * Ad
        return shard.value(r, w, w_bar), tau_star, 0, False, support

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
        # The moved columns' product, their count and the ridge term's change: one gather.
        ridge_part = 0.0
        if ridge != 0.0:
            wb = w_bar[cidx]
            dl = cx - wb
            ridge_part = float(dl @ dl) - float(wb @ wb)
        parts = [shard.partial(columns(didx), dval), [float(didx.size), ridge_part]]
        sums = _reduce(comm, parts)[0]
        nd = int(sums[n])
        if nd == 0:
            cr = r - tau * Ad
        elif nd < k:
            cr = r - tau * Ad + sums[:n]
        else:  # (every column moved: the new support's product instead)
            cr = shard.product(columns(cidx), cx) - b
        fc = 0.5 * float(cr @ cr)
        if ridge != 0.0:
            fc += 0.5 * ridge * (wbar_sq + float(sums[n + 1]))
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


def sharded_sigma2(shard: Any) -> float:
    """_problem._power_sigma2 over shards: the same power iterations on A^T A from the same
    start vector, A v a local partial and one reduction of n, A^T (A v) local, the scaled norms
    a global max and a rank-order sum. sigma2 equals the single-process estimate up to the
    rounding of those sums (bit-identical on every rank)."""
    comm, prob = shard.comm, shard.prob
    every = np.arange(prob.p, dtype=np.int64)
    return power_iterations(prob, _start_slice(comm, prob.p),
                            lambda v: shard.product(every, v),
                            lambda v: _scaled_norm(comm, v))  # fmt: skip


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
