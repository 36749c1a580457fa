"""Global pruning of a network with over 10M prunable weights on this CPU: magnitude,
magnitude + backsolve, chita (one stage) and CHITA++ (several stages), A in float32 and bfloat16.

Run ``python -m bench.global_scale [--model mlp|lm] [--quick] [--n-grads N] [--out PATH]``
(``--sparsities``, ``--methods``, ``--dtypes`` run a subset of the plan; ``--ranks R`` prunes
with ``group`` on R gloo processes under torchrun, each holding a column block of A, against a
``memory_limit`` of its block + 3 GiB: the exchange buffers and the whole vectors beside).

The networks, trained here once and cached in ``bench/results/cache``:

- ``mlp``: an MLP 64-3200-3200-10 (10,476,800 weights in its three Linear layers), Adam on
  scikit-learn's digits (1,300 training images), held-out quality on the other 497
  (cross-entropy and accuracy);
- ``lm``: bench.lm's byte-level causal transformer at width 512, 4 blocks, context 64
  (12,582,912 weights in the blocks' Linear layers; the tied embedding is not pruned), AdamW
  for 800 steps of 32 sequences on the standard library's sources (15-25 min on 2 cores);
  gradients of 128 training sequences (each sample's loss is its mean next-byte cross-entropy),
  held-out quality on 256 sequences of the held-out files (cross-entropy and perplexity).

Every configuration runs ``chita_core.torch.prune`` in its own subprocess from the cached dense
weights, so that its peak resident memory (``ru_maxrss``) is its own: reported as the peak
above the process's footprint before ``prune`` (model, data, torch), against the size of A.
``memory_limit`` is A + 2 GiB, the target of issue 14; the ridge is the default path (chosen on
the real loss of the samples).

Configurations: at 50%, 70% and 90%, every method with A in bfloat16, and chita / CHITA++ with
A in float32 too (``--quick``: 70% and 90%, bfloat16 only). CHITA++ is ``stages=3`` (the
default "exp" schedule); "magnitude+backsolve (3 stages)" is the same schedule with magnitude
+ backsolve at each stage, which separates what the schedule buys from what the solver buys.
``n_grads`` defaults to 128: k / n is then 10^4 and more, the regime in which one solve of the
global quadratic model is close to degenerate (see the README's "k >> n"): what CHITA++ adds
there is re-linearising the loss between stages.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import GiB, JsonlWriter, describe_machine

CACHE = Path(__file__).resolve().parent / "results" / "cache"
HIDDEN = 3200
EPOCHS = 15
# The language model: bench.lm's byte-level transformer, 4 blocks of width 512 (12,582,912
# weights in the blocks' Linear layers), context 64, trained here.
LM_WIDTH, LM_LAYERS, LM_CTX, LM_STEPS, LM_LR = 512, 4, 64, 800, 1e-3
METHODS = {  # label -> (method, stages)
    "magnitude": ("magnitude", 1),
    "magnitude+backsolve": ("magnitude+backsolve", 1),
    "chita": ("chita", 1),
    "CHITA++ (3 stages)": ("chita", 3),
    # The same schedule without the solver: what the stages alone buy.
    "magnitude+backsolve (3 stages)": ("magnitude+backsolve", 3),
}


def _mlp() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, 10),
    )  # fmt: skip


def _digits() -> tuple[Any, ...]:
    import torch

    from bench.digits_mlp import load_digits

    Xtr, ytr, Xte, yte = load_digits(0)
    f = torch.float32
    return (torch.tensor(Xtr, dtype=f), torch.tensor(ytr), torch.tensor(Xte, dtype=f),
            torch.tensor(yte))  # fmt: skip


def _token_loss(out: Any, y: Any) -> Any:
    """Mean next-byte cross-entropy of a batch of sequences (the LM's loss)."""
    import torch

    return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


class _Setup:
    """One benchmark network: its dense weights (trained once, cached), the data its gradients
    are drawn from, its loss and its held-out quality (loss and a second metric)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def model(self) -> Any:
        if self.kind == "mlp":
            return _mlp()
        import torch

        from bench.lm import build

        torch.manual_seed(0)
        return build(LM_WIDTH, LM_LAYERS, LM_CTX)

    def path(self) -> Path:
        if self.kind == "mlp":
            return CACHE / f"digits_mlp_{HIDDEN}.pt"
        return CACHE / f"global_lm_w{LM_WIDTH}_l{LM_LAYERS}_c{LM_CTX}_s{LM_STEPS}.pt"

    def loss_fn(self) -> Any:
        from torch import nn

        return nn.CrossEntropyLoss() if self.kind == "mlp" else _token_loss

    def data(self) -> tuple[list[Any], list[Any]]:
        """(training batches, held-out batches)."""
        if self.kind == "mlp":
            Xtr, ytr, Xte, yte = _digits()
            train = [(Xtr[i : i + 100], ytr[i : i + 100]) for i in range(0, len(ytr), 100)]
            return train, [(Xte, yte)]
        from bench.lm import batches, corpus

        tr, held = corpus(4 << 20)
        return batches(tr, LM_CTX, 1024, 3, 16), batches(held, LM_CTX, 256, 2, 32)

    def validation(self) -> list[Any]:
        """Training samples outside the gradient samples (``prune(val_data=)``: the ridge and
        the method of each stage chosen on them instead of on the gradient samples)."""
        if self.kind == "mlp":
            Xtr, ytr, _, _ = _digits()
            return [(Xtr[-256:], ytr[-256:])]
        from bench.lm import batches, corpus

        return batches(corpus(4 << 20)[0], LM_CTX, 128, 4, 16)

    def quality(self, model: Any, held: list[Any]) -> tuple[float, float]:
        """(held-out mean loss, accuracy for the MLP / perplexity for the LM)."""
        import torch

        total = hits = count = 0.0
        with torch.no_grad():
            for x, y in held:
                out = model(x)
                m = y.numel()
                total += float(_token_loss(out, y)) * m
                hits += float((out.argmax(-1) == y).float().sum())
                count += m
        loss = total / count
        return loss, (hits / count if self.kind == "mlp" else math.exp(loss))

    def trained(self, log: bool = True) -> Path:
        """The dense network's weights, trained once and cached."""
        import torch

        path = self.path()
        if path.exists():
            return path
        model = self.model()
        t0 = time.perf_counter()
        if self.kind == "mlp":
            self._train_mlp(model)
        else:
            self._train_lm(model)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        if log:
            loss, second = self.quality(model, self.data()[1])
            print(f"trained in {time.perf_counter() - t0:.0f} s: held-out loss {loss:.4f}, "
                  f"{self.second} {second:.4f}")  # fmt: skip
        return path

    @property
    def second(self) -> str:
        return "accuracy" if self.kind == "mlp" else "perplexity"

    @staticmethod
    def _train_mlp(model: Any) -> None:
        import torch
        from torch import nn

        Xtr, ytr, _, _ = _digits()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(EPOCHS):
            perm = torch.randperm(len(ytr), generator=gen)
            for i in range(0, len(ytr), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
                opt.step()

    @staticmethod
    def _train_lm(model: Any) -> None:
        """AdamW on bench.lm's corpus: LM_STEPS batches of 32 sequences, linear warm-up over 50
        steps then a cosine decay; the tied embedding starts at std 0.02 (bench.lm's N(0, 1)
        start stalls at width 512)."""
        import torch

        from bench.lm import batches, corpus

        torch.set_num_threads(2)
        with torch.no_grad():
            model.emb.weight.normal_(0, 0.02)
        opt = torch.optim.AdamW(model.parameters(), lr=LM_LR, weight_decay=0.01)
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(batches(corpus(4 << 20)[0], LM_CTX, LM_STEPS * 32, 1, 32)):
            lr = LM_LR * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / LM_STEPS))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = _token_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 100 == 0:
                print(f"  step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")


def _skip(batches: list[Any], first: int) -> list[Any]:
    """The batches without their first ``first`` samples."""
    out = []
    for x, y in batches:
        if first >= len(y):
            first -= len(y)
            continue
        out.append((x[first:], y[first:]))
        first = 0
    return out


def run_one(
    kind: str,
    sparsity: float,
    label: str,
    a_dtype: str,
    n_grads: int,
    val: bool = False,
    ranks: int = 1,
) -> dict[str, Any] | None:
    """One configuration, in this process (the parent runs it in a subprocess). ``ranks > 1``:
    this process is one rank of a torchrun group (gloo); rank r takes its share of the
    n_grads samples (the single process's first n_grads, in rank order) and prunes with
    ``group``; rank 0 returns the record (the peak: the largest rank's), the others None."""
    import resource
    import warnings

    import torch
    from torch import nn

    import chita_core.torch as ct

    setup = _Setup(kind)
    model = setup.model()
    model.load_state_dict(torch.load(setup.trained(log=False)))
    data, held = setup.data()
    p = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    dt = getattr(torch, a_dtype)
    a_bytes = n_grads * p * dt.itemsize
    method, stages = METHODS[label]
    group, limit, rank = None, a_bytes + (2 << 30), 0
    if ranks > 1:
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        group, rank = dist.group.WORLD, dist.get_rank()
        data = _skip(data, rank * (n_grads // ranks) + min(rank, n_grads % ranks))
        limit = -(-a_bytes // ranks) + (3 << 30)  # a rank's block + 3 GiB (the exchange)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        rep = ct.prune(
            model, setup.loss_fn(), data, sparsity, n_grads=n_grads, method=method,
            stages=stages, a_dtype=dt, memory_limit=limit, progress=False,
            val_data=setup.validation() if val else None, group=group,
        )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peaks = [peak - before]
    if ranks > 1:
        peaks = [None] * ranks
        dist.all_gather_object(peaks, peak - before)
        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return None
    loss, second = setup.quality(model, held)
    return {
        "kind": "global_scale", "model": kind, "sparsity": sparsity, "method": label, "val": val,
        "ranks": ranks, "peaks_above_start": peaks,
        "a_dtype": a_dtype, "n_grads": rep.n_grads, "p": p, "achieved_sparsity": rep.sparsity,
        "test_loss": loss, setup.second: second, "grad_seconds": rep.grad_seconds,
        "solve_seconds": rep.solve_seconds, "a_bytes": a_bytes, "peak_above_start": max(peaks),
        "chosen": [s.chosen for s in rep.stages],
        "gain_over_backsolve": [s.gain_over_backsolve for s in rep.stages],
        "k_over_n": [s.k_over_n for s in rep.stages],
        "warnings": sorted({str(w.message)[:80] for w in said}),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.global_scale", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="70%% and 90%%, bfloat16 A only")
    ap.add_argument("--n-grads", type=int, default=128)
    ap.add_argument("--model", choices=("mlp", "lm"), default="mlp")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sparsities", default=None, help="comma-separated, e.g. 0.5,0.7")
    ap.add_argument("--methods", default=None, help="comma-separated labels (default: all)")
    ap.add_argument("--dtypes", default=None, help="bfloat16,float32 (default: the plan)")
    ap.add_argument(
        "--val", action="store_true", help="choose ridges on training samples outside A"
    )
    ap.add_argument(
        "--ranks", type=int, default=1,
        help="prune with `group` on this many gloo processes (torchrun), each holding a column "
        "block of A; the peak is a rank's, against its block",
    )  # fmt: skip
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child's configuration
    args = ap.parse_args(argv)
    if args.ranks > 1 and args.val:
        ap.error("--val with --ranks is not supported")
    if args.one is not None:
        sp, label, dt = json.loads(args.one)
        rec = run_one(args.model, sp, label, dt, args.n_grads, args.val, args.ranks)
        if rec is not None:
            print(json.dumps(rec))
        return 0
    setup = _Setup(args.model)
    setup.trained()
    sparsities = (0.7, 0.9) if args.quick else (0.5, 0.7, 0.9)
    configs = [(sp, label, "bfloat16") for sp in sparsities for label in METHODS]
    if not args.quick:
        configs += [
            (sp, label, "float32") for sp in sparsities for label in ("chita", "CHITA++ (3 stages)")
        ]
    # Filters (a subset of the plan, e.g. to add one method to an earlier run).
    if args.sparsities:
        keep_sp = {float(x) for x in args.sparsities.split(",")}
        configs = [c for c in configs if c[0] in keep_sp]
    if args.methods:
        keep_m = set(args.methods.split(","))
        unknown = keep_m - set(METHODS)
        if unknown:
            ap.error(f"unknown --methods {sorted(unknown)}; known: {sorted(METHODS)}")
        configs = [c for c in configs if c[1] in keep_m]
    if args.dtypes:
        keep_d = set(args.dtypes.split(","))
        configs = [c for c in configs if c[2] in keep_d]
    stem = "global_scale" if args.model == "mlp" else "global_scale_lm"
    default = f"{stem}_quick.jsonl" if args.quick else f"{stem}.jsonl"
    out_path = Path(args.out) if args.out else Path(__file__).parent / "results" / default
    machine = describe_machine()
    rows = []
    with JsonlWriter(
        out_path,
        benchmark="global_scale",
        machine=machine,
        n_grads=args.n_grads,
        model=args.model,
    ) as out:
        launch = [sys.executable]
        if args.ranks > 1:
            launch += ["-m", "torch.distributed.run", "--standalone",
                       f"--nproc-per-node={args.ranks}"]  # fmt: skip
        for cfg in configs:
            proc = subprocess.run(
                [*launch, "-m", "bench.global_scale", "--n-grads", str(args.n_grads),
                 "--model", args.model, *(["--val"] if args.val else []),
                 "--ranks", str(args.ranks), "--one", json.dumps(cfg)],
                capture_output=True, text=True, check=False,
                env={**os.environ, **({"OMP_NUM_THREADS": "1"} if args.ranks > 1 else {})},
            )  # fmt: skip
            if proc.returncode != 0:
                print(f"{cfg}: failed\n{proc.stderr[-2000:]}")
                continue
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            out.write(rec)
            rows.append(rec)
            print(
                f"{rec['sparsity']:.0%} {rec['method']:<20} A {rec['a_dtype']:<8} "
                f"loss {rec['test_loss']:.4f} {setup.second} {rec[setup.second]:.4f}  gradients "
                f"{rec['grad_seconds']:6.1f} s, solve {rec['solve_seconds']:6.1f} s, peak "
                f"A / ranks + {(rec['peak_above_start'] - rec['a_bytes'] / args.ranks) / GiB:.2f} "
                f"GiB (A {rec['a_bytes'] / GiB:.2f} GiB, {args.ranks} rank(s))",
                flush=True,
            )
    print(f"\nrecords: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
