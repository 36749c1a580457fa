"""IHT with CHITA's line search over column shards (docs/design.md, sections 2 and 12.1).

``sharded_step`` is the backends' ``chita_step`` (the same thresholds, ladders and candidate
evaluation; backends/numba_kernels.py is its reading copy) with every global quantity formed
from local parts: maxima and minima of local scalars, sums through ``Comm.total``, supports
through the global top-k. Every branch reads numbers that are the same bits on every rank, so
every rank follows the same path and issues the same collectives.

Per step, each rank reads its block of A once for the gradient (local, no communication) and
the changed support columns once per candidate; communication is a few scalars, one n-vector
per mat-vec (the step's A d, and each candidate's entering / leaving columns) and the top-k's
histogram rounds (at most 9 gathers of 256 integers) per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import constants as _constants
from ._topk import global_topk

__all__ = ["ShardedRun", "plain_iht"]


@dataclass
class ShardedRun:
    support: np.ndarray  # [k_r] sorted local indices
    w: np.ndarray  # [p_r]
    r: np.ndarray  # [n] A w - b (the same on every rank)
    f: float  # global objective
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


def _max(comm: Any, x: float) -> float:
    return float(comm.gather(np.asarray([x])).max())


def _min(comm: Any, x: float) -> float:
    return float(comm.gather(np.asarray([x])).min())


def _count(comm: Any, m: int) -> int:
    return int(comm.gather(np.asarray([m], dtype=np.int64)).sum())


def _value(shard: Any, r: np.ndarray, w: np.ndarray) -> float:
    """0.5 ||r||^2 + 0.5 ridge ||w - w_bar||^2 over all ranks."""
    prob = shard.prob
    f = 0.5 * float(r @ r)
    if prob.ridge != 0.0:
        d = w - prob.w_bar
        f += 0.5 * prob.ridge * shard.comm.total(float(d @ d))
    return f


def sharded_step(
    shard: Any, k: int, g: np.ndarray, w: np.ndarray, r: np.ndarray, support: np.ndarray, f: float
) -> tuple[float, float, int, bool, np.ndarray]:
    """One CHITA step over shards; updates w and r in place and returns
    (f_new, tau, n_candidates, support_changed, new local support)."""
    comm, prob = shard.comm, shard.prob
    b, w_bar, ridge = prob.b, prob.w_bar, prob.ridge
    p = comm.p
    inf = np.inf
    # Largest |g| off the support; the support-preserving step bound tau_chg.
    off = np.ones(w.size, dtype=bool)
    off[support] = False
    mx = _max(comm, float(np.abs(g[off]).max()) if off.any() else 0.0)
    tau_chg = inf
    if k < p:
        wi, gi = w[support], g[support]
        agi = np.abs(gi)
        toward = wi * gi > 0.0
        away = ~toward & (agi < mx)
        denom = np.where(toward, agi + mx, mx - agi)
        ok = (toward | away) & (denom > 0.0)
        local = float((np.abs(wi[ok]) / denom[ok]).min()) if ok.any() else inf
        tau_chg = _min(comm, local)
    # Exact minimiser along d = g restricted to S.
    d = np.ascontiguousarray(g[support])
    Ad = shard.product(support, d)
    dd = comm.total(float(d @ d))
    curv = float(Ad @ Ad) + ridge * dd
    dmax = _max(comm, float(np.abs(d).max()) if d.size else 0.0)
    stationary = dmax <= _constants.STATIONARY * mx
    tau_star = dd / curv if (not stationary and dd > 0.0 and curv > 0.0) else 0.0
    if 0.0 < tau_star < tau_chg:
        w[support] -= tau_star * d
        r -= tau_star * Ad
        return _value(shard, r, w), tau_star, 0, False, support

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
            cr = r - tau * Ad + shard.product(didx, dval)
        else:
            cr = shard.product(cidx, cx) - b
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
    shard: Any, k: int, start: np.ndarray, max_iter: int, tol: float, on_iter: Any = None
) -> ShardedRun:
    """stages/iht.py: plain_iht over shards: IHT on all columns from H_k(start)."""
    comm, prob = shard.comm, shard.prob
    support = global_topk(comm, start, k)
    w = np.zeros(prob.p)
    w[support] = start[support]
    r = shard.product(support, w[support]) - prob.b
    run = ShardedRun(support, w, r, _value(shard, r, w))
    run.history.append(run.f)
    g = np.empty(prob.p)
    for it in range(1, max_iter + 1):
        prob.kernels.gradient(prob.A, run.r, run.w, prob.w_bar, prob.ridge, g)
        f_new, tau, _, changed, run.support = sharded_step(
            shard, k, g, run.w, run.r, run.support, run.f
        )
        run.n_iter = it
        run.history.append(f_new)
        f_old, run.f = run.f, f_new
        run.converged = abs(f_old - f_new) <= tol * max(abs(f_old), abs(f_new), 1.0)
        stop = bool(on_iter(it, f_old, f_new, tau, changed)) if on_iter is not None else False
        if run.converged or stop:
            break
    return run
