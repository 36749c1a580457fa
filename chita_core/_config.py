"""``show_config``: what was built, what can run, and why anything is off."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, TextIO

import numpy as np

from .backends import available_backends

__all__ = ["config", "show_config"]


def config() -> dict[str, Any]:
    """The configuration :func:`show_config` prints, as a dict."""
    from . import __version__

    info: dict[str, Any] = {
        "chita_core": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "backends": available_backends(),
    }
    try:
        from . import _core

        info["build"] = _core.build_info
        info["openmp"] = bool(_core.openmp)
        info["threads"] = _core.num_threads()
        info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
        info["forked_child"] = bool(getattr(_core, "forked_child", lambda: False)())
    except ImportError as exc:
        info["build"] = f"compiled module missing ({exc})"
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    info["cuda"] = _cuda_line(info["backends"].get("cuda"))
    return info


def _cuda_line(reason: str | None) -> str:
    try:
        from . import _cuda
    except ImportError as exc:
        return f"not built ({exc})"
    count = _cuda.device_count()
    names = ", ".join(_cuda.device_name(i) for i in range(count)) or "no device visible"
    state = "usable" if reason is None else f"unusable: {reason}"
    built = _cuda.build_info.rsplit(" | ", 1)[-1]  # (the rest repeats `build`)
    return f"{built}; {count} device(s): {names}; {state}"


def show_config(file: TextIO | None = None) -> None:
    """Prints the compiled modules, OpenMP threads, numba, CUDA and why anything is off."""
    info = config()
    out = file if file is not None else sys.stdout
    print(f"chita_core {info['chita_core']}", file=out)
    print(f"  python     {info['python']} ({info['platform']})", file=out)
    print(f"  numpy      {info['numpy']}", file=out)
    print(f"  build      {info['build']}", file=out)
    if "threads" in info:
        threads = f"{'on' if info['openmp'] else 'off'}, {info['threads']} threads"
        if info.get("omp_wait_policy"):
            threads += f", OMP_WAIT_POLICY={info['omp_wait_policy']}"
        if info.get("forked_child"):
            threads += " (forked child: kernels single-threaded on the forking thread)"
        print(f"  openmp     {threads}", file=out)
    print(f"  numba      {info['numba'] or 'not installed (pip install numba)'}", file=out)
    print(f"  cuda       {info['cuda']}", file=out)
    print("  backends:", file=out)
    for name, reason in info["backends"].items():
        print(
            f"    {name:<6} {'available' if reason is None else 'unavailable: ' + reason}", file=out
        )
