"""The backend registry: each backend is probed once; an unavailable one keeps its reason."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["BACKENDS", "BackendUnavailableError", "available_backends", "get_backend"]

#: Backend names in the order ``backend="auto"`` tries them.
BACKENDS = ("cpp", "numba")

_FIX = {
    "cpp": "reinstall chita_core from source (`pip install .`) so the C++ extension is built",
    "numba": "install numba (`pip install numba`)",
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
        target = {"cpp": "chita_core._core", "numba": "chita_core._numba"}[name]
        try:
            _probes[name] = _Probe(importlib.import_module(target), None)
        except ImportError as exc:
            _probes[name] = _Probe(None, f"{target} could not be imported ({exc})")
    return _probes[name]


def available_backends() -> dict[str, str | None]:
    """Maps each backend name to ``None`` if it is usable, else to the reason it is not."""
    return {name: _probe(name).reason for name in BACKENDS}


def get_backend(name: str) -> tuple[str, ModuleType]:
    """Resolves ``name`` (``"auto"``, ``"cpp"`` or ``"numba"``) to ``(name, kernel module)``."""
    if not isinstance(name, str):
        raise TypeError(f"`backend` must be a string, got {type(name).__name__} {name!r}")
    if name == "auto":
        for candidate in BACKENDS:
            probe = _probe(candidate)
            if probe.module is not None:
                return candidate, probe.module
        reasons = "; ".join(f"{b}: {_probe(b).reason}" for b in BACKENDS)
        raise BackendUnavailableError(f"no CPU backend is available ({reasons})")
    if name not in BACKENDS:
        if name == "cuda":
            raise BackendUnavailableError(
                "backend 'cuda' is not available: the CUDA extension is not part of this build"
            )
        raise ValueError(
            f"`backend` must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {name!r}"
        )
    probe = _probe(name)
    if probe.module is None:
        raise BackendUnavailableError(
            f"backend {name!r} is unavailable: {probe.reason}; {_FIX[name]}"
        )
    return name, probe.module
