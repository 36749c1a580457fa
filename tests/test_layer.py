"""Layer-wise pruning (chita_core.prune_layer, docs/design.md section 14) against the
independent float64 reference of tests/reference.py: exact refits, every pattern exact, brute
force and textbook greedy OBS on small layers, SparseGPT's sweep, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

import chita_core
from chita_core.layer import prune_layer, sparsegpt_layer
from chita_core.layer._problem import Pattern, parse_pattern
from chita_core.layer._refit import exact_refit, pcg_refit


def _layer(rows=6, d=12, N=200, seed=0, outliers=2):
    """W and H = X^T X / N from correlated inputs with a few large ("outlier") features."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d)) @ (np.eye(d) + 0.4 * rng.standard_normal((d, d)))
    if outliers:
        X[:, rng.choice(d, outliers, replace=False)] *= 8.0
    W = rng.standard_normal((rows, d))
    return W, X.T @ X / N


def _check_exact_on_mask(res, W, H, damp=0.01):
    """W is the exact refit of every row on its mask (zero off it), and error is the undamped
    objective of those weights."""
    Hd = ref.layer_damped(H, damp)
    Wr, mask = np.asarray(res.W, dtype=np.float64), np.asarray(res.mask)
    assert np.all(Wr[~mask] == 0)
    for i in range(W.shape[0]):
        np.testing.assert_allclose(Wr[i], ref.row_refit(Hd, W[i], mask[i]), rtol=1e-7, atol=1e-9)
    total = sum(ref.row_error(H, Wr[i], W[i]) for i in range(W.shape[0]))
    assert res.error == pytest.approx(total, rel=1e-9)


# ------------------------------------------------------------------------------------ patterns


@pytest.mark.parametrize("d", [8, 100])
def test_pattern_projection_meets_every_budget(d):
    rng = np.random.default_rng(1)
    S = rng.standard_normal((5, d))
    row = parse_pattern("unstructured", 0.55, "row", 5, d)
    m = row.project(S)
    assert row.check(m) and np.all(m.sum(axis=1) == d - round(0.55 * d + 1e-9))
    for i in range(5):  # each row keeps its own largest scores
        assert S[i][m[i]].min() >= S[i][~m[i]].max()
    layer = parse_pattern("unstructured", 0.55, "layer", 5, d)
    ml = layer.project(S)
    assert layer.check(ml) and S[ml].min() >= S[~ml].max()
    nm = parse_pattern("2:4", None, "row", 5, d)
    mn = nm.project(S)
    assert nm.check(mn)
    g, gm = S.reshape(5, -1, 4), mn.reshape(5, -1, 4)
    assert np.all(np.where(gm, g, np.inf).min(axis=2) >= np.where(gm, -np.inf, g).max(axis=2))


def test_pattern_ties_go_to_the_lower_index():
    pat = Pattern("row", 2, 200, keep=3)
    S = np.zeros((2, 200))
    S[1, 150:] = 1.0
    m = pat.project(S)
    assert np.flatnonzero(m[0]).tolist() == [0, 1, 2]
    assert np.flatnonzero(m[1]).tolist() == [150, 151, 152]


def test_half_up_rounding_of_the_row_budget():
    assert parse_pattern("unstructured", 0.5, "row", 1, 5).keep == 2  # 2.5 pruned -> 3
    assert parse_pattern("unstructured", 0.25, "row", 1, 6).keep == 4  # 1.5 -> 2


# ------------------------------------------------------------------------------------- refits


@pytest.mark.parametrize("kind", ["row", "mixed"])
def test_batched_refits_match_the_dense_reference(kind):
    W, H = _layer(rows=7, d=20, seed=2)
    Hd = ref.layer_damped(H, 0.01)
    rng = np.random.default_rng(3)
    if kind == "row":
        mask = parse_pattern("unstructured", 0.6, "row", 7, 20).project(rng.random((7, 20)))
    else:  # different counts per row, one row with nothing kept
        mask = rng.random((7, 20)) < 0.5
        mask[3] = False
    HW = W @ Hd
    direct = exact_refit(Hd, HW, mask)
    cg = pcg_refit(Hd, HW, mask, tol=1e-13)
    for i in range(7):
        expect = ref.row_refit(Hd, W[i], mask[i])
        np.testing.assert_allclose(direct[i], expect, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(cg[i], expect, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------------- prune_layer


@pytest.mark.parametrize(("pattern", "sparsity", "keep", "nm"), [
    ("unstructured", 0.5, 4, None),
    ("unstructured", 0.75, 2, None),
    ("2:4", None, None, (2, 4)),
    ("1:4", None, None, (1, 4)),
])  # fmt: skip
def test_small_layers_reach_the_brute_force_optimum(pattern, sparsity, keep, nm):
    W, H = _layer(rows=4, d=8, seed=4)
    res = prune_layer(W, H, sparsity, pattern=pattern)
    Hd = ref.layer_damped(H, 0.01)
    mask = np.asarray(res.mask)
    for i in range(4):
        _, best = ref.row_brute_force(Hd, W[i], keep=keep, nm=nm)
        got = ref.row_error(Hd, ref.row_refit(Hd, W[i], mask[i]), W[i])
        assert got == pytest.approx(best, rel=1e-9)
    _check_exact_on_mask(res, W, H)


@pytest.mark.parametrize("seed", [5, 6])
def test_at_most_textbook_greedy_obs_per_row(seed):
    W, H = _layer(rows=5, d=24, seed=seed)
    Hd = ref.layer_damped(H, 0.01)
    keep = 24 - round(0.6 * 24)
    greedy = sum(
        ref.row_error(Hd, ref.row_refit(Hd, W[i], ref.row_greedy_obs(Hd, W[i], keep)), W[i])
        for i in range(5)
    )
    for search in ("auto", "greedy"):
        res = prune_layer(W, H, 0.6, search=search)
        mask = np.asarray(res.mask)
        ours = sum(ref.row_error(Hd, ref.row_refit(Hd, W[i], mask[i]), W[i]) for i in range(5))
        assert ours <= greedy * (1 + 0.01 * (search == "greedy") + 1e-9)
        assert np.all(mask.sum(axis=1) == keep)
        _check_exact_on_mask(res, W, H)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "layer"])
def test_larger_layer_every_pattern_exact_and_below_sparsegpt(pattern):
    W, H = _layer(rows=48, d=64, N=400, seed=7, outliers=4)
    budget = "layer" if pattern == "layer" else "row"
    pat = "unstructured" if pattern == "layer" else pattern
    res = prune_layer(W, H, 0.7, pattern=pat, budget=budget)
    base = sparsegpt_layer(W, H, 0.7, pattern=pat, budget=budget)
    parsed = parse_pattern(pat, 0.7, budget, 48, 64)
    assert parsed.check(np.asarray(res.mask)) and parsed.check(np.asarray(base.mask))
    assert res.error < base.error
    _check_exact_on_mask(res, W, H)


def test_sparsegpt_matches_obs_on_one_column():
    """SparseGPT's sweep pruning only the first input of every row is one exact OBS step:
    the other weights move to the optimum with w_0 = 0 (the sweep's first update is exact)."""
    W, H = _layer(rows=3, d=6, seed=8)
    W[:, 0] = 1e-4  # the least salient input of every row: the one the sweep prunes
    Hd = ref.layer_damped(H, 0.01)
    pat = Pattern("row", 3, 6, keep=5)
    from chita_core.layer._problem import LayerProblem
    from chita_core.layer._sparsegpt import sparsegpt

    prob = LayerProblem(W.copy(), H.copy(), 0.01, pat)
    Ws, mask = sparsegpt(prob, block=6)
    assert pat.check(mask) and not mask[:, 0].any()
    for i in range(3):
        np.testing.assert_allclose(Ws[i], ref.row_refit(Hd, W[i], mask[i]), rtol=1e-8)


def test_types_follow_the_input():
    W, H = _layer(rows=4, d=8, seed=9)
    res32 = prune_layer(W.astype(np.float32), H.astype(np.float32), 0.5)
    assert res32.W.dtype == np.float32 and res32.mask.dtype == bool
    torch = pytest.importorskip("torch")
    Wt = torch.tensor(W, dtype=torch.bfloat16)
    rt = prune_layer(Wt, torch.tensor(H), 0.5)
    assert isinstance(rt.W, torch.Tensor) and rt.W.dtype == torch.bfloat16
    assert rt.mask.dtype == torch.bool and torch.all(rt.W[~rt.mask] == 0)


def test_zero_and_singular_h():
    W, _ = _layer(rows=3, d=8, seed=10)
    res = prune_layer(W, np.zeros((8, 8)), 0.5)  # no calibration signal: error 0
    assert res.error == 0.0 and np.all(np.asarray(res.mask).sum(axis=1) == 4)
    x = np.random.default_rng(0).standard_normal((2, 8))  # rank 2
    res = prune_layer(W, x.T @ x, 0.5, damp=0.0)
    assert np.isfinite(res.error) and np.all(np.asarray(res.mask).sum(axis=1) == 4)


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"W": np.ones(8)}, ValueError, "`W`"),
    ({"H": np.ones((7, 7))}, ValueError, "`H`"),
    ({"H": np.triu(np.ones((8, 8)))}, ValueError, "symmetric"),
    ({"W": np.full((3, 8), np.nan)}, ValueError, "NaN"),
    ({"sparsity": 1.0}, ValueError, "`sparsity`"),
    ({"sparsity": "half"}, TypeError, "`sparsity`"),
    ({"pattern": "3:5"}, ValueError, "multiple of M"),
    ({"pattern": "5:4"}, ValueError, "N <= M"),
    ({"pattern": "dense"}, ValueError, "`pattern`"),
    ({"damp": -1.0}, ValueError, "`damp`"),
    ({"budget": "global"}, ValueError, "`budget`"),
    ({"starts": ("obs",)}, ValueError, "`starts`"),
    ({"search": "best"}, ValueError, "`search`"),
    ({"effort": 0.0}, ValueError, "`effort`"),
    ({"effort": "high"}, TypeError, "`effort`"),
])  # fmt: skip
def test_bad_input_names_the_argument(kw, exc, match):
    W, H = _layer(rows=3, d=8, seed=11)
    args = {"W": W, "H": H, "sparsity": 0.5}
    args.update(kw)
    W_, H_, s_ = args.pop("W"), args.pop("H"), args.pop("sparsity")
    with pytest.raises(exc, match=match):
        prune_layer(W_, H_, s_, **args)


def test_public_name():
    assert chita_core.prune_layer is prune_layer


@pytest.mark.parametrize("backend_block", [(1, 0), (4, 4)])
def test_blocked_greedy_obs_against_the_textbook_order(backend_block):
    """block = 1 without pool slack is textbook greedy OBS in every row (the same masks); with
    blocks of 4 in pools of 8 each row's error stays within 2% of it."""
    from chita_core.layer import _prepare
    from chita_core.layer._rows import greedy_obs_blocked, greedy_obs_rows

    block, extra = backend_block
    W, H = _layer(rows=9, d=20, seed=12)
    prob = _prepare(W, H, 0.6, "unstructured", 0.01, "row")
    Hd = ref.layer_damped(H, 0.01)
    keep = prob.pattern.keep
    mask, Wg = greedy_obs_blocked(prob, block=block, extra=extra, entries=3 * 20 * 20)  # 3 chunks
    assert np.all(mask.sum(axis=1) == keep) and np.all(Wg[~mask] == 0)
    for i in range(9):  # the downdated optima are the exact refits
        np.testing.assert_allclose(Wg[i], ref.row_refit(Hd, W[i], mask[i]), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(
        greedy_obs_rows(prob), greedy_obs_blocked(prob, block=1, extra=0)[0]
    )
    for i in range(9):
        textbook = ref.row_greedy_obs(Hd, W[i], keep)
        e_ref = ref.row_error(Hd, ref.row_refit(Hd, W[i], textbook), W[i])
        e = ref.row_error(Hd, ref.row_refit(Hd, W[i], mask[i]), W[i])
        if block == 1:
            np.testing.assert_array_equal(mask[i], textbook)
        else:
            assert e <= 1.02 * e_ref


@pytest.mark.parametrize("kind", ["row", "nm"])
def test_projection_kernel_matches_numpy_with_ties_and_nan(kind):
    rng = np.random.default_rng(13)
    S = np.round(rng.standard_normal((17, 40)), 1)  # many ties
    S[3, 5] = S[8, 0] = np.nan
    S[4] = 0.0
    pat = Pattern("row", 17, 40, keep=13) if kind == "row" else Pattern("nm", 17, 40, n=3, m=8)
    np.testing.assert_array_equal(pat.project(S), pat.project_numpy(S))
    assert pat.check(pat.project(S))


# ------------------------------------------------------------------------------- swap search


def _masks(kind, rows, d, seed):
    rng = np.random.default_rng(seed)
    if kind == "row":
        return parse_pattern("unstructured", 0.6, "row", rows, d).project(rng.random((rows, d)))
    if kind == "nm":
        return parse_pattern("2:4", None, "row", rows, d).project(rng.random((rows, d)))
    mask = rng.random((rows, d)) < 0.45  # different counts per row, one empty, one full
    mask[1], mask[2] = False, True
    return mask


@pytest.mark.parametrize("kind", ["row", "nm", "mixed"])
def test_swap_kernel_matches_the_numpy_reference(kind):
    from chita_core.layer import _prepare
    from chita_core.layer._swaps import swap_search, swap_search_numpy

    W, H = _layer(rows=7, d=24, seed=14, outliers=3)
    prob = _prepare(W, H, None if kind == "nm" else 0.6, "2:4" if kind == "nm" else
                    "unstructured", 0.01, "row")  # fmt: skip
    start = _masks(kind, 7, 24, 15)
    mk, Wk, sk = swap_search(prob, start)
    mn, Wn, sn = swap_search_numpy(prob, start)
    np.testing.assert_array_equal(mk, mn)
    np.testing.assert_array_equal(sk, sn)
    np.testing.assert_allclose(Wk, Wn, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(mk.sum(axis=1), start.sum(axis=1))  # counts kept
    if kind == "nm":
        assert prob.pattern.check(mk)
    capped = swap_search(prob, start, max_swaps=2)
    assert np.all(capped[2] <= 2)


@pytest.mark.parametrize("kind", ["row", "nm"])
def test_swap_search_ends_where_no_exchange_helps(kind):
    """Every row's final mask is a local optimum: no exchange of a kept and a pruned input
    (within a group for N:M) lowers the error by more than the tolerance (brute force, each
    exchange refitted afresh), and the search never raised the start's error."""
    from chita_core.layer import _prepare
    from chita_core.layer._swaps import TOL, swap_search

    W, H = _layer(rows=5, d=16, seed=16, outliers=2)
    nm = kind == "nm"
    prob = _prepare(W, H, None if nm else 0.6, "2:4" if nm else "unstructured", 0.01, "row")
    start = _masks(kind, 5, 16, 17)
    mask, Wk, _ = swap_search(prob, start)
    Hd = ref.layer_damped(H, 0.01)
    for i in range(5):
        e = ref.row_error(Hd, Wk[i], W[i])
        np.testing.assert_allclose(Wk[i], ref.row_refit(Hd, W[i], mask[i]), rtol=1e-9, atol=1e-12)
        assert ref.row_best_exchange(Hd, W[i], mask[i], 4 if nm else 0) >= e * (1 - 2 * TOL)
        assert e <= ref.row_error(Hd, ref.row_refit(Hd, W[i], start[i]), W[i]) * (1 + 1e-12)


def test_kernel_refit_matches_numpy_with_empty_and_full_rows():
    from chita_core.layer._refit import exact_refit_numpy

    W, H = _layer(rows=6, d=20, seed=18)
    Hd = ref.layer_damped(H, 0.01)
    mask = _masks("mixed", 6, 20, 19)
    got = exact_refit(Hd, W @ Hd, mask)
    np.testing.assert_allclose(got, exact_refit_numpy(Hd, W @ Hd, mask), rtol=1e-10, atol=1e-13)
    assert np.all(got[1] == 0) and np.allclose(got[2], W[2])


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_swap_sweep_one_block_is_the_swap_search_and_blocks_end_at_their_optimum(pattern):
    """With one block the sweep is the swap search on Hd itself (from the saliency mask); with
    several, the last block's kept weights are the exact minimiser given the earlier blocks
    (zero gradient there: the compensation of each block is exact OBS)."""
    from chita_core.layer import _prepare
    from chita_core.layer._sparsegpt import _inverse_factor
    from chita_core.layer._swaps import swap_search, swap_sweep

    W, H = _layer(rows=6, d=24, seed=20, outliers=3)
    sp = 0.5 if pattern == "unstructured" else None
    prob = _prepare(W, H, sp, pattern, 0.01, "row")
    W1, m1 = swap_sweep(prob, 24)
    U = _inverse_factor(prob.Hd)
    sal = W * W / np.einsum("ij,ij->j", U, U)[None, :]
    m0, W0, _ = swap_search(prob, prob.pattern.project(sal))
    np.testing.assert_array_equal(m1, m0)
    np.testing.assert_allclose(W1, W0, rtol=1e-8, atol=1e-11)
    W3, m3 = swap_sweep(prob, 8)
    assert prob.pattern.check(m3) and np.all(W3[~m3] == 0)
    grad = (W3 - W) @ ref.layer_damped(H, 0.01)
    last = m3[:, 16:]
    assert np.abs(grad[:, 16:][last]).max() <= 1e-9 * np.abs(W @ prob.Hd).max()


@pytest.mark.parametrize("search", ["auto", "swap", "sweep", "greedy", "admm", "none"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "layer"])
def test_every_search_is_exact_and_at_most_sparsegpt(search, pattern):
    W, H = _layer(rows=12, d=32, N=300, seed=21, outliers=3)
    budget = "layer" if pattern == "layer" else "row"
    pat = "unstructured" if pattern == "layer" else pattern
    sp = None if pat == "2:4" else 0.6
    res = prune_layer(W, H, sp, pattern=pat, budget=budget, search=search)
    base = sparsegpt_layer(W, H, sp, pattern=pat, budget=budget)
    assert parse_pattern(pat, sp, budget, 12, 32).check(np.asarray(res.mask))
    assert res.error <= base.error * (1 + 1e-12)
    _check_exact_on_mask(res, W, H)


def test_swap_binding_rejects_bad_arrays():
    from chita_core import _core
    from chita_core.layer._swaps import _kernel

    _kernel()
    H = np.eye(8)
    B = np.ones((2, 8))
    ok = {"H": H, "B": B, "c0": np.zeros(2), "m": 0, "max_swaps": 1, "tol": 0.0, "refresh": 0,
          "mask": np.ones((2, 8), bool), "W": np.zeros((2, 8)),
          "swaps": np.zeros(2, np.int64)}  # fmt: skip
    _core.row_swaps(**ok)
    for key, bad in [("H", np.eye(7)), ("B", np.ones((2, 7))), ("m", 3), ("max_swaps", -1),
                     ("mask", np.ones((3, 8), bool)), ("W", np.zeros((2, 8), np.float32)),
                     ("tol", float("nan"))]:  # fmt: skip
        with pytest.raises(ValueError):
            _core.row_swaps(**{**ok, key: bad})
