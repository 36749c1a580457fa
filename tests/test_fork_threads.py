"""Fork- and thread-safety of the CPU backends, and read-only inputs.

Every test that forks or starts threads runs in a fresh interpreter with a timeout, so a hang
(GNU OpenMP's thread pool after fork) or an abort (numba's workqueue layer entered from two
threads) fails the test instead of hanging or killing the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import chita_core

_AVAILABLE = chita_core.available_backends()
needs_cpp = pytest.mark.skipif(_AVAILABLE["cpp"] is not None, reason=str(_AVAILABLE["cpp"]))
needs_numba = pytest.mark.skipif(_AVAILABLE["numba"] is not None, reason=str(_AVAILABLE["numba"]))
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available")

# Large enough that every kernel takes its parallel path (2 threads or more).
_PRELUDE = """
import os, sys, threading
import numpy as np
import chita_core

rng = np.random.default_rng(0)
A = np.asfortranarray(rng.standard_normal((200, 4000)))
b = A @ rng.standard_normal(4000)

def solve(backend="cpp"):
    res = chita_core.iht(A, b, 10, backend=backend)
    return float(res.objective), tuple(res.support.tolist())

def same(x, y):
    return x[1] == y[1] and abs(x[0] - y[0]) <= 1e-9 * abs(y[0])

def wait_child(pid):
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sys.exit("child killed by signal %d" % os.WTERMSIG(status))
    assert os.WEXITSTATUS(status) == 0, "child exit status %d" % os.WEXITSTATUS(status)
"""


# The children run in tests/: in the repository root `python -c` would put the source tree (no
# compiled _core) ahead of the installed package on sys.path.
_CHILD_CWD = os.path.dirname(os.path.abspath(__file__))


def _run(code: str, *, timeout: float = 60, env: dict[str, str | None] | None = None) -> str:
    """Runs ``code`` after the prelude in a fresh interpreter; returns its stdout."""
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    script = _PRELUDE + textwrap.dedent(code)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environ,
            cwd=_CHILD_CWD,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung (killed after {timeout} s); stdout: {exc.stdout!r}")
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc.stdout


# ----------------------------------------------------------------------------------------------
# cpp backend (OpenMP) after fork
# ----------------------------------------------------------------------------------------------

_FORK_CHILD = """
parent = solve({backend!r})
pid = os.fork()
if pid == 0:
    try:
        ok = same(solve({backend!r}), parent)
        os.write(1, b"child ok\\n" if ok else b"child differs\\n")
        os._exit(0 if ok else 1)
    except BaseException as exc:
        os.write(2, repr(exc).encode())
        os._exit(1)
wait_child(pid)
print("parent ok")
"""


@needs_cpp
@needs_fork
def test_cpp_fork_child_after_parent_ran():
    out = _run(_FORK_CHILD.format(backend="cpp"), timeout=30)
    assert "child ok" in out and "parent ok" in out


@needs_cpp
@needs_fork
def test_cpp_fork_pool():
    out = _run(
        """
        import multiprocessing as mp
        parent = solve()
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(solve, ["cpp"] * 4)
        assert all(same(g, parent) for g in got), got
        print("pool ok")
        """,
        timeout=30,
    )
    assert "pool ok" in out


@needs_cpp
@needs_fork
def test_cpp_thread_in_forked_child():
    # Threads started in the child get a fresh OpenMP pool; the forking thread runs one thread.
    # show_config says so in the child, and not in the parent.
    out = _run(
        """
        import io
        parent = solve()
        assert not chita_core.config().get("forked_child")
        pid = os.fork()
        if pid == 0:
            try:
                got = []
                t = threading.Thread(target=lambda: got.append(solve()))
                t.start()
                t.join()
                got.append(solve())
                buf = io.StringIO()
                chita_core.show_config(buf)
                ok = len(got) == 2 and all(same(g, parent) for g in got)
                ok = ok and "forked child: kernels single-threaded" in buf.getvalue()
                os.write(1, b"child ok\\n" if ok else (repr(got) + buf.getvalue()).encode())
                os._exit(0 if ok else 1)
            except BaseException as exc:
                os.write(2, repr(exc).encode())
                os._exit(1)
        wait_child(pid)
        """,
        timeout=30,
    )
    assert "child ok" in out


# ----------------------------------------------------------------------------------------------
# numba backend: fork, Python threads, and the threading layer
# ----------------------------------------------------------------------------------------------


@needs_numba
@needs_fork
def test_numba_fork_child_after_parent_ran():
    # Default layer choice (NUMBA_THREADING_LAYER unset): must be fork-safe.
    out = _run(_FORK_CHILD.format(backend="numba"), timeout=60)
    assert "child ok" in out


_THREADS = """
ref = {{b: solve(b) for b in {backends!r}}}
jobs = {backends!r} * (4 // len({backends!r}))
got = [None] * len(jobs)
def work(i):
    got[i] = solve(jobs[i])
ts = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
for t in ts:
    t.start()
for t in ts:
    t.join()
assert all(g == ref[j] for g, j in zip(got, jobs)), (got, ref)
import numba
print("threads ok", numba.threading_layer())
"""


@needs_numba
@pytest.mark.parametrize("layer", [None, "workqueue"], ids=["default-layer", "workqueue"])
def test_numba_four_python_threads(layer):
    out = _run(
        _THREADS.format(backends=["numba"]), timeout=60, env={"NUMBA_THREADING_LAYER": layer}
    )
    assert "threads ok" in out
    if layer is not None:
        assert out.split()[-1] == layer  # the user's explicit choice is kept


@needs_numba
@needs_cpp
def test_mixed_cpp_and_numba_threads():
    out = _run(_THREADS.format(backends=["cpp", "numba"]), timeout=60)
    assert "threads ok" in out


@needs_numba
@needs_fork
def test_numba_fork_while_another_thread_holds_the_kernel_lock():
    # A fork taken while another thread is inside a serialised numba kernel must not leave the
    # child waiting on a lock that nobody in the child will release.
    out = _run(
        """
        from chita_core.backends import numba_kernels as _numba
        parent = solve("numba")
        held, release = threading.Event(), threading.Event()
        def holder():
            with _numba._kernel_lock:
                held.set()
                release.wait()
        t = threading.Thread(target=holder)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            try:
                ok = same(solve("numba"), parent)
                os._exit(0 if ok else 1)
            except BaseException as exc:
                os.write(2, repr(exc).encode())
                os._exit(1)
        wait_child(pid)
        release.set()
        t.join()
        print("child ok")
        """,
        timeout=60,
        env={"NUMBA_THREADING_LAYER": "workqueue"},
    )
    assert "child ok" in out


@needs_numba
@needs_fork
@pytest.mark.parametrize("parent_used_numba", [True, False])
def test_numba_gnu_omp_layer_in_forked_child_raises(parent_used_numba):
    # The user's own numba code started the GNU OpenMP layer (here through their explicit
    # NUMBA_THREADING_LAYER=omp): a forked child cannot run numba's parallel kernels; chita_core
    # raises instead of numba killing the child, whether the parent had used the numba backend
    # or the child imports it for the first time.
    out = _run(
        """
        PARENT_USED_NUMBA = os.environ["PARENT_USED_NUMBA"] == "1"
        import numba
        from numba.np.ufunc import omppool
        if omppool.openmp_vendor != "GNU":
            print("skip: OpenMP vendor", omppool.openmp_vendor)
            sys.exit(0)

        @numba.njit(parallel=True)
        def user_kernel(x):
            s = 0.0
            for i in numba.prange(x.shape[0]):
                s += x[i]
            return s

        user_kernel(np.ones(100000))
        assert numba.threading_layer() == "omp"
        if PARENT_USED_NUMBA:
            parent = solve("numba")  # fine in the process that started the layer
        assert PARENT_USED_NUMBA == ("chita_core.backends.numba_kernels" in sys.modules)
        pid = os.fork()
        if pid == 0:
            try:
                solve("numba")
            except RuntimeError as exc:
                ok = "fork" in str(exc) and "OpenMP" in str(exc)
                os.write(1, b"raised\\n" if ok else str(exc).encode())
                os._exit(0 if ok else 1)
            except BaseException as exc:
                os.write(2, repr(exc).encode())
                os._exit(1)
            os._exit(1)
        wait_child(pid)
        """,
        timeout=60,
        env={"NUMBA_THREADING_LAYER": "omp", "PARENT_USED_NUMBA": str(int(parent_used_numba))},
    )
    if out.startswith("skip:"):
        pytest.skip(out.strip())
    assert "raised" in out


# ----------------------------------------------------------------------------------------------
# Read-only inputs (np.load(mmap_mode="r"), flags.writeable = False)
# ----------------------------------------------------------------------------------------------


def _readonly_cases():
    # cpp: each kind of argument on its own and all at once. numba compiles separate
    # specialisations for read-only arrays (cached on disk afterwards), so it gets the one case
    # that makes every input read-only at once.
    cases = [("cpp", what) for what in ("A", "vectors", "support", "all")] + [("numba", "all")]
    return [
        pytest.param(
            backend,
            what,
            id=f"{backend}-{what}",
            marks=pytest.mark.skipif(
                _AVAILABLE[backend] is not None, reason=str(_AVAILABLE[backend])
            ),
        )
        for backend, what in cases
    ]


@pytest.fixture(scope="module")
def ro_problem():
    rng = np.random.default_rng(7)
    n, p = 40, 300
    A = rng.standard_normal((n, p)) / np.sqrt(n)
    w_bar = rng.standard_normal(p)
    b = A @ w_bar + 0.01 * rng.standard_normal(n)
    support = np.sort(rng.choice(p, 25, replace=False)).astype(np.int64)
    return A, b, w_bar, support


def _readonly(x, how, tmp_path, name, order="C"):
    x = np.asarray(x, order=order)
    if how == "flag":
        x = x.copy(order="K")
        x.flags.writeable = False
        return x
    path = tmp_path / f"{name}.npy"
    np.save(path, x)
    return np.load(path, mmap_mode="r")


def _solve_all(A, b, w_bar, w0, support, backend):
    res = chita_core.iht(A, b, 12, ridge=0.05, w_bar=w_bar, w0=w0, max_iter=20, backend=backend)
    w = chita_core.backsolve(A, b, support, ridge=0.05, w_bar=w_bar, backend=backend)
    f = chita_core.objective(A, b, w, ridge=0.05, w_bar=w_bar)
    return res, w, f


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("how", ["flag", "mmap"])
@pytest.mark.parametrize(("backend", "what"), _readonly_cases())
def test_readonly_inputs(ro_problem, tmp_path, backend, what, dtype, order, how):
    """Read-only inputs give exactly the results of the same values in writable arrays."""
    A0, b0, wb0, s0 = ro_problem
    A = np.asarray(A0, dtype=dtype, order=order)
    b, w_bar, w0 = (np.asarray(v, dtype=dtype) for v in (b0, wb0, wb0 * 0.9))
    ref_res, ref_w, ref_f = _solve_all(A, b, w_bar, w0, s0.copy(), backend)

    support = s0.copy()
    if what in ("A", "all"):
        A = _readonly(A, how, tmp_path, "A", order)
        assert not A.flags.writeable
        assert A.flags.f_contiguous if order == "F" else A.flags.c_contiguous
    if what in ("vectors", "all"):
        b = _readonly(b, how, tmp_path, "b")
        w_bar = _readonly(w_bar, how, tmp_path, "w_bar")
        w0 = _readonly(w0, how, tmp_path, "w0")
    if what in ("support", "all"):
        support = _readonly(support, how, tmp_path, "support")
    res, w, f = _solve_all(A, b, w_bar, w0, support, backend)

    np.testing.assert_array_equal(res.support, ref_res.support)
    np.testing.assert_array_equal(res.w, ref_res.w)
    assert res.objective == ref_res.objective
    np.testing.assert_array_equal(w, ref_w)
    assert f == ref_f
