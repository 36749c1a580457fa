"""Bad input: every check raises TypeError (types/dtypes) or ValueError (values/shapes) naming
the argument, before any kernel runs (docs/design.md, section 10, STYLE.md item 7)."""

from __future__ import annotations

import types

import numpy as np
import pytest

import chita_core
from chita_core import BackendUnavailableError
from chita_core import backends as _backends
from chita_core.backends.protocol import OPS

N, P = 12, 20


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((N, P))
    return A, rng.standard_normal(N)


def _spy_backend(monkeypatch, name="cpp"):
    """Replaces backend `name` by a module whose kernels fail the test if called."""

    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran before validation finished")

    spy = types.SimpleNamespace(**dict.fromkeys(OPS, boom), num_threads=lambda: 1)
    _backends.available_backends()  # probe everything first
    monkeypatch.setitem(_backends._probes, name, _backends._Probe(spy, None))


def _all_entry_points(A, b, **kw):
    """Calls of the three public functions with the same problem arguments."""
    return {
        "iht": lambda: chita_core.iht(A, b, 3, **kw),
        "backsolve": lambda: chita_core.backsolve(A, b, [0, 1, 2], **kw),
        "objective": lambda: chita_core.objective(A, b, np.zeros(P), **kw),
    }


# ----------------------------------------------------------------------------------------------
# A
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_A", "exc"),
    [
        (lambda: np.ones(P), ValueError),  # 1-D
        (lambda: np.ones((2, N, P)), ValueError),  # 3-D
        (lambda: np.float64(1.0), ValueError),  # 0-D
        (lambda: np.ones((0, P)), ValueError),  # no rows
        (lambda: np.ones((N, 0)), ValueError),  # no columns
        (lambda: np.ones((N, P), dtype=np.int64), TypeError),
        (lambda: np.ones((N, P), dtype=np.int32), TypeError),
        (lambda: np.ones((N, P), dtype=np.complex128), TypeError),
        (lambda: np.ones((N, P), dtype=np.bool_), TypeError),
        (lambda: np.ones((N, P), dtype=np.uint16), TypeError),
        (lambda: np.ones((N, P), dtype=np.longdouble), TypeError),
        (lambda: np.ones((N, P), dtype=">f8"), TypeError),  # non-native byte order
        (lambda: np.ones((2 * N, 2 * P))[::2, ::2], ValueError),  # strided view
        (lambda: np.ones((N, 2 * P))[:, ::2], ValueError),
        (lambda: np.ones((N, P, 2))[:, :, 0], ValueError),
        (lambda: "not an array", (TypeError, ValueError)),  # becomes a 0-d str array
        (lambda: object(), TypeError),
    ],
    ids=[
        "1d",
        "3d",
        "0d",
        "no-rows",
        "no-cols",
        "int64",
        "int32",
        "complex",
        "bool",
        "uint16",
        "longdouble",
        "big-endian",
        "strided",
        "every-other-column",
        "interleaved",
        "str",
        "object",
    ],
)
def test_bad_A(monkeypatch, make_A, exc):
    _spy_backend(monkeypatch)
    A = make_A()
    b = np.zeros(N)
    for call in _all_entry_points(A, b, backend="cpp").values():
        with pytest.raises(exc, match="`A`"):
            call()


def test_strided_A_message_says_how_to_fix(data):
    _, b = data
    with pytest.raises(ValueError, match=r"ascontiguousarray|asfortranarray"):
        chita_core.iht(np.ones((2 * N, 2 * P))[::2, ::2], b, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("order", ["C", "F"])
def test_nonfinite_A(data, bad, order):
    A, b = data
    A = np.array(A, order=order)
    A[N // 2, P - 1] = bad
    for call in _all_entry_points(A, b).values():
        with pytest.raises(ValueError, match="`A` contains NaN or Inf"):
            call()


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("where", ["first", "last", "middle"], ids=["first", "last", "middle"])
def test_nonfinite_large_A_blocked_scan(order, where):
    # 300 x 5000 float64 = 12 MB, scanned by the column-norm pass: the first bad column named.
    n, p = 300, 5000
    A = np.zeros((n, p), order=order)
    chita_core.objective(A, np.zeros(n), np.zeros(p))  # no false positive
    i, j = {"first": (0, 0), "last": (n - 1, p - 1), "middle": (n // 2 + 7, p // 2 + 3)}[where]
    A[i, j] = np.nan
    with pytest.raises(ValueError, match=rf"`A` contains NaN or Inf \(first in column {j}\)"):
        chita_core.iht(A, np.zeros(n), 5)
    A[i, j] = np.inf
    with pytest.raises(ValueError, match="`A` contains NaN or Inf"):
        chita_core.objective(A, np.zeros(n), np.zeros(p))


@pytest.mark.slow
def test_nonfinite_large_float32_A_blocked_scan():
    n, p = 300, 7500  # 9 MB float32
    for order in "CF":
        A = np.zeros((n, p), dtype=np.float32, order=order)
        A[n - 1, p - 1] = np.nan
        with pytest.raises(ValueError, match="`A` contains NaN or Inf"):
            chita_core.iht(A, np.zeros(n, dtype=np.float32), 5)


# ----------------------------------------------------------------------------------------------
# b, w_bar, w0, w
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_b", "exc", "match"),
    [
        (lambda: np.zeros(N - 1), ValueError, rf"`b` must have length {N}.*got {N - 1}"),
        (lambda: np.zeros(N + 1), ValueError, "`b`"),
        (lambda: np.zeros((N, 1)), ValueError, "`b` must be 1-D"),
        (lambda: np.zeros((1, N)), ValueError, "`b`"),
        (lambda: np.zeros(N, dtype=np.float32), TypeError, "`b` has dtype float32"),
        (lambda: np.zeros(N, dtype=np.int64), TypeError, "`b`"),
        (lambda: np.zeros(N, dtype=np.complex128), TypeError, "`b`"),
        (lambda: np.full(N, np.nan), ValueError, "`b` contains NaN or Inf"),
        (lambda: np.r_[np.zeros(N - 1), np.inf], ValueError, "`b` contains NaN or Inf"),
        (lambda: None, TypeError, "`b`"),
    ],
    ids=["short", "long", "column", "row", "float32", "int", "complex", "nan", "inf", "none"],
)
def test_bad_b(monkeypatch, data, make_b, exc, match):
    _spy_backend(monkeypatch)
    A, _ = data
    for call in _all_entry_points(A, make_b(), backend="cpp").values():
        with pytest.raises(exc, match=match):
            call()


def test_float32_A_with_float64_b(data):
    A, b = data
    with pytest.raises(TypeError, match="`b` has dtype float64 but `A` has dtype float32"):
        chita_core.iht(A.astype(np.float32), b, 3)


@pytest.mark.parametrize("name", ["w_bar", "w0"])
@pytest.mark.parametrize(
    ("make_v", "exc", "match"),
    [
        (lambda: np.zeros(P - 1), ValueError, rf"must have length {P}"),
        (lambda: np.zeros((P, 1)), ValueError, "must be 1-D"),
        (lambda: np.zeros(P, dtype=np.float32), TypeError, "has dtype float32"),
        (lambda: np.zeros(P, dtype=np.int64), TypeError, ""),
        (lambda: np.r_[np.zeros(P - 1), np.nan], ValueError, "contains NaN or Inf"),
    ],
    ids=["short", "2d", "float32", "int", "nan"],
)
def test_bad_w_bar_w0(monkeypatch, data, name, make_v, exc, match):
    _spy_backend(monkeypatch)
    A, b = data
    with pytest.raises(exc, match=f"`{name}`.*{match}" if match else f"`{name}`"):
        chita_core.iht(A, b, 3, backend="cpp", **{name: make_v()})
    if name == "w_bar":
        with pytest.raises(exc, match="`w_bar`"):
            chita_core.backsolve(A, b, [1, 2], w_bar=make_v(), backend="cpp")
        with pytest.raises(exc, match="`w_bar`"):
            chita_core.objective(A, b, np.zeros(P), w_bar=make_v(), backend="cpp")


@pytest.mark.parametrize(
    ("w", "exc"),
    [
        (np.zeros(P + 1), ValueError),
        (np.zeros(P, dtype=np.float32), TypeError),
        (np.full(P, np.inf), ValueError),
        (np.zeros((P, 2)), ValueError),
    ],
    ids=["long", "float32", "inf", "2d"],
)
def test_bad_objective_w(data, w, exc):
    A, b = data
    with pytest.raises(exc, match="`w`"):
        chita_core.objective(A, b, w)


# ----------------------------------------------------------------------------------------------
# Scalars
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "exc", "match"),
    [
        (0, ValueError, rf"`k` must be in \[1, {P}\], got 0"),
        (-1, ValueError, "`k`"),
        (P + 1, ValueError, rf"`k` must be in \[1, {P}\], got {P + 1}"),
        (3.0, TypeError, "`k` must be an integer"),
        (np.float64(3.0), TypeError, "`k`"),
        (True, TypeError, "`k` must be an integer, got bool"),
        (np.bool_(True), TypeError, "`k`"),
        ("3", TypeError, "`k`"),
        (None, TypeError, "`k`"),
    ],
    ids=["zero", "negative", "p+1", "float", "np.float64", "bool", "np.bool_", "str", "none"],
)
def test_bad_k(monkeypatch, data, k, exc, match):
    _spy_backend(monkeypatch)
    A, b = data
    with pytest.raises(exc, match=match):
        chita_core.iht(A, b, k, backend="cpp")


def test_k_accepts_numpy_integers(data):
    A, b = data
    for k in (np.int64(P), np.int32(1), np.uint8(3)):
        assert len(chita_core.iht(A, b, k, max_iter=2).support) == int(k)


@pytest.mark.parametrize(
    ("ridge", "exc"),
    [
        (-1.0, ValueError),
        (-1e-300, ValueError),
        (np.nan, ValueError),
        (np.inf, ValueError),
        ("1", TypeError),
        (True, TypeError),
        (None, TypeError),
        (1j, TypeError),
        (np.array([1.0]), TypeError),
    ],
    ids=["negative", "tiny-negative", "nan", "inf", "str", "bool", "none", "complex", "array"],
)
def test_bad_ridge(monkeypatch, data, ridge, exc):
    _spy_backend(monkeypatch)
    A, b = data
    for call in _all_entry_points(A, b, ridge=ridge, backend="cpp").values():
        with pytest.raises(exc, match="`ridge`"):
            call()


def test_ridge_accepts_numpy_and_int(data):
    A, b = data
    ref = chita_core.iht(A, b, 3, ridge=2.0)
    for ridge in (2, np.float32(2.0), np.int64(2)):
        assert chita_core.iht(A, b, 3, ridge=ridge).history == ref.history


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"max_iter": -1}, ValueError, "`max_iter`"),
        ({"max_iter": 2.5}, TypeError, "`max_iter`"),
        ({"max_iter": True}, TypeError, "`max_iter`"),
        ({"tol": -1e-9}, ValueError, "`tol`"),
        ({"tol": np.nan}, ValueError, "`tol`"),
        ({"tol": "0"}, TypeError, "`tol`"),
        ({"callback": 5}, TypeError, "`callback` must be callable"),
        ({"callback": "print"}, TypeError, "`callback`"),
    ],
    ids=[
        "max_iter-neg",
        "max_iter-float",
        "max_iter-bool",
        "tol-neg",
        "tol-nan",
        "tol-str",
        "callback-int",
        "callback-str",
    ],
)
def test_bad_iht_options(monkeypatch, data, kw, exc, match):
    _spy_backend(monkeypatch)
    A, b = data
    with pytest.raises(exc, match=match):
        chita_core.iht(A, b, 3, backend="cpp", **kw)


# ----------------------------------------------------------------------------------------------
# backend
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "exc", "match"),
    [
        ("gpu", ValueError, "`backend` must be one of"),
        ("CPP", ValueError, "`backend`"),
        ("", ValueError, "`backend`"),
        (3, TypeError, "`backend` must be a string"),
        (None, TypeError, "`backend`"),
        ("cuda", ValueError, "needs `A` on a CUDA device"),
    ],
    ids=["unknown", "case", "empty", "int", "none", "cuda"],
)
def test_bad_backend(data, backend, exc, match):
    A, b = data
    for call in _all_entry_points(A, b, backend=backend).values():
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.parametrize("name", ["cpp", "numba"])
def test_explicit_unavailable_backend_raises_with_reason_and_fix(monkeypatch, data, name):
    A, b = data
    _backends.available_backends()
    monkeypatch.setitem(_backends._probes, name, _backends._Probe(None, "simulated: gone"))
    assert chita_core.available_backends()[name] == "simulated: gone"
    fix = {"cpp": "pip install", "numba": "pip install numba"}[name]
    for call in _all_entry_points(A, b, backend=name).values():
        with pytest.raises(BackendUnavailableError, match=f"{name}.*simulated: gone.*{fix}"):
            call()


def test_no_backend_at_all(monkeypatch, data):
    A, b = data
    for name in _backends.BACKENDS:
        monkeypatch.setitem(_backends._probes, name, _backends._Probe(None, f"no {name}"))
    with pytest.raises(BackendUnavailableError, match=r"no CPU backend.*no cpp.*no numba"):
        chita_core.iht(A, b, 3)
    assert issubclass(BackendUnavailableError, RuntimeError)


# ----------------------------------------------------------------------------------------------
# support (backsolve)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("support", "exc", "match"),
    [
        ([0, P], ValueError, rf"`support` indices must be in \[0, {P}\).*got {P}"),
        ([-1, 3], ValueError, "`support`.*got -1"),
        ([3, 1, 3], ValueError, "`support` indices must be distinct, got 3"),
        (np.array([], dtype=np.int64), ValueError, "`support` must not be empty"),
        ([], (TypeError, ValueError), "`support`"),
        ([0.0, 1.0], TypeError, "`support` must be an integer array"),
        (np.array([1.5, 2.0]), TypeError, "`support`"),
        (np.array([True, False]), TypeError, "`support`"),
        (np.array([[0, 1]]), ValueError, "`support` must be 1-D"),
        (np.int64(2), ValueError, "`support`"),
        ("0,1", TypeError, "`support`"),
    ],
    ids=[
        "p",
        "negative",
        "duplicate",
        "empty",
        "empty-list",
        "float-list",
        "float-array",
        "bool",
        "2d",
        "scalar",
        "str",
    ],
)
def test_bad_support(monkeypatch, data, support, exc, match):
    _spy_backend(monkeypatch)
    A, b = data
    with pytest.raises(exc, match=match):
        chita_core.backsolve(A, b, support, backend="cpp")


# ----------------------------------------------------------------------------------------------
# check_finite
# ----------------------------------------------------------------------------------------------


def test_check_finite_false_skips_the_scan(data):
    # The scan is the column-norm pass: with check_finite=False a NaN goes unseen (and the
    # entry points return whatever the arithmetic gives, without raising about it).
    A, b = data
    A = A.copy()
    A[1, 2] = np.nan
    for call in _all_entry_points(A, b, check_finite=False).values():
        try:
            call()
        except ValueError as exc:  # iht still refuses a non-finite objective, but unscanned
            assert "contains NaN" not in str(exc)
    for call in _all_entry_points(A, b).values():
        with pytest.raises(ValueError, match=r"`A` contains NaN or Inf \(first in column 2\)"):
            call()


def test_check_finite_false_accepts_nonfinite(data):
    A, b = data
    A = np.asfortranarray(A)
    A[:, P - 1] = np.nan  # a column no one reads: F order reads only the support's columns
    b_nan = b.copy()
    b_nan[0] = np.nan
    w = np.zeros(P)
    w[[0, 3]] = 1.0
    with pytest.raises(ValueError, match="`A`"):
        chita_core.objective(A, b, w)
    f = chita_core.objective(A, b, w, check_finite=False)
    assert np.isfinite(f)
    assert np.isnan(chita_core.objective(A[:, :-1], b_nan, w[:-1], check_finite=False))
    wb = chita_core.backsolve(A, b, [0, 3], check_finite=False)
    assert np.all(np.isfinite(wb[[0, 3]]))


def test_error_messages_name_received_value(data):
    A, b = data
    with pytest.raises(ValueError, match=rf"`A` has {P} columns|got {P - 1}"):
        chita_core.iht(A, b, 3, w_bar=np.zeros(P - 1))
    with pytest.raises(ValueError, match=r"got -0\.5"):
        chita_core.iht(A, b, 3, ridge=-0.5)
    with pytest.raises(TypeError, match="int8"):
        chita_core.iht(A.astype(np.int8), b, 3)
