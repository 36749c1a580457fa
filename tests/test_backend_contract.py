"""Every backend module implements the whole kernel contract of chita_core/backends/protocol.py,
and every compiled module was built with the step constants of chita_core/backends/constants.py.

Each backend module is imported by its own module path (the registry's table), not through
``get_backend``, so a module is checked wherever it imports, even where the registry would not
pick it (the CUDA module imports with CuPy and no GPU). Where a module cannot be imported (no
``_core`` for the cpp module, no CuPy for the CUDA one) the import tests skip with the registry's
reason, and a static check of the module's source (and of ``_core.pyi`` for the ops it takes from
``_core``) still runs, so the CUDA module's contract is checked on every machine.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import reference as ref

from chita_core import backends
from chita_core.backends import BACKENDS, DEVICE_BACKENDS, available_backends, constants
from chita_core.backends.protocol import OPS, Kernels

ALL = (*BACKENDS, *DEVICE_BACKENDS)
MODULES = backends._MODULES  # backend name -> module path, the registry's own table
PACKAGE = Path(backends.__file__).resolve().parents[1]  # .../chita_core


def _protocol_params(op: str) -> list[tuple[str, bool]]:
    """(name, has a default) for each parameter of ``Kernels.op``, without ``self``."""
    params = list(inspect.signature(getattr(Kernels, op)).parameters.values())[1:]
    return [(p.name, p.default is not inspect.Parameter.empty) for p in params]


def _import(name: str):
    """The backend module of ``name``, imported by its path; skips (registry's reason) if it
    cannot be imported here."""
    try:
        return importlib.import_module(MODULES[name])
    except ImportError as exc:
        reason = available_backends()[name] or str(exc)
        note = " (the cpp module needs the compiled _core)" if name == "cpp" else ""
        pytest.skip(f"{MODULES[name]} does not import here{note}: {reason}")


def test_registry_lists_every_backend_module():
    assert set(MODULES) == set(ALL)
    assert OPS and all(callable(getattr(Kernels, op)) for op in OPS)  # the Protocol's methods


# ----------------------------------------------------------------------------------------------
# Imported modules: every op, the Protocol's parameter names, isinstance(module, Kernels)
# ----------------------------------------------------------------------------------------------


def _split_top_level(text: str) -> list[str]:
    """Splits a parameter list at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:])
    return parts


def _params(fn) -> list[tuple[str, bool]] | None:
    """(name, has a default) for each parameter of ``fn``: from its signature, or for a pybind11
    function from the signature line that opens its ``__doc__``; None if neither is there."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        pass
    else:
        return [(p.name, p.default is not inspect.Parameter.empty) for p in sig.parameters.values()]
    first = (fn.__doc__ or "").strip().splitlines()[:1]
    m = re.match(rf"^{re.escape(fn.__name__)}\((.*)\)\s*->", first[0]) if first else None
    if m is None:  # e.g. "Overloaded function.": no single signature line
        return None
    out = []
    for part in _split_top_level(m.group(1)):
        name = part.split(":", 1)[0].split("=", 1)[0].strip()
        out.append((name, "=" in part))
    return out


@pytest.mark.parametrize("name", ALL)
def test_module_has_every_op_with_the_protocol_parameters(name):
    module = _import(name)
    missing = [op for op in OPS if not callable(getattr(module, op, None))]
    assert not missing, f"{module.__name__} lacks {missing}"
    exported = set(getattr(module, "__all__", OPS))
    assert set(OPS) <= exported, f"{module.__name__}.__all__ lacks {set(OPS) - exported}"
    for op in OPS:
        got = _params(getattr(module, op))
        if got is None:
            continue  # a compiled function without a signature line: its names are not visible
        assert got == _protocol_params(op), f"{module.__name__}.{op}: {got}"


@pytest.mark.parametrize("name", ALL)
def test_module_is_a_kernels_instance(name):
    module = _import(name)
    assert isinstance(module, Kernels), module.__name__


# ----------------------------------------------------------------------------------------------
# Static: the source of every backend module (no import: runs without CuPy, numba or _core)
# ----------------------------------------------------------------------------------------------


def _source_path(module: str) -> Path:
    parts = module.split(".")
    assert parts[0] == "chita_core", module
    return PACKAGE.joinpath(*parts[1:]).with_suffix(".py")


def _resolve(module: str, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    base = module.split(".")[:-level]
    return ".".join(base + ([target] if target else []))


def _static_params(module: str, op: str, depth: int = 0) -> list[tuple[str, bool]] | None:
    """(name, has a default) of ``op`` as ``module``'s source defines it: a top-level ``def``, or
    a name it imports from another module of the package (followed; ``_core`` through its
    ``_core.pyi``). None if the source has no such name."""
    if module == "chita_core._core":
        path = PACKAGE / "_core.pyi"
    else:
        path = _source_path(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == op:
            args = node.args
            names = [a.arg for a in args.posonlyargs + args.args]
            n_default = len(args.defaults)
            params = [(n, i >= len(names) - n_default) for i, n in enumerate(names)]
            params += [
                (a.arg, d is not None)
                for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
            ]
            return params
        if isinstance(node, ast.ImportFrom) and depth < 4:
            for alias in node.names:
                if (alias.asname or alias.name) == op:
                    source = (
                        _resolve(module, node.level, node.module) if node.level else node.module
                    )
                    return _static_params(source, alias.name, depth + 1)
    return None


def _static_all(module: str) -> set[str]:
    tree = ast.parse(_source_path(module).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


@pytest.mark.parametrize("name", ALL)
def test_module_source_defines_every_op(name):
    module = MODULES[name]
    for op in OPS:
        params = _static_params(module, op)
        assert params is not None, f"{module} neither defines nor imports `{op}`"
        assert params == _protocol_params(op), f"{module}.{op}: {params}"
    assert set(OPS) <= _static_all(module), (
        f"{module}.__all__ lacks {set(OPS) - _static_all(module)}"
    )


# ----------------------------------------------------------------------------------------------
# The shared step constants: one definition (constants.py), compiled into _core and _cuda
# ----------------------------------------------------------------------------------------------

# What CMakeLists.txt ("Shared constants") accepts: the same regexes as there.
_CMAKE_READS = re.compile(r"^(#:|[A-Z][A-Z0-9_]*[ ]*:)")
_CMAKE_DEF = re.compile(r"^([A-Z][A-Z0-9_]*): (int|float) = ([^#]+)$")
_CMAKE_VALUE = re.compile(r"^[0-9eE.+*<() -]+$")


def test_constants_file_keeps_the_format_cmake_parses():
    """Every shared constant is one line CMake turns into a constexpr (with a comment), its
    annotation matches its value, and CMake would read nothing else."""
    lines = Path(constants.__file__).read_text().splitlines()
    found, comment = {}, False
    for line in lines:
        if not _CMAKE_READS.match(line):
            continue
        # file(STRINGS) returns a CMake list: ';' or '[' in a line would split or join lines.
        assert ";" not in line and "[" not in line, f"CMake list syntax in {line!r}"
        if line.startswith("#:"):
            comment = True
            continue
        m = _CMAKE_DEF.match(line)
        assert m, f"CMake would fail on {line!r}"
        name, kind, value = m.group(1), m.group(2), m.group(3).strip()
        assert _CMAKE_VALUE.match(value), f"{name} = {value!r} is not a literal CMake accepts"
        assert comment, f"{name} has no '#:' comment for the header"
        assert eval(value, {"__builtins__": {}}) == getattr(constants, name)
        found[name] = kind
        comment = False
    assert sorted(found) == sorted(constants.__all__)
    for name, kind in found.items():
        value = getattr(constants, name)
        assert type(value) is {"int": int, "float": float}[kind], (name, value)


def test_core_was_built_with_the_python_constants():
    try:
        from chita_core import _core
    except ImportError:
        pytest.skip(f"no _core here: {available_backends()['cpp']}")
    compiled = _core.STEP_CONSTANTS
    assert compiled == constants.as_dict(), "rebuild _core (pip install .) after editing constants"
    assert {k: type(v) for k, v in compiled.items()} == {
        k: type(v) for k, v in constants.as_dict().items()
    }


def test_cuda_module_was_built_with_the_python_constants():
    try:
        cuda = importlib.import_module("chita_core._cuda")
    except ImportError as exc:
        pytest.skip(f"no _cuda module in this build ({exc})")
    assert cuda.STEP_CONSTANTS == constants.as_dict()


def test_numba_step_reads_the_shared_constants(monkeypatch):
    """The numba step takes its ladder lengths from constants.py at each call: with both ladders
    of length 0 a step that would change the support evaluates no candidate."""
    if importlib.util.find_spec("numba") is None:
        pytest.skip(f"numba backend unavailable: {available_backends()['numba']}")
    nk = _import("numba")
    rng = np.random.default_rng(0)
    n, p, k = 60, 200, 5
    A = rng.standard_normal((n, p)) / np.sqrt(n)
    b = rng.standard_normal(n)
    S = np.sort(rng.choice(p, size=k, replace=False)).astype(np.int64)
    w = np.zeros(p)
    w[S] = 0.1 * rng.standard_normal(k)
    r = ref.residual(A, b, w)
    g = ref.gradient(A, r, w, np.zeros(p), 0.0)
    f = ref.objective(A, b, w)
    expected = ref.chita_step(A, b, np.zeros(p), 0.0, g, w, r, S, f)
    assert expected.branch == "forward", expected.branch

    def step():
        state = (w.copy(), r.copy(), S.copy())
        return nk.chita_step(A, b, np.zeros(p), 0.0, g, *state, f)

    assert step()[2] == expected.n_candidates > 0
    monkeypatch.setattr(constants, "FORWARD_STEPS", 0)
    monkeypatch.setattr(constants, "BACKTRACK_STEPS", 0)
    assert step() == (f, 0.0, 0, False)
