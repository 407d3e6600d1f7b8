"""Served embedder + retriever give the same recall as exact brute force in-process."""

import asyncio

import numpy as np
import pytest
import tritonclient.grpc.aio as aiogrpc

from tritonrag.corpus import squad_questions
from tritonrag.index import load_index
from tritonrag.search import ExactSearch

from .conftest import SQUAD

pytestmark = pytest.mark.integration


def recall(ranked: list[list[str]], gold: list[str], k: int) -> float:
    return sum(g in r[:k] for r, g in zip(ranked, gold)) / len(gold)


def test_served_recall_equals_in_process_brute_force(server, embedder, report_figure):
    if not SQUAD.exists():
        pytest.skip("shared SQuAD data not present")
    questions = squad_questions(SQUAD)
    index = load_index(server.index_path)
    ids = [p.id for p in index.passages]
    top, _ = ExactSearch(np.asarray(index.vectors), index.metric).search(
        embedder.embed_queries([q.text for q in questions]), 5)
    local = [[ids[i] for i in row] for row in top]

    async def served():
        limit = asyncio.Semaphore(64)
        async with aiogrpc.InferenceServerClient(server.grpc_url) as client:
            async def one(text):
                q = aiogrpc.InferInput("question", [1, 1], "BYTES")
                q.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
                k = aiogrpc.InferInput("top_k", [1, 1], "INT32")
                k.set_data_from_numpy(np.array([[5]], dtype=np.int32))
                async with limit:
                    result = await client.infer("rag_retrieve", [q, k])
                return [s.decode() for s in result.as_numpy("sources")[0]]
            return await asyncio.gather(*(one(q.text) for q in questions))

    remote = asyncio.run(served())
    gold = [q.gold_id for q in questions]
    figures = {f"R@{k}": (recall(local, gold, k), recall(remote, gold, k)) for k in (1, 5)}
    report_figure(f"SQuAD recall ({len(questions)} questions, {len(ids)} passages), in-process vs served: "
                  + ", ".join(f"{k} {a:.4f} vs {b:.4f}" for k, (a, b) in figures.items()))
    for k, (in_process, served_value) in figures.items():
        assert in_process == served_value, (k, in_process, served_value)
    assert figures["R@5"][0] > 0.8
