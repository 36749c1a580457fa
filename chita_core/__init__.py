"""chita_core: CHITA second-order pruning as sparse regression, with compiled kernels.

Solve ``min 0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2  s.t. ||w||_0 <= k`` where ``A`` holds
per-sample gradients (n x p, n << p), without ever forming the p x p Hessian.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._api import IHTProgress, IHTResult, backsolve, iht, objective
from ._backends import BackendUnavailableError, available_backends
from ._config import config, show_config

__all__ = [
    "BackendUnavailableError",
    "IHTProgress",
    "IHTResult",
    "__version__",
    "available_backends",
    "backsolve",
    "config",
    "iht",
    "objective",
    "show_config",
]


def _find_compiled_modules() -> None:
    """Run from a source checkout (``python -m chita_core.demo`` in the repository root), this
    directory shadows the installed package, which holds the compiled modules (_core, _cuda).
    Let submodules also be found in the installed copy, so the checkout works once installed."""
    import importlib.machinery
    import importlib.metadata
    from pathlib import Path

    def compiled(folder: Path) -> bool:
        return any((folder / f"_core{s}").exists() for s in importlib.machinery.EXTENSION_SUFFIXES)

    here = Path(__file__).resolve().parent
    if compiled(here):
        return
    try:
        installed = Path(str(importlib.metadata.distribution("chita_core").locate_file("")))
    except importlib.metadata.PackageNotFoundError:
        return
    other = (installed / "chita_core").resolve()
    if other != here and compiled(other):
        __path__.append(str(other))


_find_compiled_modules()

# Set in a child forked after this import: backends imported later in the child (numba) can
# still tell that they run in a forked process.
forked_child = False


def _mark_forked_child() -> None:
    global forked_child
    forked_child = True


if hasattr(__import__("os"), "register_at_fork"):
    __import__("os").register_at_fork(after_in_child=_mark_forked_child)
