"""Greedy OBS's and the OBS starts' operations over column shards (docs/design.md, sections 4
and 12.1).

``stages/greedy.py: greedy_screen`` and ``greedy_obs_support`` run unchanged on every rank with
:class:`ShardGreedyColumns`: the screen's selections are global top-k's and its sizes global
counts, so each rank keeps its own superset columns; each rank gathers its superset columns into
its own workspace (n x m_r) and keeps x and d of them; the superset's K^-1 comes from the ranks'
Grams reduced in rank order (gathered columns when m <= n, as swap search does) and c from a
sharded mat-vec, so every rank holds the same n x n K^-1 and e. A block's pool is the global
smallest saliencies (ties to the lower global index) and its columns, their w_bar (and their
columns of T = K^-1 A_S once T replaces K^-1) are gathered on every rank in global order: every
rank then chooses the same removals within the pool (the backend's pool_eliminate on the same
bits) and applies the same n x n updates, and each updates the x, d (and T) of its own columns.

The OBS starts (``stages/starts.py``) take the same operations: the Grams of all columns (and of
those each multistep step removes) reduced, c a sharded mat-vec, the saliencies local and their
selections global. The enumeration of tiny problems (p <= 32) gathers every column (``whole``)
and runs the single-process enumeration on every rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._problem import Problem
from ..stages.greedy import GreedyColumns
from ._swaps import ShardColumns

__all__ = ["ShardGreedyColumns"]


class ShardGreedyColumns(ShardColumns, GreedyColumns):
    """:class:`GreedyColumns` over column shards (swap search's sharded counts, scoring ridge,
    selections and K^-1 from :class:`ShardColumns`): ``prob`` is the rank's ``Shard``,
    ``local`` its block. Superset and workspace positions are local; a pool is gathered."""

    def whole(self, max_p: int) -> tuple[Any, Any]:
        """Every rank's columns and w_bar gathered (at most ``max_p`` x n numbers) as one
        single-process problem, where the global p is at most ``max_p`` (else None), and the
        map from its column indices to this rank's."""
        comm, local = self.comm, self.local
        lo, hi = comm.lo, comm.lo + local.p

        def mine(support: Any) -> Any:
            return (support[(support >= lo) & (support < hi)] - lo).astype(np.int64)

        if comm.p > max_p:
            return None, mine
        every = np.arange(local.p, dtype=np.int64)
        block = np.vstack([local.kernels.gather_columns(local.A, every), local.w_bar[None, :]])
        both = np.concatenate(comm.gather_ragged(block), axis=1)
        X = np.asfortranarray(both[:-1])
        whole = Problem(X, local.b, ridge=local.ridge, w_bar=both[-1], check_finite=False)
        return whole, mine

    def screen_kinv(self, S: Any, lam: float, known: Any) -> Any:
        """K^-1 of every rank's superset columns S (``ShardColumns.kinv``). ``known`` is not
        read: a point over shards keeps no Gram, so no stage passes one."""
        return self.kinv(S, lam)

    def minus_support(self, S: Any) -> Any:
        """b - A_S w_bar_S over every rank's S (one reduction of n)."""
        local = self.local
        return local.b - self.prob.product(S, np.ascontiguousarray(local.w_bar[S]))

    def pool(self, AS: Any, S: Any, C: Any, T: Any) -> tuple[Any, Any, Any, Any]:
        """Every rank's pool columns in global order (rank order, each rank's sorted), with
        their w_bar and their columns of T: one gather of the counts, one of
        (2n + 1) x c_max numbers (n + 1 before T is formed; c_max the most any rank holds)."""
        n, comm = self.local.n, self.comm
        parts = [np.asarray(AS[:, C], dtype=np.float64), self.local.w_bar[S[C]][None, :]]
        if T is not None:
            parts.append(T[:, C])
        gathered = comm.gather_ragged(np.vstack(parts))
        both = np.concatenate(gathered, axis=1)
        before = sum(part.shape[1] for part in gathered[: comm.rank])
        place = np.full(both.shape[1], -1, dtype=np.int64)
        place[before : before + C.size] = C
        TC = None if T is None else np.asfortranarray(both[n + 1 :])
        return np.asfortranarray(both[:n]), np.ascontiguousarray(both[n]), TC, place

    def check(self, x: Any, name: str) -> None:
        """That every rank reached the same ``x`` (one gather of its length, one of it): the
        replicated algebra must give the same bits on every rank (the same BLAS), else
        ShardError on every rank."""
        self.comm.same(np.asarray(x), name)
