"""A NumPy MLP on scikit-learn's digits and its exact per-sample gradients, for the benchmarks.

No torch needed: the quality and OBS benchmarks build real gradient matrices from it (A[i] =
gradient of sample i's cross-entropy w.r.t. the two weight matrices, F order). The torch demo
(chita_core.demo) is the user-facing version of the same network.
"""

from __future__ import annotations

import numpy as np


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
