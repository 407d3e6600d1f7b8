"""The CuPy side of `ExactSearch`: GPU-resident or streamed corpus, cuBLAS/L1 scores, partial top-k.

Scores are computed a slice of corpus rows at a time (`score_bytes` of fp32 scores, small
enough to stay in the GPU's L2 cache between the product that writes them and the top-k
kernel that reads them), and each slice leaves only k candidate keys per segment. When
the corpus (plus its norms and that workspace) exceeds `budget` bytes it stays in pinned
host memory and is streamed through two device buffers: the copy of chunk i+1 runs on
its own stream while chunk i is scored (events order the reuse of each buffer).
"""

from __future__ import annotations

import math

import numpy as np

from . import cuda_c_kernels as cuda_kernels
from . import routing as search_path
from .fused import graphs as fused_graphs, launch as fused_topk
from .metric import Metric
from .topk import decode_keys

CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
CUBLAS_COMPUTE_32F = 68
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_GEMM_DEFAULT = -1
_CUDA_TYPES = {"float16": CUDA_R_16F, "bfloat16": CUDA_R_16BF, "float32": CUDA_R_32F}
_NUMPY_TYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}
MAX_KERNEL_K = search_path.MAX_KERNEL_K  # larger k: threshold + lexsort (`tritonrag.retrieval.search.topk.top_k_rows`)
DEFAULT_SCORE_BYTES = 128 << 20  # fewer, larger slices: fewer top-k launches (docs/decisions/0051-cuda-partial-topk.md)
CONVERT_ROWS = 1 << 16      # rows converted to the storage dtype per step while loading
TOPK_BLOCKS_PER_SM = 8      # partial top-k blocks per SM over the batch (fewer: a partial last wave)


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def to_storage(cp, x, dtype: str):
    """fp32 CuPy array -> storage dtype (bf16 as uint16 bits, rounded to nearest even)."""
    if dtype == "bfloat16":
        bits = cp.ascontiguousarray(x, dtype=cp.float32).view(cp.uint32)
        return ((bits + cp.uint32(0x7FFF) + ((bits >> 16) & cp.uint32(1))) >> 16).astype(cp.uint16)
    return x.astype(_NUMPY_TYPES[dtype])


def from_storage(cp, x, dtype: str):
    if dtype == "bfloat16":
        return (x.astype(cp.uint32) << 16).view(cp.float32)
    return x.astype(cp.float32)


def is_pinned(array: np.ndarray) -> bool:
    import cupy

    try:
        attrs = cupy.cuda.runtime.pointerGetAttributes(array.ctypes.data)
    except Exception:  # noqa: BLE001 — pageable memory raises on some CUDA versions
        return False
    return getattr(attrs, "type", 0) == 1  # cudaMemoryTypeHost


def pinned_empty(shape, dtype) -> np.ndarray:
    """A NumPy array in page-locked host memory (fast, asynchronous host->GPU copies)."""
    import cupy

    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    memory = cupy.cuda.alloc_pinned_memory(max(count, 1))
    return np.frombuffer(memory, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class GpuSearch:

    def __init__(self, vectors, metric: str, device_id: int = 0, dtype: str = "float16",
                 budget: int | None = None, score_bytes: int = DEFAULT_SCORE_BYTES, kernel: str = "auto"):
        import cupy as cp

        self.cp = cp
        self.device_id = device_id
        cp.cuda.Device(device_id).use()
        self.metric, self.dtype = Metric.of(metric), dtype
        metric = self.metric
        self.count, self.dimension = (int(s) for s in vectors.shape)
        # a small budget also bounds the score slices (tests force streaming with ~100 MB)
        self.score_bytes = score_bytes = min(score_bytes, max(1 << 20, (int(budget) // 8) if budget else score_bytes))
        self.sms = cp.cuda.Device(device_id).attributes["MultiProcessorCount"]
        itemsize = np.dtype(_NUMPY_TYPES[dtype]).itemsize
        row_bytes = self.dimension * itemsize
        free = cp.cuda.runtime.memGetInfo()[0]
        self.budget = int(budget) if budget else int(free * 0.8)
        norm_bytes = 4 * self.count if metric.needs_norms else 0
        workspace = 2 * score_bytes + (16 << 20)
        self.streamed = self.count * row_bytes + norm_bytes + workspace > self.budget
        if self.streamed:
            room = self.budget - norm_bytes - workspace
            self.chunk_rows = room // (2 * row_bytes)
            if self.chunk_rows < 1024:
                raise ValueError(f"GPU memory budget {self.budget} bytes leaves no room to stream "
                                 f"{row_bytes}-byte rows (norms {norm_bytes}, workspace {workspace})")
            self.chunk_rows = min(self.chunk_rows, self.count)
        self.norms = cp.empty(self.count, cp.float32) if metric.needs_norms else None
        self._load(vectors)
        self._alpha = np.ones(1, np.float32)
        self._beta = np.zeros(1, np.float32)
        self._score_buffer = None  # one flat fp32 buffer of score_bytes, viewed as [batch, rows] per call
        self._buffers: dict = {}   # (batch, k, width) -> candidate and result key buffers
        self.kernel = search_path.check_kernel(kernel)  # "auto" / "fused" / "cublas": `search_path.route`
        self._fused = None   # fused_graphs.FusedSearcher over torch views of this memory, made on first use

    # -- loading -------------------------------------------------------------
    def _load(self, vectors) -> None:
        cp = self.cp
        host_ready = (isinstance(vectors, np.ndarray) and vectors.dtype == _NUMPY_TYPES[self.dtype]
                      and not self.metric.normalised and vectors.flags.c_contiguous and is_pinned(vectors))
        adopt = (not self.streamed and isinstance(vectors, cp.ndarray) and not self.metric.normalised
                 and vectors.dtype == _NUMPY_TYPES[self.dtype] and vectors.flags.c_contiguous)
        if adopt:  # already on the GPU in the storage type: used in place, no second copy
            self.corpus = vectors
            if self.norms is not None:
                for start in range(0, self.count, CONVERT_ROWS):
                    block = from_storage(cp, vectors[start:start + CONVERT_ROWS], self.dtype)
                    self.norms[start:start + CONVERT_ROWS] = (block * block).sum(axis=1)
            return
        if self.streamed:
            self.host = vectors if host_ready else pinned_empty((self.count, self.dimension), _NUMPY_TYPES[self.dtype])
            self.corpus = None
        else:
            self.corpus = cp.empty((self.count, self.dimension), _NUMPY_TYPES[self.dtype])
        for start in range(0, self.count, CONVERT_ROWS):
            stop = min(self.count, start + CONVERT_ROWS)
            if host_ready and self.streamed and self.norms is None:
                break
            block = cp.asarray(vectors[start:stop])
            if block.dtype != _NUMPY_TYPES[self.dtype] or self.metric.normalised:
                block = self.metric.normalize(block.astype(cp.float32), cp)
                block = to_storage(cp, block, self.dtype)
            if self.norms is not None:
                as_float = from_storage(cp, block, self.dtype)
                self.norms[start:stop] = (as_float * as_float).sum(axis=1)
            if self.streamed:
                if not host_ready:
                    block.get(out=self.host[start:stop])
            else:
                self.corpus[start:stop] = block
        cp.cuda.Device(self.device_id).synchronize()

    def vectors_at(self, ids: np.ndarray) -> np.ndarray:
        cp = self.cp
        ids = np.asarray(ids, dtype=np.int64)
        with cp.cuda.Device(self.device_id):
            if self.streamed:
                rows = cp.asarray(self.host[ids])
            else:
                rows = self.corpus[cp.asarray(ids)]
            return from_storage(cp, rows, self.dtype).get()

    # -- searching -------------------------------------------------------------
    def _queries(self, queries):
        cp = self.cp
        q = cp.ascontiguousarray(cp.asarray(queries), dtype=cp.float32)  # torch/CuPy GPU arrays: no host trip
        return self.metric.normalize(q, cp)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        cp = self.cp
        with cp.cuda.Device(self.device_id):
            k = min(int(k), self.count)
            route = search_path.route(self.kernel, self.metric, k, "cuda", self.streamed, self.count, len(queries),
                                      max_kernel_k=MAX_KERNEL_K)
            if route.path is search_path.Path.FUSED:
                return self._search_fused(queries, k, route.floors)
            q = self._queries(queries)
            if route.path is search_path.Path.FULL_ROWS:
                return self._search_large_k(q, k)
            plan = self._plan(q.shape[0], k)
            q_store = None if not self.metric.uses_dot else cp.ascontiguousarray(to_storage(cp, q, self.dtype))
            self._launch(plan, q, q_store)
            indices, ranked, _ = decode_keys(plan["best"].get())
            return indices, self._to_scores(ranked, self._q_norms(q))

    def _search_fused(self, queries, k: int, floors: bool):
        """Scores and top-k in one Triton kernel per tile (`tritonrag.retrieval.search.fused.launch`), via DLPack views.

        The queries' own work (cast, cosine normalisation, l2 norms) is torch's here, not CuPy's:
        CuPy's reductions are separate launches outside the graph and cost a large share of a
        search. All of it is replayed from one CUDA graph per (batch, k): `tritonrag.retrieval.search.fused.graphs`."""
        import torch

        if self._fused is None:
            corpus = torch.from_dlpack(self.corpus)
            if self.dtype == "bfloat16":  # stored as uint16 bits
                corpus = corpus.view(torch.bfloat16)
            norms = torch.from_dlpack(self.norms) if self.norms is not None else None
            self._fused = fused_graphs.FusedSearcher(torch, corpus, self.metric, norms)
        device = self._fused.corpus.device
        q = queries if isinstance(queries, torch.Tensor) else torch.as_tensor(queries, device=device)
        return self._fused.search(q.to(device=device, dtype=torch.float32), k, floors)  # rows and the metric's scores, decoded on the GPU

    def _plan(self, batch: int, k: int) -> dict:
        """Launch shapes and buffers of one search of `batch` queries (slices, segments, keys)."""
        # exactly k register slots up to 32 (no local memory), else a power of two
        slots = k if k <= 32 else max(2, _pow2(k))
        threads = 256 if slots <= 32 else 128
        score_rows = max(threads, min(self.count, self.score_bytes // (4 * batch)))
        nseg = max(1, min(math.ceil(TOPK_BLOCKS_PER_SM * self.sms / batch), math.ceil(score_rows / threads)))
        seg_len = math.ceil(score_rows / nseg)
        chunk = self.chunk_rows if self.streamed else self.count
        slices = [(c + s, min(score_rows, min(chunk, self.count - c) - s))
                  for c in range(0, self.count, chunk) for s in range(0, min(chunk, self.count - c), score_rows)]
        width = len(slices) * nseg * k
        cands, best = self._key_buffers(batch, k, width)
        return dict(k=k, slots=slots, threads=threads, nseg=nseg, seg_len=seg_len, cands=cands, best=best,
                    score_rows=score_rows, slices=slices, chunk=chunk,
                    kernel=cuda_kernels.topk_kernel(slots, threads))

    def _launch(self, plan: dict, q, q_store) -> None:
        """All GPU work of one search on the current stream: scores, partial and final top-k."""
        plan = dict(plan, q=q, q_store=q_store)
        cands, best, k, batch = plan["cands"], plan["best"], plan["k"], q.shape[0]
        if self.streamed:
            self._stream(plan, plan["chunk"])
        else:
            for n, (start, rows) in enumerate(plan["slices"]):
                block = self.corpus if rows == self.count else self.corpus[start:start + rows]
                self._score_slice(block, start, rows, n, plan)
        plan["kernel"](
            (1, batch), (plan["threads"],),
            (cands, cands, cands, np.float32(1), np.int32(2), np.int64(cands.shape[1]),
             np.int64(cands.shape[1]), np.int64(cands.shape[1]), np.uint32(0), np.int32(k), best,
             np.int64(k), np.int64(0)))

    def _key_buffers(self, batch: int, k: int, width: int):
        """Reused candidate/result key buffers (every slot is written each call); a few shapes kept."""
        key = (batch, k, width)
        if key not in self._buffers:
            if len(self._buffers) >= 8:
                self._buffers.pop(next(iter(self._buffers)))
            self._buffers[key] = (self.cp.empty((batch, width), self.cp.uint64), self.cp.empty((batch, k), self.cp.uint64))
        return self._buffers[key]

    def _scores(self, batch: int, rows: int):
        """A [batch, rows] fp32 view of the one reused score buffer (rows <= score_rows)."""
        cp = self.cp
        need = batch * rows
        if self._score_buffer is None or self._score_buffer.size < need:
            self._score_buffer = cp.empty(max(need, self.score_bytes // 4), cp.float32)
        return self._score_buffer[:need].reshape(batch, rows)

    def _score_slice(self, block, start: int, rows: int, slot: int, plan: dict) -> None:
        """Score `rows` corpus rows (a device view) and leave nseg*k candidate keys at `slot`."""
        q, batch = plan["q"], plan["q"].shape[0]
        scores = self._scores(batch, rows)
        if self.metric.uses_dot:
            self._gemm(block, plan["q_store"], scores, rows)
        else:
            self._l1(block, q, scores, rows)
        mode = 1 if self.metric.needs_norms else 0  # the top-k kernel adds -|x|^2 to 2 q.x for l2
        norms = self.norms[start:start + rows] if self.norms is not None else scores
        k, nseg = plan["k"], plan["nseg"]
        plan["kernel"](
            (nseg, batch), (plan["threads"],),
            (scores, scores, norms, np.float32(2), np.int32(mode), np.int64(rows), np.int64(rows),
             np.int64(plan["seg_len"]), np.uint32(start), np.int32(k), plan["cands"],
             np.int64(plan["cands"].shape[1]), np.int64(slot * nseg * k)))

    def _gemm(self, block, q_store, scores, rows: int) -> None:
        """scores[B, rows] = q . block^T via cublasGemmEx (storage-type inputs, fp32 out and compute)."""
        from cupy.cuda import cublas, device

        kind = _CUDA_TYPES[self.dtype]
        handle = device.get_cublas_handle()
        # CuPy sets the handle's stream only in its own calls: without this the streamed path's
        # products ran on whichever stream CuPy used last. (CuPy refuses cuBLAS calls during a
        # stream capture, so this search cannot be a CUDA graph.)
        cublas.setStream(handle, self.cp.cuda.get_current_stream().ptr)
        cublas.gemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, rows, q_store.shape[0],
                      self.dimension, self._alpha.ctypes.data, block.data.ptr, kind, self.dimension,
                      q_store.data.ptr, kind, self.dimension, self._beta.ctypes.data, scores.data.ptr,
                      CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)

    def _l1(self, block, q, scores, rows: int) -> None:
        batch = q.shape[0]
        if batch <= 4:
            tq, qpt, rpt, dk = 4, 4, 2, 16
        elif batch <= 8:
            tq, qpt, rpt, dk = 8, 4, 4, 16
        else:
            tq, qpt, rpt, dk = 32, 4, 8, 32
        tile_rows = (256 // (tq // qpt)) * rpt
        kernel = cuda_kernels.l1_kernel(self.dtype, tq, qpt, rpt, dk)
        kernel((math.ceil(rows / tile_rows), math.ceil(batch / tq)), (256,),
               (block, q, np.int32(batch), np.int64(rows), np.int32(self.dimension), scores, np.int64(rows)))

    def _stream(self, plan: dict, chunk: int) -> None:
        """Double-buffered host->GPU streaming: copy chunk i+1 while chunk i is scored."""
        cp = self.cp
        buffers = [cp.empty((chunk, self.dimension), _NUMPY_TYPES[self.dtype]) for _ in range(2)]
        copy_stream, compute_stream = cp.cuda.Stream(), cp.cuda.Stream()
        copied = [cp.cuda.Event(), cp.cuda.Event()]
        released: list = [None, None]
        slot = 0
        score_rows = plan["score_rows"]
        for n, start in enumerate(range(0, self.count, chunk)):
            which = n % 2
            rows = min(chunk, self.count - start)
            if released[which] is not None:
                copy_stream.wait_event(released[which])
            buffers[which][:rows].set(self.host[start:start + rows], stream=copy_stream)
            copied[which].record(copy_stream)
            compute_stream.wait_event(copied[which])
            with compute_stream:
                for s in range(0, rows, score_rows):
                    sub = min(score_rows, rows - s)
                    self._score_slice(buffers[which][s:s + sub], start + s, sub, slot, plan)
                    slot += 1
                released[which] = compute_stream.record()
        compute_stream.synchronize()

    def _search_large_k(self, q, k: int):
        """k above the kernel's limit: full score rows, then threshold + lexsort (still exact)."""
        from .topk import top_k_rows

        cp = self.cp
        values = cp.empty((q.shape[0], self.count), cp.float32)
        q_store = None if not self.metric.uses_dot else cp.ascontiguousarray(to_storage(cp, q, self.dtype))
        chunk = self.chunk_rows if self.streamed else self.count
        for start in range(0, self.count, chunk):
            rows = min(chunk, self.count - start)
            block = self.corpus[start:start + rows] if not self.streamed else cp.asarray(self.host[start:start + rows])
            scores = cp.empty((q.shape[0], rows), cp.float32)
            if not self.metric.uses_dot:
                self._l1(block, q, scores, rows)
            else:
                self._gemm(block, q_store, scores, rows)
                if self.metric.needs_norms:
                    scores = 2 * scores - self.norms[None, start:start + rows]
            values[:, start:start + rows] = scores
        indices, ranked = top_k_rows(values, k, xp=cp)
        return indices, self._to_scores(ranked, self._q_norms(q))

    def _q_norms(self, q):
        """|q|^2 as a [B, 1] host array for l2 (None otherwise)."""
        return (q * q).sum(axis=1, keepdims=True).get() if self.metric.needs_norms else None

    def _to_scores(self, ranked: np.ndarray, q_norms) -> np.ndarray:
        return self.metric.to_scores(ranked, q_norms)
