"""IHT with CHITA's line search, on all columns or on CHITA's active set (docs/design.md,
section 2), and the pipeline stage that runs it.

Both drivers call the backend's ``gradient`` / ``support_rmatvec`` kernels on the columns held
here and take the rest from an :class:`IHTColumns`: the top-k, the CHITA step (the backend's
``chita_step``; the active-set driver passes the active columns as ``cols``, so A is never
copied), sums and the Lipschitz constant. chita_core.distributed's ``ShardIHTColumns`` offers
them over column shards, so the same drivers run on every rank. Objectives are always the full
objective (ridge term over all p weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._point import Point
from .nspace import largest

__all__ = ["IHT", "IHTColumns", "IHTRun", "active_set_iht", "plain_iht"]

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


class IHTColumns:
    """The operations of the IHT drivers beyond the kernels, for one process: ``prob`` is the
    problem points are made on, ``local`` the one whose kernels read the columns held here (the
    same problem). chita_core.distributed's ``ShardIHTColumns`` implements them over column
    shards (global selections, sums over the ranks, the sharded step)."""

    def __init__(self, prob: Any) -> None:
        self.prob = self.local = prob

    def largest(self, v: Any, k: int) -> Any:
        """Sorted indices of the k largest |v| (ties to the lower index)."""
        return largest(self.prob, v, k)

    def count(self, m: int) -> int:
        """The total of a count of the columns held here."""
        return m

    def total(self, x: float) -> float:
        """The total of a sum over the columns held here."""
        return x

    def lipschitz(self) -> float:
        return self.prob.lipschitz

    def step(
        self, k: int, g: Any, w: Any, r: Any, support: Any, f: float, w_bar: Any, cols: Any = None
    ) -> tuple[float, float, bool, Any]:
        """One CHITA step (the backend's ``chita_step``) on all columns or on ``cols`` (then g,
        w, support and ``w_bar`` are the subproblem's): updates w and r in place; returns
        (f_new, tau, support_changed, the new support)."""
        prob = self.prob
        extra = () if cols is None else (cols,)
        f_new, tau, _, changed = prob.kernels.chita_step(
            prob.A, prob.b, w_bar, prob.ridge, g, w, r, support, f, *extra
        )
        return f_new, tau, changed, support


def plain_iht(
    ops: IHTColumns, k: int, start: Any, max_iter: int, tol: float, on_iter: OnIter
) -> IHTRun:
    """IHT on all columns from H_k(start)."""
    local = ops.local
    support = ops.largest(start, k)
    first = Point.at(ops.prob, support, start[support])
    run = IHTRun(first.support, first.w, first.r, first.f)
    run.history.append(run.f)
    g = local.xp.empty(local.p)
    for it in range(1, max_iter + 1):
        local.kernels.gradient(local.A, run.r, run.w, local.w_bar, local.ridge, g)
        f_new, tau, changed, run.support = ops.step(
            k, g, run.w, run.r, run.support, run.f, local.w_bar
        )
        if run.record(it, f_new, tau, changed, tol, on_iter):
            break
    return run


def active_set_iht(
    ops: IHTColumns,
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
    bounds the IHT iterations over all rounds. Over column shards each rank holds its own
    active columns (possibly none; the global active set in rank order).
    """
    prob, local = ops.prob, ops.local
    A, w_bar, ridge, kernels, xp = local.A, local.w_bar, local.ridge, local.kernels, local.xp
    size = min(ops.count(local.p), max(k, (3 * k) // 2))
    L = ops.lipschitz()
    # 1/L gradient step from the (dense) start.
    r0 = prob.residual(xp.arange(local.p, dtype=np.int64), start)
    g = xp.empty(local.p)
    kernels.gradient(A, r0, start, w_bar, ridge, g)
    # L == 0 only when A and ridge are zero: then g is zero too and the step is the start.
    active = ops.largest(start - g / L if L > 0 else start, size)

    # IHT starts from H_k(start) restricted to the active set.
    support = active[ops.largest(xp.ascontiguousarray(start[active]), k)]
    first = Point.at(prob, support, start[support])
    run = IHTRun(first.support.copy(), first.w, first.r, first.f)
    run.history.append(run.f)
    it = 0
    while True:
        # IHT on the active columns. The step works with the subproblem's objective, which
        # lacks the constant 0.5 ridge ||w_bar off the active set||^2.
        wb_act = xp.ascontiguousarray(w_bar[active])
        off = 0.5 * ridge * (prob.wbar_sq - ops.total(float(wb_act @ wb_act)))
        w_loc = xp.ascontiguousarray(run.w[active])
        sub = xp.searchsorted(active, run.support).astype(np.int64)
        g_loc = xp.zeros(active.size)
        while it < max_iter:
            it += 1
            if active.size:
                kernels.support_rmatvec(A, active, run.r, g_loc)
            if ridge:
                g_loc += ridge * (w_loc - wb_act)
            f_loc, tau, changed, sub = ops.step(
                k, g_loc, w_loc, run.r, sub, run.f - off, wb_act, active
            )
            if run.record(it, f_loc + off, tau, changed, tol, on_iter):
                break
        run.w[:] = 0.0
        run.w[active] = w_loc
        run.support = active[sub]
        if run.stopped or it >= max_iter or run.expansions >= max_expansions or not L > 0:
            return run

        # Expansion search over all columns.
        kernels.gradient(A, run.r, run.w, w_bar, ridge, g)
        best = None
        for t in range(_EXPANSION_STEPS):
            v = run.w - (2.0**t / (2.0 * L)) * g
            cand = ops.largest(v, k)
            point = Point.at(prob, cand, v[cand])
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
        driver = active_set_iht if self.active_set else plain_iht
        run = driver(ctx.iht_columns(prob), ctx.k, ctx.start, self.max_iter, self.tol,
                     ctx.on_iter)  # fmt: skip
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
