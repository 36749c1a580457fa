"""Solver benchmark: cost of one CHITA iteration against one gradient pass, in the same run.

Run ``python -m bench.solver [--quick] [--out bench/results/solver.jsonl]``.

For n = 1000, p = 268_336, k = p // 10, float32, in F and in C order, on a planted problem
(A standard normal / sqrt(n), ``w_true`` with k nonzeros, ``b = A w_true + 0.01 noise``):

1. one gradient pass (``_core.gradient``) is timed: the baseline every number is divided by;
2. the iteration is driven here, kernel by kernel: from ``w`` on the top-k of ``A^T b`` with the
   exact line step from zero, each iteration is ``gradient`` + ``chita_step``, timed one by one.
   Reported: median iteration time, the ratio iteration / gradient, and how many steps kept the
   support (``n_candidates == 0``) versus evaluated hard-thresholded candidates;
3. if ``chita_core.iht`` exists, ``iht(A, b, k, max_iter=20, tol=0)`` end to end (validation,
   including its NaN/Inf scan of A, and set-up included): elapsed / n_iter against the gradient,
   and, from a timestamping callback, the median iteration inside iht. iht starts from w = 0
   (its default ``w0 = w_bar``), so its first iteration goes through the candidate search.

The copy bandwidth is measured too, to put the gradient pass itself in context.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    GiB,
    JsonlWriter,
    copy_bandwidth,
    describe_machine,
    fmt_seconds,
    time_fn,
)
from bench.kernels import COPY_BYTES, build_matrix

N = 1000
P = 268_336
NOISE = 0.01


def planted_problem(
    core: Any, n: int, p: int, k: int, order: str, dtype: type = np.float32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A (scaled standard normal, given order), b (float64), true support and values."""
    A = build_matrix(n, p, dtype, order, seed=seed)
    A *= dtype(1.0 / np.sqrt(n))  # in place: no float64 copy of A
    rng = np.random.default_rng(seed + 1)
    support = np.sort(rng.choice(p, size=k, replace=False)).astype(np.int64)
    values = rng.standard_normal(k)
    b = np.empty(n)
    core.support_matvec(A, support, values, b)  # A w_true accumulated in float64, A not copied
    b += NOISE * rng.standard_normal(n)
    return A, b, support, values


def initial_state(
    core: Any, A: np.ndarray, b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Support = top-k of A^T b, values = exact line step from zero along A^T b on it."""
    n, p = A.shape
    zeros = np.zeros(p)
    g = np.empty(p)
    core.gradient(A, -b, zeros, zeros, 0.0, g)  # gradient at w = 0: A^T (0 - b)
    support = np.empty(k, dtype=np.int64)
    core.topk(g, k, support)
    d = -g[support]
    Ad = np.empty(n)
    core.support_matvec(A, support, d, Ad)
    tau = float(d @ d) / float(Ad @ Ad)
    w = np.zeros(p)
    w[support] = tau * d
    r = tau * Ad - b
    f = 0.5 * float(r @ r)
    return w, r, support, f


def bench_layout(
    core: Any,
    order: str,
    k: int,
    iters: int,
    repeats: int,
    loop_repeats: int,
    iht_repeats: int,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    A, b, true_support, _ = planted_problem(core, N, P, k, order)
    build_s = time.perf_counter() - t0
    p = A.shape[1]
    zeros = np.zeros(p)

    cb = copy_bandwidth(COPY_BYTES, repeats=5, threads=int(core.num_threads()))
    cb1 = copy_bandwidth(COPY_BYTES, repeats=5, threads=1)
    copy_bw = max(cb["bytes_per_s"], cb1["bytes_per_s"])

    r_probe = np.random.default_rng(2).standard_normal(N)
    g = np.empty(p)

    def gradient_pass() -> None:
        core.gradient(A, r_probe, zeros, zeros, 0.0, g)

    grad_before = time_fn(gradient_pass, repeats=repeats)

    # The solver loop, kernel by kernel (what iht does, minus validation and bookkeeping). The
    # loop is deterministic, so it is rerun from the same start `loop_repeats` times and each
    # iteration's time is the median over the reruns.
    runs_grad, runs_step = [], []
    for _ in range(loop_repeats):
        w, r, support, f = initial_state(core, A, b, k)
        f0 = f
        grad_s, step_s, n_cand, changed, taus = [], [], [], [], []
        for _ in range(iters):
            t0 = time.perf_counter()
            core.gradient(A, r, w, zeros, 0.0, g)
            t1 = time.perf_counter()
            f_new, tau, nc, ch = core.chita_step(A, b, zeros, 0.0, g, w, r, support, f)
            t2 = time.perf_counter()
            grad_s.append(t1 - t0)
            step_s.append(t2 - t1)
            n_cand.append(int(nc))
            changed.append(bool(ch))
            taus.append(float(tau))
            f = f_new
        runs_grad.append(grad_s)
        runs_step.append(step_s)
    recovered = int(np.intersect1d(support, true_support).size)
    grad_it = np.median(np.array(runs_grad), axis=0)  # [iters], median over reruns
    step_it = np.median(np.array(runs_step), axis=0)
    iter_it = grad_it + step_it
    # On a shared machine the bandwidth drifts between one measurement and the next, so the
    # headline ratio divides each iteration by the gradient timed inside that same iteration.
    ratio_it = iter_it / grad_it

    rec: dict[str, Any] = {
        "kind": "solver",
        "n": N,
        "p": p,
        "k": k,
        "dtype": "float32",
        "layout": order,
        "threads": int(core.num_threads()),
        "loadavg_1min": os.getloadavg()[0],
        "build_seconds": build_s,
        "copy_bw": copy_bw,
        "iterations": iters,
        "loop_repeats": loop_repeats,
        "iter_seconds": float(np.median(iter_it)),
        "iter_per_iteration": iter_it,
        "iter_gradient_seconds": float(np.median(grad_it)),
        "step_seconds": float(np.median(step_it)),
        "step_per_iteration": step_it,
        "iter_over_gradient": float(np.median(ratio_it)),
        "step_over_gradient": float(np.median(step_it / grad_it)),
        "n_support_kept": sum(1 for c in n_cand if c == 0),
        "n_candidate_steps": sum(1 for c in n_cand if c > 0),
        "n_support_changed": sum(changed),
        "n_candidates": n_cand,
        "taus": taus,
        # Accuracy, kept apart from speed: only a sanity check that the loop did its job.
        "objective_start": f0,
        "objective_end": f,
        "support_overlap_true": recovered,
    }
    # Median iteration time per branch, where the branch occurred.
    for label, pick in (("kept", lambda c: c == 0), ("candidates", lambda c: c > 0)):
        xs = [float(s) for s, c in zip(step_it, n_cand, strict=True) if pick(c)]
        rec[f"step_seconds_{label}"] = statistics.median(xs) if xs else None

    import chita_core

    iht = getattr(chita_core, "iht", None)
    if iht is None:
        rec["iht"] = None
        rec["iht_note"] = "chita_core.iht not available"
    else:
        b_dtype = b.astype(A.dtype)  # iht takes b in the dtype of A
        runs = []
        for _ in range(iht_repeats):
            stamps: list[float] = []
            t_call = time.perf_counter()
            try:
                # The callback only timestamps iterations: intervals between calls are the
                # per-iteration times inside iht; the time to the first call is set-up
                # (validation, NaN/Inf scan of A) plus iteration 1.
                res = iht(
                    A,
                    b_dtype,
                    k,
                    max_iter=iters,
                    tol=0,
                    backend="cpp",
                    callback=lambda _p, s=stamps: s.append(time.perf_counter()),
                )
            except Exception as exc:  # report, do not hide the rest of the benchmark
                rec["iht"] = None
                rec["iht_note"] = f"{type(exc).__name__}: {exc}"
                break
            runs.append((res, t_call, stamps))
        if runs:
            el = [res.elapsed for res, _, _ in runs]
            per_iter = [res.elapsed / max(1, res.n_iter) for res, _, _ in runs]
            inner = [float(np.median(np.diff(st))) for _, _, st in runs if len(st) > 1]
            first = [st[0] - t for _, t, st in runs if st]
            res0 = runs[0][0]
            rec["iht"] = {
                "elapsed": statistics.median(el),
                "elapsed_samples": el,
                "n_iter": res0.n_iter,
                "per_iter": statistics.median(per_iter),
                "per_iter_over_gradient": None,  # filled in below against the pooled baseline
                "iter_median": statistics.median(inner) if inner else None,
                "iter_median_over_gradient": None,
                "to_first_iter_end": statistics.median(first) if first else None,
                "objective": res0.objective,
                "backend": getattr(res0, "backend", None),
            }
    # Standalone gradient baseline: timed before the loop and again after iht, pooled.
    grad_after = time_fn(gradient_pass, repeats=repeats)
    pooled = grad_before["samples"] + grad_after["samples"]
    grad_med = statistics.median(pooled)
    rec["gradient_seconds"] = grad_med
    rec["gradient_samples"] = pooled
    rec["gradient_frac_copy"] = A.nbytes / grad_med / copy_bw
    rec["iter_over_standalone_gradient"] = rec["iter_seconds"] / grad_med
    if rec.get("iht"):
        it = rec["iht"]
        it["per_iter_over_gradient"] = it["per_iter"] / grad_med
        if it["iter_median"] is not None:
            it["iter_median_over_gradient"] = it["iter_median"] / grad_med
    return rec  # A is freed here


def print_record(rec: dict[str, Any]) -> None:
    print(
        f"\n{rec['layout']}-order float32 n={rec['n']} p={rec['p']:,} k={rec['k']:,}  "
        f"(load {rec['loadavg_1min']:.1f}, copy bw {rec['copy_bw'] / 1e9:.1f} GB/s)"
    )
    print(
        f"  gradient pass      {fmt_seconds(rec['gradient_seconds']):>10}   "
        f"{rec['gradient_frac_copy']:.2f} of copy bandwidth (standalone, before + after)"
    )
    print(
        f"  iteration (median) {fmt_seconds(rec['iter_seconds']):>10}   "
        f"{rec['iter_over_gradient']:.2f} x its own gradient "
        f"({fmt_seconds(rec['iter_gradient_seconds'])}), "
        f"{rec['iter_over_standalone_gradient']:.2f} x standalone; "
        f"chita_step {fmt_seconds(rec['step_seconds'])} = {rec['step_over_gradient']:.2f} x"
    )
    kept, cand = rec["step_seconds_kept"], rec["step_seconds_candidates"]
    print(
        f"  steps: {rec['n_support_kept']} support kept"
        + (f" ({fmt_seconds(kept)} each)" if kept is not None else "")
        + f", {rec['n_candidate_steps']} with candidates"
        + (f" ({fmt_seconds(cand)} each)" if cand is not None else "")
        + f", {rec['n_support_changed']} changed the support; candidates per step "
        f"{rec['n_candidates']}"
    )
    print(
        f"  objective {rec['objective_start']:.4g} -> {rec['objective_end']:.4g}, "
        f"{rec['support_overlap_true']:,}/{rec['k']:,} of the true support found"
    )
    it = rec.get("iht")
    if it:
        print(
            f"  iht(max_iter={rec['iterations']}, tol=0) end to end {fmt_seconds(it['elapsed'])}"
            f" for {it['n_iter']} iterations: {fmt_seconds(it['per_iter'])} per iteration, "
            f"{it['per_iter_over_gradient']:.2f} x gradient"
        )
        if it["iter_median"] is not None:
            print(
                f"      inside iht: median iteration {fmt_seconds(it['iter_median'])} "
                f"({it['iter_median_over_gradient']:.2f} x gradient); set-up + iteration 1 "
                f"(from w = 0) {fmt_seconds(it['to_first_iter_end'])}"
            )
    else:
        print(f"  iht: {rec.get('iht_note')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.solver", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (same problem size)")
    ap.add_argument("--out", default=None, help="JSON lines output (default bench/results/...)")
    ap.add_argument("--iters", type=int, default=20, help="iterations of the timed loop")
    args = ap.parse_args(argv)

    from chita_core import _core

    repeats, loop_repeats, iht_repeats = (5, 1, 1) if args.quick else (7, 3, 3)
    k = P // 10
    default = "solver_quick.jsonl" if args.quick else "solver.jsonl"
    out_path = Path(args.out) if args.out else Path(__file__).parent / "results" / default
    machine = describe_machine()
    print(
        f"machine: {machine['cpu_model']}, {machine['usable_cpus']} cpus, "
        f"{machine['mem_total_bytes'] / GiB:.1f} GiB; _core: {machine['chita_core_build_info']}; "
        f"{_core.num_threads()} threads"
    )
    print(
        f"gradient: median of 2 x {repeats} after warm-up; iteration: median over {args.iters} "
        f"iterations of the per-iteration median of {loop_repeats} rerun(s); iht: median of "
        f"{iht_repeats} run(s)"
    )
    recs = []
    with JsonlWriter(
        out_path,
        benchmark="solver",
        machine=machine,
        n=N,
        p=P,
        k=k,
        iters=args.iters,
        quick=args.quick,
    ) as out:
        for order in ("F", "C"):
            rec = bench_layout(_core, order, k, args.iters, repeats, loop_repeats, iht_repeats)
            out.write(rec)
            print_record(rec)
            recs.append(rec)
    print("\nSummary (float32, n=1000, p=268,336, k=p//10):")
    print(
        f"  {'layout':<7}{'gradient':>10}{'of copy':>9}{'iteration':>11}{'iter/grad':>10}"
        f"{'kept/cand':>11}{'iht e2e/iter':>14}{'iht iter':>10}"
    )
    for rec in recs:
        it = rec.get("iht")
        iht_ratio = f"{it['per_iter_over_gradient']:.2f}" if it else "-"
        iht_inner = f"{it['iter_median_over_gradient']:.2f}" if it and it["iter_median"] else "-"
        print(
            f"  {rec['layout']:<7}{fmt_seconds(rec['gradient_seconds']):>10}"
            f"{rec['gradient_frac_copy']:>9.2f}{fmt_seconds(rec['iter_seconds']):>11}"
            f"{rec['iter_over_gradient']:>10.2f}"
            f"{str(rec['n_support_kept']) + '/' + str(rec['n_candidate_steps']):>11}"
            f"{iht_ratio:>14}{iht_inner:>10}"
        )
    print(
        "  (iter/grad: each iteration over the gradient timed inside it; iht columns over the\n"
        "   standalone gradient; iht e2e/iter = elapsed / n_iter, set-up included)"
    )
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
