"""Collectives of the sharded solver over a torch.distributed process group (docs/design.md,
section 12.1).

Every rank must take the same decisions (which columns enter, which step is accepted), so every
number a decision reads must be bit-identical on every rank. The reductions here do not rely on
the backend's reduction order for that: ``total`` gathers each rank's partial (n or n^2 numbers,
never a length-p vector) and adds them in rank order on every rank, which gives the same bits
everywhere and the same bits on gloo and NCCL. Errors found on one rank are exchanged before any
work (``agree``), so that every rank raises instead of the others waiting in a collective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Comm", "ShardError"]

# torch >= 2.12 names it all_gather_single (all_gather_into_tensor is deprecated there).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class ShardError(ValueError):
    """An input was bad on some rank: raised on every rank, naming the rank and the argument."""


@dataclass
class CommStats:
    """Collectives issued and bytes each rank sent into them (for the benchmark and the docs)."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0


class Comm:
    """The process group, this rank's place in it and the layout of the global columns: rank
    r owns columns offsets[r] : offsets[r + 1] of the global problem, in rank order."""

    def __init__(self, group: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "chita_core.distributed needs an initialised torch.distributed process group "
                "(torch.distributed.init_process_group, e.g. under torchrun)"
            )
        if group is getattr(dist.GroupMember, "NON_GROUP_MEMBER", object()):
            raise ValueError(
                "`group` does not contain this process (new_group returned NON_GROUP_MEMBER "
                "here): call chita_core.distributed (and prune with `group`) only on the ranks "
                "of the group"
            )
        if group is not None and not isinstance(group, dist.ProcessGroup):
            raise TypeError(
                "`group` must be a torch.distributed process group (e.g. "
                "torch.distributed.group.WORLD or one from torch.distributed.new_group) or None "
                f"for the default group, got {type(group).__name__}"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError(
                "`group` does not contain this process: call chita_core.distributed (and prune "
                "with `group`) only on the ranks of the group"
            )
        self.size = dist.get_world_size(group)
        backend = dist.get_backend(group)
        # NCCL reduces device tensors; the host partials go to the GPU and back.
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
        self.stats = CommStats()
        self.offsets: np.ndarray | None = None

    # -- plumbing --------------------------------------------------------------------------

    def _gather(self, x: np.ndarray) -> np.ndarray:
        """[size, *x.shape]: every rank's x (same shape and dtype on every rank)."""
        import time

        t0 = time.perf_counter()
        src = torch.from_numpy(np.ascontiguousarray(x).reshape(-1)).to(self.device)
        out = torch.empty(self.size * src.numel(), dtype=src.dtype, device=self.device)
        _all_gather(out, src, group=self.group)  # (flat: gloo wants 1-D)
        self.stats.calls += 1
        self.stats.bytes += src.numel() * src.element_size()
        self.stats.seconds += time.perf_counter() - t0
        return out.cpu().numpy().reshape(self.size, *np.shape(x))

    def gather(self, x: Any) -> np.ndarray:
        """Every rank's array x (same shape and dtype on every rank), stacked in rank order."""
        return self._gather(np.asarray(x))

    def total(self, x: Any) -> Any:
        """The sum over ranks of x (a float, or an array of the same shape on every rank), added
        in rank order: the same bits on every rank."""
        parts = self._gather(np.asarray(x, dtype=np.float64))
        acc = parts[0].copy()
        for part in parts[1:]:
            acc += part
        return float(acc) if np.ndim(x) == 0 else acc

    def gather_ragged(self, x: np.ndarray) -> list[np.ndarray]:
        """Each rank's 1-D or 2-D array whose last axis differs by rank (columns of A, indices):
        padded to the longest and gathered; the list is in rank order."""
        counts = self._gather(np.asarray([x.shape[-1]], dtype=np.int64))[:, 0]
        width = int(counts.max())
        pad = np.zeros((*x.shape[:-1], width), dtype=x.dtype)
        pad[..., : x.shape[-1]] = x
        parts = self._gather(pad)
        return [parts[r][..., : int(counts[r])] for r in range(self.size)]

    # -- agreement -------------------------------------------------------------------------

    def agree(self, error: BaseException | None) -> None:
        """Raises on every rank if ``error`` is set on any: the first failing rank's message."""
        flags = self._gather(np.asarray([0 if error is None else 1], dtype=np.int64))[:, 0]
        bad = np.flatnonzero(flags)
        if bad.size == 0:
            return
        messages: list[Any] = [None] * self.size
        dist.all_gather_object(
            messages, None if error is None else f"{type(error).__name__}: {error}", self.group
        )
        first = int(bad[0])
        others = f" (and ranks {', '.join(map(str, bad[1:]))})" if bad.size > 1 else ""
        raise ShardError(f"rank {first}{others}: {messages[first]}") from error

    def same(self, x: np.ndarray, name: str) -> None:
        """ShardError on every rank unless x has the same shape and bits on every rank."""
        shapes = self._gather(np.asarray([x.size], dtype=np.int64))[:, 0]
        if np.any(shapes != shapes[0]):
            raise ShardError(
                f"`{name}` must be the same on every rank; lengths by rank: {shapes.tolist()}"
            )
        parts = self._gather(np.ascontiguousarray(x).view(np.uint8))
        differ = [r for r in range(self.size) if not np.array_equal(parts[r], parts[0])]
        if differ:
            raise ShardError(
                f"`{name}` must be the same on every rank; ranks {differ} differ from rank 0"
            )

    def layout(self, p_local: int) -> np.ndarray:
        """offsets [size + 1] of the ranks' column blocks (rank order)."""
        counts = self._gather(np.asarray([p_local], dtype=np.int64))[:, 0]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return self.offsets

    @property
    def p(self) -> int:
        assert self.offsets is not None
        return int(self.offsets[-1])

    @property
    def lo(self) -> int:
        assert self.offsets is not None
        return int(self.offsets[self.rank])
