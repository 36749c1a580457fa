"""Kernel contract shared by every backend (``_core``, numba, ``_cuda``).

Each backend module exposes these functions with the same names and semantics, so tests and
the solver driver can swap one for another (the whole contract, with the dense-algebra ops
``gather_columns`` / ``support_gram`` / ``swap_scores`` that run through BLAS, is
``chita_core/backends/protocol.py``; ``chita_core.backends.cpp`` adds them to these kernels).
Conventions for every function:

- ``A``: 2-D ``(n, p)`` float32 or float64, C-contiguous (rows are gradients) or F-contiguous
  (columns contiguous). Never copied.
- Vectors (``b``, ``r``, ``w``, ``w_bar``, ``g``, ``x``, ``out``) are 1-D C-contiguous float64:
  all accumulation is in float64 whatever the dtype of ``A``.
- Index arrays (``idx``, ``support``) are 1-D C-contiguous int64, sorted, unique, in ``[0, p)``.
- ``out`` arrays are written, never read. The Python layer validates everything first; the
  kernels re-check shapes and raise ``ValueError``/``TypeError`` as a second line of defence.
"""

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mat = npt.NDArray[np.float32] | npt.NDArray[np.float64]

def support_matvec(A: Mat, idx: I64, x: F64, out: F64) -> None:
    """out[i] = sum_j A[i, idx[j]] * x[j]   # A [n, p], idx [m], x [m], out [n]

    F order reads only the m columns in ``idx``. C order reads whole rows (a row is
    contiguous, so a gather would touch nearly every cache line anyway)."""

def support_rmatvec(A: Mat, idx: I64, y: F64, out: F64) -> None:
    """out[j] = sum_i A[i, idx[j]] * y[i]   # A [n, p], idx [m], y [n], out [m]"""

def gradient(A: Mat, r: F64, w: F64, w_bar: F64, ridge: float, out: F64) -> None:
    """out = A^T r + ridge * (w - w_bar)   # A [n, p], r [n], w [p], w_bar [p], out [p]

    One pass over A; multithreaded."""

def column_sqnorms(A: Mat, out: F64) -> None:
    """out[j] = sum_i A[i, j]^2   # A [n, p], out [p]; one pass over A"""

def topk(v: F64, k: int, out: I64) -> None:
    """out = sorted indices of the k largest |v|; ties go to the lower index.

    v [p], out [k], 1 <= k <= p. O(p) selection (radix select on the bit pattern of |v|),
    no sort of p elements. Deterministic."""

def chita_step(
    A: Mat,
    b: F64,
    w_bar: F64,
    ridge: float,
    g: F64,
    w: F64,
    r: F64,
    support: I64,
    f: float,
    cols: I64 | None = None,
) -> tuple[float, float, int, bool]:
    """One CHITA line-search step from the state (w, r, support) with gradient g.

    With ``cols`` (sorted distinct column indices, length P) the step runs on the subproblem
    A[:, cols] (CHITA's active set) without copying A: w_bar, g, w are then of length P and
    support holds local indices into cols; below, p reads P.

    A [n, p], b [n], w_bar [p], g [p] (= A^T r + ridge (w - w_bar)), w [p] (zero off the
    support), r [n] (= A w - b), support [k] (sorted), f = objective at w.
    Updates w, r, support in place. Returns (f_new, tau, n_candidates, support_changed):
    f_new <= f is the objective at the new w, tau the accepted step (0.0 if none), and
    n_candidates the number of hard-thresholded candidates evaluated.

    Algorithm (must be identical in every backend):
      m = max_{j not in S} |g_j|                      (no complement when k == p)
      tau_chg = min over i in S of |w_i| / denom_i    (+inf if no term; k == p -> +inf) with
          denom_i = |g_i| + m   if w_i * g_i > 0 (moving toward zero)
          denom_i = m - |g_i|   elif |g_i| < m (moving away, overtaken by an outsider)
          no term otherwise, and no term when denom_i <= 0
      d = g on S; Ad = A_S d; dd = ||d||^2
      tau_star = dd / (||Ad||^2 + ridge * dd)   (0 if dd == 0, or if max|d| <= STATIONARY m:
                                                 at an exact refit g_S is rounding noise)
      if 0 < tau_star < tau_chg:                # support kept, exact line minimum
          w_S -= tau_star d; r -= tau_star Ad; f_new = objective(w, r)
      else:                                     # forward doubling over hard-thresholded steps
          base = tau_chg / TAU_CHG_SHRINK   (if tau_chg is +inf: base = tau_star)
          for j < FORWARD_STEPS: tau = base * LADDER_FACTOR^j; skip all if tau <= 0
              cand = H_k(w - tau g) (topk on w - tau g), r_c = A_cand x - b, f_c = objective
              (r_c may be formed as r - tau A d + A_in v_in - A_out v_out over the coordinates
              entering/leaving, v = w - tau g: same value up to rounding, far fewer columns)
              accept if f_c < f_best (best so far), else stop
          if none accepted and tau_star > 0:   # backtracking fallback
              for j < BACKTRACK_STEPS: tau = tau_star / LADDER_FACTOR^j; same candidate;
                  accept the first f_c < f; stop
      objective(w, r) = 0.5 ||r||^2 + 0.5 ridge ||w - w_bar||^2, in float64.

    The names in capitals are the constants of ``chita_core/backends/constants.py`` (their values
    and reasons are there), the one definition every backend uses; ``STEP_CONSTANTS`` holds the
    values this module was built with.
    """

def swap_scores(G: F64, q: F64, s0: float, wv: F64, jn: I64, io: I64, lam: float, out: F64) -> None:
    """out [len(io) * len(jn)] = change of f per swap (backends/host.py: swap_scores)."""

def pool_eliminate(G: F64, x: F64, count: int, order: I64) -> None:
    """Greedy OBS within a pool (G [c, c] and x [c], or stacks [batch, c, c] and [batch, c],
    overwritten as work arrays): order [count] / [batch, count] = removals in order
    (backends/host.py: pool_eliminate)."""

def row_top_mask(s: F64, k: int, n: int, m: int, mask: np.ndarray) -> None:
    """mask [rows, d] (bool) = each row's k largest s (k >= 0), or with k < 0 each group of m
    consecutive entries' n largest; ties to the lower index, NaN last (layer/_problem.py:
    Pattern.project_numpy)."""

def num_threads() -> int:
    """Threads the kernels use (OpenMP max threads; 1 without OpenMP)."""

#: The step's constants as compiled into this module, ``{name: value}``: generated at build time
#: from ``chita_core/backends/constants.py`` (tests/test_backend_contract.py checks they agree).
STEP_CONSTANTS: dict[str, int | float]
