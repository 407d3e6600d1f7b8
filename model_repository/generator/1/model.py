"""Triton glue for answer generation: question + passages (+ max_tokens) -> answer.

A light forwarder for `rag_ensemble` and plain infer calls: each row becomes one
non-streaming request to `generator_stream`, which owns the decode engine, so the
rows of every batch of this model join one continuous batch. (Triton 2.51 refuses
plain ModelInfer for a decoupled model and for an ensemble holding one, so this model
is not decoupled.) `execute` returns at once and answers later through each request's
response sender (allowed for non-decoupled models since Triton 24.06: exactly one
response, flagged final), so the instance never waits for the engine: see
tritonrag/fanout.py for why threads rather than `async_exec`.
"""

import faulthandler
import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.fanout import RowFanout
from tritonrag.limits import RequestError, check_range, decode_question
from tritonrag.params import model_param
from tritonrag.triton_glue import (bytes_tensor, error_response, input_array, optional_rows, parse_config,
                                   read_limits, required_array)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        faulthandler.enable()   # a crash of this stub leaves its threads' Python stacks in the server's stderr
        config = parse_config(args)
        self.limits = read_limits(config)
        self.engine_model = model_param(config, "engine_model", "generator_stream")
        # rows waiting on the engine at once (each holds a pool thread blocked in its BLS call)
        self.fanout = RowFanout(model_param(config, "max_rows_in_flight", 512), name="generator-bls")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                rows = self._parse(request)   # copies the inputs: they are freed when execute returns
                if not rows:
                    raise RequestError("the request holds no rows")
                self.fanout.submit(rows, self._ask, lambda result, sender=sender: self._respond(sender, result))
            except RequestError as exc:
                sender.send(error_response(str(exc)), flags=FINAL)
            except Exception as exc:  # noqa: BLE001 — this request only, not its batch-mates
                sender.send(error_response(f"internal error: {type(exc).__name__}: {exc}",
                                           pb_utils.TritonError.INTERNAL), flags=FINAL)
        return None

    @staticmethod
    def _respond(sender, result) -> None:
        if isinstance(result, EngineError):
            response = error_response(result.message, result.code)
        elif isinstance(result, BaseException):
            response = error_response(f"internal error: {type(result).__name__}: {result}",
                                      pb_utils.TritonError.INTERNAL)
        else:
            response = pb_utils.InferenceResponse([bytes_tensor("answer", [[a] for a in result])])
        try:
            sender.send(response, flags=FINAL)
        except Exception as exc:  # noqa: BLE001 — the client is gone; nothing else to tell
            pb_utils.Logger.log_warn(f"generator: response not sent: {exc}")

    def finalize(self):
        self.fanout.close()

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

    def _ask(self, row) -> str:
        question, passages, max_tokens = row
        inputs = [pb_utils.Tensor("question", np.array([question], dtype=np.object_)),
                  pb_utils.Tensor("max_tokens", np.array([max_tokens], dtype=np.int32)),
                  pb_utils.Tensor("stream", np.array([False]))]
        if passages:
            inputs.append(pb_utils.Tensor("passages", np.array(passages, dtype=np.object_)))
        request = pb_utils.InferenceRequest(model_name=self.engine_model, inputs=inputs,
                                            requested_output_names=["answer"])
        parts = []
        for response in request.exec(decoupled=True):
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
