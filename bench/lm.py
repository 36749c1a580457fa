"""Layer-wise pruning of a small transformer language model: chita_core against SparseGPT,
Wanda and magnitude, held-out perplexity and summed layer error (issue 13's benchmark model).

Run ``python -m bench.lm [--quick] [--out bench/results/lm.jsonl]`` from the repository root
(needs torch). The model: a byte-level causal transformer (vocabulary 256, context 128,
``--layers`` blocks of width ``--width`` with 4 heads, MLP 4x, pre-norm), trained in the bench
with Adam on the Python standard library's own sources (``Lib/*.py`` of the running
interpreter: files hashed into train / held-out by name), cached in ``bench/results/cache``.
Every Linear of the blocks (q, k, v, o, MLP up and down; not the embedding or the tied output
layer) is pruned layer by layer by ``chita_core.torch.prune_layerwise`` with the same
calibration (``--calib`` sequences of the training split, sequential), once per method:

- magnitude: each row's largest |w| (no calibration);
- Wanda: each row's largest |w| sqrt(H_jj), weights kept (Sun et al. 2024);
- SparseGPT: ``chita_core.layer.sparsegpt_layer`` (Frantar and Alistarh 2023, written from the
  paper);
- chita: ``chita_core.prune_layer`` (the default).

Reported per method and pattern: held-out perplexity, summed layer reconstruction error (each
layer's error on its own calibration H, as the layer-wise objective defines it), and the time
of the pruning solves.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from bench.harness import JsonlWriter
from bench.layer import magnitude_layer, wanda_layer

CACHE = Path(__file__).resolve().parent / "results" / "cache"


def corpus(limit_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of the standard library's sources: (train, held-out), split by file name hash."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, held = bytearray(), bytearray()
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        h = hashlib.sha256(path.name.encode()).digest()[0]
        (held if h < 26 else train).extend(data + b"\n")
        if len(train) >= limit_bytes and len(held) >= limit_bytes // 10:
            break
    return np.frombuffer(bytes(train), np.uint8), np.frombuffer(bytes(held), np.uint8)


def build(width: int, layers: int, ctx: int):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
            self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
            self.heads = 4

        def forward(self, x):
            B, T, C = x.shape
            h = self.ln1(x)

            def split(t):
                return t.view(B, T, self.heads, C // self.heads).transpose(1, 2)

            a = torch.nn.functional.scaled_dot_product_attention(
                split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=True
            )
            x = x + self.o(a.transpose(1, 2).reshape(B, T, C))
            return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(256, width)
            self.pos = nn.Parameter(torch.zeros(ctx, width))
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln = nn.LayerNorm(width)

        def forward(self, idx):
            x = self.emb(idx) + self.pos[: idx.shape[1]]
            for b in self.blocks:
                x = b(x)
            return self.ln(x) @ self.emb.weight.T

    return LM()


def batches(data: np.ndarray, ctx: int, n: int, seed: int, size: int):
    import torch

    rng = np.random.default_rng(seed)
    starts = rng.integers(0, data.size - ctx - 1, n)
    x = np.stack([data[s : s + ctx + 1] for s in starts]).astype(np.int64)
    t = torch.from_numpy(x)
    return [(t[i : i + size, :-1], t[i : i + size, 1:]) for i in range(0, n, size)]


def train(args, tr: np.ndarray):
    import torch

    key = f"lm_w{args.width}_l{args.layers}_c{args.ctx}_s{args.steps}.pt"
    path = CACHE / key
    torch.manual_seed(0)
    model = build(args.width, args.layers, args.ctx)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches(tr, args.ctx, args.steps * 32, 1, 32)):
        lr = 3e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            print(f"  train step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def perplexity(model, held_batches) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in held_batches:
            loss = torch.nn.functional.cross_entropy(
                model(x).reshape(-1, 256), y.reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += y.numel()
    return math.exp(total / count)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--out", default="bench/results/lm.jsonl")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.calib = 300, 16
    import torch

    import chita_core.torch as ct
    from chita_core.layer import sparsegpt_layer

    torch.set_num_threads(2)
    tr, held = corpus(4 << 20)
    print(
        f"corpus: {tr.size:,} train bytes, {held.size:,} held-out bytes ({sys.version.split()[0]})"
    )
    dense = train(args, tr)
    held_b = batches(held, args.ctx, 256 if not args.quick else 64, 2, 32)
    calib = [x for x, _ in batches(tr, args.ctx, args.calib, 3, 16)]
    ppl_dense = perplexity(dense, held_b)
    print(f"dense: held-out perplexity {ppl_dense:.3f}")
    out = JsonlWriter(args.out)
    methods = {
        "magnitude": magnitude_layer,
        "wanda": wanda_layer,
        "sparsegpt": sparsegpt_layer,
        "chita": None,
    }
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    print(
        "| pattern | method | perplexity | summed layer error | / SparseGPT | solve time "
        "| / SparseGPT | with calibration |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for pattern, sparsity in (("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)):
        errs, solve_t = {}, {}
        for name, solver in methods.items():
            model = build(args.width, args.layers, args.ctx)
            model.load_state_dict(state)
            layers = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
            rep = ct.prune_layerwise(
                model, calib, sparsity, pattern=pattern, layers=layers, n_tokens=None,
                progress=False, solver=solver,
            )  # fmt: skip
            err = sum(r.error for r in rep.layers)
            errs[name] = err
            solve_t[name] = rep.solve_seconds
            ppl = perplexity(model, held_b)
            label = pattern if sparsity is None else f"{sparsity:.0%}"
            ratio = err / errs["sparsegpt"] if "sparsegpt" in errs else float("nan")
            base_t = solve_t.get("sparsegpt", float("nan"))
            print(
                f"| {label} | {name} | {ppl:.3f} | {err:.4g} | {ratio:.3f} | "
                f"{rep.solve_seconds:.2f} s | {rep.solve_seconds / base_t:.1f}x | "
                f"{rep.seconds:.2f} s |"
            )
            out.write({
                "kind": "lm", "pattern": pattern, "sparsity": sparsity, "method": name,
                "perplexity": ppl, "dense_perplexity": ppl_dense, "error": err,
                "seconds": rep.seconds, "solve_seconds": rep.solve_seconds,
                "layers": [(r.name, r.error, r.seconds) for r in rep.layers],
            })  # fmt: skip
    out.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
