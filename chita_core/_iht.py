"""IHT with CHITA's line search: on all columns, or on CHITA's active set (DESIGN.md section 2).

Both drivers call the backend's ``gradient`` / ``support_rmatvec`` and ``chita_step`` kernels;
the active-set driver passes the active columns to ``chita_step`` as ``cols``, so A is never
copied. Objectives are always the full objective (ridge term over all p weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._interop import array_module

__all__ = ["IHTRun", "active_set_iht", "lipschitz", "objective_value", "plain_iht", "residual"]

#: on_iter(iteration, f_old, f_new, tau, support_changed) -> True to stop.
OnIter = Callable[[int, float, float, float, bool], bool]


@dataclass
class IHTRun:
    support: np.ndarray  # [k] sorted global indices
    w: np.ndarray  # [p]
    r: np.ndarray  # [n] A w - b
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

    def exact(self, kernels: Any, prob: Any) -> None:
        """Recomputes r and f at the final w from A (one support mat-vec): the iterations carry r
        by updates, whose rounding can exceed f itself when f << ||b||^2. (``history`` stays
        the trace the callback saw.)"""
        self.r = residual(kernels, prob, self.support, self.w[self.support])
        self.f = objective_value(self.r, self.w, prob.w_bar, prob.ridge)


def objective_value(r: np.ndarray, w: np.ndarray, w_bar: np.ndarray, ridge: float) -> float:
    """0.5 ||r||^2 + 0.5 ridge ||w - w_bar||^2 in float64, from the residual r = A w - b."""
    f = 0.5 * float(r @ r)
    if ridge:
        d = w - w_bar
        f += 0.5 * ridge * float(d @ d)
    return f


def residual(kernels: Any, prob: Any, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A[:, idx] values - b (only the idx columns of A are read in F order)."""
    xp = array_module(prob.b)
    r = xp.zeros(prob.A.shape[0])
    if idx.size:
        kernels.support_matvec(prob.A, idx, xp.ascontiguousarray(values), r)
    r -= prob.b
    return r


def _converged(f_old: float, f_new: float, tol: float) -> bool:
    return abs(f_old - f_new) <= tol * max(abs(f_old), abs(f_new), 1.0)


def scaled_norm(xp: Any, v: Any) -> float:
    """||v||_2 without overflow or underflow of the squares (entries from 1e-300 to 1e300)."""
    m = float(xp.abs(v).max()) if v.size else 0.0
    if m == 0.0 or not np.isfinite(m):
        return m
    u = v / m
    return m * float(xp.sqrt(u @ u))


def lipschitz(kernels: Any, prob: Any, iters: int = 4, seed: int = 0) -> float:
    """1.05 (sigma_max(A)^2 + ridge) from a few power iterations on A^T A (two passes each)."""
    A = prob.A
    n, p = A.shape
    xp = array_module(prob.b)
    every = xp.arange(p, dtype=np.int64)
    v = xp.asarray(np.random.default_rng(seed).standard_normal(p))
    v /= scaled_norm(xp, v)
    Av = xp.empty(n)
    zeros = xp.zeros(p)
    sigma2 = 0.0
    for _ in range(iters):
        kernels.support_matvec(A, every, v, Av)
        kernels.gradient(A, Av, zeros, zeros, 0.0, v)  # v = A^T A v
        sigma2 = scaled_norm(xp, v)
        if sigma2 == 0.0:
            break
        v /= sigma2
    return 1.05 * (sigma2 + prob.ridge)


def plain_iht(
    kernels: Any, prob: Any, k: int, start: np.ndarray, max_iter: int, tol: float, on_iter: OnIter
) -> IHTRun:
    """IHT on all columns from H_k(start)."""
    p = prob.A.shape[1]
    xp = array_module(prob.b)
    support = xp.empty(k, dtype=np.int64)
    kernels.topk(start, k, support)
    w = xp.zeros(p)
    w[support] = start[support]
    r = residual(kernels, prob, support, w[support])
    run = IHTRun(support, w, r, objective_value(r, w, prob.w_bar, prob.ridge))
    run.history.append(run.f)
    g = xp.empty(p)
    for it in range(1, max_iter + 1):
        kernels.gradient(prob.A, run.r, run.w, prob.w_bar, prob.ridge, g)
        f_new, tau, _, changed = kernels.chita_step(
            prob.A, prob.b, prob.w_bar, prob.ridge, g, run.w, run.r, run.support, run.f
        )
        if run.record(it, f_new, tau, changed, tol, on_iter):
            break
    return run


def active_set_iht(
    kernels: Any,
    prob: Any,
    k: int,
    start: np.ndarray,
    max_iter: int,
    tol: float,
    on_iter: OnIter,
    *,
    max_expansions: int = 10,
) -> IHTRun:
    """CHITA's active-set IHT.

    The active set is the floor(1.5 k) largest entries of the 1/L gradient step from ``start``;
    IHT runs on those columns only (each iteration reads |active|/p of A in F order). Then an
    expansion search tries full-gradient steps H_k(w - tau g) with tau = 2^t / (2 L), t = 0..9;
    the best one that lowers f joins the active set, and IHT resumes from it. ``max_iter``
    bounds the IHT iterations over all rounds.
    """
    A, b, w_bar, ridge = prob.A, prob.b, prob.w_bar, prob.ridge
    xp = array_module(b)
    p = A.shape[1]
    size = min(p, max(k, (3 * k) // 2))
    L = lipschitz(kernels, prob)
    # 1/L gradient step from the (dense) start.
    every = xp.arange(p, dtype=np.int64)
    r0 = residual(kernels, prob, every, start)
    g = xp.empty(p)
    kernels.gradient(A, r0, start, w_bar, ridge, g)
    active = xp.empty(size, dtype=np.int64)
    # L == 0 only when A and ridge are zero: then g is zero too and the step is the start.
    kernels.topk(start - g / L if L > 0 else start, size, active)

    # IHT starts from H_k(start) restricted to the active set.
    local = xp.empty(k, dtype=np.int64)
    kernels.topk(xp.ascontiguousarray(start[active]), k, local)
    w = xp.zeros(p)
    w[active[local]] = start[active[local]]
    support = active[local]
    r = residual(kernels, prob, support, w[support])
    run = IHTRun(support.copy(), w, r, objective_value(r, w, w_bar, ridge))
    run.history.append(run.f)
    it = 0
    while True:
        # IHT on the active columns. chita_step works with the local objective, which lacks
        # the constant 0.5 ridge ||w_bar off the active set||^2.
        wb_act = xp.ascontiguousarray(w_bar[active])
        off = 0.5 * ridge * (float(w_bar @ w_bar) - float(wb_act @ wb_act))
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
        for t in range(10):
            v = run.w - (2.0**t / (2.0 * L)) * g
            kernels.topk(v, k, cand)
            rc = residual(kernels, prob, cand, v[cand])
            wc = xp.zeros(p)
            wc[cand] = v[cand]
            fc = objective_value(rc, wc, w_bar, ridge)
            if fc < (run.f if best is None else best[3]):
                best = (cand.copy(), wc, rc, fc)
        if best is None:
            return run
        run.expansions += 1
        run.support, run.w, run.r, run.f = best
        run.history.append(run.f)
        active = xp.unique(xp.concatenate([active, run.support])).astype(np.int64)
