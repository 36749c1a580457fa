"""chita_core benchmarks: ``python -m bench.kernels``, ``python -m bench.solver``, ...

Run them from the repository root with chita_core installed in editable mode
(``CHITA_CUDA=OFF pip install --no-build-isolation -e ".[bench]"``, see bench/README.md).
``python -m`` puts the repository root first on ``sys.path``; the editable install's import hook
comes before ``sys.path`` and serves ``chita_core`` from this checkout together with its
compiled ``_core``. After a regular (non-editable) install the checkout's ``chita_core/``, which
has no ``_core``, would shadow the installed package instead. The machine record says which
copy ran (``chita_core_location``: ``source`` for an editable install).
"""
