"""``chita-core-demo``: prune a small network trained on real data, with torch.

Trains an MLP (64-64-10) on scikit-learn's bundled digits, then prunes its two weight matrices
at 70/90/95% sparsity through :func:`chita_core.torch.prune` with

- magnitude pruning,
- magnitude + backsolve (the same support, weights refit exactly on the quadratic model),
- chita_core in one stage,
- chita_core in several stages (CHITA++: gradients recomputed at the pruned weights),

and prints each one's test accuracy (no fine-tuning), loss on held-out training samples and time.
The gradients come from the first ``--n-grads`` training images; the rest of the training set
chooses the ridge (and, for chita_core, whether its solution or magnitude + backsolve's is kept)
by its loss; "kept" names magnitude + backsolve when it won that choice.
Requires torch and scikit-learn: ``pip install ".[demo]"``, which also installs the
``chita-core-demo`` script (``main``). ``python -m chita_core.demo`` works too, except in the
repository root of a regular install, where it would import the source tree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _imports():
    try:
        import torch
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            f"the demo needs torch and scikit-learn: pip install '.[demo]' ({exc})"
        ) from exc
    return torch, load_digits


def load_digits(seed: int = 0):
    """(X_train, y_train, X_test, y_test) as torch tensors: 1300 training, 497 test images."""
    torch, load = _imports()
    X, y = load(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(y))
    X = torch.tensor(X[perm] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[perm])
    return X[:1300], y[:1300], X[1300:], y[1300:]


def make_model(hidden: int):
    torch, _ = _imports()
    nn = torch.nn
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(model, X, y, epochs: int, seed: int) -> None:
    torch, _ = _imports()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            loss(model(X[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def accuracy(model, X, y) -> float:
    torch, _ = _imports()
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-grads", type=int, default=1000, help="samples in the gradient matrix")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--stages", type=int, default=3, help="stages of the multi-stage run")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.7, 0.9, 0.95])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)

    torch, _ = _imports()
    import chita_core
    import chita_core.torch as ct

    # A 64-64-10 MLP is too small for intra-op threads: one thread trains it several times
    # faster, and leaves the cores to the solver's OpenMP kernels.
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    Xtr, ytr, Xte, yte = load_digits(args.seed)
    model = make_model(args.hidden)
    t0 = time.perf_counter()
    train(model, Xtr, ytr, args.epochs, args.seed)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    print(
        f"digits MLP 64-{args.hidden}-10 trained in {time.perf_counter() - t0:.1f} s: "
        f"test accuracy {accuracy(model, Xte, yte):.4f}; pruning its "
        f"{sum(m.weight.numel() for m in model if hasattr(m, 'weight')):,} weights with "
        f"n_grads={args.n_grads} (backends: "
        f"{', '.join(b for b, r in chita_core.available_backends().items() if r is None)})\n"
    )
    if not 1 <= args.n_grads < len(ytr):
        parser.error(f"--n-grads must be in [1, {len(ytr) - 1}] (the rest selects the ridge)")
    batches = list(zip(Xtr[: args.n_grads].split(100), ytr[: args.n_grads].split(100), strict=True))
    val = [(Xtr[args.n_grads :], ytr[args.n_grads :])]
    methods = [
        ("magnitude", {"method": "magnitude"}),
        ("magnitude + backsolve", {"method": "magnitude+backsolve"}),
        ("chita_core, 1 stage", {}),
        (
            f"chita_core, {args.stages} stage{'s' if args.stages > 1 else ''}",
            {"stages": args.stages},
        ),
    ]
    header = f"{'sparsity':>8}  {'method':<24}{'test acc':>9}{'val loss':>10}{'time (s)':>10}  kept"
    print(header)
    print("-" * len(header))
    for sparsity in args.sparsities:
        for label, options in methods:
            pruned = make_model(args.hidden)
            pruned.load_state_dict(dense)
            t = time.perf_counter()
            report = ct.prune(
                pruned,
                torch.nn.CrossEntropyLoss(),
                batches,
                sparsity,
                n_grads=args.n_grads,
                val_data=val,
                progress=args.progress,
                **options,
            )
            seconds = time.perf_counter() - t
            last = report.stages[-1]
            kept = "" if last.chosen == report.method else last.chosen
            line = (
                f"{sparsity:>8.0%}  {label:<24}{accuracy(pruned, Xte, yte):>9.4f}"
                f"{last.loss:>10.4f}{seconds:>10.2f}  {kept}"
            )
            print(line.rstrip())
        print()


if __name__ == "__main__":
    main()
