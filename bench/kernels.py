"""Kernel benchmark: each ``_core`` kernel's speed as a fraction of the same-run copy bandwidth.

Run ``python -m bench.kernels [--quick] [--out bench/results/kernels.jsonl]``.

For n = 1000 and every (p, dtype, layout) it builds A once and times, round-robin (one call of
each per round, 1 warm-up round, 7 rounds by default), the copy bandwidth with A resident (a
512 MiB ``np.copyto``, single and split over the kernels' threads; re-measured in every round of
every configuration, because the machine is shared and its bandwidth drifts) and

- ``gradient``           A^T r + ridge (w - w_bar), one full pass over A;
- ``matvec_full``        ``support_matvec`` with idx = arange(p), one full pass over A;
- ``support_matvec``     k = p // 10 random sorted columns;
- ``support_rmatvec``    the same support, transposed;
- ``topk``               k = p // 10 largest |v| of a length-p float64 vector.

Each kernel reports the median of the repeats, the bytes of A its contract says it needs
(``bytes``: n p itemsize for a full pass, n k itemsize for a support op), the bytes it must
actually pull from memory given the layout (``bytes_read``: whole rows for the C-order support
mat-vec, the 64-byte lines holding the gathered entries for the C-order transposed one) and both
as bandwidth and as a fraction of the copy bandwidth (the median over rounds of kernel bandwidth
over the copy bandwidth of the same round).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    CopyProbe,
    GiB,
    JsonlWriter,
    describe_machine,
    fmt_bytes,
    fmt_seconds,
    memory_available,
    time_interleaved,
)

N = 1000
P_FULL = (100_000, 300_000, 1_000_000)
P_QUICK = (100_000, 268_336)
DTYPES = (np.float32, np.float64)
LAYOUTS = ("C", "F")
MEM_LIMIT = 12 * GiB  # A + copy buffers + work vectors must fit under this
COPY_BYTES = 512 * 1024 * 1024  # 16x the 32 MiB L3 of the reference machine
CACHE_LINE = 64
KERNELS = ("gradient", "matvec_full", "support_matvec", "support_rmatvec", "topk")


def build_matrix(n: int, p: int, dtype: type, order: str, seed: int = 0) -> np.ndarray:
    """Standard normal ``(n, p)`` matrix in ``dtype`` and ``order``, from ``default_rng(seed)``.

    Generated in row blocks of about 64 MiB straight in ``dtype`` (no float64 temporary of the
    whole matrix for float32), so C and F order get identical values for the same seed.
    """
    rng = np.random.default_rng(seed)
    A = np.empty((n, p), dtype=dtype, order=order)
    rows = max(1, min(n, (64 << 20) // (p * np.dtype(dtype).itemsize)))
    block = np.empty((rows, p), dtype=dtype)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        buf = block[: i1 - i0]
        rng.standard_normal(dtype=dtype, out=buf)
        A[i0:i1] = buf
    return A


def lines_touched_c(p: int, itemsize: int, idx: np.ndarray, n: int, base: int) -> int:
    """Bytes of whole 64-byte lines a C-order row gather of ``idx`` pulls in, summed over rows.

    Row i starts at ``base + i p itemsize``; rows whose start has the same offset modulo 64 touch
    the same number of lines, so each distinct offset is counted once.
    """
    row_bytes = p * itemsize
    total = 0
    counts: dict[int, int] = {}
    off_bytes = idx.astype(np.int64) * itemsize
    for i in range(n):
        off = (base + i * row_bytes) % CACHE_LINE
        if off not in counts:
            lines = (off + off_bytes) // CACHE_LINE
            counts[off] = int(1 + np.count_nonzero(np.diff(lines)))
        total += counts[off]
    return total * CACHE_LINE


def bench_config(
    core: Any, p: int, dtype: type, layout: str, repeats: int, threads: int, n: int = N
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build A for one configuration, measure copy bandwidth, time every kernel."""
    t0 = time.perf_counter()
    A = build_matrix(n, p, dtype, layout)
    build_s = time.perf_counter() - t0
    itemsize = A.dtype.itemsize
    k = p // 10

    rng = np.random.default_rng(1)
    r = rng.standard_normal(n)
    w = rng.standard_normal(p)
    w_bar = rng.standard_normal(p)
    g = np.empty(p)
    idx_full = np.arange(p, dtype=np.int64)
    x_full = rng.standard_normal(p)
    idx = np.sort(rng.choice(p, size=k, replace=False)).astype(np.int64)
    x = rng.standard_normal(k)
    out_n = np.empty(n)
    out_k = np.empty(k)
    v = rng.standard_normal(p)
    out_idx = np.empty(k, dtype=np.int64)

    full = n * p * itemsize
    sup = n * k * itemsize
    if layout == "F":
        sup_read_mv = sup_read_rmv = sup  # k contiguous columns of n entries
    else:
        # The C-order support mat-vec streams whole rows (see _core.pyi); the transposed one
        # gathers, and every 64-byte line holding a support entry comes in whole.
        sup_read_mv = full
        sup_read_rmv = lines_touched_c(p, itemsize, idx, n, A.ctypes.data)

    calls = {
        "gradient": (lambda: core.gradient(A, r, w, w_bar, 1e-3, g), full, full),
        "matvec_full": (lambda: core.support_matvec(A, idx_full, x_full, out_n), full, full),
        "support_matvec": (lambda: core.support_matvec(A, idx, x, out_n), sup, sup_read_mv),
        "support_rmatvec": (lambda: core.support_rmatvec(A, idx, r, out_k), sup, sup_read_rmv),
        # topk reads v (float64, p entries) several times; v is small enough to stay in L3.
        "topk": (lambda: core.topk(v, k, out_idx), p * 8, p * 8),
    }

    # The copy bandwidth (single np.copyto, and split over the kernels' thread count; the
    # reference is the faster of the two in each round) is timed round-robin with the kernels,
    # with A resident, so every kernel is compared with the machine state of its own round.
    with CopyProbe(COPY_BYTES, max_threads=threads) as probe:
        fns = {"copy_1thread": lambda: probe.copy(1)}
        if threads > 1:
            fns["copy_threads"] = lambda: probe.copy(threads)
        fns.update({name: calls[name][0] for name in KERNELS})
        t = time_interleaved(fns, warmup=1, repeats=repeats)
        moved = probe.moved
    bw1 = moved / np.array(t["copy_1thread"]["samples"])
    bwt = moved / np.array(t["copy_threads"]["samples"]) if threads > 1 else bw1
    bw_round = np.maximum(bw1, bwt)  # [repeats] reference bandwidth of each round
    copy_bw = float(np.median(bw_round))
    copy = {
        "kind": "copy",
        "p": p,
        "dtype": np.dtype(dtype).name,
        "layout": layout,
        "copy_bw": copy_bw,
        "copy_bw_1thread": float(np.median(bw1)),
        "copy_bw_threads": float(np.median(bwt)),
        "threads": threads,
        "copy_nbytes": moved // 2,
        "build_seconds": build_s,
        "loadavg_1min": os.getloadavg()[0],
        "samples_1thread": t["copy_1thread"]["samples"],
        "samples_threads": t.get("copy_threads", t["copy_1thread"])["samples"],
    }

    rows: list[dict[str, Any]] = []
    for name in KERNELS:
        _, nbytes, nread = calls[name]
        tk = t[name]
        sec = tk["median"]
        # Fraction of copy bandwidth: median over rounds of (kernel bandwidth / copy bandwidth)
        # of the same round.
        frac = np.median(nbytes / np.array(tk["samples"]) / bw_round)
        frac_read = np.median(nread / np.array(tk["samples"]) / bw_round)
        rows.append(
            {
                "kind": "kernel",
                "kernel": name,
                "n": n,
                "p": p,
                "k": p if name in ("gradient", "matvec_full") else k,
                "dtype": np.dtype(dtype).name,
                "layout": layout,
                "threads": threads,
                "seconds": sec,
                "seconds_min": tk["min"],
                "seconds_max": tk["max"],
                "samples": tk["samples"],
                "bytes": nbytes,
                "bytes_read": nread,
                "bw": nbytes / sec,
                "bw_read": nread / sec,
                "frac_copy": float(frac),
                "frac_copy_read": float(frac_read),
                "copy_bw": copy_bw,
            }
        )
    return copy, rows  # A is freed here: nothing outside holds it


def _fits(p: int, dtype: type) -> tuple[bool, str]:
    need = N * p * np.dtype(dtype).itemsize + 2 * COPY_BYTES + 12 * p * 8 + (64 << 20)
    avail = memory_available()
    limit = MEM_LIMIT if avail is None else min(MEM_LIMIT, int(0.9 * avail))
    if need > limit:
        return False, f"needs ~{fmt_bytes(need)}, limit {fmt_bytes(limit)}"
    return True, ""


def print_config(copy: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(
        f"\np={copy['p']:,} {copy['dtype']} {copy['layout']}-order  "
        f"(A built in {copy['build_seconds']:.1f} s, load {copy['loadavg_1min']:.1f})  "
        f"copy bw {copy['copy_bw'] / 1e9:.1f} GB/s "
        f"[1 thread {copy['copy_bw_1thread'] / 1e9:.1f}, "
        f"{copy['threads']} threads {copy['copy_bw_threads'] / 1e9:.1f}]"
    )
    print(
        f"  {'kernel':<16}{'median':>10}{'min':>10}{'bytes':>11}{'GB/s':>8}{'of copy':>9}"
        f"{'bytes read':>12}{'GB/s':>8}{'of copy':>9}"
    )
    for row in rows:
        print(
            f"  {row['kernel']:<16}{fmt_seconds(row['seconds']):>10}"
            f"{fmt_seconds(row['seconds_min']):>10}{fmt_bytes(row['bytes']):>11}"
            f"{row['bw'] / 1e9:>8.1f}{row['frac_copy']:>9.2f}"
            f"{fmt_bytes(row['bytes_read']):>12}{row['bw_read'] / 1e9:>8.1f}"
            f"{row['frac_copy_read']:>9.2f}"
        )


def print_summary(results: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
    print("\nSummary: fraction of copy bandwidth (bytes of A the contract needs; in brackets the")
    print("bytes the layout forces to be read, where different). topk works in cache (v is p")
    print("float64), so it is shown as median / fastest time instead.")
    head = "grad   matvec  supp_mv        supp_rmv       supp/full  topk (min)"
    print(f"{'p':>9} {'dtype':<8}{'ord':<4}{'copy GB/s':>10}  {head}")
    for copy, rows in results:
        by = {r["kernel"]: r for r in rows}

        def cell(name: str, by: dict[str, dict[str, Any]] = by) -> str:
            r = by[name]
            if r["bytes_read"] != r["bytes"]:
                return f"{r['frac_copy']:.2f} [{r['frac_copy_read']:.2f}]".ljust(15)
            return f"{r['frac_copy']:.2f}".ljust(7)

        ratio = by["support_matvec"]["seconds"] / by["matvec_full"]["seconds"]
        print(
            f"{copy['p']:>9} {copy['dtype']:<8}{copy['layout']:<4}{copy['copy_bw'] / 1e9:>10.1f}  "
            f"{cell('gradient')}{cell('matvec_full')}{cell('support_matvec').ljust(15)}"
            f"{cell('support_rmatvec').ljust(15)}{ratio:>9.3f}  "
            f"{fmt_seconds(by['topk']['seconds'])} ({fmt_seconds(by['topk']['seconds_min'])})"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"p in {P_QUICK} instead of {P_FULL}")
    ap.add_argument("--out", default=None, help="JSON lines output (default bench/results/...)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats after 1 warm-up")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be at least 5")

    from chita_core import _core

    ps = P_QUICK if args.quick else P_FULL
    default = "kernels_quick.jsonl" if args.quick else "kernels.jsonl"
    out_path = Path(args.out) if args.out else Path(__file__).parent / "results" / default
    threads = int(_core.num_threads())
    machine = describe_machine()
    print(
        f"machine: {machine['cpu_model']}, {machine['usable_cpus']} cpus, "
        f"{machine['mem_total_bytes'] / GiB:.1f} GiB; numpy {machine['numpy']}; "
        f"_core: {machine['chita_core_build_info']}; {threads} threads"
    )
    print(
        f"n={N}, k=p//10, median of {args.repeats} rounds after 1 warm-up round; each round times "
        "the copy (faster of 1-thread and all-thread np.copyto, read+write bytes) and every "
        "kernel once"
    )

    results = []
    with JsonlWriter(
        out_path,
        benchmark="kernels",
        machine=machine,
        n=N,
        ps=list(ps),
        repeats=args.repeats,
        quick=args.quick,
    ) as out:
        for p in ps:
            for dtype in DTYPES:
                ok, why = _fits(p, dtype)
                for layout in LAYOUTS:
                    if not ok:
                        print(f"\np={p:,} {np.dtype(dtype).name} {layout}-order: skipped ({why})")
                        out.write(
                            {
                                "kind": "skip",
                                "p": p,
                                "dtype": np.dtype(dtype).name,
                                "layout": layout,
                                "reason": why,
                            }
                        )
                        continue
                    copy, rows = bench_config(_core, p, dtype, layout, args.repeats, threads)
                    out.write(copy)
                    for row in rows:
                        out.write(row)
                    print_config(copy, rows)
                    results.append((copy, rows))
        for copy, rows in results:
            by = {r["kernel"]: r for r in rows}
            out.write(
                {
                    "kind": "ratio",
                    "name": "support_matvec/matvec_full",
                    "p": copy["p"],
                    "k": by["support_matvec"]["k"],
                    "dtype": copy["dtype"],
                    "layout": copy["layout"],
                    "ratio": by["support_matvec"]["seconds"] / by["matvec_full"]["seconds"],
                }
            )
    print_summary(results)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
