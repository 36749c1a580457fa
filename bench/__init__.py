"""chita_core benchmarks: ``python -m bench.kernels``, ``python -m bench.solver``.

``python -m bench.<name>`` from the repository root puts the root first on ``sys.path``, so
``import chita_core`` would find the source tree, which has no compiled ``_core`` unless it was
built in place. When that is the case and an installed chita_core with ``_core`` exists, the root
is moved behind it (``bench`` itself is already imported, so it keeps working). The machine record
says which copy was used (``chita_core_location``).
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path


def _prefer_built_chita_core() -> None:
    if "chita_core" in sys.modules:
        return
    root = Path(__file__).resolve().parent.parent
    if any(p.suffix in (".so", ".pyd") for p in (root / "chita_core").glob("_core.*")):
        return  # built in place: the source tree is importable as it is

    def is_root(entry: str) -> bool:
        try:
            return Path(entry or ".").resolve() == root
        except OSError:
            return False

    at_root = [e for e in sys.path if is_root(e)]
    if not at_root:
        return
    rest = [e for e in sys.path if not is_root(e)]
    spec = importlib.machinery.PathFinder.find_spec("chita_core", rest)
    if spec is None or not spec.submodule_search_locations:
        return
    if not any(
        f.suffix in (".so", ".pyd")
        for loc in spec.submodule_search_locations
        for f in Path(loc).glob("_core.*")
    ):
        return
    sys.path[:] = rest + at_root


_prefer_built_chita_core()
