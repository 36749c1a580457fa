"""Solver-quality benchmark: chita_core's default solver against the pruning baselines.

Run ``python -m bench.quality [--quick] [--out bench/results/quality.jsonl]`` from the repository
root (needs scikit-learn for the digits data).

Problem: ``min 0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2`` s.t. ``||w||_0 <= k``, with
``b = A @ w_bar`` (pruning), ``k = round((1 - sparsity) p)`` for sparsities 50/70/90/95%.

Instances:

- **real**: the NumPy MLP of ``bench/digits_mlp.py`` (64-h-10 on scikit-learn's digits, 60 epochs,
  seed 0) for h = 64 (p = 4 736) and h = 256 (p = 18 944; not with ``--quick``). A holds the
  closed-form per-sample gradients of the first 1 000 training samples (n = 1 000, F order,
  float64), ``w_bar`` the trained weights, ``ridge = ridge_scale * mean_j ||a_j||^2`` with
  ridge_scale in {1e-3, 1e-2} (``--quick``: 1e-3). Test accuracy of each pruned network is
  reported too (biases kept).
- **synthetic**: n = 500, p = 5 000 (``--quick``: 2 000); rows of A drawn from N(0, Sigma) with
  ``Sigma_ij = 0.5^|i-j|`` (an AR(1) recursion over the columns); ``w_true`` with 10% nonzeros
  (standard normal); ``w_bar = w_true + 0.05 N(0, I)`` (dense), ``b = A @ w_bar``,
  ``ridge = 1e-3 * mean_j ||a_j||^2``. Also reported: the fraction of the planted support found.

Methods (bench/baselines.py): magnitude; magnitude + backsolve; one-shot OBS + backsolve;
``chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar)`` with every other argument at its default;
greedy OBS with the dense p x p inverse Hessian + backsolve (p <= ``--greedy-max-p``). Greedy OBS
removes weights one at a time and its path does not depend on k, so it runs once per instance to
the highest sparsity; its time at a sparsity is the time at which the path got there (set-up
included) plus the final backsolve.

Objectives are all evaluated by ``chita_core.objective`` (float64 accumulation). Verdict: PASS
when chita's objective is <= both magnitude + backsolve and OBS + backsolve (relative slack
1e-9, for rounding). Times are wall clock: the median of 3 repeats for calls whose first run took
under 0.3 s, otherwise the first run alone. The machine is shared; the JSON records carry the
load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import baselines as bl
from bench.harness import GiB, JsonlWriter, describe_machine, fmt_seconds, time_fn

SPARSITIES = (0.5, 0.7, 0.9, 0.95)
METHODS = (
    "magnitude",
    "magnitude + backsolve",
    "OBS + backsolve",
    "chita default",
    "greedy OBS + backsolve",
)
REL_SLACK = 1e-9
FAST_CALL = 0.3  # seconds: below this a call is repeated and the median quoted
REPEATS = 3


@dataclasses.dataclass
class Instance:
    name: str
    kind: str  # "real" or "synthetic"
    A: np.ndarray
    b: np.ndarray
    w_bar: np.ndarray
    ridge: float
    ridge_scale: float
    meta: dict[str, Any]
    model: Any = None
    test: tuple[np.ndarray, np.ndarray] | None = None
    planted: np.ndarray | None = None  # sorted true support (synthetic)


def _ridge(A: np.ndarray, scale: float) -> float:
    return scale * float(np.einsum("ij,ij->", A, A)) / A.shape[1]


def real_instances(
    hiddens: list[int], ridge_scales: list[float], n_grads: int, epochs: int, seed: int
) -> list[Instance]:
    from bench.digits_mlp import MLP, load_digits

    Xtr, ytr, Xte, yte = load_digits(seed)
    out = []
    for hidden in hiddens:
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        model = MLP(Xtr.shape[1], hidden, 10, rng)
        model.train(Xtr, ytr, epochs, rng)
        t_train = time.perf_counter() - t0
        n = min(n_grads, len(ytr))
        t0 = time.perf_counter()
        A = model.per_sample_gradients(Xtr[:n], ytr[:n])
        t_grads = time.perf_counter() - t0
        w_bar = model.weights
        b = A @ w_bar
        for scale in ridge_scales:
            out.append(
                Instance(
                    name=f"digits MLP 64-{hidden}-10, rs={scale:g}",
                    kind="real",
                    A=A,
                    b=b,
                    w_bar=w_bar,
                    ridge=_ridge(A, scale),
                    ridge_scale=scale,
                    meta={
                        "hidden": hidden,
                        "epochs": epochs,
                        "seed": seed,
                        "train_seconds": t_train,
                        "grads_seconds": t_grads,
                        "dense_test_acc": model.accuracy(Xte, yte),
                        "zero_columns": int(np.count_nonzero(~A.any(axis=0))),
                    },
                    model=model,
                    test=(Xte, yte),
                )
            )
    return out


def synthetic_instance(
    n: int,
    p: int,
    seed: int,
    *,
    rho: float = 0.5,
    sparsity: float = 0.9,
    noise: float = 0.05,
    ridge_scale: float = 1e-3,
) -> Instance:
    rng = np.random.default_rng(seed)
    A = np.empty((n, p), order="F")
    A[:, 0] = rng.standard_normal(n)
    innov = np.sqrt(1.0 - rho * rho)
    for j in range(1, p):  # rows ~ N(0, Sigma), Sigma_ij = rho^|i-j|
        A[:, j] = rho * A[:, j - 1] + innov * rng.standard_normal(n)
    k_true = round((1.0 - sparsity) * p)
    planted = np.sort(rng.choice(p, size=k_true, replace=False)).astype(np.int64)
    w_true = np.zeros(p)
    w_true[planted] = rng.standard_normal(k_true)
    w_bar = w_true + noise * rng.standard_normal(p)
    return Instance(
        name=f"synthetic AR(0.5) n={n} p={p}",
        kind="synthetic",
        A=A,
        b=A @ w_bar,
        w_bar=w_bar,
        ridge=_ridge(A, ridge_scale),
        ridge_scale=ridge_scale,
        meta={
            "rho": rho,
            "planted_sparsity": sparsity,
            "noise": noise,
            "seed": seed,
            "k_true": k_true,
        },
        planted=planted,
    )


def _git_head() -> str | None:
    """Commit of the repository root (``+dirty`` with local changes), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _preload(mod: Any) -> list[str]:
    """Import every submodule of chita_core now and run one tiny solve, so that a reinstall
    while the benchmark runs cannot mix two versions (lazy imports would pick up the new one)."""
    import importlib
    import pkgutil

    names = []
    for info in pkgutil.iter_modules(mod.__path__):
        try:
            importlib.import_module(f"{mod.__name__}.{info.name}")
            names.append(info.name)
        except ImportError:  # optional extension modules (e.g. _cuda)
            pass
    rng = np.random.default_rng(0)
    A = np.asfortranarray(rng.standard_normal((20, 60)))
    w_bar = rng.standard_normal(60)
    mod.iht(A, A @ w_bar, 10, ridge=1.0, w_bar=w_bar)
    return names


def _install_stamp(mod: Any) -> tuple[tuple[str, int], ...]:
    """Modification times of the package's files, to notice a reinstall during the run."""
    root = Path(mod.__file__).resolve().parent
    return tuple(sorted((f.name, f.stat().st_mtime_ns) for f in root.iterdir() if f.is_file()))


def timed(fn: Any) -> tuple[Any, float, dict[str, Any]]:
    """Run ``fn`` once; repeat it (median of ``REPEATS``) when that took under ``FAST_CALL``."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    if first < FAST_CALL:
        t = time_fn(fn, warmup=0, repeats=REPEATS)
        return out, t["median"], {"first": first, "samples": t["samples"]}
    return out, first, {"first": first, "samples": [first]}


def _scalars(res: Any) -> dict[str, Any]:
    """The scalar fields of an IHTResult (whatever fields the installed version has)."""
    out: dict[str, Any] = {}
    fields = dataclasses.fields(res) if dataclasses.is_dataclass(res) else []
    for f in fields:
        v = getattr(res, f.name)
        if isinstance(v, (bool, int, float, str, np.generic)):
            out[f.name] = v
        elif f.name == "history" and isinstance(v, list):
            out["history_len"] = len(v)
    return out


def bench_instance(
    inst: Instance, sparsities: list[float], greedy_max_p: int, out: JsonlWriter
) -> list[dict[str, Any]]:
    import chita_core

    A, b, w_bar, ridge = inst.A, inst.b, inst.w_bar, inst.ridge
    p = A.shape[1]

    def objective(w: np.ndarray) -> float:
        return chita_core.objective(A, b, w, ridge=ridge, w_bar=w_bar)

    def extras(w: np.ndarray) -> dict[str, Any]:
        e: dict[str, Any] = {"nnz": int(np.count_nonzero(w))}
        if inst.model is not None and inst.test is not None:
            e["test_acc"] = inst.model.with_weights(w).accuracy(*inst.test)
        if inst.planted is not None:
            found = np.intersect1d(np.flatnonzero(w), inst.planted).size
            e["planted_found"] = found / inst.planted.size
        return e

    rows: list[dict[str, Any]] = []

    def record(
        sparsity: float,
        k: int,
        method: str,
        w: np.ndarray,
        seconds: float,
        timing: dict[str, Any],
        **more: Any,
    ) -> None:
        rec = {
            "kind": "result",
            "instance": inst.name,
            "sparsity": sparsity,
            "k": k,
            "method": method,
            "objective": objective(w),
            "seconds": seconds,
            "timing": timing,
            **extras(w),
            **more,
        }
        if rec["nnz"] > k:
            rec["error"] = f"{rec['nnz']} nonzeros > k = {k}"
        out.write(rec)
        rows.append(rec)

    ks = {s: round((1.0 - s) * p) for s in sparsities}
    for s in sparsities:
        k = ks[s]
        w, t, tm = timed(lambda k=k: bl.magnitude(w_bar, k))
        record(s, k, "magnitude", w, t, tm)
        w, t, tm = timed(lambda k=k: bl.magnitude_backsolve(A, b, k, ridge, w_bar))
        record(s, k, "magnitude + backsolve", w, t, tm)
        w, t, tm = timed(lambda k=k: bl.obs_oneshot_backsolve(A, b, k, ridge, w_bar))
        record(s, k, "OBS + backsolve", w, t, tm)
        res, t, tm = timed(lambda k=k: chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar))
        w = np.asarray(res.w, dtype=np.float64)
        record(s, k, "chita default", w, t, tm, iht=_scalars(res))

    if p <= greedy_max_p:
        n_remove = p - min(ks.values())
        path = bl.greedy_obs_path(A, b, ridge, w_bar, n_remove)
        for s in sparsities:
            k = ks[s]
            if k == p:
                continue
            t0 = time.perf_counter()
            w = bl.support_backsolve(A, b, ridge, w_bar, path.removed[: p - k])
            t_bs = time.perf_counter() - t0
            seconds = float(path.seconds[p - k - 1]) + t_bs
            record(
                s,
                k,
                "greedy OBS + backsolve",
                w,
                seconds,
                {
                    "path_seconds": float(path.seconds[p - k - 1]),
                    "setup_seconds": path.setup_seconds,
                    "backsolve_seconds": t_bs,
                },
            )
    return rows


def verdicts(inst: Instance, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in sorted({r["sparsity"] for r in rows}):
        by = {r["method"]: r for r in rows if r["sparsity"] == s}
        f = by["chita default"]["objective"]
        f_mb = by["magnitude + backsolve"]["objective"]
        f_obs = by["OBS + backsolve"]["objective"]
        g = by.get("greedy OBS + backsolve")
        ok = f <= min(f_mb, f_obs) * (1.0 + REL_SLACK) and "error" not in by["chita default"]
        out.append(
            {
                "kind": "verdict",
                "instance": inst.name,
                "instance_kind": inst.kind,
                "sparsity": s,
                "k": by["chita default"]["k"],
                "chita_over_mag_bs": f / f_mb,
                "chita_over_obs_bs": f / f_obs,
                "chita_over_greedy": f / g["objective"] if g else None,
                "reduction_vs_mag_bs_pct": 100.0 * (1.0 - f / f_mb),
                "pass": bool(ok),
            }
        )
    return out


def _fmt_obj(f: float) -> str:
    return f"{f:.4g}"


def print_instance(inst: Instance, rows: list[dict[str, Any]]) -> None:
    n, p = inst.A.shape
    acc = inst.meta.get("dense_test_acc")
    print(
        f"\n### {inst.name}: n = {n}, p = {p:,}, ridge = {inst.ridge:.4g} "
        f"({inst.ridge_scale:g} x mean ||a_j||^2)"
        + (f", dense test acc {acc:.4f}" if acc is not None else "")
    )
    extra = "test acc" if inst.kind == "real" else "planted found"
    print(f"\n| sparsity | k | method | objective | / mag+bs | time | {extra} |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for s in sorted({r["sparsity"] for r in rows}):
        sub = [r for r in rows if r["sparsity"] == s]
        f_mb = next(r["objective"] for r in sub if r["method"] == "magnitude + backsolve")
        for r in sorted(sub, key=lambda r: METHODS.index(r["method"])):
            x = r.get("test_acc", r.get("planted_found"))
            name = r["method"]
            if name == "chita default" and "iht" in r:
                it = r["iht"].get("n_iter")
                name += f" ({it} it)" if it is not None else ""
            if "error" in r:
                name += f" [{r['error']}]"
            print(
                f"| {s:.0%} | {r['k']:,} | {name} | {_fmt_obj(r['objective'])} | "
                f"{r['objective'] / f_mb:.4f} | {fmt_seconds(r['seconds'])} | "
                f"{'' if x is None else f'{x:.4f}'} |"
            )


SHORT = {
    "magnitude": "magnitude",
    "magnitude + backsolve": "mag+bs",
    "OBS + backsolve": "OBS+bs",
    "chita default": "chita",
    "greedy OBS + backsolve": "greedy OBS",
}


def print_compact(instances: list[Instance], all_rows: list[dict[str, Any]]) -> None:
    """Three wide tables over all instances: objectives, times, test accuracies."""
    cells: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}
    for r in all_rows:
        cells.setdefault((r["instance"], r["sparsity"]), {})[r["method"]] = r
    names = [SHORT[m] for m in METHODS]

    rel = [m for m in METHODS if m != "magnitude + backsolve"]
    print("\n### Objective of magnitude + backsolve, and each method over it (< 1 is better)\n")
    print(
        "| instance | sparsity | k | mag+bs objective | " + " | ".join(SHORT[m] for m in rel) + " |"
    )
    print("|---|---:|---:|---:|" + "---:|" * len(rel))
    for (inst, s), by in cells.items():
        f_mb = by["magnitude + backsolve"]["objective"]
        ratios = [f"{by[m]['objective'] / f_mb:.4g}" if m in by else "-" for m in rel]
        k = by["magnitude"]["k"]
        print(f"| {inst} | {s:.0%} | {k:,} | {f_mb:.4g} | " + " | ".join(ratios) + " |")

    print("\n### Wall time\n")
    print("| instance | sparsity | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for (inst, s), by in cells.items():
        ts = [fmt_seconds(by[m]["seconds"]) if m in by else "-" for m in METHODS]
        print(f"| {inst} | {s:.0%} | " + " | ".join(ts) + " |")

    real = {i.name: i for i in instances if i.kind == "real"}
    if real:
        n_test = len(next(iter(real.values())).test[1])
        print(f"\n### Test accuracy of the pruned MLP (digits test set, {n_test} images)\n")
        print("| instance | sparsity | dense | " + " | ".join(names) + " |")
        print("|---|---:|---:|" + "---:|" * len(names))
        for (inst, s), by in cells.items():
            if inst not in real:
                continue
            accs = [f"{by[m]['test_acc']:.4f}" if m in by else "-" for m in METHODS]
            dense = real[inst].meta["dense_test_acc"]
            print(f"| {inst} | {s:.0%} | {dense:.4f} | " + " | ".join(accs) + " |")


def print_summary(all_verdicts: list[dict[str, Any]]) -> None:
    print("\n### chita default against the baselines (objective ratios; < 1 is better)\n")
    print(
        "| instance | sparsity | chita / mag+bs | chita / OBS+bs | chita / greedy OBS | "
        "<= both | reduction vs mag+bs |"
    )
    print("|---|---:|---:|---:|---:|:-:|---:|")
    for v in all_verdicts:
        g = v["chita_over_greedy"]
        print(
            f"| {v['instance']} | {v['sparsity']:.0%} | {v['chita_over_mag_bs']:.4f} | "
            f"{v['chita_over_obs_bs']:.4f} | {'-' if g is None else f'{g:.4f}'} | "
            f"{'PASS' if v['pass'] else '**FAIL**'} | {v['reduction_vs_mag_bs_pct']:.1f}% |"
        )
    fails = [v for v in all_verdicts if not v["pass"]]
    print(
        f"\n{len(all_verdicts) - len(fails)}/{len(all_verdicts)} PASS"
        + (
            ": FAIL at " + "; ".join(f"{v['instance']} {v['sparsity']:.0%}" for v in fails)
            if fails
            else ""
        )
    )
    at90 = [v for v in all_verdicts if v["instance_kind"] == "real" and v["sparsity"] == 0.9]
    if at90:
        print(
            "90% sparsity, real gradients, objective reduction vs magnitude + backsolve: "
            + "; ".join(f"{v['instance']}: {v['reduction_vs_mag_bs_pct']:.1f}%" for v in at90)
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="hidden 64 only, ridge scale 1e-3, synthetic p = 2000 (about 1 min)",
    )
    ap.add_argument("--out", default=None, help="JSON lines output (default bench/results/...)")
    ap.add_argument(
        "--ridge-scales",
        type=float,
        nargs="+",
        default=None,
        help="ridge = scale * mean ||a_j||^2 for the real instances "
        "(default 1e-3 1e-2; --quick: 1e-3)",
    )
    ap.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        help="hidden sizes of the digits MLP (default 64 256; --quick: 64)",
    )
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    ap.add_argument(
        "--synthetic-p",
        type=int,
        default=None,
        help="columns of the synthetic instance (default 5000; --quick: 2000; 0 to skip it)",
    )
    ap.add_argument(
        "--greedy-max-p",
        type=int,
        default=bl.GREEDY_MAX_P,
        help="run greedy dense OBS only up to this p (default 20000)",
    )
    ap.add_argument("--n-grads", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import chita_core

    ridge_scales = args.ridge_scales or ([1e-3] if args.quick else [1e-3, 1e-2])
    hiddens = args.hidden or ([64] if args.quick else [64, 256])
    syn_p = args.synthetic_p if args.synthetic_p is not None else (2000 if args.quick else 5000)
    default = "quality_quick.jsonl" if args.quick else "quality.jsonl"
    out_path = Path(args.out) if args.out else Path(__file__).parent / "results" / default

    t_start = time.perf_counter()
    stamp = _install_stamp(chita_core)
    loaded = _preload(chita_core)
    machine = describe_machine()
    print(
        f"machine: {machine['cpu_model']}, {machine['usable_cpus']} cpus, "
        f"{machine['mem_total_bytes'] / GiB:.1f} GiB; chita_core from "
        f"{machine.get('chita_core_location')} ({Path(chita_core.__file__).parent}); "
        f"load average {os.getloadavg()[0]:.2f}; {machine['time_utc']}"
    )
    print(
        f"times: median of {REPEATS} for calls under {FAST_CALL} s, else one run; "
        f"PASS: chita <= min(mag+bs, OBS+bs) x (1 + {REL_SLACK:g})"
    )

    instances: list[Instance] = real_instances(
        hiddens, ridge_scales, args.n_grads, args.epochs, args.seed
    )
    if syn_p:
        instances.append(synthetic_instance(500, syn_p, args.seed))

    all_verdicts: list[dict[str, Any]] = []
    all_rows: list[dict[str, Any]] = []
    with JsonlWriter(
        out_path,
        benchmark="quality",
        machine=machine,
        quick=args.quick,
        sparsities=args.sparsities,
        ridge_scales=ridge_scales,
        hiddens=hiddens,
        synthetic_p=syn_p,
        greedy_max_p=args.greedy_max_p,
        n_grads=args.n_grads,
        epochs=args.epochs,
        seed=args.seed,
        rel_slack=REL_SLACK,
        iht_signature=str(inspect.signature(chita_core.iht)),
        git_head=_git_head(),
        chita_core_files_mtime=time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(t for _, t in stamp) / 1e9)
        ),
        chita_core_modules=loaded,
    ) as out:
        for inst in instances:
            n, p = inst.A.shape
            t0 = time.perf_counter()
            out.write(
                {
                    "kind": "instance",
                    "instance": inst.name,
                    "instance_kind": inst.kind,
                    "n": n,
                    "p": p,
                    "ridge": inst.ridge,
                    "ridge_scale": inst.ridge_scale,
                    "loadavg_start": os.getloadavg(),
                    **inst.meta,
                }
            )
            rows = bench_instance(inst, args.sparsities, args.greedy_max_p, out)
            vs = verdicts(inst, rows)
            for v in vs:
                out.write(v)
            all_verdicts += vs
            all_rows += rows
            print_instance(inst, rows)
            print(f"({time.perf_counter() - t0:.1f} s, load average {os.getloadavg()[0]:.2f})")
        print_compact(instances, all_rows)
        print_summary(all_verdicts)
        total = time.perf_counter() - t_start
        if _install_stamp(chita_core) != stamp:
            msg = (
                "chita_core was reinstalled during the run; the run used the version it "
                "loaded at the start (all its modules were imported up front)"
            )
            print(f"\nNOTE: {msg}.")
            out.write({"kind": "warning", "message": msg})
        out.write(
            {
                "kind": "summary",
                "seconds": total,
                "n_pass": sum(v["pass"] for v in all_verdicts),
                "n": len(all_verdicts),
            }
        )
    print(f"\ntotal {total:.0f} s; wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
