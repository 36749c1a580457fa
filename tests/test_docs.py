"""The documentation runs: README's Python blocks, its set-up commands and every public docstring
example."""

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
    layer = doctest.testmod(chita_core.layer, optionflags=doctest.ELLIPSIS)
    assert layer.attempted >= 3 and layer.failed == 0


def test_verbose_prints_one_line_per_iteration(capsys):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, 120))
    b = rng.standard_normal(40)
    res = chita_core.iht(A, b, 5, max_iter=7, tol=0.0, verbose=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("chita_core.iht: n=40, p=120, k=5")
    # One line with the plan, then one per iteration and one per stage.
    assert [line.lstrip().startswith("plan: ") for line in err[2:]].count(True) == 1
    body = [line for line in err[2:] if not line.lstrip().startswith(("stage ", "plan: "))]
    stage_lines = [line for line in err[2:] if line.lstrip().startswith("stage ")]
    assert len(stage_lines) == len(res.stages)
    assert len(body) == res.n_iter
    assert [int(line.split()[0]) for line in body] == list(range(1, res.n_iter + 1))
    assert float(body[-1].split()[1]) == pytest.approx(res.history[-1], rel=1e-6)
    assert float(stage_lines[-1].split("objective")[1].split()[0]) == pytest.approx(
        res.objective, rel=1e-6
    )


def _setup_commands() -> list[str]:
    """The shell commands of README's first code block (its set-up commands)."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert block, "README.md lost its set-up commands"
    return block.group(1).strip().splitlines()


def test_readme_starts_with_two_setup_commands():
    demo, test = _setup_commands()
    assert demo.startswith('pip install ".[demo]" && ')
    # .ci/run runs this one verbatim.
    assert test == 'pip install ".[test]" && pytest'


def test_readme_demo_runs_the_installed_package(capsys):
    """The demo command must not be ``python -m chita_core.demo``: run in the repository root,
    ``python -m`` puts the root first on sys.path, so it would import the source tree (no
    compiled ``_core``) instead of the package just installed. A console script imports the
    installed package wherever it runs."""
    tomllib = pytest.importorskip("tomllib")
    import importlib
    import importlib.metadata

    script, *_ = _setup_commands()[0].split(" && ", 1)[1].split()
    scripts = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert script in scripts, f"{script!r} is not a console script of pyproject.toml"
    installed = importlib.metadata.entry_points(group="console_scripts", name=script)
    assert [ep.value for ep in installed] == [scripts[script]], (
        f"the installed chita_core does not provide {script!r} as in pyproject.toml: reinstall it"
    )
    module, func = scripts[script].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--sparsities" in capsys.readouterr().out
