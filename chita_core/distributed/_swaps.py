"""Swap search's operations over column shards (docs/design.md, sections 5 and 12.1).

``stages/swaps.py: swap_search`` runs unchanged on every rank with :class:`ShardColumns`: each
rank screens its own columns (its slices of the gradient, the pool and the support), the
screens' selections are global (``_topk.py``: the k largest, or the k smallest leaving costs,
ties to the lower global index), and a round's candidate columns (at most 2 x 128) are gathered
on every rank in global order, so that every rank holds the same n x c matrices and the same
n x n K^-1 and applies the same swaps to them. A rank then updates the entries of its own
columns (support, w); residuals and objectives are the shard's (sharded mat-vecs, rank-order
sums), refits its sharded refit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..stages.nspace import scoring_ridge, shifted_inverse
from ..stages.swaps import SwapColumns
from ._topk import global_smallest, global_topk

__all__ = ["ShardColumns"]


class ShardColumns(SwapColumns):
    """:class:`SwapColumns` over column shards: ``prob`` is the rank's ``Shard`` (points with
    the global r and f), ``local`` its block of the global problem (``Problem``: the rank's
    columns, slices of w_bar and h, the kernels). Counts and sums are over the ranks, the
    selections global; a round's candidates are local indices where the rank holds them and
    -1 elsewhere."""

    def __init__(self, shard: Any) -> None:
        self.prob, self.local, self.comm = shard, shard.prob, shard.comm

    def count(self, m: int) -> int:
        return self.prob.count(m)

    def total(self, x: float) -> float:
        return self.comm.total(x)

    def scoring_ridge(self) -> float:
        """nspace.scoring_ridge with the global mean curvature: a rank-order sum of the ranks'
        sums of h, so the single process's value up to the rounding of that sum."""
        h = self.local.h
        return scoring_ridge(self.local, self.comm.total(float(h.sum())) / self.comm.p)

    def largest(self, v: Any, k: int) -> Any:
        return global_topk(self.comm, v, k)

    def smallest(self, v: Any, k: int) -> Any:
        return global_smallest(self.comm, v, k)

    def same_support(self, a: Any, b: Any) -> bool:
        return self.prob.same_support(a, b)

    def kinv(self, S: Any, lam: float) -> Any:
        """(lam I + A_S A_S^T)^{-1}, from :meth:`gram`."""
        return shifted_inverse(self.gram(S), lam)

    def gram(self, S: Any) -> Any:
        """A_S A_S^T over every rank's S. With |S| <= n the columns are gathered (at most n^2
        numbers, as the refit does) and their Gram formed as one process forms it, the same
        bits: with k < n and a scoring shift (ridge ~ 0) K^-1 is nearly singular and the
        scores are as sensitive to the Gram's rounding as the decisions to them. Beyond, the
        ranks' Grams reduced in rank order (the single process's up to rounding)."""
        local = self.local
        n = local.n
        K = np.zeros((n, n))
        m = self.count(S.size)
        if m <= n:
            local.kernels.support_gram(self.prob.gathered(S), np.arange(m, dtype=np.int64), K)
        else:
            if S.size:
                local.kernels.support_gram(local.A, S, K)
            K = self.comm.total(K)
        return K

    def candidates(self, entering: Any, leaving: Any) -> tuple[Any, Any, Any, int]:
        """Every rank's entering columns in rank order (the global order), then every rank's
        leaving ones, with their w_bar: one gather of the counts, one of the columns (padded
        to the most any rank holds)."""
        local, comm = self.local, self.comm
        mine = np.concatenate([entering, leaving])
        block = np.vstack([local.kernels.gather_columns(local.A, mine), local.w_bar[mine]])
        counts = comm.gather(np.asarray([entering.size, leaving.size], dtype=np.int64))
        width = int(counts.sum(axis=1).max())
        pad = np.zeros((block.shape[0], width))
        pad[:, : mine.size] = block
        parts = comm.gather(pad)
        ins = [parts[r][:, : counts[r, 0]] for r in range(comm.size)]
        outs = [parts[r][:, counts[r, 0] : counts[r].sum()] for r in range(comm.size)]
        both = np.concatenate(ins + outs, axis=1)
        # Global position -> local index here, -1 where another rank holds the column.
        before = counts[: comm.rank].sum(axis=0)
        n_in = int(counts[:, 0].sum())
        cols = np.full(both.shape[1], -1, dtype=np.int64)
        cols[before[0] : before[0] + entering.size] = entering
        cols[n_in + before[1] : n_in + before[1] + leaving.size] = leaving
        V = np.asfortranarray(both[:-1])
        return cols, V, np.ascontiguousarray(both[-1]), n_in

    def owned(self, cols: Any, positions: list[int]) -> tuple[Any, Any]:
        pos = np.asarray(positions, dtype=np.int64)
        pos = pos[cols[pos] >= 0]
        return cols[pos], pos

    def check_round(self, s0: float, entered: list[int], left: list[int]) -> None:
        """That every rank applied the same swaps and reached the same s0 (one gather of the
        length, one of the values): the replicated algebra must give the same bits on every
        rank (the same BLAS), else ShardError on every rank instead of a hang."""
        self.comm.same(np.asarray([s0, *entered, *left]), "swap search's round (s0, swaps)")
