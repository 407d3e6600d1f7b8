"""Helpers shared by the Triton `model.py` files (import only inside Triton).

They read one input row per request row, choose the device of the instance, and
turn a `RequestError` into that request's error response, so that one bad request
never fails the others of its dynamic batch.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np

import triton_python_backend_utils as pb_utils  # provided by the Python backend stub

from tritonrag.common.params import model_param
from tritonrag.common.request_checks import Limits, RequestError, required


def parse_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def instance_device(args: dict) -> str:
    """``cuda:N`` for a KIND_GPU instance, else ``cpu``."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cpu"


def read_limits(config: dict) -> Limits:
    defaults = Limits()
    return Limits(**{name: model_param(config, name, getattr(defaults, name))
                     for name in defaults.__dataclass_fields__})


def input_array(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    return tensor.as_numpy() if tensor.is_cpu() else from_dlpack(tensor).cpu().numpy()


def from_dlpack(tensor):
    """A Triton tensor as a torch tensor sharing its memory (GPU inputs of a model whose
    parameter FORCE_CPU_ONLY_INPUT_TENSORS is "no"; `as_numpy` works on CPU ones only)."""
    import torch.utils.dlpack

    return torch.utils.dlpack.from_dlpack(tensor.to_dlpack())


def input_tensor(request, name: str):
    """An input as NumPy when Triton holds it in CPU memory, else as a torch tensor on its GPU."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    return tensor.as_numpy() if tensor.is_cpu() else from_dlpack(tensor)


def wants_output(request, name: str) -> bool:
    """Whether the request asked for output `name` (Triton lists every output when a client names none)."""
    return name in request.requested_output_names()


def output_tensor(name: str, array):
    """An output from NumPy, or from a torch tensor without leaving its device (DLPack)."""
    if hasattr(array, "detach"):
        import torch.utils.dlpack

        return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(array.detach().contiguous()))
    return pb_utils.Tensor(name, array)


def required_array(request, name: str, on_device: bool = False) -> np.ndarray:
    """A required input; Triton lets a request through without it when the model has optional inputs.

    `on_device`: a GPU input comes as a torch tensor on its GPU (`input_tensor`), not copied."""
    array = input_tensor(request, name) if on_device else input_array(request, name)
    if array is None:
        raise required(name)
    return array


def optional_rows(request, name: str, rows: int, cast: Callable = int) -> list:
    """Per-row values of an optional [1]-shaped input as `cast` makes them (None when absent)."""
    array = input_array(request, name)
    if array is None:
        return [None] * rows
    flat = array.reshape(array.shape[0], -1)
    if flat.shape[0] != rows or flat.shape[1] != 1:
        raise RequestError(f"{name} must have one value per row, got shape {list(array.shape)}")
    return [cast(v) for v in flat[:, 0]]


def error_response(message: str, code=None):
    code = pb_utils.TritonError.INVALID_ARG if code is None else code
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def bytes_tensor(name: str, rows: Sequence[Sequence[str]]) -> Any:
    """A BYTES output of shape [rows, width] from equally long lists of strings."""
    array = np.array([[s.encode("utf-8") for s in row] for row in rows], dtype=np.object_)
    return pb_utils.Tensor(name, array.reshape(len(rows), -1))


def serve_batch(requests: Sequence, parse: Callable[[Any], list], run: Callable[[list], list],
                respond: Callable[[list], Any]) -> list:
    """Parse each request into rows, run all valid rows at once, answer each request.

    `parse(request)` returns that request's rows (raising RequestError for a bad
    one), `run(rows)` computes one result per row for the whole batch, and
    `respond(results)` builds one request's response from its rows' results.
    """
    responses: list = [None] * len(requests)
    parsed: list[tuple[int, list]] = []
    for slot, request in enumerate(requests):
        try:
            rows = parse(request)
            if not rows:  # nothing would answer it below
                raise RequestError("the request holds no rows")
            parsed.append((slot, rows))
        except RequestError as exc:
            responses[slot] = error_response(str(exc))
        except Exception as exc:  # noqa: BLE001 — this request only, not its batch-mates
            responses[slot] = error_response(f"internal error: {type(exc).__name__}: {exc}",
                                             pb_utils.TritonError.INTERNAL)
    rows = [row for _, request_rows in parsed for row in request_rows]
    if rows:
        try:
            results = run(rows)
        except RequestError as exc:  # a batch-level refusal still answers everyone
            results = None
            for slot, _ in parsed:
                responses[slot] = error_response(str(exc))
        except Exception as exc:  # noqa: BLE001 — report instead of failing the stub
            results = None
            for slot, _ in parsed:
                responses[slot] = error_response(f"internal error: {type(exc).__name__}: {exc}",
                                                 pb_utils.TritonError.INTERNAL)
        if results is not None:
            start = 0
            for slot, request_rows in parsed:
                results_for = results[start:start + len(request_rows)]
                start += len(request_rows)
                try:
                    responses[slot] = respond(results_for)
                except RequestError as exc:
                    responses[slot] = error_response(str(exc))
    return responses
