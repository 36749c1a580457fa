"""The kernel contract every backend implements (docs/design.md, section 7).

A backend is a module (``backends.cpp``, ``backends.numba_kernels``, ``backends.cuda_kernels``)
whose functions satisfy :class:`Kernels`; ``tests/test_backend_contract.py`` checks that each
one has every op with these parameter names, and the kernel tests run every backend against one
float64 reference. The solver calls only these ops, never a backend-specific one.

Conventions (shapes beside each argument): ``A`` is the validated ``(n, p)`` matrix (a NumPy
view of the caller's array on the host, a ``DeviceMatrix`` on a GPU), float32 or float64 (on a
GPU also bfloat16/float16), C or F order, never copied. Vectors are 1-D contiguous float64 in
the backend's array module (NumPy or CuPy); index arrays are sorted, distinct int64. ``out``
arguments are written, never read.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["OPS", "Kernels"]

Array = Any  # a NumPy or CuPy array of the backend's array module


@runtime_checkable
class Kernels(Protocol):
    """Every op the solver calls. Passes over A are the backend's compiled kernels; the dense
    algebra on gathered columns (``gather_columns``, ``support_gram``) goes through BLAS:
    NumPy's on the host, cuBLAS through CuPy on a GPU."""

    def column_sqnorms(self, A: Any, out: Array) -> None:
        """out[j] = ||A[:, j]||^2   # out [p]; one pass over A"""

    def support_matvec(self, A: Any, idx: Array, x: Array, out: Array) -> None:
        """out = A[:, idx] @ x   # idx [m], x [m], out [n]"""

    def support_rmatvec(self, A: Any, idx: Array, y: Array, out: Array) -> None:
        """out = A[:, idx].T @ y   # idx [m], y [n], out [m]"""

    def gradient(self, A: Any, r: Array, w: Array, w_bar: Array, ridge: float, out: Array) -> None:
        """out = A^T r + ridge (w - w_bar)   # r [n], w [p], w_bar [p], out [p]"""

    def topk(self, v: Array, k: int, out: Array) -> None:
        """out = sorted indices of the k largest |v| (ties to the lower index); O(p) select"""

    def chita_step(
        self,
        A: Any,
        b: Array,
        w_bar: Array,
        ridge: float,
        g: Array,
        w: Array,
        r: Array,
        support: Array,
        f: float,
        cols: Array | None = None,
    ) -> tuple[float, float, int, bool]:
        """One CHITA line-search step, in place (contract: ``chita_core/_core.pyi``)."""

    def gather_columns(self, A: Any, idx: Array) -> Array:
        """A[:, idx] as a float64 [n, m] array: a small workspace, never a copy of A"""

    def support_gram(self, A: Any, idx: Array, out: Array) -> None:
        """out = A[:, idx] @ A[:, idx].T   # out [n, n] float64, in column panels through BLAS"""

    def swap_scores(
        self, G: Array, q: Array, s0: float, wv: Array, jn: Array, io: Array, lam: float
    ) -> Array:
        """[len(io), len(jn)] change of f for each swap (stages/swaps.py has the maths)"""

    def pool_eliminate(self, G: Array, x: Array, count: int) -> Array:
        """int64 [count]: greedy OBS's removals within a pool, in order (G [c, c], x [c] left
        unchanged; backends/host.py has the maths); a stack G [batch, c, c], x [batch, c]
        gives [batch, count]"""


#: The op names of the contract, in declaration order.
OPS = tuple(
    name
    for name in Kernels.__dict__
    if not name.startswith("_") and callable(Kernels.__dict__[name])
)
