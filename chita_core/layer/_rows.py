"""Exact per-row stages for small layers (docs/design.md, section 14.5): every feasible mask
enumerated, and greedy OBS on all rows at once. Both only for the row-separable patterns
("row" budgets and N:M); the planner in ``prune_layer`` runs them where their cost is small.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ._problem import LayerProblem

__all__ = ["enumerate_masks", "greedy_obs_rows", "n_row_masks"]


def n_row_masks(prob: LayerProblem) -> int:
    """The number of feasible masks of one row (every row has the same set)."""
    pat = prob.pattern
    if pat.kind == "row":
        return math.comb(prob.d, pat.keep)
    if pat.kind == "nm":
        return math.comb(pat.m, pat.n) ** (prob.d // pat.m)
    return 0


def _row_masks(prob: LayerProblem):
    pat, d = prob.pattern, prob.d
    if pat.kind == "row":
        yield from itertools.combinations(range(d), pat.keep)
        return
    groups = [
        [tuple(g * pat.m + c for c in comb) for comb in itertools.combinations(range(pat.m), pat.n)]
        for g in range(d // pat.m)
    ]
    for parts in itertools.product(*groups):
        yield tuple(itertools.chain.from_iterable(parts))


def enumerate_masks(prob: LayerProblem) -> np.ndarray:
    """Each row's optimal mask among all feasible ones: for every mask K (shared by all rows),
    every row's damped error drop b_K^T Hd_KK^-1 b_K (b = Hd w_bar) at once; the largest drop
    wins (ties to the first mask enumerated)."""
    rows, d = prob.rows, prob.d
    HW = prob.HW
    best = np.full(rows, -np.inf)
    mask = np.zeros((rows, d), dtype=bool)
    for K in _row_masks(prob):
        idx = np.asarray(K, dtype=np.int64)
        if idx.size == 0:
            gain = np.zeros(rows)
        else:
            B = HW[:, idx]
            gain = np.einsum("ij,ij->i", B @ np.linalg.inv(prob.Hd[np.ix_(idx, idx)]), B)
        better = gain > best
        if better.any():
            best[better] = gain[better]
            mask[better] = False
            mask[np.ix_(np.flatnonzero(better), idx)] = True
    return mask


def greedy_obs_rows(prob: LayerProblem) -> np.ndarray:
    """Greedy OBS (backward elimination) in every row at once: remove the live weight of least
    saliency x_q^2 / [Hd_S^-1]_qq, move the others to the new optimum, with exact rank-1
    downdates of each row's inverse (rows x d x d: small layers only). For N:M only weights of
    groups that still hold more than N are candidates. Returns the mask."""
    pat = prob.pattern
    rows, d = prob.rows, prob.d
    Hinv = np.broadcast_to(np.linalg.inv(prob.Hd), (rows, d, d)).copy()
    X = prob.W_bar.copy()  # the optimum on the full support is w_bar itself
    live = np.ones((rows, d), dtype=bool)
    steps = d - pat.kept_per_row()
    r = np.arange(rows)
    for _ in range(steps):
        diag = np.diagonal(Hinv, axis1=1, axis2=2)
        sal = np.where(live, X * X / np.maximum(diag, 1e-300), np.inf)
        if pat.kind == "nm":
            full = live.reshape(rows, -1, pat.m).sum(axis=2) <= pat.n
            sal = np.where(np.repeat(full, pat.m, axis=1), np.inf, sal)
        q = np.argmin(sal, axis=1)
        col = Hinv[r, :, q]  # (rows, d)
        dq = col[r, q]
        X -= col * (X[r, q] / dq)[:, None]
        Hinv -= col[:, :, None] * (col / dq[:, None])[:, None, :]
        X[r, q] = 0.0
        live[r, q] = False
    return live
