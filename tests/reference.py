"""Independent float64 NumPy reference for chita_core, written from docs/design.md and the kernel
contract in ``chita_core/_core.pyi``. It never imports chita_core.

Every function upcasts ``A`` to float64 first, so for a float32 ``A`` the reference is the exact
problem on the float32 values (the backends accumulate in float64 too). Clarity over speed: the
residual of every candidate is recomputed from scratch, ``topk`` is a full ``np.lexsort``, and
``backsolve`` goes through ``np.linalg.solve`` / ``lstsq``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "IHTTrace",
    "StepOutcome",
    "backsolve",
    "best_subset",
    "chita_step",
    "gradient",
    "greedy_obs",
    "iht",
    "objective",
    "obs_saliency",
    "residual",
    "support_matvec",
    "support_objective",
    "support_rmatvec",
    "topk",
]


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def support_matvec(A, idx, x):
    """A[:, idx] @ x, shape (n,)."""
    return _f64(A)[:, np.asarray(idx, dtype=np.int64)] @ _f64(x)


def support_rmatvec(A, idx, y):
    """A[:, idx].T @ y, shape (m,)."""
    return _f64(A)[:, np.asarray(idx, dtype=np.int64)].T @ _f64(y)


def residual(A, b, w):
    """A w - b."""
    return _f64(A) @ _f64(w) - _f64(b)


def objective(A, b, w, ridge=0.0, w_bar=None):
    """0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2."""
    w = _f64(w)
    w_bar = np.zeros_like(w) if w_bar is None else _f64(w_bar)
    r = residual(A, b, w)
    d = w - w_bar
    return 0.5 * float(r @ r) + 0.5 * float(ridge) * float(d @ d)


def gradient(A, r, w, w_bar, ridge):
    """A^T r + ridge (w - w_bar)."""
    return _f64(A).T @ _f64(r) + float(ridge) * (_f64(w) - _f64(w_bar))


def topk(v, k):
    """Sorted indices of the k largest |v|; ties go to the lower index (-0.0 ties with 0.0)."""
    v = _f64(v)
    order = np.lexsort((np.arange(v.size), -np.abs(v)))  # last key is the primary one
    return np.sort(order[:k]).astype(np.int64)


def backsolve(A, b, idx, w_bar_s, ridge):
    """Values on ``idx`` of the exact minimiser of f restricted to the support ``idx``.

    With z = x - w_bar_s and c = b - A_S w_bar_s: m <= n solves the normal equations
    (A_S^T A_S + ridge I) z = A_S^T c; otherwise z = A_S^T (A_S A_S^T + ridge I)^{-1} c, which
    for ridge == 0 is the minimum-norm solution (the one closest to w_bar)."""
    A_S = _f64(A)[:, np.asarray(idx, dtype=np.int64)]
    w_bar_s = _f64(w_bar_s)
    c = _f64(b) - A_S @ w_bar_s
    n, m = A_S.shape
    if m <= n:
        G = A_S.T @ A_S + ridge * np.eye(m)
        try:
            z = np.linalg.solve(G, A_S.T @ c)
        except np.linalg.LinAlgError:
            z = np.linalg.lstsq(A_S, c, rcond=None)[0]
    elif ridge > 0:
        z = A_S.T @ np.linalg.solve(A_S @ A_S.T + ridge * np.eye(n), c)
    else:
        z = np.linalg.lstsq(A_S, c, rcond=None)[0]  # minimum norm
    return w_bar_s + z


def best_subset(A, b, k, ridge=0.0, w_bar=None):
    """Brute force over all supports of size k (tiny p only): (support, w, objective)."""
    p = A.shape[1]
    w_bar = np.zeros(p) if w_bar is None else _f64(w_bar)
    best = (None, None, math.inf)
    for S in itertools.combinations(range(p), k):
        S = np.array(S, dtype=np.int64)
        w = np.zeros(p)
        w[S] = backsolve(A, b, S, w_bar[S], ridge)
        f = objective(A, b, w, ridge, w_bar)
        if f < best[2]:
            best = (S, w, f)
    return best


def support_objective(A, b, idx, ridge=0.0, w_bar=None):
    """(w, f): the exact minimiser of f with nonzeros restricted to ``idx`` and its objective."""
    p = _f64(A).shape[1]
    w_bar = np.zeros(p) if w_bar is None else _f64(w_bar)
    idx = np.asarray(idx, dtype=np.int64)
    w = np.zeros(p)
    w[idx] = backsolve(A, b, idx, w_bar[idx], ridge)
    return w, objective(A, b, w, ridge, w_bar)


def obs_saliency(A, b, ridge, w_bar=None):
    """Dense Optimal Brain Surgeon saliency w_q^2 / [H^-1]_qq with H = A^T A + ridge I (p x p,
    small p only) and w the unconstrained minimiser H^-1 (A^T b + ridge w_bar) (w_bar itself
    when b = A w_bar). Needs ridge > 0 or A of full column rank."""
    A = _f64(A)
    p = A.shape[1]
    w_bar = np.zeros(p) if w_bar is None else _f64(w_bar)
    H = A.T @ A + float(ridge) * np.eye(p)
    Hinv = np.linalg.inv(H)
    w = Hinv @ (A.T @ _f64(b) + float(ridge) * w_bar)
    return w * w / np.diag(Hinv)


def greedy_obs(A, b, k, ridge, w_bar=None, start=None, candidates=None):
    """Textbook greedy OBS: from the support ``start`` (default: every column), remove one weight
    at a time, the one of least saliency x_q^2 / [H_S^-1]_qq at the exact minimiser x on the
    current support S (H_S = A_S^T A_S + ridge I, dense |S| x |S|, inverted afresh every step);
    with ``candidates``, only weights among them are removed (greedy OBS within a pool).
    Returns (sorted support of size k, [(removed weight, its saliency margin)] in order), where
    the margin is the relative gap to the second-least saliency (ties make the order arbitrary).
    Needs ridge > 0. Small problems only."""
    A = _f64(A)
    b = _f64(b)
    p = A.shape[1]
    w_bar = np.zeros(p) if w_bar is None else _f64(w_bar)
    S = np.arange(p) if start is None else np.sort(np.asarray(start, dtype=np.int64))
    path = []
    while S.size > k:
        AS = A[:, S]
        Hinv = np.linalg.inv(AS.T @ AS + float(ridge) * np.eye(S.size))
        x = Hinv @ (AS.T @ b + float(ridge) * w_bar[S])
        sal = x * x / np.diag(Hinv)
        if candidates is not None:
            sal[~np.isin(S, candidates)] = np.inf
        order = np.argsort(sal, kind="stable")
        q = order[0]
        margin = (sal[order[1]] - sal[q]) / max(sal[order[1]], 1e-300) if S.size > 1 else 1.0
        path.append((int(S[q]), float(margin)))
        S = np.delete(S, q)
    return S, path


@dataclass
class StepOutcome:
    """Result of one reference CHITA step."""

    w: np.ndarray
    r: np.ndarray
    support: np.ndarray
    f: float
    tau: float
    n_candidates: int
    support_changed: bool
    branch: str  # "kept", "forward", "backtrack" or "none"
    tau_star: float
    tau_chg: float
    #: smallest relative gap of any comparison the step made (tau_star vs tau_chg, f_c vs f_best,
    #: |v| at the top-k boundary). A step is only a fair test of "identical behaviour" if this is
    #: well above rounding level.
    margin: float


def _relgap(a, b):
    if math.isinf(a) and math.isinf(b):
        return 0.0
    if math.isinf(a) or math.isinf(b):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def _topk_margin(v, k):
    """Relative gap between the k-th and (k+1)-th largest |v|."""
    a = np.sort(np.abs(v))[::-1]
    if k >= a.size:
        return math.inf
    return _relgap(a[k - 1], a[k])


def chita_step(A, b, w_bar, ridge, g, w, r, support, f):
    """One CHITA line-search step, exactly the algorithm of the contract in _core.pyi, on copies.

    Candidate residuals are recomputed from scratch (A_cand x - b)."""
    A = _f64(A)
    b = _f64(b)
    w_bar = _f64(w_bar)
    g = _f64(g)
    w = _f64(w).copy()
    r = _f64(r).copy()
    S = np.asarray(support, dtype=np.int64).copy()
    p = A.shape[1]
    k = S.size
    margins = [math.inf]

    in_S = np.zeros(p, dtype=bool)
    in_S[S] = True
    tau_chg = math.inf
    if k < p:
        m = float(np.max(np.abs(g[~in_S])))
        for i in S:
            wi, gi = float(w[i]), float(g[i])
            if wi * gi > 0:
                denom = abs(gi) + m
            elif abs(gi) < m:
                denom = m - abs(gi)
                margins.append(_relgap(abs(gi), m))
            else:
                continue
            if denom > 0:
                tau_chg = min(tau_chg, abs(wi) / denom)

    d = g[S]
    Ad = A[:, S] @ d
    dd = float(d @ d)
    curv = float(Ad @ Ad) + ridge * dd
    tau_star = dd / curv if (dd > 0 and curv > 0) else 0.0

    def obj(x_full, res):
        dx = x_full - w_bar
        return 0.5 * float(res @ res) + 0.5 * ridge * float(dx @ dx)

    if tau_star > 0:
        margins.append(_relgap(tau_star, tau_chg))
    if 0 < tau_star < tau_chg:
        w[S] -= tau_star * d
        r = r - tau_star * Ad
        return StepOutcome(
            w, r, S, obj(w, r), tau_star, 0, False, "kept", tau_star, tau_chg, min(margins)
        )

    def candidate(tau):
        v = w - tau * g
        C = topk(v, k)
        margins.append(_topk_margin(v, k))
        x = np.zeros(p)
        x[C] = v[C]
        rc = A[:, C] @ v[C] - b
        return C, x, rc, obj(x, rc)

    n_cand = 0
    best = None
    f_best = f
    branch = "none"
    base = tau_star if math.isinf(tau_chg) else tau_chg / (1 + 1e-4)
    if base > 0:
        tau = base
        for _ in range(5):
            C, x, rc, fc = candidate(tau)
            n_cand += 1
            margins.append(_relgap(fc, f_best))
            if not fc < f_best:
                break
            best, f_best, branch = (C, x, rc, tau), fc, "forward"
            tau *= 2
    if best is None and tau_star > 0:
        tau = tau_star
        for _ in range(5):
            C, x, rc, fc = candidate(tau)
            n_cand += 1
            margins.append(_relgap(fc, f_best))
            if fc < f_best:
                best, f_best, branch = (C, x, rc, tau), fc, "backtrack"
                break
            tau /= 2
    if best is None:
        return StepOutcome(w, r, S, f, 0.0, n_cand, False, "none", tau_star, tau_chg, min(margins))
    C, x, rc, tau = best
    return StepOutcome(
        x,
        rc,
        C,
        f_best,
        tau,
        n_cand,
        not np.array_equal(C, S),
        branch,
        tau_star,
        tau_chg,
        min(margins),
    )


@dataclass
class IHTTrace:
    w: np.ndarray
    support: np.ndarray
    objective: float
    n_iter: int
    converged: bool
    history: list = field(default_factory=list)
    steps: list = field(default_factory=list)  # StepOutcome per iteration


def iht(A, b, k, ridge=0.0, w_bar=None, w0=None, max_iter=100, tol=1e-6):
    """IHT with the CHITA step, the loop of docs/design.md section 2 (start H_k(w0), w0 = w_bar)."""
    A = _f64(A)
    b = _f64(b)
    p = A.shape[1]
    w_bar = np.zeros(p) if w_bar is None else _f64(w_bar)
    start = w_bar if w0 is None else _f64(w0)
    S = topk(start, k)
    w = np.zeros(p)
    w[S] = start[S]
    r = A[:, S] @ w[S] - b
    f = objective(A, b, w, ridge, w_bar)
    trace = IHTTrace(w, S, f, 0, False, [f])
    for it in range(1, max_iter + 1):
        g = gradient(A, r, w, w_bar, ridge)
        out = chita_step(A, b, w_bar, ridge, g, w, r, S, f)
        trace.steps.append(out)
        trace.history.append(out.f)
        w, r, S = out.w, out.r, out.support
        converged = abs(f - out.f) <= tol * max(abs(f), abs(out.f), 1.0)
        f = out.f
        trace.n_iter, trace.converged = it, converged
        if converged:
            break
    trace.w, trace.support, trace.objective = w, S, f
    return trace


def idx_variants(p: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Index sets for kernel tests: first column (m = 1), last column, a sparse subset (p/20),
    a dense subset (2p/3) and all columns (m = p), sorted int64."""
    rng = np.random.default_rng(seed)
    out = {"first": [0], "last": [p - 1], "all": list(range(p))}
    if p >= 3:
        out["sparse"] = sorted(rng.choice(p, size=max(1, p // 20), replace=False).tolist())
        out["dense"] = sorted(rng.choice(p, size=(2 * p) // 3, replace=False).tolist())
    return {k: np.array(v, dtype=np.int64) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Layer-wise (tall) regime: one quadratic per row, (w - w_bar)^T H (w - w_bar), H shared
# ----------------------------------------------------------------------------------------------


def layer_damped(H, damp):
    """H / mean(diag H) + damp I (prune_layer's solve matrix; H itself if its diagonal is 0)."""
    H = _f64(H)
    h = float(np.mean(np.diag(H)))
    return H / (h if h > 0 else 1.0) + damp * np.eye(H.shape[0])


def row_refit(Hd, w_bar, kept):
    """The minimiser of (w - w_bar)^T Hd (w - w_bar) with w zero off ``kept``, by a dense
    solve of the kept block."""
    w = np.zeros_like(_f64(w_bar))
    K = np.flatnonzero(kept)
    if K.size:
        w[K] = np.linalg.solve(Hd[np.ix_(K, K)], (Hd @ w_bar)[K])
    return w


def row_error(H, w, w_bar):
    d = _f64(w) - _f64(w_bar)
    return float(d @ _f64(H) @ d)


def row_masks(d, keep=None, nm=None):
    """Every feasible mask of one row: ``keep`` of d kept, or N:M as (n, m)."""
    if nm is None:
        for K in itertools.combinations(range(d), keep):
            m = np.zeros(d, dtype=bool)
            m[list(K)] = True
            yield m
        return
    n, mm = nm
    combos = list(itertools.combinations(range(mm), n))
    for parts in itertools.product(*[combos] * (d // mm)):
        m = np.zeros(d, dtype=bool)
        for g, comb in enumerate(parts):
            m[[g * mm + c for c in comb]] = True
        yield m


def row_brute_force(Hd, w_bar, keep=None, nm=None):
    """(mask, damped error) of one row's best feasible mask, by enumeration."""
    best = (None, np.inf)
    for m in row_masks(w_bar.size, keep, nm):
        e = row_error(Hd, row_refit(Hd, w_bar, m), w_bar)
        if e < best[1]:
            best = (m, e)
    return best


def row_greedy_obs(Hd, w_bar, keep):
    """Textbook greedy OBS on one row: from all weights, remove the one of least saliency
    x_q^2 / [Hd_S^-1]_qq at the exact optimum on S (inverse formed afresh each step)."""
    S = list(range(w_bar.size))
    while len(S) > keep:
        m = np.zeros(w_bar.size, dtype=bool)
        m[S] = True
        x = row_refit(Hd, w_bar, m)[S]
        Hinv = np.linalg.inv(Hd[np.ix_(S, S)])
        q = int(np.argmin(x * x / np.diag(Hinv)))
        S.pop(q)
    m = np.zeros(w_bar.size, dtype=bool)
    m[S] = True
    return m


def row_best_exchange(Hd, w_bar, mask, m=0):
    """The lowest damped error over every exchange of one kept input for one pruned one (with
    m > 0 only within a group of m consecutive inputs), each refitted afresh: brute force."""
    best = np.inf
    kept, pruned = np.flatnonzero(mask), np.flatnonzero(~mask)
    for i in kept:
        for j in pruned:
            if m and i // m != j // m:
                continue
            e_mask = mask.copy()
            e_mask[i], e_mask[j] = False, True
            best = min(best, row_error(Hd, row_refit(Hd, w_bar, e_mask), w_bar))
    return best
