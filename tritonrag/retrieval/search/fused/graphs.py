"""Fused searches of one corpus, replayed from CUDA graphs: one capture per (batch, k).

A fused search is several launches from Python (the query's cast and normalisation, the tile
kernel, one or two merges, the decoding of the keys, the copies to the host). Launched one by
one their host time is of the order of the GPU work, and the GPU waits for the first of them;
replayed as one graph the host pays one launch (docs/decisions/0050-fused-topk-kernels.md).

The graph ends in the results the caller returns, rows and scores in pinned host memory, so
the host has nothing left to do after the wait: decoding keys and converting scores on the host
would add a large share of the replay's time to every search.

The graphs of one searcher share a memory pool: they run one at a time (a lock), so one search's
temporaries (the tiles' candidates) can take the memory another left. Results are copied out of
the pinned buffers before the lock is released.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..metric import Metric
from . import launch as fused_topk

MAX_GRAPHS = 64   # (batch, k) shapes kept per corpus; the served batcher gives batch 1..32


class FusedSearcher:
    """`search(queries, k)` -> (rows int64 [B, k], scores fp32 [B, k]) as host arrays, best first;
    scores as `ExactSearch` reports them (similarity for ip/cosine, distance for l2/l1).

    queries: fp32 torch tensor on the corpus's device, not yet normalised (cosine normalises
    here, l2 takes |q|^2 here). corpus/norms: as `fused_topk.topk_keys`."""

    def __init__(self, torch, corpus, metric: str, norms=None, graphs: bool = True,
                 max_graphs: int = MAX_GRAPHS):
        self.torch, self.corpus, self.metric, self.norms = torch, corpus, Metric.of(metric), norms
        self.graphs = graphs and corpus.device.type == "cuda" and not fused_topk._kernels().interpreted
        self.max_graphs = max_graphs
        self._captured: OrderedDict = OrderedDict()   # (batch, k, floors) -> (graph, q, rows_host, scores_host)
        self._pool = None
        self._lock = threading.Lock()

    def _run(self, q, k: int, floors: bool = False):
        """All the device work of one search: rows and scores [B, k] on the device."""
        torch = self.torch
        if self.metric.normalised:
            q = torch.nn.functional.normalize(q, dim=1, eps=1e-12)
        q_norms = (q * q).sum(dim=1, keepdim=True) if self.metric.needs_norms else None
        keys = fused_topk.topk_keys(torch, self.corpus, q, k, self.metric, self.norms, floor=floors)
        return fused_topk.decode_keys(torch, keys, self.metric, q_norms)

    def search(self, queries, k: int, floors: bool = False):
        """`floors`: the sampled floors on or off, as `search_path.route` decided."""
        if not self.graphs:
            rows, scores = self._run(queries, k, floors)
            return rows.cpu().numpy(), scores.cpu().numpy()
        torch = self.torch
        shape = (int(queries.shape[0]), int(k), bool(floors))
        with self._lock, torch.cuda.device(self.corpus.device):
            entry = self._captured.get(shape)
            if entry is None:
                entry = self._capture(*shape)
            else:
                self._captured.move_to_end(shape)
            graph, q, rows_host, scores_host = entry
            q.copy_(queries)
            # one copy into the graph's query buffer; a gather kernel inside the graph reading
            # the queries from pinned memory would save this launch but costs more on the GPU
            graph.replay()
            torch.cuda.current_stream().synchronize()
            return rows_host.numpy().copy(), scores_host.numpy().copy()

    def _capture(self, batch: int, k: int, floors: bool):
        torch = self.torch
        device = self.corpus.device
        q = torch.zeros((batch, self.corpus.shape[1]), dtype=torch.float32, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compiles the kernels outside the capture
            self._run(q, k, floors)
        torch.cuda.current_stream().wait_stream(side)
        rows_host = torch.empty((batch, k), dtype=torch.int64, pin_memory=True)
        scores_host = torch.empty((batch, k), dtype=torch.float32, pin_memory=True)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            rows, scores = self._run(q, k, floors)
            rows_host.copy_(rows, non_blocking=True)
            scores_host.copy_(scores, non_blocking=True)
        entry = (graph, q, rows_host, scores_host)
        self._captured[(batch, k, floors)] = entry
        while len(self._captured) > self.max_graphs:
            self._captured.popitem(last=False)
        return entry
