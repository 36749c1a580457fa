"""IHT with CHITA's line search, on all columns or on CHITA's active set (docs/design.md,
section 2), and the pipeline stage that runs it.

Both drivers call the backend's ``gradient`` / ``support_rmatvec`` and ``chita_step`` kernels;
the active-set driver passes the active columns to ``chita_step`` as ``cols``, so A is never
copied. Objectives are always the full objective (ridge term over all p weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._point import Point

__all__ = ["IHT", "IHTRun", "active_set_iht", "plain_iht"]

#: on_iter(iteration, f_old, f_new, tau, support_changed) -> True to stop.
OnIter = Callable[[int, float, float, float, bool], bool]

# Expansion search: full-gradient steps tau = 2^t / (2 L), t = 0 .. _EXPANSION_STEPS - 1, and
# at most _MAX_EXPANSIONS rounds of them.
_EXPANSION_STEPS = 10
_MAX_EXPANSIONS = 10


@dataclass
class IHTRun:
    support: Any  # [k] sorted global indices
    w: Any  # [p]
    r: Any  # [n] A w - b
    f: float
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    stopped: bool = False  # the callback asked to stop
    expansions: int = 0

    def record(
        self, it: int, f_new: float, tau: float, changed: bool, tol: float, on_iter: OnIter
    ) -> bool:
        """Books iteration ``it``; True when the loop should end (callback stop or converged)."""
        self.n_iter = it
        self.history.append(f_new)
        self.converged = _converged(self.f, f_new, tol)
        f_old, self.f = self.f, f_new
        if on_iter(it, f_old, f_new, tau, bool(changed)):
            self.stopped = True
        return self.stopped or self.converged

    def exact(self, prob: Any) -> Point:
        """The final point with r and f recomputed from A (one support mat-vec): the iterations
        carry r by updates, whose rounding can exceed f itself when f << ||b||^2."""
        return Point.at(prob, self.support.copy(), self.w[self.support])

    def carried(self) -> Point:
        """The final point as the iterations carried it (no pass over A)."""
        return Point(self.support.copy(), self.w.copy(), self.r.copy(), self.f)


def _converged(f_old: float, f_new: float, tol: float) -> bool:
    return abs(f_old - f_new) <= tol * max(abs(f_old), abs(f_new), 1.0)


def plain_iht(prob: Any, k: int, start: Any, max_iter: int, tol: float, on_iter: OnIter) -> IHTRun:
    """IHT on all columns from H_k(start)."""
    xp, kernels = prob.xp, prob.kernels
    support = xp.empty(k, dtype=np.int64)
    kernels.topk(start, k, support)
    first = Point.at(prob, support, start[support])
    run = IHTRun(first.support, first.w, first.r, first.f)
    run.history.append(run.f)
    g = xp.empty(prob.p)
    for it in range(1, max_iter + 1):
        kernels.gradient(prob.A, run.r, run.w, prob.w_bar, prob.ridge, g)
        f_new, tau, _, changed = kernels.chita_step(
            prob.A, prob.b, prob.w_bar, prob.ridge, g, run.w, run.r, run.support, run.f
        )
        if run.record(it, f_new, tau, changed, tol, on_iter):
            break
    return run


def active_set_iht(
    prob: Any,
    k: int,
    start: Any,
    max_iter: int,
    tol: float,
    on_iter: OnIter,
    *,
    max_expansions: int = _MAX_EXPANSIONS,
) -> IHTRun:
    """CHITA's active-set IHT.

    The active set is the floor(1.5 k) largest entries of the 1/L gradient step from ``start``;
    IHT runs on those columns only (each iteration reads |active|/p of A in F order). Then an
    expansion search tries full-gradient steps H_k(w - tau g) with tau = 2^t / (2 L), t = 0..9;
    the best one that lowers f joins the active set, and IHT resumes from it. ``max_iter``
    bounds the IHT iterations over all rounds.
    """
    A, b, w_bar, ridge, kernels = prob.A, prob.b, prob.w_bar, prob.ridge, prob.kernels
    xp = prob.xp
    p = prob.p
    size = min(p, max(k, (3 * k) // 2))
    L = prob.lipschitz
    # 1/L gradient step from the (dense) start.
    every = xp.arange(p, dtype=np.int64)
    r0 = prob.residual(every, start)
    g = xp.empty(p)
    kernels.gradient(A, r0, start, w_bar, ridge, g)
    active = xp.empty(size, dtype=np.int64)
    # L == 0 only when A and ridge are zero: then g is zero too and the step is the start.
    kernels.topk(start - g / L if L > 0 else start, size, active)

    # IHT starts from H_k(start) restricted to the active set.
    local = xp.empty(k, dtype=np.int64)
    kernels.topk(xp.ascontiguousarray(start[active]), k, local)
    support = active[local]
    first = Point.at(prob, support, start[support])
    run = IHTRun(first.support.copy(), first.w, first.r, first.f)
    run.history.append(run.f)
    it = 0
    while True:
        # IHT on the active columns. chita_step works with the local objective, which lacks
        # the constant 0.5 ridge ||w_bar off the active set||^2.
        wb_act = xp.ascontiguousarray(w_bar[active])
        off = 0.5 * ridge * (prob.wbar_sq - float(wb_act @ wb_act))
        w_loc = xp.ascontiguousarray(run.w[active])
        local = xp.searchsorted(active, run.support).astype(np.int64)
        g_loc = xp.empty(active.size)
        while it < max_iter:
            it += 1
            kernels.support_rmatvec(A, active, run.r, g_loc)
            if ridge:
                g_loc += ridge * (w_loc - wb_act)
            f_loc, tau, _, changed = kernels.chita_step(
                A, b, wb_act, ridge, g_loc, w_loc, run.r, local, run.f - off, active
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
        cand = xp.empty(k, dtype=np.int64)
        for t in range(_EXPANSION_STEPS):
            v = run.w - (2.0**t / (2.0 * L)) * g
            kernels.topk(v, k, cand)
            point = Point.at(prob, cand.copy(), v[cand])
            if point.f < (run.f if best is None else best.f):
                best = point
        if best is None:
            return run
        run.expansions += 1
        run.support, run.w, run.r, run.f = best.support, best.w, best.r, best.f
        run.history.append(run.f)
        active = xp.unique(xp.concatenate([active, run.support])).astype(np.int64)


@dataclass
class IHT:
    """Stage: IHT with CHITA's line search from the start vector (not from a refit point, a
    stationary point on its support where IHT has little room), then, with ``refine``, the exact
    refit on the support it reaches. Offers both points; records the iteration history."""

    max_iter: int
    tol: float
    active_set: bool = True
    refine: bool = True
    name: str = "iht"

    def run(self, ctx: Any) -> None:
        prob = ctx.prob
        plain, active = ctx.iht_drivers
        driver = active if self.active_set else plain
        run = driver(prob, ctx.k, ctx.start, self.max_iter, self.tol, ctx.on_iter)
        ctx.history, ctx.n_iter = list(run.history), run.n_iter
        ctx.converged, ctx.stopped = run.converged, run.stopped
        label = "active-set iht" if self.active_set else "iht"
        # Among exact points (refine) its f is recomputed from A; alone it is the iterate.
        point = run.exact(prob) if self.refine else run.carried()
        if self.refine and not run.stopped:
            fit = ctx.point(run.support.copy())
            if fit.f < point.f:
                point = fit
            if ctx.best is None or fit.f < ctx.best.f:  # IHT found its own basin
                ctx.iht_point = fit
        ctx.offer(label + (" + refit" if self.refine else ""), point, record=self.max_iter > 0)
