"""Array interchange: torch and JAX (DLPack), __array_interface__, the buffer protocol. A is
never copied (docs/design.md, section 8.1): the kernels must see the caller's memory."""

from __future__ import annotations

import types

import numpy as np
import pytest

import chita_core
from chita_core import _validation
from chita_core import backends as _backends
from chita_core._interop import as_host_array, library_of, to_library
from chita_core._pipeline import measure_rates


def _ptr(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


class _RecordingKernels:
    """Wraps a backend module; records the data pointer and layout of every `A` it receives."""

    def __init__(self, module):
        self._module = module
        self.seen: list[tuple[str, int, bool, bool]] = []

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not callable(fn) or name in (
            "num_threads",
            "topk",
            "swap_scores",
            "pool_eliminate",
        ):  # no A
            return fn

        def wrapper(A, *args, **kwargs):
            self.seen.append((name, _ptr(A), A.flags.c_contiguous, A.flags.f_contiguous))
            return fn(A, *args, **kwargs)

        return wrapper


@pytest.fixture
def recording(monkeypatch, backend):
    """Routes `backend` through a recorder; returns the recorder."""
    rec = _RecordingKernels(_backends.get_backend(backend)[1])
    # The planner's rates are measured once per process on a matrix of their own: measure
    # them before recording, so that every kernel call recorded reads the caller's A.
    measure_rates(chita_core.Problem(np.ones((2, 2)), np.ones(2), backend=backend))
    chita_core.available_backends()
    monkeypatch.setitem(_backends._probes, backend, _backends._Probe(rec, None))
    return rec


def _run_all(A, b, backend, k=3):
    """iht, backsolve and objective on (A, b); returns (iht result, backsolve w, objective)."""
    res = chita_core.iht(A, b, k, backend=backend, max_iter=20)
    w = chita_core.backsolve(A, b, [0, 2, 5], backend=backend)
    f = chita_core.objective(A, b, res.w, backend=backend)
    return res, w, f


def _np_problem(n=30, p=60, dtype=np.float64, order="C", seed=0):
    rng = np.random.default_rng(seed)
    A = np.array((rng.standard_normal((n, p)) / np.sqrt(n)).astype(dtype), order=order)
    return A, rng.standard_normal(n).astype(dtype)


# ----------------------------------------------------------------------------------------------
# NumPy
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
def test_numpy_A_not_copied(order, dtype):
    A, _ = _np_problem(order=order, dtype=dtype)
    view = as_host_array(A, "A")
    assert view is A
    checked = _validation.check_matrix(A)
    assert _ptr(checked) == _ptr(A)
    assert checked.flags.f_contiguous == (order == "F")


@pytest.mark.parametrize("order", ["C", "F"])
def test_kernels_see_callers_numpy_memory(recording, backend, order, dtype):
    A, b = _np_problem(order=order, dtype=dtype)
    _run_all(A, b, backend)
    assert recording.seen, "no kernel was called"
    assert {ptr for _, ptr, _, _ in recording.seen} == {_ptr(A)}
    assert all((f if order == "F" else c) for _, _, c, f in recording.seen)


@pytest.mark.parametrize("order", ["C", "F"])
def test_memmap_A_not_copied(recording, backend, order, tmp_path):
    # A gradient matrix too large for RAM would come as a memory map.
    A_np, b = _np_problem(order=order, seed=7)
    A = np.memmap(tmp_path / "A.bin", dtype=A_np.dtype, mode="w+", shape=A_np.shape, order=order)
    A[:] = A_np
    A.flush()
    res, _, _ = _run_all(A, b, backend)
    assert {ptr for _, ptr, _, _ in recording.seen} == {_ptr(A)}
    assert type(res.w) is np.ndarray
    np.testing.assert_array_equal(res.w, chita_core.iht(A_np, b, 3, backend=backend, max_iter=20).w)
    del A


# ----------------------------------------------------------------------------------------------
# __array_interface__ and the buffer protocol
# ----------------------------------------------------------------------------------------------


class OnlyArrayInterface:
    """Exposes an array through __array_interface__ only (no __array__, no __dlpack__)."""

    def __init__(self, arr):
        self._arr = arr  # keeps the memory alive

    @property
    def __array_interface__(self):
        return self._arr.__array_interface__


@pytest.mark.parametrize("order", ["C", "F"])
def test_array_interface_object(recording, backend, order):
    A, b = _np_problem(order=order, seed=1)
    wrapped = OnlyArrayInterface(A)
    assert not hasattr(wrapped, "__array__") and not hasattr(wrapped, "__dlpack__")
    view = as_host_array(wrapped, "A")
    assert _ptr(view) == _ptr(A) and view.shape == A.shape
    res, w, f = _run_all(wrapped, OnlyArrayInterface(b), backend)
    assert {ptr for _, ptr, _, _ in recording.seen} == {_ptr(A)}
    assert isinstance(res.w, np.ndarray) and isinstance(w, np.ndarray)
    expected = chita_core.iht(A, b, 3, backend=backend, max_iter=20)
    np.testing.assert_array_equal(res.w, expected.w)
    assert f == chita_core.objective(A, b, expected.w, backend=backend)


def test_buffer_protocol_memoryview(recording, backend):
    A, b = _np_problem(seed=2)
    res, _, _ = _run_all(memoryview(A), memoryview(b), backend)
    assert {ptr for _, ptr, _, _ in recording.seen} == {_ptr(A)}
    np.testing.assert_array_equal(res.w, chita_core.iht(A, b, 3, backend=backend, max_iter=20).w)


def test_cuda_array_interface_rejected():
    class FakeCuda:
        @property
        def __cuda_array_interface__(self):
            return {"shape": (3, 4), "typestr": "<f4", "data": (0, False), "version": 3}

    # Without a usable CUDA backend (no GPU here, or no CuPy), device arrays are refused with
    # the reason, never copied to the host behind the caller's back.
    if chita_core.available_backends()["cuda"] is None:
        pytest.skip("a CUDA backend is usable here: the refusal path does not apply")
    with pytest.raises(chita_core.BackendUnavailableError, match="`A` lives on a CUDA device"):
        chita_core.iht(FakeCuda(), np.zeros(3, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="backend 'cpp' runs on the host"):
        chita_core.iht(FakeCuda(), np.zeros(3, dtype=np.float32), 1, backend="cpp")


def test_library_of_and_to_library_numpy():
    a = np.zeros(3)
    assert library_of(a) == "numpy"
    assert to_library(a, "numpy") is a
    assert to_library(a, "somelib") is a


# ----------------------------------------------------------------------------------------------
# torch (CPU, DLPack)
# ----------------------------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")


_TORCH_DTYPES = {np.dtype(np.float64): "float64", np.dtype(np.float32): "float32"}


@pytest.mark.parametrize("layout", ["C", "F-transposed", "F-t-contiguous-t"])
def test_torch_in_torch_out(recording, backend, dtype, layout):
    torch = _torch()
    tdtype = getattr(torch, _TORCH_DTYPES[dtype])
    gen = torch.Generator().manual_seed(3)
    n, p = 30, 60
    if layout == "C":
        A = torch.randn(n, p, generator=gen, dtype=tdtype)
    elif layout == "F-transposed":
        A = torch.randn(p, n, generator=gen, dtype=tdtype).t()
    else:
        A = torch.randn(n, p, generator=gen, dtype=tdtype).t().contiguous().t()
    b = torch.randn(n, generator=gen, dtype=tdtype)
    view = as_host_array(A, "A")
    assert _ptr(view) == A.data_ptr(), "torch tensor was copied"
    assert view.flags.f_contiguous == (layout != "C")

    res, w, f = _run_all(A, b, backend)
    assert {ptr for _, ptr, _, _ in recording.seen} == {A.data_ptr()}
    assert isinstance(res.w, torch.Tensor) and res.w.dtype == tdtype and res.w.shape == (p,)
    assert isinstance(res.support, torch.Tensor) and res.support.dtype == torch.int64
    assert isinstance(w, torch.Tensor) and w.dtype == tdtype
    assert isinstance(f, float)
    # Same answer as the NumPy copy of the same data.
    A_np, b_np = A.numpy().copy(order="K"), b.numpy().copy()
    expected = chita_core.iht(A_np, b_np, 3, backend=backend, max_iter=20)
    np.testing.assert_array_equal(res.w.numpy(), expected.w)
    np.testing.assert_array_equal(res.support.numpy(), expected.support)
    assert res.history == expected.history


def test_torch_requires_grad(recording, backend):
    torch = _torch()
    A = torch.randn(20, 40, dtype=torch.float64, requires_grad=True)
    b = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert _ptr(as_host_array(A, "A")) == A.data_ptr()
    res, w, _ = _run_all(A, b, backend)
    assert {ptr for _, ptr, _, _ in recording.seen} == {A.data_ptr()}
    assert isinstance(res.w, torch.Tensor) and not res.w.requires_grad
    assert isinstance(w, torch.Tensor) and not w.requires_grad
    assert A.grad is None and A.requires_grad  # the caller's tensor is untouched


def test_torch_w_bar_w0_and_support_tensors(backend):
    torch = _torch()
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(25, 50, generator=gen, dtype=torch.float64)
    w_bar = torch.randn(50, generator=gen, dtype=torch.float64)
    b = A @ w_bar
    res = chita_core.iht(A, b, 10, ridge=0.5, w_bar=w_bar, w0=w_bar * 2, backend=backend)
    expected = chita_core.iht(
        A.numpy(),
        b.numpy(),
        10,
        ridge=0.5,
        w_bar=w_bar.numpy(),
        w0=(w_bar * 2).numpy(),
        backend=backend,
    )
    np.testing.assert_array_equal(res.w.numpy(), expected.w)
    w = chita_core.backsolve(A, b, torch.tensor([4, 1, 7]), backend=backend)
    expected_w = chita_core.backsolve(A.numpy(), b.numpy(), [1, 4, 7], backend=backend)
    np.testing.assert_array_equal(w.numpy(), expected_w)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda t: t.randn(10, 20, dtype=t.float64)[:, ::2], ValueError, "`A` must be C- or F-"),
        (lambda t: t.randn(10, 20, dtype=t.complex64), TypeError, "`A`"),
        (lambda t: t.ones(10, 20, dtype=t.int64), TypeError, "`A`"),
        (lambda t: t.ones(10, 20, dtype=t.int16), TypeError, "`A`"),
        (lambda t: t.empty(10, 20, device="meta"), ValueError, "`A` lives on torch device meta"),
    ],
    ids=["strided", "complex", "int", "int16", "meta-device"],
)
def test_torch_bad_A(make, exc, match):
    torch = _torch()
    A = make(torch)
    with pytest.raises(exc, match=match):
        chita_core.iht(A, torch.zeros(10, dtype=torch.float64), 2)


# ----------------------------------------------------------------------------------------------
# JAX (DLPack)
# ----------------------------------------------------------------------------------------------


def test_jax_arrays(recording, backend):
    jax = pytest.importorskip("jax", reason="jax is not installed (pip install jax jaxlib)")
    jnp = jax.numpy
    A_np, b_np = _np_problem(dtype=np.float32, seed=5)  # float32: jax's default precision
    A, b = jnp.asarray(A_np), jnp.asarray(b_np)
    view = as_host_array(A, "A")
    assert _ptr(view) == A.unsafe_buffer_pointer(), "jax array was copied"
    res, w, f = _run_all(A, b, backend)
    assert {ptr for _, ptr, _, _ in recording.seen} == {A.unsafe_buffer_pointer()}
    assert isinstance(res.w, jax.Array) and res.w.dtype == jnp.float32
    assert isinstance(w, jax.Array)
    expected = chita_core.iht(A_np, b_np, 3, backend=backend, max_iter=20)
    np.testing.assert_array_equal(np.asarray(res.w), expected.w)
    np.testing.assert_array_equal(np.asarray(res.support), expected.support)
    assert f == chita_core.objective(A_np, b_np, expected.w, backend=backend)


def test_dlpack_only_object():
    # Anything with only __dlpack__ (and __dlpack_device__) is read through DLPack.
    A, b = _np_problem(seed=6)

    class OnlyDLPack:
        def __init__(self, arr):
            self._arr = arr

        def __dlpack__(self, **kwargs):
            return self._arr.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._arr.__dlpack_device__()

    view = as_host_array(OnlyDLPack(A), "A")
    assert _ptr(view) == _ptr(A)
    res = chita_core.iht(OnlyDLPack(A), b, 3, max_iter=10)
    np.testing.assert_array_equal(np.asarray(res.w), chita_core.iht(A, b, 3, max_iter=10).w)


def test_unknown_object_type_error():
    with pytest.raises(TypeError, match="`A` must be an array"):
        chita_core.iht(types.SimpleNamespace(), np.zeros(3), 1)


# ----------------------------------------------------------------------------------------------
# Recognising device arrays (runs without a GPU)
# ----------------------------------------------------------------------------------------------


def test_is_device_array():
    from chita_core._device import is_device_array

    class FakeCai:
        @property
        def __cuda_array_interface__(self):
            return {"shape": (2, 2), "typestr": "<f4", "data": (0, False)}

    class FakeDlpack:
        def __init__(self, kind):
            self.kind = kind

        def __dlpack_device__(self):
            return (self.kind, 0)

    assert not is_device_array(np.zeros(3))
    assert is_device_array(FakeCai())
    assert is_device_array(FakeDlpack(2))  # kDLCUDA
    assert not is_device_array(FakeDlpack(1))  # kDLCPU
    torch = pytest.importorskip("torch")
    assert not is_device_array(torch.zeros(3))


@pytest.mark.parametrize(
    ("shape", "strides", "expected"),
    [
        ((3, 4), (4, 1), False),
        ((3, 4), (1, 3), True),
        ((1, 4), (4, 1), True),  # one row: stored alike in both orders, read as F
        ((3, 1), (1, 1), False),
        ((3, 4), (8, 2), None),
        ((0, 4), (4, 1), None),
    ],
)
def test_device_layout(shape, strides, expected):
    from chita_core._device import _layout

    if expected is None:
        with pytest.raises(ValueError, match="`A` must"):
            _layout(*shape, strides)
    else:
        assert _layout(*shape, strides) is expected
