"""PyTorch adapter: prune a trained ``torch.nn.Module`` with chita_core in a few lines.

Typical use::

    report = chita_core.torch.prune(model, nn.CrossEntropyLoss(), loader, sparsity=0.9)
    print(report)

What :func:`prune` does (CHITA, and CHITA++ with ``stages > 1``):

1. draws ``n_grads`` samples from ``data`` and computes their per-sample gradients at the
   current weights with ``torch.func`` (``vmap`` over ``grad``), in chunks that bound memory,
   written straight into an (n, p) matrix ``A = G / sqrt(n)`` in F order on the model's device
   (the layout the solver reads fastest), so that ``0.5 ||A (w - w_bar)||^2`` is the
   empirical-Fisher model of the loss change; no p x p matrix is ever formed;
2. solves one global problem over all selected tensors (the solver decides how the sparsity is
   spread across layers) or, with ``per_layer=True``, one per tensor at the same sparsity
   (column slices of the same A: no copy);
3. writes the pruned weights back and registers masks with ``torch.nn.utils.prune``, so the
   pruned weights stay zero in later training; :func:`remove_masks` makes them permanent.

Tied weights (one Parameter held by several modules, e.g. an LM whose output layer shares the
embedding's ``weight``) are one variable: one block of columns in A, whose gradient is the sum
over the tensor's uses; every module holding it gets the same mask and keeps reading the one
``weight_orig`` Parameter, so the tie survives pruning, training and :func:`remove_masks`.

With ``stages > 1`` the target is reached through a schedule of sparsities, recomputing the
gradients at the pruned weights between stages. torch is an optional dependency
(``pip install "chita_core[torch]"``); ``import chita_core`` never imports it.

The adapter's modules: ``_params`` (which parameters, tied weights, masks, writing back),
``_gradients`` (calibration samples and the per-sample gradient matrix A), ``_solve`` (A's
column blocks as prepared problems and the ridge path), ``_prune`` (the stages of
:func:`prune` and its report), ``_distributed`` (:func:`prune` with ``group=``: the samples
split over the ranks of a process group, A over their columns) and ``_layerwise``
(:func:`prune_layerwise`: layer by layer from calibration activations, through
:func:`chita_core.prune_layer`).
"""

from __future__ import annotations

from ._layerwise import LayerReport, LayerwiseReport, prune_layerwise
from ._params import remove_masks
from ._prune import RIDGE_SCALES, PruneReport, StageReport, prune, schedule_sparsities

__all__ = [
    "RIDGE_SCALES",
    "LayerReport",
    "LayerwiseReport",
    "PruneReport",
    "StageReport",
    "prune",
    "prune_layerwise",
    "remove_masks",
    "schedule_sparsities",
]
