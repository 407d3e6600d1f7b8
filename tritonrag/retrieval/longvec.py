"""Distances between two very long vectors (dot, squared L2, L1, cosine), CPU or GPU.

On the GPU a reduction kernel (`cuda_kernels.long_reduce`) sums per thread in double,
then per warp (shuffles) and per block, and the last block to finish adds the per-block
partials in block order into pinned host memory: a deterministic hierarchical reduction
(one atomic ticket per block, no atomic sums) in one launch. Host vectors of up to 8 MB
each are copied into device buffers kept per caller; host arrays larger than the GPU
memory budget are streamed in chunks through two device buffers, copies overlapped
with the reduction of the previous chunk. On the CPU the same sums run over slices
(no full-length temporaries), accumulated in double.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import numpy as np

LONG_METRICS = ("dot", "l2", "l1", "cosine")
_CODES = {"dot": 0, "l2": 1, "l1": 2, "cosine": 3}
CPU_SLICE = 1 << 22
# Host vectors up to this many bytes each are copied into device buffers kept per caller
# (`_Finish.staged`) with two async copies on the call's stream, which avoids cp.asarray's
# allocation and synchronous copy (docs/decisions/0053-long-vector-distances.md). Kept per
# (device, stream, thread), up to `_Finish.MAX_CACHED` of them: 16 MB each at most.
STAGED_BYTES = 8 << 20
_STORAGE = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


def _finish(metric: str, sums: np.ndarray) -> float:
    if metric == "cosine":
        return float(sums[0] / max(math.sqrt(sums[1]) * math.sqrt(sums[2]), 1e-300))
    return float(sums[0])


def _cpu_sums(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    sums = np.zeros(3)
    for start in range(0, len(a), CPU_SLICE):
        x = a[start:start + CPU_SLICE].astype(np.float64)
        y = b[start:start + CPU_SLICE].astype(np.float64)
        if metric == "dot":
            sums[0] += x @ y
        elif metric == "l2":
            t = x - y
            sums[0] += t @ t
        elif metric == "l1":
            sums[0] += np.abs(x - y).sum()
        else:
            sums += (x @ y, x @ x, y @ y)
    return sums


def long_distance(a, b, metric: str = "l2", device: str = "cpu", budget: int | None = None,
                  chunk: int | None = None) -> float:
    """The `metric` between 1-D vectors `a` and `b` (squared for l2; cosine similarity for cosine).

    `a`, `b`: NumPy arrays, or CuPy arrays already on the GPU. With ``device="cuda:N"``
    host arrays whose two copies exceed `budget` bytes (default: 80 % of free memory)
    are streamed in chunks of `chunk` elements.
    """
    if metric not in LONG_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {LONG_METRICS}")
    if a.shape != b.shape or len(a.shape) != 1:
        raise ValueError(f"expected two 1-D vectors of one length, got {a.shape} and {b.shape}")
    if not device.startswith("cuda"):
        return _finish(metric, _cpu_sums(np.asarray(a), np.asarray(b), metric))
    import cupy as cp

    index = int(device.partition(":")[2] or 0)
    # the common case, the current device, skips the switch there and back
    with contextlib.nullcontext() if cp.cuda.runtime.getDevice() == index else cp.cuda.Device(index):
        return _finish(metric, _gpu_sums(cp, a, b, metric, budget, chunk, index))


def _reduce(cp, a, b, metric: str, partial, finish=None) -> None:
    """Per-block partial sums into `partial` [blocks, 3]; with `finish` (`_Finish`), their total too."""
    from .search.cuda_c_kernels import long_kernel

    blocks = partial.shape[0]
    none = np.uint64(0)  # null pointers: partials only
    tail = (finish.counter, np.uint64(finish.result_ptr)) if finish is not None else (none, none)
    aligned = a.data.ptr % 16 == 0 and b.data.ptr % 16 == 0
    long_kernel(_STORAGE[np.dtype(a.dtype)], vec=aligned)((blocks,), (256,), (a, b, np.int64(a.size),
                                                                             np.int32(_CODES[metric]), partial, *tail))


class _Finish:
    """A zeroed ticket counter and a pinned host result for the in-kernel final sum.

    One per (device, stream, thread), reused (the last MAX_CACHED). The kernel's last block
    sums the partials itself and writes the total to pinned memory, so a call is one launch
    and one wait: a CuPy sum of the partials and its copy back cost many times the reading of
    a million elements (docs/decisions/0053-long-vector-distances.md)."""

    MAX_CACHED = 64
    _cache: dict = {}

    def __init__(self, cp, blocks: int):
        self.partial = cp.empty((blocks, 3), cp.float64)
        self.counter = cp.zeros(1, cp.uint32)
        self._memory = cp.cuda.alloc_pinned_memory(3 * 8)
        self.result = np.frombuffer(self._memory, np.float64, 3)
        self.result_ptr = self._memory.ptr  # pinned memory is mapped: the kernel writes it (UVA)
        self._staging: list = []            # two device byte buffers for host vectors, grown on demand
        self._views: dict = {}              # (bytes, dtype) -> the two buffers' views of that shape

    def staged(self, cp, a: np.ndarray, b: np.ndarray, stream):
        """Device copies of host vectors `a`, `b` (each <= STAGED_BYTES) in this caller's kept
        buffers, queued on `stream` (asynchronous from pinned memory)."""
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
        if not self._staging or self._staging[0].size < a.nbytes:
            self._staging = [cp.empty(a.nbytes, cp.uint8) for _ in range(2)]
            self._views = {}
        key = (a.nbytes, a.dtype.str)
        if key not in self._views:  # CuPy slices and views cost a few us each: made once a shape
            self._views = {key: [buffer[:a.nbytes].view(a.dtype) for buffer in self._staging]}
        for host, device in zip((a, b), self._views[key]):
            cp.cuda.runtime.memcpyAsync(device.data.ptr, host.ctypes.data, host.nbytes,
                                        cp.cuda.runtime.memcpyHostToDevice, stream.ptr)
        return self._views[key]

    @classmethod
    def get(cls, cp, index: int, stream, blocks: int) -> "_Finish":
        key = (index, stream.ptr, threading.get_ident(), blocks)
        if key not in cls._cache:
            if len(cls._cache) >= cls.MAX_CACHED:  # threads come and go: drop the oldest
                cls._cache.pop(next(iter(cls._cache)))
            cls._cache[key] = cls(cp, blocks)
        return cls._cache[key]


@functools.lru_cache(maxsize=None)
def _sm_count(cp, index: int) -> int:
    return cp.cuda.Device(index).attributes["MultiProcessorCount"]


def _gpu_sums(cp, a, b, metric, budget, chunk, index: int, stage: bool = True) -> np.ndarray:
    if np.dtype(a.dtype) not in _STORAGE or a.dtype != b.dtype:
        raise ValueError(f"long vectors must both be float32 or float16, got {a.dtype} and {b.dtype}")
    blocks = 8 * _sm_count(cp, index)
    on_device = isinstance(a, cp.ndarray) and isinstance(b, cp.ndarray)
    host = not isinstance(a, cp.ndarray) and not isinstance(b, cp.ndarray)
    nbytes = a.size * a.itemsize
    staged = stage and host and nbytes <= STAGED_BYTES and (budget is None or 2 * nbytes <= budget)
    if not on_device and not staged:  # the free-memory query (a driver call) only where it can matter
        budget = budget or int(cp.cuda.runtime.memGetInfo()[0] * 0.8)
    if on_device or staged or 2 * nbytes <= budget:
        stream = cp.cuda.get_current_stream()
        finish = _Finish.get(cp, index, stream, blocks)
        try:
            x, y = finish.staged(cp, a, b, stream) if staged else (None, None)
        except cp.cuda.memory.OutOfMemoryError:  # no room for the kept buffers: the budgeted path
            return _gpu_sums(cp, a, b, metric, budget, chunk, index, stage=False)
        if not staged:
            x, y = (a, b) if on_device else (cp.asarray(a), cp.asarray(b))
        _reduce(cp, x, y, metric, finish.partial, finish)
        stream.synchronize()
        return finish.result.copy()
    chunk = chunk or max(1 << 20, budget // (4 * a.itemsize))  # 2 vectors x 2 buffers
    buffers = [(cp.empty(chunk, a.dtype), cp.empty(chunk, a.dtype)) for _ in range(2)]
    count = math.ceil(a.size / chunk)
    partial = cp.zeros((count, blocks, 3), cp.float64)
    copy_stream, compute_stream = cp.cuda.Stream(), cp.cuda.Stream()
    copied = [cp.cuda.Event(), cp.cuda.Event()]
    released: list = [None, None]
    for n, start in enumerate(range(0, a.size, chunk)):
        which, stop = n % 2, min(a.size, start + chunk)
        if released[which] is not None:
            copy_stream.wait_event(released[which])
        buffers[which][0][:stop - start].set(a[start:stop], stream=copy_stream)
        buffers[which][1][:stop - start].set(b[start:stop], stream=copy_stream)
        copied[which].record(copy_stream)
        compute_stream.wait_event(copied[which])
        with compute_stream:
            _reduce(cp, buffers[which][0][:stop - start], buffers[which][1][:stop - start], metric, partial[n])
            released[which] = compute_stream.record()
    compute_stream.synchronize()
    return partial.get().sum(axis=(0, 1))
