"""The backend registry: each backend is probed once; an unavailable one keeps its reason."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = [
    "BACKENDS",
    "DEVICE_BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
]

#: Host backend names in the order ``backend="auto"`` tries them for host arrays.
BACKENDS = ("cpp", "numba")
#: Backends for arrays in GPU memory (``backend="auto"`` picks it for them).
DEVICE_BACKENDS = ("cuda",)

_FIX = {
    "cpp": "reinstall chita_core from source (`pip install .`) so the C++ extension is built",
    "numba": "install numba (`pip install numba`)",
    "cuda": "install on a machine with the CUDA toolkit (`pip install '.[cuda]'`, CHITA_CUDA=ON "
    "to insist) and run where a GPU is visible",
}
_MODULES = {
    "cpp": "chita_core.backends.cpp",
    "numba": "chita_core.backends.numba_kernels",
    "cuda": "chita_core.backends.cuda_kernels",
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why and how to fix it."""


@dataclass(frozen=True)
class _Probe:
    module: ModuleType | None
    reason: str | None


_probes: dict[str, _Probe] = {}


def _probe(name: str) -> _Probe:
    if name not in _probes:
        target = _MODULES[name]
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            _probes[name] = _Probe(None, f"{target} could not be imported ({exc})")
        else:
            if name == "cuda" and module.device_count() == 0:
                _probes[name] = _Probe(None, "no CUDA device is visible (the module is built)")
            else:
                _probes[name] = _Probe(module, None)
    return _probes[name]


def available_backends() -> dict[str, str | None]:
    """Maps each backend name to ``None`` if it is usable, else to the reason it is not."""
    return {name: _probe(name).reason for name in BACKENDS + DEVICE_BACKENDS}


def get_backend(name: str, *, on_device: bool = False) -> tuple[str, ModuleType]:
    """Resolves ``name`` (``"auto"``, ``"cpp"``, ``"numba"`` or ``"cuda"``) to
    ``(name, kernel module)`` for arrays on the host or, with ``on_device``, on a GPU."""
    if not isinstance(name, str):
        raise TypeError(f"`backend` must be a string, got {type(name).__name__} {name!r}")
    if name not in ("auto", *BACKENDS, *DEVICE_BACKENDS):
        raise ValueError(
            f"`backend` must be one of 'auto', "
            f"{', '.join(map(repr, BACKENDS + DEVICE_BACKENDS))}; got {name!r}"
        )
    if on_device:
        if name in BACKENDS:
            raise ValueError(
                f"`A` is on a CUDA device but backend {name!r} runs on the host; use "
                "backend='cuda' (or 'auto'), or move A to the host explicitly"
            )
        name = "cuda"
    elif name in DEVICE_BACKENDS:
        raise ValueError(
            f"backend {name!r} needs `A` on a CUDA device (a torch CUDA tensor, a CuPy array, "
            "...); `A` is a host array: move it to the GPU or use backend='auto'"
        )
    if name == "auto":
        for candidate in BACKENDS:
            probe = _probe(candidate)
            if probe.module is not None:
                return candidate, probe.module
        reasons = "; ".join(f"{b}: {_probe(b).reason}" for b in BACKENDS)
        raise BackendUnavailableError(f"no CPU backend is available ({reasons})")
    probe = _probe(name)
    if probe.module is None and on_device:
        raise BackendUnavailableError(
            f"`A` lives on a CUDA device, but the CUDA backend is unavailable: {probe.reason}; "
            f"{_FIX[name]}. Move A to the host explicitly (e.g. `.cpu()`) if a host copy is what "
            "you want."
        )
    if probe.module is None:
        raise BackendUnavailableError(
            f"backend {name!r} is unavailable: {probe.reason}; {_FIX[name]}"
        )
    return name, probe.module
