"""Triton glue for the query embedder: question (BYTES) -> EMBEDDING (FP32)."""

import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, torch, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.common.params import model_param
from tritonrag.common.request_checks import decode_question
from tritonrag.models.embedding import Embedder
from tritonrag.models.sources import DEFAULT_EMBEDDER
from tritonrag.serving.glue import (instance_device, output_tensor, parse_config, read_limits, required_array,
                                   serve_batch)


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        device = instance_device(args)
        self.embedder = Embedder(model_param(config, "embedder_model", DEFAULT_EMBEDDER), device=device,
                                 max_length=model_param(config, "max_length", 256))
        if device != "cpu" and model_param(config, "warm_up", True):
            pb_utils.Logger.log_info(f"embedder: warmed up in {self.embedder.warm_up():.1f} s")
        # a GPU instance leaves EMBEDDING in GPU memory (DLPack): no host round trip before the retriever
        on_gpu = device != "cpu" and model_param(config, "output_on_gpu", False)
        self.embed = self.embedder.embed_queries_on_device if on_gpu else self.embedder.embed_queries

    def execute(self, requests):
        return serve_batch(requests, self._parse, self.embed, self._respond)

    def _parse(self, request):
        return [decode_question(q, self.limits.max_question_bytes)
                for q in required_array(request, "question").reshape(-1)]

    def _respond(self, vectors):
        # rows of one request: a slice of the batch's [n, d] torch tensor, or NumPy rows
        return pb_utils.InferenceResponse([output_tensor("EMBEDDING", vectors if hasattr(vectors, "detach")
                                                         else np.stack(vectors))])
