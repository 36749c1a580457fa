"""The prepared problem: validated once, solved many times (docs/design.md, section 6).

``Problem(A, b, ridge=..., w_bar=...)`` checks its inputs once, keeps ``A`` as a view of the
caller's array (never copied) and caches what every stage reuses: the column curvatures
``h_j = ||a_j||^2`` (the same pass that scans A for NaN/Inf), ``sigma_max(A)^2`` (power
iterations, on first use) and ``||w_bar||^2``. ``with_ridge`` derives the same problem at
another ridge sharing those caches, so a ridge path or a sweep over k pays for validation and
for the passes over A once.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._device import (
    DeviceProblem,
    device_indices,
    device_matrix,
    device_vector,
    is_device_array,
    on_stream,
    to_caller,
)
from ._interop import array_module, library_of, to_library
from ._linalg import serial_lapack
from ._validation import check_matrix, check_nonneg_float, check_support, check_vector, is_half
from .backends import get_backend

if TYPE_CHECKING:
    from ._api import IHTResult
    from ._point import Point

__all__ = ["Problem"]

# The solver forms squared gradients and curvatures: ||A||_F^2 (||b||^2 + ||A||_F^2 ||w||^2) must
# stay well inside float64's range (about 1.8e308), leaving room for sums over p entries.
_MAGNITUDE_LIMIT = 1e280
# Power iterations on A^T A for sigma_max^2 (two passes over A each); the step size uses
# 1.05 x the estimate, which a few iterations bound from below to within a few percent.
_POWER_ITERS = 4
_LIPSCHITZ_MARGIN = 1.05


@dataclass
class _Cache:
    """What does not depend on the ridge; shared by every ``with_ridge`` sibling."""

    h: Any = None  # [p] column squared norms, float64
    sigma2: float | None = None  # sigma_max(A)^2 estimate
    wbar_sq: float | None = None  # ||w_bar||^2


class RidgeFree:
    """What a problem derives once and shares with its ``with_ridge`` siblings (in ``_cache``,
    with ``sigma2`` and ``wbar_sq`` fields): sigma_max(A)^2 and ||w_bar||^2, computed by the
    subclass's ``_sigma2`` and ``_wbar_sq`` (a Problem's, or over column shards a
    ``distributed.Shard``'s), and the Lipschitz constant at its ``ridge``."""

    _cache: Any
    ridge: float

    def _sigma2(self) -> float:
        raise NotImplementedError

    def _wbar_sq(self) -> float:
        raise NotImplementedError

    @property
    def sigma2(self) -> float:
        """sigma_max(A)^2 from a few power iterations on A^T A (cached)."""
        if self._cache.sigma2 is None:
            self._cache.sigma2 = self._sigma2()
        return self._cache.sigma2

    @property
    def sigma2_known(self) -> bool:
        """Whether sigma_max^2 is cached (the planner then does not price its power iterations)."""
        return self._cache.sigma2 is not None

    @property
    def lipschitz(self) -> float:
        """Upper estimate of the gradient's Lipschitz constant: 1.05 (sigma_max^2 + ridge)."""
        return _LIPSCHITZ_MARGIN * (self.sigma2 + self.ridge)

    @property
    def wbar_sq(self) -> float:
        """||w_bar||^2 (cached)."""
        if self._cache.wbar_sq is None:
            self._cache.wbar_sq = self._wbar_sq()
        return self._cache.wbar_sq


class Problem(RidgeFree):
    """``minimise 0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2`` on one validated ``A``.

    Build it once and call :meth:`iht`, :meth:`backsolve` and :meth:`objective` as often as
    needed (many k, many supports); :meth:`with_ridge` gives the same problem at another ridge
    without validating or reading A again. :func:`chita_core.iht` and friends build one per call.

    Parameters
    ----------
    A : array, shape (n, p)
        As in :func:`chita_core.iht`: float32/float64 (on a GPU also float16/bfloat16), C or F
        order, NumPy/torch/JAX/CuPy/...; kept as a view, never copied.
    b : array, shape (n,)
    ridge : float, default 0.0
    w_bar : array, shape (p,), optional (zeros)
    backend : {"auto", "cpp", "numba", "cuda"}, default "auto"
    check_finite : bool, default True
        Scan A (in the pass that computes its column norms) and the vectors for NaN/Inf.

    Examples
    --------
    >>> import numpy as np, chita_core
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 300)); w_bar = rng.standard_normal(300)
    >>> prob = chita_core.Problem(A, A @ w_bar, w_bar=w_bar, ridge=1.0)
    >>> fits = [prob.iht(k).objective for k in (30, 60, 90)]
    >>> bool(fits[0] > fits[1] > fits[2])
    True
    >>> bool(prob.with_ridge(10.0).iht(30).objective > fits[0])
    True
    """

    def __init__(
        self,
        A: Any,
        b: Any,
        *,
        ridge: float = 0.0,
        w_bar: Any = None,
        backend: str = "auto",
        check_finite: bool = True,
        _scan: bool = True,
    ) -> None:
        self.ridge = check_nonneg_float(ridge, "ridge")
        self.check_finite = bool(check_finite)
        self._cache = _Cache()
        self.where: DeviceProblem | None = None
        if is_device_array(A):
            self.backend, self.kernels = get_backend(backend, on_device=True)
            self.A, self.where = device_matrix(A)
            self.lib = self.where.lib
            with self.stream():
                self.b = device_vector(
                    b, "b", self.A.n, self.A, length_of="rows of `A`", check_finite=check_finite
                )
                import cupy as cp

                self.w_bar = cp.zeros(self.A.p)
        else:
            self.A = check_matrix(A)
            self.lib = library_of(A)
            self.b = check_vector(
                b, "b", self.A.shape[0], self.A.dtype, length_of="rows of `A`",
                check_finite=check_finite,
            )  # fmt: skip
            self.w_bar = np.zeros(self.A.shape[1])
            self.backend, self.kernels = get_backend(backend)
        if w_bar is not None:
            with self.stream():
                self.w_bar = self.vector(w_bar, "w_bar", check_finite)
        self.xp = array_module(self.b)
        if check_finite and _scan:
            self.scan_finite()

    # ------------------------------------------------------------------ shape and placement
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.A.shape)  # type: ignore[return-value]

    @property
    def n(self) -> int:
        return int(self.A.shape[0])

    @property
    def p(self) -> int:
        return int(self.A.shape[1])

    @property
    def itemsize(self) -> int:
        return int(self.A.itemsize)

    @property
    def f_order(self) -> bool:
        """Columns contiguous: support passes read only the support's columns."""
        if self.where is not None:
            return bool(self.A.col_major)
        return bool(self.A.flags.f_contiguous)

    def stream(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which the kernels run: A's device and the caller's stream on a GPU; on
        the host, SciPy's LAPACK on one thread (``_linalg.serial_lapack``)."""
        if self.where is None:
            return serial_lapack
        return on_stream(self.A, self.where)

    # ------------------------------------------------------------------ derived problems
    def with_ridge(self, ridge: float) -> Problem:
        """The same problem at another ridge: shares A, b, w_bar and the cached passes."""
        other = copy.copy(self)
        other.ridge = check_nonneg_float(ridge, "ridge")
        return other

    # ------------------------------------------------------------------ caches
    @property
    def h(self) -> Any:
        """Column curvatures ||a_j||^2 ([p] float64; one pass over A, done once)."""
        if self._cache.h is None:
            h = self.xp.empty(self.p)
            self.kernels.column_sqnorms(self.A, h)
            self._cache.h = h
        return self._cache.h

    def _sigma2(self) -> float:
        return _power_sigma2(self)

    def _wbar_sq(self) -> float:
        return float(self.w_bar @ self.w_bar)

    # ------------------------------------------------------------------ inputs and outputs
    def vector(self, x: Any, name: str, check_finite: bool | None = None) -> Any:
        """A length-p input vector (like w_bar) checked and held like ``w_bar`` (float64)."""
        check = self.check_finite if check_finite is None else check_finite
        if self.where is not None:
            return device_vector(
                x, name, self.p, self.A, length_of="columns of `A`", check_finite=check
            )
        return check_vector(
            x, name, self.p, self.A.dtype, length_of="columns of `A`", check_finite=check
        )

    def indices(self, support: Any) -> Any:
        """Validated distinct column indices (sorted int64) in the problem's array module."""
        if self.where is None:
            return check_support(support, self.p)
        return device_indices(support, self.p)

    def output(self, x: Any, *, cast: bool = True) -> Any:
        """A result vector in the caller's library (and, if ``cast``, A's dtype; float32 for a
        16-bit A, whose storage type would round the solution)."""
        if self.where is not None:
            return to_caller(x, self.where, cast=cast)
        dtype = np.float32 if is_half(self.A.dtype) else self.A.dtype
        return to_library(x.astype(dtype) if cast else x, self.lib)

    # ------------------------------------------------------------------ evaluation
    def residual(self, idx: Any, values: Any) -> Any:
        """A[:, idx] values - b (only the idx columns of A are read in F order)."""
        r = self.xp.zeros(self.n)
        if idx.size:
            self.kernels.support_matvec(self.A, idx, self.xp.ascontiguousarray(values), r)
        r -= self.b
        return r

    def value(self, r: Any, w: Any) -> float:
        """0.5 ||r||^2 + 0.5 ridge ||w - w_bar||^2 in float64, from the residual r = A w - b."""
        f = 0.5 * float(r @ r)
        if self.ridge:
            d = w - self.w_bar
            f += 0.5 * self.ridge * float(d @ d)
        return f

    def point(
        self, support: Any, *, keep_inverse: bool = False, guess: Any = None, gram: Any = None
    ) -> Point:
        """The exact minimiser on ``support`` (sorted int64 indices) as a :class:`Point`
        (``guess``: an approximate n x n inverse to refine from; ``gram``: A_S A_S^T of this
        support, formed at another ridge; see ``Point.refit``)."""
        from ._point import Point

        return Point.refit(self, support, keep_inverse=keep_inverse, guess=guess, gram=gram)

    def check_magnitude(self, start: Any) -> None:
        """ValueError naming `A` when the problem's squares overflow float64 (entries of A near
        1e70 or more, or weights whose ridge term does); after rescaling the same w solves it."""
        xp = self.xp
        fro2 = float(self.h.sum())
        with np.errstate(over="ignore", invalid="ignore"):
            wmax = max(float(xp.abs(start).max()), float(xp.abs(self.w_bar).max()))
            bmax = float(xp.abs(self.b).max())
            # Bounds on ||g||^2, g = A^T r + ridge (w - w_bar), and on f, at points of size wmax.
            w2 = wmax * wmax * self.p
            size = fro2 * (bmax * bmax * self.n + fro2 * w2) + self.ridge * (self.ridge + 1.0) * w2
        if not (np.isfinite(fro2) and np.isfinite(size) and size < _MAGNITUDE_LIMIT):
            raise ValueError(
                f"`A` and `b` are too large in magnitude for float64 (||A||_F^2 = {fro2:.3g}, "
                f"max |b| = {bmax:.3g}, max |w_bar|, |w0| = {wmax:.3g}, ridge = {self.ridge:.3g}):"
                " the squared gradients the solver forms would overflow. Rescale them: "
                "iht(A / s, b / s, k, ridge=ridge / s**2) has the same solution w"
            )

    # ------------------------------------------------------------------ solvers
    def objective(self, w: Any) -> float:
        """``0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2`` at ``w`` (p,), in float64."""
        with self.stream():
            w64 = self.vector(w, "w")
            if self.check_finite:
                self.scan_finite()
            nz = self.xp.flatnonzero(w64).astype(np.int64)
            return self.value(self.residual(nz, w64[nz]), w64)

    def backsolve(self, support: Any) -> Any:
        """Exact minimiser with nonzeros on ``support`` only (see :func:`chita_core.backsolve`);
        a length-p vector in the library and dtype of ``A``."""
        from .stages.nspace import support_values

        with self.stream():
            idx = self.indices(support)
            if self.check_finite:
                self.scan_finite()
            w = self.xp.zeros(self.p)
            w[idx] = support_values(self, idx)[0]  # (no residual: only w is returned)
            return self.output(w)

    def iht(self, k: int, **options: Any) -> IHTResult:
        """:func:`chita_core.iht` on this problem: ``k`` and the solver options only."""
        from ._api import solve

        return solve(self, k, **options)

    def __repr__(self) -> str:
        return (
            f"Problem(n={self.n}, p={self.p}, dtype={self.A.dtype}, ridge={self.ridge:g}, "
            f"backend={self.backend!r}, library={self.lib!r})"
        )

    # ------------------------------------------------------------------ validation
    def scan_finite(self) -> None:
        """NaN/Inf in A through the column-norm pass (kept as ``h``): a non-finite entry makes
        its column's squared norm non-finite. A finite column whose square overflows is too
        large for the solver's float64 algebra: the rescaling message says what to do. (Run by
        the constructor; ``iht`` defers it until every other argument is checked.)"""
        with self.stream():
            self._check_columns()

    def _check_columns(self) -> None:
        h = self.h
        xp = self.xp
        bad = xp.flatnonzero(~xp.isfinite(h))
        if not bad.size:
            return
        j = int(bad[0])
        if self.where is not None:
            raise ValueError(
                f"`A` contains NaN or Inf (first in column {j}; with float16/bfloat16 storage, "
                "entries beyond ~1e19 also overflow the float32 sum)"
            )
        if not np.isfinite(self.A[:, j]).all():
            raise ValueError(f"`A` contains NaN or Inf (first in column {j})")
        raise ValueError(
            f"`A` is too large in magnitude for float64: column {j}'s squared norm overflows. "
            "Rescale: iht(A / s, b / s, k, ridge=ridge / s**2) has the same solution w"
        )


def _power_sigma2(prob: Problem, seed: int = 0) -> float:
    """sigma_max(A)^2 by power iteration on A^T A (two passes over A each), with scaled norms so
    that entries from 1e-300 to 1e300 neither underflow nor overflow."""
    xp = prob.xp
    every = xp.arange(prob.p, dtype=np.int64)
    Av = xp.empty(prob.n)

    def product(v: Any) -> Any:
        prob.kernels.support_matvec(prob.A, every, v, Av)
        return Av

    v = xp.asarray(np.random.default_rng(seed).standard_normal(prob.p))
    return power_iterations(prob, v, product, lambda x: scaled_norm(xp, x))


def power_iterations(
    local: Any, v: Any, product: Callable[[Any], Any], norm: Callable[[Any], float]
) -> float:
    """The power iterations of :func:`_power_sigma2` from the start ``v`` (overwritten):
    ``product(v)`` is A v (n numbers), A^T (A v) the ``gradient`` kernel on ``local``'s columns
    and ``norm`` the scaled norm of the whole vector. Over column shards (chita_core.distributed)
    ``local`` is the rank's block, v its slice, and ``product`` / ``norm`` reduce over the ranks."""
    v /= norm(v)
    zeros = local.xp.zeros(local.p)
    sigma2 = 0.0
    for _ in range(_POWER_ITERS):
        Av = product(v)
        local.kernels.gradient(local.A, Av, zeros, zeros, 0.0, v)  # v = A^T A v
        sigma2 = norm(v)
        if sigma2 == 0.0:
            break
        v /= sigma2
    return sigma2


def scaled_norm(xp: Any, v: Any) -> float:
    """||v||_2 without overflow or underflow of the squares (entries from 1e-300 to 1e300)."""
    m = float(xp.abs(v).max()) if v.size else 0.0
    if m == 0.0 or not np.isfinite(m):
        return m
    u = v / m
    return m * float(xp.sqrt(u @ u))
