"""Memory planning for chita_core.torch.prune: what A and the solver need, against what the
device has, decided before any gradient work (docs/design.md, section 8.3)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GiB = float(1 << 30)
#: Bytes per selected weight beyond A: the solver's O(p) float64 vectors (about 13 of them at
#: the peak of ``chita_core.iht``, measured with tracemalloc: gradient, iterates, column norms,
#: candidate supports, masks) and the adapter's own per-stage copies (w_bar, the solution of
#: each ridge candidate, the masks).
BYTES_PER_WEIGHT = 16 * 8
#: Per-sample gradients held at once while A is built (the vmap chunk), and the n x n float64
#: algebra (Grams, their factors and inverses: a few at once).
CHUNK_BYTES = 256 << 20
GRAM_COPIES = 8
#: The share of the available memory a default plan may use (the rest: the model, the
#: framework, the allocator's slack).
DEFAULT_SHARE = 0.85
#: What n_grads=None asks for when it fits.
DEFAULT_N_GRADS = 1000


@dataclass(frozen=True)
class MemoryPlan:
    n_grads: int  #: samples in A
    a_bytes: int  #: A itself
    solver_bytes: int  #: everything else the plan counts (vectors, the vmap chunk, n x n)
    limit: int  #: bytes the plan may use
    workspace_bytes: int  #: what is left for the solver's workspaces (greedy OBS)


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device``: MemAvailable (Linux) or the physical memory on the host,
    ``torch.cuda.mem_get_info`` on a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def fixed_bytes(n: int, p: int) -> int:
    """What the plan counts beside A for n samples of p weights: the O(p) vectors, the vmap
    chunk (at most CHUNK_BYTES: a chunk holds about 3 copies of its samples' float32
    gradients) and the n x n algebra."""
    chunk = min(CHUNK_BYTES, 3 * 4 * n * p)
    return BYTES_PER_WEIGHT * p + chunk + GRAM_COPIES * 8 * n * n


def plan_memory(
    n_grads: int | None, p: int, itemsize: int, device: torch.device, memory_limit: int | None
) -> MemoryPlan:
    """The plan for A (n_grads x p entries of ``itemsize`` bytes) and the solver within
    ``memory_limit`` bytes (None: 85% of the device's free memory). ``n_grads=None`` takes
    DEFAULT_N_GRADS samples, or as many as fit; an explicit ``n_grads`` that does not fit, or a
    limit too small for one sample, is a ValueError naming what would fit."""
    if memory_limit is None:
        limit = int(DEFAULT_SHARE * available_bytes(device))
        where = f"{DEFAULT_SHARE:.0%} of the {device.type} memory available now"
    else:
        limit = int(memory_limit)
        where = "memory_limit"

    def need(n: int) -> int:
        return n * p * itemsize + fixed_bytes(n, p)

    def fits(size: int) -> int:  # the largest n that fits with A in `size`-byte entries
        lo, hi = 0, max(1, limit // max(1, p * size))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if mid * p * size + fixed_bytes(mid, p) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return lo

    n = n_grads
    if n is None:
        n = min(DEFAULT_N_GRADS, fits(itemsize))
    if n < 1 or need(n) > limit:
        options = ", ".join(
            f"n_grads <= {fits(size):,} with A in {name}"
            for name, size in (("float32", 4), ("bfloat16 (a_dtype=torch.bfloat16)", 2))
        )
        raise ValueError(
            f"`n_grads`={n:,} samples x {p:,} weights need {n * p * itemsize / GiB:.2f} GiB "
            f"for A ({itemsize}-byte entries) plus {fixed_bytes(n, p) / GiB:.2f} GiB for the "
            f"solver, more than {limit / GiB:.2f} GiB ({where}); what fits: {options}. Pass a "
            "smaller `n_grads`, a 16-bit `a_dtype`, prune fewer tensors (`params`), or raise "
            "`memory_limit`"
        )
    a_bytes = n * p * itemsize
    solver = fixed_bytes(n, p)
    return MemoryPlan(n, a_bytes, solver, limit, max(0, limit - a_bytes - solver))
