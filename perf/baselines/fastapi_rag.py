"""The usual hand-rolled RAG service: FastAPI + transformers pipelines, one request at a time.

This is what the Triton stack is compared with (perf/ablate.py, variant "baseline"): the
same embedder, index, prompt and generator, served the obvious way —
`pipeline("feature-extraction")` with the family's query prefix and pooling, NumPy
brute-force search over the same index, `pipeline("text-generation")` on the same chat
messages (tritonrag.generation.prompting) with greedy decoding and the same max_new_tokens. A
lock serves requests one at a time, as such services do when the model is shared
(concurrent torch calls on one model only fight over the same cores).

    python perf/baselines/fastapi_rag.py --index INDEX_DIR --port 8100
    curl -s 127.0.0.1:8100/ask -H 'content-type: application/json' -d '{"question": "What is a lambda?"}'
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tritonrag.common.request_checks import Limits, RequestError, check_range, decode_question  # noqa: E402
from tritonrag.generation.prompting import build_messages, special_token_strings  # noqa: E402
from tritonrag.index.store import load_index  # noqa: E402
from tritonrag.models import sources as model_sources  # noqa: E402
from tritonrag.models.embedding import detect_family  # noqa: E402


class PipelineRag:
    """Embed, search, generate for one question with transformers pipelines."""

    def __init__(self, index_dir: str, embedder: str, generator: str, device: str = "cpu"):
        import torch
        from transformers import pipeline

        self.family = detect_family(embedder)
        self.index = load_index(index_dir, embedder=model_sources.model_name(embedder))
        if self.index.metric not in ("ip", "cosine"):
            raise ValueError(f"the baseline searches by inner product; this index uses {self.index.metric!r}")
        vectors = np.asarray(self.index.vectors, dtype=np.float32)
        if self.index.metric == "cosine":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        self.vectors = vectors
        self.embed = pipeline("feature-extraction", device=device,
                              **_model_and_tokenizer(embedder, device, torch.float32 if device == "cpu" else torch.float16,
                                                     causal=False))
        self.generate = pipeline("text-generation", device=device,
                                 **_model_and_tokenizer(generator, device,
                                                        torch.float32 if device == "cpu" else torch.bfloat16, causal=True))
        self.special = special_token_strings(self.generate.tokenizer)
        self.limits = Limits()

    def query_vector(self, question: str) -> np.ndarray:
        hidden = self.embed(self.family.query_prefix + question, return_tensors=True,
                            tokenize_kwargs={"truncation": True, "max_length": 256})[0].float().numpy()  # [tokens, dim]
        vector = hidden[0] if self.family.pooling == "cls" else hidden.mean(axis=0)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def ask(self, question: str, top_k: int, max_tokens: int) -> dict:
        scores = self.vectors @ self.query_vector(question)
        k = min(top_k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        passages = [self.index.passages[i] for i in top]
        messages = build_messages(question, [p.embedding_text() for p in passages], special_tokens=self.special)
        out = self.generate(messages, max_new_tokens=max_tokens, do_sample=False, return_full_text=False)
        return {"answer": out[0]["generated_text"].strip(), "sources": [p.id for p in passages],
                "scores": [float(scores[i]) for i in top]}


def _model_and_tokenizer(spec: str, device: str, dtype, causal: bool) -> dict:
    """A pipeline's `model` (and `tokenizer`) arguments: a path or Hub id as a user would pass it;
    a ``dummy:`` spec (a production shape with random weights, for GPU hosts without the weights)
    as the model object and the builtin tokenizer the Triton stack's dummy models borrow too."""
    if not model_sources.is_dummy(spec):
        return {"model": model_sources.resolve(spec), "dtype": dtype}
    from transformers import AutoTokenizer

    model = model_sources.load_model(spec, device, dtype, causal=causal)
    return {"model": model, "tokenizer": AutoTokenizer.from_pretrained(model_sources.tokenizer_source(spec, causal))}


class Ask(BaseModel):
    """The request body (FastAPI resolves it by name at module level)."""

    question: str
    top_k: Optional[int] = None
    max_tokens: Optional[int] = None


def create_app(rag: PipelineRag):
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="hand-rolled RAG baseline")
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/ask")
    def ask(body: Ask) -> dict:  # a plain def: FastAPI runs it in its thread pool; the lock serialises
        try:
            question = decode_question(body.question.encode("utf-8"), rag.limits.max_question_bytes)
            top_k = check_range("top_k", body.top_k, rag.limits.default_top_k, rag.limits.max_top_k)
            max_tokens = check_range("max_tokens", body.max_tokens, rag.limits.default_max_tokens,
                                     rag.limits.max_max_tokens)
        except RequestError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        with lock:
            return rag.ask(question, top_k, max_tokens)

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="an index folder (tritonrag index / the server's cache)")
    parser.add_argument("--embedder", default=model_sources.DEFAULT_EMBEDDER)
    parser.add_argument("--generator", default=model_sources.DEFAULT_GENERATOR)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    rag = PipelineRag(args.index, args.embedder, args.generator, args.device)
    uvicorn.run(create_app(rag), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
