"""Hybrid retrieval: dense scores fused with BM25, by z-score mix or reciprocal rank fusion.

Both lists are cut to `candidates` per query (all passages on a small corpus); every
candidate gets both its exact dense value and its BM25 score, then

* ``zscore``: each score standardised over the candidates, ``w * z_bm25 + (1 - w) * z_dense``;
* ``rrf``: ``w / (c + rank_bm25) + (1 - w) / (c + rank_dense)`` (ranks from 1, ``c`` = 60);
* ``dense`` / ``bm25``: one list alone.

On SQuAD questions (646 paragraphs) the z-score mix beats RRF, which lets the weaker list
drag a strong BM25 hit down (perf/README.md has the numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tritonrag.common.request_checks import FUSIONS
from tritonrag.index.bm25 import BM25Index

from .search.exact import ExactSearch, to_host
from .search.topk import top_k_rows


@dataclass(frozen=True)
class HybridConfig:
    # defaults chosen on half of the SQuAD questions (perf/retrieval_quality.py)
    fusion: str = "zscore"
    weight: float = 0.45      # share of BM25 in the mix
    k1: float = 0.6
    b: float = 0.75
    rrf_c: float = 60.0
    candidates: int = 1000    # per list, before fusion

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; expected one of {FUSIONS}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fusion weight must be in [0, 1], got {self.weight}")


def _zscore(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    std = values.std()
    return (values - values.mean()) / (std if std > 0 else 1.0)


def _ranks(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """1-based rank of each candidate (score desc, passage index asc)."""
    order = np.lexsort((ids, -values.astype(np.float64)))
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


class HybridSearch:
    """Dense `ExactSearch` plus a `BM25Index` over the same passages (same order)."""

    def __init__(self, dense: ExactSearch, lexical: BM25Index):
        if lexical.count != dense.count:
            raise ValueError(f"BM25 index has {lexical.count} documents, the vectors {dense.count}")
        self.dense, self.lexical = dense, lexical

    def search(self, queries, texts: list[str], k: int, config: HybridConfig) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) [B, k]; scores are the fused values (dense/bm25 alone: their own)."""
        if config.fusion == "dense":
            return self.dense.search(queries, k)
        n = self.dense.count
        k = min(k, n)
        bm25 = self.lexical.score_matrix(texts, config.k1, config.b)
        if config.fusion == "bm25":
            return top_k_rows(bm25, k)
        m = min(n, max(k, config.candidates))
        q = np.asarray(to_host(queries), dtype=np.float32)
        if m < n:
            dense_ids, _ = self.dense.search(queries, m)
            bm25_ids, _ = top_k_rows(bm25, m)
        out_ids, out_scores = [], []
        for row in range(len(texts)):  # candidate sets differ in size per row
            ids = np.arange(n) if m == n else np.unique(np.concatenate([dense_ids[row], bm25_ids[row]]))
            dense_vals = self.dense_values(q[row], ids)
            lex_vals = bm25[row, ids]
            if config.fusion == "zscore":
                fused = config.weight * _zscore(lex_vals) + (1 - config.weight) * _zscore(dense_vals)
            else:
                fused = (config.weight / (config.rrf_c + _ranks(lex_vals, ids))
                         + (1 - config.weight) / (config.rrf_c + _ranks(dense_vals, ids)))
            local, scores = top_k_rows(fused.astype(np.float32)[None, :], k)
            out_ids.append(ids[local[0]])  # ids ascend, so column ties already mean index ties
            out_scores.append(scores[0])
        return np.stack(out_ids), np.stack(out_scores)

    def dense_values(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact "larger is better" dense values of passages `ids` for one query vector."""
        vectors = self.dense.vectors_at(ids)
        metric = self.dense.metric
        q = metric.normalize(q[None, :])[0]
        if not metric.uses_dot:
            return -np.abs(vectors - q[None, :]).sum(axis=1)
        dots = vectors @ q
        if metric.needs_norms:  # rank by -|q - x|^2
            return 2 * dots - (vectors * vectors).sum(axis=1) - float(q @ q)
        return dots


