"""Shared fixtures: backends, dtypes/layouts, seeded tie-free data, tolerances by dtype."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

import chita_core
from chita_core._backends import BACKENDS, available_backends, get_backend


def pytest_report_header(config):
    where = os.path.dirname(chita_core.__file__)
    lines = [f"chita_core {chita_core.__version__} imported from {where}"]
    for name, reason in available_backends().items():
        lines.append(f"  backend {name}: {'available' if reason is None else reason}")
    return lines


# ----------------------------------------------------------------------------------------------
# Backends, dtypes, layouts
# ----------------------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every backend by name; an unavailable one is skipped with the registry's reason."""
    reason = available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


@pytest.fixture
def kernels(backend):
    """The kernel module of ``backend`` (``chita_core._core`` or ``chita_core._numba``)."""
    return get_backend(backend)[1]


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def dtype(request) -> np.dtype:
    return np.dtype(request.param)


@pytest.fixture(params=["C", "F"])
def order(request) -> str:
    return request.param


# ----------------------------------------------------------------------------------------------
# Tolerances, one table keyed by the dtype of A
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tol:
    """Relative tolerances for one dtype of ``A``.

    The reference always runs on ``A`` upcast to float64, i.e. on exactly the values the kernels
    read, and the kernels accumulate in float64 for both dtypes: kernel results differ from the
    reference only by float64 summation order. Quantities recomputed from outputs stored in the
    dtype of ``A`` (``IHTResult.w``, ``backsolve``'s ``w``) also carry that dtype's rounding.
    """

    kernel: float  # mat-vecs, gradient, objective: float64 summation order only
    solve: float  # backsolve / line-search values: rounding times the conditioning
    output: float  # values read back from an output array in the dtype of A

    def close(self, actual, desired, *, kind: str = "kernel", scale=None, err_msg: str = ""):
        """assert_allclose with rtol from the table and atol = rtol * scale (default: the
        largest |desired|, so entries that cancel to ~0 are judged against the whole vector)."""
        rtol = getattr(self, kind)
        desired = np.asarray(desired, dtype=np.float64)
        if scale is None:
            scale = float(np.max(np.abs(desired))) if desired.size else 0.0
        np.testing.assert_allclose(
            np.asarray(actual, dtype=np.float64),
            desired,
            rtol=rtol,
            atol=rtol * max(scale, 1e-300),
            err_msg=err_msg,
        )


TOLERANCES = {
    np.dtype(np.float64): Tol(kernel=1e-12, solve=1e-8, output=1e-12),
    np.dtype(np.float32): Tol(kernel=1e-12, solve=1e-8, output=2e-6),
}


@pytest.fixture
def tol(dtype) -> Tol:
    return TOLERANCES[np.dtype(dtype)]


@pytest.fixture
def tolerances() -> dict:
    return TOLERANCES


# ----------------------------------------------------------------------------------------------
# Seeded, tie-free data
# ----------------------------------------------------------------------------------------------


def tie_free_vector(rng: np.random.Generator, p: int, dtype=np.float64, low=0.5, high=2.0):
    """Random signs times a permutation of p distinct magnitudes in [low, high]: no two |v_i|
    are equal, in float32 too (spacing (high - low) / p >> float32 resolution for p <= 10^5)."""
    mags = np.linspace(low, high, p)[rng.permutation(p)]
    signs = rng.choice([-1.0, 1.0], size=p)
    v = (signs * mags).astype(dtype)
    assert np.unique(np.abs(v)).size == p
    return v


def layout(A: np.ndarray, order: str) -> np.ndarray:
    return np.ascontiguousarray(A) if order == "C" else np.asfortranarray(A)


@dataclass
class Problem:
    A: np.ndarray  # [n, p] in the requested dtype and order
    b: np.ndarray  # [n] dtype of A
    w_bar: np.ndarray | None  # [p] dtype of A, or None
    w_true: np.ndarray | None  # [p] planted k-sparse vector (float64), when planted
    support_true: np.ndarray | None  # [k] sorted planted support

    @property
    def A64(self):
        return self.A.astype(np.float64)

    @property
    def b64(self):
        return self.b.astype(np.float64)

    @property
    def w_bar64(self):
        return None if self.w_bar is None else self.w_bar.astype(np.float64)


def _make_problem(
    n: int,
    p: int,
    *,
    dtype=np.float64,
    order: str = "C",
    seed: int = 0,
    k: int | None = None,
    noise: float = 0.0,
    pruning: bool = False,
) -> Problem:
    """A ~ N(0, 1/n) (columns of about unit norm).

    - ``k`` given: b = A w_true + noise with w_true k-sparse, |w_true| in [1, 2] (planted).
    - ``pruning``: w_bar dense and tie-free, b = A @ w_bar (the OBS setting).
    - otherwise: b ~ N(0, 1).
    """
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((n, p)) / np.sqrt(n)).astype(dtype)
    A = layout(A, order)
    A64 = A.astype(np.float64)
    w_bar = w_true = support_true = None
    if k is not None:
        support_true = np.sort(rng.choice(p, size=k, replace=False)).astype(np.int64)
        w_true = np.zeros(p)
        w_true[support_true] = rng.choice([-1.0, 1.0], size=k) * rng.uniform(1.0, 2.0, size=k)
        b = A64 @ w_true + noise * rng.standard_normal(n)
    elif pruning:
        w_bar = tie_free_vector(rng, p, dtype)
        b = A64 @ w_bar.astype(np.float64)
    else:
        b = rng.standard_normal(n)
    return Problem(A, b.astype(dtype), w_bar, w_true, support_true)


@pytest.fixture
def make_problem():
    """Factory: ``make_problem(n, p, dtype=, order=, seed=, k=, noise=, pruning=)``."""
    return _make_problem


@pytest.fixture
def make_vector():
    """Factory: ``make_vector(p, seed=0)`` -> tie-free float64 vector."""

    def make(p: int, seed: int = 0, dtype=np.float64):
        return tie_free_vector(np.random.default_rng(seed), p, dtype)

    return make
