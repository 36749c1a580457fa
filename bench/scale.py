"""Solver cost at ResNet20 size: chita_core's default against magnitude + backsolve.

``python -m bench.scale [--quick] [--repeats N] [--out PATH]``

A pruning problem of ResNet20 size (n = 1000 per-sample gradients, p = 268,336 weights, float32,
F order, k = p/10): A is Gaussian with a few shared factors (correlated columns, as gradients
are), w_bar dense, b = A w_bar, ridge = 1e-3 x the mean squared column norm. In the same run it
times magnitude pruning + chita_core.backsolve (the baseline the issue names) and the default
``chita_core.iht``, and reports the time ratio and both objectives, plus the default's stages.
``--quick`` uses p = 100,000.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import chita_core
from bench.harness import JsonlWriter
from chita_core import _core


def build_problem(
    n: int, p: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n, 8)).astype(np.float32)
    A = np.empty((n, p), dtype=np.float32, order="F")
    block = 16384
    for j0 in range(0, p, block):
        j1 = min(p, j0 + block)
        loads = rng.standard_normal((8, j1 - j0)).astype(np.float32) * 0.3
        A[:, j0:j1] = rng.standard_normal((n, j1 - j0), dtype=np.float32) + factors @ loads
    scale = rng.random(p).astype(np.float32) + 0.5
    w_bar = rng.standard_normal(p).astype(np.float32) * scale
    b = np.empty(n)
    _core.support_matvec(A, np.arange(p, dtype=np.int64), w_bar.astype(np.float64), b)
    h = np.empty(p)
    _core.column_sqnorms(A, h)
    return A, b.astype(np.float32), w_bar, 1e-3 * float(h.mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method (median)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    n, p = 1000, (100_000 if args.quick else 268_336)
    k = p // 10
    out = args.out or Path("bench/results") / f"scale{'_quick' if args.quick else ''}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)

    A, b, w_bar, ridge = build_problem(n, p)
    print(
        f"n={n} p={p:,} k={k:,} float32 F order, ridge={ridge:.3g}, load {os.getloadavg()[0]:.1f}"
    )

    def magnitude_backsolve() -> np.ndarray:
        support = np.sort(np.argpartition(-np.abs(w_bar), k - 1)[:k])
        return chita_core.backsolve(A, b, support, ridge=ridge, w_bar=w_bar)

    times_mb, times_def = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        w_mb = magnitude_backsolve()
        times_mb.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar)
        times_def.append(time.perf_counter() - t)
    f_mb = chita_core.objective(A, b, w_mb, ridge=ridge, w_bar=w_bar)
    t_mb, t_def = float(np.median(times_mb)), float(np.median(times_def))
    print(f"  magnitude + backsolve  objective {f_mb:.6g}   {t_mb:6.2f} s")
    print(
        f"  chita_core default     objective {res.objective:.6g}   {t_def:6.2f} s"
        f"   ({100 * (1 - res.objective / f_mb):.2f}% lower, {t_def / t_mb:.1f}x the time)"
    )
    for label, f, sec in res.stages:
        print(f"      {label:<34} {f:.6g}  {sec:6.2f} s")
    with JsonlWriter(out, benchmark="scale", quick=args.quick) as writer:
        writer.write(
            {
                "kind": "scale",
                "n": n,
                "p": p,
                "k": k,
                "ridge": ridge,
                "magnitude_backsolve": {"objective": f_mb, "seconds": times_mb},
                "default": {"objective": res.objective, "seconds": times_def, "stages": res.stages},
                "time_ratio": t_def / t_mb,
                "loadavg_1min": os.getloadavg()[0],
            }
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
