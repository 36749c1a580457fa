"""The documentation runs: README's Python blocks and every public docstring example."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import numpy as np
import pytest

import chita_core
import chita_core._api

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_python_examples():
    assert _python_blocks(README.read_text()), "README.md lost its Python example"


@pytest.mark.parametrize("block", _python_blocks(README.read_text()))
def test_readme_python_blocks_run(block, capsys):
    if "import torch" in block:
        pytest.importorskip("torch")
    # Every block checks its own results: one without an assert would prove nothing.
    assert re.search(r"^\s*assert ", block, flags=re.MULTILINE), "README block asserts nothing"
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)


def test_public_docstring_examples_pass():
    result = doctest.testmod(chita_core._api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8, "the docstring examples were not found"
    assert result.failed == 0


def test_verbose_prints_one_line_per_iteration(capsys):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, 120))
    b = rng.standard_normal(40)
    res = chita_core.iht(A, b, 5, max_iter=7, tol=0.0, verbose=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("chita_core.iht: n=40, p=120, k=5")
    body = [line for line in err[2:] if not line.lstrip().startswith("stage ")]
    stage_lines = [line for line in err[2:] if line.lstrip().startswith("stage ")]
    assert len(stage_lines) == len(res.stages)
    assert len(body) == res.n_iter
    assert [int(line.split()[0]) for line in body] == list(range(1, res.n_iter + 1))
    assert float(body[-1].split()[1]) == pytest.approx(res.history[-1], rel=1e-6)
    assert float(stage_lines[-1].split("objective")[1].split()[0]) == pytest.approx(
        res.objective, rel=1e-6
    )


def test_source_checkout_finds_the_compiled_modules():
    """The README's `python -m chita_core.demo` runs in the repository root, where the source
    package shadows the installed one: the compiled backend must still be found."""
    import subprocess
    import sys

    code = (
        "import chita_core, pathlib; "
        "assert pathlib.Path(chita_core.__file__).parent.parent == pathlib.Path.cwd(); "
        "assert chita_core.available_backends()['cpp'] is None, chita_core.available_backends()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=README.parent, check=True)
