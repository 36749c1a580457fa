"""chita_core.torch.prune(..., group=) on 2 and 3 CPU processes over gloo (torchrun, per test):
the same masks and weights as the single-process prune on the union of the ranks' samples,
uneven samples, each rank holding only its column block of A, and errors on every rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

import chita_core.torch as ct  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from torch_dist_worker import CASES, LOSS, model, pruned, rank_data, report_numbers  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

WORKER = Path(__file__).parent / "torch_dist_worker.py"
TIMEOUT = 180  # seconds for a whole group; a hang fails the test instead of CI


def _torchrun(case: str, world: int, tmp_path: Path) -> list[dict]:
    """Every rank's results of ``case`` run by torchrun on ``world`` gloo processes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={world}", str(WORKER), case, str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        log = proc.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        pytest.fail(f"{case} on {world} ranks did not finish in {TIMEOUT} s (a hang)")
    assert proc.returncode == 0, log[-3000:]
    ranks = []
    for r in range(world):
        with np.load(tmp_path / f"rank{r}.npz") as z:
            ranks.append({key: z[key] for key in z.files})
    return ranks


def _single(sizes: list[int], args: dict) -> tuple[dict, ct.PruneReport]:
    """The single-process prune of the same model on the union of the samples the ranks use
    (rank order): all of each rank's data with n_grads=None, else each rank's first n_r, n_grads
    split as evenly as possible."""
    world, n = len(sizes), args.get("n_grads") or sum(sizes)
    takes = [n // world + (r < n % world) for r in range(world)] if "n_grads" in args else sizes
    data = []
    for r, m in enumerate(takes):
        X, y = (torch.cat(column) for column in zip(*rank_data(sizes, r), strict=True))
        data.append((X[:m], y[:m]))
    net = model()
    rep = ct.prune(net, LOSS, data, progress=False, **{**args, "n_grads": n})
    return pruned(net), rep


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_prune_equals_the_single_process_prune(world, tmp_path):
    """magnitude + backsolve and chita (init="magnitude", swaps=False), with a fixed ridge and
    the ridge path, and magnitude: the same masks, weights to rounding and report on every rank
    as one process on the union of the ranks' samples (uneven counts: n_grads=None on data of
    13, 47 (, 22) samples, and n_grads=61 split over the ranks)."""
    ranks = _torchrun("prune", world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    chosen = set()
    for key, (sizes, args) in CASES.items():
        want, rep = _single(sizes[world], args)
        for r, out in enumerate(ranks):
            np.testing.assert_array_equal(out[f"mask_{key}"], want["mask"], err_msg=(key, r))
            np.testing.assert_allclose(out[f"w_{key}"], want["w"], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{key} rank {r}")  # fmt: skip
            np.testing.assert_allclose(out[f"rep_{key}"], report_numbers(rep), rtol=1e-5,
                                       err_msg=f"{key} rank {r}")  # fmt: skip
            assert list(out[f"chosen_{key}"]) == [s.chosen for s in rep.stages], (key, r)
            # every rank ends with the same model
            np.testing.assert_array_equal(out[f"w_{key}"], ranks[0][f"w_{key}"])
        chosen.update(s.chosen for s in rep.stages)
    assert {"chita", "magnitude+backsolve", "magnitude"} <= chosen


@pytest.mark.parametrize("world", [2, 3])
def test_all_to_all_leaves_each_rank_its_column_block(world, tmp_path):
    """Rows of 7, 12 (, 5) samples on the ranks, in many rounds: rank r holds the n x p_r block
    of the whole A (F order) on its columns, p split as evenly as possible, nothing else."""
    ranks = _torchrun("exchange", world, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    from chita_core.torch._distributed import column_edges
    from chita_core.torch._gradients import _draw, _gradient_matrix

    sizes = [7, 12, 5][:world]
    net = model()
    selected = [(f"{i}.weight", net[i], "weight", net[i].weight) for i in (0, 2)]
    data = [b for r in range(world) for b in rank_data(sizes, r)]
    A = _gradient_matrix(net, LOSS, _draw(data, None, torch.device("cpu")), selected, None, False)
    edges = column_edges(224, world)
    assert np.all(np.diff(edges) >= 224 // world) and edges[-1] == 224
    for r, out in enumerate(ranks):
        assert out["A_local"].shape == (sum(sizes), edges[r + 1] - edges[r])
        assert bool(out["f_order"]) and int(out["calls"]) > 5
        np.testing.assert_allclose(out["A_local"], A[:, edges[r] : edges[r + 1]].numpy(),
                                   rtol=1e-6, atol=1e-7)  # fmt: skip
        # computed and exchanged in rounds of 3 samples: the same block
        assert bool(out["streamed_f_order"])
        np.testing.assert_allclose(out["streamed"], A[:, edges[r] : edges[r + 1]].numpy(),
                                   rtol=1e-6, atol=1e-7)  # fmt: skip


def test_models_that_differ_raise_on_every_rank(tmp_path):
    ranks = _torchrun("differ", 3, tmp_path)
    for r, out in enumerate(ranks):
        message = str(out["error"])
        assert message.startswith("ShardError"), (r, message)
        assert "2.weight on rank 2 differs from rank 0's" in message, (r, message)


def test_options_not_sharded_and_too_few_samples_raise_on_every_rank(tmp_path):
    """Solver options distributed.iht does not take: NotImplementedError on every rank before
    any gradient work (taken with per_layer, whose problems each lie on one rank); a rank with
    too few samples: ShardError on every rank."""
    ranks = _torchrun("unbuilt", 2, tmp_path)
    assert all(str(r["error"]) == "" for r in ranks), [str(r["error"]) for r in ranks]
    for out in ranks:
        assert float(out["per_layer_options"]) >= 0.5
        assert "hold 1 weights, fewer than the 2 ranks" in str(out["narrow"])
        assert "with `group`, per rank: of its 0.00 GiB" in str(out["memory"])
        assert "go to the exchange buffers" in str(out["memory"])
        assert "option(s) callback are not supported" in str(out["unbuilt_callback"])
        assert "option(s) verbose are not supported" in str(out["unbuilt_verbose"])
        assert "rank 0: ValueError: `data` yielded 30 samples but n_grads=31" in str(out["few"])
