"""The layer-wise ("tall") problem and its sparsity patterns (docs/design.md, section 14).

For a linear layer with weights ``W_bar`` (rows x d) and calibration inputs X (N x d), pruning
row i to the mask of kept inputs K_i minimises

    e_i(w) = (w - w_bar_i)^T H (w - w_bar_i),   H = X^T X / N,   w zero off K_i,

one quadratic per output row, all sharing H. :class:`LayerProblem` holds the validated
float64 ``W_bar``, the damped and normalised H, the pattern and each row's number of kept
weights; :class:`Pattern` projects any (rows, d) score matrix onto the feasible masks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LayerProblem", "Pattern", "parse_pattern", "round_half_up"]


def round_half_up(x: float) -> int:
    """round(x) with halves going up (Python's round goes to even)."""
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern of a (rows, d) weight matrix.

    ``kind`` is "row" (every row keeps ``keep`` weights), "layer" (the layer keeps
    ``keep_total`` weights, distributed freely over the rows) or "nm" (in every group of ``m``
    consecutive inputs of a row, ``n`` are kept)."""

    kind: str
    rows: int
    d: int
    keep: int = 0  # "row": kept weights per row
    keep_total: int = 0  # "layer": kept weights in the layer
    n: int = 0  # "nm"
    m: int = 0

    @property
    def name(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        return "unstructured" if self.kind == "row" else "unstructured (layer budget)"

    def kept_per_row(self) -> int | None:
        """The number of kept weights of every row, or None when rows differ ("layer")."""
        if self.kind == "row":
            return self.keep
        if self.kind == "nm":
            return self.d // self.m * self.n
        return None

    def project(self, scores: np.ndarray) -> np.ndarray:
        """The feasible mask (bool, True = kept) keeping the largest ``scores``: each row's top
        ``keep``, each group's top n, or the layer's top ``keep_total``. Ties go to the lower
        index, so the result is deterministic. Rows and groups go through the C++ kernel
        ``_core.row_top_mask`` (a selection per row, rows in parallel) where it is built; CuPy
        scores through its CUDA twin (one block per row), the mask then a CuPy array."""
        if type(scores).__module__.split(".")[0] == "cupy" and self.kind in ("row", "nm"):
            return self._project_cuda(scores)
        s = np.ascontiguousarray(scores, dtype=np.float64)
        core = _core_module()
        if core is not None and self.kind in ("row", "nm"):
            mask = np.empty((self.rows, self.d), dtype=bool)
            if self.kind == "row":
                core.row_top_mask(s, self.keep, 0, 0, mask)
            else:
                core.row_top_mask(s, -1, self.n, self.m, mask)
            return mask
        return self.project_numpy(s)

    def _project_cuda(self, scores: Any) -> Any:
        import cupy as cp

        from ..backends import cuda_kernels

        s = cp.ascontiguousarray(scores, dtype=cp.float64)
        mask = cp.empty((self.rows, self.d), dtype=cp.bool_)
        if self.kind == "row":
            cuda_kernels.row_top_mask(s, self.keep, 0, 0, mask)
        else:
            cuda_kernels.row_top_mask(s, -1, self.n, self.m, mask)
        return mask

    def project_numpy(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`project` in NumPy: the reference of the C++ kernel ``_core.row_top_mask``,
        and the layer-budget selection."""
        rows, d = self.rows, self.d
        mask = np.zeros((rows, d), dtype=bool)
        s = np.asarray(scores, dtype=np.float64)
        s = np.where(np.isnan(s), -np.inf, s)  # (NaN ranks below every number)
        if self.kind == "row":
            if self.keep:
                mask[np.arange(rows)[:, None], _top(s, self.keep)] = True
            return mask
        if self.kind == "nm":
            g = s.reshape(rows, d // self.m, self.m)
            idx = _top(g, self.n)  # (rows, groups, n) positions within each group
            mask.reshape(rows, d // self.m, self.m)[
                np.arange(rows)[:, None, None], np.arange(d // self.m)[None, :, None], idx
            ] = True
            return mask
        if self.keep_total:
            flat = _top(s.reshape(1, -1), self.keep_total)[0]
            mask.reshape(-1)[flat] = True
        return mask

    def check(self, mask: np.ndarray) -> bool:
        """Whether ``mask`` satisfies the pattern exactly."""
        if mask.shape != (self.rows, self.d):
            return False
        if self.kind == "row":
            return bool(np.all(mask.sum(axis=1) == self.keep))
        if self.kind == "nm":
            return bool(np.all(mask.reshape(self.rows, -1, self.m).sum(axis=2) == self.n))
        return int(mask.sum()) == self.keep_total


def _core_module():
    """The compiled ``_core`` module, or None where it is not built (numba-only installs)."""
    try:
        from .. import _core
    except ImportError:  # pragma: no cover - the wheel always builds _core
        return None
    return _core


def _top(s: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries along the last axis (ties to the lower index): a
    selection (argpartition) on keys that break ties by position, not a sort of the axis."""
    d = s.shape[-1]
    if k <= 0:
        return np.empty((*s.shape[:-1], 0), dtype=np.intp)
    if k >= d:
        return np.broadcast_to(np.arange(d), s.shape).copy()
    # The partition on -score alone would break ties arbitrarily: resolve them at the boundary.
    part = np.argpartition(-s, k - 1, axis=-1)
    kth = np.take_along_axis(-s, part[..., k - 1 : k], axis=-1)  # the k-th largest, negated
    above = -s < kth  # strictly inside the top k
    need = k - above.sum(axis=-1, keepdims=True)  # how many of the tied entries to take
    tied = -s == kth
    take_tied = tied & (np.cumsum(tied, axis=-1) <= need)
    keep = above | take_tied
    return np.sort(np.nonzero(keep)[-1].reshape(*s.shape[:-1], k), axis=-1)


def parse_pattern(pattern: Any, sparsity: Any, budget: str, rows: int, d: int) -> Pattern:
    """The :class:`Pattern` of ``prune_layer``'s arguments, with errors naming them."""
    if not isinstance(pattern, str):
        raise TypeError(f'`pattern` must be "unstructured" or "N:M", got {type(pattern).__name__}')
    if budget not in ("row", "layer"):
        raise ValueError(f'`budget` must be "row" or "layer", got {budget!r}')
    nm = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if nm:
        n, m = int(nm.group(1)), int(nm.group(2))
        if not 0 < n <= m:
            raise ValueError(f"`pattern` {pattern!r}: N:M needs 0 < N <= M")
        if d % m:
            raise ValueError(
                f"`pattern` {pattern!r}: the layer's {d} inputs are not a multiple of M"
            )
        if budget != "row":
            raise ValueError('`budget="layer"` applies to pattern="unstructured" only')
        return Pattern("nm", rows, d, n=n, m=m)
    if pattern != "unstructured":
        raise ValueError(f'`pattern` must be "unstructured" or "N:M" (e.g. "2:4"), got {pattern!r}')
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating)):
        raise TypeError(f"`sparsity` must be a number in [0, 1), got {type(sparsity).__name__}")
    s = float(sparsity)
    if not (0.0 <= s < 1.0):
        raise ValueError(f"`sparsity` must lie in [0, 1), got {sparsity}")
    if budget == "row":
        return Pattern("row", rows, d, keep=d - round_half_up(s * d))
    return Pattern("layer", rows, d, keep_total=rows * d - round_half_up(s * rows * d))


class LayerProblem:
    """``W_bar`` (rows x d, float64) and the damped, normalised H of one layer.

    H is scaled by 1 / mean(diag H) (any positive scaling of H has the same minimisers) and
    damped by ``damp`` times its mean diagonal: ``Hd = H / h + damp I``, h = mean(diag H).
    ``error`` evaluates the undamped objective on the caller's scale. An all-zero H (no
    calibration signal) is kept as is: every mask then has error 0."""

    def __init__(self, W_bar: np.ndarray, H: np.ndarray, damp: float, pattern: Pattern) -> None:
        self.W_bar = W_bar
        self.H = H  # the caller's H (float64)
        self.pattern = pattern
        self.rows, self.d = W_bar.shape
        h = float(np.mean(np.diagonal(H)))
        self.scale = h if h > 0 else 1.0
        self.Hd = H / self.scale
        self.Hd[np.diag_indices(self.d)] += damp
        self.damp = damp
        self._HW: np.ndarray | None = None

    @property
    def HW(self) -> np.ndarray:
        """W_bar Hd (rows x d): the linear term of every row's objective."""
        if self._HW is None:
            self._HW = self.W_bar @ self.Hd
        return self._HW

    def error(self, W: np.ndarray) -> float:
        """sum_i (w_i - w_bar_i)^T H (w_i - w_bar_i), on the caller's (undamped) H."""
        D = W - self.W_bar
        return float(np.einsum("ij,ij->", D @ self.H, D))

    def damped_errors(self, W: np.ndarray) -> np.ndarray:
        """Each row's objective on the damped, normalised Hd (what the solver minimises)."""
        D = W - self.W_bar
        return np.einsum("ij,ij->i", D @ self.Hd, D)
