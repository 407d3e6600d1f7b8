"""Triton glue for answer generation: question + passages (+ max_tokens) -> answer.

A light forwarder for `rag_ensemble` and plain infer calls: each row becomes one
non-streaming request to `generator_stream`, which owns the decode engine, so the
rows of every batch of every instance of this model join one continuous batch.
(Triton 2.51 refuses plain ModelInfer for a decoupled model and for an ensemble
holding one, and runs a non-decoupled model's `async def execute` calls one at a
time; so this model is non-decoupled, has several instances, and each execute
sends all its rows at once.)
"""

import asyncio
import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.limits import RequestError, check_range, decode_question
from tritonrag.params import model_param
from tritonrag.triton_glue import (bytes_tensor, error_response, input_array, optional_rows, parse_config,
                                   read_limits, required_array)


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        self.engine_model = model_param(config, "engine_model", "generator_stream")

    async def execute(self, requests):
        responses, parsed = [None] * len(requests), []
        for slot, request in enumerate(requests):
            try:
                rows = self._parse(request)
                if not rows:
                    raise RequestError("the request holds no rows")
                parsed.append((slot, [asyncio.ensure_future(self._ask(*row)) for row in rows]))
            except RequestError as exc:
                responses[slot] = error_response(str(exc))
            except Exception as exc:  # noqa: BLE001 — this request only, not its batch-mates
                responses[slot] = error_response(f"internal error: {type(exc).__name__}: {exc}",
                                                 pb_utils.TritonError.INTERNAL)
        for slot, tasks in parsed:
            results = await asyncio.gather(*tasks, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if isinstance(failed, EngineError):
                responses[slot] = error_response(failed.message, failed.code)
            elif failed is not None:
                responses[slot] = error_response(f"internal error: {type(failed).__name__}: {failed}",
                                                 pb_utils.TritonError.INTERNAL)
            else:
                responses[slot] = pb_utils.InferenceResponse([bytes_tensor("answer", [[a] for a in results])])
        return responses

    def _parse(self, request):
        questions = required_array(request, "question").reshape(-1)
        passages = input_array(request, "passages")
        passages = passages.reshape(len(questions), -1) if passages is not None else [[]] * len(questions)
        max_tokens = optional_rows(request, "max_tokens", len(questions))
        rows = []
        for q, row, m in zip(questions, passages, max_tokens):
            decode_question(q, self.limits.max_question_bytes)   # refuse here, before the engine
            rows.append((q, list(row), check_range("max_tokens", m, self.limits.default_max_tokens,
                                                   self.limits.max_max_tokens)))
        return rows

    async def _ask(self, question: bytes, passages: list, max_tokens: int) -> str:
        inputs = [pb_utils.Tensor("question", np.array([question], dtype=np.object_)),
                  pb_utils.Tensor("max_tokens", np.array([max_tokens], dtype=np.int32)),
                  pb_utils.Tensor("stream", np.array([False]))]
        if passages:
            inputs.append(pb_utils.Tensor("passages", np.array(passages, dtype=np.object_)))
        request = pb_utils.InferenceRequest(model_name=self.engine_model, inputs=inputs,
                                            requested_output_names=["answer"])
        parts = []
        for response in await request.async_exec(decoupled=True):
            if response.has_error():
                error = response.error()
                code = error.code() if hasattr(error, "code") else pb_utils.TritonError.INVALID_ARG
                raise EngineError(error.message(), code)
            tensor = pb_utils.get_output_tensor_by_name(response, "answer")
            if tensor is not None:
                parts.append(tensor.as_numpy().reshape(-1)[0].decode("utf-8"))
        return "".join(parts)


class EngineError(Exception):
    def __init__(self, message: str, code):
        super().__init__(message)
        self.message, self.code = message, code
