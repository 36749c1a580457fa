"""The PyTorch adapter (chita_core.torch) on the CPU: sparsity, masks, gradients, stages, errors."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import chita_core  # noqa: E402
import chita_core.torch as ct  # noqa: E402
import chita_core.torch._prune as ct_prune  # noqa: E402
import chita_core.torch._solve as ct_solve  # noqa: E402


def _stacked(samples):
    """(inputs, targets) of drawn samples, concatenated: for references computed by hand."""
    return (
        torch.cat([b.inputs for b in samples.batches]),
        torch.cat([b.target for b in samples.batches]),
    )


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 8),
        nn.Tanh(),
        nn.Linear(8, 4),
    )


def _data(n: int = 96, batch: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return [(X[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


LOSS = nn.CrossEntropyLoss()


def _weights(model):
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_core_package_does_not_import_torch():
    code = "import sys, chita_core; chita_core.iht; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_exact_sparsity_as_reported(per_layer, sparsity):
    model = _model()
    rep = ct.prune(model, LOSS, _data(), sparsity, n_grads=64, per_layer=per_layer, progress=False)
    total = zeros = 0
    for (name, (sp, m)), w in zip(rep.tensors.items(), _weights(model), strict=True):
        z = int((w == 0).sum())
        assert m == w.numel() and sp == pytest.approx(z / m), name
        mask = dict(model.named_buffers())[name + "_mask"]
        assert int((mask == 0).sum()) == z  # the mask is the support, zeros and all
        if per_layer:
            assert z == w.numel() - max(1, round((1 - sparsity) * w.numel())), name
        total, zeros = total + m, zeros + z
    assert rep.sparsity == pytest.approx(zeros / total)
    if not per_layer:
        assert total - zeros == max(1, round((1 - sparsity) * total))
    assert "sparsity" in str(rep) and len(rep.stages) == 1


def test_masks_keep_pruned_weights_zero_after_optimizer_steps():
    model = _model()
    ct.prune(model, LOSS, _data(), 0.8, n_grads=64, progress=False)
    pruned = [(w == 0).clone() for w in _weights(model)]
    for opt in (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
        torch.optim.Adam(model.parameters(), lr=1e-2),
    ):
        for x, y in _data(seed=5):
            opt.zero_grad()
            LOSS(model(x), y).backward()
            opt.step()
        for w, z in zip(_weights(model), pruned, strict=True):
            assert torch.all(w[z] == 0)
            assert torch.any(w[~z] != 0)
    names = ct.remove_masks(model)
    assert names == ["0.weight", "3.weight", "5.weight"]
    for w, z in zip(_weights(model), pruned, strict=True):
        assert isinstance(w, nn.Parameter) and torch.all(w[z] == 0)
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())


def test_gradients_equal_a_per_sample_loop():
    model = _model(3)
    data = _data(n=40, batch=16)
    selected = ct_prune._select(model, None)
    samples = ct_prune._draw(data, 40, torch.device("cpu"))
    X, Y = _stacked(samples)
    A = ct_prune._gradient_matrix(model, LOSS, samples, selected, chunk=7, progress=False)
    assert A.shape == (40, sum(p.numel() for *_, p in selected))
    assert A.t().is_contiguous()  # F order: what the solver reads fastest
    for i in range(40):
        model.zero_grad()
        LOSS(model(X[i : i + 1]), Y[i : i + 1]).backward()
        g = torch.cat([p.grad.reshape(-1) for *_, p in selected]).double()
        np.testing.assert_allclose(
            A[i].double().numpy() * np.sqrt(40), g.numpy(), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("a_dtype", [torch.bfloat16, "float16"])
def test_half_precision_A(a_dtype, monkeypatch):
    """a_dtype: A is built in the 16-bit type (each gradient rounded once, the same values as
    the float32 A rounded), handed to the solver as is, and the pruned model is close to the
    float32-A one (same sparsity, loss within the rounding of A's effect)."""
    model = _model(3)
    selected = ct_prune._select(model, None)
    samples = ct_prune._draw(_data(n=40, batch=16), 40, torch.device("cpu"))
    dt = ct_prune._storage_dtype(a_dtype)
    A16 = ct_prune._gradient_matrix(model, LOSS, samples, selected, 7, False, dt)
    A32 = ct_prune._gradient_matrix(model, LOSS, samples, selected, 7, False)
    assert A16.dtype == dt and A16.t().is_contiguous()
    assert torch.equal(A16, A32.to(dt))
    seen = []
    real = ct_prune._gradient_matrix

    def spy(*args):
        A = real(*args)
        seen.append(A.dtype)
        return A

    monkeypatch.setattr(ct_prune, "_gradient_matrix", spy)
    runs = {}
    for how in (None, a_dtype):
        m = _model(3)
        rep = ct.prune(m, LOSS, _data(), 0.7, n_grads=64, ridge=0.1, a_dtype=how, progress=False)
        runs[how] = (rep, [w.detach().clone() for w in _weights(m)])
    assert seen == [torch.float32, dt]
    (r32, w32), (r16, w16) = runs[None], runs[a_dtype]
    assert r16.sparsity == pytest.approx(r32.sparsity)
    assert r16.stages[0].objective == pytest.approx(r32.stages[0].objective, rel=0.05, abs=1e-6)
    overlap = sum(int(((a != 0) & (b != 0)).sum()) for a, b in zip(w32, w16, strict=True))
    assert overlap >= 0.9 * r32.stages[0].k


def test_bad_a_dtype_is_refused_before_gradient_work():
    for bad in ("int8", torch.int32, 16, "bf16"):
        with pytest.raises(ValueError, match="`a_dtype`"):
            ct.prune(_model(), LOSS, _data(), 0.5, n_grads=32, a_dtype=bad, progress=False)


def test_params_selection_by_module_parameter_and_name():
    model = _model()
    conv, lin = model[0], model[5]
    for params in ([conv, lin], [conv.weight, lin.weight], ["0.weight", "5.weight"]):
        m = _model()
        m.load_state_dict(model.state_dict())
        sel = (
            [m[0], m[5]]
            if params[0] is conv
            else ([m[0].weight, m[5].weight] if isinstance(params[0], nn.Parameter) else params)
        )
        rep = ct.prune(m, LOSS, _data(), 0.5, n_grads=32, params=sel, progress=False)
        assert list(rep.tensors) == ["0.weight", "5.weight"]
        assert torch.all(m[3].weight != 0)  # not selected: untouched
    rep = ct.prune(_model(), LOSS, _data(), 0.5, n_grads=32, params=["3.bias"], progress=False)
    assert list(rep.tensors) == ["3.bias"]


def test_multistage_recomputes_gradients_at_pruned_weights(monkeypatch):
    seen = []
    real = ct_prune._gradient_matrix

    def spy(model, loss_fn, samples, selected, *args):
        seen.append(sum(int((p == 0).sum()) for *_, p in selected))
        return real(model, loss_fn, samples, selected, *args)

    monkeypatch.setattr(ct_prune, "_gradient_matrix", spy)
    model = _model()
    rep = ct.prune(
        model, LOSS, _data(), 0.9, n_grads=64, stages=3, schedule="linear", progress=False
    )
    assert len(seen) == 3 and len(rep.stages) == 3
    total = sum(p.numel() for p in _weights(model))
    # before stage t the weights are those pruned by stage t-1
    assert seen[0] == 0
    for t in (1, 2):
        assert seen[t] >= total - rep.stages[t - 1].k
    assert [s.target_sparsity for s in rep.stages] == pytest.approx([0.3, 0.6, 0.9])
    assert rep.stages[-1].k == round(0.1 * total)


@pytest.mark.parametrize(
    ("method", "per_layer"),
    [("chita", False), ("magnitude+backsolve", False), ("chita", True)],
)
def test_multistage_never_ends_worse_than_one_shot_on_the_selection_loss(
    method, per_layer, monkeypatch
):
    """The one-shot solve on the first stage's gradients is the stages=1 solve (same A, same
    ridge path): the schedule keeps it when the last stage's selection loss is higher."""
    one = _model()
    rep1 = ct.prune(
        one, LOSS, _data(), 0.9, n_grads=64, method=method, per_layer=per_layer, progress=False
    )
    assert not rep1.one_shot
    many = _model()
    opts = dict(n_grads=64, method=method, per_layer=per_layer, stages=3, progress=False)
    rep3 = ct.prune(many, LOSS, _data(), 0.9, **opts)
    assert rep3.stages[-1].loss <= rep1.stages[0].loss * (1 + 1e-6)
    if rep3.one_shot:
        assert rep3.stages[-1].chosen.startswith("one-shot")
        for a, b in zip(_weights(one), _weights(many), strict=True):
            torch.testing.assert_close(a, b)
    # Forced either way by the selection loss: the one-shot (first _choose call) made better
    # or worse than everything else.
    for one_shot_wins in (True, False):
        calls = []
        real = ct_solve._mean_loss

        def loss(model, loss_fn, held, _real=real, _wins=one_shot_wins, _calls=calls):
            _calls.append(1)
            value = _real(model, loss_fn, held)
            first = len(_calls) <= len(ct.RIDGE_SCALES) * (2 if method == "chita" else 1)
            return value - 100.0 if first == _wins else value

        monkeypatch.setattr(ct_solve, "_mean_loss", loss)
        model = _model()
        rep = ct.prune(model, LOSS, _data(), 0.9, **opts)
        monkeypatch.setattr(ct_solve, "_mean_loss", real)
        assert rep.one_shot == one_shot_wins
        assert rep.stages[-1].chosen.startswith("one-shot") == one_shot_wins
        zeros = sum(int((w == 0).sum()) for w in _weights(model))
        assert zeros >= round(0.9 * sum(w.numel() for w in _weights(model)))


@pytest.mark.parametrize("schedule", ["poly", "exp", "linear"])
def test_schedules_increase_to_target(schedule):
    s = ct.schedule_sparsities(0.95, 5, schedule)
    assert len(s) == 5 and s[-1] == 0.95 and all(a < b for a, b in itertools.pairwise(s))
    assert ct.schedule_sparsities(0.5, 1, schedule) == [0.5]


def test_baselines_and_chita_on_the_same_model():
    """magnitude keeps the largest |w|; magnitude + backsolve has the same support and a lower
    objective; chita's objective is no higher than magnitude + backsolve's (at one ridge: the
    default ridge path may pick different ridges for the two, whose objectives then differ)."""
    base = _model()
    reports = {}
    for method in ("magnitude", "magnitude+backsolve", "chita"):
        m = _model()
        m.load_state_dict(base.state_dict())
        reports[method] = (
            ct.prune(m, LOSS, _data(), 0.7, n_grads=64, ridge=1e-3, method=method, progress=False),
            m,
        )
    w0 = torch.cat([w.detach().reshape(-1) for w in _weights(base)])
    k = round(0.3 * w0.numel())
    mag = torch.cat([w.detach().reshape(-1) for w in _weights(reports["magnitude"][1])])
    keep = torch.topk(w0.abs(), k).indices
    assert torch.equal(mag[keep], w0[keep]) and int((mag != 0).sum()) == k
    mb = torch.cat([w.detach().reshape(-1) for w in _weights(reports["magnitude+backsolve"][1])])
    assert set(torch.nonzero(mb).flatten().tolist()) <= set(keep.tolist())
    f = {name: r.objectives[0] for name, (r, _) in reports.items()}
    assert f["magnitude+backsolve"] <= f["magnitude"]
    assert f["chita"] <= f["magnitude+backsolve"] * (1 + 1e-6)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sparsity": 1.0}, ValueError, r"`sparsity` must be in \[0, 1\)"),
        ({"sparsity": -0.1}, ValueError, r"`sparsity` must be in \[0, 1\)"),
        ({"sparsity": "0.5"}, TypeError, "`sparsity`"),
        ({"params": ["nope.weight"]}, ValueError, "'nope.weight' is not a parameter"),
        ({"params": [nn.Parameter(torch.zeros(3))]}, ValueError, "not in `model`"),
        ({"params": [nn.Linear(2, 2)]}, ValueError, "not in `model`"),
        ({"params": [3]}, TypeError, "`params` entries"),
        ({"n_grads": 500}, ValueError, "yielded 96 samples but n_grads=500"),
        ({"n_grads": 0}, ValueError, "`n_grads`"),
        ({"stages": 0}, ValueError, "`stages`"),
        ({"schedule": "cosine"}, ValueError, "`schedule`"),
        ({"method": "obs"}, ValueError, "`method`"),
        ({"ridge": -1.0}, ValueError, "`ridge`"),
        ({"backend": "cuda"}, ValueError, "needs `A` on a CUDA device"),
    ],
)
def test_errors(kwargs, exc, match):
    args = {"sparsity": 0.5, **kwargs}
    model = _model()
    before = [w.clone() for w in _weights(model)]
    with pytest.raises(exc, match=match):
        ct.prune(model, LOSS, _data(), progress=False, **args)
    for w, w0 in zip(_weights(model), before, strict=True):
        assert torch.equal(w, w0)  # nothing touched on error


def test_bad_data_and_devices():
    with pytest.raises(TypeError, match="`data` must yield"):
        ct.prune(_model(), LOSS, [torch.zeros(3)], 0.5, progress=False)
    with pytest.raises(ValueError, match="share their leading"):
        ct.prune(_model(), LOSS, [(torch.zeros(4, 1, 6, 6), torch.zeros(3))], 0.5, progress=False)
    meta = _model().to("meta")
    with pytest.raises(ValueError, match="runs on the CPU or CUDA"):
        ct.prune(meta, LOSS, _data(), 0.5, progress=False)
    model = _model()
    ct.prune(model, LOSS, _data(), 0.5, n_grads=32, progress=False)
    with pytest.raises(ValueError, match="already carries a pruning mask"):
        ct.prune(model, LOSS, _data(), 0.5, progress=False)


def test_progress_bars_and_solver_options(capsys):
    model = _model()
    rep = ct.prune(
        model,
        LOSS,
        _data(),
        0.6,
        n_grads=64,
        stages=2,
        progress=True,
        swaps=False,
        init="magnitude",
    )
    assert all(r.backend in chita_core.available_backends() for s in rep.stages for r in s.results)
    assert all(
        not any("swaps" in label for label, _, _ in r.stages) for s in rep.stages for r in s.results
    )
    err = capsys.readouterr().err
    assert "per-sample gradients" in err


def test_ridge_path_picks_the_lowest_selection_loss():
    """ridge=None: each stage keeps the candidate with the lowest loss on val_data; chita's
    candidates include magnitude + backsolve's, so chita's kept loss is never above it."""
    data, val = _data(seed=1), _data(n=64, seed=2)
    base = _model()
    losses = {}
    for method in ("magnitude+backsolve", "chita"):
        m = _model()
        m.load_state_dict(base.state_dict())
        rep = ct.prune(m, LOSS, data, 0.8, n_grads=64, val_data=val, method=method, progress=False)
        X = torch.cat([x for x, _ in val])
        Y = torch.cat([y for _, y in val])
        with torch.no_grad():
            assert rep.stages[0].loss == pytest.approx(float(LOSS(m(X), Y)), rel=1e-5)
        assert rep.stages[0].chosen in ("chita", "magnitude+backsolve")
        losses[method] = rep.stages[0].loss
    assert losses["chita"] <= losses["magnitude+backsolve"] * (1 + 1e-6)


def test_fixed_ridge_solves_once():
    calls = []
    real = ct_solve._solve

    def spy(*args):
        calls.append(args[3])  # the ridge
        return real(*args)

    m = _model()
    import unittest.mock

    with unittest.mock.patch.object(ct_solve, "_solve", spy):
        rep = ct.prune(m, LOSS, _data(), 0.5, n_grads=64, ridge=0.25, progress=False)
    assert calls == [0.25] and rep.stages[0].ridge == 0.25 and rep.stages[0].chosen == "chita"
    with pytest.raises(ValueError, match="`val_data` yielded no samples"):
        ct.prune(_model(), LOSS, _data(), 0.5, n_grads=64, val_data=[], progress=False)


@pytest.mark.parametrize("per_layer", [False, True])
def test_ridge_path_reads_A_once_and_solves_magnitude_once_per_ridge(monkeypatch, per_layer):
    """Per stage: one column-norm pass of A (it is also the NaN scan) for all ridges; and the
    magnitude + backsolve point of each ridge is solved once, iht starting from it."""
    import numpy as np

    from chita_core import backends as _backends
    from chita_core._pipeline import measure_rates
    from chita_core._point import Point

    norms, refits, grams = [], [], []
    real_refit = Point.refit.__func__

    def counting_refit(cls, prob, support, **kw):
        refits.append((id(prob._cache), prob.ridge, tuple(np.asarray(support).tolist())))
        return real_refit(cls, prob, support, **kw)

    cpp = _backends.get_backend("auto")[1]
    measure_rates(chita_core.Problem(np.ones((2, 2)), np.ones(2)))  # (its own matrix)

    class Counting:
        def __getattr__(self, name):
            fn = getattr(cpp, name)
            if name == "support_gram":
                return lambda A, idx, out: (grams.append(tuple(idx.tolist())), fn(A, idx, out))[1]
            if name != "column_sqnorms":
                return fn
            return lambda A, out: (norms.append(A.shape), fn(A, out))[1]

    chita_core.available_backends()
    name = _backends.get_backend("auto")[0]
    monkeypatch.setitem(_backends._probes, name, _backends._Probe(Counting(), None))
    monkeypatch.setattr(Point, "refit", classmethod(counting_refit))
    ct.prune(_model(), LOSS, _data(), 0.5, n_grads=64, per_layer=per_layer, progress=False)
    weights = [t.numel() for name, t in _model().named_parameters() if name.endswith("weight")]
    # One pass over A in all: one block, or one per tensor, covering the p columns once.
    assert len(norms) == (len(weights) if per_layer else 1), norms
    assert sum(cols for _, cols in norms) == sum(weights), norms
    assert len({r for _, r, _ in refits}) == len(ct.RIDGE_SCALES)  # every ridge of the path ran
    # The first refit of each (block, ridge) is its magnitude support: solved once, iht starts
    # from it (and magnitude + backsolve is read from it) instead of solving it again.
    first = {}
    for block, ridge, support in refits:
        first.setdefault((block, ridge), support)
    for (block, ridge), support in first.items():
        assert refits.count((block, ridge, support)) == 1, (ridge, support)
    # The magnitude support and its Gram do not depend on the ridge: one Gram for the whole
    # path where k > n (there a refit of a support is an n x n Gram over its columns).
    wide = {support for support in first.values() if len(support) > 64}
    assert wide
    for support in wide:
        assert grams.count(support) == 1, grams.count(support)


def test_demo_runs_and_prints_its_table(capsys):
    pytest.importorskip("sklearn")
    from chita_core import demo

    demo.main(["--sparsities", "0.9", "--epochs", "2", "--n-grads", "200", "--stages", "2"])
    out = capsys.readouterr().out
    assert "trained in" in out and "test accuracy" in out
    rows = [ln for ln in out.splitlines() if ln.strip().startswith("90%")]
    header = next(ln for ln in out.splitlines() if "method" in ln)
    col, name = header.index("test acc"), header.index("method")
    assert [r[name:col].strip() for r in rows] == [
        "magnitude",
        "magnitude + backsolve",
        "chita_core, 1 stage",
        "chita_core, 2 stages",
    ]
    for r in rows:
        acc = float(r[col : col + len("test acc") + 1])
        assert 0.0 <= acc <= 1.0
