"""The planner and the pipeline (docs/design.md, section 6).

``plan`` is the only place that decides which stages run and with what budget. It prices each
stage with a cost model (bytes read from A over the memory bandwidth, multiply-adds over the BLAS
rate, and a per-step interpreter overhead for the stages that loop in Python) and fits the
stages into a budget of ``effort`` times the modeled cost of magnitude + backsolve (never below
``effort * MIN_BUDGET_PER_EFFORT`` seconds, where everything is cheap anyway). Stages that do
not fit are left out.
The rates are reference rates measured on the development machine (``HOST_RATES``), so a plan
depends only on the problem's shape and the options and results are reproducible; a
``time_limit`` in seconds is priced with the rates measured in this process
(``measure_rates``), and the benchmarks compare both against measured stage times. ``run``
executes the plan; every stage offers points and the context keeps the best one.

Every cost constant lives in this module; the operation counts of a stage's algorithm live next
to it (``stages/greedy.py: greedy_cost``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from ._point import Point
from .stages.greedy import (
    GreedyColumns,
    GreedyOBS,
    greedy_cost,
    greedy_screen_size,
    workspace_itemsize,
)
from .stages.iht import IHT, IHTColumns
from .stages.nspace import REFINE_STEPS, largest
from .stages.starts import EXHAUSTIVE_MAX_P, EXHAUSTIVE_MAX_SUPPORTS, OBS, Exhaustive, Magnitude
from .stages.swaps import N_CANDIDATES, POOL_FACTOR, POOL_ROUNDS, SwapColumns, Swaps

__all__ = [
    "DEFAULT_EFFORT",
    "Context",
    "Options",
    "Plan",
    "PlannedStage",
    "Rates",
    "Stage",
    "StageRecord",
    "measure_rates",
    "plan",
    "run",
]

#: Default ``effort``: the planned time of the whole pipeline, as a multiple of the modeled time
#: of magnitude + backsolve on the same problem.
DEFAULT_EFFORT = 3.0
#: Budget floor in seconds per unit of ``effort`` (0.75 s at the default): on problems where
#: magnitude + backsolve takes milliseconds every stage fits (the stages size themselves by the
#: problem, not by the budget). Digits-MLP gradients, 64-256-256-10, p = 84,480, 90%: a 0.8 s
#: floor gave greedy OBS 9,992 columns (-4.87% against magnitude + backsolve, 4.9x its time),
#: 0.75 s gives it 9,858 (-4.77%, 4.5x); on the 64-256-10 gradients of bench/quality.py a 0.5 s
#: floor cut greedy OBS to 31.7% of the weights instead of 35.3% at 90%.
MIN_BUDGET_PER_EFFORT = 0.25
#: Share of ``effort`` times the modeled magnitude + backsolve that the stages are planned
#: into: measured stage times scatter about +-15% around the model on a shared machine, and the
#: validation pass over A is not a stage, so planning the whole multiple would overshoot it
#: (gaussian 1000 x 268,336: 2.98x to 3.14x measured at effort 3 with a full share; 0.85 plans
#: 10 swap rounds instead of 14, -2.12% instead of -2.16% against magnitude + backsolve).
_PLANNED_SHARE = 0.85
# IHT iterations in the pipeline and alone (refine=False); swap search's defaults.
PIPELINE_ITERS = 30
PLAIN_ITERS = 100
SWAP_ROUNDS = 20
DEFAULT_SWAPS = 2000
# Share of the budget left after the start that greedy OBS may take (swap search gets what it
# leaves): where it fits it is the stage that lowers f most on real gradients (digits MLP at
# 90%: -4.9% against magnitude + backsolve, swap search after it -0.02%); IHT runs (when the
# start is a reasonable support) only on what greedy OBS and swaps leave.
_GREEDY_SHARE = 1.0
# Swap search needs a few rounds to pay for forming its n x n inverse.
_MIN_SWAP_ROUNDS = 3
# Modeled IHT: expansion rounds (each a full gradient and ten thresholded candidates).
_IHT_EXPANSIONS = 2
# Interpreter overhead, in units of one small NumPy operation (``Rates.op``): per swap applied
# (score matrix, rank-2 updates) and per greedy removal (pool scores, rank-1 updates).
_OPS_PER_SWAP = 40.0
# Greedy OBS's products are GEMMs with one narrow side (a block of 32 to 128 columns): they run
# at about this fraction of the SYRK rate (measured 1.35 s against 1.05 s modeled at the full
# rate, digits MLP gradients, m = 9,978, float64 workspace, every update applied per block).
# With the deferred updates of x, d and K^-1 (one wider GEMM each few blocks) that is 1.25x
# higher, and with float32 A, whose float32 workspace makes the passes SGEMMs, 1.9x (0.75 to
# 0.98 s measured against 0.75 s modeled at m = 9,978).
_GREEDY_BLAS_EFFICIENCY = 0.75
_OPS_PER_REMOVAL = 25.0
_OPS_PER_ROUND = 100.0
# init="auto": one-shot OBS saliencies (n^2 p multiply-adds) run where greedy OBS does not
# fit; multistep OBS (about 2.5x that) also when it fits.
_MULTISTEP_FACTOR = 2.5


class StageRecord(NamedTuple):
    """One line of ``IHTResult.stages``: the best objective after a stage's candidate."""

    stage: str
    objective: float
    seconds: float


class PlannedStage(NamedTuple):
    """One line of ``IHTResult.plan``: a stage the planner chose, its modeled and measured time."""

    stage: str
    modeled: float
    seconds: float


class Stage(Protocol):
    """A pipeline stage: reads the context (problem, k, start vector, best point so far) and
    offers candidate points through ``ctx.offer``; the context keeps the best.

    Optional, read by :func:`run` with ``getattr``: ``if_budget`` (True: the stage runs only if
    the budget left when its turn comes, in modeled seconds, covers its modeled cost) and
    ``repriced(model, k)`` (the modeled cost of the work the stage actually did, e.g. swap
    search that stopped early; otherwise its planned cost counts)."""

    name: str

    def run(self, ctx: Context) -> None: ...


@dataclass
class Plan:
    """What :func:`plan` decided: the stages in order with their modeled seconds, the budget
    they were fitted into and the cost model that priced them (``run`` re-prices executed
    stages with it). Iterates as (stage, modeled) pairs."""

    stages: list[tuple[Stage, float]]
    budget: float = math.inf
    model: CostModel | None = None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, i: int) -> tuple[Stage, float]:
        return self.stages[i]


# ---------------------------------------------------------------------------------- rates


@dataclass(frozen=True)
class Rates:
    """What the cost model is calibrated to, measured on this machine."""

    bandwidth: float  # bytes/s a kernel pass over A reads
    scattered: float  # bytes/s a support pass over scattered columns reads (F order)
    flops: float  # float64 multiply-adds/s of a BLAS GEMM
    op: float  # seconds of one small NumPy operation (interpreter + dispatch)


#: The rates the planner prices ``effort`` budgets with, so that a plan (and the result) depends
#: on the problem and the options only, not on the machine or its load: measured on the 2-core
#: machine this project is developed on, with A of 1 GB (bench/README.md, "Cost at scale").
#: A pass over A, a pass over 10% of its columns scattered, a SYRK of Gram panels, one small
#: NumPy operation. ``time_limit`` budgets use the rates measured in the process instead.
HOST_RATES = Rates(bandwidth=30e9, scattered=11e9, flops=40e9, op=1e-6)
#: The same for a GPU (an H100/H200: HBM passes, cuBLAS float64, a kernel launch from Python).
DEVICE_RATES = Rates(bandwidth=2.5e12, scattered=1.2e12, flops=4e13, op=1.5e-5)

_RATES: dict[str, Rates] = {}


def measure_rates(prob: Any) -> Rates:
    """The rates of ``prob``'s backend, measured once per process (about 30 ms): a column-norm
    pass over a 32 MiB float32 matrix and a support mat-vec over every 10th of its columns, a
    1024 x 1024 float64 SYRK (``X @ X.T``, as the Gram's panels) and a loop of small NumPy
    operations, each the best of three."""
    key = prob.backend
    if key not in _RATES:
        _RATES[key] = _measure(prob)
    return _RATES[key]


def _best_of(fn: Callable[[], Any], sync: Callable[[], Any], repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return max(best, 1e-9)


def _measure(prob: Any) -> Rates:
    xp, kernels = prob.xp, prob.kernels
    sync = _synchronizer(xp)
    rows, cols = 1024, 8192  # 32 MiB of float32, F order; 4 KiB columns, as at n = 1000
    M = xp.asfortranarray(xp.ones((rows, cols), dtype=np.float32))
    out = xp.empty(cols)
    if prob.where is None:
        mat = M
    else:  # the CUDA kernels take a device matrix
        from ._device import device_matrix

        mat = device_matrix(M)[0]
    kernels.column_sqnorms(mat, out)  # warm-up (numba compiles here)
    bandwidth = M.nbytes / _best_of(lambda: kernels.column_sqnorms(mat, out), sync)
    every10 = xp.arange(0, cols, 10, dtype=np.int64)
    y, part = xp.ones(rows), xp.empty(every10.size)
    kernels.support_rmatvec(mat, every10, y, part)  # warm-up
    seconds = _best_of(lambda: kernels.support_rmatvec(mat, every10, y, part), sync)
    scattered = rows * every10.size * 4 / seconds
    X = xp.ones((1024, 1024))  # a Gram panel at n = 1000: SYRK through X @ X.T
    flops = 0.5 * 1024.0 * 1024 * 1024 / _best_of(lambda: X @ X.T, sync)
    v = xp.ones(64)

    def small_ops() -> None:
        for _ in range(200):
            v.__iadd__(1.0)

    op = _best_of(small_ops, sync) / 200
    return Rates(bandwidth, min(scattered, bandwidth), flops, op)


def _synchronizer(xp: Any) -> Callable[[], Any]:
    if xp is np:
        return lambda: None
    return lambda: xp.cuda.get_current_stream().synchronize()


# ---------------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class CostModel:
    """Modeled seconds of each stage on one problem (docs/design.md, section 6)."""

    n: int
    p: int
    itemsize: int
    f_order: bool
    rates: Rates

    def full_pass(self) -> float:
        return self.n * self.p * self.itemsize / self.rates.bandwidth

    def cols_pass(self, m: float) -> float:
        """A support mat-vec over m columns: those columns in F order (at the scattered-column
        rate below half of them), whole rows in C order."""
        if not self.f_order:
            return self.full_pass()
        rate = self.rates.scattered if 2 * m < self.p else self.rates.bandwidth
        return self.n * m * self.itemsize / rate

    def gather(self, m: float) -> float:
        """m columns gathered into float64 (read, write, and the BLAS read of the copy)."""
        return self.cols_pass(m) + 16 * self.n * m / self.rates.bandwidth + self.rates.op

    def gram(self, m: float) -> float:
        """A_S A_S^T over m columns: panel gathers and SYRK (n^2 m / 2 multiply-adds)."""
        return self.gather(m) + 0.5 * self.n * self.n * m / self.rates.flops

    def refit(self, m: float) -> float:
        """The exact point on m columns: the Gram, its Cholesky factor (n^3 / 6 multiply-adds;
        the inverse, n^3 / 3 more from the factor, is priced by the stage that asks for it)
        and the passes over the support."""
        n, F = float(self.n), self.rates.flops
        passes = 4 * self.cols_pass(m)  # c, the rmatvec of y, the residual, one refinement
        if m <= n:
            return self.gather(m) + (0.5 * n * m * m + m**3 / 6.0) / F + passes
        return self.gram(m) + n**3 / 6.0 / F + passes + 20 * self.rates.op

    def magnitude(self, k: int) -> float:
        return self.refit(k) + 8 * self.p / self.rates.bandwidth

    def obs(self, multistep: bool) -> float:
        n, p = float(self.n), float(self.p)
        one = self.gram(p) + 2 * self.gather(p) + (n**3 + 2 * n * n * p) / self.rates.flops
        return one * (_MULTISTEP_FACTOR if multistep else 1.0)

    def iht(self, k: int, iters: int, sigma_known: bool) -> float:
        active = min(self.p, max(k, 1.5 * k))
        power = 0.0 if sigma_known else 8 * self.full_pass()
        per_iter = 2 * self.cols_pass(active) + self.cols_pass(k) + 30 * self.rates.op
        expansion = self.full_pass() + 10 * self.cols_pass(k) + 30 * self.rates.op
        return (
            power
            + 2 * self.full_pass()
            + iters * per_iter
            + _IHT_EXPANSIONS * expansion
            + self.refit(k)
        )

    def greedy(self, k: int, m: int, known: int = 0) -> float:
        # (float32 A: the passes over the workspace run in SGEMM, twice the float64 rate)
        efficiency = _GREEDY_BLAS_EFFICIENCY * (1.9 if self.itemsize == 4 else 1.25)
        flops = efficiency * self.rates.flops
        return (
            self.gather(m)
            + greedy_cost(self.n, k, m, known) / flops
            + (m - k) * _OPS_PER_REMOVAL * self.rates.op
        )

    def swaps(self, k: int, rounds: int, swaps: int, have_inverse: bool) -> float:
        """Swap search (stages/swaps.py): per round the candidates' columns, their n-space
        products and the update of K^-1; every POOL_ROUNDS + 1 rounds a full gradient pass and
        the exact point on the support; per swap its pair scores and rank-2 updates (memory
        traffic of the candidate-sized and n x candidates matrices, plus interpreter
        overhead); finally the refinement on the end support."""
        n, F, B, op = float(self.n), self.rates.flops, self.rates.bandwidth, self.rates.op
        c = 2 * N_CANDIDATES
        # K^-1 from the start's factor (potri), or a new Gram, factor and inverse
        setup = n**3 / 3.0 / F if have_inverse else self.gram(k) + n**3 / 2.0 / F
        per_swap = (N_CANDIDATES**2 * 8 + 3 * 8 * n * c) / B + _OPS_PER_SWAP * op
        per_round = (
            self.gather(c)
            + self.cols_pass(POOL_FACTOR * N_CANDIDATES)
            + (n * n * c + n * c * c + n * n * N_CANDIDATES) / F
            + 3 * 8 * n * n / B
            + 4 * 8 * self.p / B
            + _OPS_PER_ROUND * op
        )
        per_full = self.full_pass() + 2 * self.cols_pass(k) + 6 * 8 * self.p / B
        finish = (2 * REFINE_STEPS + 2) * self.cols_pass(k) + 2 * REFINE_STEPS * n * n / F
        return (
            setup
            + rounds * per_round
            + math.ceil(rounds / (POOL_ROUNDS + 1)) * per_full
            + swaps * per_swap
            + finish
        )

    def expected_swaps(self, rounds: int, max_swaps: int) -> int:
        """Swaps a search of ``rounds`` rounds makes, for the model (most rounds apply about
        three quarters of their entering candidates)."""
        return int(min(max_swaps, rounds * 0.75 * N_CANDIDATES))


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """The solver options of :func:`chita_core.iht`, validated."""

    max_iter: int | None  # None: the planner's default
    tol: float
    init: str
    active_set: bool
    refine: bool
    max_swaps: int | None  # None: swaps=True, the planner sizes the search
    effort: float
    time_limit: float | None
    memory_limit: int | None = None  # bytes of workspace beyond A and the O(p) vectors


# ---------------------------------------------------------------------------------- plan


def plan(prob: Any, k: int, start: Any, opts: Options, *, nonzeros: int | None = None) -> Plan:
    """The stages to run, in order, each with its modeled seconds.

    Of ``prob`` it reads the shape, ``itemsize``, ``f_order``, ``where``, ``ridge`` and
    ``sigma2_known`` (and the kernels, only for a ``time_limit``); of ``start`` only its number
    of nonzeros, which ``nonzeros`` gives instead where ``start`` is not the whole vector (a
    rank's slice: chita_core.distributed passes a view of the global problem and the global
    count)."""
    if not opts.refine:  # plain IHT from the thresholded start
        max_iter = PLAIN_ITERS if opts.max_iter is None else opts.max_iter
        stage = IHT(max_iter, opts.tol, opts.active_set, refine=False)
        return Plan([(stage, 0.0)])
    if opts.time_limit is not None:  # a budget in seconds: this machine's rates
        rates = measure_rates(prob)
    else:
        rates = HOST_RATES if prob.where is None else DEVICE_RATES
    model = CostModel(prob.n, prob.p, prob.itemsize, prob.f_order, rates)
    starts: list[tuple[Stage, float]] = [(Magnitude(), model.magnitude(k))]
    baseline = starts[0][1]
    budget = opts.effort * max(_PLANNED_SHARE * baseline, MIN_BUDGET_PER_EFFORT)
    if opts.time_limit is not None:
        budget = min(budget, opts.time_limit)
    left = budget - baseline
    room = k < prob.p  # anything to choose at all

    # Start supports beyond magnitude.
    greedy = None
    if room and opts.init == "greedy":
        m = _within_memory(prob, k, greedy_screen_size(prob.n, prob.p, k, math.inf),
                           opts.memory_limit)  # fmt: skip
        greedy = (GreedyOBS(m), model.greedy(k, m)) if m is not None else None
    elif room and opts.init == "auto":
        # The magnitude refit keeps its support's Gram (push-through, ridge > 0), which greedy
        # OBS's superset contains: its SYRK is not paid twice.
        known = k if prob.ridge > 0 and k > prob.n else 0
        m = _greedy_size(model, k, _GREEDY_SHARE * left, known)
        m = _within_memory(prob, k, m, opts.memory_limit)
        greedy = (GreedyOBS(m), model.greedy(k, m, known)) if m is not None else None
    if room and opts.init in ("obs", "obs_multistep"):
        multistep = opts.init == "obs_multistep"
        starts.append((OBS(multistep), model.obs(multistep)))
    elif room and opts.init == "auto" and greedy is None:
        for multistep in (True, False):
            if model.obs(multistep) <= left:
                starts.append((OBS(multistep), model.obs(multistep)))
                break
    if room and opts.init == "auto" and prob.where is None:
        if prob.p <= EXHAUSTIVE_MAX_P and math.comb(prob.p, k) <= EXHAUSTIVE_MAX_SUPPORTS:
            starts.append((Exhaustive(), 0.0))
    left -= sum(cost for _, cost in starts[1:])
    if greedy is not None:
        left -= greedy[1]

    # Swap search: the user's budget, or as many rounds as fit (at least a few).
    swaps = None
    kept = prob.ridge > 0 and k > prob.n  # the start's refit keeps the factor of K
    if room and (opts.max_swaps is None or opts.max_swaps > 0):

        def swap_cost(rounds: int, budget: int) -> float:
            return model.swaps(k, rounds, model.expected_swaps(rounds, budget), kept)

        if opts.max_swaps is not None:
            stage = Swaps(opts.max_swaps, SWAP_ROUNDS, have_inverse=kept)
            swaps = (stage, swap_cost(SWAP_ROUNDS, opts.max_swaps))
        else:
            rounds = SWAP_ROUNDS
            while rounds > _MIN_SWAP_ROUNDS and swap_cost(rounds, DEFAULT_SWAPS) > left:
                rounds -= 1
            if swap_cost(rounds, DEFAULT_SWAPS) <= left:
                stage = Swaps(DEFAULT_SWAPS, rounds, have_inverse=kept)
                swaps = (stage, swap_cost(rounds, DEFAULT_SWAPS))
        if swaps is not None:
            left -= swaps[1]

    # IHT: always when asked for (max_iter) or when the start is no support at all (fewer than
    # k nonzeros, e.g. no w_bar); otherwise when what the other stages leave pays for it.
    iters = PIPELINE_ITERS if opts.max_iter is None else opts.max_iter
    iht_cost = model.iht(k, iters, prob.sigma2_known)
    if nonzeros is None:
        nonzeros = int(prob.xp.count_nonzero(start))
    degenerate = nonzeros < k
    iht = None
    if opts.max_iter is not None or degenerate or iht_cost <= left:
        iht = (IHT(iters, opts.tol, opts.active_set, refine=True), iht_cost)
        left -= iht_cost

    # Swap search from IHT's support too (a second basin; skipped at run time when there is
    # none), with the default budget, where what the stages before it left at run time covers
    # it: swap search often stops long before its planned rounds (no improving swap left), and
    # its modeled cost is then re-priced by the rounds and swaps it made.
    second = None
    if swaps is not None and iht is not None and opts.max_swaps is None:
        stage = Swaps(
            DEFAULT_SWAPS, swaps[0].max_rounds, from_iht=True, have_inverse=True, if_budget=True
        )
        second = (stage, swaps[1])

    stages = list(starts)
    stages += [s for s in (iht, greedy, swaps, second) if s is not None]
    return Plan(stages, budget, model)


#: Greedy OBS's peak workspace over its gathered n x m columns: the columns themselves plus
#: the transient products of a block (about half as much again, measured with tracemalloc).
GREEDY_WORKSPACE_FACTOR = 1.5


def greedy_workspace_bytes(prob: Any, m: int) -> int:
    """Peak bytes greedy OBS allocates for a superset of ``m`` columns (its n x m workspace)."""
    return int(GREEDY_WORKSPACE_FACTOR * workspace_itemsize(prob) * prob.n * m)


def _within_memory(prob: Any, k: int, m: int | None, limit: int | None) -> int | None:
    """``m`` capped so that greedy OBS's workspace fits ``limit`` bytes (None: no cap); None when
    not even k + 1 columns fit."""
    if m is None or limit is None:
        return m
    per_column = greedy_workspace_bytes(prob, 1)
    cap = int(limit // max(1, per_column))
    return min(m, cap) if cap > k else None


def _greedy_size(model: CostModel, k: int, seconds: float, known: int = 0) -> int | None:
    """The largest greedy superset whose modeled time fits ``seconds`` (bisection), or None when
    not even a superset of k + max(32, n/4) columns fits (below that the n x n algebra, paid
    whatever m is, buys too few removals)."""
    n, p = model.n, model.p
    hi = greedy_screen_size(n, p, k, math.inf)
    if hi is None:
        return None
    lo = min(hi, k + max(32, n // 4))
    if model.greedy(k, lo, known) > seconds:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if model.greedy(k, mid, known) <= seconds:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------------------- run


@dataclass
class Context:
    """What the stages share: the problem, k, the start vector and the best point so far, and
    the operations on the problem's columns that the stages take from it rather than from the
    kernels (``largest``, ``same_support``, ``iht_columns``, ``swap_columns``,
    ``greedy_columns``), so that a context over column shards (chita_core.distributed) runs the
    same stages on the global problem."""

    prob: Any
    k: int
    start: Any  # [p] float64, the vector whose top-k is the magnitude start
    on_iter: Callable[[int, float, float, float, bool], bool]
    log: Any = None
    seed: Point | None = None  # the magnitude + refit point, when the caller has it already
    best: Point | None = None
    iht_point: Point | None = None  # IHT's refit, where it beat every point before it
    records: list[StageRecord] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    stopped: bool = False  # the callback asked to stop: later stages do not run
    _since: float = field(default_factory=time.perf_counter)

    #: The IHT drivers' operations over all columns (stages/iht.py), built on the problem.
    iht_columns = IHTColumns
    #: Swap search's operations over all columns (stages/swaps.py), built on the problem.
    swap_columns = SwapColumns
    #: Greedy OBS's operations over all columns (stages/greedy.py), built on the problem.
    greedy_columns = GreedyColumns

    def largest(self, v: Any, k: int) -> Any:
        """Sorted indices of the k largest |v| (the kernels' topk: ties to the lower index)."""
        return largest(self.prob, v, k)

    def same_support(self, a: Any, b: Any) -> bool:
        """Whether the supports (sorted index vectors) ``a`` and ``b`` are the same."""
        return a.size == b.size and bool(self.prob.xp.array_equal(a, b))

    def point(self, support: Any, *, keep_inverse: bool = True, guess: Any = None) -> Point:
        """The exact refit on ``support`` (``guess``: see ``Point.refit``); the best point
        itself when it is on that support (a stage that lands on the best support does not
        solve it again)."""
        best = self.best
        if best is not None and self.same_support(best.support, support):
            return best
        return self.prob.point(support, keep_inverse=keep_inverse, guess=guess)

    def offer(self, label: str, point: Point, *, record: bool = True) -> None:
        """A candidate point: kept if it beats the best so far; recorded as a stage line."""
        if self.best is None or point.f < self.best.f:
            self.best = point
        if record:
            now = time.perf_counter()
            self.records.append(StageRecord(label, self.best.f, now - self._since))
            if self.log is not None:
                self.log.stage(label, self.best.f, now - self._since)
            self._since = now


def run(ctx: Context, stages: Plan) -> list[PlannedStage]:
    """Runs the plan in order (none after the callback asked to stop); returns each stage's
    modeled and measured seconds. A stage marked ``if_budget`` runs only if the plan's budget
    minus the modeled cost of the work done so far (each stage's ``repriced`` cost where it
    has one, else its planned cost) covers its modeled cost: deterministic, like the plan."""
    timings = []
    spent = 0.0
    for stage, modeled in stages:
        if ctx.stopped:
            break
        if getattr(stage, "if_budget", False) and spent + modeled > stages.budget:
            continue
        t = time.perf_counter()
        ctx._since = t
        stage.run(ctx)
        timings.append(PlannedStage(stage.name, modeled, time.perf_counter() - t))
        repriced = getattr(stage, "repriced", None)
        cost = repriced(stages.model, ctx.k) if repriced and stages.model else None
        spent += modeled if cost is None else cost
    return timings


class IterationLog:
    """The ``verbose=True`` progress lines of :func:`chita_core.iht`, written to stderr."""

    def __init__(self, backend: str, shape: tuple[int, int], k: int) -> None:
        self.t0 = time.perf_counter()
        print(
            f"chita_core.iht: n={shape[0]}, p={shape[1]}, k={k}, backend={backend}\n"
            f"{'iter':>6} {'objective':>14} {'rel. decrease':>14} {'step':>10} "
            f"{'support':>8} {'time (s)':>9}",
            file=sys.stderr,
        )

    def planned(self, stages: list[tuple[Stage, float]]) -> None:
        names = ", ".join(f"{s.name} ({c:.2g} s)" for s, c in stages)
        print(f"  plan: {names}", file=sys.stderr)

    def stage(self, label: str, f_value: float, seconds: float) -> None:
        print(f"  stage {label}: objective {f_value:.6e} ({seconds:.2f} s)", file=sys.stderr)

    def line(self, it: int, f_old: float, f_new: float, tau: float, changed: bool) -> None:
        rel = (f_old - f_new) / max(abs(f_old), abs(f_new), 1.0)
        print(
            f"{it:>6} {f_new:>14.6e} {rel:>14.3e} {tau:>10.3e} "
            f"{'moved' if changed else 'kept':>8} {time.perf_counter() - self.t0:>9.2f}",
            file=sys.stderr,
        )
