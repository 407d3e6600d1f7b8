"""Triton glue for the BLS-wired pipeline: question (+ options) -> answer, sources, scores, passages, finish_reason."""

import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import triton_python_backend_utils as pb_utils

from tritonrag.common.params import model_param
from tritonrag.common.request_checks import RequestError
from tritonrag.serving.bls import (
    OUTPUTS,
    STAGES,
    StageError,
    group_requests,
    request_values,
    run_pipeline,
    run_requests,
    split_rows,
    stage_error_code,
)
from tritonrag.serving.glue import error_response, from_dlpack, input_array, parse_config, read_limits


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        self.models = {s.role: model_param(config, f"{s.role}_model_name", s.role) for s in STAGES}

    def execute(self, requests):
        responses = [None] * len(requests)
        valid = []  # (slot, values)
        for slot, request in enumerate(requests):
            try:
                valid.append((slot, request_values(
                    input_array(request, "question"), input_array(request, "top_k"), input_array(request, "max_tokens"),
                    self.limits, **{name: input_array(request, name) for name in ("fusion", "temperature", "top_p")})))
            except RequestError as exc:
                responses[slot] = error_response(str(exc))
        # All valid requests of this batch go to each stage in one call (one per top_k); a call
        # that fails is retried request by request, so a refusal reaches only its own request.
        results = run_requests([values for _, values in valid], self.models, _call)
        for (slot, _), result in zip(valid, results):
            if isinstance(result, StageError):
                code = stage_error_code(str(result), _code_name(result.code))
                responses[slot] = error_response(str(result), getattr(pb_utils.TritonError, code))
            elif isinstance(result, Exception):
                responses[slot] = error_response(f"internal error: {type(result).__name__}: {result}",
                                                 pb_utils.TritonError.INTERNAL)
            else:
                responses[slot] = pb_utils.InferenceResponse([pb_utils.Tensor(n, result[n]) for n in OUTPUTS])
        return responses


def _code_name(code):
    """The name of a pb_utils.TritonError code ("INTERNAL", ...), None when unknown."""
    names = {getattr(pb_utils.TritonError, n): n for n in ("INVALID_ARG", "UNAVAILABLE", "INTERNAL", "NOT_FOUND",
                                                          "UNSUPPORTED", "CANCELLED", "UNKNOWN", "ALREADY_EXISTS")
             if hasattr(pb_utils.TritonError, n)}
    return names.get(code)


def _call(model, inputs, outputs):
    request = pb_utils.InferenceRequest(
        model_name=model, inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
        requested_output_names=list(outputs))
    response = request.exec()
    if response.has_error():
        error = response.error()
        code = error.code() if hasattr(error, "code") else None
        raise StageError(model, error.message(), code)
    # a GPU embedder's EMBEDDING is in GPU memory: as_numpy() reads CPU tensors only
    tensors = {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}
    return {name: t.as_numpy() if t.is_cpu() else from_dlpack(t).cpu().numpy() for name, t in tensors.items()}
