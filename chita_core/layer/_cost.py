"""Cost model of the layer-wise stages (docs/design.md, section 14.7): seconds on the 2-core
machine the constants were measured on (``python -m bench.layer --model`` prints model against
measurement). The planner only compares stages with SparseGPT's modeled time, so the constants
matter through their ratios; the model is deterministic, so the plan (and the answer) does not
depend on the load of the machine.
"""

from __future__ import annotations

__all__ = [
    "greedy_seconds",
    "pcg_seconds",
    "refit_seconds",
    "sparsegpt_seconds",
    "swap_seconds",
    "sweep_seconds",
]

#: SparseGPT: seconds per column (the Python sweep), per row x column (the block-local rank-1
#: updates) and per d^3 (Cholesky, inverse, Cholesky of the inverse), fitted on seven shapes
#: from 128 x 512 to 384 x 1536 (within 25% on all but one).
SG_PER_COLUMN = 3.6e-5
SG_PER_ENTRY = 2.7e-7
SG_PER_CUBE = 1.15e-10
#: BLAS / LAPACK rate of one thread of the swap kernel (potrf, potri, GEMM), flops per second.
KERNEL_FLOPS = 2.5e10
#: Per row and factorisation: gathers and bookkeeping, seconds.
KERNEL_PER_ROW = 4e-5
#: One exchange costs this many seconds per entry of the (d - k) x k matrix C it updates (a
#: memory-bound pass; 1.1 to 1.9 ns measured from 128 to 768 inputs).
SWAP_PER_ENTRY = 1.5e-9
#: Exchanges per row from SparseGPT's mask, per input of the block (0.064 to 0.086 measured for
#: unstructured budgets, 0.07 to 0.11 for N:M).
SWAPS_PER_INPUT = 0.08
SWAPS_PER_INPUT_NM = 0.1
#: Two-thread GEMM rate (flops per second) of the sweep's updates and of conjugate gradients.
GEMM_FLOPS = 9e10
#: Blocked greedy OBS: seconds per multiply-add of its rows d^2 (d - k) (384 x 384 at 50%: 2.5 s)
#: and per step of 16 removals in a chunk of rows (kernel calls and bookkeeping: 24 inputs,
#: one step, 14 to 24 ms).
GREEDY_PER_MADD = 2.3e-10
GREEDY_PER_STEP = 5e-3
#: Conjugate-gradient steps of the refit after a sweep (warm-started).
PCG_STEPS = 25


def sparsegpt_seconds(rows: int, d: int) -> float:
    return SG_PER_COLUMN * d + SG_PER_ENTRY * rows * d + SG_PER_CUBE * d**3


def swap_seconds(rows: int, n: int, k: int, nm: bool, threads: int) -> float:
    """The swap search on ``n`` inputs keeping ``k`` per row: each row's factorisation
    (potrf, potri, the final potrf: 4/3 k^3; C = H_{J,K} H_KK^-1: 2 (n - k) k^2) and its
    exchanges."""
    if k <= 0 or k >= n:
        return KERNEL_PER_ROW * rows / threads
    per_row = (4.0 / 3.0 * k**3 + 2.0 * (n - k) * k * k) / KERNEL_FLOPS + KERNEL_PER_ROW
    swaps = (SWAPS_PER_INPUT_NM if nm else SWAPS_PER_INPUT) * n
    per_row += swaps * (n - k) * k * SWAP_PER_ENTRY
    return rows * per_row / threads


def sweep_seconds(rows: int, d: int, block: int, keep: float, m: int, threads: int) -> float:
    """The sweep of swap searches on blocks of ``block`` inputs (the last one the rest; m the
    N:M group, 0 for unstructured) keeping the fraction ``keep``, with each block's inverse
    and the update of the inputs after it (one GEMM)."""
    total = 0.0
    nm = m > 0
    for b0 in range(0, d, block):
        n = min(block, d - b0)
        total += swap_seconds(rows, n, round(keep * n), nm, threads)
        total += (n**3 + 2.0 * rows * n * (d - b0 - n)) / GEMM_FLOPS
    return total


def pcg_seconds(rows: int, d: int, steps: int = PCG_STEPS) -> float:
    """Conjugate gradients on all rows: per step one (rows x d) x (d x d) GEMM and about ten
    elementwise passes over (rows x d) (1 ns per entry)."""
    return steps * (2.0 * rows * d * d / GEMM_FLOPS + 1e-8 * rows * d)


def refit_seconds(rows: int, d: int, k: int, threads: int) -> float:
    """The exact refit: each row's Cholesky solve (k^3 / 3) in the kernel while k is at most
    ``_refit.DIRECT_MAX_K``, else conjugate gradients."""
    from ._refit import DIRECT_MAX_K

    if k > DIRECT_MAX_K:
        return pcg_seconds(rows, d)
    return rows * (k**3 / 3.0 / KERNEL_FLOPS + KERNEL_PER_ROW) / threads


def greedy_seconds(rows: int, d: int, k: int) -> float:
    chunks = -(-rows * d * d // int(8e6))
    steps = -(-(d - k) // 16)
    return GREEDY_PER_MADD * rows * d * d * (d - k) + GREEDY_PER_STEP * steps * chunks
