"""Triton glue for reranking: EMBEDDING + the retriever's candidates (+ top_k) -> sources, scores, passages,
evidence (the sentence an extractive answer quotes)."""

import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, torch, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.common.params import model_param
from tritonrag.common.request_checks import RequestError, check_embeddings, check_range
from tritonrag.index.store import load_index
from tritonrag.models.sources import DEFAULT_EMBEDDER, cache_dir, model_name
from tritonrag.retrieval.rerank import Candidates, RerankSettings, SentenceReranker, preload_file
from tritonrag.serving.glue import (bytes_tensor, instance_device, optional_rows, parse_config, read_limits, required_array,
                                   serve_batch)


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        settings = RerankSettings.from_config(config)
        self.dimension, embed = None, None
        if settings.method != "none":
            from tritonrag.models.embedding import Embedder

            device = instance_device(args)
            spec, max_length = model_param(config, "embedder_model", DEFAULT_EMBEDDER), model_param(config, "max_length", 256)
            embedder = Embedder(spec, device=device, max_length=max_length)
            if device != "cpu" and model_param(config, "warm_up", True):
                pb_utils.Logger.log_info(f"reranker: warmed up in {embedder.warm_up():.1f} s")
            self.dimension, embed = embedder.dimension, embedder.embed_passages
        self.reranker = SentenceReranker(embed, settings)
        index_path = model_param(config, "index_path", "")
        if embed is not None and index_path and not index_path.startswith("${"):
            # the index's sentence vectors, embedded once per index and kept in the cache folder
            index = load_index(index_path, embedder=model_name(spec), verify=False)
            if 0 < len(index.passages) <= settings.preload_max_passages:
                path = preload_file(cache_dir() / "rerank", index.manifest, model_name(spec), settings, max_length)
                seconds, read = self.reranker.preload([p.embedding_text() for p in index.passages], path)
                pb_utils.Logger.log_info(f"reranker: sentence vectors of {len(index.passages)} passages "
                                         f"{'read' if read else 'embedded'} in {seconds:.1f} s")

    def execute(self, requests):
        return serve_batch(requests, self._parse, self._rerank, self._respond)

    def _parse(self, request):
        vectors = required_array(request, "EMBEDDING")
        dimension = self.dimension or (vectors.shape[-1] if vectors.ndim == 2 else -1)
        vectors = check_embeddings(vectors, dimension, self.limits.max_embedding_norm)
        rows = len(vectors)
        sources = _rows(required_array(request, "candidate_sources"), rows, "candidate_sources")
        scores = _rows(required_array(request, "candidate_scores"), rows, "candidate_scores").astype(np.float32)
        passages = _rows(required_array(request, "candidate_passages"), rows, "candidate_passages")
        if not (sources.shape == scores.shape == passages.shape):
            raise RequestError(f"candidate_sources, candidate_scores and candidate_passages must have one shape, got "
                               f"{list(sources.shape)}, {list(scores.shape)}, {list(passages.shape)}")
        ks = [check_range("top_k", k, self.limits.default_top_k, self.limits.max_top_k)
              for k in optional_rows(request, "top_k", rows)]
        if len(set(ks)) > 1:
            raise RequestError("top_k must be the same for every row of one request")
        return [(Candidates(v, s, [_text(p) for p in row_passages], k), row_sources, row_passages)
                for v, s, row_sources, row_passages, k in zip(vectors, scores, sources, passages, ks)]

    def _rerank(self, rows):
        ranked = self.reranker.rerank([candidates for candidates, _, _ in rows])
        return [(order, scores, sources[order], passages[order], evidence)
                for (order, scores, evidence), (_, sources, passages) in zip(ranked, rows)]

    def _respond(self, results):
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("sources", np.stack([sources for _, _, sources, _, _ in results]).astype(np.object_)),
            pb_utils.Tensor("scores", np.stack([scores for _, scores, _, _, _ in results]).astype(np.float32)),
            pb_utils.Tensor("passages", np.stack([passages for _, _, _, passages, _ in results]).astype(np.object_)),
            bytes_tensor("evidence", [[evidence] for *_, evidence in results]),
        ])


def _rows(array, rows: int, name: str) -> np.ndarray:
    if array.ndim != 2 or array.shape[0] != rows:
        raise RequestError(f"{name} must be [{rows}, candidates], got shape {list(array.shape)}")
    return array


def _text(raw) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
