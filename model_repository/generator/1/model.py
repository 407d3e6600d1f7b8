"""Triton glue for answer generation: question + passages (+ max_tokens) -> answer."""

import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, torch, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import triton_python_backend_utils as pb_utils

from tritonrag.generation import Generator
from tritonrag.limits import check_range, decode_question
from tritonrag.model_sources import DEFAULT_GENERATOR
from tritonrag.params import model_param
from tritonrag.triton_glue import (bytes_tensor, input_array, instance_device, optional_rows, parse_config,
                                   read_limits, required_array, serve_batch)


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        self.generator = Generator(model_param(config, "generator_model", DEFAULT_GENERATOR),
                                   device=instance_device(args),
                                   max_prompt_tokens=model_param(config, "max_prompt_tokens", 1024))

    def execute(self, requests):
        return serve_batch(requests, self._parse, self.generator.generate, self._respond)

    def _parse(self, request):
        questions = required_array(request, "question").reshape(-1)
        passages = input_array(request, "passages")
        passages = passages.reshape(len(questions), -1) if passages is not None else [[]] * len(questions)
        max_tokens = optional_rows(request, "max_tokens", len(questions))
        return [self.generator.prepare(
                    decode_question(q, self.limits.max_question_bytes),
                    [p.decode("utf-8", "replace") for p in row],
                    check_range("max_tokens", m, self.limits.default_max_tokens, self.limits.max_max_tokens))
                for q, row, m in zip(questions, passages, max_tokens)]

    def _respond(self, answers):
        return pb_utils.InferenceResponse([bytes_tensor("answer", [[a] for a in answers])])
