"""Layer-wise pruning: chita_core.prune_layer against SparseGPT, Wanda and magnitude on one
synthetic layer (the transformer benchmarks are bench/lm.py and bench/pretrained.py), and the
planner's cost model against measured time.

Run ``python -m bench.layer [--d 384] [--rows 384] [--model] [--out bench/results/layer.jsonl]``
from the repository root. ``--model`` prints, for layers from 128 x 512 to 384 x 1536, the
modeled and measured seconds of SparseGPT and of the planned search (docs/design.md,
section 14.7). The layer: W (rows x d) with N(0, 1/d) entries; calibration inputs X (N x d,
N = 2048) with correlated features (X = Z (I + 0.3 G), Z and G standard normal) and six
features scaled by 15 (the outlier features of transformer activations); H = X^T X / N.
Reported: each method's summed reconstruction error on the undamped H over SparseGPT's, and
its time, at 50% and 70% unstructured (every row's budget) and 2:4. Every method uses the same
damping (1% of the mean diagonal). Wanda and magnitude keep the dense weights on their masks
(no update), as published.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.harness import JsonlWriter
from chita_core.layer import prune_layer, sparsegpt_layer


def synthetic_layer(rows: int, d: int, N: int = 2048, seed: int = 0):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((d, d)) * 0.3 + np.eye(d)
    X = rng.standard_normal((N, d)) @ F
    X[:, rng.choice(d, 6, replace=False)] *= 15.0
    W = rng.standard_normal((rows, d)) / np.sqrt(d)
    return W, X.T @ X / N


def _no_update(W, H, sparsity, pattern, wanda):
    """Magnitude / Wanda (Sun et al. 2024) as layer solvers with prune_layer's signature: the
    pattern's mask of |w| (Wanda: |w_j| sqrt(H_jj), i.e. |w_j| ||X_j|| up to a constant), the
    dense weights kept on it, no update. W and H may be NumPy arrays or torch tensors."""
    from chita_core.layer import LayerResult
    from chita_core.layer import _prepare as prepare

    prob = prepare(W, H, 0.0 if sparsity is None else sparsity, pattern, 0.01, "row")
    score = np.abs(prob.W_bar)
    if wanda:
        score = score * np.sqrt(np.maximum(np.diagonal(prob.H), 0.0))[None, :]
    mask = prob.pattern.project(score)
    Wp = np.where(mask, prob.W_bar, 0.0)
    if hasattr(W, "detach"):  # torch in, torch out
        import torch

        return LayerResult(torch.from_numpy(Wp).to(W), torch.from_numpy(mask), prob.error(Wp))
    return LayerResult(Wp, mask, prob.error(Wp))


def wanda_layer(W, H, sparsity=None, *, pattern="unstructured", **_):
    return _no_update(W, H, sparsity, pattern, wanda=True)


def magnitude_layer(W, H, sparsity=None, *, pattern="unstructured", **_):
    return _no_update(W, H, sparsity, pattern, wanda=False)


def model_check(out: JsonlWriter) -> None:
    """Modeled against measured seconds of SparseGPT and of prune_layer's planned search."""
    print("| layer | pattern | SparseGPT measured / modeled | search | measured / modeled |")
    print("|---|---|---:|---|---:|")
    for rows, d in ((128, 512), (512, 128), (384, 384), (1536, 384), (768, 768), (384, 1536)):
        W, H = synthetic_layer(rows, d)
        for pattern, sparsity in (("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)):
            t = time.perf_counter()
            sparsegpt_layer(W, H, sparsity, pattern=pattern)
            t_sg = time.perf_counter() - t
            res = prune_layer(W, H, sparsity, pattern=pattern)
            label, _, secs = res.stages[-1]
            m_sg, m_s = res.modeled.get("sparsegpt", float("nan")), res.modeled.get(label)
            label_p = pattern if sparsity is None else f"{sparsity:.0%}"
            ratio = f"{secs:.2f} / {m_s:.2f} s" if m_s is not None else f"{secs:.2f} s / -"
            print(f"| {rows} x {d} | {label_p} | {t_sg:.3f} / {m_sg:.3f} s | {label} | {ratio} |")
            out.write({"kind": "layer_model", "rows": rows, "d": d, "pattern": pattern,
                       "sparsity": sparsity, "sparsegpt": [t_sg, m_sg], "stage": label,
                       "search": [secs, m_s]})  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=384)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--model", action="store_true", help="the cost model against measured time")
    ap.add_argument("--out", default="bench/results/layer.jsonl")
    args = ap.parse_args(argv)
    if args.model:
        out = JsonlWriter(args.out)
        model_check(out)
        out.close()
        return
    W, H = synthetic_layer(args.rows, args.d)
    out = JsonlWriter(args.out)
    print(f"layer {args.rows} x {args.d}, N = 2048, six 15x outlier features")
    cols = ("pattern", "SparseGPT error", "time", "chita / SparseGPT", "time", "Wanda / SG")
    print("| " + " | ".join((*cols, "magnitude / SG")) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for pattern, sparsity in (("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)):
        t = time.perf_counter()
        sg = sparsegpt_layer(W, H, sparsity, pattern=pattern)
        t_sg = time.perf_counter() - t
        t = time.perf_counter()
        ours = prune_layer(W, H, sparsity, pattern=pattern)
        t_ours = time.perf_counter() - t
        wanda = wanda_layer(W, H, sparsity, pattern=pattern).error
        mag = magnitude_layer(W, H, sparsity, pattern=pattern).error
        label = pattern if sparsity is None else f"{sparsity:.0%}"
        print(
            f"| {label} | {sg.error:.4g} | {t_sg:.2f} s | {ours.error / sg.error:.3f} | "
            f"{t_ours:.2f} s ({t_ours / t_sg:.0f}x) | {wanda / sg.error:.2f} | "
            f"{mag / sg.error:.2f} |"
        )
        out.write({
            "kind": "layer", "pattern": pattern, "sparsity": sparsity, "rows": args.rows,
            "d": args.d, "sparsegpt": {"error": sg.error, "seconds": t_sg},
            "chita": {"error": ours.error, "seconds": t_ours,
                      "stages": [tuple(s) for s in ours.stages]},
            "wanda": {"error": wanda}, "magnitude": {"error": mag},
        })  # fmt: skip
    out.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
