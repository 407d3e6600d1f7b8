"""What the `retriever` model serves: dense, BM25 or fused search over one index.

Built from the model's `config.pbtxt` parameters (`RetrieverSettings.from_config`), so the
Triton glue only parses requests. A row carries its query vector, top_k, and optionally
its question text and a fusion override; rows are grouped by fusion and each group is
searched in one call, so a dynamic batch stays one GPU pass per fusion in use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tritonrag.common.params import model_param
from tritonrag.common.request_checks import FUSIONS, RequestError
from tritonrag.index.bm25 import TokenizerConfig
from tritonrag.index.store import Index, load_lexical

from .hybrid import HybridConfig, HybridSearch
from .search.exact import STORAGE_DTYPES, ExactSearch
from .search.routing import KERNELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieverSettings:
    storage_dtype: str = "float16"
    gpu_memory_budget_mb: int = 0      # 0: 80 % of the GPU's free memory
    search_kernel: str = "auto"        # GPU, k <= 64: fused Triton score+top-k or not (`search.routing`)
    rerank_candidates: int = 10        # rows of the candidate_* outputs (the reranker's input), at least top_k
    hybrid: HybridConfig = HybridConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()

    @classmethod
    def from_config(cls, config: Mapping) -> "RetrieverSettings":
        d, h, t = cls(), HybridConfig(), TokenizerConfig()
        settings = cls(
            storage_dtype=model_param(config, "storage_dtype", d.storage_dtype),
            gpu_memory_budget_mb=model_param(config, "gpu_memory_budget_mb", d.gpu_memory_budget_mb),
            search_kernel=model_param(config, "search_kernel", d.search_kernel),
            rerank_candidates=model_param(config, "rerank_candidates", d.rerank_candidates),
            hybrid=HybridConfig(
                fusion=model_param(config, "fusion", h.fusion),
                weight=model_param(config, "fusion_weight", h.weight),
                k1=model_param(config, "bm25_k1", h.k1),
                b=model_param(config, "bm25_b", h.b),
                rrf_c=model_param(config, "rrf_c", h.rrf_c),
                candidates=model_param(config, "hybrid_candidates", h.candidates)),
            tokenizer=TokenizerConfig(stem=model_param(config, "bm25_stem", t.stem),
                                      stop_words=model_param(config, "bm25_stop_words", t.stop_words),
                                      bigrams=model_param(config, "bm25_bigrams", t.bigrams)))
        if settings.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {settings.storage_dtype!r}")
        if settings.rerank_candidates < 1:
            raise ValueError(f"rerank_candidates must be at least 1, got {settings.rerank_candidates}")
        if settings.search_kernel not in KERNELS:
            raise ValueError(f"search_kernel must be one of {KERNELS}, got {settings.search_kernel!r}")
        return settings


@dataclass(frozen=True)
class Row:
    vector: np.ndarray
    k: int
    text: str | None
    fusion: str
    candidates: int = 0   # rows searched and kept beyond k for a reranker (0: k only)

    @property
    def depth(self) -> int:
        return max(self.k, self.candidates)


def stack_vectors(vectors: Sequence) -> "np.ndarray":
    """Rows of query vectors as one [n, d] array: NumPy, or a torch tensor on the device of the
    first torch row (a GPU embedder's output, taken through DLPack, is searched in place)."""
    device = next((v.device for v in vectors if hasattr(v, "detach")), None)
    if device is None:
        return np.stack(vectors)
    import torch

    return torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in vectors])


class Retriever:
    def __init__(self, index: Index, settings: RetrieverSettings, device: str = "cpu", index_path: Path | None = None):
        self.index, self.settings = index, settings
        budget = settings.gpu_memory_budget_mb << 20 if settings.gpu_memory_budget_mb else None
        self.dense = ExactSearch(index.vectors, index.metric, device, settings.storage_dtype, budget,
                                 kernel=settings.search_kernel)
        self._lexical = None
        self._index_path = index_path
        if settings.hybrid.fusion != "dense":
            self.hybrid  # build or load BM25 now, not on the first request

    @property
    def hybrid(self) -> HybridSearch:
        if self._lexical is None:
            self._lexical = HybridSearch(self.dense, load_lexical(self._index_path, self.index.passages,
                                                                  self.settings.tokenizer))
        return self._lexical

    def row_fusion(self, text: str | None, requested: str | None) -> str:
        """The fusion a row runs with: its own, else (None or "") the configured one (dense when it has no text)."""
        if requested:
            if requested not in FUSIONS:
                raise RequestError(f"fusion must be one of {list(FUSIONS)}, got {requested!r}")
            if requested != "dense" and text is None:
                raise RequestError(f"fusion {requested!r} needs the question text (input 'question')")
            return requested
        return self.settings.hybrid.fusion if text is not None else "dense"

    def warm_up(self, top_k: int, batches: Sequence[int] = (1, 32)) -> float:
        """Search random queries of a few batch sizes with `top_k`, with the reranker's candidate
        count and, under hybrid fusion, with the dense candidates it asks for; returns the seconds it took.

        On a GPU the first search of each shape compiles kernels (Triton's fused top-k: one per
        query block of 16 or 32 and per list length, seconds each; CuPy's top-k per slot count):
        warmed up at load, no request waits for them (docs/decisions/0052-fused-search-policy.md).
        The fused search also
        captures a CUDA graph per (batch, k) on its first search of that shape
        (`tritonrag.retrieval.search.fused.graphs`): the served model warms every batch size up to its
        max_batch_size."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        top_ks = {top_k, max(top_k, self.settings.rerank_candidates)}
        top_ks |= {self.settings.hybrid.candidates} if self.settings.hybrid.fusion != "dense" else set()
        for k in sorted({min(k, self.dense.count) for k in top_ks}):   # a k above the corpus size is cut to it
            for batch in batches:
                self.dense.search(rng.standard_normal((batch, self.dense.dimension), dtype=np.float32), k)
        return time.perf_counter() - start

    def search(self, rows: Sequence[Row]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(indices, scores) per row, each cut to the row's depth (its k, or its candidates when more)."""
        results: list = [None] * len(rows)
        for fusion in sorted({r.fusion for r in rows}):
            members = [i for i, r in enumerate(rows) if r.fusion == fusion]
            vectors = stack_vectors([rows[i].vector for i in members])
            k = max(rows[i].depth for i in members)
            if fusion == "dense":
                indices, scores = self.dense.search(vectors, k)
            else:
                config = replace(self.settings.hybrid, fusion=fusion)
                indices, scores = self.hybrid.search(vectors, [rows[i].text for i in members], k, config)
            for j, i in enumerate(members):
                results[i] = (indices[j, :rows[i].depth], scores[j, :rows[i].depth])
        return results
