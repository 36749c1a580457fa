"""Start supports, each refit exactly (docs/design.md, section 4): magnitude, one-shot and
multistep OBS saliencies, and exact enumeration for tiny problems.

What the OBS starts and the enumeration do over all of A's columns at once (the Gram, the
selections, counts) goes through greedy OBS's :class:`GreedyColumns` (the context's
``greedy_columns``), so that chita_core.distributed runs them over column shards."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .greedy import GreedyColumns, _rmatvec
from .nspace import hinv_diag, shifted_inverse

__all__ = [
    "OBS",
    "Exhaustive",
    "Magnitude",
    "exhaustive_support",
    "obs_multistep_support",
    "obs_saliency",
]

# Exact enumeration of all supports for tiny problems: at most this many columns and supports.
EXHAUSTIVE_MAX_P = 32
EXHAUSTIVE_MAX_SUPPORTS = 200_000
_EXHAUSTIVE_BATCH = 20_000
_ROW_BLOCK = 8192
# Multistep OBS: prune in this many steps with refits in between.
MULTISTEP_STEPS = 4


@dataclass
class Magnitude:
    """Stage: the k largest |start| (magnitude pruning when start = w_bar), refit exactly. Its
    cost is the baseline the planner's budget is measured in (magnitude + backsolve)."""

    name: str = "magnitude"

    def run(self, ctx: Any) -> None:
        if ctx.seed is not None:
            ctx.offer("magnitude + refit", ctx.seed)
            return
        support = ctx.largest(ctx.start, ctx.k)
        ctx.offer("magnitude + refit", ctx.point(support, keep_inverse=True))


@dataclass
class OBS:
    """Stage: the k largest OBS saliencies w_q^2 / [H^-1]_qq (H = A^T A + ridge I through
    Woodbury, O(n^2 p)); ``multistep`` prunes in 4 OBS steps with refits in between (the
    one-shot support comes with it). Each support is refit exactly."""

    multistep: bool = False
    name: str = "obs"

    def run(self, ctx: Any) -> None:
        ops, k = ctx.greedy_columns(ctx.prob), ctx.k
        if self.multistep:
            multi, oneshot = obs_multistep_support(ops.local, k, ops=ops)
            candidates = [("obs", oneshot), ("obs_multistep", multi)]
        else:
            candidates = [("obs", ops.largest(obs_saliency(ops.local, ops=ops), k))]
        for label, support in candidates:
            ctx.offer(f"{label} + refit", ctx.point(support))


@dataclass
class Exhaustive:
    """Stage: the best support by enumeration, where p <= 32 and C(p, k) <= 2e5 (host only)."""

    name: str = "exhaustive"

    def run(self, ctx: Any) -> None:
        ops = ctx.greedy_columns(ctx.prob)
        whole, mine = ops.whole(EXHAUSTIVE_MAX_P)
        support = exhaustive_support(whole, ctx.k) if whole is not None else None
        if support is not None:
            ctx.offer("exhaustive + refit", ctx.point(mine(support)))


def obs_saliency(prob: Any, *, ops: Any = None) -> Any:
    """OBS saliency w_q^2 / [H^{-1}]_qq of every weight (H = A^T A + ridge I), O(n^2 p).

    w is the unconstrained minimiser of the objective (w_bar itself when b = A w_bar, the
    pruning case), obtained from the same n x n factor. ``ops``: the :class:`GreedyColumns`
    the n x n algebra over all columns goes through (over shards ``prob`` is the rank's block
    and the saliencies its slice)."""
    ops = GreedyColumns(prob) if ops is None else ops
    every = prob.xp.arange(prob.p, dtype=np.int64)
    lam = ops.scoring_ridge()
    Kinv = ops.kinv(every, lam)
    w = _rmatvec(prob, every, Kinv @ ops.minus_support(every)) + prob.w_bar
    return w * w / hinv_diag(prob, every, Kinv, lam)


def obs_multistep_support(
    prob: Any, k: int, steps: int = MULTISTEP_STEPS, *, ops: Any = None
) -> tuple[Any, Any]:
    """Prune to k weights in ``steps`` OBS steps, refitting on the kept support in between.

    Returns (multistep support, one-shot OBS support): the first step's saliencies are those
    of all p weights, so the one-shot support comes for free. ``ops`` as in
    :func:`obs_saliency` (over shards k and the sizes are global, the supports the rank's)."""
    ops = GreedyColumns(prob) if ops is None else ops
    xp = prob.xp
    lam = ops.scoring_ridge()
    support = xp.arange(prob.p, dtype=np.int64)
    p = size = ops.count(support.size)  # the support's size over all ranks
    oneshot = None
    gram = None  # A_S A_S^T of the current support, downdated as columns leave
    for step in range(1, steps + 1):
        target = p - ((p - k) * step) // steps
        if target >= size:
            continue
        if gram is None:
            gram = ops.gram(support)
        Kinv = shifted_inverse(gram, lam)
        x = _rmatvec(prob, support, Kinv @ ops.minus_support(support)) + prob.w_bar[support]
        saliency = x * x / hinv_diag(prob, support, Kinv, lam)
        if oneshot is None and size == p:
            oneshot = ops.largest(saliency, k)
        keep = ops.largest(saliency, target)
        dropped = xp.ones(support.size, dtype=bool)
        dropped[keep] = False
        removed, support = support[dropped], support[keep]
        # The next step's Gram: subtract the removed columns when they are the fewer.
        if step < steps and size - target < target:
            gram -= ops.gram(removed)
        else:
            gram = None
        size = target
    if oneshot is None:  # k == p: nothing to prune
        oneshot = support
    return support, oneshot


def exhaustive_support(prob: Any, k: int) -> Any:
    """The best support of size k by enumerating all of them, when p and C(p, k) are tiny.

    f*(S) = 0.5 ||b||^2 + 0.5 lam ||w_bar||^2 - 0.5 h_S^T G_S^{-1} h_S with G = A^T A + lam I
    (p x p, p <= 32) and h = A^T b + lam w_bar, so every support costs one k x k solve, done in
    batches. Returns None when the problem is too large to enumerate."""
    A, b, w_bar, lam = prob.A, prob.b, prob.w_bar, prob.ridge
    n, p = prob.n, prob.p
    if p > EXHAUSTIVE_MAX_P or math.comb(p, k) > EXHAUSTIVE_MAX_SUPPORTS:
        return None
    G = lam * np.eye(p)
    h = lam * w_bar.copy()
    for i0 in range(0, n, _ROW_BLOCK):  # row blocks: A is never copied whole
        Ab = np.asarray(A[i0 : i0 + _ROW_BLOCK], dtype=np.float64)
        G += Ab.T @ Ab
        h += Ab.T @ b[i0 : i0 + _ROW_BLOCK]
    best_q, best = -np.inf, None
    combos = itertools.combinations(range(p), k)
    while True:
        batch = np.array(list(itertools.islice(combos, _EXHAUSTIVE_BATCH)), dtype=np.int64)
        if batch.size == 0:
            break
        Gs = G[batch[:, :, None], batch[:, None, :]]
        hs = h[batch][..., None]
        # pinv: with lam == 0 and k > n the k x k blocks are singular (h_S is in their range),
        # and with duplicate columns they are singular up to a tiny lam.
        x = np.linalg.pinv(Gs, hermitian=True) @ hs
        q = np.einsum("nk,nk->n", hs[..., 0], x[..., 0])
        j = int(np.argmax(q))
        if q[j] > best_q:
            best_q, best = float(q[j]), batch[j]
    return best
