"""Calibration samples and per-sample gradients: the matrix A (chita_core.torch)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ._params import _aliases

#: Bytes of per-sample gradients held at once while A is built (bounds the vmap chunk).
_CHUNK_BYTES = 256 << 20


def _draw(
    data: Iterable[Any], n: int | None, device: torch.device, name: str = "data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n samples of ``data`` (all of them when n is None) on ``device``."""
    xs, ys, got = [], [], 0
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                f"`{name}` must yield (input, target) pairs of tensors with the samples along the "
                f"first dimension, got {type(batch).__name__}"
            )
        x, y = (torch.as_tensor(t) for t in batch)
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"`{name}` batches must have inputs and targets with the same leading (sample) "
                f"dimension, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        take = x.shape[0] if n is None else min(n - got, x.shape[0])
        xs.append(x[:take].to(device))
        ys.append(y[:take].to(device))
        got += take
        if n is not None and got >= n:
            break
    if n is None and got == 0:
        raise ValueError(f"`{name}` yielded no samples")
    if n is not None and got < n:
        raise ValueError(
            f"`{name}` yielded {got} samples but n_grads={n} were requested; pass more data or "
            "a smaller `n_grads`"
        )
    return torch.cat(xs), torch.cat(ys)


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
    loss_fn: Callable[..., torch.Tensor],
    X: torch.Tensor,
    Y: torch.Tensor,
    selected: Sequence[tuple[str, nn.Module, str, nn.Parameter]],
    chunk: int | None,
    progress: bool,
    a_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A = G / sqrt(n) with G[i] the gradient of sample i's loss w.r.t. the selected tensors
    (flattened, concatenated), as an (n, p) F-ordered tensor on the model's device, stored in
    ``a_dtype`` (default: the parameters' dtype; each chunk of gradients is rounded into it)."""
    from torch.func import functional_call, grad, vmap

    names = [q for q, *_ in selected]
    sizes = [par.numel() for *_, par in selected]
    par0 = selected[0][3]
    n, p = X.shape[0], sum(sizes)
    storage = torch.empty((p, n), dtype=a_dtype or par0.dtype, device=par0.device)
    A = storage.t()  # (n, p), F order: column j contiguous
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

    def sample_loss(sel: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        tensors = {**state, **sel}
        tensors.update({q: tensors[first] for q, first in tied.items()})
        out = functional_call(model, tensors, (x.unsqueeze(0),), tie_weights=False)
        loss = loss_fn(out, y.unsqueeze(0))
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                "`loss_fn` must return a scalar tensor (the mean or sum over the batch, e.g. "
                f"reduction='mean'), got {got}"
            )
        return loss

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    sel = {q: par.detach() for q, _, _, par in selected}
    if chunk is None:
        chunk = max(1, min(n, _CHUNK_BYTES // max(1, 3 * p * par0.element_size())))
    scale = 1.0 / math.sqrt(n)
    was_training = model.training
    model.eval()  # per-sample statistics: no batch-norm updates, no dropout
    bar = _Progress(progress, n, "per-sample gradients")
    try:
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            grads = per_sample(sel, X[i0:i1], Y[i0:i1])
            off = 0
            for name, size in zip(names, sizes, strict=True):
                storage[off : off + size, i0:i1] = grads[name].reshape(i1 - i0, size).t() * scale
                off += size
            bar.update(i1 - i0)
    finally:
        bar.close()
        model.train(was_training)
    return A
