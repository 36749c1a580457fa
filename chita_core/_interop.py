"""Array interchange: turn any framework's host array into a NumPy view, and back.

This is the one module that knows about array protocols. Nothing here copies ``A``: a NumPy
view is taken through DLPack (torch, JAX, ...), ``__array_interface__`` or the buffer protocol.
Small vectors are converted to float64 by the caller (a copy of O(n + p), never of A).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "BFLOAT16",
    "array_module",
    "as_host_array",
    "library_of",
    "resolve_torch_view",
    "to_library",
]


#: NumPy's bfloat16 (from ml_dtypes, the dtype JAX uses): how a bfloat16 A is viewed on the host.
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def array_module(x: Any) -> Any:
    """The namespace of the solver's own vectors: ``cupy`` for CuPy arrays, else ``numpy``.

    The pipeline (IHT drivers, refits, swap search) is written once against this namespace, so
    the same code runs on host vectors and, with the CUDA backend, on device vectors."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def library_of(x: Any) -> str:
    """Name of the top-level package an array comes from (``"numpy"``, ``"torch"``, ...)."""
    if isinstance(x, np.ndarray):
        return "numpy"
    return type(x).__module__.split(".", 1)[0]


def _device_error(name: str, where: str) -> ValueError:
    return ValueError(
        f"`{name}` lives on {where}, but only the CPU backends (cpp, numba) are available for "
        "it: the CUDA backend is not built in this installation. Move it to the host "
        "explicitly (e.g. `.cpu()`) if a host copy is what you want."
    )


def resolve_torch_view(x: Any, name: str, *, copy_ok: bool) -> Any:
    """``x`` (a torch tensor) with its lazy negation / conjugation applied.

    A tensor with the negative bit (``t._neg_view()``, ``z.conj().imag``) or the conjugate bit
    holds the un-negated values in memory; DLPack and raw pointers would read them with the
    wrong sign. Small vectors (``copy_ok``) are materialised (an O(length) copy); ``A`` is
    refused, since resolving it means copying it."""
    lazy = [what for what, on in (("negative", x.is_neg()), ("conjugate", x.is_conj())) if on]
    if not lazy:
        return x
    if not copy_ok:
        raise ValueError(
            f"`{name}` is a torch view with the lazy {' and '.join(lazy)} bit set: its memory "
            "holds different values from the tensor, and chita_core never copies A silently; "
            f"pass `{name}.resolve_neg().resolve_conj()` (a copy) instead"
        )
    return x.resolve_neg().resolve_conj()


def torch_bfloat16() -> Any:
    import torch

    return torch.bfloat16


def _refuse_masked(x: Any, name: str) -> None:
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"`{name}` is a numpy masked array; its mask would be ignored. Pass "
            f"`{name}.filled(value)` (or the unmasked data) explicitly"
        )


def as_host_array(x: Any, name: str, *, copy_ok: bool = True) -> np.ndarray:
    """A NumPy view of ``x`` without copying; raises if ``x`` is not on the host.

    Accepts NumPy arrays, torch CPU tensors and JAX CPU arrays (DLPack), objects with
    ``__array_interface__`` or the buffer protocol, and Python sequences (converted). Masked
    arrays are refused (their mask would be lost). ``copy_ok`` allows the small conversions a
    vector may need (a torch view with a lazy sign bit); ``A`` passes ``False``.
    """
    if isinstance(x, np.ndarray):
        _refuse_masked(x, name)
        return x
    if isinstance(x, (str, bytes)):
        raise TypeError(f"`{name}` must be an array, got {type(x).__name__} {x!r:.40}")
    lib = library_of(x)
    if lib == "torch":
        if x.device.type != "cpu":
            raise _device_error(name, f"torch device {x.device}")
        if x.dtype.is_complex:
            raise TypeError(f"`{name}` must be real floating point, got torch {x.dtype}")
        x = resolve_torch_view(x, name, copy_ok=copy_ok)
        if x.dtype == torch_bfloat16():
            # NumPy has no bfloat16 and DLPack refuses it: the same memory, viewed as uint16,
            # then as ml_dtypes' bfloat16 (two views, no copy).
            import torch

            return x.detach().view(torch.uint16).numpy().view(BFLOAT16)
        try:
            return np.from_dlpack(x.detach())
        except (TypeError, RuntimeError, BufferError) as exc:
            raise TypeError(
                f"`{name}` (torch {x.dtype}) cannot be viewed from NumPy: {exc}"
            ) from exc
    if hasattr(x, "__cuda_array_interface__"):
        raise _device_error(name, "a CUDA device")
    if hasattr(x, "__array_interface__") or isinstance(x, (memoryview, bytearray)):
        return np.asarray(x)
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError, ValueError) as exc:
            if "bfloat16" in str(getattr(x, "dtype", "")) and hasattr(x, "__array__"):
                # JAX's bfloat16 on the CPU: DLPack has no NumPy dtype for it, __array__ gives
                # a view of the buffer in ml_dtypes' bfloat16.
                arr = np.asarray(x)
                if arr.dtype == BFLOAT16:
                    return arr
            raise TypeError(
                f"`{name}` ({type(x).__module__}.{type(x).__name__}) could not be read through "
                f"DLPack on the host: {exc}"
            ) from exc
    if isinstance(x, (list, tuple)) or np.isscalar(x):
        try:
            return np.asarray(x)
        except ValueError as exc:  # ragged nesting
            raise ValueError(
                f"`{name}` is a nested sequence that does not form a rectangular array: {exc}"
            ) from None
    raise TypeError(
        f"`{name}` must be an array (NumPy, torch, JAX, or anything with __array_interface__ "
        f"or __dlpack__), got {type(x).__module__}.{type(x).__name__}"
    )


def to_library(arr: np.ndarray, lib: str) -> Any:
    """Returns ``arr`` as an array of library ``lib`` (no copy for torch; NumPy otherwise)."""
    if lib == "torch":
        import torch

        if arr.dtype == BFLOAT16:
            return torch.from_numpy(arr.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(arr)
    if lib in ("jax", "jaxlib"):
        import jax.numpy as jnp

        return jnp.asarray(arr)
    return arr
