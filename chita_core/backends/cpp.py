"""The ``cpp`` backend: the compiled ``_core`` kernels (C++/OpenMP) for every pass over A, and
the host BLAS ops (``backends/host.py``) for the dense algebra on gathered columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from .._core import (
    chita_step,
    column_sqnorms,
    gradient,
    num_threads,
    support_matvec,
    support_rmatvec,
    topk,
)
from .host import gather_columns, support_gram


def swap_scores(
    G: np.ndarray,
    q: np.ndarray,
    s0: float,
    wv: np.ndarray,
    jn: np.ndarray,
    io: np.ndarray,
    lam: float,
) -> np.ndarray:
    """[len(io), len(jn)] change of f per swap: the C++ kernel (one fused loop over the pairs;
    the maths is host.swap_scores')."""
    out = np.empty((io.size, jn.size))
    _core.swap_scores(G, q, float(s0), wv, _index(jn), _index(io), float(lam), out.reshape(-1))
    return out


def pool_eliminate(G: np.ndarray, x: np.ndarray, count: int) -> np.ndarray:
    """Pool indices of ``count`` greedy removals, in order: the C++ kernel (the maths is
    host.pool_eliminate'; G and x are left unchanged). A stack G [batch, c, c], x [batch, c]
    gives [batch, count], the pools in parallel."""
    G = np.array(G, dtype=np.float64, order="C")
    x = np.array(x, dtype=np.float64, order="C")
    order = np.empty((*x.shape[:-1], int(count)), dtype=np.int64)
    _core.pool_eliminate(G, x, int(count), order)
    return order


def _index(x: Any) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)


__all__ = [
    "chita_step",
    "column_sqnorms",
    "gather_columns",
    "gradient",
    "num_threads",
    "pool_eliminate",
    "support_gram",
    "support_matvec",
    "support_rmatvec",
    "swap_scores",
    "topk",
]
