"""Mask search for all rows at once by ADMM on the L0-constrained quadratic (docs/design.md,
section 14.4; the method of ALPS, Meng et al. 2024, written from the paper).

    minimise 1/2 sum_i (w_i - w_bar_i)^T H (w_i - w_bar_i)  s.t.  W = D,  D feasible

with the augmented Lagrangian's three steps per iteration, every row at once:

    W <- (W_bar H - V + rho D) (H + rho I)^-1      (two GEMMs with H's eigenvectors)
    D <- the pattern's projection of W + V / rho    (each row's / group's / the layer's top)
    V <- V + rho (W - D)

H is shared by all rows, so one eigendecomposition serves every rho. rho grows geometrically,
faster once the mask has settled, until the mask stops changing; the last mask is returned
(the caller refits it exactly).
"""

from __future__ import annotations

import numpy as np

from ._problem import LayerProblem

__all__ = ["admm_mask"]

#: rho grows by this factor per iteration while the mask still changes much, by the larger
#: one once fewer than _SETTLED of the weights change per iteration.
_GROW = 1.1
_GROW_SETTLED = 1.3
_SETTLED = 1e-3
#: Iterations without any mask change that end the search.
_STABLE = 5


def admm_mask(
    prob: LayerProblem,
    W0: np.ndarray,
    *,
    rho0: float = 0.3,
    max_iter: int = 300,
    eig: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """The mask ADMM settles on from the feasible start ``W0`` (zero off its mask), and the
    number of iterations. ``rho0`` is relative to H's mean eigenvalue (1 + damp after
    normalisation); ``eig`` may pass (eigenvalues, eigenvectors) of the damped H."""
    pat = prob.pattern
    lam, Q = np.linalg.eigh(prob.Hd) if eig is None else eig
    scale = float(np.mean(lam))
    rho = rho0 * scale
    D = W0.copy()
    V = np.zeros_like(D)
    mask = W0 != 0
    if not pat.check(mask):  # a start with zeros on kept entries: its projection instead
        mask = pat.project(np.abs(W0))
    HW = prob.HW
    stable = 0
    it = 0
    while it < max_iter:
        it += 1
        G = (HW - V + rho * D) @ Q
        W = (G / (lam + rho)[None, :]) @ Q.T
        T = W + V / rho
        new = pat.project(np.abs(T))
        D = np.where(new, T, 0.0)
        V += rho * (W - D)
        changed = int(np.count_nonzero(new != mask))
        mask = new
        stable = stable + 1 if changed == 0 else 0
        if stable >= _STABLE:
            break
        rho *= _GROW_SETTLED if changed < _SETTLED * mask.size else _GROW
    return mask, it
