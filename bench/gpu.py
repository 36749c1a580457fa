"""GPU benchmark: the CUDA kernels against a same-run device-to-device copy, the solver's cost
per iteration, and a ResNet50-scale solve end to end.

Run ``python -m bench.gpu [--quick] [--skip-resnet50] [--out bench/results/gpu.jsonl]`` on a
machine with a GPU, CuPy and chita_core built with CUDA.

- copy: ``cupy.copyto`` of a buffer the size of A, counted as read + write bytes (the ceiling
  a streaming kernel can reach), timed with CUDA events in every round;
- ``gradient`` (A^T r + ridge (w - w_bar)) and ``matvec_full`` (``support_matvec`` on all p
  columns), one pass over A each: bytes of A over time, as a fraction of the same round's copy;
- ``iteration``: one IHT iteration at k = p / 10 (gradient + ``chita_step``, as ``plain_iht``
  runs them) over one A^T r pass of the same round (target <= 1.5);
- ResNet50 scale: n = 500, p = 25.5M, bf16 A in F order (25.5 GB), ``chita_core.iht`` with its
  defaults, end to end, with its stages.

Rounds interleave the measurements (the median over rounds of each ratio is reported).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from bench.harness import JsonlWriter, describe_machine, fmt_bytes


def _need_gpu() -> Any:
    import chita_core

    reason = chita_core.available_backends()["cuda"]
    if reason is not None:
        sys.exit(f"bench.gpu needs the CUDA backend: {reason}")
    import cupy as cp

    return cp


def _event_time(cp: Any, fn: Any) -> float:
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / 1e3


def _make_A(cp: Any, n: int, p: int, dtype: str, order: str, seed: int = 0) -> Any:
    """Random A on the device (never zeros: they can run faster than real data)."""
    rs = cp.random.RandomState(seed)
    if dtype == "bfloat16":
        import torch

        g = torch.Generator(device="cuda").manual_seed(seed)
        shape = (p, n) if order == "F" else (n, p)
        A = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
        return A.t() if order == "F" else A
    shape = (p, n) if order == "F" else (n, p)
    A = rs.standard_normal(shape, dtype=cp.float32).astype(dtype)
    return A.T if order == "F" else A


def kernels_round_robin(cp: Any, n: int, p: int, dtype: str, order: str, rounds: int) -> dict:
    from chita_core import _cuda_kernels as K
    from chita_core._device import device_matrix

    A_dev = _make_A(cp, n, p, dtype, order)
    A = device_matrix(A_dev)[0]
    nbytes = n * p * A.itemsize
    src = cp.empty(nbytes // 4, dtype=cp.float32)
    src[:] = 1.5
    dst = cp.empty_like(src)
    rs = cp.random.RandomState(1)
    r = rs.standard_normal(n)
    w = cp.zeros(p)
    w_bar = rs.standard_normal(p)
    g = cp.empty(p)
    every = cp.arange(p, dtype=cp.int64)
    x = rs.standard_normal(p)
    out = cp.empty(n)
    k = max(1, p // 10)
    b = rs.standard_normal(n)

    def iteration_state() -> tuple:
        support = cp.sort(cp.asarray(np.random.default_rng(2).choice(p, k, replace=False)))
        ww = cp.zeros(p)
        ww[support] = rs.standard_normal(k)
        rr = cp.empty(n)
        K.support_matvec(A, support, cp.ascontiguousarray(ww[support]), rr)
        rr -= b
        f = 0.5 * float(rr @ rr) + 0.5 * 0.01 * float((ww - w_bar) @ (ww - w_bar))
        return support, ww, rr, f

    def one_iteration() -> None:
        support, ww, rr, f = state
        K.gradient(A, rr, ww, w_bar, 0.01, g)
        K.chita_step(A, b, w_bar, 0.01, g, ww, rr, support, f)

    calls = {
        "copy": lambda: cp.copyto(dst, src),
        "gradient": lambda: K.gradient(A, r, w, w_bar, 0.01, g),
        "matvec_full": lambda: K.support_matvec(A, every, x, out),
    }
    samples: dict[str, list[float]] = {name: [] for name in [*calls, "iteration"]}
    for rnd in range(rounds + 1):  # round 0 warms up
        for name, fn in calls.items():
            t = _event_time(cp, fn)
            if rnd:
                samples[name].append(t)
        state = iteration_state()  # outside the timed region: the step moves the state
        t = _event_time(cp, one_iteration)
        if rnd:
            samples["iteration"].append(t)
    copy = np.array(samples["copy"])
    copy_bw = 2 * nbytes / copy
    res: dict[str, Any] = {
        "n": n,
        "p": p,
        "dtype": dtype,
        "layout": order,
        "bytes_A": nbytes,
        "copy_bw": float(np.median(copy_bw)),
    }
    for name in ("gradient", "matvec_full"):
        t = np.array(samples[name])
        res[name] = {
            "median_s": float(np.median(t)),
            "bw": float(np.median(nbytes / t)),
            "of_copy": float(np.median(nbytes / t / copy_bw)),
        }
    it = np.array(samples["iteration"])
    res["iteration"] = {
        "median_s": float(np.median(it)),
        "over_gradient": float(np.median(it / np.array(samples["gradient"]))),
        "k": k,
    }
    return res


def resnet50_scale(cp: Any, n: int, p: int, quick: bool) -> dict:
    import torch

    import chita_core

    t0 = time.perf_counter()
    A = _make_A(cp, n, p, "bfloat16", "F", seed=3)
    g = torch.Generator(device="cuda").manual_seed(4)
    w_bar = torch.randn(p, generator=g, device="cuda", dtype=torch.float32) * 0.05
    w_bar = w_bar.to(torch.bfloat16)
    b = torch.empty(n, device="cuda", dtype=torch.float64)
    # b = A w_bar (the pruning target), through the solver's own kernel.
    from chita_core import _cuda_kernels as K
    from chita_core._device import device_matrix

    every = cp.arange(p, dtype=cp.int64)
    bb = cp.empty(n)
    K.support_matvec(device_matrix(A)[0], every, cp.from_dlpack(w_bar.double()), bb)
    b = torch.from_dlpack(bb).to(torch.bfloat16)
    torch.cuda.synchronize()
    build = time.perf_counter() - t0
    k = p // 10
    t1 = time.perf_counter()
    res = chita_core.iht(A, b, k, ridge=1e-3, w_bar=w_bar, max_iter=5 if quick else None)
    torch.cuda.synchronize()
    solve = time.perf_counter() - t1
    return {
        "n": n,
        "p": p,
        "k": k,
        "dtype": "bfloat16",
        "bytes_A": n * p * 2,
        "build_s": build,
        "solve_s": solve,
        "objective": res.objective,
        "n_iter": res.n_iter,
        "stages": res.stages,
        "peak_bytes": torch.cuda.max_memory_allocated()
        + cp.get_default_memory_pool().total_bytes(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and rounds")
    ap.add_argument("--skip-resnet50", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default="bench/results/gpu.jsonl")
    args = ap.parse_args(argv)
    cp = _need_gpu()
    rounds = args.rounds or (5 if args.quick else 15)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    machine = describe_machine()
    machine["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    configs = [(1000, 268_336, d, o) for d in ("float32", "bfloat16") for o in ("F", "C")]
    if not args.quick:
        configs += [(1000, 2_000_000, "float32", "F"), (1000, 2_000_000, "bfloat16", "F")]
    print(f"GPU: {machine['gpu']}")
    print(
        f"{'n':>6}{'p':>10}{'dtype':>10}{'lay':>4}{'copy GB/s':>11}{'A^T r':>8}{'of copy':>9}"
        f"{'matvec':>8}{'of copy':>9}{'iter/A^T r':>11}"
    )
    with JsonlWriter(args.out, benchmark="gpu", machine=machine) as out:
        for n, p, dtype, order in configs:
            r = kernels_round_robin(cp, n, p, dtype, order, rounds)
            cp.get_default_memory_pool().free_all_blocks()  # A and the copy buffers are gone
            out.write({"kind": "kernels", **r})
            print(
                f"{n:>6}{p:>10}{dtype:>10}{order:>4}{r['copy_bw'] / 1e9:>11.0f}"
                f"{r['gradient']['bw'] / 1e9:>8.0f}{r['gradient']['of_copy']:>9.2f}"
                f"{r['matvec_full']['bw'] / 1e9:>8.0f}{r['matvec_full']['of_copy']:>9.2f}"
                f"{r['iteration']['over_gradient']:>11.2f}"
            )
        if not args.skip_resnet50:
            n, p = (500, 25_500_000)
            free = cp.cuda.runtime.memGetInfo()[0]
            if free < n * p * 2 * 1.2:
                need = fmt_bytes(n * p * 2.4)
                print(f"ResNet50 scale skipped: needs {need}, {fmt_bytes(free)} free")
            else:
                r = resnet50_scale(cp, n, p, args.quick)
                out.write({"kind": "resnet50", **r})
                print(
                    f"ResNet50 scale: n={n} p={p} bf16 ({fmt_bytes(r['bytes_A'])}), "
                    f"solve {r['solve_s']:.1f} s, objective {r['objective']:.6e}, "
                    f"peak {fmt_bytes(r['peak_bytes'])}"
                )
                for label, f, s in r["stages"]:
                    print(f"  {label:<40} {f:>14.6e} {s:>8.2f} s")


if __name__ == "__main__":
    main()
