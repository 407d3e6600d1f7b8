"""Triton glue for the query embedder: question (BYTES) -> EMBEDDING (FP32)."""

import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, torch, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.embedding import Embedder
from tritonrag.limits import decode_question
from tritonrag.model_sources import DEFAULT_EMBEDDER
from tritonrag.params import model_param
from tritonrag.triton_glue import instance_device, parse_config, read_limits, required_array, serve_batch


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        self.embedder = Embedder(model_param(config, "embedder_model", DEFAULT_EMBEDDER),
                                 device=instance_device(args),
                                 max_length=model_param(config, "max_length", 256))

    def execute(self, requests):
        return serve_batch(requests, self._parse, self.embedder.embed_queries, self._respond)

    def _parse(self, request):
        return [decode_question(q, self.limits.max_question_bytes)
                for q in required_array(request, "question").reshape(-1)]

    def _respond(self, vectors):
        return pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", np.stack(vectors))])
