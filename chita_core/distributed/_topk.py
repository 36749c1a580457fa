"""Global top-k over column shards: a radix select on the bit patterns of |v| (docs/design.md,
section 12.1).

The bit pattern of a non-negative float64, read as uint64, orders like its value, so the k-th
largest |v| is found digit by digit from the top: each round every rank counts its candidates'
next digit (``_DIGITS``: the 12 sign and exponent bits, then 11, 11, 11, 11 and 8 mantissa
bits), one gather gives the global histogram, and every rank reads the same digit off it. Six
rounds fix the threshold key exactly; a rank's candidates shrink to those that still tie with
the threshold's prefix, so after the first round the local work is on a small set. Ties at the
threshold go to the lower global index, as in the single-process ``topk``: ranks own
increasing column ranges, so a rank takes what is left of the tie quota after the ranks before
it. Work: O(p / ranks) local per round, at most 6 + 1 gathers of at most 4,096 (then 1)
integers.
"""

from __future__ import annotations

import numpy as np

from ._comm import Comm

__all__ = ["global_smallest", "global_topk"]

#: The digits, from the top: (shift, bits): the sign and the 11 exponent bits, then the 52
#: mantissa bits in four digits of 11 and one of 8. Six rounds of at most 4,096 counts (8 of 256
#: with 8-bit digits: fewer, larger gathers, latency-bound either way).
_DIGITS = ((52, 12), (41, 11), (30, 11), (19, 11), (8, 11), (0, 8))
_MAX_KEY = (1 << 64) - 1


def _keys(v: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of |v|; NaN ranks below every number (key 0)."""
    a = np.abs(np.asarray(v, dtype=np.float64))
    keys = a.view(np.uint64).copy()
    keys[np.isnan(a)] = 0
    return keys


def _signed_keys(v: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of v itself (negative numbers below positive ones, -0.0 as
    0.0); NaN ranks above every number."""
    a = np.asarray(v, dtype=np.float64) + 0.0  # (-0.0 + 0.0 is 0.0)
    bits = a.view(np.uint64)
    keys = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    keys[np.isnan(a)] = np.uint64(_MAX_KEY)
    return keys


def global_topk(comm: Comm, v_local: np.ndarray, k: int) -> np.ndarray:
    """Sorted local indices of this rank's share of the k largest |v| over all ranks (ties to
    the lower global index). 0 <= k <= the global length."""
    return _select(comm, _keys(v_local), k)


def global_smallest(comm: Comm, v_local: np.ndarray, k: int) -> np.ndarray:
    """Sorted local indices of this rank's share of the k smallest v (signed) over all ranks,
    ties to the lower global index (NaN last). 0 <= k <= the global length."""
    return _select(comm, ~_signed_keys(v_local), k)


def _select(comm: Comm, keys: np.ndarray, k: int) -> np.ndarray:
    """Sorted local indices of this rank's share of the k largest uint64 ``keys`` over all
    ranks, ties to the lower global index."""
    chosen = np.zeros(keys.size, dtype=bool)
    cand = np.arange(keys.size, dtype=np.int64)  # local candidates, ascending
    need = int(k)
    for shift, bits in _DIGITS:
        if need == 0:
            break
        digits = ((keys[cand] >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
        hist = np.bincount(digits, minlength=1 << bits).astype(np.int64)
        hist = comm.gather(hist).sum(axis=0)  # integers: exact in any order
        above = np.cumsum(hist[::-1])[::-1]  # above[d] = candidates with digit >= d
        d = int(np.flatnonzero(above >= need)[-1])  # the threshold's digit
        higher = int(above[d] - hist[d])
        chosen[cand[digits > d]] = True
        need -= higher
        cand = cand[digits == d]
        if int(hist[d]) == need:  # every remaining candidate is taken
            chosen[cand] = True
            need = 0
    if need:
        # The threshold key itself, tied on every rank: lower ranks first.
        counts = comm.gather(np.asarray([cand.size], dtype=np.int64))[:, 0]
        before = int(counts[: comm.rank].sum())
        take = min(max(need - before, 0), cand.size)
        chosen[cand[:take]] = True
    return np.flatnonzero(chosen).astype(np.int64)
