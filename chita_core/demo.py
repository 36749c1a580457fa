"""``python -m chita_core.demo``: prune a small network trained on real data.

Trains a one-hidden-layer MLP (64-64-10, NumPy only) on scikit-learn's bundled digits, builds
the matrix of per-sample gradients A at the trained weights, and prunes the two weight matrices
at 70/90/95% sparsity with magnitude pruning, magnitude + exact refit (backsolve), CHITA's IHT
alone, and chita_core's default (refits, IHT on the active set, swap local search). Prints test
accuracy, objective and time.
Requires scikit-learn for the data (``pip install ".[demo]"``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import chita_core


def load_digits(seed: int = 0) -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "the demo uses scikit-learn's bundled digits: pip install scikit-learn"
        ) from exc
    X, y = _load(return_X_y=True)
    X = X / 16.0
    perm = np.random.default_rng(seed).permutation(len(y))
    X, y = X[perm], y[perm]
    n_train = 1300
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


class MLP:
    """x -> relu(x W1 + c1) W2 + c2. Only W1 and W2 are pruned; biases stay."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, rng: np.random.Generator):
        self.W1 = rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)
        self.c1 = np.zeros(n_hidden)
        self.W2 = rng.standard_normal((n_hidden, n_out)) * np.sqrt(1.0 / n_hidden)
        self.c2 = np.zeros(n_out)

    @property
    def weights(self) -> np.ndarray:
        return np.concatenate([self.W1.ravel(), self.W2.ravel()])

    def with_weights(self, w: np.ndarray) -> MLP:
        out = MLP.__new__(MLP)
        n1 = self.W1.size
        out.W1 = w[:n1].reshape(self.W1.shape)
        out.W2 = w[n1:].reshape(self.W2.shape)
        out.c1, out.c2 = self.c1, self.c2
        return out

    def _forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.maximum(X @ self.W1 + self.c1, 0.0)
        z = h @ self.W2 + self.c2
        z = z - z.max(axis=1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        return h, prob

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self._forward(X)[1].argmax(axis=1) == y).mean())

    def _backward(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
        h, prob = self._forward(X)
        dz = prob
        dz[np.arange(len(y)), y] -= 1.0  # d(cross-entropy)/dz per sample
        dh = (dz @ self.W2.T) * (h > 0)
        return h, dz, dh

    def train(self, X: np.ndarray, y: np.ndarray, epochs: int, rng: np.random.Generator) -> None:
        params = [self.W1, self.c1, self.W2, self.c2]
        m = [np.zeros_like(q) for q in params]
        v = [np.zeros_like(q) for q in params]
        lr, b1, b2, t = 3e-3, 0.9, 0.999, 0
        for _ in range(epochs):
            for batch in np.array_split(rng.permutation(len(y)), len(y) // 64):
                h, dz, dh = self._backward(X[batch], y[batch])
                grads = [X[batch].T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
                t += 1
                for q, g, mq, vq in zip(params, grads, m, v, strict=True):
                    g = g / len(batch) + (1e-4 * q if q.ndim == 2 else 0.0)
                    mq *= b1
                    mq += (1 - b1) * g
                    vq *= b2
                    vq += (1 - b2) * g * g
                    q -= lr * (mq / (1 - b1**t)) / (np.sqrt(vq / (1 - b2**t)) + 1e-8)

    def per_sample_gradients(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """A[i] = gradient of sample i's loss w.r.t. (W1, W2), written straight into an
        F-ordered (n, p) matrix, the layout the solver reads fastest."""
        h, dz, dh = self._backward(X, y)
        n, n1 = len(y), self.W1.size
        A = np.empty((n, n1 + self.W2.size), order="F")
        A[:, :n1] = (X[:, :, None] * dh[:, None, :]).reshape(n, -1)
        A[:, n1:] = (h[:, :, None] * dz[:, None, :]).reshape(n, -1)
        return A


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-grads", type=int, default=1000, help="samples in the gradient matrix")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ridge-scale",
        type=float,
        default=0.1,
        help="ridge as a multiple of the mean squared column norm of A (curvature per weight)",
    )
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    Xtr, ytr, Xte, yte = load_digits(args.seed)
    t0 = time.perf_counter()
    model = MLP(Xtr.shape[1], args.hidden, 10, rng)
    model.train(Xtr, ytr, args.epochs, rng)
    print(
        f"digits MLP 64-{args.hidden}-10 trained in {time.perf_counter() - t0:.1f}s: "
        f"test accuracy {model.accuracy(Xte, yte):.4f}"
    )

    n = min(args.n_grads, len(ytr))
    A = model.per_sample_gradients(Xtr[:n], ytr[:n])
    w_bar = model.weights
    b = A @ w_bar
    # Ridge relative to the average curvature of one weight (CHITA's l2 * n): it keeps the
    # pruned weights where the quadratic model of the loss is still trustworthy.
    ridge = args.ridge_scale * float(np.einsum("ij,ij->", A, A)) / A.shape[1]
    p = A.shape[1]
    print(
        f"gradient matrix A: n={n}, p={p} (F order), ridge={ridge:.3g}, backend: "
        f"{chita_core.iht(A, b, 1, max_iter=0).backend}\n"
    )

    header = f"{'sparsity':>8}  {'method':<26}{'test acc':>9}{'objective':>12}{'time (s)':>10}"
    print(header)
    print("-" * len(header))
    for sparsity in (0.7, 0.9, 0.95):
        k = round((1.0 - sparsity) * p)
        rows = []

        t = time.perf_counter()
        support = np.sort(np.argpartition(-np.abs(w_bar), k - 1)[:k])
        w_mag = np.zeros(p)
        w_mag[support] = w_bar[support]
        rows.append(("magnitude", w_mag, time.perf_counter() - t))

        t = time.perf_counter()
        w_mb = chita_core.backsolve(A, b, support, ridge=ridge, w_bar=w_bar)
        rows.append(("magnitude + backsolve", w_mb, time.perf_counter() - t))

        res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar, refine=False, swaps=False)
        rows.append((f"chita IHT only ({res.n_iter} it)", res.w, res.elapsed))

        res = chita_core.iht(A, b, k, ridge=ridge, w_bar=w_bar)
        rows.append(("chita_core default", res.w, res.elapsed))

        for name, w, seconds in rows:
            f = chita_core.objective(A, b, w, ridge=ridge, w_bar=w_bar)
            acc = model.with_weights(w).accuracy(Xte, yte)
            print(f"{sparsity:>8.0%}  {name:<26}{acc:>9.4f}{f:>12.4g}{seconds:>10.3f}")
        print()


if __name__ == "__main__":
    main()
