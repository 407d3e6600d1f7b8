"""Checking request values against the service's limits.

Every check raises `RequestError` with a message meant for the user, so the Triton
glue can answer that one request with an error and serve the rest of its batch.
Limits are `config.pbtxt` parameters; these are their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class RequestError(ValueError):
    """A request the service refuses; the message is sent back to the client."""


@dataclass(frozen=True)
class Limits:
    max_question_bytes: int = 4096
    default_top_k: int = 3
    max_top_k: int = 100
    # the one source of these two defaults: the config.pbtxt files leave them empty, and the
    # generator's KV slots are sized for max_max_tokens new tokens (`EngineSettings.max_new_tokens`)
    default_max_tokens: int = 32
    max_max_tokens: int = 512
    # A query vector longer than this is refused: real embeddings are about 1 (normalised)
    # or tens long, and float32 scores of much longer ones overflow to inf / NaN.
    max_embedding_norm: float = 1e6
    # Passages one generator request may carry, and their UTF-8 bytes together: refused before
    # any decoding or tokenising. A prompt holds what fits max_prompt_tokens; the rest is dropped.
    max_passages: int = 100
    max_passages_bytes: int = 1 << 20


# The largest value an INT32 input (top_k, max_tokens) can carry on the wire.
INT32_MAX = 2**31 - 1
# The fusions a request may name (`tritonrag.retrieval.hybrid` implements them).
FUSIONS = ("dense", "bm25", "zscore", "rrf")


def required(name: str) -> RequestError:
    """The error for a request without the required input `name`."""
    return RequestError(f"{name} is required")


def decode_question(raw: bytes, max_bytes: int | None) -> str:
    """UTF-8 text of a question that is neither empty nor over `max_bytes` (None: no size limit)."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise RequestError(f"question is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"question is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise RequestError("question is empty")
    return text


def decode_passages(raw, max_count: int, max_bytes: int) -> list[str]:
    """The passages of one request (bytes, or text already decoded) as text, if there are at most
    `max_count` of them and `max_bytes` UTF-8 bytes together; invalid UTF-8 is replaced, as the
    retriever's passages may be cut anywhere."""
    raw = list(raw)
    if len(raw) > max_count:
        raise RequestError(f"{len(raw)} passages; the limit is {max_count}")
    total = 0
    for p in raw:
        total += len(p) if isinstance(p, bytes) else len(p.encode("utf-8", "surrogatepass"))
        if total > max_bytes:
            raise RequestError(f"the passages are over {max_bytes} bytes together; the limit is {max_bytes}")
    return [p.decode("utf-8", "replace") if isinstance(p, bytes) else p for p in raw]


def decode_evidence(raw, max_bytes: int) -> str:
    """A request's evidence sentence (bytes, text or None) as text, if at most `max_bytes` UTF-8
    bytes; invalid UTF-8 is replaced, as in passages."""
    if raw is None:
        return ""
    size = len(raw) if isinstance(raw, bytes) else len(str(raw).encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise RequestError(f"the evidence is over {max_bytes} bytes; the limit is {max_bytes}")
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def check_range(name: str, value: int | None, default: int, maximum: int) -> int:
    """`value` (or the default when it is absent) if it lies in 1..maximum."""
    if value is None:
        return default
    value = int(value)
    if not 1 <= value <= maximum:
        raise RequestError(f"{name} must be between 1 and {maximum}, got {value}")
    return value


def question_bytes(question: str | bytes, max_bytes: int | None = None) -> bytes:
    """A question as sent on the wire, checked as the server checks it.

    `str` is encoded as UTF-8; a lone surrogate (how Python carries undecodable bytes, such
    as those of a command-line argument) goes back to the byte it stood for, so that text
    is refused as invalid UTF-8 with the server's message rather than failing to encode.
    """
    if question is None:
        raise required("question")
    if not isinstance(question, (str, bytes, bytearray, memoryview)):
        raise RequestError(f"question must be text (str or UTF-8 bytes), got {type(question).__name__}")
    raw = question.encode("utf-8", "surrogateescape") if isinstance(question, str) else bytes(question)
    decode_question(raw, max_bytes)
    return raw


def check_sampling(temperature: float | None, top_p: float | None) -> tuple[float, float]:
    """(temperature, top_p), defaults 0 (greedy) and 1, if they lie in [0, 100] and (0, 1]."""
    temperature = 0.0 if temperature is None else float(temperature)
    top_p = 1.0 if top_p is None else float(top_p)
    if not 0.0 <= temperature <= 100.0:   # also refuses NaN
        raise RequestError(f"temperature must be in [0, 100], got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}")
    return temperature, top_p


def check_embeddings(vectors, dimension: int, max_norm: float, name: str = "EMBEDDING"):
    """`vectors` as float32 [n, dimension] if every value is finite and every row's length is at most `max_norm`.

    NumPy in, NumPy out; a torch tensor (a GPU input taken through DLPack) stays a tensor
    on its device: only the per-row verdicts come to the host.
    """
    shape = list(vectors.shape)
    if len(shape) != 2 or shape[1] != dimension or shape[0] == 0:
        raise RequestError(f"{name} must be [n, {dimension}] with n >= 1, got {shape}")
    if hasattr(vectors, "detach"):  # torch
        import torch

        vectors = vectors.detach().to(torch.float32)
        finite = torch.isfinite(vectors).all(dim=1)
        norms = torch.where(finite[:, None], vectors, 0).double().square().sum(dim=1).sqrt()
        finite, norms = finite.cpu().numpy(), norms.cpu().numpy()
    else:
        vectors = np.asarray(vectors, dtype=np.float32)
        finite = np.isfinite(vectors).all(axis=1)
        norms = None
    if not finite.all():
        raise RequestError(f"{name} row {int(np.argmin(finite))} holds NaN or infinite values")
    if norms is None:
        norms = np.sqrt(np.square(vectors, dtype=np.float64).sum(axis=1))
    if (norms > max_norm).any():
        row = int(np.argmax(norms))
        raise RequestError(f"{name} row {row} has length {norms[row]:.3g}; the limit is {max_norm:g}")
    return vectors
