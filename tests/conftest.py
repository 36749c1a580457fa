"""Shared fixtures: backends, dtypes/layouts, seeded tie-free data, tolerances by dtype."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import chita_core
from chita_core.backends import BACKENDS, DEVICE_BACKENDS, available_backends, get_backend
from chita_core.backends.protocol import OPS, Kernels


def pytest_report_header(config):
    where = os.path.dirname(chita_core.__file__)
    lines = [f"chita_core {chita_core.__version__} imported from {where}"]
    for name, reason in available_backends().items():
        lines.append(f"  backend {name}: {'available' if reason is None else reason}")
    return lines


# ----------------------------------------------------------------------------------------------
# Backends, dtypes, layouts
# ----------------------------------------------------------------------------------------------


#: Every backend whose kernels the kernel tests run: the host ones, then the CUDA one.
KERNEL_BACKENDS = (*BACKENDS, *DEVICE_BACKENDS)


def _skip_unavailable(name: str) -> None:
    reason = available_backends()[name]
    if reason is not None:
        pytest.skip(f"backend {name!r} unavailable: {reason}")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every host backend by name (solver tests pass host arrays); an unavailable one is skipped
    with the registry's reason."""
    _skip_unavailable(request.param)
    return request.param


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request) -> str:
    """Every backend by name, CUDA included, for the kernel tests; an unavailable one is skipped
    with the registry's reason."""
    _skip_unavailable(request.param)
    return request.param


@pytest.fixture
def kernels(kernel_backend):
    """The kernels of ``kernel_backend`` behind host arrays: the backend module itself for a host
    backend (``chita_core.backends.cpp``, ``chita_core.backends.numba_kernels``); for CUDA, its
    module wrapped in :class:`DeviceKernels`, which moves NumPy arguments to the GPU and results
    and written arguments back, so the same test bodies run on every backend."""
    module = get_backend(kernel_backend, on_device=kernel_backend in DEVICE_BACKENDS)[1]
    return DeviceKernels(module) if kernel_backend in DEVICE_BACKENDS else module


def on_device(kernels: Any) -> bool:
    """Whether the ``kernels`` fixture is a device backend (behind :class:`DeviceKernels`)."""
    return isinstance(kernels, DeviceKernels)


def skip_on_device(kernels: Any, reason: str) -> None:
    """Skips a kernel test that cannot apply to a device backend (``reason`` says why)."""
    if on_device(kernels):
        pytest.skip(f"not for the CUDA backend: {reason}")


# Arguments an op writes besides `out` (in/out state): copied back to the host after the call.
_WRITTEN = {"chita_step": ("w", "r", "support")}


class DeviceKernels:
    """A device backend's ops with host arrays in and out, for the kernel tests.

    Each op of the contract (``backends/protocol.py``) is called with its NumPy arguments moved
    to the GPU: ``A`` becomes a CuPy array of the same dtype and layout described by a
    :class:`~chita_core._device.DeviceMatrix` (``_device.device_matrix``, as the solver builds
    it), every other array a CuPy copy of the same dtype; scalars, ``None`` and the rest pass
    through unchanged, so the backend's own checks (dtype, length, layout of ``A``) still see
    what the test passed. After a call that returns, the arguments the op writes (``out``; for
    ``chita_step`` also ``w``, ``r``, ``support``) are copied back into the caller's arrays, the
    others are checked to be unchanged on the device (the kernels never write their inputs), and
    CuPy results come back as NumPy arrays. What a device copy cannot carry (host strides of a
    vector, a read-only flag) the tests that need it skip with :func:`skip_on_device`."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.__name__ = module.__name__

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._module, name)
        if name not in OPS:
            return fn  # num_threads, device_count, ...
        try:
            signature = inspect.signature(fn)
        except ValueError:  # a compiled function: bind by the contract's parameters
            contract = inspect.signature(getattr(Kernels, name))
            signature = contract.replace(parameters=list(contract.parameters.values())[1:])
        written = {"out", *_WRITTEN.get(name, ())}

        def call(*args: Any, **kwargs: Any) -> Any:
            import cupy as cp

            bound = signature.bind(*args, **kwargs)
            host = dict(bound.arguments)
            device, copies = {}, {}
            for key, value in host.items():
                if isinstance(value, np.ndarray):
                    copies[key] = _device_array(value) if key == "A" else cp.asarray(value)
                    device[key] = _device_matrix(copies[key]) if key == "A" else copies[key]
                else:
                    device[key] = value
            result = fn(**device)
            for key, dev in copies.items():
                if key in written:
                    host[key][...] = cp.asnumpy(dev)
                else:
                    np.testing.assert_array_equal(
                        cp.asnumpy(dev), host[key], err_msg=f"{name} changed its input `{key}`"
                    )
            return _to_host(result)

        call.__name__ = name
        call.__signature__ = signature
        return call


def _device_array(A: np.ndarray) -> Any:
    """A on the GPU with A's dtype and layout: C or F order as A has it; a strided A keeps its
    strides (on an uninitialised span of device memory holding the same values), so that the
    backend refuses it exactly as it would a strided device array."""
    import cupy as cp

    if A.flags.c_contiguous:
        return cp.asarray(A)
    if A.flags.f_contiguous:
        return cp.asarray(np.ascontiguousarray(A.T)).T  # F order on the device
    if A.ndim == 0 or min(A.strides) <= 0:
        raise ValueError(f"`A` must be C- or F-contiguous, got strides {A.strides}")
    span = sum((d - 1) * s for d, s in zip(A.shape, A.strides, strict=True)) + A.itemsize
    buf = cp.empty(span, dtype=cp.uint8)
    view = cp.ndarray(A.shape, dtype=A.dtype, memptr=buf.data, strides=A.strides)
    view[...] = cp.asarray(np.ascontiguousarray(A))
    return view


def _device_matrix(dev: Any) -> Any:
    from chita_core._device import device_matrix

    return device_matrix(dev)[0]


def _to_host(result: Any) -> Any:
    import cupy as cp

    if isinstance(result, cp.ndarray):
        return cp.asnumpy(result)
    if isinstance(result, tuple):
        return tuple(_to_host(x) for x in result)
    return result


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
