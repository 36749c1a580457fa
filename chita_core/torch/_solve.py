"""The solves of one pruning stage (chita_core.torch): A's column blocks as prepared problems,
the solve of each candidate of the ridge path and the loss that chooses among them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .._api import IHTResult, solve
from .._problem import Problem


def _column_blocks(A: torch.Tensor):
    """Column blocks of A upcast to float64, about 32 MB each: A itself is never copied."""
    step = max(1, (32 << 20) // (8 * max(1, A.shape[0])))
    for j0 in range(0, A.shape[1], step):
        yield j0, A[:, j0 : j0 + step].double()


def _matvec64(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A @ x accumulated in float64, by column blocks."""
    out = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
    for j0, block in _column_blocks(A):
        out += block @ x[j0 : j0 + block.shape[1]].double()
    return out


@dataclass
class _Block:
    """One problem of a stage: columns lo:hi of A (the whole A, or one tensor's), its k and the
    prepared Problem (validated once: one NaN scan and column-norm pass of A per stage), with
    the magnitude + backsolve point of each ridge solved so far (``iht`` starts from it)."""

    lo: int
    hi: int
    k: int
    problem: Problem
    #: the magnitude + backsolve point of the last ridge asked for (one at a time: each holds
    #: a length-p float64 w, 8 bytes per weight), and what every ridge shares: the support and
    #: its Gram
    magnitude: dict[float, Any] = field(default_factory=dict)
    shared: tuple[Any, Any] | None = None

    def at(self, ridge: float) -> Problem:
        return self.problem.with_ridge(ridge)

    def magnitude_point(self, ridge: float) -> Any:
        """The exact refit on the k largest |w_bar| at ``ridge``. The support and its Gram
        A_S A_S^T do not depend on the ridge: the first ridge forms them, the others reuse them
        (a Gram is the refit's cost: 4 -> 1 on the default ridge path). Only the last ridge's
        point is held (the ridge path asks for each ridge's point in turn, see ``prune``)."""
        if ridge not in self.magnitude:
            self.magnitude.clear()  # (before the new point: one w at a time)
            prob = self.at(ridge)
            with prob.stream():
                if self.shared is None:
                    support = prob.xp.empty(self.k, dtype=np.int64)
                    prob.kernels.topk(prob.w_bar, self.k, support)
                    gram = None
                else:
                    support, gram = self.shared
                point = prob.point(support, keep_inverse=True, gram=gram)
            self.magnitude[ridge] = point
            if self.shared is None:
                self.shared = (point.support, point.gram)
        return self.magnitude[ridge]


def _mean_loss(model: Any, loss_fn: Any, samples: Any, batch: int = 1024) -> float:
    """Mean of the loss over the samples (in eval mode, without gradients)."""
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for _, b in samples.chunks(batch):
                total += float(b.loss(model, loss_fn)) * b.size
    finally:
        model.train(was_training)
    return total / samples.n


def _ks(k_total: int, sizes: list[int], sparsity: float, per_layer: bool) -> list[int]:
    """The k of each problem of a stage: ``k_total`` for the global one, or each tensor's share
    at ``sparsity`` (at least 1)."""
    if not per_layer:
        return [k_total]
    return [max(1, round((1.0 - sparsity) * size)) for size in sizes]


@dataclass
class LocalStage:
    """The problems of one stage in this process (one global problem over A's columns, or one
    per tensor), as :func:`chita_core.torch._prune._stages` asks of a stage: the ridge path's
    unit (``curvature``), a candidate's solve (``solve``), the loss that chooses among the
    candidates (``mean_loss``) and the same problems at another sparsity (``final``). The
    sharded prune's stages (``_distributed.py``) offer the same."""

    blocks: list[_Block]
    sizes: list[int]  #: the tensors' sizes (columns), in order
    per_layer: bool

    @classmethod
    def build(
        cls,
        A: torch.Tensor,
        w_bar: torch.Tensor,
        k_total: int,
        sizes: list[int],
        sparsity: float,
        per_layer: bool,
        backend: str,
    ) -> LocalStage:
        """One global problem, or one per tensor. Built once per stage (b = A_block w_bar_block
        is one pass over A; the Problem's column norms another)."""
        bounds = [0, *itertools.accumulate(sizes)] if per_layer else [0, A.shape[1]]
        ks = _ks(k_total, sizes, sparsity, per_layer)
        blocks = []
        half = A.dtype in (torch.bfloat16, torch.float16)
        for lo, hi, k in zip(bounds[:-1], bounds[1:], ks, strict=True):
            As, wbs = A[:, lo:hi], w_bar[lo:hi]
            # b in A's dtype, or float32 for a 16-bit A (whose storage type would round b)
            bs = _matvec64(As, wbs).to(torch.float32 if half else A.dtype)
            blocks.append(_Block(lo, hi, k, Problem(As, bs, w_bar=wbs, backend=backend)))
        return cls(blocks, sizes, per_layer)

    def norms(self) -> float:
        """Sum over the columns of ||A[:, j]||^2, from the norms the problems already hold."""
        return sum(float(b.problem.h.sum()) for b in self.blocks)

    def curvature(self) -> float:
        """Mean over all columns of ||A[:, j]||^2 (the average curvature of one weight)."""
        return self.norms() / max(1, sum(self.sizes))

    def solve(
        self, w_bar: torch.Tensor, method: str, ridge: float, options: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, float, list[IHTResult]]:
        return _solve(w_bar, self.blocks, method, ridge, options)

    def mean_loss(self, model: Any, loss_fn: Any, held: Any) -> float:
        return _mean_loss(model, loss_fn, held)

    def final(self, k_total: int, sparsity: float) -> LocalStage:
        """The same problems at another sparsity (``k_total`` weights kept over all tensors, or
        each tensor's share with ``per_layer``)."""
        ks = _ks(k_total, self.sizes, sparsity, self.per_layer)
        # the same prepared Problems (A, b and the column norms do not depend on k), fresh
        # magnitude points
        blocks = [replace(blk, k=k, magnitude={}, shared=None)
                  for blk, k in zip(self.blocks, ks, strict=True)]  # fmt: skip
        return replace(self, blocks=blocks)


# Options of chita_core.iht that the adapter sets itself (from the model and the ridge path).
_OWN_OPTIONS = ("A", "b", "k", "ridge", "w_bar", "backend", "check_finite", "memory_limit")


def _check_solver_options(options: dict[str, Any]) -> None:
    """TypeError naming any ``**solver_options`` entry that ``chita_core.iht`` does not take
    (or that prune sets itself), before any gradient work."""
    import inspect

    accepted = {
        name for name in inspect.signature(solve).parameters if not name.startswith("_")
    } - {"prob", "k"}
    for name in options:
        if name in _OWN_OPTIONS:
            raise TypeError(f"`{name}` is set by prune itself; it is not a solver option here")
        if name not in accepted:
            takes = ", ".join(sorted(accepted))
            raise TypeError(f"unknown solver option `{name}`; chita_core.iht takes {takes}")


def _solve(
    w_bar: torch.Tensor,
    blocks: list[_Block],
    method: str,
    ridge: float,
    solver_options: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, float, list[IHTResult]]:
    """(w, kept, objective, results) for one stage and one ridge; ``kept`` is the boolean
    support (exactly k entries per block, even where a kept weight happens to be zero)."""
    w = torch.zeros_like(w_bar)
    kept = torch.zeros(w_bar.shape, dtype=torch.bool, device=w_bar.device)
    results, f_total = [], 0.0
    for blk in blocks:
        lo, hi = blk.lo, blk.hi
        if method == "magnitude":
            wbs = w_bar[lo:hi]
            support = torch.topk(wbs.abs(), blk.k, sorted=False).indices.sort().values
            kept[lo:hi][support] = True
            w[lo:hi][support] = wbs[support]
            f_total += blk.at(ridge).objective(w[lo:hi])
            continue
        point = blk.magnitude_point(ridge)
        if method == "chita":
            res = solve(blk.at(ridge), blk.k, _magnitude=point, **solver_options)
            w[lo:hi] = res.w
            kept[lo:hi][res.support] = True
            # The result without its w and support (copied into w and kept): each would be
            # held with every candidate and stage report, 4 to 12 bytes per weight.
            results.append(replace(res, w=None, support=None))
            f_total += res.objective
            continue
        prob = blk.at(ridge)
        w[lo:hi] = prob.output(point.w)
        kept[lo:hi][prob.output(point.support, cast=False)] = True
        f_total += point.f
    return w, kept, f_total, results
