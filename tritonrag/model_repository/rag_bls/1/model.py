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
    split_rows,
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
        # All valid requests of this batch go to each stage in one call (one per top_k).
        for members, merged in group_requests([values for _, values in valid]):
            slots = [valid[i][0] for i in members]
            try:
                out = run_pipeline(merged, self.models, _call)
            except StageError as exc:
                for slot in slots:
                    responses[slot] = error_response(str(exc), exc.code)
                continue
            except Exception as exc:  # noqa: BLE001 — this group's requests only
                for slot in slots:
                    responses[slot] = error_response(f"internal error: {type(exc).__name__}: {exc}",
                                                     pb_utils.TritonError.INTERNAL)
                continue
            rows = [len(valid[i][1]["question"]) for i in members]
            for slot, part in zip(slots, split_rows(out, OUTPUTS, rows)):
                responses[slot] = pb_utils.InferenceResponse([pb_utils.Tensor(n, part[n]) for n in OUTPUTS])
        return responses


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
