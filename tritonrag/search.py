"""Exact top-k vector search, NumPy on the CPU and CuPy on a GPU.

Scores are "higher is better" similarities for ``ip`` and ``cosine``, and squared
distances ("lower is better") for ``l2``; ties go to the lower passage index, so a
result never depends on the batch it was computed in.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

METRICS = ("ip", "cosine", "l2")


def _xp_for(device: str):
    if device.startswith("cuda"):
        try:
            import cupy
        except ImportError as exc:  # a GPU instance without CuPy still serves, on the CPU
            log.warning("CuPy is not usable (%s); searching on the CPU. pip install 'tritonrag[gpu]'", exc)
            return np
        return cupy
    return np


class ExactSearch:
    """Brute-force search over a fixed matrix of corpus vectors."""

    def __init__(self, vectors: np.ndarray, metric: str = "ip", device: str = "cpu"):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
        self.metric = metric
        self.xp = _xp_for(device)
        self.device = device if self.xp is not np else "cpu"
        if self.xp is not np:
            self.xp.cuda.Device(int(device.partition(":")[2] or 0)).use()
        corpus = self.xp.asarray(vectors, dtype=self.xp.float32)
        if metric == "cosine":
            corpus = corpus / self.xp.maximum(self.xp.linalg.norm(corpus, axis=1, keepdims=True), 1e-12)
        self.corpus = corpus
        self.sq_norms = (corpus * corpus).sum(axis=1) if metric == "l2" else None
        self.count = int(corpus.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (indices, scores), each [len(queries), min(k, count)], best first."""
        xp = self.xp
        q = xp.asarray(queries, dtype=xp.float32)
        if q.ndim != 2 or q.shape[1] != self.corpus.shape[1]:
            raise ValueError(f"queries must be [n, {self.corpus.shape[1]}], got {tuple(q.shape)}")
        if self.metric == "cosine":
            q = q / xp.maximum(xp.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sims = q @ self.corpus.T
        if self.metric == "l2":
            # Rank by -distance so that "larger is better" holds for every metric below.
            sims = 2 * sims - self.sq_norms[None, :] - (q * q).sum(axis=1, keepdims=True)
        k = min(k, self.count)
        if k < self.count:
            part = xp.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            part = xp.broadcast_to(xp.arange(self.count), sims.shape)
        part_scores = xp.take_along_axis(sims, part, axis=1)
        indices, scores = _sorted_top(xp.asnumpy(part) if xp is not np else part,
                                      xp.asnumpy(part_scores) if xp is not np else part_scores)
        if self.metric == "l2":
            scores = -scores
        return indices, scores


def _sorted_top(part: np.ndarray, part_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by score, then index (deterministic tie-break).

    argpartition may pick any of several tied candidates at the k-th place; ties
    at the boundary are rare with float scores and we accept that here.
    """
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)
