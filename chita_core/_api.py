"""Public solver API: ``iht``, ``backsolve`` and ``objective``."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._backends import get_backend
from ._device import (
    DeviceProblem,
    device_indices,
    device_matrix,
    device_vector,
    is_device_array,
    on_stream,
    to_caller,
)
from ._iht import active_set_iht, objective_value, plain_iht, residual
from ._interop import array_module, library_of, to_library
from ._refine import (
    exhaustive_support,
    greedy_obs_support,
    greedy_screen,
    greedy_screen_size,
    largest,
    obs_multistep_support,
    obs_saliency,
    refit,
    support_values,
    swap_search,
)
from ._validation import (
    check_index,
    check_matrix,
    check_nonneg_float,
    check_support,
    check_vector,
)

__all__ = ["IHTProgress", "IHTResult", "backsolve", "iht", "objective"]


_INITS = ("auto", "magnitude", "obs", "obs_multistep", "greedy")
# init="auto" adds one-shot OBS saliencies when n^2 p (their cost in multiply-adds) is below
# _OBS_AUTO, and multistep OBS (about 2.5x that cost, one-shot included) below _MULTISTEP_AUTO.
_OBS_AUTO = 2e10
_MULTISTEP_AUTO = 1e10
# Greedy OBS starts from a superset of max(_GREEDY_MULTIPLE k, 2n, p/4) columns around the best
# support so far (greedy_screen_size); init="auto" caps its cost (greedy_cost, multiply-adds)
# at _GREEDY_AUTO.
_GREEDY_MULTIPLE = 3.0
_GREEDY_AUTO = 4e10
# Default IHT iterations alone / inside the full pipeline (max_iter=None).
_PLAIN_ITERS = 100
_PIPELINE_ITERS = 30
# Rounds of swap search (each one gradient pass plus small dense algebra).
_SWAP_ROUNDS = 20
# Swap budget for swaps=True (also capped by k and p - k).
_DEFAULT_SWAPS = 2000


class IHTProgress(NamedTuple):
    """What ``callback`` receives after every iteration of :func:`iht`."""

    iteration: int  #: 1-based iteration number
    objective: float  #: objective after the iteration
    tau: float  #: accepted step size (0.0 if the iteration could not improve)
    support_changed: bool  #: whether the iteration moved the support


@dataclass(frozen=True)
class IHTResult:
    """Result of :func:`iht`. ``w`` and ``support`` come in the array library of ``A``."""

    w: Any  #: [p] solution, dtype of A, at most k nonzeros
    support: Any  #: [k] sorted int64 indices of the kept weights
    objective: float  #: 0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2
    n_iter: int  #: iterations run
    converged: bool  #: the relative objective decrease fell below ``tol``
    history: list[float] = field(repr=False)  #: objective before iteration 1, then after each
    backend: str = "cpp"  #: backend that ran the kernels
    elapsed: float = 0.0  #: wall-clock seconds, validation included
    #: (stage, objective after it, seconds) for each stage run: start supports, IHT, refits, swaps
    stages: list[tuple[str, float, float]] = field(default_factory=list, repr=False)


class _Problem(NamedTuple):
    A: Any  # [n, p] NumPy view of the caller's A, or a DeviceMatrix; never copied
    b: Any  # [n] float64 (NumPy, or CuPy on A's device)
    w_bar: Any  # [p] float64
    ridge: float
    lib: str  # array library of A, for the outputs
    where: DeviceProblem | None = None  # set when A is on a GPU

    def vector(self, x: Any, name: str, check_finite: bool) -> Any:
        """A length-p input vector (like w_bar) checked and held like ``w_bar``."""
        p = self.A.shape[1]
        if self.where is not None:
            return device_vector(
                x, name, p, self.A, length_of="columns of `A`", check_finite=check_finite
            )
        return check_vector(
            x, name, p, self.A.dtype, length_of="columns of `A`", check_finite=check_finite
        )

    def stream(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which the kernels run: A's device and the caller's stream."""
        if self.where is None:
            return contextlib.nullcontext()
        return on_stream(self.A, self.where)

    def output(self, x: Any, *, cast: bool = True) -> Any:
        """A result vector in the caller's library (and, if ``cast``, A's dtype)."""
        if self.where is not None:
            return to_caller(x, self.where, cast=cast)
        return to_library(x.astype(self.A.dtype) if cast else x, self.lib)


def _prepare(
    A: Any, b: Any, ridge: Any, w_bar: Any, check_finite: bool, backend: str
) -> tuple[_Problem, str, Any]:
    """Validated problem plus the backend (name, kernels) that runs it."""
    if is_device_array(A):
        return _prepare_device(A, b, ridge, w_bar, check_finite, backend)
    arr = check_matrix(A, check_finite=check_finite)
    n, p = arr.shape
    b64 = check_vector(b, "b", n, arr.dtype, length_of="rows of `A`", check_finite=check_finite)
    ridge = check_nonneg_float(ridge, "ridge")
    prob = _Problem(arr, b64, np.zeros(p), ridge, library_of(A))
    if w_bar is not None:
        prob = prob._replace(w_bar=prob.vector(w_bar, "w_bar", check_finite))
    name, kernels = get_backend(backend)
    return prob, name, kernels


def _prepare_device(
    A: Any, b: Any, ridge: Any, w_bar: Any, check_finite: bool, backend: str
) -> tuple[_Problem, str, Any]:
    name, kernels = get_backend(backend, on_device=True)
    mat, where = device_matrix(A)
    ridge = check_nonneg_float(ridge, "ridge")
    import cupy as cp

    prob = _Problem(mat, None, None, ridge, where.lib, where)
    with prob.stream():
        b64 = device_vector(b, "b", mat.n, mat, length_of="rows of `A`", check_finite=check_finite)
        prob = prob._replace(b=b64, w_bar=cp.zeros(mat.p))
        if w_bar is not None:
            prob = prob._replace(w_bar=prob.vector(w_bar, "w_bar", check_finite))
        if check_finite:  # one pass: NaN/Inf in a column makes its squared norm non-finite
            sq = cp.empty(mat.p)
            kernels.column_sqnorms(mat, sq)
            bad = cp.flatnonzero(~cp.isfinite(sq))
            if bad.size:
                raise ValueError(
                    f"`A` contains NaN or Inf (first in column {int(bad[0])}; with float16/"
                    "bfloat16 storage, entries beyond ~1e19 also overflow the float32 sum)"
                )
    return prob, name, kernels


class _IterationLog:
    """The ``verbose=True`` progress lines of :func:`iht`, written to stderr."""

    def __init__(self, backend: str, shape: tuple[int, int], k: int) -> None:
        self.t0 = time.perf_counter()
        print(
            f"chita_core.iht: n={shape[0]}, p={shape[1]}, k={k}, backend={backend}\n"
            f"{'iter':>6} {'objective':>14} {'rel. decrease':>14} {'step':>10} "
            f"{'support':>8} {'time (s)':>9}",
            file=sys.stderr,
        )

    def stage(self, label: str, f_value: float, seconds: float) -> None:
        print(f"  stage {label}: objective {f_value:.6e} ({seconds:.2f} s)", file=sys.stderr)

    def line(self, it: int, f_old: float, f_new: float, tau: float, changed: bool) -> None:
        rel = (f_old - f_new) / max(abs(f_old), abs(f_new), 1.0)
        print(
            f"{it:>6} {f_new:>14.6e} {rel:>14.3e} {tau:>10.3e} "
            f"{'moved' if changed else 'kept':>8} {time.perf_counter() - self.t0:>9.2f}",
            file=sys.stderr,
        )


def iht(
    A: Any,
    b: Any,
    k: int,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    w0: Any = None,
    max_iter: int | None = None,
    tol: float = 1e-6,
    init: str = "auto",
    active_set: bool = True,
    refine: bool = True,
    swaps: bool | int = True,
    backend: str = "auto",
    callback: Callable[[IHTProgress], bool | None] | None = None,
    verbose: bool = False,
    check_finite: bool = True,
) -> IHTResult:
    """Sparse least squares: CHITA's IHT, greedy OBS, exact refits and swap local search.

    Minimises ``0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2`` subject to at most ``k``
    nonzeros, in stages, each keeping the best point found so far:

    1. start supports (``init``): the k largest ``|w0|`` (magnitude pruning when ``w0`` is
       ``w_bar``) and, with the OBS inits, the k largest OBS saliencies; with ``refine`` each
       is refit exactly, so the result is never worse than "magnitude + backsolve";
    2. IHT with CHITA's line search on CHITA's active set (DESIGN.md section 2), followed by
       an exact refit on its support when ``refine``;
    3. greedy OBS (``init`` "auto" where affordable, or "greedy"): backward elimination, one
       weight at a time with exact updates, from a superset of the best support so far;
    4. swap local search (``swaps``): exchanges of one kept and one pruned weight, each scored
       exactly through rank-2 updates of an ``n x n`` inverse, applied while they lower f.

    Parameters
    ----------
    A : array, shape (n, p)
        Per-sample gradients (or any design matrix), float32 or float64, C- or F-contiguous
        (F order is faster: support mat-vecs then read only the support's columns). NumPy,
        torch (CPU), JAX (CPU) or anything with ``__array_interface__``; never copied.
    b : array, shape (n,)
        Targets, same dtype as ``A``. For pruning, ``b = A @ w_bar``.
    k : int
        Number of weights to keep, ``1 <= k <= p``.
    ridge : float, default 0.0
        Weight of ``0.5 ||w - w_bar||^2``.
    w_bar : array, shape (p,), optional
        Reference (dense) weights; zeros if omitted.
    w0 : array, shape (p,), optional
        Starting point, hard-thresholded to ``k`` entries; defaults to ``w_bar``.
    max_iter : int, optional
        Maximum number of IHT iterations. Default: 100 for IHT alone (``refine=False``), 30
        in the full pipeline, where swap search moves the support more cheaply than IHT's
        slow tail (measured at ResNet20 size: 100 iterations improved nothing after refits).
    tol : float, default 1e-6
        Stop IHT when ``|f_old - f| <= tol * max(|f|, |f_old|, 1)``.
    init : {"auto", "magnitude", "obs", "obs_multistep", "greedy"}, default "auto"
        Start supports, each refit exactly, plus a greedy stage after IHT. "magnitude": the k
        largest ``|w0|``. "obs": the k largest OBS saliencies ``w_q^2 / [H^-1]_qq``
        (H = A^T A + ridge I through Woodbury, O(n^2 p)). "obs_multistep": OBS in 4 steps with
        refits in between (about 2.5x the cost; the one-shot OBS support comes with it).
        "greedy": after IHT, greedy OBS (remove the least salient weight, update the others,
        repeat) from a superset of ``max(3k, 2n, p/4)`` columns, the best support so far plus the
        weights ranked highest by ``|w0|`` or by ``w0_j^2 (||a_j||^2 + ridge)``; it runs in
        n-space, O(n m^2 / 2 + n^2 m) for m columns, never with a p x p matrix. "auto":
        magnitude, then greedy OBS with m capped so that it costs at most
        4e10 multiply-adds (about 2 s here); where not even that fits, one-shot OBS when
        ``n^2 p <= 2e10`` and multistep OBS when ``n^2 p <= 1e10``. The best refit is kept.
        Tiny problems (p <= 32 and at most 2e5 supports) are also solved exactly by
        enumeration.
    active_set : bool, default True
        CHITA's active set: IHT on the floor(1.5 k) columns picked by a 1/L gradient step
        (L from power iterations), enlarged by full-gradient steps that lower f. Iterations
        then read only the active columns of A. False runs IHT on all columns.
    refine : bool, default True
        Refit exactly (backsolve) on every start support and on the supports IHT settles on.
        False runs plain IHT from the thresholded ``w0``.
    swaps : bool or int, default True
        Swap local search after IHT: True allows up to 2000 swaps, an int sets the budget,
        False or 0 turns it off. It stops earlier when no screened swap lowers f. With True it
        also runs from IHT's support when that beat the start supports but greedy OBS then
        found a better one, and keeps the better end point.
    backend : {"auto", "cpp", "numba"}, default "auto"
        Kernel backend; "auto" takes the compiled one when it is importable.
    callback : callable, optional
        Called as ``callback(IHTProgress)`` after each iteration; return True to stop.
    verbose : bool, default False
        Print one line per iteration (objective, relative decrease, step, support moves, time)
        to stderr.
    check_finite : bool, default True
        Scan the inputs for NaN/Inf (one extra pass over ``A``).

    Returns
    -------
    IHTResult
        ``w`` (p,), ``support`` (k,) sorted int64, ``objective``, ``n_iter``, ``converged``,
        ``history`` (of the IHT stage), ``backend``, ``elapsed``, ``stages``.

    Examples
    --------
    >>> import numpy as np, chita_core
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((200, 500)) / np.sqrt(200)
    >>> w_true = np.zeros(500); w_true[[3, 50, 400]] = [2.0, -1.5, 1.0]
    >>> res = chita_core.iht(A, A @ w_true, k=3)
    >>> res.support.tolist()
    [3, 50, 400]
    >>> bool(res.objective < 1e-8)
    True
    """
    t0 = time.perf_counter()
    prob, name, kernels = _prepare(A, b, ridge, w_bar, check_finite, backend)
    p = prob.A.shape[1]
    k = check_index(k, "k", 1, p)
    tol = check_nonneg_float(tol, "tol")
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable or None, got {type(callback).__name__}")
    with prob.stream():
        start = prob.w_bar if w0 is None else prob.vector(w0, "w0", check_finite)
    if init not in _INITS:
        raise ValueError(f"`init` must be one of {', '.join(map(repr, _INITS))}; got {init!r}")
    if not isinstance(active_set, (bool, np.bool_)):
        raise TypeError(f"`active_set` must be a bool, got {type(active_set).__name__}")
    if not isinstance(refine, (bool, np.bool_)):
        raise TypeError(f"`refine` must be a bool, got {type(refine).__name__} {refine!r}")
    if isinstance(swaps, (bool, np.bool_)):
        max_swaps = _DEFAULT_SWAPS if swaps else 0
    else:
        max_swaps = check_index(swaps, "swaps", 0, np.iinfo(np.int64).max)
    if max_iter is None:
        max_iter = _PIPELINE_ITERS if refine else _PLAIN_ITERS
    max_iter = check_index(max_iter, "max_iter", 0, np.iinfo(np.int64).max)
    log = _IterationLog(name, prob.A.shape, k) if verbose else None
    # Floating-point range: the stages compare objectives and keep the best finite point, so
    # an overflow or underflow inside a score (problems scaled near 1e-150) only loses that
    # candidate; the result itself is checked below.
    with prob.stream(), np.errstate(all="ignore"):
        res = _solve(
            prob,
            name,
            kernels,
            k,
            start,
            max_iter,
            tol,
            init,
            active_set,
            refine,
            max_swaps,
            callback,
            log,
            t0,
            swap_both=swaps is True or swaps is np.True_,
        )
    if not np.isfinite(res.objective):
        raise ValueError(
            "the objective of `A` and `b` is not representable in float64 at this scale "
            f"(got {res.objective}); rescale them: iht(A / s, b / s, k, ridge=ridge / s**2) "
            "has the same solution w"
        )
    return res


# The solver forms squared gradients and curvatures: ||A||_F^2 (||b||^2 + ||A||_F^2 ||w||^2) must
# stay well inside float64's range (about 1.8e308), leaving room for sums over p entries.
_MAGNITUDE_LIMIT = 1e280


def _check_magnitude(prob: _Problem, h: Any, start: Any) -> None:
    """ValueError naming `A` when the problem's squares overflow float64 (entries of A near 1e70
    or more, or weights whose ridge term does); after rescaling the same w solves it."""
    xp = array_module(h)
    fro2 = float(h.sum())
    with np.errstate(over="ignore", invalid="ignore"):
        n, p = prob.A.shape
        wmax = max(float(xp.abs(start).max()), float(xp.abs(prob.w_bar).max()))
        bmax = float(xp.abs(prob.b).max())
        # Bounds on ||g||^2, g = A^T r + ridge (w - w_bar), and on f, at points of size wmax.
        w2 = wmax * wmax * p
        size = fro2 * (bmax * bmax * n + fro2 * w2) + prob.ridge * (prob.ridge + 1.0) * w2
    if not (np.isfinite(fro2) and np.isfinite(size) and size < _MAGNITUDE_LIMIT):
        raise ValueError(
            f"`A` and `b` are too large in magnitude for float64 (||A||_F^2 = {fro2:.3g}, "
            f"max |b| = {bmax:.3g}, max |w_bar|, |w0| = {wmax:.3g}, ridge = {prob.ridge:.3g}): "
            "the squared gradients the solver forms would overflow. Rescale them: "
            "iht(A / s, b / s, k, ridge=ridge / s**2) has the same solution w"
        )


def _solve(
    prob: _Problem,
    name: str,
    kernels: Any,
    k: int,
    start: Any,
    max_iter: int,
    tol: float,
    init: str,
    active_set: bool,
    refine: bool,
    max_swaps: int,
    callback: Callable[[IHTProgress], bool | None] | None,
    log: _IterationLog | None,
    t0: float,
    swap_both: bool = False,
) -> IHTResult:
    """The stages of :func:`iht` on a validated problem (host or device vectors alike)."""
    xp = array_module(prob.b)
    p = prob.A.shape[1]
    stages: list[tuple[str, float, float]] = []

    def stage(label: str, f_value: float, since: float) -> float:
        now = time.perf_counter()
        stages.append((label, f_value, now - since))
        if log is not None:
            log.stage(label, f_value, now - since)
        return now

    # Stage 1: start supports.
    t = time.perf_counter()
    n = prob.A.shape[0]
    # Size of the superset greedy OBS (stage 3) starts from; None: no greedy stage.
    greedy_m = None
    if refine and k < p and init in ("auto", "greedy"):
        budget = _GREEDY_AUTO if init == "auto" else float("inf")
        greedy_m = greedy_screen_size(n, p, k, _GREEDY_MULTIPLE, budget)
    # Column curvatures ||a_j||^2 (one pass over A): scores, and the range check below.
    h = xp.empty(p)
    kernels.column_sqnorms(prob.A, h)
    _check_magnitude(prob, h, start)
    support = xp.empty(k, dtype=np.int64)
    kernels.topk(start, k, support)
    kinv = None  # (support, K^-1) of the best refit, when refit formed it
    if refine:
        w, r, f, inv = refit(kernels, prob, support, keep_inverse=True)
        kinv = (support.copy(), inv)
        t = stage("magnitude + refit", f, t)
        cost = float(n) * n * p  # multiply-adds of one OBS saliency pass
        # With "auto", OBS starts only where greedy OBS does not run (it supersedes them).
        obs_auto = init == "auto" and greedy_m is None
        multistep = init == "obs_multistep" or (obs_auto and cost <= _MULTISTEP_AUTO)
        oneshot = init == "obs" or (obs_auto and cost <= _OBS_AUTO)
        others: list[tuple[str, np.ndarray]] = []
        if multistep and k < p:
            ms, os_ = obs_multistep_support(kernels, prob, k, h)
            others = [("obs", os_), ("obs_multistep", ms)]
        elif oneshot and k < p:
            saliency = obs_saliency(kernels, prob, h)
            others = [("obs", largest(kernels, saliency, k))]
        for label, other in others:
            w2, r2, f2, inv = refit(kernels, prob, other, keep_inverse=True)
            t = stage(f"{label} + refit", f2, t)
            if f2 < f:
                support, w, r, f, kinv = other, w2, r2, f2, (other.copy(), inv)
        tiny = init == "auto" and k < p and prob.where is None  # (enumeration is host-only)
        exact = exhaustive_support(prob, k) if tiny else None
        if exact is not None:
            w2, r2, f2 = refit(kernels, prob, exact)
            t = stage("exhaustive + refit", f2, t)
            if f2 < f:
                support, w, r, f = exact, w2, r2, f2
    best = (support.copy(), w, r, f) if refine else None

    # Stage 2: IHT with CHITA's line search (on the active set by default) from the start,
    # not from a refit point (a stationary point on its support, where IHT has little room);
    # with refine, an exact refit on the support it reaches. The best point seen is kept.
    def on_iter(it: int, f_old: float, f_new: float, tau: float, changed: bool) -> bool:
        if log is not None:
            log.line(it, f_old, f_new, tau, changed)
        return bool(callback is not None and callback(IHTProgress(it, f_new, tau, changed)))

    driver = active_set_iht if active_set else plain_iht
    run = driver(kernels, prob, k, start, max_iter, tol, on_iter)
    history, n_iter = list(run.history), run.n_iter
    if refine:  # a candidate among exact points: its f from A, not from carried residuals
        run.exact(kernels, prob)
    if best is None or run.f < best[3]:
        best = (run.support.copy(), run.w.copy(), run.r.copy(), run.f)
    iht_point = None  # IHT's refit, where it beat every start support (its own basin)
    if refine and not run.stopped:
        w, r, f, inv = refit(kernels, prob, run.support, keep_inverse=True)
        if f < best[3]:
            best = (run.support.copy(), w, r, f)
            kinv = (run.support.copy(), inv)
            iht_point = (*best, inv)
    support, w, r, f = best
    converged, stopped = run.converged, run.stopped
    if max_iter > 0:
        label = "active-set iht" if active_set else "iht"
        t = stage(label + (" + refit" if refine else ""), f, t)

    # Stage 3: greedy OBS down to k from a superset: the best support so far plus the weights
    # ranked highest by |w0| or by their OBD saliency, as large as the budget allows.
    if greedy_m is not None and not stopped:
        screen = greedy_screen(kernels, prob, start, support, greedy_m, h)
        greedy = greedy_obs_support(kernels, prob, screen, k, h)
        w2, r2, f2, inv = refit(kernels, prob, greedy, keep_inverse=True)
        t = stage(f"greedy obs from {screen.size} + refit", f2, t)
        if f2 < f:
            support, w, r, f, kinv = greedy, w2, r2, f2, (greedy.copy(), inv)

    # Stage 4: swap local search from the exact optimum on the best support; with the default
    # budget also from IHT's support when greedy OBS then found a better one (two basins: local
    # search from the worse start sometimes ends lower). The better end point is kept.
    if refine and max_swaps > 0 and not stopped and k < p:
        same = kinv is not None and bool(xp.array_equal(kinv[0], support))
        known = kinv[1] if same else None
        support, w, r, f, sw = swap_search(
            kernels,
            prob,
            support,
            w,
            r,
            f,
            h,
            max_swaps=max_swaps,
            max_rounds=_SWAP_ROUNDS,
            Kinv=known,
        )
        t = stage(f"swaps ({sw.swaps} in {sw.rounds} rounds)", f, t)
        if swap_both and iht_point is not None and not xp.array_equal(iht_point[0], support):
            S2, w2, r2, f2, inv2 = iht_point
            S2, w2, r2, f2, sw2 = swap_search(
                kernels,
                prob,
                S2,
                w2,
                r2,
                f2,
                h,
                max_swaps=max_swaps,
                max_rounds=_SWAP_ROUNDS,
                Kinv=inv2,
            )
            if f2 < f:
                support, w, r, f = S2, w2, r2, f2
            t = stage(
                f"local search from IHT's support ({sw2.swaps} swaps in {sw2.rounds} rounds)", f, t
            )

    return IHTResult(
        w=prob.output(w),
        support=prob.output(support, cast=False),
        objective=f,
        n_iter=n_iter,
        converged=converged,
        history=history,
        backend=name,
        elapsed=time.perf_counter() - t0,
        stages=stages,
    )


def backsolve(
    A: Any,
    b: Any,
    support: Any,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    backend: str = "auto",
    check_finite: bool = True,
) -> Any:
    """Exact minimiser of the objective with the nonzeros restricted to ``support``.

    Solves ``(A_S^T A_S + ridge I) w_S = A_S^T b + ridge w_bar_S``. When ``|S| > n`` it uses the
    push-through (Woodbury) form with an ``n x n`` factor, ``O(n^2 |S| + n^3)``; the
    ``|S| x |S|`` matrix is never formed. Every factorisation is guarded (equilibrated Cholesky
    with refinement; an SVD of the support columns when the system is ill-conditioned), so the
    result is optimal to rounding at any condition number. With ``ridge == 0`` and more support
    columns than rows, the problem has many minimisers; the one closest to ``w_bar`` is returned.

    Parameters
    ----------
    A : array, shape (n, p)
        As in :func:`iht`.
    b : array, shape (n,)
        Targets, same dtype as ``A``.
    support : array of int, shape (m,)
        Distinct column indices to keep (any order).
    ridge : float, default 0.0
        Weight of ``0.5 ||w - w_bar||^2``.
    w_bar : array, shape (p,), optional
        Reference weights; zeros if omitted.
    backend : {"auto", "cpp", "numba"}, default "auto"
    check_finite : bool, default True

    Returns
    -------
    w : array, shape (p,)
        Zero off ``support``; in the library and dtype of ``A``.

    Examples
    --------
    >>> import numpy as np, chita_core
    >>> rng = np.random.default_rng(1)
    >>> A = rng.standard_normal((50, 20))
    >>> b = rng.standard_normal(50)
    >>> w = chita_core.backsolve(A, b, [2, 5, 7])
    >>> ref = np.linalg.lstsq(A[:, [2, 5, 7]], b, rcond=None)[0]
    >>> bool(np.allclose(w[[2, 5, 7]], ref))
    True
    """
    prob, _, kernels = _prepare(A, b, ridge, w_bar, check_finite, backend)
    with prob.stream():
        if prob.where is None:
            idx = check_support(support, prob.A.shape[1])
        else:
            idx = device_indices(support, prob.A.shape[1])
        xp = array_module(prob.b)
        values, _ = support_values(kernels, prob, idx)
        w = xp.zeros(prob.A.shape[1])
        w[idx] = values
        return prob.output(w)


def objective(
    A: Any,
    b: Any,
    w: Any,
    *,
    ridge: float = 0.0,
    w_bar: Any = None,
    backend: str = "auto",
    check_finite: bool = True,
) -> float:
    """``0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2``, accumulated in float64.

    Reads only the columns of ``A`` where ``w`` is nonzero when ``A`` is in F order.

    Examples
    --------
    >>> import numpy as np, chita_core
    >>> A = np.eye(3); b = np.ones(3)
    >>> chita_core.objective(A, b, np.array([1.0, 0.0, 0.0]))
    1.0
    """
    prob, _, kernels = _prepare(A, b, ridge, w_bar, check_finite, backend)
    with prob.stream():
        w64 = prob.vector(w, "w", check_finite)
        nz = array_module(w64).flatnonzero(w64).astype(np.int64)
        return objective_value(residual(kernels, prob, nz, w64[nz]), w64, prob.w_bar, prob.ridge)
