"""Asyncio client for the RAG service, over gRPC or HTTP."""

from __future__ import annotations

import asyncio
from typing import Iterable

from tritonclient.utils import InferenceServerException

from .protocol import (ASK_OUTPUTS, SEARCH_OUTPUTS, Answer, ClientSettings, RagError, Source, build_inputs,
                       parse_answer, parse_search, requested_outputs, server_message, server_status)


def _module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    return module


class AsyncRagClient(ClientSettings):
    """`await client.ask(...)`; `ask_many` keeps up to `concurrency` requests in flight."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", timeout_s: float | None = None,
                 model: str = "rag_ensemble", retrieve_model: str = "rag_retrieve"):
        super().__init__(url, protocol, timeout_s, model, retrieve_model)
        self._module = _module(protocol)
        if protocol == "grpc":
            self._client = self._module.InferenceServerClient(self.url)
        else:
            # HTTP: the client-side limit is the session's (aiohttp) total timeout; infer()'s own
            # `timeout` is a server-side parameter in microseconds. No connection cap: ask_many
            # bounds the requests in flight (tritonclient's default of 100 would cap a sweep).
            self._client = self._module.InferenceServerClient(self.url, conn_limit=0, conn_timeout=timeout_s)

    async def _infer(self, model: str, inputs: list, outputs: tuple[str, ...]):
        kwargs = {}
        if self.timeout_s is not None and self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            return await self._client.infer(model, inputs, outputs=requested_outputs(self._module, outputs),
                                            **kwargs)
        except InferenceServerException as exc:
            raise RagError(server_message(exc), server_status(exc)) from exc
        except asyncio.TimeoutError as exc:   # HTTP: the session's timeout (gRPC reports its own deadline)
            raise RagError(f"no answer within {self.timeout_s} s", "DEADLINE_EXCEEDED") from exc

    async def ask(self, question: str | bytes, top_k: int | None = None, max_tokens: int | None = None,
                  fusion: str | None = None, temperature: float | None = None,
                  top_p: float | None = None) -> Answer:
        """The answer, its sources (with their texts) and its finish reason ("length": cut at max_tokens).

        `fusion` picks the retriever's fusion (dense, bm25, zscore, rrf) for this request;
        `temperature` / `top_p` the generator's sampling (0 / 1: greedy). Bad values raise
        InvalidRequestError before anything is sent; the server's refusals raise RagError."""
        inputs = build_inputs(self._module, question, top_k, max_tokens, fusion, temperature, top_p)
        return parse_answer(await self._infer(self.model, inputs, ASK_OUTPUTS))

    async def search(self, question: str | bytes, top_k: int | None = None,
                     fusion: str | None = None) -> list[Source]:
        inputs = build_inputs(self._module, question, top_k, fusion=fusion)
        return parse_search(await self._infer(self.retrieve_model, inputs, SEARCH_OUTPUTS))

    async def ask_many(self, questions: Iterable[str], concurrency: int = 32, **kwargs) -> list[Answer | RagError]:
        """Answers in order; a refused question yields its RagError instead of raising."""
        limit = asyncio.Semaphore(concurrency)

        async def one(question: str):
            async with limit:
                try:
                    return await self.ask(question, **kwargs)
                except RagError as exc:
                    return exc

        return await asyncio.gather(*(one(q) for q in questions))

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready() and await self._client.is_model_ready(self.model))
        except (InferenceServerException, ConnectionError, OSError):
            return False

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncRagClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
