"""Hardening of the PyTorch adapter (chita_core.torch.prune): tied weights, argument types and
values checked before any gradient work, the reported sparsity, degenerate (dead) networks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import chita_core.torch as ct  # noqa: E402
import chita_core.torch._prune as ct_prune  # noqa: E402
import chita_core.torch._solve as ct_solve  # noqa: E402

LOSS = nn.CrossEntropyLoss()
V, D = 13, 6  # vocabulary and width of the tied LM


class TiedLM(nn.Module):
    """Embedding -> Linear -> tanh -> Linear decoder whose weight *is* the embedding's."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(V, D)
        self.mid = nn.Linear(D, D)
        self.decoder = nn.Linear(D, V, bias=False)
        self.decoder.weight = self.embed.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.tanh(self.mid(self.embed(x))))


class UntiedLM(TiedLM):
    """The same network with the decoder holding its own copy of the embedding."""

    def __init__(self, tied: TiedLM) -> None:
        super().__init__()
        self.load_state_dict(tied.state_dict())
        self.decoder.weight = nn.Parameter(tied.embed.weight.detach().clone())


def _stacked(samples):
    """(inputs, targets) of drawn samples, concatenated: for references computed by hand."""
    return (
        torch.cat([b.inputs for b in samples.batches]),
        torch.cat([b.target for b in samples.batches]),
    )


def _tokens(n: int = 48, batch: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randint(0, V, (n,), generator=g)
    Y = torch.randint(0, V, (n,), generator=g)
    return [(X[i : i + batch], Y[i : i + batch]) for i in range(0, n, batch)]


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _data(n: int = 64, batch: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(X[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def _linear_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.fixture
def no_gradient_work(monkeypatch):
    """Fails the test if prune starts drawing samples or computing gradients."""

    def forbidden(*args, **kwargs):
        raise AssertionError("prune started gradient work before rejecting its arguments")

    monkeypatch.setattr(ct_prune, "_draw", forbidden)
    monkeypatch.setattr(ct_prune, "_gradient_matrix", forbidden)


# ----------------------------------------------------------------------------------------------
# 1. Tied weights
# ----------------------------------------------------------------------------------------------


def test_tied_weight_is_one_variable_whose_gradient_sums_its_uses():
    model = TiedLM(3)
    selected = ct_prune._select(model, None)
    # mid.weight, and the tied weight once, under its name in named_parameters()
    assert [q for q, *_ in selected] == ["mid.weight", "embed.weight"]
    assert selected[1][3] is model.embed.weight is model.decoder.weight
    samples = ct_prune._draw(_tokens(), 40, torch.device("cpu"))
    X, Y = _stacked(samples)
    A = ct_prune._gradient_matrix(model, LOSS, samples, selected, chunk=7, progress=False)
    assert A.shape == (40, D * D + V * D)  # one block of columns for the tied weight
    untied = UntiedLM(model)
    for i in range(40):
        # reference 1: autograd on the tied model (one Parameter, used twice)
        model.zero_grad()
        LOSS(model(X[i : i + 1]), Y[i : i + 1]).backward()
        g = torch.cat([model.mid.weight.grad.reshape(-1), model.embed.weight.grad.reshape(-1)])
        # reference 2, independent: the untied copy's two gradients, summed by hand
        untied.zero_grad()
        LOSS(untied(X[i : i + 1]), Y[i : i + 1]).backward()
        g2 = torch.cat(
            [
                untied.mid.weight.grad.reshape(-1),
                (untied.embed.weight.grad + untied.decoder.weight.grad).reshape(-1),
            ]
        )
        a = A[i].double().numpy() * math.sqrt(40)
        np.testing.assert_allclose(a, g.double().numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a, g2.double().numpy(), rtol=1e-5, atol=1e-7)
        assert untied.decoder.weight.grad.abs().sum() > 0  # both uses contribute


def _check_tied_masks(model):
    emb, dec = model.embed, model.decoder
    assert emb.weight_orig is dec.weight_orig  # both modules read one Parameter
    assert emb.weight_mask is dec.weight_mask  # and one mask
    assert "weight" not in emb._parameters and "weight" not in dec._parameters
    assert torch.equal(emb.weight, dec.weight)
    assert torch.all(emb.weight[emb.weight_mask == 0] == 0)
    # the model still has one tensor there: an optimizer over parameters() sees it once
    assert sum(p is emb.weight_orig for p in model.parameters()) == 1


@pytest.mark.parametrize(
    "params",
    [
        None,
        ["decoder.weight"],
        ["embed.weight"],
        ["embed.weight", "decoder.weight"],
        "module",
        "parameter",
    ],
    ids=["default", "decoder-name", "embed-name", "both-names", "both-modules", "parameter"],
)
def test_tied_weight_is_pruned_once_and_every_alias_is_masked(params, monkeypatch):
    widths = []
    real = ct_prune._gradient_matrix

    def spy(*args):
        A = real(*args)
        widths.append(A.shape[1])
        return A

    monkeypatch.setattr(ct_prune, "_gradient_matrix", spy)
    model = TiedLM()
    dense = model.embed.weight.detach().clone()
    if params == "module":
        params = [model.embed, model.decoder]
    elif params == "parameter":
        params = [model.decoder.weight, model.embed.weight]
    rep = ct.prune(model, LOSS, _tokens(), 0.6, n_grads=32, params=params, progress=False)
    names = ["mid.weight", "embed.weight"] if params is None else ["embed.weight"]
    assert list(rep.tensors) == names
    p = (D * D if params is None else 0) + V * D
    assert widths == [p] and rep.stages[0].k == round(0.4 * p)
    _check_tied_masks(model)
    w = model.embed.weight
    zeros = int((w == 0).sum())
    assert rep.tensors["embed.weight"] == (pytest.approx(zeros / (V * D)), V * D)
    assert int(model.embed.weight_mask.sum()) == V * D - zeros
    if params is not None:  # only the tied weight is selected: k of its V*D entries kept
        assert zeros == V * D - round(0.4 * V * D)
        assert torch.equal(model.mid.weight, TiedLM().mid.weight)  # not selected: untouched
    kept = model.embed.weight_mask == 1
    assert torch.any(w[kept] != dense[kept])  # the refit moved the kept weights


@pytest.mark.parametrize("params", [None, ["embed.weight"]], ids=["default", "embed-name"])
def test_tied_weight_stays_tied_and_pruned_through_training_and_remove_masks(params):
    model = TiedLM()
    ct.prune(model, LOSS, _tokens(), 0.6, n_grads=32, params=params, progress=False)
    pruned = model.embed.weight == 0
    assert 0 < int(pruned.sum()) < V * D
    after = model.embed.weight.detach().clone()
    for opt in (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
        torch.optim.Adam(model.parameters(), lr=1e-2),
    ):
        for x, y in _tokens(seed=5):
            opt.zero_grad()
            LOSS(model(x), y).backward()
            opt.step()
        model(_tokens()[0][0])  # a forward pass refreshes both masked aliases
        _check_tied_masks(model)
        for w in (model.embed.weight, model.decoder.weight):
            assert torch.all(w[pruned] == 0)
            assert not torch.allclose(w[~pruned], after[~pruned])  # it did train
    assert sorted(ct.remove_masks(model)) == sorted(
        ["embed.weight", "decoder.weight"] + ([] if params else ["mid.weight"])
    )
    assert isinstance(model.embed.weight, nn.Parameter)
    assert model.embed.weight is model.decoder.weight  # still one Parameter
    assert torch.all(model.embed.weight[pruned] == 0)
    assert not any(n.endswith(("_orig", "_mask")) for n, _ in model.state_dict().items())


def test_a_module_used_twice_is_masked_once():
    torch.manual_seed(0)
    lin = nn.Linear(5, 5)
    model = nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh(), nn.Linear(5, 3))
    rep = ct.prune(model, LOSS, _data(), 0.5, n_grads=32, progress=False)
    assert list(rep.tensors) == ["0.weight", "4.weight"]
    assert model[0] is model[2] and model[0].weight_mask is model[2].weight_mask


# ----------------------------------------------------------------------------------------------
# 2-6. Arguments checked before any gradient work
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [[], (), "generator"])
def test_empty_params_is_a_clear_error(params, no_gradient_work):
    if params == "generator":
        params = (p for p in [])
    with pytest.raises(ValueError, match=r"`params` is empty"):
        ct.prune(_mlp(), LOSS, _data(), 0.5, params=params, progress=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_are_refused_before_gradient_work(dtype, no_gradient_work):
    model = _mlp().to(dtype)
    data = [(x.to(dtype), y) for x, y in _data()]
    with pytest.raises(TypeError, match=rf"{str(dtype)[6:]}.*float32 or float64.*\.float\(\)"):
        ct.prune(model, LOSS, data, 0.5, n_grads=32, progress=False)


def test_meta_model_is_refused_as_holding_no_data(no_gradient_work):
    with pytest.raises(ValueError, match=r"meta tensors hold no data.*runs on the CPU or CUDA"):
        ct.prune(_mlp().to("meta"), LOSS, _data(), 0.5, n_grads=32, progress=False)
    model = _mlp()
    model.register_buffer("scale", torch.ones(3, device="meta"))  # only a buffer on meta
    with pytest.raises(ValueError, match=r"meta tensors hold no data"):
        ct.prune(model, LOSS, _data(), 0.5, n_grads=32, progress=False)


def test_numpy_scalars_are_accepted_and_give_the_same_result():
    runs = []
    for kind in (float, np.float32, np.float64):
        to_int = int if kind is float else (np.int64 if kind is np.float64 else np.int32)
        model = _mlp()
        rep = ct.prune(
            model,
            LOSS,
            _data(),
            kind(0.75),
            n_grads=to_int(48),
            stages=to_int(2),
            chunk_size=to_int(16),
            ridge=kind(0.5),
            max_iter=to_int(20),
            progress=False,
        )
        assert type(rep.n_grads) is int and rep.n_grads == 48 and len(rep.stages) == 2
        assert all(type(s.ridge) is float and s.ridge == 0.5 for s in rep.stages)
        runs.append((rep, [w.detach().clone() for w in _linear_weights(model)]))
    (rep0, w0), *rest = runs
    p = sum(w.numel() for w in w0)
    assert rep0.stages[-1].k == round(0.25 * p)
    for rep, ws in rest:
        assert rep.stages[-1].k == rep0.stages[-1].k
        assert rep.sparsity == pytest.approx(rep0.sparsity)
        for a, b in zip(ws, w0, strict=True):
            assert torch.equal(a == 0, b == 0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sparsity": True}, TypeError, "`sparsity`"),
        ({"sparsity": np.bool_(False)}, TypeError, "`sparsity`"),
        ({"sparsity": np.float32("nan")}, ValueError, "`sparsity`"),
        ({"n_grads": True}, ValueError, "`n_grads`"),
        ({"n_grads": np.bool_(True)}, ValueError, "`n_grads`"),
        ({"n_grads": 32.0}, ValueError, "`n_grads`"),
        ({"n_grads": np.int64(0)}, ValueError, "`n_grads`"),
        ({"stages": np.bool_(True)}, ValueError, "`stages`"),
        ({"chunk_size": np.int32(0)}, ValueError, "`chunk_size`"),
        ({"chunk_size": True}, ValueError, "`chunk_size`"),
        ({"ridge": float("inf")}, ValueError, "`ridge`"),
        ({"ridge": -float("inf")}, ValueError, "`ridge`"),
        ({"ridge": float("nan")}, ValueError, "`ridge`"),
        ({"ridge": np.float32("inf")}, ValueError, "`ridge`"),
        ({"ridge": -1e-3}, ValueError, "`ridge`"),
        ({"ridge": "0.1"}, ValueError, "`ridge`"),
        ({"ridge": True}, ValueError, "`ridge`"),
    ],
)
def test_bad_numbers_are_refused_before_gradient_work(kwargs, exc, match, no_gradient_work):
    args = {"sparsity": 0.5, "n_grads": 32, **kwargs}
    model = _mlp()
    before = [w.clone() for w in _linear_weights(model)]
    with pytest.raises(exc, match=match):
        ct.prune(model, LOSS, _data(), progress=False, **args)
    for w, w0 in zip(_linear_weights(model), before, strict=True):
        assert torch.equal(w, w0)


# ----------------------------------------------------------------------------------------------
# 7. report.sparsity: the fraction of selected weights that are zero, for every method
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["magnitude", "magnitude+backsolve", "chita"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_reported_sparsity_counts_zero_weights(method, per_layer):
    model = _mlp()
    with torch.no_grad():  # 25 of the 40 first-layer weights exactly zero in the dense model
        model[0].weight[:3] = 0.0
        model[0].weight[3:, :2] = 0.0
    dense_zeros = model[0].weight == 0
    rep = ct.prune(
        model,
        LOSS,
        _data(),
        0.2,
        n_grads=48,
        ridge=1e-2,
        method=method,
        per_layer=per_layer,
        progress=False,
    )
    ws = _linear_weights(model)
    total = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert rep.sparsity == pytest.approx(zeros / total)
    for (name, (sp, m)), w in zip(rep.tensors.items(), ws, strict=True):
        assert m == w.numel() and sp == pytest.approx(int((w == 0).sum()) / m), name
    # the masks are the supports: k kept entries, whatever the kept values
    masks = [m.weight_mask for m in model.modules() if isinstance(m, nn.Linear)]
    kept = sum(int(mk.sum()) for mk in masks)
    if per_layer:
        assert kept == sum(round(0.8 * w.numel()) for w in ws)
    else:
        assert kept == rep.stages[0].k == round(0.8 * total)
    if method == "magnitude":
        # magnitude keeps some of the dense zeros (there are more than the 20% it prunes):
        # they are zeros of the pruned model, so the sparsity is above the mask's 20%
        assert torch.all(model[0].weight[dense_zeros] == 0)
        assert rep.sparsity > 1 - kept / total + 1e-9


# ----------------------------------------------------------------------------------------------
# 8. Degenerate networks: dead ReLUs, empty tensors, losses of the wrong shape
# ----------------------------------------------------------------------------------------------


def _dead(units: int) -> nn.Sequential:
    model = _mlp()
    with torch.no_grad():
        model[0].bias[:units] = -100.0  # these ReLUs never fire: zero gradients
    return model


@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("method", ["magnitude", "magnitude+backsolve", "chita"])
def test_partly_dead_network_prunes(method, per_layer):
    model = _dead(5)
    samples = ct_prune._draw(_data(), 48, torch.device("cpu"))
    A = ct_prune._gradient_matrix(model, LOSS, samples, ct_prune._select(model, None), None, False)
    assert torch.all(A[:, :25] == 0) and torch.any(A[:, 25:40] != 0)  # dead rows of 0.weight
    rep = ct.prune(
        model, LOSS, _data(), 0.5, n_grads=48, method=method, per_layer=per_layer, progress=False
    )
    ws = _linear_weights(model)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert rep.sparsity == pytest.approx(zeros / sum(w.numel() for w in ws))
    assert all(math.isfinite(s.loss) and math.isfinite(s.objective) for s in rep.stages)


@pytest.mark.parametrize(
    "kwargs",
    [{"method": "magnitude"}, {"method": "magnitude+backsolve"}, {"ridge": 0.1}],
    ids=["magnitude", "magnitude+backsolve", "chita-ridge"],
)
def test_fully_dead_network_prunes(kwargs):
    model = _dead(8)  # every gradient is zero: A == 0
    rep = ct.prune(model, LOSS, _data(), 0.5, n_grads=48, progress=False, **kwargs)
    ws = _linear_weights(model)
    assert rep.stages[0].k == round(0.5 * sum(w.numel() for w in ws))
    assert rep.sparsity == pytest.approx(
        sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    )


def test_fully_dead_network_default_chita():
    """A == 0 with ridge=None: the ridge path collapses to ridge 0 (zero curvature), and the
    solver's zero Lipschitz constant is handled (chita_core/_iht.py), so chita prunes too."""
    model = _dead(8)
    rep = ct.prune(model, LOSS, _data(), 0.5, n_grads=48, progress=False)
    ws = _linear_weights(model)
    p = sum(w.numel() for w in ws)
    assert rep.stages[0].k == round(0.5 * p) and rep.stages[0].ridge == 0.0
    assert rep.sparsity == pytest.approx(sum(int((w == 0).sum()) for w in ws) / p)


def test_zero_curvature_ridge_path_solves_each_ridge_once(monkeypatch):
    calls = []
    real = ct_solve._solve

    def spy(*args):
        calls.append((args[3], args[2]))  # (ridge, method)
        return real(*args)

    monkeypatch.setattr(ct_solve, "_solve", spy)
    rep = ct.prune(
        _dead(8), LOSS, _data(), 0.5, n_grads=48, method="magnitude+backsolve", progress=False
    )
    assert calls == [(0.0, "magnitude+backsolve")] and rep.stages[0].ridge == 0.0


class _WithEmpty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = nn.Linear(5, 8), nn.Linear(8, 3)
        with warnings.catch_warnings():  # "Initializing zero-element tensors is a no-op"
            warnings.simplefilter("ignore", UserWarning)
            self.empty = nn.Linear(8, 0)  # a (0, 8) weight: nothing to prune

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l2(h) + self.empty(h).sum()


@pytest.mark.parametrize("per_layer", [False, True])
def test_empty_tensors_are_skipped_by_default_and_refused_by_name(per_layer):
    model = _WithEmpty()
    rep = ct.prune(model, LOSS, _data(), 0.5, n_grads=32, per_layer=per_layer, progress=False)
    assert list(rep.tensors) == ["l1.weight", "l2.weight"]
    ws = [model.l1.weight, model.l2.weight]
    assert rep.sparsity == pytest.approx(sum(int((w == 0).sum()) for w in ws) / 64)
    with pytest.raises(ValueError, match=r"`params`: empty\.weight has no elements"):
        ct.prune(
            _WithEmpty(), LOSS, _data(), 0.5, n_grads=32, params=["empty.weight"], progress=False
        )


def test_loss_fn_must_return_a_scalar():
    with pytest.raises(ValueError, match=r"`loss_fn` must return a scalar.*\(1,\)"):
        ct.prune(
            _mlp(),
            nn.CrossEntropyLoss(reduction="none"),
            _data(),
            0.5,
            n_grads=32,
            progress=False,
        )


# ----------------------------------------------------------------------------------------------
# Memory planning, the default n_grads, k >> n
# ----------------------------------------------------------------------------------------------


def test_memory_plan_refuses_what_does_not_fit_before_gradient_work(no_gradient_work):
    from chita_core.torch._memory import fixed_bytes

    p = 5 * 8 + 8 * 3  # the MLP's two weights
    limit = fixed_bytes(40, p) + 40 * p * 4  # room for exactly 40 samples in float32
    with pytest.raises(ValueError, match=r"`n_grads`=64 .*n_grads <= 40 with A in float32.*"
                       r"n_grads <= \d+ with A in bfloat16"):  # fmt: skip
        ct.prune(_mlp(), LOSS, _data(), 0.5, n_grads=64, memory_limit=limit, progress=False)
    with pytest.raises(ValueError, match="`memory_limit`"):
        ct.prune(_mlp(), LOSS, _data(), 0.5, memory_limit=0, progress=False)


def test_default_n_grads_takes_what_fits_and_what_data_has():
    from chita_core.torch._memory import fixed_bytes

    p = 5 * 8 + 8 * 3
    rep = ct.prune(_mlp(), LOSS, _data(n=64), 0.5, progress=False)
    assert rep.n_grads == 64  # fewer than the default 1000: all the data has
    assert rep.memory.a_bytes == 64 * p * 4 and rep.memory.n_grads == 64
    limit = fixed_bytes(20, p) + 20 * p * 4
    rep = ct.prune(_mlp(), LOSS, _data(n=64), 0.5, memory_limit=limit, progress=False)
    assert rep.n_grads == 20 and rep.memory.limit == limit  # as many as fit
    assert rep.memory.a_bytes + rep.memory.solver_bytes <= limit
    # at scale A dominates: a 16-bit A fits about twice the samples in the same memory
    from chita_core.torch._memory import plan_memory

    cpu, big = torch.device("cpu"), 10_000_000
    n32 = plan_memory(None, big, 4, cpu, 8 << 30).n_grads
    n16 = plan_memory(None, big, 2, cpu, 8 << 30).n_grads
    assert 150 < n32 < 200 and 1.9 * n32 < n16 <= 2 * n32 + 1


def test_k_much_larger_than_n_is_detected_and_reported():
    p = 5 * 8 + 8 * 3
    with pytest.warns(RuntimeWarning, match=r"is \d+x n_grads = 2: the quadratic model is close"):
        rep = ct.prune(_mlp(), LOSS, _data(), 0.5, n_grads=2, progress=False)
    s = rep.stages[0]
    assert s.degenerate and s.k_over_n == pytest.approx(round(0.5 * p) / 2)
    # the ridge path ran chita and magnitude + backsolve at each ridge: what chita bought on
    # the quadratic model is reported, never negative (its start is magnitude + backsolve)
    assert s.gain_over_backsolve is not None and s.gain_over_backsolve >= -1e-9
    assert "degenerate" in str(rep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = ct.prune(_mlp(), LOSS, _data(), 0.9, n_grads=64, progress=False)
    assert not rep.stages[0].degenerate and rep.stages[0].gain_over_backsolve >= -1e-9
