"""chita_core.torch.prune on Hugging Face transformers (built from a config: no download) and
on models torch.func.vmap can trace: dict batches, (dict, target) pairs, the model's own loss,
the per-sample fallback where vmap fails (with its gradients against a hand-written per-sample
backward loop), tied embedding / decoder weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch import nn  # noqa: E402

import chita_core.torch as ct  # noqa: E402
import chita_core.torch._prune as ct_prune  # noqa: E402

V, T = 40, 9


def _config(**kw):
    return transformers.BertConfig(
        vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3, **kw,
    )  # fmt: skip


def _batches(n=24, batch=8, seed=0, labels="class"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, T), generator=g)
    att = torch.ones(n, T, dtype=torch.long)
    att[::3, 6:] = 0  # padded samples: the attention-mask code vmap cannot trace
    y = torch.randint(0, 3, (n,), generator=g) if labels == "class" else ids
    return [
        {"input_ids": ids[i : i + batch], "attention_mask": att[i : i + batch],
         "labels": y[i : i + batch]}
        for i in range(0, n, batch)
    ]  # fmt: skip


def _classifier(seed=0):
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(_config()).eval()


def test_hf_classifier_prunes_with_dict_batches_and_its_own_loss():
    model = _classifier()
    with pytest.warns(RuntimeWarning) as rec:
        rep = ct.prune(model, None, _batches(), 0.5, n_grads=24, ridge=0.1, progress=False)
    assert len([w for w in rec if "vmap cannot trace this model" in str(w.message)]) == 1
    # k (thousands) >> n = 24: the quadratic model is close to degenerate; said, and reported
    said = [str(w.message) for w in rec if "degenerate" in str(w.message)]
    assert len(said) == 1 and "raise n_grads" in said[0]
    stage = rep.stages[0]
    assert stage.degenerate and stage.k_over_n == pytest.approx(stage.k / 24)
    assert stage.gain_over_backsolve is None  # (one ridge: magnitude + backsolve not run)
    assert rep.sparsity == pytest.approx(0.5, abs=1e-3)
    for name, (sp, m) in rep.tensors.items():
        assert m > 0 and 0.0 <= sp <= 1.0, name
    masks = {n: b for n, b in model.named_buffers() if n.endswith("weight_mask")}
    assert len(masks) == len(rep.tensors)  # every Linear of the encoder, pooler and head
    # the pruned model still runs, and its masked weights are zero
    for name in rep.tensors:
        mod = model.get_submodule(name.rsplit(".", 1)[0])
        assert torch.all(mod.weight[mod.weight_mask == 0] == 0)
    out = model(**{k: v for k, v in _batches()[0].items() if k != "labels"})
    assert torch.isfinite(out.logits).all()


def test_hf_dict_inputs_with_targets_and_a_loss_fn():
    model = _classifier(1)
    pairs = [({k: v for k, v in b.items() if k != "labels"}, b["labels"]) for b in _batches()]

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out.logits, y)

    with pytest.warns(RuntimeWarning) as rec:
        rep = ct.prune(model, loss_fn, pairs, 0.7, n_grads=20, ridge=0.1, progress=False)
    assert rep.sparsity == pytest.approx(0.7, abs=1e-3) and rep.n_grads == 20
    assert any("vmap" in str(w.message) for w in rec)


def test_fallback_gradients_equal_a_per_sample_backward_loop():
    """The fallback's A against an independent reference: each sample's loss backpropagated
    alone through the model, gradients read from .grad."""
    model = _classifier(2)
    data = _batches(n=12, batch=5)
    selected = ct_prune._select(model, None)
    samples = ct_prune._draw(data, 12, torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="vmap"):
        A = ct_prune._gradient_matrix(model, None, samples, selected, 4, False)
    assert A.shape == (12, sum(p.numel() for *_, p in selected)) and A.t().is_contiguous()
    i = 0
    for b in data:
        for j in range(b["input_ids"].shape[0]):
            model.zero_grad()
            model(**{k: v[j : j + 1] for k, v in b.items()}).loss.backward()
            g = torch.cat([p.grad.reshape(-1) for *_, p in selected]).double()
            np.testing.assert_allclose(
                A[i].double().numpy() * np.sqrt(12), g.numpy(), rtol=1e-4, atol=1e-6
            )
            i += 1


def test_tied_embedding_and_decoder_pruned_once_with_one_mask():
    torch.manual_seed(3)
    model = transformers.BertForMaskedLM(_config()).eval()
    emb = model.bert.embeddings.word_embeddings
    dec = model.cls.predictions.decoder
    assert dec.weight is emb.weight
    params = [emb, model.bert.encoder.layer[0].attention.self.query]
    with pytest.warns(RuntimeWarning) as rec:
        rep = ct.prune(
            model, None, _batches(labels="tokens"), 0.6, n_grads=16, params=params,
            ridge=0.1, progress=False,
        )  # fmt: skip
    assert list(rep.tensors) == [
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
    ]
    assert any("vmap" in str(w.message) for w in rec)
    assert emb.weight_mask is dec.weight_mask  # one mask, on both holders
    assert torch.equal(emb.weight, dec.weight)
    assert rep.sparsity == pytest.approx(0.6, abs=1e-3)


def test_traceable_model_keeps_vmap_without_warning(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    X, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    used = []
    real = ct_prune._gradient_matrix.__globals__["_loop_gradients"]

    def spy(*args):
        used.append(True)
        return real(*args)

    monkeypatch.setitem(ct_prune._gradient_matrix.__globals__, "_loop_gradients", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning, nothing else either
        ct.prune(model, nn.CrossEntropyLoss(), [(X, y)], 0.5, n_grads=30, progress=False)
        # dict batches through vmap too: model(**batch) with the loss from loss_fn(out, batch)
        wrapped = _Keyword(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)))
        ct.prune(
            wrapped, lambda out, b: nn.functional.cross_entropy(out, b["y"]),
            [{"x": X, "y": y}], 0.5, n_grads=30, progress=False,
        )  # fmt: skip
    assert not used


class _Keyword(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, y=None):
        return self.inner(x)


def test_bad_batches_and_missing_loss():
    model = _classifier()
    with pytest.raises(ValueError, match="share their leading"):
        ct.prune(
            model, None, [{"input_ids": torch.zeros(4, T, dtype=torch.long),
                           "labels": torch.zeros(3, dtype=torch.long)}], 0.5, n_grads=4,
            progress=False,
        )  # fmt: skip
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in _batches()]
    with pytest.raises(ValueError, match="must return its own loss"), pytest.warns(RuntimeWarning):
        ct.prune(model, None, unlabeled, 0.5, n_grads=8, progress=False)
    with pytest.raises(TypeError, match="`loss_fn` must be callable or None"):
        ct.prune(model, "mse", _batches(), 0.5, n_grads=8, progress=False)
