"""Column shards on torch.distributed: plain IHT (or, with ``--pipeline``, the default solver)
over ranks that each hold a block of A, under a per-process memory limit that the whole A does
not fit.

Run ``python -m bench.distributed [--ranks 2] [--n 1000] [--p 1500000] [--iters 8]
[--pipeline]`` from the
repository root (needs torch). The parent starts ``--ranks`` processes (gloo over a file store);
each generates only its own columns of the global problem (column chunks seeded by their chunk
index, so the global A is the same for any number of ranks and no process ever holds all of
it), sets ``RLIMIT_DATA`` to ``--limit-gib`` (default: its block of A + 1 GiB, less than the
whole A for the default sizes, so one process could not hold A), and runs
``chita_core.distributed.iht(..., refine=False, active_set=False)`` for ``--iters``
iterations (``--pipeline``: ``chita_core.distributed.iht`` with its defaults, the whole
pipeline: starts, greedy OBS, IHT, refits, swap search). Reported per rank: time per iteration
(``--pipeline``: of the whole solve), split into communication (time inside the collectives,
``Comm.stats``) and the rest (compute), the collectives and bytes, and the peak resident memory
against the limit.

First, the same code on a smaller instance (n = 200, p = 60,000) that one process can hold:
the sharded supports and objective against the single-process ``chita_core.iht`` on the whole
matrix (the parent builds it from the same chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import GiB, JsonlWriter, describe_machine

CHUNK = 1 << 15  # columns per seeded chunk of the global problem


def columns(seed: int, n: int, lo: int, hi: int) -> np.ndarray:
    """Columns lo:hi of the global A (float32, F order), generated chunk by chunk."""
    out = np.empty((n, hi - lo), dtype=np.float32, order="F")
    for c0 in range(lo - lo % CHUNK, hi, CHUNK):
        rng = np.random.default_rng([seed, c0 // CHUNK])
        block = rng.standard_normal((CHUNK, n), dtype=np.float32)  # rows: columns of A
        block *= rng.uniform(0.2, 2.0, CHUNK).astype(np.float32)[:, None]
        a, z = max(lo, c0), min(hi, c0 + CHUNK)
        out[:, a - lo : z - lo] = block[a - c0 : z - c0].T
    return out


def weights(seed: int, lo: int, hi: int) -> np.ndarray:
    """w_bar[lo:hi] of the global problem (float32)."""
    out = np.empty(hi - lo, dtype=np.float32)
    for c0 in range(lo - lo % CHUNK, hi, CHUNK):
        rng = np.random.default_rng([seed, c0 // CHUNK, 1])
        block = rng.standard_normal(CHUNK, dtype=np.float32)
        a, z = max(lo, c0), min(hi, c0 + CHUNK)
        out[a - lo : z - lo] = block[a - c0 : z - c0]
    return out


def split(p: int, ranks: int) -> list[tuple[int, int]]:
    edges = [p * r // ranks for r in range(ranks + 1)]
    return [(edges[r], edges[r + 1]) for r in range(ranks)]


def solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the solve, sharded or not: plain IHT for ``--iters`` iterations, or the
    default pipeline."""
    if args.pipeline:
        return {}
    return {"refine": False, "active_set": False, "max_iter": args.iters, "tol": 0.0}


def rank_main(args: argparse.Namespace) -> None:
    import resource

    import torch.distributed as dist

    import chita_core.distributed as cd
    from chita_core.distributed import _comm

    limit = int(args.limit_gib * GiB)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    dist.init_process_group(
        "gloo", init_method=f"file://{args.store}", rank=args.rank, world_size=args.ranks
    )
    lo, hi = split(args.p, args.ranks)[args.rank]
    A = columns(args.seed, args.n, lo, hi)
    w_bar = weights(args.seed, lo, hi)
    # b = A w_bar + noise: the sum of the ranks' products, added in rank order.
    comm = _comm.Comm()
    part = np.zeros(args.n)
    for s in range(0, A.shape[1], CHUNK):
        part += A[:, s : s + CHUNK].astype(np.float64) @ w_bar[s : s + CHUNK].astype(np.float64)
    noise = np.random.default_rng([args.seed, 7]).standard_normal(args.n)
    b = (comm.total(part) + 0.1 * noise).astype(np.float32)
    k = max(1, int(args.p * args.keep))
    made: list[Any] = []  # every Comm of the solve (its collectives' counts and time)
    real_comm = _comm.Comm.__init__

    def counting(self: Any, group: Any = None) -> None:
        real_comm(self, group)
        made.append(self.stats)

    _comm.Comm.__init__ = counting  # type: ignore[method-assign]
    dist.barrier()
    t0 = time.perf_counter()
    res = cd.iht(A, b, k, ridge=args.ridge, w_bar=w_bar, **solver_options(args))
    seconds = time.perf_counter() - t0
    record = {
        "rank": args.rank, "n": args.n, "p": args.p, "k": k, "ranks": args.ranks,
        "p_local": hi - lo, "a_local_bytes": A.nbytes, "a_bytes": args.n * args.p * 4,
        "limit_bytes": limit, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "n_iter": res.n_iter, "objective": res.objective, "seconds": seconds,
        "comm_seconds": sum(st.seconds for st in made),
        "comm_calls": sum(st.calls for st in made), "comm_bytes": sum(st.bytes for st in made),
        "stages": [s.stage for s in res.stages],
        "support_local": int(np.size(res.support)),
    }  # fmt: skip
    if args.out_support:
        np.save(f"{args.out_support}{args.rank}.npy", np.asarray(res.support) + lo)
    print(json.dumps(record), flush=True)
    dist.destroy_process_group()


def launch(
    args: argparse.Namespace, n: int, p: int, limit_gib: float, out_support: str = ""
) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // args.ranks)))
        cmd = [sys.executable, "-m", "bench.distributed", "--store", str(store),
               "--ranks", str(args.ranks), "--n", str(n), "--p", str(p),
               "--iters", str(args.iters), "--keep", str(args.keep), "--ridge", str(args.ridge),
               "--seed", str(args.seed), "--limit-gib", str(limit_gib),
               "--out-support", out_support]  # fmt: skip
        cmd += ["--pipeline"] if args.pipeline else []
        procs = [
            subprocess.Popen([*cmd, "--rank", str(r)], env=env, stdout=subprocess.PIPE, text=True)
            for r in range(args.ranks)
        ]
        outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"a rank failed: {[proc.returncode for proc in procs]}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.distributed", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--p", type=int, default=1_500_000)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-gib", type=float, default=None)
    ap.add_argument("--pipeline", action="store_true", help="the default solver, not plain IHT")
    ap.add_argument("--out", default="bench/results/distributed.jsonl")
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--store", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out-support", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank is not None:
        rank_main(args)
        return 0
    import chita_core

    # 1. The same answer as one process, on an instance one process holds.
    n_s, p_s = 200, 60_000
    with tempfile.TemporaryDirectory() as tmp:
        ranks = launch(args, n_s, p_s, 4.0, out_support=f"{tmp}/support")
        support = np.concatenate([np.load(f"{tmp}/support{r}.npy") for r in range(args.ranks)])
    A = columns(args.seed, n_s, 0, p_s)
    w_bar = weights(args.seed, 0, p_s)
    part = A.astype(np.float64) @ w_bar.astype(np.float64)
    noise = np.random.default_rng([args.seed, 7]).standard_normal(n_s)
    b = (part + 0.1 * noise).astype(np.float32)
    k_s = max(1, int(p_s * args.keep))
    single = chita_core.iht(A, b, k_s, ridge=args.ridge, w_bar=w_bar, **solver_options(args))
    same = bool(np.array_equal(support, single.support))
    rel = abs(ranks[0]["objective"] - single.objective) / abs(single.objective)
    print(f"check (n = {n_s}, p = {p_s:,}, {args.ranks} ranks): same support as one process: "
          f"{same}; objective {ranks[0]['objective']:.10g} vs {single.objective:.10g} "
          f"(relative difference {rel:.1e})")  # fmt: skip
    # 2. An A that one process may not hold.
    a_bytes = args.n * args.p * 4
    limit = args.limit_gib if args.limit_gib is not None else a_bytes / args.ranks / GiB + 1.0
    if limit * GiB >= a_bytes:
        print(f"note: the limit ({limit:.2f} GiB) holds the whole A ({a_bytes / GiB:.2f} GiB)")
    ranks_big = launch(args, args.n, args.p, limit)
    with JsonlWriter(args.out, benchmark="distributed", machine=describe_machine()) as out:
        out.write({"kind": "check", "n": n_s, "p": p_s, "same_support": same,
                   "objective_rel_diff": rel, "ranks": args.ranks, "pipeline": args.pipeline,
                   "stages": [s.stage for s in single.stages]})  # fmt: skip
        for rec in ranks_big:
            out.write({"kind": "run", **rec})
            it = 1 if args.pipeline else max(rec["n_iter"], 1)
            if args.pipeline:
                print(f"rank {rec['rank']}: stages {', '.join(rec['stages'])}")
            print(f"rank {rec['rank']}: A block {rec['a_local_bytes'] / GiB:.2f} GiB of "
                  f"{rec['a_bytes'] / GiB:.2f} GiB (limit {rec['limit_bytes'] / GiB:.2f} GiB, "
                  f"peak RSS {rec['peak_rss'] / GiB:.2f} GiB); "
                  f"{'the solve' if args.pipeline else f'{it} iterations'}, "
                  f"{rec['seconds'] / it:.3f} s{'' if args.pipeline else ' each'}: communication "
                  f"{rec['comm_seconds'] / it:.3f} s ({rec['comm_calls'] / it:.0f} collectives, "
                  f"{rec['comm_bytes'] / it / 1024:.1f} KiB sent), compute "
                  f"{(rec['seconds'] - rec['comm_seconds']) / it:.3f} s")  # fmt: skip
    print(f"records: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
