"""Triton glue for the BLS-wired pipeline: question (+ top_k, max_tokens) -> answer, sources, scores."""

import asyncio
import os
import sys

# The backend stub runs an isolated interpreter that ignores PYTHONPATH; take the
# paths the launcher exported (numpy, tritonrag) before importing them.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import triton_python_backend_utils as pb_utils

from tritonrag.bls import OUTPUTS, STAGES, StageError, request_values, run_pipeline
from tritonrag.limits import RequestError
from tritonrag.params import model_param
from tritonrag.triton_glue import error_response, input_array, parse_config, read_limits


class TritonPythonModel:
    def initialize(self, args):
        config = parse_config(args)
        self.limits = read_limits(config)
        self.models = {s.role: model_param(config, f"{s.role}_model_name", s.role) for s in STAGES}

    async def execute(self, requests):
        # All requests of this execution go through the stages at once, so each
        # stage's dynamic batcher can batch them.
        return list(await asyncio.gather(*(self._serve(r) for r in requests)))

    async def _serve(self, request):
        try:
            values = request_values(input_array(request, "question"), input_array(request, "top_k"),
                                    input_array(request, "max_tokens"), self.limits)
            values = await run_pipeline(values, self.models, _call)
        except RequestError as exc:
            return error_response(str(exc))
        except StageError as exc:
            return error_response(str(exc), exc.code)
        except Exception as exc:  # noqa: BLE001 — this request only
            return error_response(f"internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, values[name]) for name in OUTPUTS])


async def _call(model, inputs, outputs):
    request = pb_utils.InferenceRequest(
        model_name=model, inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
        requested_output_names=list(outputs))
    response = await request.async_exec()
    if response.has_error():
        error = response.error()
        code = error.code() if hasattr(error, "code") else None
        raise StageError(model, error.message(), code)
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}
