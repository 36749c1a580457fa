"""Argument checks run before any kernel. Messages name the argument, the expected and the
received value. TypeError for types/dtypes, ValueError for shapes/values."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np

from ._interop import BFLOAT16, as_host_array

__all__ = [
    "check_index",
    "check_matrix",
    "check_nonneg_float",
    "check_support",
    "check_vector",
    "is_half",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Storage types of A on the host: the vectors' two, and the 16-bit ones (the C++ kernels widen
# each element to float64 as they read it; docs/design.md, section 15).
_MATRIX_DTYPES = (*_FLOAT_DTYPES, np.dtype(np.float16), BFLOAT16)


def is_half(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a 16-bit storage type of A (float16 or bfloat16)."""
    return dtype == np.float16 or dtype == BFLOAT16


def _describe(arr: np.ndarray) -> str:
    return f"{arr.dtype} array of shape {arr.shape}"


def _native(arr: np.ndarray, name: str, *, copy_ok: bool) -> np.ndarray:
    """``arr`` in native byte order: vectors are converted (O(length)), ``A`` is refused."""
    if arr.dtype.isnative:
        return arr
    if not copy_ok:
        raise TypeError(
            f"`{name}` has non-native byte order (dtype {arr.dtype.str!r}); the kernels read "
            f"native {arr.dtype.newbyteorder('=').name} and chita_core never copies A silently: "
            f"pass `{name}.astype({arr.dtype.newbyteorder('=').name!r})` (a copy)"
        )
    return arr.astype(np.dtype(arr.dtype.newbyteorder("=").type))  # the canonical native dtype


def _check_float_dtype(arr: np.ndarray, name: str, allowed: tuple = _FLOAT_DTYPES) -> None:
    dt = arr.dtype
    if dt in allowed:
        return
    if allowed is _MATRIX_DTYPES:
        kind = "complex dtype" if dt.kind == "c" else "dtype"
        raise TypeError(f"`{name}` must be float32, float64, float16 or bfloat16, got {kind} {dt}")
    if dt.kind == "c":
        raise TypeError(f"`{name}` must be real (float32 or float64), got complex dtype {dt}")
    if dt.kind == "f":
        raise TypeError(
            f"`{name}` must be float32 or float64 on the CPU backends, got {dt}; "
            f"convert it (e.g. `.astype(np.float32)`)"
        )
    raise TypeError(f"`{name}` must be float32 or float64, got dtype {dt}")


def check_matrix(A: Any) -> np.ndarray:
    """The (n, p) gradient matrix as a NumPy view: float32/float64/float16/bfloat16, C- or
    F-contiguous. (Its NaN/Inf scan is the Problem's column-norm pass: one pass over A for
    both.)"""
    arr = _native(as_host_array(A, "A", copy_ok=False), "A", copy_ok=False)
    _check_float_dtype(arr, "A", _MATRIX_DTYPES)
    if arr.ndim != 2:
        raise ValueError(
            f"`A` must be 2-D (n samples x p weights), got {arr.ndim}-D shape {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"`A` must have at least one row and one column, got shape {arr.shape}")
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise ValueError(
            f"`A` must be C- or F-contiguous (got strides {arr.strides} for shape {arr.shape}); "
            "chita_core never copies A silently: pass np.ascontiguousarray(A) or "
            "np.asfortranarray(A) (F order is faster) if a copy is acceptable"
        )
    return arr


def check_vector(
    x: Any, name: str, length: int, dtype: np.dtype, *, length_of: str, check_finite: bool = True
) -> np.ndarray:
    """A 1-D float vector of ``length`` entries and the same dtype as A, returned as float64.
    With A in a 16-bit type the vector may also be float32 or float64 (A's storage is a choice
    of bandwidth; b and w_bar keep their precision)."""
    arr = _native(as_host_array(x, name), name, copy_ok=True)
    half = is_half(dtype)
    if arr.dtype not in (_MATRIX_DTYPES if half else _FLOAT_DTYPES):
        _check_float_dtype(arr, name)
    if arr.dtype != dtype and not (half and arr.dtype in _FLOAT_DTYPES):
        raise TypeError(
            f"`{name}` has dtype {arr.dtype} but `A` has dtype {dtype}; mixed float dtypes are "
            f"not combined silently: convert one of them"
        )
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got {_describe(arr)}")
    if arr.shape[0] != length:
        raise ValueError(f"`{name}` must have length {length} ({length_of}), got {arr.shape[0]}")
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f"`{name}` contains NaN or Inf")
    return np.ascontiguousarray(arr, dtype=np.float64)


def check_index(value: Any, name: str, low: int, high: int) -> int:
    """An integer in [low, high] (bool and floats rejected)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer, got bool {value!r}")
    try:
        ivalue = operator.index(value)
    except TypeError:
        raise TypeError(
            f"`{name}` must be an integer, got {type(value).__name__} {value!r}"
        ) from None
    if not low <= ivalue <= high:
        raise ValueError(f"`{name}` must be in [{low}, {high}], got {ivalue}")
    return ivalue


def check_nonneg_float(value: Any, name: str) -> float:
    """A finite real number >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}")
    fvalue = float(value)
    if not math.isfinite(fvalue) or fvalue < 0:
        raise ValueError(f"`{name}` must be finite and >= 0, got {fvalue!r}")
    return fvalue


def check_support(support: Any, p: int) -> np.ndarray:
    """Distinct column indices in [0, p), returned sorted as int64."""
    arr = _native(as_host_array(support, "support"), "support", copy_ok=True)
    if arr.size == 0:
        raise ValueError("`support` must not be empty")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iu":
        raise TypeError(
            f"`support` must be an integer array of column indices, got dtype {arr.dtype}"
        )
    if arr.ndim != 1:
        raise ValueError(f"`support` must be 1-D, got {_describe(arr)}")
    idx = np.sort(arr.astype(np.int64, copy=False))
    if idx[0] < 0 or idx[-1] >= p:
        bad = idx[0] if idx[0] < 0 else idx[-1]
        raise ValueError(f"`support` indices must be in [0, {p}) (A has {p} columns), got {bad}")
    if idx.size > 1 and not np.all(idx[1:] != idx[:-1]):
        dup = idx[1:][idx[1:] == idx[:-1]][0]
        raise ValueError(f"`support` indices must be distinct, got {dup} more than once")
    return idx
