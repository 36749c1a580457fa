"""The constants of the CHITA step that every backend shares: the one place they are defined.

The step (contract: ``chita_core/_core.pyi``) must take the same decisions in every backend, so
its thresholds and step-size ladders are defined here once and read by all three:

- numba: ``backends/numba_kernels.py`` imports these names and passes them to its jitted step as
  arguments (numba's on-disk cache would freeze a global at its value when the kernel was first
  compiled, and an edit of this file alone would not invalidate that cache).
- C++ and CUDA: CMake reads this file at configure time (``file(STRINGS)`` + a regex,
  CMakeLists.txt, "Shared constants") and writes the header ``chita/constants.hpp`` into the
  build directory (``<build>/generated``, on the include path of ``_core`` and ``_cuda``) from
  ``csrc/include/chita/constants.hpp.in``: one ``constexpr`` per constant, in
  ``namespace chita::constants``, named ``k`` + CamelCase (``FORWARD_STEPS`` -> ``kForwardSteps``),
  with the comment above it here. Editing this file re-runs the CMake configure step.
  The compiled modules export the values they were built with as ``STEP_CONSTANTS``
  (``_core.STEP_CONSTANTS``, ``_cuda.STEP_CONSTANTS``), and tests/test_backend_contract.py asserts
  that they equal the values here.

Why generate the header from Python rather than parse the header from Python: an installed wheel
carries this file but not the C++ sources, and the numba backend must work without any compiled
module, so the Python file is the one that is always there.

Format (parsed by CMake, keep to it): one ``NAME: int = value`` or ``NAME: float = value`` per
line at column 0, each preceded by its ``#:`` comment lines; ``value`` is a numeric literal
expression that means the same in Python and C++ (digits, ``.``, ``e``, ``+``, ``-``, ``*``,
``<<``, parentheses), e.g. ``1.0 + 1e-4`` (both languages round it to the same double).

Not shared on purpose: the parallel-work thresholds and radix digit widths of each backend
(``kParallelWork``, ``_PAR_WORK``, topk's digit bits). They only pick how a backend splits its
work; no decision of the step depends on them.
"""

from __future__ import annotations

__all__ = ["BACKTRACK_STEPS", "FORWARD_STEPS", "LADDER_FACTOR", "STATIONARY", "TAU_CHG_SHRINK"]

#: Stationarity threshold of the step: when max |g_S| <= STATIONARY * max_{j not in S} |g_j| the
#: support is treated as stationary (tau_star = 0). At an exact refit g_S is rounding noise, and
#: a step along it would make every later decision depend on rounding.
STATIONARY: float = 1e-12

#: The forward ladder starts just below the support-changing step: base = tau_chg / TAU_CHG_SHRINK
#: (when tau_chg is finite), so that its first candidate still keeps the support if it can.
TAU_CHG_SHRINK: float = 1.0 + 1e-4

#: Candidates on the forward ladder at most: tau = base * LADDER_FACTOR**j, j < FORWARD_STEPS,
#: stopping at the first that does not improve the best objective so far.
FORWARD_STEPS: int = 5

#: Candidates on the backtracking ladder at most (run only when the forward ladder accepted
#: nothing): tau = tau_star / LADDER_FACTOR**j, j < BACKTRACK_STEPS, taking the first improvement.
BACKTRACK_STEPS: int = 5

#: Ratio between consecutive step sizes on both ladders (a power of two: the steps are exact).
LADDER_FACTOR: float = 2.0


def as_dict() -> dict[str, int | float]:
    """``{name: value}`` of every shared constant (what ``_core.STEP_CONSTANTS`` must equal)."""
    return {name: globals()[name] for name in __all__}
