"""Secondary GPU search with torch, for a CUDA instance where CuPy cannot be imported.

Triton's Python stubs on some GPU hosts run NumPy 1.x, which CuPy 14 refuses, while torch
is there: without this path such an instance would search on the host CPU. Same results
contract as `ExactSearch` (ranking values "larger is better", ties to the lower index): a
fp16/bf16/fp32 corpus, torch.mm with fp32 output (fp32 accumulation), and an exact top-k
over the 64-bit keys of `tritonrag.retrieval.search.topk` (their int64 view, `torch_keys`),
so near-equal scores never come back in a batch- or chunk-dependent order. Scores are made
one slice of corpus rows at a time (`score_bytes`); a corpus over the memory budget stays
in (pinned) host memory and is copied slice by slice. CuPy's path (`tritonrag.retrieval.search.cupy_search`)
stays the fast one: fused L1, partial top-k kernels, overlapped streaming.
"""

from __future__ import annotations

import numpy as np

from . import routing as search_path
from .metric import Metric
from .topk import decode_keys, torch_keys

DEFAULT_SCORE_BYTES = 64 << 20  # fp32 scores + int64 keys of one slice: ~3x this on the device
CONVERT_ROWS = 1 << 16          # rows converted to the storage dtype per step while loading


def _torch_dtype(torch, name: str):
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


class TorchSearch:
    """Exact search on a torch device (``cuda:N``; ``cpu`` works too, for tests)."""

    def __init__(self, vectors, metric: str, device: str = "cuda:0", dtype: str = "float16",
                 budget: int | None = None, score_bytes: int = DEFAULT_SCORE_BYTES, kernel: str = "auto"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.metric, self.dtype = Metric.of(metric), dtype
        self.storage = _torch_dtype(torch, dtype)
        self.count, self.dimension = (int(s) for s in vectors.shape)
        self.score_bytes = score_bytes
        row_bytes = self.dimension * self.storage.itemsize
        cuda = self.device.type == "cuda"
        if budget is None:
            budget = int(torch.cuda.mem_get_info(self.device)[0] * 0.8) if cuda else None
        self.budget = budget
        workspace = 3 * score_bytes
        self.streamed = budget is not None and self.count * (row_bytes + 4) + workspace > budget
        if self.streamed:
            self.slice_rows = max(1024, (budget - workspace - 4 * self.count) // (2 * row_bytes))
        home = torch.device("cpu") if self.streamed else self.device
        self.corpus = torch.empty((self.count, self.dimension), dtype=self.storage, device=home,
                                  pin_memory=bool(self.streamed and cuda))
        self.norms = torch.empty(self.count, dtype=torch.float32, device=self.device) if self.metric.needs_norms else None
        # On the CPU, norms and products are taken in fp64 and rounded once, so that equal rows
        # score the same bits wherever they sit (`tritonrag.retrieval.search.exact.ExactSearch` says why).
        self._exact = torch.float32 if cuda else torch.float64
        for start in range(0, self.count, CONVERT_ROWS):
            stop = min(self.count, start + CONVERT_ROWS)
            block = torch.as_tensor(vectors[start:stop], device=self.device).to(torch.float32)
            if self.metric.normalised:
                wide = block.to(self._exact)
                block = (wide / wide.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(torch.float32)
            block = block.to(self.storage)
            if self.norms is not None:
                stored = block.to(torch.float32)
                self.norms[start:stop] = (stored * stored).sum(dim=1)
            self.corpus[start:stop] = block.to(home)
        self._mm_out_dtype = cuda and self.storage != torch.float32  # fp16/bf16 in, fp32 out (cuBLAS)
        self.kernel = search_path.check_kernel(kernel)  # "auto" / "fused" / "cublas": `search_path.route`
        self._fused = None    # fused_graphs.FusedSearcher, made on the first fused search

    def vectors_at(self, ids: np.ndarray) -> np.ndarray:
        rows = self.corpus[self.torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.corpus.device)]
        return rows.to(self.torch.float32).cpu().numpy()

    def _rank_values(self, q, block, start: int):
        """[B, rows] fp32 "larger is better" values of corpus rows `block` (on the device)."""
        torch = self.torch
        if self.metric == "l1":
            return -torch.cdist(q, block.to(torch.float32), p=1)
        if self._mm_out_dtype:
            try:
                sims = torch.mm(q.to(self.storage), block.T, out_dtype=torch.float32)
            except (TypeError, RuntimeError, NotImplementedError):  # older torch: upcast the slice
                self._mm_out_dtype = False
                return self._rank_values(q, block, start)
        else:
            exact = self._exact
            sims = (q.to(self.storage).to(exact) @ block.to(exact).T).to(torch.float32)
        if self.metric == "l2":
            sims = 2 * sims - self.norms[start:start + block.shape[0]]
        return sims

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        k = min(int(k), self.count)
        q = torch.as_tensor(queries, device=self.device).to(torch.float32)
        route = search_path.route(self.kernel, self.metric, k, self.device.type, self.streamed, self.count,
                                  q.shape[0])
        if route.path is search_path.Path.FUSED:
            if self._fused is None:
                from .fused.graphs import FusedSearcher

                self._fused = FusedSearcher(torch, self.corpus, self.metric, self.norms)
            return self._fused.search(q, k, route.floors)  # normalises cosine queries itself; scores as _to_scores
        if self.metric.normalised:
            wide = q.to(self._exact)
            q = (wide / wide.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(torch.float32)
        rows = self.score_bytes // (4 * q.shape[0])
        if not self.metric.uses_dot:  # cdist works on an fp32 copy of the slice (no [B, rows, d] temporary)
            rows = min(rows, self.score_bytes // (4 * self.dimension))
        rows = max(k, rows)
        if self.streamed:
            rows = min(rows, self.slice_rows)
        best = []
        for start in range(0, self.count, rows):
            block = self.corpus[start:start + rows]
            if self.streamed:
                block = block.to(self.device, non_blocking=True)
            keys = torch_keys(torch, self._rank_values(q, block, start), start)
            best.append(torch.topk(keys, min(k, keys.shape[1]), dim=1).values)
        keys = torch.cat(best, dim=1)
        if keys.shape[1] > k:
            keys = torch.topk(keys, k, dim=1).values
        indices, ranked, _ = decode_keys(keys.cpu().numpy())
        q_norms = (q * q).sum(dim=1, keepdim=True).cpu().numpy() if self.metric.needs_norms else None
        return indices, self.metric.to_scores(ranked, q_norms)
