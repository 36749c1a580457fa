"""A point of the solver: a support, the weights on it, its residual and exact objective.

Every stage returns points and the pipeline keeps the best one; ``Point.refit`` is the one
place that turns a support into the exact minimiser on it (docs/design.md, section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._problem import Problem

__all__ = ["Point"]


@dataclass
class Point:
    """``w`` with nonzeros on ``support`` only, ``r = A w - b`` and ``f`` = the objective at w,
    computed from A (not carried by updates). :meth:`inverse` is ``(ridge I + A_S A_S^T)^-1``
    (n x n) where a stage carried it (``kinv``) or the refit factored K on the way (``factor``:
    the inverse is then formed on the first call, a third of the cost of a new factorisation),
    and ``gram`` is ``A_S A_S^T``; swap search starts from the first, greedy OBS from the second
    (its superset contains S)."""

    support: Any  # [k] sorted int64
    w: Any  # [p] float64
    r: Any  # [n] float64, A w - b
    f: float
    kinv: Any = None  # [n, n] float64 or None
    gram: Any = None  # [n, n] float64 A_S A_S^T, kept with kinv by a push-through refit
    factor: Any = None  # _linalg.SPDSystem of ridge I + A_S A_S^T, or None

    @classmethod
    def at(cls, prob: Problem, support: Any, values: Any) -> Point:
        """The point with ``values`` on ``support``: r and f from one support mat-vec."""
        w = prob.xp.zeros(prob.p)
        w[support] = values
        r = prob.residual(support, values)
        return cls(support, w, r, prob.value(r, w))

    @classmethod
    def refit(
        cls,
        prob: Problem,
        support: Any,
        *,
        keep_inverse: bool = False,
        guess: Any = None,
        gram: Any = None,
        solve: Any = None,
        refine: Any = None,
    ) -> Point:
        """The exact minimiser with nonzeros on ``support`` (sorted int64), accurate to
        rounding at any conditioning (stages/nspace.py: support_values). With
        ``keep_inverse`` the n x n inverse is kept when the push-through form formed it.
        ``guess`` may pass an approximate (ridge I + A_S A_S^T)^-1 that a stage carried by
        low-rank updates: iterative refinement against A_S then reaches the same minimiser
        without a new Gram, and the full solve runs only if it does not converge. ``gram``
        may pass A_S A_S^T of this support (from a point at another ridge). ``solve`` and
        ``refine`` replace nspace's ``support_values`` and ``refined_values`` (same
        signatures) where ``prob`` is not a ``Problem`` (chita_core.distributed: a shard)."""
        from .stages.nspace import refined_values, support_values

        solve = support_values if solve is None else solve
        refine = refined_values if refine is None else refine
        values, factor = None, None
        if guess is not None:
            values = refine(prob, support, guess)
        kinv = guess
        if values is None:
            kinv = None
            values, factor, gram = solve(prob, support, keep_inverse=keep_inverse, gram=gram)
        point = cls.at(prob, support, values)
        if keep_inverse:
            point.kinv, point.gram, point.factor = kinv, gram, factor
        return point

    def inverse(self) -> Any:
        """(ridge I + A_S A_S^T)^-1 where the point carries it or its factor, else None."""
        if self.kinv is None and self.factor is not None:
            self.kinv, self.factor = self.factor.inverse(), None  # (one n x n matrix kept)
        return self.kinv

    def copy(self) -> Point:
        return replace(self, support=self.support.copy(), w=self.w.copy(), r=self.r.copy())
