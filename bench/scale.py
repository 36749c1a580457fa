"""Solver cost at scale: chita_core's default against magnitude + backsolve, same run.

``python -m bench.scale [--quick] [--problems gaussian,digits,backsolve] [--repeats N] [--out P]``

Problems (n = 1000 per-sample gradients, float32, F order):

- **gaussian**: ResNet20 size, p = 268,336 (``--quick``: 100,000), k = p/10. A is Gaussian with a
  few shared factors (correlated columns, as gradients are), w_bar dense, b = A w_bar,
  ridge = 1e-3 x the mean squared column norm.
- **digits**: real gradients, the NumPy MLP 64-256-256-10 of ``bench/digits_mlp.py`` trained on
  scikit-learn's digits (60 epochs, seed 0; p = 84,480 weights), A = per-sample gradients of the
  first 1000 training samples, 90% sparsity, ridge as above.
- **backsolve**: ``chita_core.backsolve`` on the gaussian problem's magnitude support
  (k = 26,833) against the same solve written with NumPy float64 calls (cast of the gathered
  columns, Gram, Cholesky, triangular solves).

For gaussian and digits it times magnitude pruning + ``chita_core.backsolve`` (the baseline) and
the default ``chita_core.iht``, and reports the time ratio, both objectives, the default's stages
and, where the solver reports its plan, each stage's modeled against measured seconds (the check
of the planner's cost model). The script uses only the public API, so it also measures older
versions of the package (``PYTHONPATH`` pointing at another checkout).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import chita_core
from bench.harness import JsonlWriter


def gaussian_problem(
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
    return _pruning(A, w_bar)


def digits_problem(
    n: int = 1000, hidden: tuple[int, ...] = (256, 256), epochs: int = 60
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from bench.digits_mlp import MLP, load_digits

    Xtr, ytr, _, _ = load_digits()
    rng = np.random.default_rng(0)
    model = MLP(Xtr.shape[1], hidden, 10, rng)
    model.train(Xtr, ytr, epochs, rng)
    A = np.asfortranarray(model.per_sample_gradients(Xtr[:n], ytr[:n]), dtype=np.float32)
    return _pruning(A, model.weights.astype(np.float32))


def _pruning(A: np.ndarray, w_bar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """b = A w_bar (accumulated in float64), ridge = 1e-3 x the mean squared column norm."""
    b = np.zeros(A.shape[0])
    h = np.empty(A.shape[1])
    block = 8192
    for j0 in range(0, A.shape[1], block):
        cols = A[:, j0 : j0 + block].astype(np.float64)
        b += cols @ w_bar[j0 : j0 + block].astype(np.float64)
        h[j0 : j0 + block] = (cols * cols).sum(axis=0)
    return A, b.astype(A.dtype), w_bar, 1e-3 * float(h.mean())


def magnitude_support(w_bar: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argpartition(-np.abs(w_bar), k - 1)[:k])


def compare_default(name: str, problem, sparsity: float, repeats: int) -> dict:
    A, b, w_bar, ridge = problem
    n, p = A.shape
    k = round((1.0 - sparsity) * p)
    support = magnitude_support(w_bar, k)
    print(f"{name}: n={n} p={p:,} k={k:,} {A.dtype} F order, ridge={ridge:.3g}")
    times_mb, times_def = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        w_mb = chita_core.backsolve(A, b, support, ridge=ridge, w_bar=w_bar)
        times_mb.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar)
        times_def.append(time.perf_counter() - t)
    f_mb = chita_core.objective(A, b, w_mb, ridge=ridge, w_bar=w_bar)
    t_mb, t_def = float(np.median(times_mb)), float(np.median(times_def))
    print(f"  magnitude + backsolve  objective {f_mb:.8g}   {t_mb:6.2f} s")
    print(
        f"  chita_core default     objective {res.objective:.8g}   {t_def:6.2f} s"
        f"   ({100 * (1 - res.objective / f_mb):.3f}% lower, {t_def / t_mb:.2f}x the time)"
    )
    for label, f, sec in res.stages:
        print(f"      {label:<40} {f:.8g}  {sec:6.2f} s")
    plan = [tuple(s) for s in getattr(res, "plan", [])]
    for stage, modeled, seconds in plan:
        print(f"      plan {stage:<20} modeled {modeled:6.2f} s   measured {seconds:6.2f} s")
    return {
        "kind": name,
        "n": n,
        "p": p,
        "k": k,
        "ridge": ridge,
        "magnitude_backsolve": {"objective": f_mb, "seconds": times_mb},
        "default": {
            "objective": res.objective,
            "seconds": times_def,
            "stages": [tuple(s) for s in res.stages],
            "plan": plan,
        },
        "time_ratio": t_def / t_mb,
    }


def numpy_backsolve(A, b, support, ridge, w_bar) -> np.ndarray:
    """The n-space backsolve in plain NumPy float64 calls: gather + cast, Gram (SYRK through
    ``X @ X.T``), Cholesky, two triangular solves (``solve`` on the factors)."""
    X = A[:, support].astype(np.float64)
    wb = w_bar[support].astype(np.float64)
    c = b.astype(np.float64) - X @ wb
    K = X @ X.T
    K[np.diag_indices_from(K)] += ridge
    L = np.linalg.cholesky(K)
    y = np.linalg.solve(L.T, np.linalg.solve(L, c))
    w = np.zeros(A.shape[1])
    w[support] = wb + X.T @ y
    return w


def compare_backsolve(problem, repeats: int) -> dict:
    """chita_core.backsolve (with its NaN/Inf scan of all of A, and without: the NumPy calls
    check nothing) against the NumPy float64 solve, interleaved round by round."""
    A, b, w_bar, ridge = problem
    k = A.shape[1] // 10
    support = magnitude_support(w_bar, k)
    runs = {
        "core": lambda: chita_core.backsolve(A, b, support, ridge=ridge, w_bar=w_bar),
        "nocheck": lambda: chita_core.backsolve(
            A, b, support, ridge=ridge, w_bar=w_bar, check_finite=False
        ),
        "numpy": lambda: numpy_backsolve(A, b, support, ridge, w_bar),
    }
    # Blocks of calls of one method, each after one untimed call: the first touch of a few
    # hundred MB of fresh memory costs ~0.5 s on this VM (page faults), and interleaving the
    # methods makes glibc hand memory back and forth, so that either side may pay it on every
    # call; in blocks each is timed in its steady state. Two passes over the three blocks.
    times: dict[str, list[float]] = {name: [] for name in runs}
    per_block = max(3, (repeats + 1) // 2)
    for _ in range(2):
        for name, call in runs.items():
            out = call()
            for _ in range(per_block):
                t = time.perf_counter()
                out = call()
                times[name].append(time.perf_counter() - t)
            if name == "core":
                w_core = out
            elif name == "numpy":
                w_np = out
    t_core, t_nocheck, t_np = times["core"], times["nocheck"], times["numpy"]
    f_core = chita_core.objective(A, b, w_core, ridge=ridge, w_bar=w_bar)
    f_np = chita_core.objective(A, b, w_np.astype(A.dtype), ridge=ridge, w_bar=w_bar)
    mc, mu, mn = (float(np.median(t)) for t in (t_core, t_nocheck, t_np))
    print(f"backsolve: n={A.shape[0]} k={k:,} {A.dtype} F order (median of {len(t_np)})")
    print(f"  chita_core.backsolve   {mc:6.3f} s   objective {f_core:.10g}   (ratio {mc / mn:.2f})")
    print(f"  check_finite=False     {mu:6.3f} s   (ratio {mu / mn:.2f})")
    print(f"  NumPy float64          {mn:6.3f} s   objective {f_np:.10g}")
    return {
        "kind": "backsolve",
        "k": k,
        "chita_core": {"seconds": t_core, "objective": f_core},
        "chita_core_no_check": {"seconds": t_nocheck},
        "numpy_float64": {"seconds": t_np, "objective": f_np},
        "time_ratio": mc / mn,
        "time_ratio_no_check": mu / mn,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--problems", default="gaussian,digits,backsolve")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method (median)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    wanted = args.problems.split(",")
    out = args.out or Path("bench/results") / f"scale{'_quick' if args.quick else ''}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"chita_core from {os.path.dirname(chita_core.__file__)}, load {os.getloadavg()[0]:.1f}")
    records = []
    gaussian = None
    if "gaussian" in wanted or "backsolve" in wanted:
        gaussian = gaussian_problem(1000, 100_000 if args.quick else 268_336)
    if "gaussian" in wanted:
        records.append(compare_default("gaussian", gaussian, 0.9, args.repeats))
    if "digits" in wanted:
        hidden = (128, 128) if args.quick else (256, 256)
        records.append(compare_default("digits", digits_problem(hidden=hidden), 0.9, args.repeats))
    if "backsolve" in wanted:
        records.append(compare_backsolve(gaussian, args.repeats))
    with JsonlWriter(out, benchmark="scale", quick=args.quick) as writer:
        for record in records:
            writer.write({**record, "loadavg_1min": os.getloadavg()[0]})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
