"""Layer-wise pruning: the L0-constrained quadratic in the tall regime (docs/design.md,
section 14).

``prune_layer(W, H, sparsity)`` prunes one linear layer (W: rows x d_in) against the
calibration statistics ``H = X^T X / N`` of its inputs: every row minimises
``(w - w_bar)^T H (w - w_bar)`` under the pattern's budget, all rows sharing H. The solver starts
from SparseGPT's sweep and, planned within ``effort`` times SparseGPT's modeled time, searches
each row's mask by exact exchanges (the swap search, or its sweep over blocks of inputs on wide
layers; every feasible mask or greedy OBS first on small ones; ADMM for a layer-wide budget),
refits every row exactly on its mask and keeps the lowest error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._interop import as_host_array, library_of
from .._pipeline import StageRecord
from . import _cost
from ._admm import admm_mask
from ._problem import LayerProblem, Pattern, _core_module, parse_pattern
from ._refit import exact_refit, pcg_refit, refit
from ._rows import enumerate_masks, greedy_obs_blocked, greedy_obs_rows, n_row_masks
from ._sparsegpt import sparsegpt
from ._swaps import swap_search, swap_sweep

__all__ = ["LayerResult", "Pattern", "prune_layer", "sparsegpt_layer"]

_STARTS = ("magnitude", "wanda", "sparsegpt")
_SEARCHES = ("auto", "swap", "sweep", "greedy", "admm", "none")
# Small layers get the exact per-row stages (section 14.5): every feasible mask of a row
# enumerated while there are at most _ENUM_MASKS of them and the work (per mask its k x k
# inverse and every row's quadratic form) is at most _ENUM_WORK multiply-adds; N:M greedy OBS
# (unblocked) while its rows x d x d inverses take at most _GREEDY_ENTRIES numbers and its
# downdates _GREEDY_WORK multiply-adds.
_ENUM_MASKS = 5000
_ENUM_WORK = 2e8
_GREEDY_ENTRIES = 8e6
_GREEDY_WORK = 2e9
# Block sizes the sweep tries, largest first (the whole row, the swap search proper, first).
_BLOCKS = (1024, 768, 512, 384, 256, 128, 64)
# The search's modeled seconds are at least this on any layer (tiny layers: where effort x
# SparseGPT's time is below the stages' fixed costs).
_MIN_SECONDS = 0.05


@dataclass
class LayerResult:
    """What :func:`prune_layer` returns."""

    W: Any  #: pruned weights, in the library, device and dtype of the input W
    mask: Any  #: bool, True = kept; a NumPy array (a torch tensor for torch input)
    error: float  #: sum over rows of (w - w_bar)^T H (w - w_bar), on the caller's (undamped) H
    stages: list[StageRecord] = field(default_factory=list)  #: best error after each stage
    pattern: str = ""  #: the pattern solved ("unstructured", "2:4", ...)
    #: the planner's modeled seconds of the stages it priced, by stage label (section 14.7)
    modeled: dict[str, float] = field(default_factory=dict)


def _host64(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 NumPy array (a copy: W and H are small next to the solver's work)."""
    lib = library_of(x)
    if lib == "torch":
        import torch

        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    if lib == "cupy":
        import cupy as cp

        return cp.asnumpy(x).astype(np.float64)
    arr = as_host_array(x, name)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"`{name}` must be a real floating-point array, got dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64)


def _like(arr: np.ndarray, ref: Any) -> Any:
    """``arr`` in the library, device and dtype of ``ref``."""
    lib = library_of(ref)
    if lib == "torch":
        import torch

        t = torch.from_numpy(arr)
        return t.to(device=ref.device, dtype=ref.dtype if arr.dtype != np.bool_ else torch.bool)
    if lib == "cupy":
        import cupy as cp

        return cp.asarray(arr, dtype=ref.dtype if arr.dtype != np.bool_ else bool)
    if lib in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp.asarray(arr, dtype=ref.dtype if arr.dtype != np.bool_ else bool)
    return arr.astype(np.asarray(ref).dtype) if arr.dtype != np.bool_ else arr


def _prepare(W: Any, H: Any, sparsity: Any, pattern: Any, damp: Any, budget: str) -> LayerProblem:
    W64 = _host64(W, "W")
    if W64.ndim != 2 or min(W64.shape) < 1:
        raise ValueError(f"`W` must be 2-D (rows x d_in) and non-empty, got shape {W64.shape}")
    rows, d = W64.shape
    H64 = _host64(H, "H")
    if H64.shape != (d, d):
        raise ValueError(f"`H` must be ({d}, {d}) for `W` with {d} inputs, got {H64.shape}")
    if not np.isfinite(W64).all():
        raise ValueError("`W` contains NaN or Inf")
    if not np.isfinite(H64).all():
        raise ValueError("`H` contains NaN or Inf")
    asym = float(np.abs(H64 - H64.T).max())
    if asym > 1e-6 * max(float(np.abs(H64).max()), 1e-300):
        raise ValueError(f"`H` must be symmetric (X^T X / N), max |H - H^T| = {asym:.3g}")
    if float(np.diagonal(H64).min()) < 0:
        raise ValueError(
            "`H` must be positive semidefinite (X^T X / N); it has a negative diagonal"
        )
    if isinstance(damp, bool) or not isinstance(damp, (int, float, np.floating)):
        raise TypeError(f"`damp` must be a number >= 0, got {type(damp).__name__}")
    if not (np.isfinite(damp) and damp >= 0):
        raise ValueError(f"`damp` must be finite and >= 0, got {damp}")
    pat = parse_pattern(pattern, sparsity, budget, rows, d)
    H64 = 0.5 * (H64 + H64.T)
    prob = LayerProblem(W64, H64, float(damp), pat)
    if float(damp) == 0.0 and np.linalg.eigvalsh(prob.Hd)[0] <= 1e-12:
        prob = LayerProblem(W64, H64, 1e-8, pat)  # singular H without damping: a tiny one
    return prob


def prune_layer(
    W: Any,
    H: Any,
    sparsity: float | None = None,
    *,
    pattern: str = "unstructured",
    damp: float = 0.01,
    budget: str = "row",
    effort: float = 8.0,
    search: str = "auto",
    starts: tuple[str, ...] = ("sparsegpt",),
) -> LayerResult:
    """Prune one linear layer to a sparsity pattern, minimising its reconstruction error.

    Every row i of ``W`` (rows x d_in) keeps a mask K_i under the pattern, with the weights on
    it the exact minimiser of ``(w - w_i)^T H (w - w_i)``, where ``H = X^T X / N`` from the
    layer's calibration inputs X (any positive scaling of H gives the same answer), damped by
    ``damp`` x mean(diag H) for the solve.

    Parameters
    ----------
    W : array (rows, d_in)
        NumPy, torch (any device, any float dtype), CuPy or JAX.
    H : array (d_in, d_in)
        Symmetric positive semidefinite.
    sparsity : float in [0, 1)
        Fraction of the weights pruned (ignored for N:M): every row loses
        round-half-up(sparsity x d_in) weights, or with ``budget="layer"`` the layer loses
        round-half-up(sparsity x rows x d_in) in all, spread over the rows as the solver finds
        best.
    pattern : "unstructured" or "N:M"
        "N:M" (e.g. "2:4"): in every group of M consecutive inputs of a row, N are kept.
    damp : float, default 0.01
    budget : "row" or "layer", default "row"
    effort : float, default 8
        The mask search's modeled time, in multiples of SparseGPT's on the same layer
        (section 14.7): it decides how large the blocks of the swap search are.
    search : str, default "auto"
        The mask search after the starts: "auto" (planned within ``effort``: the exact stages
        on small layers, the swap search per row, or its sweep over blocks of inputs; ADMM then
        the swap search for a layer budget), or one forced: "swap" (the whole row), "sweep",
        "greedy" (greedy OBS per row), "admm" or "none" (the starts refitted).
    starts : the start masks, among "magnitude", "wanda", "sparsegpt" (default the last)

    Returns
    -------
    LayerResult
        ``W`` (like the input), ``mask`` (True = kept), ``error`` (the summed rows' objective
        on the undamped H), ``stages`` (best error after each stage and its seconds).

    Examples
    --------
    >>> import numpy as np
    >>> from chita_core import prune_layer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((256, 32)) @ rng.standard_normal((32, 32))
    >>> W = rng.standard_normal((8, 32))
    >>> res = prune_layer(W, X.T @ X / 256, 0.5)
    >>> res.mask.sum(axis=1).tolist() == [16] * 8
    True
    """
    if pattern == "unstructured" and sparsity is None:
        raise TypeError('`sparsity` is required for pattern="unstructured"')
    bad = [s for s in starts if s not in _STARTS] if isinstance(starts, (tuple, list)) else [0]
    if bad or not starts:
        raise ValueError(f"`starts` must be a non-empty sequence of {_STARTS}, got {starts!r}")
    if search not in _SEARCHES:
        raise ValueError(f"`search` must be one of {_SEARCHES}, got {search!r}")
    if isinstance(effort, bool) or not isinstance(effort, (int, float, np.floating)):
        raise TypeError(f"`effort` must be a positive number, got {type(effort).__name__}")
    if not (np.isfinite(effort) and effort > 0):
        raise ValueError(f"`effort` must be finite and > 0, got {effort}")
    prob = _prepare(W, H, 0.0 if sparsity is None else sparsity, pattern, damp, budget)
    pat, Hd, HW = prob.pattern, prob.Hd, prob.HW
    records: list[StageRecord] = []
    # (rows' errors, W, mask, rows whose W is the exact refit on their mask)
    best: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    since = time.perf_counter()
    by_row = pat.kind in ("row", "nm")  # (rows independent: each keeps its best stage)

    modeled: dict[str, float] = {}

    def offer(
        label: str, Wc: np.ndarray, mask: np.ndarray, exact: bool = True, cost: float = -1.0
    ) -> None:
        nonlocal best, since
        if cost >= 0:
            modeled[label] = cost
        err = prob.damped_errors(Wc)
        ex = np.full(prob.rows, exact)
        if best is None:
            best = (err, Wc, mask, ex)
        elif by_row:
            better = err < best[0]
            if better.any():
                Wn, mn, en = best[1].copy(), best[2].copy(), best[3].copy()
                Wn[better], mn[better], en[better] = Wc[better], mask[better], exact
                best = (np.where(better, err, best[0]), Wn, mn, en)
        elif err.sum() < best[0].sum():
            best = (err, Wc, mask, ex)
        now = time.perf_counter()
        records.append(StageRecord(label, prob.error(best[1]), now - since))
        since = now

    rows, d = prob.rows, prob.d
    k = pat.kept_per_row()
    separable = k is not None and 0 < k < d
    threads = _threads()
    allowed = max(effort * _cost.sparsegpt_seconds(rows, d), _MIN_SECONDS)
    exact = False
    if separable and search == "auto":
        count = n_row_masks(prob)
        if count <= _ENUM_MASKS and count * (k**3 + rows * k * k) <= _ENUM_WORK:
            mask = enumerate_masks(prob)
            offer(f"exhaustive ({count} masks per row)", refit(Hd, HW, mask), mask)
            exact = True  # (the optimum: nothing below can lower it)
    if not exact:
        for name in starts:
            if name == "sparsegpt":
                Ws, mask = sparsegpt(prob)
                offer("sparsegpt", Ws, mask, exact=False, cost=_cost.sparsegpt_seconds(rows, d))
                allowed -= _cost.sparsegpt_seconds(rows, d)
                continue
            score = np.abs(prob.W_bar)
            if name == "wanda":
                score = score * np.sqrt(np.maximum(np.diagonal(prob.H), 0.0))[None, :]
            mask = pat.project(score)
            offer(f"{name} + refit", refit(Hd, HW, mask), mask)
    if exact or k in (0, d):  # (nothing to search: every weight kept, or none)
        pass
    elif search == "none":
        m0 = best[2]
        offer("refit", refit(Hd, HW, m0, best[1]), m0)
    elif separable:
        _row_search(prob, search, allowed, threads, best[2], offer)
    else:  # a layer budget: ADMM, then the swap search within the rows' counts where it fits
        m0 = best[2]
        offer("start refit", refit(Hd, HW, m0, best[1]), m0)
        if search in ("auto", "admm"):
            mask, iters = admm_mask(prob, best[1])
            offer(f"admm ({iters} it) + refit", refit(Hd, HW, mask, best[1]), mask)
        if search == "swap" or (search == "auto" and _polish_fits(prob, best[2], allowed)):
            mask, Wc, swaps = swap_search(prob, best[2])
            offer(f"swap search ({swaps.mean():.1f} per row)", Wc, mask)
    _, Wb, mb, ex = best
    if not ex.all():  # rows still on SparseGPT's own weights: refitted on its mask
        rest = np.flatnonzero(~ex)
        Wb = Wb.copy()
        Wb[rest] = exact_refit(Hd, HW[rest], mb[rest])
    Wb = np.where(mb, Wb, 0.0)
    return LayerResult(_like(Wb, W), _like(mb, W) if library_of(W) == "torch" else mb,
                       prob.error(Wb), records, pat.name, modeled)  # fmt: skip


def _threads() -> int:
    core = _core_module()
    return max(1, int(core.num_threads())) if core is not None else 1


def _polish_fits(prob: LayerProblem, mask: np.ndarray, allowed: float) -> bool:
    ks = mask.sum(axis=1)
    k = int(np.median(ks)) if ks.size else 0
    return _cost.swap_seconds(prob.rows, prob.d, k, False, _threads()) <= allowed


def _row_search(prob, search, allowed, threads, start, offer) -> None:
    """The per-row mask search of a row-separable pattern (section 14.7): greedy OBS then the
    swap search where greedy fits the effort, else the swap search on the whole row where it
    fits, else its sweep over the largest blocks that fit, then the exact refit."""
    pat, rows, d = prob.pattern, prob.rows, prob.d
    k = pat.kept_per_row()
    nm = pat.kind == "nm"
    entries = rows * d * d
    if nm:
        greedy_ok = entries <= _GREEDY_ENTRIES and entries * (d - k) <= _GREEDY_WORK
        greedy_cost = _cost.greedy_seconds(rows, d, k) * 4  # (unblocked)
    else:
        greedy_ok = True
        greedy_cost = _cost.greedy_seconds(rows, d, k)
    polish = _cost.swap_seconds(rows, d, k, nm, threads)
    if search == "greedy" or (search == "auto" and greedy_ok and greedy_cost + polish <= allowed):
        if nm:
            mask = greedy_obs_rows(prob)
            offer("greedy obs per row + refit", refit(prob.Hd, prob.HW, mask), mask)
        else:
            mask, Wg = greedy_obs_blocked(prob)
            offer("greedy obs per row", pcg_refit(prob.Hd, prob.HW, mask, Wg), mask)
        if search == "auto":  # (greedy's mask is a start the exchanges still improve)
            mask, Wc, swaps = swap_search(prob, mask)
            offer(f"swap search ({swaps.mean():.1f} per row)", Wc, mask)
        return
    block, cost = d, -1.0
    if search in ("auto", "sweep"):
        fits = [d] if search == "auto" else []
        # The fixed sizes and the equal splits of the row (576 inputs: 288 + 288 measured 0.660
        # of SparseGPT's error against 0.676 for 256 + 256 + 64, in the same time), largest first.
        sizes = set(_BLOCKS) | {-(-d // parts) for parts in range(2, d // 64 + 1)}
        fits += sorted({b - b % pat.m if nm else b for b in sizes if 64 <= b < d}, reverse=True)
        if len(fits) == (search == "auto"):  # (no block below d: halves)
            g = pat.m if nm else 1
            fits.append(max(g, d // 2 - d // 2 % g))
        for b in fits:
            block, cost = b, _search_seconds(prob, b, threads)
            if cost <= allowed:
                break
    if block >= d:
        cost = cost if cost >= 0 else _search_seconds(prob, d, threads)
        mask, Wc, swaps = swap_search(prob, start)
        offer(f"swap search ({swaps.mean():.1f} per row)", Wc, mask, cost=cost)
    else:
        Wc, mask = swap_sweep(prob, block)
        Wc = refit(prob.Hd, prob.HW, mask, Wc)
        offer(f"swap sweep (blocks of {block}) + refit", Wc, mask, cost=cost)


def _search_seconds(prob: LayerProblem, block: int, threads: int) -> float:
    """Modeled seconds of the swap search (block >= d) or of its sweep and the final refit."""
    rows, d, k = prob.rows, prob.d, prob.pattern.kept_per_row()
    nm = prob.pattern.kind == "nm"
    if block >= d:
        return _cost.swap_seconds(rows, d, k, nm, threads)
    sweep = _cost.sweep_seconds(rows, d, block, k / d, prob.pattern.m if nm else 0, threads)
    return sweep + _cost.refit_seconds(rows, d, k, threads)


def sparsegpt_layer(
    W: Any, H: Any, sparsity: float | None = None, *, pattern: str = "unstructured",
    damp: float = 0.01, budget: str = "row", block: int = 128,
) -> LayerResult:  # fmt: skip
    """SparseGPT alone (the paper's sweep, section 14.3): the baseline ``prune_layer`` is
    measured against. Same arguments and result as :func:`prune_layer`."""
    prob = _prepare(W, H, 0.0 if sparsity is None else sparsity, pattern, damp, budget)
    t = time.perf_counter()
    Ws, mask = sparsegpt(prob, block)
    rec = [StageRecord("sparsegpt", prob.error(Ws), time.perf_counter() - t)]
    m = _like(mask, W) if library_of(W) == "torch" else mask
    return LayerResult(_like(Ws, W), m, prob.error(Ws), rec, prob.pattern.name)
