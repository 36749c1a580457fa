"""chita_core.torch.prune(..., group=): the samples split over the ranks of a process group, A
over their columns (docs/design.md, section 12.2).

On every rank r of R, each calling ``prune`` with the same model and arguments and its own data:

1. agreement: the arguments, and the model (a digest of every parameter and buffer, gathered),
   so that a mismatch raises on every rank instead of leaving the others in a collective;
2. rank r draws its n_r samples (``n_grads`` split as evenly as possible in rank order) and
   computes their per-sample gradients with the single-process code: its rows of A (n_r x p, F
   order, scaled by 1 / sqrt(n) with the global n = sum n_r), a round of rows at a time;
3. an all-to-all (``torch.distributed.all_to_all_single``, gloo and NCCL) turns each round's
   rows into column blocks: rank r ends with A_local = the rows of all n samples (rank order) on
   its columns ``edges[r]:edges[r + 1]`` (p split as evenly as possible, in parameter order; with
   ``per_layer`` at the tensor boundaries nearest that split), each round moving about
   CHUNK_BYTES, so no rank holds all of its rows;
4. the solve runs over the shards through :mod:`chita_core.distributed` (b = A w_bar is a
   reduction of the ranks' partial products), or with ``per_layer`` each tensor's problem on
   the rank that holds it; each candidate of the ridge path is judged by the loss on the
   samples summed over the ranks, so every rank keeps the same one;
5. every rank gathers the solution's slices and masks (p numbers, as the model holds anyway)
   and writes back the same weights and masks as the single-process prune;
6. with ``stages > 1`` the single-process schedule (``_prune._stages``) repeats 2-5 at the
   pruned weights, the one-shot candidate included.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import distributed
from .._point import Point
from ..distributed import Shard, ShardError
from ..distributed._comm import Comm
from ._gradients import _draw, _gradient_matrix, _Progress
from ._memory import CHUNK_BYTES, DEFAULT_SHARE, GiB, available_bytes, plan_memory
from ._prune import _METHODS, PruneReport, _finish, _stages, _workspace
from ._solve import LocalStage, _matvec64, _mean_loss

#: Arguments of distributed.iht that the adapter sets itself.
_SET_HERE = ("A_local", "b", "k", "ridge", "w_bar", "group", "backend")


def prune_sharded(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    selected: Any,
    holders: Any,
    *,
    group: Any,
    sparsity: float,
    targets: list[float],
    n_grads: int | None,
    ridge: float | None,
    per_layer: bool,
    method: str,
    backend: str,
    progress: bool,
    chunk_size: int | None,
    val_data: Any,
    a_dtype: torch.dtype | None,
    memory_limit: int | None,
    solver_options: dict[str, Any],
) -> PruneReport:
    """:func:`chita_core.torch.prune` on every rank of ``group`` (its arguments checked by
    ``prune``; ``targets`` its schedule; see the module's docstring)."""
    comm = Comm(group)
    par0 = selected[0][3]
    sizes = [par.numel() for *_, par in selected]
    p = sum(sizes)
    itemsize = (a_dtype or par0.dtype).itemsize
    settings = [sparsity, np.nan if ridge is None else ridge, len(targets), per_layer,
                _METHODS.index(method), n_grads or -1, p, itemsize, *targets]  # fmt: skip
    comm.same(np.asarray(settings, dtype=np.float64),
              "prune's arguments (sparsity, ridge, stages, schedule, per_layer, method, n_grads, "
              "the selected tensors' sizes, a_dtype)")  # fmt: skip
    if par0.device.type != "cpu":
        raise NotImplementedError(
            "chita_core.torch.prune with `group`: the sharded solver works on host arrays, so "
            f"the model must be on the CPU (over gloo); it is on {par0.device}"
        )
    if p < comm.size and not per_layer:
        raise ValueError(
            f"the selected tensors hold {p} weights, fewer than the {comm.size} ranks of "
            "`group`: every rank needs a column of the global problem (use fewer ranks, or "
            "per_layer=True, where a rank may own no tensor)"
        )
    _same_model(comm, model)
    options = _sharded_options(method, per_layer, solver_options)
    edges = column_edges(p, comm.size, sizes if per_layer else None)
    memory, share = _plan(comm, n_grads, p, edges, itemsize, par0.device, memory_limit)
    error = samples = held = None
    try:
        samples = _draw(data, share, par0.device, exact=n_grads is not None)
        held = samples if val_data is None else _draw(val_data, None, par0.device, "val_data")
    except (TypeError, ValueError) as exc:
        error = exc
    comm.agree(error)
    counts = comm.gather(np.asarray([samples.n], dtype=np.int64))[:, 0]
    n = int(counts.sum())
    if n < memory.n_grads:  # the data had fewer (n_grads=None): the plan for those
        memory = _rank_plan(n, p, edges, itemsize, par0.device, memory.limit)
    options["memory_limit"] = _workspace(memory, len(targets), method, selected)
    lo, hi = int(edges[comm.rank]), int(edges[comm.rank + 1])
    if "w0" in options and not per_layer:  # the rank's slice of a whole start
        options["w0"] = options["w0"][lo:hi]
    local_sizes = _sizes_within(sizes, lo, hi) if per_layer else []
    show = progress and comm.rank == 0

    def build(k: int, target: float, w_bar: torch.Tensor) -> tuple[_Shards, float]:
        t0 = time.perf_counter()
        A_local = sharded_gradients(comm, model, loss_fn, samples, selected, chunk_size, show,
                                    a_dtype, counts, edges)  # fmt: skip
        t1 = time.perf_counter()
        kind = _LayerShards if per_layer else _GlobalShards
        return kind.build(comm, A_local, w_bar, edges, k, target, local_sizes, backend), t1 - t0

    kept, reports, one_shot = _stages(model, loss_fn, held, selected, targets, method, ridge,
                                      options, build, n, show)  # fmt: skip
    return _finish(selected, holders, kept, reports, n, memory, method, one_shot, stacklevel=4)


def _sizes_within(sizes: list[int], lo: int, hi: int) -> list[int]:
    """The sizes of the tensors (``sizes``, in order) whose columns lie in lo:hi (a rank's
    block with ``per_layer``, whose edges are tensor boundaries)."""
    out, off = [], 0
    for size in sizes:
        if lo <= off and off + size <= hi:
            out.append(size)
        off += size
    assert sum(out) == hi - lo, "per_layer blocks end at tensor boundaries"
    return out


def column_edges(p: int, ranks: int, sizes: list[int] | None = None) -> np.ndarray:
    """[ranks + 1] bounds of the ranks' column blocks, in rank order: p split as evenly as
    possible (the first p % ranks blocks one column longer); with ``sizes`` (the tensors' sizes,
    for ``per_layer``) at tensor boundaries, each the one nearest the even split (the lower on a
    tie), so that every tensor's problem lies on one rank (a rank may own none)."""
    r = np.arange(ranks + 1, dtype=np.int64)
    even = r * (p // ranks) + np.minimum(r, p % ranks)
    if sizes is None:
        return even
    bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    right = np.minimum(np.searchsorted(bounds, even), bounds.size - 1)
    left = np.maximum(right - 1, 0)
    nearer = np.where(even - bounds[left] <= bounds[right] - even, left, right)
    return bounds[np.maximum.accumulate(nearer)]


#: Bytes a rank holds beside its block and the solver (the single-process plan's): one round's
#: gradient rows, the exchange's send and receive buffers (about CHUNK_BYTES each), and per
#: weight the adapter's whole vectors (w_bar, a candidate's w gathered in float64 and in the
#: model's dtype, its mask, the one-shot candidate's weights and mask).
EXCHANGE_BUFFERS = 3
WHOLE_BYTES_PER_WEIGHT = 24


def _plan(
    comm: Comm,
    n_grads: int | None,
    p: int,
    edges: np.ndarray,
    itemsize: int,
    device: torch.device,
    memory_limit: int | None,
) -> tuple[Any, int]:
    """(the memory plan, this rank's sample count): the single-process plan of the widest
    rank's block (a sample costs every rank its block's width in entries), within the smallest
    rank's limit less what the exchange and the whole vectors hold (so the plan is the same on
    every rank), and the planned n split as evenly as possible in rank order."""
    limit = memory_limit
    if limit is None:
        limit = int(DEFAULT_SHARE * available_bytes(device))
    limit = int(comm.gather(np.asarray([limit], dtype=np.int64)).min())
    try:
        memory = _rank_plan(n_grads, p, edges, itemsize, device, limit)
    except ValueError as exc:  # the same on every rank (the same inputs)
        raise ValueError(
            f"with `group`, per rank: of its {limit / GiB:.2f} GiB, {_beside(p) / GiB:.2f} GiB "
            "go to the exchange buffers and the whole vectors, and the rest must hold its block "
            f"of A ({int(np.diff(edges).max()):,} columns at the widest) and the solver: {exc}"
        ) from None
    n = memory.n_grads
    if n < comm.size:
        raise ValueError(
            f"`n_grads`={n} with `group` of {comm.size} ranks: every rank needs a sample"
        )
    return memory, n // comm.size + int(comm.rank < n % comm.size)


def _beside(p: int) -> int:
    """Bytes a rank holds beside its block and the solver (EXCHANGE_BUFFERS,
    WHOLE_BYTES_PER_WEIGHT)."""
    return EXCHANGE_BUFFERS * CHUNK_BYTES + WHOLE_BYTES_PER_WEIGHT * p


def _rank_plan(
    n: int | None, p: int, edges: np.ndarray, itemsize: int, device: torch.device, limit: int
) -> Any:
    """The single-process plan for the widest block within ``limit`` less :func:`_beside`,
    reporting ``limit`` itself."""
    width = int(np.diff(edges).max())
    memory = plan_memory(n, width, itemsize, device, max(1, limit - _beside(p)))
    return replace(memory, limit=limit)


def sharded_gradients(
    comm: Comm,
    model: nn.Module,
    loss_fn: Any,
    samples: Any,
    selected: Any,
    chunk_size: int | None,
    progress: bool,
    a_dtype: torch.dtype | None,
    counts: np.ndarray,
    edges: np.ndarray,
) -> torch.Tensor:
    """This rank's column block of A (n x p_r, F order, rank 0's samples first), from every
    rank's per-sample gradients (rank r has ``counts[r]`` samples), in rounds: in round t each
    rank computes the rows of its samples t m .. (t + 1) m (m of them about CHUNK_BYTES) with the
    single-process ``_gradient_matrix`` and :func:`to_columns` places every rank's rows in the
    blocks. A rank holds its block, one round's rows and the exchange buffers, never all of its
    rows. Errors computing the rows are agreed before each exchange."""
    par0 = selected[0][3]
    dtype = a_dtype or par0.dtype
    p, n = int(edges[-1]), int(counts.sum())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    m = max(1, CHUNK_BYTES // (p * dtype.itemsize))
    block = torch.empty((int(edges[comm.rank + 1] - edges[comm.rank]), n), dtype=dtype,
                        device=par0.device)  # fmt: skip
    bar = _Progress(progress, samples.n, "per-sample gradients")
    try:
        for t in range(-(-int(counts.max()) // m)):
            part = samples.part(t * m, (t + 1) * m)
            error = rows = None
            try:
                rows = _gradient_matrix(model, loss_fn, part, selected, chunk_size, False,
                                        a_dtype, total=n)  # fmt: skip
            except Exception as exc:  # (agreed: every rank raises, none waits in the exchange)
                error = exc
            comm.agree(error)
            now = np.clip(counts - t * m, 0, m)
            to_columns(comm, rows, now, edges, out=block, starts=starts + t * m)
            del rows
            bar.update(part.n)
    finally:
        bar.close()
    return block.t()


def to_columns(
    comm: Comm,
    rows: torch.Tensor,
    counts: np.ndarray,
    edges: np.ndarray,
    out: torch.Tensor | None = None,
    starts: np.ndarray | None = None,
) -> torch.Tensor:
    """This rank's column block of A (F order) from every rank's rows (``rows``: this rank's
    counts[rank] x p, F order), by all-to-all rounds: rank s's rows land at rows
    ``starts[s]:starts[s] + counts[s]`` of the block (default: the rows in rank order, the
    block n = sum(counts) rows). ``out``: the block's (p_r, n) C-order storage to fill (default:
    a new one).

    In F order the rows' entries of a column range are contiguous, so a rank sends each other
    rank one contiguous piece per round and places what it receives (the piece of each rank's
    rows on its columns) into its block. The rounds split every block alike (the same count on
    every rank), each moving at most about CHUNK_BYTES into and out of a rank."""
    size, rank, item = comm.size, comm.rank, rows.element_size()
    src = rows.t()  # (p, n_r), C order
    if starts is None:
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n, widths = int(counts.sum()), np.diff(edges)
    moved = max(int(widths.sum()) * int(counts.max()), int(widths.max()) * n) * item
    rounds = max(1, -(-moved // CHUNK_BYTES))

    def cut(q: int, t: int) -> int:  # round t of rank q's block starts at this column
        return int(edges[q] + widths[q] * t // rounds)

    if out is None:
        out = torch.empty((int(widths[rank]), n), dtype=rows.dtype, device=rows.device)
    for t in range(rounds):
        pieces = [src[cut(q, t) : cut(q, t + 1)].reshape(-1) for q in range(size)]
        send = torch.cat(pieces).view(torch.uint8)
        c0, c1 = cut(rank, t), cut(rank, t + 1)
        sizes_in = [(c1 - c0) * int(m) * item for m in counts]
        recv = torch.empty(sum(sizes_in), dtype=torch.uint8, device=rows.device)
        dist.all_to_all_single(recv, send, sizes_in, [x.numel() * item for x in pieces],
                               group=comm.group)  # fmt: skip
        comm.stats.calls += 1
        comm.stats.bytes += send.numel()
        for s, piece in enumerate(recv.split(sizes_in)):
            got = piece.view(rows.dtype).view(c1 - c0, int(counts[s]))
            j0 = int(starts[s])
            out[c0 - edges[rank] : c1 - edges[rank], j0 : j0 + int(counts[s])] = got
        del pieces, send, recv
    return out.t()


@dataclass
class _Shards:
    """A stage's problems over the ranks' column blocks, as
    :func:`chita_core.torch._prune._stages` asks of a stage (the single-process
    :class:`~chita_core.torch._solve.LocalStage`'s methods and results): this rank owns the
    columns ``lo:hi`` of the ``p``; ``solve`` returns the whole w and mask, gathered (the same
    on every rank), and ``mean_loss`` the loss over every rank's samples."""

    comm: Comm
    lo: int
    hi: int
    p: int  #: columns over all ranks
    h_total: float  #: sum over all columns of ||A[:, j]||^2

    @classmethod
    def build(
        cls,
        comm: Comm,
        A: torch.Tensor,
        w_bar: torch.Tensor,
        edges: np.ndarray,
        k: int,
        sparsity: float,
        sizes: list[int],
        backend: str,
    ) -> _Shards:
        """The stage's problems on this rank's block ``A`` (columns ``edges[rank]:edges[rank +
        1]``): ``k`` weights kept over all tensors or, with ``per_layer``, each tensor of
        ``sizes`` (those in the block) at ``sparsity``."""
        lo, hi = int(edges[comm.rank]), int(edges[comm.rank + 1])
        stage = cls(comm, lo, hi, int(edges[-1]), 0.0)
        return stage.prepared(A, w_bar[lo:hi], k, sparsity, sizes, backend)

    def prepared(self, A: Any, w_bar: Any, k: int, sparsity: float, sizes: Any, backend: str):
        raise NotImplementedError

    def curvature(self) -> float:
        """The mean squared column norm of A (the ridge path's unit)."""
        return self.h_total / self.p

    def mean_loss(self, model: nn.Module, loss_fn: Any, held: Any) -> float:
        """The mean loss over every rank's samples (the sums added in rank order: the same on
        every rank, so every rank keeps the same candidate)."""
        total, count = self.comm.total([_mean_loss(model, loss_fn, held) * held.n, held.n])
        return float(total / count)

    def _whole(
        self, w_local: Any, mask: np.ndarray, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole w and boolean mask from every rank's slices (two gathers), as ``like``'s
        dtype and device."""
        local = torch.as_tensor(w_local).double().numpy()
        whole = np.concatenate(self.comm.gather_ragged(local))
        kept = np.concatenate(self.comm.gather_ragged(mask.view(np.uint8))).astype(bool)
        w_all = torch.from_numpy(whole).to(dtype=like.dtype, device=like.device)
        return w_all, torch.from_numpy(kept).to(like.device)


@dataclass
class _GlobalShards(_Shards):
    """One global problem over the column blocks, solved by :mod:`chita_core.distributed`:
    ``shard`` is this rank's block as a :class:`~chita_core.distributed.Shard` (validated once
    per stage, its column norms and sigma_max^2 shared by every ridge of the path), and the
    magnitude + backsolve point of the last ridge asked for, which chita starts from (as the
    single-process ``_Block``)."""

    shard: Shard | None = None
    k: int = 0
    magnitude: np.ndarray | None = None  #: local support of the k largest |w_bar|
    point: tuple[float, Any] | None = None  #: (ridge, its magnitude + backsolve point)

    def prepared(
        self, A: torch.Tensor, w_bar: torch.Tensor, k: int, sparsity: float, sizes: Any,
        backend: str,
    ) -> _GlobalShards:  # fmt: skip
        """b = A w_bar (the ranks' float64 partials added in rank order, then stored as the
        single-process b is) and the validated Shard with its column norms."""
        comm = self.comm
        b = torch.from_numpy(comm.total(_matvec64(A, w_bar).cpu().numpy()))
        b = b.to(torch.float32 if A.dtype in (torch.bfloat16, torch.float16) else A.dtype)
        shard = Shard(A, b, 0.0, w_bar, comm.group, backend)
        h = comm.total(float(shard.prob.h.sum()))
        return replace(self, h_total=h, shard=shard, k=k)

    def final(self, k_total: int, sparsity: float) -> _GlobalShards:
        """The same problem keeping ``k_total`` weights."""
        return replace(self, k=k_total, magnitude=None, point=None)

    def _support(self) -> np.ndarray:
        if self.magnitude is None:  # the same support at every ridge
            w_bar = self.shard.prob.w_bar
            self.magnitude = distributed.topk(w_bar, self.k, group=self.comm.group)
        return self.magnitude

    def _magnitude_point(self, shard: Shard, ridge: float) -> Any:
        """The exact refit on the magnitude support at ``ridge`` (one ridge's point held)."""
        if self.point is None or self.point[0] != ridge:
            self.point = None  # (before the new point: one at a time)
            self.point = (ridge, shard.point(self._support(), keep_inverse=True))
        return self.point[1]

    def solve(
        self, w_bar: torch.Tensor, how: str, ridge: float, options: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, float, list[Any]]:
        """_solve's (w, kept, objective, results) for ``how`` at ``ridge``, over the shards."""
        shard = self.shard.with_ridge(ridge)
        local = shard.prob
        results = []
        if how == "magnitude":
            support = self._support()
            point = Point.at(shard, support, local.w_bar[support])
            w, f = point.w, point.f
        else:
            point = self._magnitude_point(shard, ridge)
            if how == "chita":
                res = distributed.solve(shard, self.k, _magnitude=point, **options)
                w, support, f = res.w, res.support, res.objective
                results.append(replace(res, w=None, support=None))
            else:
                w, support, f = point.w, point.support, point.f
        mask = np.zeros(self.hi - self.lo, dtype=bool)
        mask[np.asarray(support, dtype=np.int64)] = True
        return *self._whole(w, mask, w_bar), f, results


@dataclass
class _LayerShards(_Shards):
    """``per_layer``: one problem per tensor, each on the rank whose block holds it (the
    blocks end at tensor boundaries): this rank solves its tensors' problems with the
    single-process code (``local``, no collective inside a solve) and the candidates are
    gathered."""

    local: LocalStage | None = None

    def prepared(
        self, A: torch.Tensor, w_bar: torch.Tensor, k: int, sparsity: float, sizes: Any,
        backend: str,
    ) -> _LayerShards:  # fmt: skip
        """Each tensor's problem in the block (its own k at ``sparsity``), validated on every
        rank before any solve."""
        error = local = None
        try:
            local = LocalStage.build(A, w_bar, 0, sizes, sparsity, True, backend)
        except (TypeError, ValueError) as exc:
            error = exc
        self.comm.agree(error)
        return replace(self, h_total=self.comm.total(local.norms()), local=local)

    def final(self, k_total: int, sparsity: float) -> _LayerShards:
        """The same problems at another sparsity (each tensor's share)."""
        return replace(self, local=self.local.final(k_total, sparsity))

    def solve(
        self, w_bar: torch.Tensor, how: str, ridge: float, options: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, float, list[Any]]:
        """_solve's (w, kept, objective, results): this rank's tensors solved, the objectives
        summed and the results gathered in rank (tensor) order."""
        w, kept, f, results = self.local.solve(w_bar[self.lo : self.hi], how, ridge, options)
        every: list[Any] = [None] * self.comm.size
        dist.all_gather_object(every, results, group=self.comm.group)
        return (*self._whole(w, kept.cpu().numpy(), w_bar), self.comm.total(f),
                [res for part in every for res in part])  # fmt: skip


def _same_model(comm: Comm, model: nn.Module) -> None:
    """ShardError on every rank unless every rank's model holds the same parameters and
    buffers, bit for bit: a 16-byte digest of each (name, shape, dtype and bytes), gathered."""
    names, digests = [], []
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        digest = hashlib.blake2b(f"{name} {tuple(t.shape)} {t.dtype}".encode(), digest_size=16)
        digest.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
        names.append(name)
        digests.append(np.frombuffer(digest.digest(), dtype=np.int64))
    comm.same(np.asarray([len(names)], dtype=np.int64),
              "the model (its number of parameters and buffers)")  # fmt: skip
    every = comm.gather(np.asarray(digests, dtype=np.int64).reshape(len(names), 2))
    differ = [r for r in range(comm.size) if not np.array_equal(every[r], every[0])]
    if differ:
        first = int(np.flatnonzero((every[differ[0]] != every[0]).any(axis=1))[0])
        raise ShardError(
            f"the model must be the same on every rank (the same parameters and buffers): "
            f"{names[first]} on rank {differ[0]} differs from rank 0's (ranks differing: "
            f"{differ}); load the same weights on every rank (e.g. broadcast rank 0's "
            "state_dict) before prune"
        )


def _sharded_options(method: str, per_layer: bool, options: dict[str, Any]) -> dict[str, Any]:
    """The solver options for ``method="chita"`` (a copy of the caller's; the other methods
    take none, as in one process). With ``per_layer`` each tensor is solved by the
    single-process solver, which takes them all; otherwise by chita_core.distributed.iht, and
    what it does not take is refused before any gradient work (NotImplementedError on every
    rank)."""
    if method != "chita":
        return {}
    if not per_layer:
        taken = set(inspect.signature(distributed.iht).parameters) - set(_SET_HERE)
        missing = sorted(set(options) - taken)
        if missing:
            raise NotImplementedError(
                f"chita_core.torch.prune with `group`: solver option(s) {', '.join(missing)} "
                f"are not supported over shards yet (chita_core.distributed.iht takes "
                f"{', '.join(sorted(taken))}; with per_layer=True each tensor's problem is "
                "solved on one rank by chita_core.iht, which takes them all)"
            )
    return dict(options)
