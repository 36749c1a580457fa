"""SparseGPT (Frantar and Alistarh, 2023), written from the paper: the baseline the layer-wise
solver starts from and is measured against (docs/design.md, section 14.3).

One left-to-right sweep over the inputs with the upper Cholesky factor U of H^-1
(H^-1 = U^T U): pruning or keeping column j of every row, the rows' error on it,
(w_j - q_j) / U_jj, is spread over the columns right of j through row j of U (the OBS update
restricted to the columns not yet visited). Updates are lazy: within a block of ``block``
columns they run column by column, and the block's accumulated errors reach the columns after it
in one GEMM. The mask is chosen per block (adaptive mask selection) from the OBS saliency
w^2 / U_jj^2 of the block's current weights. For N:M, at each group of M columns the M - N of
least saliency are pruned in every row.

The paper picks the block's mask by one threshold over all rows; here, so that every row
meets its own budget exactly (the "unstructured" pattern of ``prune_layer``), each row prunes
its share of the block: the row's cumulative budget up to the block's end, round-half-up, minus
what it pruned before. With ``budget="layer"`` the paper's threshold over the whole block is
used, so the layer's total is met.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from ._problem import LayerProblem, Pattern, round_half_up

__all__ = ["sparsegpt"]


def _inverse_factor(Hd: np.ndarray) -> np.ndarray:
    """Upper U with U^T U = Hd^-1."""
    d = Hd.shape[0]
    Hinv = cho_solve(cho_factor(Hd, lower=True), np.eye(d))
    Hinv = 0.5 * (Hinv + Hinv.T)
    return np.linalg.cholesky(Hinv).T


def sparsegpt(prob: LayerProblem, block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT's weights and mask for ``prob`` (damped H, its pattern)."""
    pat: Pattern = prob.pattern
    rows, d = prob.rows, prob.d
    W = prob.W_bar.copy()
    U = _inverse_factor(prob.Hd)
    diag = np.diagonal(U).copy()
    mask = np.ones((rows, d), dtype=bool)
    pruned_before = np.zeros(rows, dtype=np.int64)
    s = 1.0 - pat.keep / d if pat.kind == "row" else 1.0 - pat.keep_total / (rows * d)
    if pat.kind == "nm":
        block = max(pat.m, block - block % pat.m)
    for i1 in range(0, d, block):
        i2 = min(d, i1 + block)
        W1 = W[:, i1:i2].copy()
        E = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        if pat.kind != "nm":
            sal = W1 * W1 / diag[None, i1:i2] ** 2
            m1 = np.ones_like(W1, dtype=bool)
            if pat.kind == "row":
                cum = round_half_up(s * i2)
                need = cum - pruned_before  # per row; the same for every row
                for r_need in np.unique(need):
                    sel = np.flatnonzero(need == r_need)
                    if r_need > 0:
                        low = np.argpartition(sal[sel], r_need - 1, axis=1)[:, :r_need]
                        m1[sel[:, None], low] = False
                pruned_before += (~m1).sum(axis=1)
            else:
                total = round_half_up(s * rows * i2) - int((~mask[:, :i1]).sum())
                if total > 0:
                    flat = np.argpartition(sal.reshape(-1), total - 1)[:total]
                    m1.reshape(-1)[flat] = False
            mask[:, i1:i2] = m1
        for j in range(i2 - i1):
            col = i1 + j
            if pat.kind == "nm" and col % pat.m == 0:
                g = W1[:, j : j + pat.m] ** 2 / diag[None, col : col + pat.m] ** 2
                low = np.argpartition(g, pat.m - pat.n - 1, axis=1)[:, : pat.m - pat.n]
                mg = np.ones_like(g, dtype=bool)
                if pat.m > pat.n:
                    mg[np.arange(rows)[:, None], low] = False
                mask[:, col : col + pat.m] = mg
            w = W1[:, j]
            q = np.where(mask[:, col], w, 0.0)
            err = (w - q) / U1[j, j]
            W1[:, j:] -= err[:, None] * U1[j, j:][None, :]
            W1[:, j] = q
            E[:, j] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= E @ U[i1:i2, i2:]
    W[~mask] = 0.0
    return W, mask
