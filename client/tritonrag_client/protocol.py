"""Building requests for and reading responses from the RAG models.

Shared by the blocking and asyncio clients, which differ only in how they send;
`module` is one of tritonclient's grpc/http (or their aio) modules, whose
`InferInput` classes take the same arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonrag.common.request_checks import INT32_MAX, RequestError, check_range, check_sampling, question_bytes

DEFAULT_GRPC_URL = "127.0.0.1:8001"
DEFAULT_HTTP_URL = "127.0.0.1:8000"
PROTOCOLS = ("grpc", "http")


class RagError(Exception):
    """The server refused or failed a request; the message is the server's.

    `status` is the protocol's status when there is one ("StatusCode.UNAVAILABLE" for a
    request rejected by a full queue over gRPC, "400" over HTTP), else None.
    """

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class InvalidRequestError(RagError, ValueError):
    """A request refused before it is sent, with the server's own message for it."""


@dataclass(frozen=True)
class Source:
    id: str
    score: float
    text: str | None = None


@dataclass(frozen=True)
class Answer:
    answer: str
    sources: list[Source]
    # "stop": the model ended its answer; "length": cut at max_tokens (as OpenAI-style APIs)
    finish_reason: str | None = None


def default_url(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return DEFAULT_GRPC_URL if protocol == "grpc" else DEFAULT_HTTP_URL


class ClientSettings:
    """What the blocking and asyncio clients share: where, how, and which models."""

    def __init__(self, url: str | None, protocol: str, timeout_s: float | None, model: str, retrieve_model: str):
        self.url = url or default_url(protocol)
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.model = model
        self.retrieve_model = retrieve_model


def check_request(question: str | bytes, top_k: int | None = None, max_tokens: int | None = None,
                  temperature: float | None = None, top_p: float | None = None) -> bytes:
    """The question's bytes, if the request passes the server's fixed checks (same code, same messages).

    The server's configured bounds (question bytes, the largest top_k and max_tokens) are its
    own to say; here the integers must be at least 1 and fit the INT32 inputs, so that none
    wraps around on the way. Raises InvalidRequestError.
    """
    try:
        raw = question_bytes(question)
        for name, value in (("top_k", top_k), ("max_tokens", max_tokens)):
            check_range(name, value, None, INT32_MAX)
        if temperature is not None or top_p is not None:
            check_sampling(temperature, top_p)
    except RequestError as exc:
        raise InvalidRequestError(str(exc)) from None
    return raw


def build_inputs(module: Any, question: str | bytes, top_k: int | None = None, max_tokens: int | None = None,
                 fusion: str | None = None, temperature: float | None = None, top_p: float | None = None) -> list:
    """One request row: `question` BYTES [1, 1]; each optional input only when given.

    `fusion` is the retriever's (dense, bm25, zscore, rrf); `temperature` / `top_p` the generator's."""
    values = {"question": np.array([[check_request(question, top_k, max_tokens, temperature, top_p)]],
                                   dtype=np.object_)}
    for name, value in (("top_k", top_k), ("max_tokens", max_tokens)):
        if value is not None:
            values[name] = np.array([[value]], dtype=np.int32)
    if fusion is not None:
        values["fusion"] = np.array([[fusion.encode("utf-8", "replace")]], dtype=np.object_)
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if value is not None:
            values[name] = np.array([[value]], dtype=np.float32)
    inputs = []
    for name, array in values.items():
        tensor = module.InferInput(name, [1, 1], _DATATYPES[array.dtype.type])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


_DATATYPES = {np.object_: "BYTES", np.int32: "INT32", np.float32: "FP32"}


def requested_outputs(module: Any, names: tuple[str, ...]) -> list:
    return [module.InferRequestedOutput(name) for name in names]


ASK_OUTPUTS = ("answer", "sources", "scores", "passages", "finish_reason")
SEARCH_OUTPUTS = ("sources", "scores", "passages")


def _texts(array: np.ndarray | None) -> list[str]:
    if array is None:
        return []
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]


def parse_answer(result: Any) -> Answer:
    """An `Answer`, with its sources' texts, from an InferResult of `rag_ensemble` or `rag_bls`."""
    answer = _texts(result.as_numpy("answer"))
    finish = _texts(result.as_numpy("finish_reason"))
    return Answer(answer[0] if answer else "", _sources(result, _texts(result.as_numpy("passages"))),
                  finish[0] if finish else None)


def parse_search(result: Any) -> list[Source]:
    """The hits, with passage texts, from an InferResult of `rag_retrieve`."""
    return _sources(result, _texts(result.as_numpy("passages")))


def _sources(result: Any, texts: list[str] | None = None) -> list[Source]:
    ids = _texts(result.as_numpy("sources"))
    scores = result.as_numpy("scores")
    scores = [] if scores is None else [float(s) for s in scores.reshape(-1)]
    texts = texts or [None] * len(ids)
    return [Source(i, s, t) for i, s, t in zip(ids, scores, texts)]


def server_status(exc: Exception) -> str | None:
    status = getattr(exc, "status", None)
    value = status() if callable(status) else status
    return None if value is None else str(value)


def server_message(exc: Exception) -> str:
    """The server's own words from a tritonclient exception."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return text or str(exc)
