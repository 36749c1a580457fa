"""chita_core: CHITA second-order pruning as sparse regression, with compiled kernels.

Solve ``min 0.5 ||A w - b||^2 + 0.5 ridge ||w - w_bar||^2  s.t. ||w||_0 <= k`` where ``A`` holds
per-sample gradients (n x p, n << p), without ever forming the p x p Hessian.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os

# The solver alternates OpenMP kernels (passes over A) with BLAS calls (n-space algebra). With
# both runtimes spinning after each call, their threads starve each other on few cores: on 2
# cores a 512-column mat-vec right after a GEMM took 6.5 ms instead of 0.5, and swap search
# 1.2 s instead of 0.85. OpenMP threads that sleep when idle avoid it. Read when the OpenMP
# runtime loads (with the compiled module), so it is set here, before that; a value the user
# set is kept (OMP_WAIT_POLICY=ACTIVE restores spinning). README: "Threads".
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._api import IHTProgress, IHTResult, backsolve, iht, objective
from ._config import config, show_config
from ._problem import Problem
from .backends import BackendUnavailableError, available_backends
from .layer import LayerResult, prune_layer

__all__ = [
    "BackendUnavailableError",
    "IHTProgress",
    "IHTResult",
    "LayerResult",
    "Problem",
    "__version__",
    "available_backends",
    "backsolve",
    "config",
    "iht",
    "objective",
    "prune_layer",
    "show_config",
]


# Set in a child forked after this import: backends imported later in the child (numba) can
# still tell that they run in a forked process.
forked_child = False


def _mark_forked_child() -> None:
    global forked_child
    forked_child = True


if hasattr(__import__("os"), "register_at_fork"):
    __import__("os").register_at_fork(after_in_child=_mark_forked_child)
