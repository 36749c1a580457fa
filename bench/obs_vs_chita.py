"""Dense-Hessian OBS against chita_core, over p: time, peak memory, objective.

Run from the repository root::

    python -m bench.obs_vs_chita --selfcheck   # blocked greedy OBS vs the rank-1 reference, ~10 s
    python -m bench.obs_vs_chita --quick       # p <= 10 000 for OBS, chita up to 10^5, < 5 min
    python -m bench.obs_vs_chita               # p = 2 000 .. 50 000 for OBS, chita up to 10^6
    python -m bench.obs_vs_chita --report bench/results/obs_vs_chita.jsonl   # tables + plots

Problem: ``min 0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2`` s.t. ``||w||_0 <= k``, with
``b = A @ w_bar``, so that f is the OBS quadratic ``0.5 (w - w_bar)^T H (w - w_bar)``,
``H = A^T A + ridge I``. n = 1 000, float64 F order for every method, ``k = round((1 - s) p)`` for
sparsities s = 50% and 90%, ``ridge = 1e-2 * mean_j ||a_j||^2`` (the larger of the two scales of
``bench/quality.py``).

Instances:

- **real**: the NumPy MLP of ``bench/digits_mlp.py`` (64-h-10 on scikit-learn's digits, 30 epochs
  of Adam, seed 0), h = 27, 68, 135, 270, 676 so that p = 74 h = 1 998, 5 032, 9 990, 19 980,
  50 024 (``--quick``: the first three). A = per-sample gradients of the first 1 000 training
  images, ``w_bar`` = the trained weights.
- **synthetic**: ``bench.quality.synthetic_instance`` (rows of A from N(0, Sigma),
  ``Sigma_ij = 0.5^|i-j|``, 10% planted support, dense ``w_bar``), same ridge scale, p = 2 000 ..
  50 000 for every method and 10^5 .. 10^6 for the methods without a p x p matrix
  (``--quick``: 2 000, 5 000, 10 000, 100 000).

Methods (``bench/baselines.py`` except chita; each one's docstring says what it times):

- ``greedy OBS``: :func:`~bench.baselines.greedy_obs_sweep`: dense ``H^-1`` (Woodbury route,
  n < p), one weight removed at a time, OBS update, rank-1 downdate of ``H^-1`` (blocked into
  GEMMs), refit on the final support. One path serves both sparsities.
- ``greedy OBS (rank-1)``: :func:`~bench.baselines.greedy_obs_rank1`, the unblocked in-place
  BLAS ``dsyr`` form, at p <= 2 000 only (to show what blocking buys).
- ``one-shot OBS``: :func:`~bench.baselines.oneshot_obs_dense`: dense ``H^-1`` (Woodbury route),
  saliencies from its diagonal, exact joint update.
- ``one-shot OBS (Cholesky of H)``: the same with ``H^-1`` formed literally (form H, ``potrf``,
  ``potri``: O(p^3)), at p <= ``--chol-max-p``.
- ``OBS+bs (Woodbury)``: :func:`~bench.baselines.oneshot_obs_woodbury`: the same supports without
  any p x p matrix (O(n^2 p)).
- ``chita default``: ``chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar)``; its time split is
  ``IHTResult.stages``.
- ``magnitude + backsolve``: :func:`~bench.baselines.magnitude_refit`.

Measurement: every (instance, p, method) runs in a fresh process (``multiprocessing`` spawn). The
child builds the instance (deterministic; a checksum of A, b and w_bar is recorded and compared
across methods), runs a tiny warm-up of the method (BLAS threads, LAPACK and chita_core start-up),
resets the peak-RSS mark (``/proc/self/clear_refs``) and then runs the method: ``seconds`` is its
wall time (``time.perf_counter``), one run, or the median of 3 when the first took under 3 s
(every method alike; ``samples`` keeps them), ``peak_extra_bytes`` = VmHWM - VmRSS at the start,
i.e. the method's own peak memory beyond the inputs (tracemalloc does not see BLAS or C++
allocations). The dense methods check ``MemAvailable`` before allocating p x p and record
``{"status": "oom", "needed_bytes": ...}`` instead of running; a child that dies (OOM killer,
segfault) or times out is recorded as ``crashed`` / ``timeout``. Speed is only comparable within
one run: the machine is shared.

Verdict (reported, not tuned for): at every p where greedy OBS ran, chita's objective <= one-shot
OBS (relative slack 1e-9) and <= 1.02 x greedy OBS, and from p = 10 000 on greedy OBS time /
chita time >= 100. Also the crossover p where chita becomes faster than greedy OBS and the largest
speed ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import GiB, JsonlWriter, describe_machine, fmt_bytes, memory_available

N = 1000
SPARSITIES = (0.5, 0.9)
RIDGE_SCALE = 1e-2
EPOCHS = 30
SEED = 0
REL_SLACK = 1e-9
REPEAT_BELOW = 3.0  # seconds: a method whose first run took less runs REPEATS times, median
REPEATS = 3
GREEDY_TOL = 0.02  # chita within 2% of greedy OBS
SPEED_BAR = 100.0  # ... and this much faster from SPEED_FROM_P on
SPEED_FROM_P = 10_000

FULL_HIDDEN = (27, 68, 135, 270, 676)  # p = 74 h
QUICK_HIDDEN = (27, 68, 135)
FULL_SYN_P = (2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)
QUICK_SYN_P = (2_000, 5_000, 10_000, 100_000)

GREEDY = "greedy OBS"
RANK1 = "greedy OBS (rank-1)"
ONESHOT = "one-shot OBS"
ONESHOT_CHOL = "one-shot OBS (Cholesky of H)"
WOODBURY = "OBS+bs (Woodbury)"
CHITA = "chita default"
MAGBS = "magnitude + backsolve"
METHODS = (GREEDY, RANK1, ONESHOT, ONESHOT_CHOL, WOODBURY, CHITA, MAGBS)
DENSE = (GREEDY, RANK1, ONESHOT, ONESHOT_CHOL)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a child process needs to rebuild an instance (deterministically)."""

    kind: str  # "real" or "synthetic"
    p: int  # synthetic: the number of columns; real: 74 * hidden
    hidden: int = 0
    epochs: int = EPOCHS
    n: int = N
    seed: int = SEED
    ridge_scale: float = RIDGE_SCALE

    @property
    def name(self) -> str:
        if self.kind == "real":
            return f"digits MLP 64-{self.hidden}-10"
        return "synthetic AR(0.5)"


def real_spec(hidden: int, epochs: int = EPOCHS) -> Spec:
    return Spec("real", 74 * hidden, hidden=hidden, epochs=epochs)


def build_instance(spec: Spec) -> dict[str, Any]:
    """A, b, w_bar, ridge (and metadata) for ``spec``; float64, A in F order."""
    if spec.kind == "real":
        from bench.digits_mlp import MLP, load_digits

        Xtr, ytr, Xte, yte = load_digits(spec.seed)
        rng = np.random.default_rng(spec.seed)
        model = MLP(Xtr.shape[1], spec.hidden, 10, rng)
        model.train(Xtr, ytr, spec.epochs, rng)
        A = model.per_sample_gradients(Xtr[: spec.n], ytr[: spec.n])
        w_bar = model.weights
        b = A @ w_bar
        ridge = spec.ridge_scale * float(np.einsum("ij,ij->", A, A)) / A.shape[1]
        meta = {"dense_test_acc": model.accuracy(Xte, yte)}
    else:
        from bench.quality import synthetic_instance

        inst = synthetic_instance(spec.n, spec.p, spec.seed, ridge_scale=spec.ridge_scale)
        A, b, w_bar, ridge, meta = inst.A, inst.b, inst.w_bar, inst.ridge, dict(inst.meta)
    assert A.shape == (spec.n, spec.p) and A.flags.f_contiguous
    return {"A": A, "b": b, "w_bar": w_bar, "ridge": ridge, "meta": meta}


def _checksum(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        flat = a.ravel(order="K")  # a view for C- or F-contiguous arrays: no copy of A
        h.update(flat[:: max(1, flat.size >> 21)].tobytes())  # about 2M sampled values
        h.update(repr(float(np.sum(a))).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# One method in one process
# --------------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _run_method(
    method: str, A: np.ndarray, b: np.ndarray, ks: list[int], ridge: float, w_bar: np.ndarray
) -> list[dict[str, Any]]:
    """Run ``method`` for every k; one dict per k with ``w``, ``seconds``, ``split``, extras."""
    import chita_core
    from bench import baselines as bl

    def from_pruned(res: list[bl.Pruned]) -> list[dict[str, Any]]:
        return [
            {"k": r.k, "w": r.w, "seconds": r.total, "split": r.seconds, "info": r.info}
            for r in res
        ]

    if method == GREEDY:
        return from_pruned(bl.greedy_obs_sweep(A, b, ks, ridge, w_bar))
    if method == ONESHOT:
        return from_pruned(bl.oneshot_obs_dense(A, b, ks, ridge, w_bar))
    if method == ONESHOT_CHOL:
        return from_pruned(bl.oneshot_obs_dense(A, b, ks, ridge, w_bar, route="cholesky"))
    if method == WOODBURY:
        return from_pruned(bl.oneshot_obs_woodbury(A, b, ks, ridge, w_bar))
    if method == MAGBS:
        return from_pruned(bl.magnitude_refit(A, b, ks, ridge, w_bar))
    if method == RANK1:
        p = A.shape[1]
        bl.check_memory(f"rank-1 greedy OBS (p = {p})", bl.dense_bytes("greedy", A.shape[0], p))
        path = bl.greedy_obs_rank1(A, b, ridge, w_bar, p - min(ks))
        out = []
        for k in ks:
            t0 = time.perf_counter()
            w = bl.support_backsolve(A, b, ridge, w_bar, path.removed[: p - k])
            t_bs = time.perf_counter() - t0
            sp = path.setup_split or {}
            split = {
                "build": sp["build"] + sp["start"],
                "factor": sp["factor"],
                "prune": float(path.seconds[p - k - 1]) - path.setup_seconds,
                "refit": t_bs,
            }
            out.append({"k": k, "w": w, "seconds": sum(split.values()), "split": split, "info": {}})
        return out
    if method == CHITA:
        out = []
        for k in ks:
            t0 = time.perf_counter()
            res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar)
            t = time.perf_counter() - t0
            stages = [[str(s), float(f), float(sec)] for s, f, sec in res.stages]
            out.append(
                {
                    "k": k,
                    "w": np.asarray(res.w, dtype=np.float64),
                    "seconds": t,
                    "split": _chita_split(stages, t),
                    "stages": stages,
                    "info": {"n_iter": res.n_iter, "elapsed": res.elapsed},
                }
            )
        return out
    raise ValueError(f"unknown method {method!r}")


def _chita_split(stages: list[list[Any]], total: float) -> dict[str, float]:
    """chita's stages grouped: start supports (magnitude / OBS + refits), IHT (+ refit), greedy
    OBS (+ refit), swaps, other (validation, set-up outside the stages)."""
    out = {"start": 0.0, "iht": 0.0, "greedy": 0.0, "swaps": 0.0}
    for label, _, sec in stages:
        if label.startswith("swaps"):
            key = "swaps"
        elif label.startswith("greedy"):
            key = "greedy"
        else:
            key = "iht" if "iht" in label else "start"
        out[key] += sec
    out["other"] = max(0.0, total - sum(out.values()))
    return out


def _median_runs(repeats: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per k, the run of median wall time (its split with it); every sample is kept."""
    out = []
    for per_k in zip(*repeats, strict=True):
        ordered = sorted(per_k, key=lambda r: r["seconds"])
        med = dict(ordered[len(ordered) // 2])
        med["samples"] = [r["seconds"] for r in per_k]
        out.append(med)
    return out


def _warm_up(method: str) -> None:
    """Run the method once on a tiny problem: thread pools, LAPACK, chita_core's first call."""
    rng = np.random.default_rng(1)
    A = np.asfortranarray(rng.standard_normal((60, 120)))
    w_bar = rng.standard_normal(120)
    _run_method(method, A, A @ w_bar, [60, 12], 1.0, w_bar)


def _child(conn: Any, spec: Spec, method: str, sparsities: list[float]) -> None:
    """Child process: build, warm up, reset the peak mark, run, evaluate, send records."""
    try:
        import chita_core
        from bench import baselines as bl

        t0 = time.perf_counter()
        inst = build_instance(spec)
        A, b, w_bar, ridge = inst["A"], inst["b"], inst["w_bar"], inst["ridge"]
        head = {
            "checksum": _checksum(A, b, w_bar),
            "ridge": ridge,
            "build_instance_seconds": time.perf_counter() - t0,
            "meta": inst["meta"],
        }
        p = A.shape[1]
        ks = [round((1.0 - s) * p) for s in sparsities]
        _warm_up(method)
        reset = _reset_peak()
        rss0 = _status_bytes("VmRSS")
        head.update(
            rss_before_bytes=rss0,
            peak_reset=reset,
            mem_available_bytes=memory_available(),
            load_avg_start=os.getloadavg(),
        )
        try:
            runs = _run_method(method, A, b, ks, ridge, w_bar)
            if max(r["seconds"] for r in runs) < REPEAT_BELOW:
                runs = _median_runs(
                    [runs]
                    + [_run_method(method, A, b, ks, ridge, w_bar) for _ in range(REPEATS - 1)]
                )
        except bl.DenseMemoryError as exc:
            conn.send(
                {
                    **head,
                    "status": "oom",
                    "needed_bytes": exc.needed_bytes,
                    "available_bytes": exc.available_bytes,
                    "limit_bytes": exc.limit_bytes,
                    "error": str(exc),
                }
            )
            return
        peak = _status_bytes("VmHWM")
        head["load_avg_end"] = os.getloadavg()
        head.update(
            peak_rss_bytes=peak,
            peak_extra_bytes=None if peak is None or rss0 is None else peak - rss0,
        )
        results = []
        for r in runs:
            w = r.pop("w")
            results.append(
                {
                    **r,
                    "objective": chita_core.objective(A, b, w, ridge=ridge, w_bar=w_bar),
                    "nnz": int(np.count_nonzero(w)),
                }
            )
        conn.send({**head, "status": "ok", "results": results})
    except BaseException as exc:  # report, do not hang the parent
        conn.send(
            {
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8),
            }
        )
    finally:
        conn.close()


def run_in_child(
    spec: Spec, method: str, sparsities: list[float], timeout: float
) -> dict[str, Any]:
    """Run one method on one instance in a fresh spawned process and return its report."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, spec, method, sparsities), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    msg: dict[str, Any] | None = None
    try:
        if recv.poll(timeout):
            msg = recv.recv()
    except EOFError:  # died without a word: OOM killer, segfault
        msg = None
    proc.join(5.0 if msg is not None else 0.5)
    if proc.is_alive():
        proc.terminate()
        proc.join(5.0)
        if msg is None:
            msg = {"status": "timeout", "error": f"no result after {timeout:.0f} s"}
    if msg is None:
        code = proc.exitcode
        why = {-9: "killed (SIGKILL: OOM killer?)", -11: "segfault"}.get(code, "died")
        msg = {"status": "crashed", "exitcode": code, "error": why}
    msg["child_seconds"] = time.perf_counter() - t0
    return msg


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def _limits(args: argparse.Namespace) -> dict[str, int]:
    return {
        GREEDY: args.dense_max_p,
        ONESHOT: args.dense_max_p,
        ONESHOT_CHOL: args.chol_max_p,
        RANK1: args.rank1_max_p,
        WOODBURY: args.woodbury_max_p,
        CHITA: args.chita_max_p,
        MAGBS: args.chita_max_p,
    }


def sweep(args: argparse.Namespace, out: JsonlWriter) -> list[dict[str, Any]]:
    from bench import baselines as bl

    specs = [real_spec(h, args.epochs) for h in args.hidden]
    specs += [Spec("synthetic", p) for p in args.synthetic_p]
    limits = _limits(args)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        ks = [round((1.0 - s) * spec.p) for s in args.sparsities]
        checksums: set[str] = set()
        print(f"\n{spec.name}, p = {spec.p:,}", flush=True)
        for method in METHODS:
            if spec.p > limits[method]:
                if method in (GREEDY, ONESHOT):  # say what it would have needed
                    kind = "greedy" if method == GREEDY else "oneshot"
                    need = bl.dense_bytes(kind, spec.n, spec.p, ks)
                    rec = {
                        "status": "skipped",
                        "needed_bytes": need,
                        "error": f"p > {limits[method]:,} (needs {fmt_bytes(need)})",
                    }
                    rows += _records(spec, method, args.sparsities, ks, rec, out)
                continue
            rep = run_in_child(spec, method, list(args.sparsities), args.timeout)
            if "checksum" in rep:
                checksums.add(rep["checksum"])
            rows += _records(spec, method, args.sparsities, ks, rep, out)
            _print_progress(method, rep)
        if len(checksums) > 1:
            print(f"  WARNING: the children built different instances: {sorted(checksums)}")
            out.write(
                {
                    "kind": "warning",
                    "instance": spec.name,
                    "p": spec.p,
                    "checksums": sorted(checksums),
                }
            )
    return rows


def _records(
    spec: Spec,
    method: str,
    sparsities: list[float],
    ks: list[int],
    rep: dict[str, Any],
    out: JsonlWriter,
) -> list[dict[str, Any]]:
    """One JSON record per sparsity from a child's report."""
    common = {
        "kind": "result",
        "instance": spec.name,
        "instance_kind": spec.kind,
        "n": spec.n,
        "p": spec.p,
        "method": method,
        "status": rep["status"],
    }
    for key in (
        "checksum",
        "ridge",
        "peak_rss_bytes",
        "rss_before_bytes",
        "peak_extra_bytes",
        "peak_reset",
        "mem_available_bytes",
        "needed_bytes",
        "available_bytes",
        "limit_bytes",
        "error",
        "exitcode",
        "child_seconds",
        "build_instance_seconds",
        "load_avg_start",
        "load_avg_end",
    ):
        if key in rep:
            common[key] = rep[key]
    by_k = {r["k"]: r for r in rep.get("results", [])}
    recs = []
    for s, k in zip(sparsities, ks, strict=True):
        rec = {**common, "sparsity": s, "k": k}
        if k in by_k:
            r = by_k[k]
            rec.update(
                objective=r["objective"],
                seconds=r["seconds"],
                split=r["split"],
                nnz=r["nnz"],
                info=r.get("info", {}),
            )
            for key in ("stages", "samples"):
                if key in r:
                    rec[key] = r[key]
            if r["nnz"] > k:
                rec["status"] = "error"
                rec["error"] = f"{r['nnz']} nonzeros > k = {k}"
        out.write(rec)
        recs.append(rec)
    return recs


def _print_progress(method: str, rep: dict[str, Any]) -> None:
    st = rep["status"]
    if st == "ok":
        parts = [f"{r['seconds']:.3g} s f={r['objective']:.6g}" for r in rep["results"]]
        extra = rep.get("peak_extra_bytes")
        mem = f", peak +{fmt_bytes(extra)}" if extra is not None else ""
        print(f"  {method:<30} {' | '.join(parts)}{mem}", flush=True)
    else:
        need = rep.get("needed_bytes")
        print(
            f"  {method:<30} {st.upper()}"
            + (f" (needs {fmt_bytes(need)})" if need else "")
            + (f": {rep.get('error')}" if st != "oom" else ""),
            flush=True,
        )
        if rep.get("traceback"):
            print(rep["traceback"], flush=True)


# --------------------------------------------------------------------------------------------
# Verdicts, tables, plots
# --------------------------------------------------------------------------------------------


def _index(rows: list[dict[str, Any]]) -> dict[tuple[str, int, float], dict[str, dict]]:
    cells: dict[tuple[str, int, float], dict[str, dict]] = {}
    for r in rows:
        if r.get("kind") == "result":
            cells.setdefault((r["instance_kind"], r["p"], r["sparsity"]), {})[r["method"]] = r
    return cells


def _ok(r: dict[str, Any] | None) -> bool:
    return r is not None and r.get("status") == "ok"


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per (instance, p, sparsity) where chita ran."""
    out = []
    for (kind, p, s), by in sorted(_index(rows).items()):
        c = by.get(CHITA)
        if not _ok(c):
            continue
        g = by.get(GREEDY)
        os_ = by.get(ONESHOT) if _ok(by.get(ONESHOT)) else by.get(WOODBURY)
        v: dict[str, Any] = {
            "kind": "verdict",
            "instance_kind": kind,
            "instance": c["instance"],
            "p": p,
            "sparsity": s,
            "k": c["k"],
            "chita_objective": c["objective"],
            "chita_seconds": c["seconds"],
        }
        if _ok(os_):
            v["oneshot_source"] = os_["method"]
            v["obj_chita_over_oneshot"] = c["objective"] / os_["objective"]
            v["no_worse_than_oneshot"] = c["objective"] <= os_["objective"] * (1 + REL_SLACK)
        if _ok(g):
            v["obj_chita_over_greedy"] = c["objective"] / g["objective"]
            v["within_2pct_of_greedy"] = c["objective"] <= g["objective"] * (1 + GREEDY_TOL)
            v["time_greedy_over_chita"] = g["seconds"] / c["seconds"]
            if p >= SPEED_FROM_P:
                v["speed_100x"] = v["time_greedy_over_chita"] >= SPEED_BAR
            checks = [
                v["no_worse_than_oneshot"],
                v["within_2pct_of_greedy"],
                v.get("speed_100x", True),
            ]
            v["meets_all"] = bool(all(checks))
        elif g is not None:
            v["greedy_status"] = g["status"]
            v["greedy_needed_bytes"] = g.get("needed_bytes")
        out.append(v)
    return out


def summary(verd: list[dict[str, Any]]) -> dict[str, Any]:
    """Crossover p (chita faster than greedy OBS) per (instance, sparsity), largest speed ratio."""
    cross = []
    for kind in sorted({v["instance_kind"] for v in verd}):
        for s in sorted({v["sparsity"] for v in verd}):
            pts = sorted(
                (v["p"], v["time_greedy_over_chita"])
                for v in verd
                if v["instance_kind"] == kind
                and v["sparsity"] == s
                and "time_greedy_over_chita" in v
            )
            if not pts:
                continue
            first = next((i for i, (_, r) in enumerate(pts) if r >= 1.0), None)
            est: float | None
            if first is None:
                est = None
            elif first == 0:
                est = float(pts[0][0])  # already faster at the smallest p measured
            else:  # log-log interpolation of the ratio between the two p around 1
                (p0, r0), (p1, r1) = pts[first - 1], pts[first]
                t = -math.log(r0) / (math.log(r1) - math.log(r0))
                est = math.exp(math.log(p0) + t * (math.log(p1) - math.log(p0)))
            cross.append(
                {
                    "instance_kind": kind,
                    "sparsity": s,
                    "first_p_faster": None if first is None else pts[first][0],
                    "already_faster_at_smallest_p": first == 0,
                    "crossover_p_estimate": est,
                    "ratios": [[p, r] for p, r in pts],
                }
            )
    best = max(
        (v for v in verd if "time_greedy_over_chita" in v),
        key=lambda v: v["time_greedy_over_chita"],
        default=None,
    )
    n_meet = sum(bool(v.get("meets_all")) for v in verd if "meets_all" in v)
    n_cmp = sum("meets_all" in v for v in verd)
    return {
        "kind": "summary",
        "crossover": cross,
        "largest_speed_ratio": None
        if best is None
        else {
            "ratio": best["time_greedy_over_chita"],
            "instance": best["instance"],
            "p": best["p"],
            "sparsity": best["sparsity"],
        },
        "meets_all": n_meet,
        "compared": n_cmp,
    }


def _s(x: float | None, fmt: str = ".4f") -> str:
    return "" if x is None else format(x, fmt)


def _sec(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _yes(b: bool | None) -> str:
    return "" if b is None else ("yes" if b else "**no**")


def _label(r: dict[str, Any]) -> str:
    return "real" if r["instance_kind"] == "real" else "synthetic"


def markdown(rows: list[dict[str, Any]], verd: list[dict[str, Any]], summ: dict[str, Any]) -> str:
    """The tables of the README section."""
    lines: list[str] = []
    cells = _index(rows)
    lines += [
        "**Verdict** (objective ratios < 1: chita better; time ratio: greedy OBS wall time "
        "over chita's, same run).",
        "",
        "| instance | p | sparsity | k | chita / greedy OBS | chita / one-shot OBS | "
        "time greedy / chita | <= one-shot | within 2% of greedy | >= 100x faster |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|:-:|:-:|",
    ]
    for v in verd:
        g = v.get("obj_chita_over_greedy")
        gcell = (
            _s(g)
            if g is not None
            else (
                f"({v['greedy_status']}"
                + (
                    f", needs {fmt_bytes(v['greedy_needed_bytes'])})"
                    if v.get("greedy_needed_bytes")
                    else ")"
                )
                if v.get("greedy_status")
                else ""
            )
        )
        src = "" if v.get("oneshot_source") in (None, ONESHOT) else " (W)"
        lines.append(
            f"| {v['instance']} | {v['p']:,} | {v['sparsity']:.0%} | {v['k']:,} | {gcell} | "
            f"{_s(v.get('obj_chita_over_oneshot'))}{src} | "
            f"{_s(v.get('time_greedy_over_chita'), '.1f')} | "
            f"{_yes(v.get('no_worse_than_oneshot'))} | {_yes(v.get('within_2pct_of_greedy'))} | "
            f"{_yes(v.get('speed_100x'))} |"
        )
    lines += [
        "",
        "(W): one-shot OBS through Woodbury (same supports, no p x p matrix) where the "
        "dense one did not run.",
        "",
    ]

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return ""
        if r["status"] == "ok":
            return _sec(r["seconds"])
        if r["status"] in ("oom", "skipped") and r.get("needed_bytes"):
            return f"{r['status']} ({fmt_bytes(r['needed_bytes'])})"
        return r["status"]

    def memcell(r: dict[str, Any] | None) -> str:
        if r is None:
            return ""
        if r["status"] == "ok" and r.get("peak_extra_bytes") is not None:
            return fmt_bytes(max(0, r["peak_extra_bytes"]))
        if r["status"] in ("oom", "skipped") and r.get("needed_bytes"):
            return f"{r['status']} ({fmt_bytes(r['needed_bytes'])})"
        return r["status"] if r["status"] != "ok" else ""

    shown = [m for m in METHODS if any(m in by for by in cells.values())]
    short = {
        GREEDY: "greedy OBS",
        RANK1: "greedy rank-1",
        ONESHOT: "one-shot OBS",
        ONESHOT_CHOL: "one-shot (chol H)",
        WOODBURY: "OBS+bs (Woodbury)",
        CHITA: "chita",
        MAGBS: "mag+bs",
    }
    sps = sorted({k[2] for k in cells})
    lines += [
        f"**Wall time (s)** at {' / '.join(f'{s:.0%}' for s in sps)} sparsity.",
        "",
        "| instance | p | " + " | ".join(short[m] for m in shown) + " |",
        "|---|---:|" + "---:|" * len(shown),
    ]
    keys = sorted({(k[0], k[1]) for k in cells}, key=lambda x: (x[0] != "real", x[1]))
    for kind, p in keys:
        by_s = [cells.get((kind, p, s), {}) for s in sps]
        any_r = next(iter(by_s[0].values()))
        parts = []
        for m in shown:
            cs = [cell(b.get(m)) for b in by_s]
            parts.append(
                " / ".join(cs) if len(set(cs)) > 1 or cs[0].replace(".", "").isdigit() else cs[0]
            )
        lines.append(f"| {any_r['instance']} | {p:,} | " + " | ".join(parts) + " |")
    lines += [
        "",
        "**Peak memory beyond the inputs** (VmHWM - VmRSS before the call, fresh "
        "process; oom/skipped: the estimate that was refused).",
        "",
        "| instance | p | " + " | ".join(short[m] for m in shown) + " |",
        "|---|---:|" + "---:|" * len(shown),
    ]
    for kind, p in keys:
        by = cells.get((kind, p, sps[-1]), {})
        any_r = next(iter(by.values()))
        lines.append(
            f"| {any_r['instance']} | {p:,} | "
            + " | ".join(memcell(by.get(m)) for m in shown)
            + " |"
        )
    s_hi = sps[-1]
    lines += [
        "",
        f"**Time split at {s_hi:.0%}** (s). OBS: build (Gram products) / factor "
        "(Cholesky, inverses) / prune (saliencies, greedy path) / refit. chita: start "
        "supports (magnitude / OBS + refits) / IHT + refit / greedy OBS + refit / swaps / other.",
        "",
        "| instance | p | greedy OBS | one-shot OBS | chita |",
        "|---|---:|---|---|---|",
    ]
    for kind, p in keys:
        by = cells.get((kind, p, s_hi), {})
        any_r = next(iter(by.values()))

        def split(m: str, by: dict = by) -> str:
            r = by.get(m)
            if not _ok(r):
                return r["status"] if r else ""
            return " / ".join(_sec(x) for x in r["split"].values())

        lines.append(
            f"| {any_r['instance']} | {p:,} | {split(GREEDY)} | {split(ONESHOT)} | {split(CHITA)} |"
        )
    lines += [
        "",
        "**Objectives** (f, lower is better).",
        "",
        "| instance | p | sparsity | greedy OBS | one-shot OBS | chita | mag+bs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (_kind, p, s), by in sorted(cells.items(), key=lambda x: (x[0][0] != "real", x[0][1:])):
        any_r = next(iter(by.values()))

        def obj(m: str, by: dict = by) -> str:
            r = by.get(m)
            if m == ONESHOT and not _ok(r):
                r = by.get(WOODBURY)
            return f"{r['objective']:.5g}" if _ok(r) else ""

        lines.append(
            f"| {any_r['instance']} | {p:,} | {s:.0%} | {obj(GREEDY)} | {obj(ONESHOT)} "
            f"| {obj(CHITA)} | {obj(MAGBS)} |"
        )
    lines += [""]
    for c in summ["crossover"]:
        est = c["crossover_p_estimate"]
        what = (
            "never faster in the measured range"
            if est is None
            else f"already faster at the smallest p ({c['first_p_faster']:,})"
            if c["already_faster_at_smallest_p"]
            else f"crossover at p ~ {est:,.0f} (first measured p faster: {c['first_p_faster']:,})"
        )
        lines.append(
            f"- crossover, {c['instance_kind']}, {c['sparsity']:.0%}: {what}; greedy / "
            "chita time: " + ", ".join(f"{r:.2g}x at {p:,}" for p, r in c["ratios"])
        )
    b = summ["largest_speed_ratio"]
    if b:
        lines.append(
            f"- largest speed ratio greedy OBS / chita: {b['ratio']:.0f}x "
            f"({b['instance']}, p = {b['p']:,}, {b['sparsity']:.0%})"
        )
    lines.append(
        f"- all three criteria met in {summ['meets_all']} of {summ['compared']} "
        "(instance, p, sparsity) cells where greedy OBS ran"
    )
    return "\n".join(lines)


def _p_ticks(ax: Any, ps: list[int]) -> None:
    """Major ticks at the measured p, rounded (2k, 5k, 1M); no minor labels (they overlap)."""
    from matplotlib.ticker import NullFormatter

    def short(p: int) -> str:
        return f"{p / 1e6:g}M" if p >= 10**6 else f"{p / 1e3:.3g}k"

    ticks = sorted({float(f"{p:.1g}") for p in ps})  # 5 032 and 5 000 share the tick 5k
    ax.set_xticks(ticks, [short(round(p)) for p in ticks], fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())


def plots(rows: list[dict[str, Any]], prefix: Path) -> list[Path]:
    """``<prefix>_time.png`` (log-log wall time vs p) and ``<prefix>_objective.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _index(rows)
    kinds = [k for k in ("real", "synthetic") if any(c[0] == k for c in cells)]
    sps = sorted({c[2] for c in cells})
    style = {
        GREEDY: ("tab:red", "o"),
        RANK1: ("tab:pink", "v"),
        ONESHOT: ("tab:orange", "s"),
        ONESHOT_CHOL: ("tab:brown", "D"),
        WOODBURY: ("tab:olive", "^"),
        CHITA: ("tab:blue", "o"),
        MAGBS: ("tab:gray", "x"),
    }
    paths = []
    fig, axes = plt.subplots(
        len(kinds), len(sps), figsize=(6.2 * len(sps), 4.6 * len(kinds)), squeeze=False
    )
    for i, kind in enumerate(kinds):
        for j, s in enumerate(sps):
            ax = axes[i][j]
            ps_all = []
            for m in METHODS:
                pts = sorted(
                    (p, by[m]["seconds"])
                    for (k, p, ss), by in cells.items()
                    if k == kind and ss == s and _ok(by.get(m))
                )
                if not pts:
                    continue
                ps_all += [p for p, _ in pts]
                c, mk = style[m]
                ax.plot(
                    *zip(*pts, strict=True),
                    marker=mk,
                    color=c,
                    label=m,
                    lw=2.2 if m in (GREEDY, CHITA) else 1.2,
                )
                oom = [
                    (p, r)
                    for (k, p, ss), by in cells.items()
                    if k == kind and ss == s
                    for mm, r in by.items()
                    if mm == m and r["status"] == "oom"
                ]
                for p, _ in oom:
                    if m != GREEDY:  # one line and label per p for all the dense methods
                        continue
                    ax.axvline(p, color=c, ls=":", lw=1)
                    ax.annotate(
                        "dense OBS: OOM",
                        (p, ax.get_ylim()[1] if ax.lines else 1),
                        fontsize=7,
                        color=c,
                        rotation=90,
                        va="top",
                        ha="right",
                    )
            if not ps_all:
                continue
            lo, hi = min(ps_all), max(ps_all)
            grid = np.geomspace(lo, hi, 50)
            g = sorted(
                (p, by[GREEDY]["seconds"])
                for (k, p, ss), by in cells.items()
                if k == kind and ss == s and _ok(by.get(GREEDY))
            )
            ch = sorted(
                (p, by[CHITA]["seconds"])
                for (k, p, ss), by in cells.items()
                if k == kind and ss == s and _ok(by.get(CHITA))
            )
            if g:  # O(p^3) through greedy's largest point
                p0, t0 = g[-1]
                ax.plot(grid, t0 * (grid / p0) ** 3, "k--", lw=1, alpha=0.6, label="O(p³)")
            if ch:  # O(n p) through chita's largest point
                p0, t0 = ch[-1]
                ax.plot(grid, t0 * (grid / p0), "k:", lw=1.3, alpha=0.8, label="O(np), n fixed")
            ax.set_xscale("log")
            _p_ticks(ax, ps_all)
            ax.set_yscale("log")
            ts = [
                t
                for (k, p, ss), by in cells.items()
                if k == kind and ss == s
                for r in by.values()
                if _ok(r)
                for t in [r["seconds"]]
            ]
            ax.set_ylim(min(ts) / 3, max(ts) * 3)
            ax.set_title(f"{kind} gradients, n = {N}, sparsity {s:.0%}")
            ax.set_xlabel("p (weights)")
            ax.set_ylabel("wall time (s)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Dense-Hessian OBS vs chita_core (same run, shared 2-core machine)")
    fig.tight_layout()
    path = Path(f"{prefix}_time.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.4), squeeze=False)
    for j, (base, label) in enumerate(((GREEDY, "greedy OBS"), (ONESHOT, "one-shot OBS"))):
        ax = axes[0][j]
        for kind, ls in (("real", "-"), ("synthetic", "--")):
            colours = ("tab:green", "tab:purple") if kind == "real" else ("tab:olive", "tab:pink")
            for s, c in zip(sps, colours, strict=False):
                pts = []
                for (k, p, ss), by in sorted(cells.items()):
                    ref = by.get(base)
                    if base == ONESHOT and not _ok(ref):
                        ref = by.get(WOODBURY)
                    if k == kind and ss == s and _ok(by.get(CHITA)) and _ok(ref):
                        pts.append((p, by[CHITA]["objective"] / ref["objective"]))
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        ls=ls,
                        marker="o",
                        color=c,
                        label=f"{kind}, {s:.0%}",
                    )
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xscale("log")
        _p_ticks(ax, [p for (_, p, _) in cells])
        if base == GREEDY:
            ax.axhline(1.0 + GREEDY_TOL, color="tab:red", lw=1, ls=":", label="+2%")
        ax.set_xlabel("p (weights)")
        ax.set_ylabel(f"objective chita / {label}")
        ax.set_title(f"chita default / {label} (< 1: chita better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(f"{prefix}_objective.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Self-check: the fast baselines against their textbook forms
# --------------------------------------------------------------------------------------------


def selfcheck() -> bool:
    """Blocked greedy OBS vs the unblocked rank-1 reference (same removal order, objectives
    within 1e-9 relative), both dense H^-1 routes vs ``np.linalg.inv``, the dense one-shot joint
    update vs ``chita_core.backsolve`` on its support, and the OOM report."""
    import chita_core
    from bench import baselines as bl

    ok = True

    def check(name: str, cond: bool, detail: str = "") -> None:
        nonlocal ok
        ok &= bool(cond)
        print(f"  {'ok  ' if cond else 'FAIL'} {name}" + (f"  ({detail})" if detail else ""))

    probs = []
    rng = np.random.default_rng(0)
    A = np.asfortranarray(rng.standard_normal((100, 200)))
    w = rng.standard_normal(200)
    probs.append(("gaussian n=100 p=200", A, A @ w, w, 1e-2 * float((A * A).sum()) / 200))
    inst = build_instance(real_spec(3, epochs=10))  # p = 222, n = 1000 > p: Cholesky route
    probs.append(("digits MLP 64-3-10 p=222", inst["A"], inst["b"], inst["w_bar"], inst["ridge"]))
    inst = build_instance(Spec("real", 74 * 3, hidden=3, epochs=10, n=150))  # n < p: Woodbury
    probs.append(
        ("digits MLP 64-3-10 n=150 p=222", inst["A"], inst["b"], inst["w_bar"], inst["ridge"])
    )
    for name, A, b, w_bar, ridge in probs:
        print(f"{name}:")
        p = A.shape[1]
        Hi = np.linalg.inv(A.T @ A + ridge * np.eye(p))
        for route in ("cholesky", "woodbury"):
            X = bl.dense_hinv(A, ridge, route=route, symmetric=True)
            err = float(np.abs(X - Hi).max() / np.abs(Hi).max())
            check(f"dense_hinv route={route} vs np.linalg.inv", err < 1e-8, f"rel err {err:.1e}")
        n_remove = p - round(0.1 * p)
        ref = bl.greedy_obs_rank1(A, b, ridge, w_bar, n_remove)
        for block in (16, 192):
            fast = bl.greedy_obs_path(A, b, ridge, w_bar, n_remove, block=block)
            same = int(np.sum(fast.removed == ref.removed))
            check(
                f"blocked greedy (block={block}) removal order = rank-1 reference",
                same == n_remove,
                f"{same}/{n_remove} steps agree",
            )
            for k in (p // 2, round(0.1 * p)):
                fa = chita_core.objective(
                    A,
                    b,
                    bl.support_backsolve(A, b, ridge, w_bar, fast.removed[: p - k]),
                    ridge=ridge,
                    w_bar=w_bar,
                )
                fr = chita_core.objective(
                    A,
                    b,
                    bl.support_backsolve(A, b, ridge, w_bar, ref.removed[: p - k]),
                    ridge=ridge,
                    w_bar=w_bar,
                )
                check(
                    f"  objective at k={k}",
                    abs(fa - fr) <= 1e-9 * abs(fr),
                    f"{fa:.10g} vs {fr:.10g}",
                )
        ks = [p // 2, round(0.1 * p), p - 3]
        wood = bl.oneshot_obs_woodbury(A, b, ks, ridge, w_bar)
        for route in ("cholesky", "woodbury"):
            for r, rw in zip(
                bl.oneshot_obs_dense(A, b, ks, ridge, w_bar, route=route), wood, strict=True
            ):
                supp = np.flatnonzero(r.w)
                w_bs = np.asarray(chita_core.backsolve(A, b, supp, ridge=ridge, w_bar=w_bar))
                err = float(np.abs(r.w - w_bs).max() / max(np.abs(w_bs).max(), 1e-300))
                same = np.array_equal(supp, np.flatnonzero(rw.w))
                check(
                    f"one-shot dense ({route}, k={r.k}, update {r.info['update']}) = "
                    "backsolve on its support; same support as Woodbury one-shot",
                    err < 1e-7 and same,
                    f"rel err {err:.1e}",
                )
    try:
        bl.check_memory("test", 10 * GiB, available_bytes=4 * GiB)
        check("OOM check refuses 10 GiB with 4 GiB available", False)
    except bl.DenseMemoryError as exc:
        check(
            "OOM check refuses 10 GiB with 4 GiB available", exc.needed_bytes == 10 * GiB, str(exc)
        )
    big = Spec("synthetic", 2_000)
    rep = run_in_child(big, GREEDY, [0.5], 120)
    check(
        "child process reports peak memory",
        rep["status"] == "ok" and (rep.get("peak_extra_bytes") or 0) >= 8 * 2000 * 2000,
        f"peak extra {fmt_bytes(rep.get('peak_extra_bytes') or 0)}, H^-1 alone 31 MiB",
    )
    print("selfcheck:", "PASS" if ok else "FAIL")
    return ok


# --------------------------------------------------------------------------------------------


def _git_head() -> str | None:
    from bench.quality import _git_head as head

    return head()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.obs_vs_chita",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="p <= 10 000 for OBS (real h = 27, 68, 135), chita up to 10^5",
    )
    ap.add_argument(
        "--selfcheck",
        action="store_true",
        help="check the fast baselines against their textbook forms and exit",
    )
    ap.add_argument(
        "--report",
        metavar="JSONL",
        help="only print the tables (and draw the plots) of an earlier run",
    )
    ap.add_argument("--out", help="JSON lines (default bench/results/obs_vs_chita[_quick].jsonl)")
    ap.add_argument(
        "--plots",
        metavar="PREFIX",
        help="write PREFIX_time.png and PREFIX_objective.png (default for a full "
        "run: bench/obs_vs_chita; quick runs draw none unless asked)",
    )
    ap.add_argument("--hidden", type=int, nargs="*", help="hidden sizes of the real instances")
    ap.add_argument("--synthetic-p", type=int, nargs="*", help="p of the synthetic instances")
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument(
        "--dense-max-p",
        type=int,
        default=60_000,
        help="largest p for the dense OBS methods (beyond: skipped with the "
        "estimate; within: run unless the memory check refuses)",
    )
    ap.add_argument(
        "--chol-max-p",
        type=int,
        help="largest p for one-shot OBS through the "
        "Cholesky of H (O(p^3); default 10 000, quick 5 000)",
    )
    ap.add_argument("--rank1-max-p", type=int, default=2_000)
    ap.add_argument("--woodbury-max-p", type=int, help="default 200 000 (quick 100 000)")
    ap.add_argument("--chita-max-p", type=int, default=10**6)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    args = ap.parse_args(argv)

    if args.selfcheck:
        return 0 if selfcheck() else 1
    if args.report:
        rows = [json.loads(x) for x in Path(args.report).read_text().splitlines() if x.strip()]
        machine = rows[0] if rows and rows[0].get("kind") == "machine" else {}
        verd = verdicts(rows)
        summ = summary(verd)
        print(_machine_line(machine) + "\n")
        print(markdown(rows, verd, summ))
        if args.plots:
            for path in plots(rows, Path(args.plots)):
                print("wrote", path)
        return 0

    q = args.quick
    args.hidden = list(QUICK_HIDDEN if q else FULL_HIDDEN) if args.hidden is None else args.hidden
    if args.synthetic_p is None:
        args.synthetic_p = list(QUICK_SYN_P if q else FULL_SYN_P)
    args.chol_max_p = args.chol_max_p or (5_000 if q else 10_000)
    args.woodbury_max_p = args.woodbury_max_p or (100_000 if q else 200_000)
    if q and args.dense_max_p == 60_000:
        args.dense_max_p = 10_000
    out_path = Path(args.out or f"bench/results/obs_vs_chita{'_quick' if q else ''}.jsonl")
    plot_prefix = args.plots or (None if q else "bench/obs_vs_chita")

    t_start = time.perf_counter()
    machine = describe_machine()
    machine["load_avg"] = os.getloadavg()
    machine["commit"] = _git_head()
    options = {k: v for k, v in vars(args).items() if k not in ("report", "selfcheck")}
    with JsonlWriter(
        out_path,
        benchmark="obs_vs_chita",
        machine=machine,
        options=options,
        n=N,
        ridge_scale=RIDGE_SCALE,
    ) as out:
        print(_machine_line(machine))
        rows = sweep(args, out)
        verd = verdicts(rows)
        for v in verd:
            out.write(v)
        summ = summary(verd)
        summ["wall_seconds"] = time.perf_counter() - t_start
        summ["load_avg_end"] = os.getloadavg()
        out.write(summ)
    print()
    print(markdown(rows, verd, summ))
    if plot_prefix:
        for path in plots(rows, Path(plot_prefix)):
            print("wrote", path)
    print(f"\nwrote {out_path}; wall time {time.perf_counter() - t_start:.0f} s")
    return 0


def _machine_line(m: dict[str, Any]) -> str:
    if not m:
        return ""
    mem = m.get("mem_total_bytes") or 0
    return (
        f"machine: {m.get('cpu_model')}, {m.get('usable_cpus')} cpus, "
        f"{mem / GiB:.0f} GiB, numpy {m.get('numpy')}, chita_core threads "
        f"{m.get('chita_core_num_threads')}, load {m.get('load_avg')}, {m.get('time_utc')}, "
        f"commit {m.get('commit')}"
    )


if __name__ == "__main__":
    sys.exit(main())
