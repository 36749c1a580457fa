"""CUDA arrays: recognising them, the matrix view the CUDA kernels read, device vectors, streams.

``A`` on a GPU is never copied. It is described to the kernels by a :class:`DeviceMatrix`
(pointer, shape, layout, storage dtype) taken from the caller's array: a torch CUDA tensor
(float32, float64, float16, bfloat16), a CuPy array or anything with
``__cuda_array_interface__`` (float32, float64, float16), or a JAX GPU array (through DLPack).
The solver's own vectors (b, w_bar, w, r, g: O(n + p)) are float64 CuPy arrays on A's device,
and every kernel runs on the caller's current stream. Results go back to the caller's library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._interop import library_of, resolve_torch_view

__all__ = [
    "DeviceMatrix",
    "DeviceProblem",
    "device_indices",
    "device_matrix",
    "device_vector",
    "is_device_array",
    "on_stream",
    "to_caller",
]

_TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16")
_TYPESTRS = {"<f4": "float32", "<f8": "float64", "<f2": "float16"}
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def is_device_array(x: Any) -> bool:
    """True for arrays that live in CUDA device memory (torch CUDA, CuPy, JAX on a GPU, ...)."""
    if isinstance(x, np.ndarray):
        return False
    if library_of(x) == "torch":
        return getattr(getattr(x, "device", None), "type", None) == "cuda"
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in _DLPACK_CUDA
        except Exception:  # a host array whose __dlpack_device__ misbehaves is not ours to judge
            return False
    return False


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "the CUDA backend needs CuPy for its device vectors: pip install 'chita_core[cuda]' "
            f"(cupy-cuda13x) ({exc})"
        ) from exc
    return cupy


@dataclass(frozen=True)
class DeviceMatrix:
    """Non-owning description of the caller's ``A`` on a GPU (the CUDA kernels' ``A``)."""

    ptr: int
    n: int
    p: int
    col_major: bool  # F order: column j at ptr + j n elements; else row i at ptr + i p
    dtype: str  # "float32", "float64", "float16" or "bfloat16" (storage; kernels accumulate wider)
    device: int
    owner: Any  # the caller's array, kept alive while this view exists

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.p)

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self.dtype]

    def columns(self, idx: Any) -> Any:
        """A[:, idx] as a float64 CuPy array [n, len(idx)]: a small gathered workspace."""
        from .backends.cuda_kernels import gather_columns

        return gather_columns(self, idx)


@dataclass(frozen=True)
class DeviceProblem:
    """Where the device arrays came from: the stream to run on and how to hand results back."""

    lib: str  # caller's library: "torch", "cupy", "jax", ...
    stream: int  # caller's current stream (cudaStream_t as int; 0 = legacy default)
    dtype: Any  # caller's dtype of A (for the outputs)


def _torch_matrix(A: Any) -> tuple[DeviceMatrix, DeviceProblem]:
    import torch

    name = str(A.dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPES:
        raise TypeError(
            f"`A` must be float32, float64, float16 or bfloat16 on the CUDA backend, got torch "
            f"{A.dtype}"
        )
    if A.dim() != 2:
        raise ValueError(f"`A` must be 2-D (n samples x p weights), got shape {tuple(A.shape)}")
    resolve_torch_view(A, "A", copy_ok=False)  # raw pointers would miss a lazy sign bit
    n, p = A.shape
    col_major = _layout(n, p, tuple(A.stride()))
    dev = A.device.index if A.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(A.device).cuda_stream
    mat = DeviceMatrix(A.data_ptr(), n, p, col_major, name, dev, A)
    return mat, DeviceProblem("torch", int(stream), A.dtype)


def _layout(n: int, p: int, strides: tuple[int, ...]) -> bool:
    """True for F order, False for C order (strides in elements); raises otherwise."""
    if n < 1 or p < 1:
        raise ValueError(f"`A` must have at least one row and one column, got shape {(n, p)}")
    c_ok = (p == 1 or strides[1] == 1) and (n == 1 or strides[0] == p)
    f_ok = (n == 1 or strides[0] == 1) and (p == 1 or strides[1] == n)
    if not (c_ok or f_ok):
        raise ValueError(
            f"`A` must be C- or F-contiguous (got strides {strides} in elements for shape "
            f"{(n, p)}); chita_core never copies A silently: make it contiguous first "
            "(F order, e.g. a transposed C-contiguous (p, n) array, is faster)"
        )
    # A single row is stored the same way in both orders; it reads best as F order.
    return f_ok and not (c_ok and n != 1)


def _cai_matrix(A: Any) -> tuple[DeviceMatrix, DeviceProblem]:
    cp = _cupy()
    cai = A.__cuda_array_interface__
    typestr = cai["typestr"]
    if typestr not in _TYPESTRS:
        raise TypeError(
            f"`A` must be float32, float64 or float16 on the CUDA backend, got typestr "
            f"{typestr!r} (bfloat16 goes through torch tensors)"
        )
    dtype = _TYPESTRS[typestr]
    shape = tuple(cai["shape"])
    if len(shape) != 2:
        raise ValueError(f"`A` must be 2-D (n samples x p weights), got shape {shape}")
    n, p = shape
    item = _ITEMSIZE[dtype]
    strides = cai.get("strides")
    strides = (p, 1) if strides is None else tuple(s // item for s in strides)
    col_major = _layout(n, p, strides)
    ptr = int(cai["data"][0])
    dev = A.device.id if isinstance(A, cp.ndarray) else _pointer_device(ptr)
    stream = cai.get("stream")
    if isinstance(A, cp.ndarray) or stream is None:
        stream = cp.cuda.get_current_stream().ptr
    lib = library_of(A)
    mat = DeviceMatrix(ptr, n, p, col_major, dtype, dev, A)
    return mat, DeviceProblem(lib, int(stream), np.dtype(dtype))


def _pointer_device(ptr: int) -> int:
    cp = _cupy()
    return int(cp.cuda.runtime.pointerGetAttributes(ptr).device)


def device_matrix(A: Any) -> tuple[DeviceMatrix, DeviceProblem]:
    """The kernels' view of a device ``A`` plus the caller's stream and library."""
    if library_of(A) == "torch":
        return _torch_matrix(A)
    if hasattr(A, "__cuda_array_interface__"):
        return _cai_matrix(A)
    # JAX and other DLPack producers: a zero-copy CuPy view, then as above.
    cp = _cupy()
    try:
        view = cp.from_dlpack(A)
    except Exception as exc:
        raise TypeError(
            f"`A` ({type(A).__module__}.{type(A).__name__}) could not be read through DLPack on "
            f"the GPU: {exc}"
        ) from exc
    mat, where = _cai_matrix(view)
    mat = DeviceMatrix(mat.ptr, mat.n, mat.p, mat.col_major, mat.dtype, mat.device, A)
    return mat, DeviceProblem(library_of(A), where.stream, where.dtype)


def device_vector(
    x: Any, name: str, length: int, mat: DeviceMatrix, *, length_of: str, check_finite: bool
) -> Any:
    """A float64 CuPy copy (O(length)) of a vector on A's device; host vectors are refused."""
    cp = _cupy()
    if not is_device_array(x):
        raise ValueError(
            f"`{name}` is on the host but `A` is on cuda:{mat.device}; devices are never mixed "
            f"silently: move `{name}` to the same device (e.g. `.cuda()` or cupy.asarray)"
        )
    if library_of(x) == "torch":
        import torch

        got = str(x.dtype).removeprefix("torch.")
        if got != mat.dtype and not (_is_half(mat.dtype) and got in ("float32", "float64")):
            raise TypeError(
                f"`{name}` has dtype {x.dtype} but `A` has dtype {mat.dtype}; mixed float dtypes "
                "are not combined silently: convert one of them"
            )
        if x.device.index != mat.device:
            raise ValueError(f"`{name}` is on {x.device} but `A` is on cuda:{mat.device}")
        x = resolve_torch_view(x.detach(), name, copy_ok=True)
        arr = cp.from_dlpack(x.to(torch.float64).contiguous())
    else:
        arr = cp.asarray(x) if hasattr(x, "__cuda_array_interface__") else cp.from_dlpack(x)
        if arr.device.id != mat.device:
            raise ValueError(f"`{name}` is on cuda:{arr.device.id} but `A` is on cuda:{mat.device}")
        if arr.dtype != np.dtype(mat.dtype) and not (
            _is_half(mat.dtype) and arr.dtype in (np.float32, np.float64)
        ):
            raise TypeError(
                f"`{name}` has dtype {arr.dtype} but `A` has dtype {mat.dtype}; mixed float "
                "dtypes are not combined silently: convert one of them"
            )
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != length:
        raise ValueError(f"`{name}` must have length {length} ({length_of}), got {arr.shape[0]}")
    out = cp.ascontiguousarray(arr, dtype=cp.float64)
    if check_finite and not bool(cp.isfinite(out).all()):
        raise ValueError(f"`{name}` contains NaN or Inf")
    return out


def device_indices(x: Any, p: int) -> Any:
    """A support given on the device or the host, validated on the host (O(k)), as int64 CuPy."""
    from ._validation import check_support

    cp = _cupy()
    if library_of(x) == "torch" and is_device_array(x):
        host = resolve_torch_view(x.detach(), "support", copy_ok=True).cpu().numpy()
    elif is_device_array(x):
        host = cp.asnumpy(
            cp.asarray(x) if hasattr(x, "__cuda_array_interface__") else cp.from_dlpack(x)
        )
    else:
        host = x
    return cp.asarray(check_support(host, p))


def _is_half(dtype: Any) -> bool:
    """Whether A's dtype (a name, NumPy or torch dtype) is a 16-bit storage type: its vectors may
    then also be float32 or float64."""
    return str(dtype).removeprefix("torch.") in ("float16", "bfloat16")


def _result_dtype(dtype: Any) -> Any:
    """Results of a 16-bit A come back in float32 (its storage type would round them); ``dtype``
    is a torch or NumPy dtype, and so is the answer."""
    if not _is_half(dtype):
        return dtype
    if type(dtype).__module__.startswith("torch"):
        import torch

        return torch.float32
    return np.dtype(np.float32)


def to_caller(arr: Any, where: DeviceProblem, *, cast: bool = True) -> Any:
    """A CuPy result in the caller's library (zero-copy through DLPack), in A's dtype if
    ``cast``; integer arrays keep int64."""
    if where.lib == "torch":
        import torch

        out = torch.from_dlpack(arr)
        return out.to(_result_dtype(where.dtype)) if cast else out
    if cast:
        arr = arr.astype(_result_dtype(where.dtype))
    if where.lib in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp.from_dlpack(arr)
    return arr


class on_stream:
    """Context: CuPy work on A's device and the caller's stream (so kernels order with it)."""

    def __init__(self, mat: DeviceMatrix, where: DeviceProblem) -> None:
        cp = _cupy()
        self._device = cp.cuda.Device(mat.device)
        if where.stream in (0, 1):
            self._stream = cp.cuda.Stream.null
        elif where.stream == 2:
            self._stream = cp.cuda.Stream.ptds
        else:
            self._stream = cp.cuda.ExternalStream(where.stream, mat.device)

    def __enter__(self) -> on_stream:
        self._device.__enter__()
        self._stream.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stream.__exit__(*exc)
        self._device.__exit__(*exc)
