"""Calibration samples and per-sample gradients: the matrix A (chita_core.torch)."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._params import _aliases

#: Bytes of per-sample gradients held at once while A is built (bounds the vmap chunk).
_CHUNK_BYTES = 256 << 20


@dataclass
class _Batch:
    """Calibration samples as one batch came: ``inputs`` (a tensor, a tuple of positional
    inputs, or a dict of keyword inputs), ``target`` (None for dict batches, whose loss comes
    from ``loss_fn(output, batch)`` or the model's own ``output.loss``), ``size`` samples along
    the first dimension of every tensor."""

    inputs: Any
    target: Any
    size: int
    keyword: bool  # a dict batch: model(**inputs)

    def cut(self, i0: int, i1: int) -> _Batch:
        """Samples i0..i1 of this batch (views, no copy)."""
        return _Batch(_tree_map(lambda t: t[i0:i1], self.inputs),
                      None if self.target is None else self.target[i0:i1], i1 - i0,
                      self.keyword)  # fmt: skip

    def tensors(self) -> list[torch.Tensor]:
        """The batch's tensors (inputs, then target), in a fixed order: what vmap maps over."""
        out = _leaves(self.inputs)
        if self.target is not None:
            out.append(self.target)
        return out

    def rebuilt(self, tensors: Sequence[torch.Tensor]) -> _Batch:
        """This batch's structure with ``tensors`` (as from :meth:`tensors`) in its leaves."""
        it = iter(tensors)
        inputs = _tree_map(lambda _: next(it), self.inputs)
        target = None if self.target is None else next(it)
        return _Batch(inputs, target, self.size, self.keyword)

    def loss(self, model: Callable[..., Any], loss_fn: Callable[..., Any] | None) -> torch.Tensor:
        """The batch's loss: ``loss_fn(model(x), y)`` (``model(**x)`` for dict inputs),
        ``loss_fn(model(**batch), batch)`` for a dict batch, or the model's own loss
        (``output.loss``) when ``loss_fn`` is None."""
        if self.keyword:
            out = model(**self.inputs)
        elif isinstance(self.inputs, tuple):
            out = model(*self.inputs)
        else:
            out = model(self.inputs)
        if loss_fn is not None:
            loss = loss_fn(out, self.inputs if self.target is None else self.target)
        else:
            loss = _own_loss(out)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                "`loss_fn` must return a scalar tensor (the mean or sum over the batch, e.g. "
                f"reduction='mean'), got {got}"
            )
        return loss


def _own_loss(out: Any) -> Any:
    """``out.loss`` / ``out["loss"]`` (Hugging Face models given labels), for ``loss_fn=None``."""
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, dict):
        loss = out.get("loss")
    if loss is None:
        raise ValueError(
            "`loss_fn` is None, so the model must return its own loss (an output with a `loss`, "
            "as Hugging Face models do when the batch has `labels`), but its output has none; "
            "pass labels in the batches or a `loss_fn(output, batch)`"
        )
    return loss


def _leaves(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _leaves(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _leaves(v)]
    return []


def _tree_map(fn: Callable[[torch.Tensor], Any], x: Any) -> Any:
    """``x`` with ``fn`` applied to every tensor in it (dicts, tuples, lists; others kept)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: _tree_map(fn, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_tree_map(fn, v) for v in x)
    return x


@dataclass
class _Samples:
    """The first ``n`` calibration samples, in the batches they came in."""

    batches: list[_Batch]
    n: int

    def chunks(self, size: int) -> Iterator[tuple[int, _Batch]]:
        """(index of the first sample, sub-batch) of at most ``size`` samples, in order."""
        at = 0
        for b in self.batches:
            for i0 in range(0, b.size, size):
                i1 = min(b.size, i0 + size)
                yield at + i0, b.cut(i0, i1)
            at += b.size

    def part(self, i0: int, i1: int) -> _Samples:
        """Samples i0..i1 (views of the batches, no copy)."""
        batches, at = [], 0
        for b in self.batches:
            lo, hi = max(i0, at), min(i1, at + b.size)
            if lo < hi:
                batches.append(b.cut(lo - at, hi - at))
            at += b.size
        return _Samples(batches, max(0, min(i1, self.n) - i0))


def _as_batch(batch: Any, name: str, device: torch.device) -> _Batch:
    """One batch of ``data`` on ``device``: an (input, target) pair (input a tensor, a tuple of
    tensors or a dict of keyword inputs) or a dict of keyword inputs."""
    if isinstance(batch, dict):
        inputs, target, keyword = batch, None, True
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, target = batch
        keyword = isinstance(inputs, dict)
        if isinstance(inputs, list):
            inputs = tuple(inputs)
        if not isinstance(inputs, (dict, tuple)):
            inputs = torch.as_tensor(inputs)
        target = torch.as_tensor(target)
    else:
        raise TypeError(
            f"`{name}` must yield (input, target) pairs of tensors or dicts of keyword inputs "
            f"(model(**batch)) with the samples along the first dimension, got "
            f"{type(batch).__name__}"
        )
    inputs = _tree_map(lambda t: t.to(device), inputs)
    target = None if target is None else target.to(device)
    tensors = _leaves(inputs) + ([] if target is None else [target])
    sizes = {t.shape[0] if t.dim() else None for t in tensors}
    if not tensors or len(sizes) != 1 or None in sizes:
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(
            f"`{name}` batches must hold tensors that share their leading (sample) dimension, "
            f"got shapes {shapes}"
        )
    return _Batch(inputs, target, sizes.pop(), keyword)


def _draw(
    data: Iterable[Any],
    n: int | None,
    device: torch.device,
    name: str = "data",
    exact: bool = True,
) -> _Samples:
    """The first n samples of ``data`` (all of them when n is None) on ``device``; fewer when
    ``data`` runs out and not ``exact``."""
    batches, got = [], 0
    for raw in data:
        b = _as_batch(raw, name, device)
        take = b.size if n is None else min(n - got, b.size)
        if take > 0:
            batches.append(b.cut(0, take) if take < b.size else b)
        got += take
        if n is not None and got >= n:
            break
    if got == 0:
        raise ValueError(f"`{name}` yielded no samples")
    if n is not None and got < n and exact:
        raise ValueError(
            f"`{name}` yielded {got} samples but n_grads={n} were requested; pass more data or "
            "a smaller `n_grads`"
        )
    return _Samples(batches, got)


class _Progress:
    """tqdm when installed, else nothing (``progress=False`` is always silent)."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                print(f"chita_core.torch: {desc} ({total})", file=sys.stderr)
            else:
                self.bar = tqdm(total=total, desc=desc, leave=False)

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _gradient_matrix(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor] | None,
    samples: _Samples,
    selected: Sequence[tuple[str, nn.Module, str, nn.Parameter]],
    chunk: int | None,
    progress: bool,
    a_dtype: torch.dtype | None = None,
    total: int | None = None,
) -> torch.Tensor:
    """A = G / sqrt(n) with G[i] the gradient of sample i's loss w.r.t. the selected tensors
    (flattened, concatenated), as an (n, p) F-ordered tensor on the model's device, stored in
    ``a_dtype`` (default: the parameters' dtype; each chunk of gradients is rounded into it).
    With ``total``, the samples' rows of a larger A: scaled by 1 / sqrt(total) instead.

    The gradients come from ``torch.func`` (vmap over grad, chunk by chunk) where the model
    can be traced so; a model that vmap cannot trace (data-dependent control flow, as Hugging
    Face attention-mask code has, in-place updates of captured tensors, hooks, ...) falls back,
    with one warning, to a backward pass per sample: the same gradients, slower."""
    sizes = [par.numel() for *_, par in selected]
    par0 = selected[0][3]
    n, p = samples.n, sum(sizes)
    storage = torch.empty((p, n), dtype=a_dtype or par0.dtype, device=par0.device)
    A = storage.t()  # (n, p), F order: column j contiguous
    if chunk is None:
        chunk = max(1, min(n, _CHUNK_BYTES // max(1, 3 * p * par0.element_size())))
    scale = 1.0 / math.sqrt(n if total is None else total)

    def store(i0: int, grads: Sequence[torch.Tensor], m: int) -> None:
        off = 0
        for g, size in zip(grads, sizes, strict=True):
            storage[off : off + size, i0 : i0 + m] = g.reshape(m, size).t() * scale
            off += size

    was_training = model.training
    model.eval()  # per-sample statistics: no batch-norm updates, no dropout
    bar = _Progress(progress, n, "per-sample gradients")
    try:
        per_sample = _vmapped(model, loss_fn, selected)
        pending = samples.chunks(chunk)
        for i0, b in pending:
            try:
                grads = per_sample(b)
            except ValueError:
                raise  # the caller's error (a loss that is not a scalar), not vmap's
            except Exception as exc:  # vmap cannot trace this model: one backward per sample
                if i0 != 0:
                    raise
                warnings.warn(
                    "chita_core.torch: torch.func.vmap cannot trace this model "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); computing the "
                    "per-sample gradients with one backward pass per sample instead (the same "
                    "gradients, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _loop_gradients(model, loss_fn, samples, selected, store, bar)
                break
            store(i0, grads, b.size)
            bar.update(b.size)
    finally:
        bar.close()
        model.train(was_training)
    return A


def _vmapped(
    model: nn.Module,
    loss_fn: Callable[..., Any] | None,
    selected: Sequence[tuple[str, nn.Module, str, nn.Parameter]],
) -> Callable[[_Batch], list[torch.Tensor]]:
    """batch -> the selected tensors' per-sample gradients ([batch, *shape] each), by
    ``vmap(grad(loss of one sample))`` over every tensor of the batch."""
    from torch.func import functional_call, grad, vmap

    names = [q for q, *_ in selected]
    state = {k: v.detach() for k, v in model.named_parameters()}
    state.update({k: v.detach() for k, v in model.named_buffers()})
    # Tied tensors: one entry in `state` (and in `sel`), under their named_parameters() name;
    # every other module holding them gets the very same tensor, so that a tied weight is one
    # variable and its gradient the sum over its uses. This is what functional_call's
    # tie_weights=True does, except that it also swaps a module reachable by two paths twice
    # and then restores it to the swapped-in tensor (torch 2.x), corrupting the model.
    tied = {
        q: holders[0][0]
        for holders in _aliases(model).values()
        if holders[0][0] in state
        for q, _, _ in holders[1:]
    }
    sel = {q: par.detach() for q, _, _, par in selected}

    def run(batch: _Batch) -> list[torch.Tensor]:
        def sample_loss(chosen: dict[str, torch.Tensor], leaves: list[torch.Tensor]):
            tensors = {**state, **chosen}
            tensors.update({q: tensors[first] for q, first in tied.items()})
            one = batch.rebuilt([t.unsqueeze(0) for t in leaves])

            def call(*args: Any, **kwargs: Any) -> Any:
                return functional_call(model, tensors, args, kwargs, tie_weights=False)

            return one.loss(call, loss_fn)

        grads = vmap(grad(sample_loss), in_dims=(None, 0))(sel, batch.tensors())
        return [grads[q] for q in names]

    return run


def _loop_gradients(
    model: nn.Module,
    loss_fn: Callable[..., Any] | None,
    samples: _Samples,
    selected: Sequence[tuple[str, nn.Module, str, nn.Parameter]],
    store: Callable[[int, Sequence[torch.Tensor], int], None],
    bar: _Progress,
) -> None:
    """Every sample's gradient by its own forward and backward pass (autograd.grad on the
    selected parameters: a tied parameter is one tensor, its gradient summed over its uses)."""
    params = [par for *_, par in selected]
    for i0, b in samples.chunks(1):
        with torch.enable_grad():
            loss = b.loss(model, loss_fn)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        store(
            i0,
            [torch.zeros_like(q) if g is None else g for g, q in zip(grads, params, strict=True)],
            1,
        )
        bar.update(1)
