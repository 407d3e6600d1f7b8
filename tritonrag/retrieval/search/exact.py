"""Exact top-k vector search by inner product, cosine, squared L2 or L1: NumPy or CuPy.

Scores and rank values per metric: `tritonrag.retrieval.search.metric`. Ties go to the lower passage
index (`tritonrag.retrieval.search.topk`), so a result never depends on the batch, chunk or device
it was computed on.

On a ``cuda`` device the corpus lives on the GPU in fp16 (or bf16/fp32), cuBLAS does the
ip/cosine/l2 products with fp32 accumulation, a fused kernel does L1, and a block-wise
partial top-k replaces sorting (`tritonrag.retrieval.search.cupy_search`). A corpus larger than the GPU
memory budget is streamed from pinned host memory. Where CuPy cannot be imported but torch
sees the GPU, a smaller torch path does the same search (`tritonrag.retrieval.search.torch_search`).
"""

from __future__ import annotations

import numpy as np

from .metric import METRICS, Metric  # noqa: F401  (METRICS re-exported for callers)
from .routing import backend as gpu_backend
from .topk import top_k_rows

STORAGE_DTYPES = ("float16", "bfloat16", "float32")
# Host scoring works on slices so that L1's [B, rows, d] temporary stays near 16 MB.
_CPU_L1_ELEMENTS = 1 << 22


def to_host(array) -> np.ndarray:
    """A NumPy view/copy of a NumPy, CuPy or torch array (GPU arrays are copied once)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get") and hasattr(array, "__cuda_array_interface__"):  # CuPy
        return array.get()
    if hasattr(array, "detach"):  # torch
        return array.detach().cpu().numpy()
    return np.asarray(array)


def normalize_rows(x) -> np.ndarray:
    """Rows scaled to unit length in fp64 (norms too), so equal rows stay equal bits."""
    x64 = np.asarray(x, np.float64)
    return x64 / np.maximum(np.sqrt(np.einsum("ij,ij->i", x64, x64))[:, None], 1e-12)


class ExactSearch:
    """Brute-force search over a fixed matrix of corpus vectors ([N, d], any array-like).

    `dtype` is the GPU storage type; `gpu_memory_budget` (bytes, None = most of the free
    memory) decides between a GPU-resident corpus and streaming it from host memory;
    `kernel` (auto/fused/cublas) whether a GPU search of k <= 64 runs the fused Triton
    kernels (`tritonrag.retrieval.search.fused.launch`) or the score-matrix path.
    """

    def __init__(self, vectors, metric: str = "ip", device: str = "cpu", dtype: str = "float16",
                 gpu_memory_budget: int | None = None, kernel: str = "auto"):
        metric = Metric.of(metric)
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {STORAGE_DTYPES}")
        self.metric = metric
        self.backend = gpu_backend(device)  # the one decision of the path per index: `search_path`
        self.xp = np
        self.device = device if self.backend else "cpu"
        if self.backend == "cupy":
            import cupy

            from .cupy_search import GpuSearch

            self.xp = cupy
            self.gpu = GpuSearch(vectors, metric, int(device.partition(":")[2] or 0), dtype, gpu_memory_budget,
                                 kernel=kernel)
        elif self.backend == "torch":
            from .torch_search import TorchSearch

            self.gpu = TorchSearch(vectors, metric, device if ":" in device else "cuda:0", dtype, gpu_memory_budget,
                                   kernel=kernel)
        if self.backend:
            self.count, self.dimension = self.gpu.count, self.gpu.dimension
            return
        self.gpu = None
        corpus = np.asarray(vectors)
        if corpus.ndim != 2:
            raise ValueError(f"corpus vectors must be [N, d], got {corpus.shape}")
        corpus = corpus.astype(np.float32, copy=False)
        # ip/cosine/l2 score in fp64, rounded once to fp32: BLAS sgemm sums an element's products
        # in an order that depends on where the element sits in the matrix on some CPUs (OpenBLAS's
        # Haswell/Zen kernels from batch 5), so two equal corpus rows could score a few ulps apart
        # and lose "ties to the lower index". fp32 products are exact in fp64, and d of them summed
        # in any order stay far inside half an fp32 ulp of the exact sum, so every order rounds to
        # the same fp32 value (unless the sum lies within ~d * 2**-53 of a rounding midpoint).
        if metric.normalised:
            corpus = normalize_rows(corpus).astype(np.float32)
        self.corpus = corpus.astype(np.float64) if metric.uses_dot else corpus
        self.sq_norms = np.einsum("ij,ij->i", self.corpus, self.corpus) if metric.needs_norms else None
        self.count, self.dimension = int(corpus.shape[0]), int(corpus.shape[1])

    @property
    def streamed(self) -> bool:
        """True when the corpus does not fit the GPU budget and is streamed per search."""
        return self.gpu is not None and self.gpu.streamed

    def _check(self, q) -> None:
        if len(q.shape) != 2 or q.shape[1] != self.dimension:
            raise ValueError(f"queries must be [n, {self.dimension}], got {tuple(q.shape)}")

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (indices, scores), each [len(queries), min(k, count)], best first.

        `queries` may be NumPy, or CuPy/torch GPU arrays (used in place on a GPU instance).
        """
        self._check(queries)
        if self.gpu is not None:
            return self.gpu.search(queries, k)
        q = np.asarray(to_host(queries), dtype=np.float32)
        indices, ranked = top_k_rows(self.rank_values(q), k)
        return indices, self.to_scores(q, ranked)

    def vectors_at(self, ids: np.ndarray) -> np.ndarray:
        """Stored corpus rows (normalised for cosine; storage precision on a GPU) as float32 [len(ids), d]."""
        if self.gpu is not None:
            return self.gpu.vectors_at(ids)
        return np.asarray(self.corpus[np.asarray(ids)], dtype=np.float32)

    def rank_values(self, q: np.ndarray) -> np.ndarray:
        """[B, N] "larger is better" values on the host (also used by hybrid fusion)."""
        if self.metric == "cosine":
            q = normalize_rows(q).astype(np.float32)
        if self.metric != "l1":
            sims = np.asarray(q, np.float64) @ self.corpus.T
            if self.metric == "l2":
                sims = 2 * sims - self.sq_norms[None, :]
            return sims.astype(np.float32)
        out = np.empty((len(q), self.count), dtype=np.float32)
        step = max(1, _CPU_L1_ELEMENTS // max(1, len(q) * self.dimension))
        for start in range(0, self.count, step):
            block = np.asarray(self.corpus[start:start + step])
            out[:, start:start + step] = -np.abs(q[:, None, :] - block[None, :, :]).sum(axis=2)
        return out

    def to_scores(self, q: np.ndarray, ranked: np.ndarray) -> np.ndarray:
        """Turn ranking values back into the metric's reported scores."""
        q_norms = (q * q).sum(axis=1, keepdims=True) if self.metric.needs_norms else None
        return self.metric.to_scores(ranked, q_norms)
