"""Triton glue for retrieval: EMBEDDING (+ question, top_k, fusion) -> sources, scores, passages,
and, when asked for, the reranker's candidates (candidate_sources, candidate_scores, candidate_passages)."""

import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, torch, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.common.params import model_param
from tritonrag.common.request_checks import RequestError, check_embeddings, check_range, decode_question
from tritonrag.index.store import load_index
from tritonrag.models.sources import DEFAULT_EMBEDDER, model_name
from tritonrag.retrieval.retriever import Retriever, RetrieverSettings, Row
from tritonrag.serving.glue import (bytes_tensor, input_array, instance_device, optional_rows, parse_config,
                                   read_limits, required_array, serve_batch, wants_output)

CANDIDATES = ("candidate_sources", "candidate_scores", "candidate_passages")


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        index_path = model_param(config, "index_path", "")
        if not index_path:
            raise pb_utils.TritonModelException(
                "retriever: parameter index_path is not set (`tritonrag serve` sets it)")
        embedder = model_name(model_param(config, "embedder_model", DEFAULT_EMBEDDER))
        self.index = load_index(index_path, embedder=embedder)
        device = instance_device(args)
        self.retriever = Retriever(self.index, RetrieverSettings.from_config(config), device, index_path)
        if device != "cpu" and model_param(config, "warm_up", True):
            batches = range(1, max(1, int(config.get("max_batch_size", 32))) + 1)  # a CUDA graph each (fused)
            seconds = self.retriever.warm_up(self.limits.default_top_k, batches)
            pb_utils.Logger.log_info(f"retriever: warmed up in {seconds:.1f} s")

    def execute(self, requests):
        return serve_batch(requests, self._parse, self._search, self._respond)

    def _search(self, rows):
        return [(row.k, indices, scores) for row, (indices, scores) in zip(rows, self.retriever.search(rows))]

    def _texts(self, request, name, rows):
        array = input_array(request, name)
        if array is None:
            return [None] * rows
        flat = array.reshape(-1)
        if len(flat) != rows:
            raise RequestError(f"{name} must have one value per row, got shape {list(array.shape)}")
        if name == "question":
            return [decode_question(v, self.limits.max_question_bytes) for v in flat]
        return [v.decode("utf-8", "replace")[:32] if isinstance(v, bytes) else str(v)[:32] for v in flat]

    def _parse(self, request):
        # a GPU embedder's output stays on the GPU (FORCE_CPU_ONLY_INPUT_TENSORS "no")
        vectors = check_embeddings(required_array(request, "EMBEDDING", on_device=True),
                                   self.index.manifest["dimension"], self.limits.max_embedding_norm)
        ks = [check_range("top_k", k, self.limits.default_top_k, self.limits.max_top_k)
              for k in optional_rows(request, "top_k", len(vectors))]
        if len(set(ks)) > 1:
            raise RequestError("top_k must be the same for every row of one request")
        texts = self._texts(request, "question", len(vectors))
        fusions = [None if f is None else f.strip().lower() for f in self._texts(request, "fusion", len(vectors))]
        # the reranker's candidates are searched only for requests that ask for them
        candidates = self.retriever.settings.rerank_candidates if any(wants_output(request, n) for n in CANDIDATES) else 0
        return [Row(v, k, t, self.retriever.row_fusion(t, f), candidates)
                for v, k, t, f in zip(vectors, ks, texts, fusions)]

    def _respond(self, results):
        # a row holds its depth (top_k, or the candidates when more): sources, scores and passages
        # are cut to its top_k (one per request), the candidate_* outputs hold them all
        k = results[0][0]
        passages = [[self.index.passages[i] for i in idx] for _, idx, _ in results]
        scores = np.stack([s for _, _, s in results]).astype(np.float32)
        sources = [[p.id for p in row] for row in passages]
        texts = [[p.embedding_text() for p in row] for row in passages]
        return pb_utils.InferenceResponse([
            bytes_tensor("sources", [row[:k] for row in sources]),
            pb_utils.Tensor("scores", scores[:, :k]),
            bytes_tensor("passages", [row[:k] for row in texts]),
            bytes_tensor("candidate_sources", sources),
            pb_utils.Tensor("candidate_scores", scores),
            bytes_tensor("candidate_passages", texts),
        ])
