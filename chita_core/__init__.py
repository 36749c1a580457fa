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
