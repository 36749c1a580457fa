"""chita_core.torch.prune_layerwise (docs/design.md, section 14.8): H from forward hooks
against X^T X / N formed by hand, sequential calibration on the pruned model, every pattern
exact, masks that stay zero through an optimizer step, dict batches, convolutions, bad input."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import chita_core.torch as ct  # noqa: E402
from chita_core import prune_layer  # noqa: E402


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8)).double()


def _batches(n=4, size=32, d=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, d, generator=g, dtype=torch.float64) for _ in range(n)]


def _H(X):
    return (X.T @ X / X.shape[0]).numpy()


def test_one_pass_matches_prune_layer_on_hand_made_h():
    model, data = _mlp(), _batches()
    dense = [m.weight.detach().clone() for m in (model[0], model[2])]
    X0 = torch.cat(data)
    X1 = torch.relu(X0 @ dense[0].T + model[0].bias.detach())
    rep = ct.prune_layerwise(model, data, 0.5, sequential=False, progress=False)
    for mod, W, X, r in zip((model[0], model[2]), dense, (X0, X1), rep.layers, strict=True):
        expect = prune_layer(W.numpy(), _H(X), 0.5)
        np.testing.assert_allclose(mod.weight.detach().numpy(), expect.W, rtol=1e-9, atol=1e-12)
        assert r.error == pytest.approx(expect.error, rel=1e-9) and r.tokens == X.shape[0]
        assert np.all((mod.weight.detach().numpy() != 0).sum(axis=1) == W.shape[1] // 2)


def test_sequential_calibrates_on_the_pruned_layers_before():
    model, data = _mlp(), _batches()
    X0 = torch.cat(data)
    W2 = model[2].weight.detach().clone().numpy()
    rep = ct.prune_layerwise(model, data, 0.5, progress=False)
    with torch.no_grad():
        X1 = torch.relu(model[0](X0))  # through the first layer as pruned
    expect = prune_layer(W2, _H(X1), 0.5)
    np.testing.assert_allclose(model[2].weight.detach().numpy(), expect.W, rtol=1e-9, atol=1e-12)
    assert rep.layers[1].error == pytest.approx(expect.error, rel=1e-9)
    dense_h = prune_layer(
        W2,
        _H(
            torch.relu(
                X0 @ torch.tensor(_mlp()[0].weight.detach().numpy()).T + _mlp()[0].bias.detach()
            )
        ),
        0.5,
    )
    assert not np.allclose(dense_h.W, expect.W)  # (calibrating on the dense model differs)


def test_masks_stay_zero_through_an_optimizer_step_and_patterns_are_exact():
    model, data = _mlp(2), _batches()
    ct.prune_layerwise(model, data, pattern="2:4", progress=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.cat(data)).pow(2).mean()
    loss.backward()
    opt.step()
    for mod in (model[0], model[2]):
        w = mod.weight.detach().numpy()
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(axis=2)
        assert np.all(groups <= 2) and np.all(
            mod.weight_mask.numpy().reshape(w.shape[0], -1, 4).sum(2) == 2
        )


class _Keywords(nn.Module):
    """A model called with keyword arguments, as Hugging Face models are."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 12)
        self.proj = nn.Linear(12, 12)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.proj(h)


def test_dict_batches_and_a_layer_subset():
    torch.manual_seed(3)
    model = _Keywords()
    g = torch.Generator().manual_seed(4)
    data = [
        {"input_ids": torch.randint(0, 20, (4, 10), generator=g),
         "attention_mask": torch.ones(4, 10)}
        for _ in range(3)
    ]  # fmt: skip
    rep = ct.prune_layerwise(model, data, 0.75, layers=["proj"], n_tokens=100, progress=False)
    assert [r.name for r in rep.layers] == ["proj"] and rep.layers[0].tokens == 100
    assert np.all((model.proj.weight.detach().numpy() != 0).sum(axis=1) == 3)
    assert "proj" in str(rep)


def test_conv2d_through_unfold():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3)).double()
    g = torch.Generator().manual_seed(6)
    data = [torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    W0 = model[0].weight.detach().reshape(6, -1).clone()
    rep = ct.prune_layerwise(model, data, 0.5, sequential=False, progress=False)
    X = F.unfold(torch.cat(data), 3, padding=1).transpose(1, 2).reshape(-1, 27)
    expect = prune_layer(W0.numpy(), _H(X), 0.5)
    assert rep.layers[0].error == pytest.approx(expect.error, rel=1e-9)
    # The error is the layer's output reconstruction error per row of X.
    with torch.no_grad():
        dense = F.conv2d(torch.cat(data), W0.reshape(6, 3, 3, 3), padding=1)
        pruned = F.conv2d(torch.cat(data), model[0].weight, padding=1)
    per_row = float(((dense - pruned) ** 2).sum()) / X.shape[0]
    assert rep.layers[0].error == pytest.approx(per_row, rel=1e-8)


def test_conv1d_budgets():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1, dilation=1), nn.ReLU(), nn.Conv1d(8, 4, 1))
    data = [torch.randn(2, 4, 16) for _ in range(2)]
    rep = ct.prune_layerwise(model, data, 0.5, progress=False)
    assert [r.shape for r in rep.layers] == [(8, 12), (4, 8)]
    for mod in (model[0], model[2]):
        w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
        assert torch.all((w != 0).sum(dim=1) <= w.shape[1] // 2)
        assert torch.all(mod.weight_mask.reshape(w.shape[0], -1).sum(dim=1) == w.shape[1] // 2)


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"layers": ["nope"]}, ValueError, "`layers`"),
    ({"n_tokens": 0}, ValueError, "`n_tokens`"),
    ({"bogus": 1}, TypeError, "unknown option"),
    ({"data": iter(_batches())}, TypeError, "re-iterable"),
    ({"data": []}, ValueError, "no batches"),
    ({"data": ["text"]}, TypeError, "`data`"),
])  # fmt: skip
def test_bad_input(kw, exc, match):
    args = {"data": _batches(), **kw}
    with pytest.raises(exc, match=match):
        ct.prune_layerwise(_mlp(), args.pop("data"), 0.5, progress=False, **args)


def test_another_solver_through_the_same_calibration():
    from chita_core.layer import sparsegpt_layer

    model, data = _mlp(4), _batches()
    W0 = model[0].weight.detach().clone().numpy()
    rep = ct.prune_layerwise(model, data, 0.5, solver=sparsegpt_layer, progress=False)
    expect = sparsegpt_layer(W0, _H(torch.cat(data)), 0.5)
    np.testing.assert_allclose(model[0].weight.detach().numpy(), expect.W, rtol=1e-9, atol=1e-12)
    assert rep.layers[0].error == pytest.approx(expect.error, rel=1e-9)


class _Fork(nn.Module):
    """a and b read the same input (as attention's q, k and v do); c reads a(x) * b(x)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.c = nn.Linear(16, 12), nn.Linear(16, 12), nn.Linear(12, 4)
        self.double()
        self.c_calls = 0
        self.c.register_forward_pre_hook(lambda *_: setattr(self, "c_calls", self.c_calls + 1))

    def forward(self, x):
        return self.c(self.a(x) * self.b(x))


def test_layers_sharing_an_input_are_calibrated_in_one_pass_ended_early():
    """a and b form one calibration group (H from the dense input, as strict sequential order
    gives, since neither depends on the other); that pass ends each forward before c, so c runs
    once in the probe and once per batch of its own pass; c is calibrated on pruned a and b."""
    model, data = _Fork(), _batches(n=3)
    X0 = torch.cat(data)
    Wa, Wb, Wc = (m.weight.detach().clone().numpy() for m in (model.a, model.b, model.c))
    rep = ct.prune_layerwise(model, data, 0.5, progress=False)
    assert [r.name for r in rep.layers] == ["a", "b", "c"]
    assert model.c_calls == 1 + len(data)
    for mod, W in ((model.a, Wa), (model.b, Wb)):
        expect = prune_layer(W, _H(X0), 0.5)
        np.testing.assert_allclose(mod.weight.detach().numpy(), expect.W, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        X1 = model.a(X0) * model.b(X0)
    expect = prune_layer(Wc, _H(X1), 0.5)
    np.testing.assert_allclose(model.c.weight.detach().numpy(), expect.W, rtol=1e-9, atol=1e-12)


def test_n_tokens_ends_the_calibration_pass():
    model, data = _Fork(), _batches(n=6, size=32)
    rep = ct.prune_layerwise(model, data, 0.5, n_tokens=40, progress=False)
    assert all(r.tokens == 40 for r in rep.layers)
    assert model.c_calls == 1 + 2  # (40 rows: two batches of 32)


def test_hugging_face_bert_with_dict_batches():
    """A Hugging Face BertModel (built from a config, random weights) pruned through dict
    batches: every encoder Linear in call order (q, k and v in one calibration group), every
    row's budget exact, the summed error below SparseGPT's through the same calibration."""
    transformers = pytest.importorskip("transformers")
    import copy

    from chita_core.layer import sparsegpt_layer

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(4):
        ids = torch.randint(0, 64, (4, 24), generator=g)
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    base = copy.deepcopy(model)
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    rep = ct.prune_layerwise(model, data, 0.5, layers=layers, progress=False)
    ref_rep = ct.prune_layerwise(base, data, 0.5, layers=layers, progress=False,
                                 solver=sparsegpt_layer)  # fmt: skip
    names = [r.name for r in rep.layers]
    assert names[:3] == [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    assert sorted(names) == sorted(layers)
    for name in layers:
        W = model.get_submodule(name).weight.detach()
        assert torch.all((W != 0).sum(dim=1) == W.shape[1] // 2)
    assert sum(r.error for r in rep.layers) < sum(r.error for r in ref_rep.layers)
    with torch.no_grad():
        out = model(**data[0]).last_hidden_state
    assert torch.isfinite(out).all()
