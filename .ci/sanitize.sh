#!/usr/bin/env bash
# Sanitizer run: builds the C++ extension `_core` with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option CHITA_SANITIZE) into a temporary directory -- never over the installed package --
# and runs the kernel tests, the backend contract tests (incl. the compiled step constants) and the
# fast solver tests against that build, cpp backend only.
# Exits non-zero on a failed test, on any sanitizer report, or if the tests did not import the
# sanitized module.
#
#   bash .ci/sanitize.sh            (about 2-4 minutes on 2 cores; CHITA_SANITIZE_KEEP=1 keeps the
#                                    build directory and prints where it is)
#
# Notes:
# - Python itself is not instrumented, so libasan is preloaded (LD_PRELOAD) and leak detection is
#   off (CPython and numpy keep allocations alive until exit by design).
# - The numba backend is deselected (-k 'not numba'): it never calls _core, and its LLVM JIT under
#   a preloaded ASan runtime only costs time. torch/jax are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$SECONDS

work=$(mktemp -d "${TMPDIR:-/tmp}/chita-sanitize.XXXXXX")
if [[ "${CHITA_SANITIZE_KEEP:-0}" == 1 ]]; then
  trap 'echo "sanitize.sh: build kept in $work"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi
site="$work/site"

echo "== sanitize.sh: building _core with -fsanitize=address,undefined into $site"
# Build isolation fetches scikit-build-core/pybind11 from the package index unless they are
# installed already, in which case the build uses them directly (faster, works offline).
isolation=()
if python -c "import scikit_build_core, pybind11" 2>/dev/null; then
  isolation=(--no-build-isolation)
fi
CHITA_CUDA=OFF CHITA_NATIVE=OFF python -m pip install --quiet --no-deps "${isolation[@]}" \
  --target "$site" \
  -C cmake.define.CHITA_SANITIZE=ON \
  -C cmake.define.CHITA_CUDA=OFF \
  -C cmake.define.CHITA_NATIVE=OFF \
  -C cmake.build-type=Debug \
  -C build-dir="$work/build" \
  "$root"
echo "   built in $((SECONDS - start)) s"

shopt -s nullglob
mods=("$site"/chita_core/_core*.so)
shopt -u nullglob
if [[ ${#mods[@]} -ne 1 ]]; then
  echo "sanitize.sh: expected one _core module under $site/chita_core, found ${#mods[@]}" >&2
  exit 1
fi
mod=${mods[0]}
# The module must really be instrumented: ASan's and UBSan's runtime entry points are undefined
# symbols of every instrumented object, and the runtimes are among its shared-library dependencies.
undefined=$(nm -D --undefined-only "$mod")  # (not piped into grep -q: SIGPIPE under pipefail)
if ! grep -q '__asan_report_load' <<<"$undefined"; then
  echo "sanitize.sh: $mod has no __asan_report_* references: not built with ASan" >&2
  exit 1
fi
if ! grep -q '__ubsan_handle_' <<<"$undefined"; then
  echo "sanitize.sh: $mod has no __ubsan_handle_* references: not built with UBSan" >&2
  exit 1
fi
ldd "$mod" | grep -E 'libasan|libubsan' | sed 's/^/   /'

# ASan's runtime must be the first library loaded. libstdc++ is preloaded right after it: python
# does not link it, and ASan's __cxa_throw interceptor resolves the real function when the
# runtime starts, so without it the first C++ exception (a ValueError from _core) aborts with
# "CHECK failed: ... real___cxa_throw".
asan_rt=$(gcc -print-file-name=libasan.so)
cxx_rt=$(gcc -print-file-name=libstdc++.so.6)
for lib in "$asan_rt" "$cxx_rt"; do
  if [[ ! -e "$lib" ]]; then
    echo "sanitize.sh: runtime library not found: $lib (from gcc -print-file-name)" >&2
    exit 1
  fi
done

# A pytest plugin (loaded with -p) that refuses to run unless chita_core and its _core come from
# the sanitized build. tests/conftest.py imports chita_core from sys.path, where PYTHONPATH (below)
# puts the sanitized build ahead of any installed copy (an editable install's import hook would
# still win: run this from a regular install, as .ci/run does).
# An editable install of the checkout (pip install -e .) puts an import hook for chita_core on
# sys.meta_path, ahead of every sys.path entry: the plugin drops it before chita_core is imported.
cat >"$work/chita_sanitized_check.py" <<EOF
import os
import sys


def _editable_chita_finder(finder):
    module = finder.__module__ if isinstance(finder, type) else type(finder).__module__
    return "editable" in module and "chita_core" in module


sys.meta_path[:] = [f for f in sys.meta_path if not _editable_chita_finder(f)]

import chita_core
import chita_core._core as core

SITE = os.path.realpath("$site")


def pytest_configure(config):
    for mod in (chita_core, core):
        where = os.path.realpath(mod.__file__)
        if not where.startswith(SITE + os.sep):
            raise RuntimeError(f"{mod.__name__} imported from {where}, not from the sanitized build {SITE}")
    if "sanitized" not in core.build_info:
        raise RuntimeError(f"_core.build_info does not say sanitized: {core.build_info}")


def pytest_report_header(config):
    return [f"sanitized _core: {os.path.realpath(core.__file__)}", f"  {core.build_info}"]
EOF

# Run from the scratch folder, so that the checkout's own chita_core/ (first on sys.path under
# `python -m pytest` from the repository root) cannot shadow the sanitized copy. pytest still
# finds the repository's pyproject.toml (rootdir, filterwarnings = error) from the test paths.
log="$work/pytest.log"
status=0
(
  cd "$work"
  export PYTHONPATH="$work:$site"
  export LD_PRELOAD="$asan_rt:$cxx_rt"
  export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
  export PYTHONFAULTHANDLER=1
  # --capture=sys: pytest's default fd-level capture would swallow a report written to fd 2 by a
  # process that the sanitizer then ends; this way reports reach the log as they happen.
  python -m pytest -p chita_sanitized_check -p no:cacheprovider --capture=sys \
    -k "not numba" -m "not slow" \
    "$root/tests/test_kernels.py" "$root/tests/test_backend_contract.py" "$root/tests/test_solver.py"
) 2>&1 | tee "$log" || status=$?  # (pipefail: the status of pytest, unless tee failed)

# Belt and braces: a report must fail the run even if something swallowed the exit status.
if grep -qE 'ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer' "$log"; then
  echo "sanitize.sh: sanitizer report found in the test output" >&2
  [[ $status -eq 0 ]] && status=1
fi
echo "== sanitize.sh: exit status $status, $((SECONDS - start)) s in all"
exit "$status"
