"""The RAG pipeline wired by BLS (Business Logic Scripting) instead of an ensemble.

An ensemble forwards whatever inputs the client sent, so requests with and without
the optional `top_k`/`max_tokens` reach the stages with different input sets, and
Triton's dynamic batcher never batches those together (README: "optional inputs
split dynamic batches"). `rag_bls` fills every optional input with its default
first, so all requests reach each stage alike and the stages batch them; and it sends
the rows of all the requests of its own dynamic batch to each stage in one call (one
per distinct top_k). rag_bls's own batcher still sees the client's input sets, so it
runs several instances to keep its small batches in flight together (config.pbtxt).
A missing or bad `question` gets its own clear error before any stage runs.

Why merged calls rather than one async BLS call per request: per-request `async_exec` calls
reach each stage as separate executions, so the stages lose their batches
(docs/decisions/0055-serving-glue-choices.md).

The pipeline is data: STAGES lists each stage's inputs (taken from the values known
so far) and outputs (added to them). The retriever gets the question as well, for
BM25 hybrid search, and the request's fusion; it hands its candidates to the reranker,
which hands top_k passages to the generator (as in rag_ensemble).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from tritonrag.common.request_checks import (FUSIONS, Limits, RequestError, check_range, check_sampling,
                                              decode_question, required)


@dataclass(frozen=True)
class Stage:
    role: str                  # the config parameter "<role>_model_name" names the model to call
    inputs: tuple[str, ...]    # names of pipeline values sent (the stage's input names)
    outputs: tuple[str, ...]   # the stage's outputs, added to the pipeline values


STAGES = (
    Stage("embedder", ("question",), ("EMBEDDING",)),
    Stage("retriever", ("EMBEDDING", "top_k", "question", "fusion"),
          ("candidate_sources", "candidate_scores", "candidate_passages")),
    Stage("reranker", ("EMBEDDING", "candidate_sources", "candidate_scores", "candidate_passages", "top_k"),
          ("sources", "scores", "passages", "evidence")),
    Stage("generator", ("question", "passages", "evidence", "max_tokens", "temperature", "top_p"),
          ("answer", "finish_reason")),
)
OUTPUTS = ("answer", "sources", "scores", "passages", "finish_reason")


def request_values(question: np.ndarray | None, top_k: np.ndarray | None, max_tokens: np.ndarray | None,
                   limits: Limits, fusion: np.ndarray | None = None, temperature: np.ndarray | None = None,
                   top_p: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The pipeline's starting values for one request, every optional input filled.

    A request's rows must share one top_k (the retriever answers [rows, k]).

    `question` is the request's [n, 1] BYTES array; `top_k` / `max_tokens` its INT32
    arrays, `fusion` its BYTES array, `temperature` / `top_p` its FP32 arrays, or None.
    Bad questions and values out of range are refused here, with the stages' own
    messages: a stage refuses a merged call whole, which would fail the batch-mates too.
    A missing fusion is sent empty: the retriever then runs its configured one.
    """
    if question is None:
        raise required("question")
    rows = int(question.shape[0]) if question.ndim else 0
    if rows == 0:
        raise RequestError("the request holds no rows")
    for raw in np.asarray(question).reshape(-1):  # refused here with a clear code, not deep in a stage
        decode_question(raw if isinstance(raw, bytes) else str(raw).encode("utf-8"), limits.max_question_bytes)

    def per_row(name: str, array: np.ndarray | None) -> list:
        if array is None:
            return [None] * rows
        flat = np.asarray(array).reshape(array.shape[0], -1)
        if flat.shape != (rows, 1):
            raise RequestError(f"{name} must have one value per row, got shape {list(array.shape)}")
        return list(flat[:, 0])

    def filled(name: str, array: np.ndarray | None, default: int, maximum: int) -> np.ndarray:
        return np.array([[check_range(name, None if v is None else int(v), default, maximum)]
                         for v in per_row(name, array)], dtype=np.int32)

    top_k_rows = filled("top_k", top_k, limits.default_top_k, limits.max_top_k)
    if len(np.unique(top_k_rows)) > 1:
        raise RequestError("top_k must be the same for every row of one request")
    sampling = [check_sampling(t, p) for t, p in zip(per_row("temperature", temperature), per_row("top_p", top_p))]
    return {
        "question": np.asarray(question, dtype=np.object_).reshape(rows, -1),
        "top_k": top_k_rows,
        "fusion": np.array([[check_fusion(f)] for f in per_row("fusion", fusion)], dtype=np.object_),
        "max_tokens": filled("max_tokens", max_tokens, limits.default_max_tokens, limits.max_max_tokens),
        "temperature": np.array([[t] for t, _ in sampling], dtype=np.float32),
        "top_p": np.array([[p] for _, p in sampling], dtype=np.float32),
    }


def check_fusion(raw: bytes | str | None) -> bytes:
    """A row's fusion as the retriever reads it (b"": its configured one), if it names one."""
    if raw is None:
        return b""
    name = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip().lower()
    if name and name not in FUSIONS:
        raise RequestError(f"fusion must be one of {list(FUSIONS)}, got {name!r}")
    return name.encode()


class StageError(Exception):
    """A stage answered with an error; `code` is Triton's error code when known."""

    def __init__(self, stage: str, message: str, code=None):
        super().__init__(f"{stage}: {message}")
        self.code = code


# call(model_name, {input name: array}, output names) -> {output name: array}; raises StageError
StageCall = Callable[[str, Mapping[str, np.ndarray], tuple[str, ...]], Mapping[str, np.ndarray]]


def run_pipeline(values: dict[str, np.ndarray], models: Mapping[str, str], call: StageCall,
                 stages: tuple[Stage, ...] = STAGES) -> dict[str, np.ndarray]:
    """Run the stages in order, each fed from the values so far; return the values at the end."""
    values = dict(values)
    for stage in stages:
        outputs = call(models.get(stage.role, stage.role), {name: values[name] for name in stage.inputs},
                       stage.outputs)
        values.update(outputs)
    return values


def group_requests(requests: Sequence[dict[str, np.ndarray]]) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """Merge requests into as few stage calls as possible: one per distinct top_k.

    The retriever takes one top_k per request (its outputs are [rows, k]), so requests
    asking for different k go in different calls; everything else stacks row-wise.
    Returns [(indices of the merged requests, merged values)].
    """
    groups: dict[int, list[int]] = {}
    for i, values in enumerate(requests):  # request_values made each request's top_k uniform
        groups.setdefault(int(values["top_k"].reshape(-1)[0]), []).append(i)
    return [(members, {name: np.concatenate([requests[i][name] for i in members])
                       for name in requests[members[0]]})
            for members in groups.values()]


def split_rows(values: Mapping[str, np.ndarray], names: Sequence[str], rows: Sequence[int]) -> list[dict]:
    """The merged outputs `names` cut back into each request's rows."""
    out, start = [], 0
    for n in rows:
        out.append({name: values[name][start:start + n] for name in names})
        start += n
    return out


# Triton 2.51 hands a BLS caller every stage error with code INTERNAL, whatever code the
# stage answered with. The stages' own failures say "internal error" (tritonrag.triton_glue),
# a full queue says "Exceeds maximum queue size", and a stage that is down is named by
# Triton in the words below; any other stage error is that stage refusing the request
# (e.g. a question too long for the generator's prompt), so it is the client's: INVALID_ARG.
_INTERNAL_WORDS = ("internal error", "stub process", "not healthy", "failed to", "socket closed", "not ready",
                   "unknown model")


def stage_error_code(message: str, code: str | None) -> str:
    """The code a client gets for a stage error: "INVALID_ARG", "UNAVAILABLE" or "INTERNAL".

    `code` is the name of the code BLS reported ("INTERNAL", "INVALID_ARG", ... or None)."""
    if code not in (None, "INTERNAL"):
        return code
    lowered = message.lower()
    if "exceeds maximum queue size" in lowered:
        return "UNAVAILABLE"
    if any(word in lowered for word in _INTERNAL_WORDS):
        return "INTERNAL"
    return "INVALID_ARG"


def run_requests(requests: Sequence[dict[str, np.ndarray]], models: Mapping[str, str], call: StageCall,
                 stages: tuple[Stage, ...] = STAGES) -> list:
    """Each request's outputs (OUTPUTS -> array), or the exception that is its own.

    Requests are merged into one call per top_k (group_requests). When a merged call fails,
    its requests run again one by one, so that a request a stage refuses fails alone and
    the others of its batch are answered."""
    results: list = [None] * len(requests)
    for members, merged in group_requests(requests):
        try:
            out = run_pipeline(merged, models, call, stages)
        except Exception as exc:  # noqa: BLE001 — whose it is is found below
            if len(members) == 1:
                results[members[0]] = exc
                continue
            for i in members:
                try:
                    alone = run_pipeline(requests[i], models, call, stages)
                    results[i] = {name: alone[name] for name in OUTPUTS}
                except Exception as own:  # noqa: BLE001 — this request's own error
                    results[i] = own
            continue
        rows = [len(requests[i]["question"]) for i in members]
        for i, part in zip(members, split_rows(out, OUTPUTS, rows)):
            results[i] = part
    return results
