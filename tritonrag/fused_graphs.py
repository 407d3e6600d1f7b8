"""Fused searches of one corpus, replayed from CUDA graphs: one capture per (batch, k).

A fused search is several launches from Python (the query's cast and normalisation, the tile
kernel, one or two merges, the copy of the keys to the host). Launched one by one they took
80-340 us of host time on the H100 host, and the GPU waited for the first of them; replayed as
one graph, the whole search of 1M x 1024 rows went from 0.84 to 0.80 ms at batch 32 and from
0.78 to 0.72 ms at batch 8 (perf/results/2026-11-25_NVIDIA-H100-80GB-HBM3_retrieval_s14-probe.json).

The graphs of one searcher share a memory pool: they run one at a time (a lock), so one search's
temporaries (the tiles' candidates) can take the memory another left. Results land in pinned host
buffers inside the graph and are copied out before the lock is released.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from . import fused_topk

MAX_GRAPHS = 64   # (batch, k) shapes kept per corpus; the served batcher gives batch 1..32


class FusedSearcher:
    """`search(queries, k)` -> (keys [B, k] int64, |q|^2 [B, 1] fp32 or None) as host arrays.

    queries: fp32 torch tensor on the corpus's device, not yet normalised (cosine normalises
    here, l2 takes |q|^2 here). corpus/norms: as `fused_topk.topk_keys`."""

    def __init__(self, torch, corpus, metric: str, norms=None, graphs: bool = True,
                 max_graphs: int = MAX_GRAPHS):
        self.torch, self.corpus, self.metric, self.norms = torch, corpus, metric, norms
        self.graphs = graphs and corpus.device.type == "cuda" and not fused_topk._kernels().interpreted
        self.max_graphs = max_graphs
        self._captured: OrderedDict = OrderedDict()   # (batch, k) -> (graph, q, keys_host, norms_host)
        self._pool = None
        self._lock = threading.Lock()

    def _run(self, q, k: int):
        """All the device work of one search: keys [B, k] and |q|^2 (l2) on the device."""
        torch = self.torch
        if self.metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=1, eps=1e-12)
        q_norms = (q * q).sum(dim=1, keepdim=True) if self.metric == "l2" else None
        return fused_topk.topk_keys(torch, self.corpus, q, k, self.metric, self.norms), q_norms

    def search(self, queries, k: int):
        if not self.graphs:
            keys, q_norms = self._run(queries, k)
            return keys.cpu().numpy(), (q_norms.cpu().numpy() if q_norms is not None else None)
        torch = self.torch
        shape = (int(queries.shape[0]), int(k))
        with self._lock, torch.cuda.device(self.corpus.device):
            entry = self._captured.get(shape)
            if entry is None:
                entry = self._capture(*shape)
            else:
                self._captured.move_to_end(shape)
            graph, q, keys_host, norms_host = entry
            q.copy_(queries)
            graph.replay()
            torch.cuda.current_stream().synchronize()
            return keys_host.numpy().copy(), (norms_host.numpy().copy() if norms_host is not None else None)

    def _capture(self, batch: int, k: int):
        torch = self.torch
        device = self.corpus.device
        q = torch.zeros((batch, self.corpus.shape[1]), dtype=torch.float32, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compiles the kernels outside the capture
            self._run(q, k)
        torch.cuda.current_stream().wait_stream(side)
        keys_host = torch.empty((batch, k), dtype=torch.int64, pin_memory=True)
        norms_host = torch.empty((batch, 1), dtype=torch.float32, pin_memory=True) if self.metric == "l2" else None
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            keys, q_norms = self._run(q, k)
            keys_host.copy_(keys, non_blocking=True)
            if norms_host is not None:
                norms_host.copy_(q_norms, non_blocking=True)
        entry = (graph, q, keys_host, norms_host)
        self._captured[(batch, k)] = entry
        while len(self._captured) > self.max_graphs:
            self._captured.popitem(last=False)
        return entry
