"""A NumPy MLP on scikit-learn's digits and its exact per-sample gradients, for the benchmarks.

No torch needed: the quality and OBS benchmarks build real gradient matrices from it (A[i] =
gradient of sample i's cross-entropy w.r.t. the two weight matrices, F order). The torch demo
(chita_core.demo) is the user-facing version of the same network.
"""

from __future__ import annotations

import itertools

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
    """x -> relu(x W1 + c1) ... W_L + c_L, one or more hidden layers. Only the weight matrices
    are pruned; biases stay. ``n_hidden`` is one width or a tuple of widths."""

    def __init__(
        self, n_in: int, n_hidden: int | tuple[int, ...], n_out: int, rng: np.random.Generator
    ):
        widths = [n_in, *((n_hidden,) if isinstance(n_hidden, int) else n_hidden), n_out]
        self.Ws, self.cs = [], []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            gain = 2.0 if i < len(widths) - 2 else 1.0  # He init before a ReLU
            self.Ws.append(rng.standard_normal((a, b)) * np.sqrt(gain / a))
            self.cs.append(np.zeros(b))

    @property
    def W1(self) -> np.ndarray:
        return self.Ws[0]

    @property
    def W2(self) -> np.ndarray:
        return self.Ws[1]

    @property
    def weights(self) -> np.ndarray:
        return np.concatenate([W.ravel() for W in self.Ws])

    def with_weights(self, w: np.ndarray) -> MLP:
        out = MLP.__new__(MLP)
        out.Ws, off = [], 0
        for W in self.Ws:
            out.Ws.append(w[off : off + W.size].reshape(W.shape))
            off += W.size
        out.cs = self.cs
        return out

    def _forward(self, X: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        hs = [X]
        for W, c in zip(self.Ws[:-1], self.cs[:-1], strict=True):
            hs.append(np.maximum(hs[-1] @ W + c, 0.0))
        z = hs[-1] @ self.Ws[-1] + self.cs[-1]
        z = z - z.max(axis=1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        return hs, prob

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self._forward(X)[1].argmax(axis=1) == y).mean())

    def _backward(self, X: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list]:
        """Layer inputs and the loss gradients w.r.t. each layer's pre-activation, per sample."""
        hs, prob = self._forward(X)
        delta = prob
        delta[np.arange(len(y)), y] -= 1.0  # d(cross-entropy)/dz per sample
        deltas = [delta]
        for W, h in zip(self.Ws[:0:-1], hs[:0:-1], strict=True):
            deltas.append((deltas[-1] @ W.T) * (h > 0))
        return hs, deltas[::-1]

    def train(self, X: np.ndarray, y: np.ndarray, epochs: int, rng: np.random.Generator) -> None:
        params = [q for pair in zip(self.Ws, self.cs, strict=True) for q in pair]
        m = [np.zeros_like(q) for q in params]
        v = [np.zeros_like(q) for q in params]
        lr, b1, b2, t = 3e-3, 0.9, 0.999, 0
        for _ in range(epochs):
            for batch in np.array_split(rng.permutation(len(y)), len(y) // 64):
                hs, deltas = self._backward(X[batch], y[batch])
                grads = [g for h, d in zip(hs, deltas, strict=True) for g in (h.T @ d, d.sum(0))]
                t += 1
                for q, g, mq, vq in zip(params, grads, m, v, strict=True):
                    g = g / len(batch) + (1e-4 * q if q.ndim == 2 else 0.0)
                    mq *= b1
                    mq += (1 - b1) * g
                    vq *= b2
                    vq += (1 - b2) * g * g
                    q -= lr * (mq / (1 - b1**t)) / (np.sqrt(vq / (1 - b2**t)) + 1e-8)

    def per_sample_gradients(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """A[i] = gradient of sample i's loss w.r.t. (W1, ..., W_L), written straight into an
        F-ordered (n, p) matrix, the layout the solver reads fastest."""
        hs, deltas = self._backward(X, y)
        n = len(y)
        A = np.empty((n, sum(W.size for W in self.Ws)), order="F")
        off = 0
        for W, h, d in zip(self.Ws, hs, deltas, strict=True):
            A[:, off : off + W.size] = (h[:, :, None] * d[:, None, :]).reshape(n, -1)
            off += W.size
        return A
