"""Shared timing harness for the chita_core benchmarks (stdlib + NumPy only).

Every benchmark uses the same pieces:

- :func:`describe_machine` -- what ran the numbers (no hostname), written as the first JSON line.
- :func:`time_fn` -- warm-up, optional device sync, repeats, median/min/max and every sample.
- :func:`time_interleaved` -- the same for several functions called round-robin, so that a
  reference and the kernels compared with it see the same machine state.
- :func:`copy_bandwidth` / :class:`CopyProbe` -- the memory bandwidth reference measured in the
  same run: a large ``np.copyto``, counted as read + write bytes.
- :class:`JsonlWriter` -- one JSON object per line, first line ``{"kind": "machine", ...}``.

Speed is quoted as a fraction of the copy bandwidth (docs/design.md section 8.4) because the kernels
are memory-bound and the machines they run on are shared and noisy: an absolute GB/s means little
without the copy bandwidth measured next to it.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CopyProbe",
    "JsonlWriter",
    "copy_bandwidth",
    "describe_machine",
    "fmt_bytes",
    "fmt_seconds",
    "memory_available",
    "time_fn",
    "time_interleaved",
]

MiB = 1 << 20
GiB = 1 << 30


def _cpuinfo() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_model": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and "cpu_model_raw" not in info:
            info["cpu_model_raw"] = value
            info["cpu_model"] = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw") if f in flags]
    if simd:
        info["simd"] = simd
    info.pop("cpu_model_raw", None)
    return info


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and key in ("MemTotal", "MemAvailable"):
                out[key] = int(parts[0]) * 1024  # kB -> bytes
    except OSError:
        pass
    return out


def memory_available() -> int | None:
    """Bytes of memory the kernel reports as available now (``MemAvailable``), or None."""
    return _meminfo().get("MemAvailable")


def _cache_sizes() -> dict[str, str]:
    """L1d/L2/L3 sizes from sysfs (strings such as ``32768K``), where the system exposes them."""
    out: dict[str, str] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    if not base.is_dir():
        return out
    for d in sorted(base.glob("index*")):
        try:
            level = (d / "level").read_text().strip()
            kind = (d / "type").read_text().strip()
            size = (d / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + ("d" if kind == "Data" else "i" if kind == "Instruction" else "")
        out[name] = size
    return out


def describe_machine() -> dict[str, Any]:
    """Describe the machine and software that ran a benchmark, without identifying the host.

    Returns
    -------
    dict
        ``cpu_model``, ``simd`` (vector extensions seen in ``/proc/cpuinfo``), ``logical_cpus``,
        ``usable_cpus`` (affinity mask), ``caches``, ``mem_total_bytes``,
        ``mem_available_bytes``, ``os``, ``python``, ``numpy``, ``chita_core_build_info`` and
        ``chita_core_num_threads`` (``None`` with ``chita_core_error`` if ``_core`` is missing),
        ``chita_core_location`` (``installed`` or ``source``: which copy was imported),
        ``omp_num_threads`` (the environment variable, if set) and ``time_utc``.
    """
    mem = _meminfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    desc: dict[str, Any] = {
        **_cpuinfo(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "caches": _cache_sizes(),
        "mem_total_bytes": mem.get("MemTotal"),
        "mem_available_bytes": mem.get("MemAvailable"),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "numpy": np.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import chita_core
        from chita_core import _core

        where = Path(chita_core.__file__).resolve().parent
        desc["chita_core_location"] = (
            "installed" if where.parent.name in ("site-packages", "dist-packages") else "source"
        )
        desc["chita_core_build_info"] = getattr(_core, "build_info", "")
        desc["chita_core_num_threads"] = int(_core.num_threads())
    except ImportError as exc:  # benchmarks of other backends can still describe the machine
        desc["chita_core_build_info"] = None
        desc["chita_core_num_threads"] = None
        desc["chita_core_error"] = f"{type(exc).__name__}: {exc}"
    return desc


def time_fn(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 7,
    sync: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Time ``fn()`` with warm-up and repeats; the median is the number to quote.

    Parameters
    ----------
    fn : callable
        Called with no arguments. Its result is discarded.
    warmup : int
        Untimed calls first (page faults, caches, thread pool start-up).
    repeats : int
        Timed calls, at least 1.
    sync : callable, optional
        Called after each ``fn()`` and inside the timed region, e.g. a GPU stream synchronise,
        so asynchronous work is counted. Also called once before the first timed call.

    Returns
    -------
    dict
        ``median``, ``min``, ``max`` (seconds), ``repeats``, ``warmup`` and ``samples`` (every
        timed call, seconds, in call order).
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    if sync is not None:
        sync()
    samples: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - t0)
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "repeats": repeats,
        "warmup": warmup,
        "samples": samples,
    }


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeats: int = 7,
    sync: Callable[[], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time several functions round-robin, so drift on a shared machine hits them all alike.

    Each repeat calls every function once, in order. With the copy bandwidth among them, the
    reference and the kernels are measured in the same time windows. Same arguments and
    per-function result as :func:`time_fn`.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be at least 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            if sync is not None:
                sync()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            samples[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median": statistics.median(xs),
            "min": min(xs),
            "max": max(xs),
            "repeats": repeats,
            "warmup": warmup,
            "samples": xs,
        }
        for name, xs in samples.items()
    }


class CopyProbe:
    """A large float32 source/destination pair for measuring copy bandwidth.

    The arrays are sized well past the last-level cache (512 MiB against a 32 MiB L3 by default)
    so a copy streams from and to DRAM. ``moved`` is ``2 * nbytes``: every byte is read once and
    written once (large copies use non-temporal stores, so there is no hidden read-for-ownership
    of the destination to count).

    ``copy(threads)``: ``1`` is a single ``np.copyto``; ``> 1`` splits the arrays into
    ``threads`` contiguous slices copied concurrently from a thread pool (NumPy releases the GIL
    for the copy), which is what a multithreaded kernel can reach; one core alone often cannot
    saturate DRAM. Use as a context manager, or call ``close()``, to stop the pool.
    """

    def __init__(self, nbytes: int = 512 * MiB, max_threads: int = 1) -> None:
        n = max(1, nbytes // 4)
        self.src = np.ones(n, dtype=np.float32)
        self.dst = np.zeros_like(self.src)  # faulted in by the first copy (the warm-up)
        self.nbytes = int(self.src.nbytes)
        self.moved = 2 * self.nbytes
        self._pool = ThreadPoolExecutor(max_workers=max_threads) if max_threads > 1 else None

    def copy(self, threads: int = 1) -> None:
        if threads <= 1 or self._pool is None:
            np.copyto(self.dst, self.src)
            return
        bounds = np.linspace(0, self.src.size, threads + 1).astype(np.int64)
        parts = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        list(self._pool.map(lambda sl: np.copyto(self.dst[sl], self.src[sl]), parts))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> CopyProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_bandwidth(
    nbytes: int = 512 * MiB,
    repeats: int = 7,
    *,
    threads: int = 1,
    warmup: int = 1,
) -> dict[str, Any]:
    """Memory bandwidth of a large ``np.copyto`` on float32, counted as read + write bytes.

    Bandwidth is ``2 * nbytes / t`` (see :class:`CopyProbe`, which also explains ``threads``).

    Parameters
    ----------
    nbytes : int
        Size of the source array in bytes.
    repeats, warmup : int
        As in :func:`time_fn`. The warm-up also faults in the destination pages.
    threads : int
        Concurrent slices of the copy (``1``: a single ``np.copyto``).

    Returns
    -------
    dict
        ``bytes_per_s`` (median), ``bytes_per_s_max`` (from the fastest repeat), ``nbytes``,
        ``threads`` and the :func:`time_fn` timing under ``time``.
    """
    with CopyProbe(nbytes, max_threads=threads) as probe:
        t = time_fn(lambda: probe.copy(threads), warmup=warmup, repeats=repeats)
    return {
        "bytes_per_s": probe.moved / t["median"],
        "bytes_per_s_max": probe.moved / t["min"],
        "nbytes": probe.nbytes,
        "threads": max(1, threads),
        "time": t,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


class JsonlWriter:
    """Write benchmark records as JSON lines; the first line describes the machine.

    Parameters
    ----------
    path : str or Path
        Output file, created (with parent folders) and truncated.
    benchmark : str
        Name of the benchmark, stored in the machine record.
    machine : dict, optional
        A :func:`describe_machine` result to reuse; measured now if omitted.
    **meta
        Extra fields for the machine record (command-line options, for instance).

    Examples
    --------
    >>> with JsonlWriter("bench/results/x.jsonl", benchmark="x") as out:  # doctest: +SKIP
    ...     out.write({"kind": "kernel", "name": "gradient", "seconds": 0.1})
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        benchmark: str = "",
        machine: dict[str, Any] | None = None,
        **meta: Any,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("w", encoding="utf-8")
        record = {
            "kind": "machine",
            "benchmark": benchmark,
            "argv": sys.argv[1:],
            **(machine if machine is not None else describe_machine()),
            **meta,
        }
        self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a dict with a ``"kind"`` key) and flush it."""
        self._fh.write(json.dumps(_jsonable(record), sort_keys=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fmt_seconds(s: float) -> str:
    """Seconds in a short human unit (``812 us``, ``3.41 ms``, ``1.20 s``)."""
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_bytes(b: float) -> str:
    """Bytes in binary units (``381 MiB``, ``3.73 GiB``)."""
    if b >= GiB:
        return f"{b / GiB:.2f} GiB"
    return f"{b / MiB:.0f} MiB"
