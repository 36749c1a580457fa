"""One rank of a chita_core.torch.prune(..., group=) test (run by tests/test_torch_distributed.py
as a process).

``torchrun --nproc-per-node WORLD tests/torch_dist_worker.py CASE OUT``: joins the gloo group
torchrun sets up, builds the seeded model (the same on every rank) and its own samples, runs the
case and writes what it computed, or the exception it raised, to OUT/rank{RANK}.npz.
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np
import torch
from torch import nn

LOSS = nn.CrossEntropyLoss()
POOL = 200  # samples in the seeded pool the ranks' data come from

#: The sharded prunes compared with the single-process one, key: (samples each rank's data
#: holds, by world size; prune's arguments). Uneven data with n_grads=None: each rank takes all
#: of its samples; n_grads=61 splits 31 + 30 or 21 + 20 + 20. Sparsity 0.7 keeps k = 67 > n
#: (the backsolve's Gram), 0.9 k = 22 < n (the gathered columns).
CASES = {
    "backsolve_path": ({2: [13, 47], 3: [13, 29, 22]},
                       {"method": "magnitude+backsolve", "sparsity": 0.7}),
    "chita_fixed": ({2: [40, 40], 3: [30, 30, 30]},
                    {"method": "chita", "sparsity": 0.9, "n_grads": 61, "ridge": 0.05,
                     "init": "magnitude", "swaps": False}),
    "chita_path": ({2: [13, 47], 3: [13, 29, 22]},
                   {"method": "chita", "sparsity": 0.7, "init": "magnitude", "swaps": False}),
    "magnitude": ({2: [20, 30], 3: [10, 20, 30]}, {"method": "magnitude", "sparsity": 0.5}),
    # CHITA++ (gradients recomputed and exchanged at every stage, the one-shot candidate) and
    # per_layer (each tensor's problem on one rank: on 3 ranks rank 0 owns no tensor).
    "chita_stages": ({2: [13, 47], 3: [13, 29, 22]},
                     {"method": "chita", "sparsity": 0.8, "stages": 3, "init": "magnitude",
                      "swaps": False}),
    "backsolve_per_layer": ({2: [20, 30], 3: [10, 20, 30]},
                            {"method": "magnitude+backsolve", "sparsity": 0.7,
                             "per_layer": True}),
    "chita_per_layer_stages": ({2: [40, 40], 3: [30, 30, 30]},
                               {"method": "chita", "sparsity": 0.85, "n_grads": 61,
                                "per_layer": True, "stages": 2, "schedule": "poly"}),
}  # fmt: skip


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))


def rank_data(sizes: list[int], rank: int, batch: int = 16) -> list[tuple]:
    """Rank ``rank``'s samples: its run of the seeded pool (ranks in order), in batches."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(POOL, 10, generator=g)
    y = torch.randint(0, 4, (POOL,), generator=g)
    lo = sum(sizes[:rank])
    X, y = X[lo : lo + sizes[rank]], y[lo : lo + sizes[rank]]
    return [(X[i : i + batch], y[i : i + batch]) for i in range(0, len(X), batch)]


def pruned(net: nn.Module) -> dict:
    """The pruned weights and masks of the two Linear layers, flattened."""
    return {
        "w": torch.cat([net[i].weight.detach().reshape(-1) for i in (0, 2)]).numpy(),
        "mask": torch.cat([net[i].weight_mask.reshape(-1) for i in (0, 2)]).numpy(),
    }


def report_numbers(rep) -> np.ndarray:
    """A prune report's numbers: sparsity, n_grads, one_shot, and each stage's k, objective,
    ridge and selection loss."""
    stages = [[s.k, s.objective, s.ridge, s.loss] for s in rep.stages]
    return np.asarray([rep.sparsity, rep.n_grads, rep.one_shot, *np.ravel(stages)])


def run(case: str, rank: int, world: int) -> dict:
    import torch.distributed as dist

    import chita_core.torch as ct
    import chita_core.torch._distributed as cdt
    from chita_core.distributed import ShardError

    group = dist.group.WORLD
    out: dict = {}
    if case == "prune":
        for key, (sizes, args) in CASES.items():
            net = model()
            rep = ct.prune(net, LOSS, rank_data(sizes[world], rank), progress=False,
                           group=group, **args)  # fmt: skip
            for name, value in pruned(net).items():
                out[f"{name}_{key}"] = value
            out[f"rep_{key}"] = report_numbers(rep)
            out[f"chosen_{key}"] = np.asarray([s.chosen for s in rep.stages])
        return out
    if case == "exchange":
        # The rows of each rank, turned into column blocks in many small rounds.
        from chita_core.distributed._comm import Comm
        from chita_core.torch._gradients import _draw, _gradient_matrix

        sizes = [7, 12, 5][:world]
        net = model()
        selected = [(f"{i}.weight", net[i], "weight", net[i].weight) for i in (0, 2)]
        samples = _draw(rank_data(sizes, rank), None, torch.device("cpu"))
        n = sum(sizes)
        rows = _gradient_matrix(net, LOSS, samples, selected, None, False, total=n)
        comm = Comm(group)
        edges = cdt.column_edges(224, world)
        cdt.CHUNK_BYTES = 600  # a few columns a round
        A_local = cdt.to_columns(comm, rows, np.asarray(sizes), edges)
        out["A_local"], out["calls"] = A_local.numpy(), np.asarray(comm.stats.calls)
        out["f_order"] = np.asarray(A_local.t().is_contiguous())
        # The rows computed and exchanged 3 samples per round (up to 4 rounds, uneven counts).
        cdt.CHUNK_BYTES = 3 * 224 * 4
        streamed = cdt.sharded_gradients(comm, net, LOSS, samples, selected, None, False, None,
                                         np.asarray(sizes), edges)  # fmt: skip
        out["streamed"] = streamed.numpy()
        out["streamed_f_order"] = np.asarray(streamed.t().is_contiguous())
        return out
    if case == "differ":
        net = model()
        if rank == world - 1:
            with torch.no_grad():
                net[2].weight[1, 3] += 1e-6
        ct.prune(net, LOSS, rank_data([30] * world, rank), 0.5, progress=False, group=group)
        return out
    if case == "unbuilt":
        for key, args in {"callback": {"callback": print},
                          "verbose": {"verbose": True}}.items():  # fmt: skip
            try:
                ct.prune(model(), LOSS, rank_data([30] * world, rank), 0.5, progress=False,
                         group=group, **args)  # fmt: skip
            except NotImplementedError as exc:
                out[f"unbuilt_{key}"] = np.asarray(str(exc))
        # per_layer solves each tensor with chita_core.iht on one rank: every option is taken.
        rep = ct.prune(model(), LOSS, rank_data([30] * world, rank), 0.5, progress=False,
                       group=group, per_layer=True, time_limit=60.0)  # fmt: skip
        out["per_layer_options"] = np.asarray(rep.sparsity)
        # Fewer weights than ranks: the global problem cannot give every rank a column.
        torch.manual_seed(0)
        try:
            ct.prune(nn.Linear(1, 1, bias=False), nn.MSELoss(), [(torch.ones(4, 1),) * 2], 0.0,
                     progress=False, group=group)  # fmt: skip
        except ValueError as exc:
            out["narrow"] = np.asarray(str(exc))
        # A memory_limit below the exchange buffers: the plan's error, on every rank.
        try:
            ct.prune(model(), LOSS, rank_data([30] * world, rank), 0.5, progress=False,
                     group=group, memory_limit=1 << 20)  # fmt: skip
        except ValueError as exc:
            out["memory"] = np.asarray(str(exc))
        # Rank 0's data has 30 samples, one fewer than its share of n_grads: raised everywhere.
        try:
            ct.prune(model(), LOSS, rank_data([30] * world, rank), 0.5, n_grads=30 * world + 1,
                     progress=False, group=group)  # fmt: skip
        except ShardError as exc:
            out["few"] = np.asarray(str(exc))
        return out
    raise ValueError(f"unknown case {case!r}")


def main() -> None:
    import torch.distributed as dist

    case, out = sys.argv[1:3]
    dist.init_process_group("gloo")  # the rendezvous torchrun set up (env://)
    rank = dist.get_rank()
    try:
        result = {**run(case, rank, dist.get_world_size()), "error": np.asarray("")}
    except Exception as exc:  # reported to the test, which checks the type and message
        traceback.print_exc()
        result = {"error": np.asarray(f"{type(exc).__name__}: {exc}")}
    np.savez(f"{out}/rank{rank}.npz", **result)
    # Every rank past its last collective before any tears the group down (a rank leaving
    # while another still sends aborted the process group's threads under load).
    dist.barrier()
    dist.destroy_process_group()
    # Skip the interpreter's teardown: under load a worker sometimes aborted there, after its
    # work was done and saved ("terminate called without an active exception" from a thread
    # of torch's still joinable; about 1 run in 3 of this file on 2 loaded cores, none in 24
    # launches since).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
