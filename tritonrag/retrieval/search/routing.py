"""Which path an exact search takes: decided here, executed by the backends.

The backends (`exact.ExactSearch` on the host, `cupy_search.GpuSearch` with CuPy,
`torch_search.TorchSearch`) ask `backend` once, when the index is opened, and `route` for each
search; they carry out the answer and decide nothing themselves.

- ``backend(device)``: "cupy" (cuBLAS / CUDA C kernels), "torch" (a CUDA host where CuPy cannot
  be imported, e.g. CuPy 14 under Triton's NumPy 1.x stubs), or None (search on the host CPU).
- ``route(...)``: on a GPU backend, `FUSED` (score and top-k in one Triton-language kernel per
  tile, `tritonrag.retrieval.search.fused.launch`, with or without sampled floors), else the backend's score-matrix
  path: `TOPK` (CuPy partial top-k kernel; torch slices and torch.topk), or `FULL_ROWS` (k above
  the CUDA top-k kernel's register slots: full score rows, then threshold + lexsort).

The `search_kernel` setting (KERNELS) forces or forbids the fused path; "auto" fuses where it is
the faster path (docs/decisions/0052-fused-search-policy.md): L1 always, ip/cosine/l2 from
AUTO_MIN_ROWS corpus rows or AUTO_MIN_BATCH queries. Floors (ip/cosine/l2) pay for their sampling
pass only where a full query block of FLOOR_MIN_QUERY_BLOCK queries meets FLOOR_MIN_ROWS rows.
"""

from __future__ import annotations

import enum
import logging
from typing import NamedTuple

from .fused import launch as fused_topk
from .metric import Metric

log = logging.getLogger(__name__)

KERNELS = ("auto", "fused", "cublas")
AUTO_MIN_ROWS = 1_000_000
AUTO_MIN_BATCH = 17
FLOOR_MIN_QUERY_BLOCK = 32
FLOOR_MIN_ROWS = 1_000_000
MAX_KERNEL_K = 128  # CuPy's partial top-k kernel holds k keys per thread; larger k: FULL_ROWS


class Path(str, enum.Enum):
    CPU = "cpu"
    FUSED = "fused"
    TOPK = "topk"
    FULL_ROWS = "full_rows"


class Route(NamedTuple):
    path: Path
    floors: bool = False  # fused ip/cosine/l2 only: score a sample of tiles first for per-query floors


def backend(device: str) -> str | None:
    """"cupy" (fast path), "torch" (CUDA without an importable CuPy), or None (search on the CPU)."""
    if not device.startswith("cuda"):
        return None
    try:
        import cupy  # noqa: F401
        return "cupy"
    except ImportError as exc:  # e.g. CuPy 14 under Triton's NumPy 1.x stubs
        reason = exc
    try:
        import torch

        if torch.cuda.is_available():
            log.warning("CuPy is not usable (%s); searching on %s with torch", reason, device)
            return "torch"
    except ImportError:
        pass
    log.warning("CuPy is not usable (%s) and torch has no CUDA; searching on the CPU. "
                "pip install 'tritonrag[gpu]'", reason)
    return None


def check_kernel(kernel: str) -> str:
    """`kernel` if it is a `search_kernel` setting, else ValueError."""
    if kernel not in KERNELS:
        raise ValueError(f"search kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def floor_wanted(metric, rows: int, block_b: int) -> bool:
    """Whether a fused search scores a sample of tiles first for per-query floors (ip/cosine/l2)."""
    return Metric.of(metric).uses_dot and block_b >= FLOOR_MIN_QUERY_BLOCK and rows >= FLOOR_MIN_ROWS


def floors(metric, rows: int, batch: int) -> bool:
    """`floor_wanted` for a batch of `batch` queries (its query block is `fused_topk.query_block`)."""
    return floor_wanted(metric, rows, fused_topk.query_block(batch, metric))


def wanted(kernel: str, metric, k: int, device_type: str, streamed: bool, rows: int = 0,
           batch: int = 1) -> bool:
    """Whether a search runs fused: `kernel` is the `search_kernel` setting (auto/fused/cublas)."""
    check_kernel(kernel)
    if kernel == "cublas" or streamed or not 0 < k <= fused_topk.MAX_FUSED_K:
        return False
    if kernel == "auto" and Metric.of(metric).uses_dot and rows < AUTO_MIN_ROWS and batch < AUTO_MIN_BATCH:
        return False
    if device_type == "cpu" and kernel == "fused":  # the interpreter (tests) only
        try:
            return fused_topk._kernels().interpreted
        except ImportError:
            return False
    return fused_topk.available(device_type)


def route(kernel: str, metric, k: int, device_type: str, streamed: bool, rows: int, batch: int,
          max_kernel_k: int | None = None) -> Route:
    """The path of one GPU search of `batch` queries for the top `k` of `rows` corpus rows.

    `max_kernel_k`: the largest k the backend's score-matrix top-k takes (None: any)."""
    if wanted(kernel, metric, k, device_type, streamed, rows, batch):
        return Route(Path.FUSED, floors(metric, rows, batch))
    if max_kernel_k is not None and k > max_kernel_k:
        return Route(Path.FULL_ROWS)
    return Route(Path.TOPK)
