"""Half-precision A on the CPU: one IHT iteration with A in bfloat16 / float16 against float32,
in the same run, on the same data.

Run ``python -m bench.half [--quick] [--iters N] [--out bench/results/half.jsonl]``.

For n = 1000, p = 268_336, k = p // 10, in F and in C order: the planted problem of
``bench.solver``, its A rounded to values that bfloat16, float16 and float32 all hold exactly (b
formed from those), stored in each type. For every storage type the
solver loop of ``bench.solver`` (``gradient`` + ``chita_step`` from the top-k of A^T b) runs
``--iters`` iterations; the loops of the storage types are interleaved (each rerun visits every
type once), so the machine's drift hits all of them alike. Reported per type: the median
iteration, its ratio to float32's, the gradient pass alone, and the objective after the loop
against the float32 loop's and the float64 loop's on the same values (the 16-bit passes sum
short float32 partials in float64: the same steps, objectives equal up to rounding).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from bench.harness import GiB, JsonlWriter, describe_machine, fmt_seconds
from bench.solver import N, P, initial_state, planted_problem

TYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def run_loop(core: Any, A: np.ndarray, b: np.ndarray, k: int, iters: int) -> dict[str, Any]:
    """The solver loop, timed kernel by kernel; returns per-iteration seconds and the end."""
    p = A.shape[1]
    zeros, g = np.zeros(p), np.empty(p)
    w, r, support, f = initial_state(core, A, b, k)
    grad_s, iter_s = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        core.gradient(A, r, w, zeros, 0.0, g)
        t1 = time.perf_counter()
        f, _, _, _ = core.chita_step(A, b, zeros, 0.0, g, w, r, support, f)
        t2 = time.perf_counter()
        grad_s.append(t1 - t0)
        iter_s.append(t2 - t0)
    return {"grad": grad_s, "iter": iter_s, "objective": f, "support": support.copy()}


def bench_layout(core: Any, order: str, k: int, iters: int, reruns: int) -> dict[str, Any]:
    A32, _, support, values = planted_problem(core, N, P, k, order)
    # The data: values every storage type holds exactly (rounded to bfloat16, then float16), so
    # the float32 loop and the 16-bit loops solve the same problem.
    A32[...] = A32.astype(ml_dtypes.bfloat16).astype(np.float16)
    b = np.empty(N)
    core.support_matvec(A32, support, values, b)
    b += 0.01 * np.random.default_rng(1).standard_normal(N)
    mats = {"float32": A32}
    for name, dt in TYPES.items():
        if name != "float32":
            mats[name] = A32.astype(dt, order=order)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in mats}
    for _ in range(reruns):
        for name, A in mats.items():
            runs[name].append(run_loop(core, A, b, k, iters))
    rec: dict[str, Any] = {"kind": "half", "layout": order, "n": N, "p": P, "k": k, "types": {}}
    for name, rr in runs.items():
        it = np.median(np.array([r["iter"] for r in rr]), axis=0)
        gr = np.median(np.array([r["grad"] for r in rr]), axis=0)
        rec["types"][name] = {
            "bytes": int(mats[name].nbytes),
            "iter_seconds": float(np.median(it)),
            "gradient_seconds": float(np.median(gr)),
            "objective": rr[0]["objective"],
            "support": rr[0]["support"],
        }
    base = rec["types"]["float32"]
    for name, t in rec["types"].items():
        t["iter_over_float32"] = t["iter_seconds"] / base["iter_seconds"]
        t["gradient_over_float32"] = t["gradient_seconds"] / base["gradient_seconds"]
        t["objective_rel_to_float32"] = t["objective"] / base["objective"] - 1.0
        if name != "float32":
            # The same loop in float64 on the same values: the 16-bit loop's reference.
            exact = mats[name].astype(np.float64, order=order)
            ref = run_loop(core, exact, b, k, iters)
            del exact
            t["objective_rel_to_float64_rounded"] = t["objective"] / ref["objective"] - 1.0
            t["same_support_as_float64_rounded"] = bool(
                np.array_equal(t["support"], ref["support"])
            )
        del t["support"]
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.half", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer reruns (same problem size)")
    ap.add_argument("--iters", type=int, default=10, help="iterations per loop")
    ap.add_argument("--out", default=None, help="JSON lines output (default bench/results/...)")
    args = ap.parse_args(argv)
    from chita_core import _core

    reruns = 1 if args.quick else 3
    k = P // 10
    default = "half_quick.jsonl" if args.quick else "half.jsonl"
    out_path = Path(args.out) if args.out else Path(__file__).parent / "results" / default
    machine = describe_machine()
    print(
        f"machine: {machine['cpu_model']}, {machine['usable_cpus']} cpus, "
        f"{machine['mem_total_bytes'] / GiB:.1f} GiB; {_core.num_threads()} threads; "
        f"n={N}, p={P:,}, k={k:,}; median over {args.iters} iterations of {reruns} rerun(s)"
    )
    with JsonlWriter(out_path, benchmark="half", machine=machine, n=N, p=P, k=k) as out:
        for order in ("F", "C"):
            rec = bench_layout(_core, order, k, args.iters, reruns)
            out.write(rec)
            print(f"\n{order} order")
            print(
                f"  {'A':<9}{'bytes':>10}{'iteration':>11}{'x float32':>10}{'gradient':>10}"
                f"{'x float32':>10}  objective (rel. to float32 | to float64 on the same values)"
            )
            for name, t in rec["types"].items():
                tail = ""
                if name != "float32":
                    tail = (
                        f" | {t['objective_rel_to_float64_rounded']:+.1e}"
                        f" ({'same' if t['same_support_as_float64_rounded'] else 'other'} support)"
                    )
                print(
                    f"  {name:<9}{t['bytes'] / GiB:>8.2f}Gi{fmt_seconds(t['iter_seconds']):>11}"
                    f"{t['iter_over_float32']:>10.2f}{fmt_seconds(t['gradient_seconds']):>10}"
                    f"{t['gradient_over_float32']:>10.2f}  {t['objective']:.6g} "
                    f"({t['objective_rel_to_float32']:+.1e}{tail})"
                )
    print(f"\nrecords: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
