"""Blocking client for the RAG service, over gRPC or HTTP."""

from __future__ import annotations

import time

from tritonclient.utils import InferenceServerException

from .protocol import (ASK_OUTPUTS, SEARCH_OUTPUTS, Answer, ClientSettings, RagError, Source, build_inputs,
                       parse_answer, parse_search, requested_outputs, server_message, server_status)


def _module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


class RagClient(ClientSettings):
    """Ask questions (`ask`) or search passages (`search`); use as a context manager."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", timeout_s: float | None = None,
                 model: str = "rag_ensemble", retrieve_model: str = "rag_retrieve"):
        super().__init__(url, protocol, timeout_s, model, retrieve_model)
        self._module = _module(protocol)
        if protocol == "http" and timeout_s is not None:
            self._client = self._module.InferenceServerClient(self.url, network_timeout=timeout_s,
                                                              connection_timeout=timeout_s)
        else:
            self._client = self._module.InferenceServerClient(self.url)

    def _infer(self, model: str, inputs: list, outputs: tuple[str, ...]):
        kwargs = {}
        if self.timeout_s is not None and self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            return self._client.infer(model, inputs, outputs=requested_outputs(self._module, outputs), **kwargs)
        except InferenceServerException as exc:
            raise RagError(server_message(exc), server_status(exc)) from exc

    def ask(self, question: str | bytes, top_k: int | None = None, max_tokens: int | None = None,
            fusion: str | None = None, temperature: float | None = None,
            top_p: float | None = None) -> Answer:
        """The answer, its sources (with their texts) and its finish reason ("length": cut at max_tokens).

        `fusion` picks the retriever's fusion (dense, bm25, zscore, rrf) for this request;
        `temperature` / `top_p` the generator's sampling (0 / 1: greedy). Bad values raise
        InvalidRequestError before anything is sent; the server's refusals raise RagError."""
        inputs = build_inputs(self._module, question, top_k, max_tokens, fusion, temperature, top_p)
        return parse_answer(self._infer(self.model, inputs, ASK_OUTPUTS))

    def search(self, question: str | bytes, top_k: int | None = None,
               fusion: str | None = None) -> list[Source]:
        inputs = build_inputs(self._module, question, top_k, fusion=fusion)
        return parse_search(self._infer(self.retrieve_model, inputs, SEARCH_OUTPUTS))

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except (InferenceServerException, ConnectionError, OSError):
            return False

    def wait_until_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise RagError(f"server at {self.url} not ready after {timeout_s:.0f} s")
            time.sleep(0.5)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RagClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
