"""Served retrieval quality: dense equals in-process brute force; hybrid meets its targets.

The hybrid test serves an index of the SQuAD file's 646 paragraphs alone (the corpus its
settings were tuned on, with perf/retrieval_quality.py) and asks `rag_retrieve` — which
passes the question on to the retriever, so BM25 fusion is on — the held-out half.
"""

import asyncio

import numpy as np
import pytest
import tritonclient.grpc.aio as aiogrpc

from tritonrag.index.corpus import squad_questions
from tritonrag.index.store import load_index
from tritonrag.retrieval.quality import recall_at, split_halves
from tritonrag.retrieval.search.exact import ExactSearch
from tritonrag.server.launcher import ServerSettings, TritonServer

from .conftest import SQUAD, free_ports

pytestmark = pytest.mark.integration


def _bytes_input(name: str, text: str):
    tensor = aiogrpc.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    return tensor


def _int_input(name: str, value: int):
    tensor = aiogrpc.InferInput(name, [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return tensor


def ask_all(url: str, model: str, make_inputs, count: int) -> list[list[str]]:
    """Send `count` requests concurrently (64 in flight); return each one's sources."""
    async def run():
        limit = asyncio.Semaphore(64)
        async with aiogrpc.InferenceServerClient(url) as client:
            async def one(i):
                async with limit:
                    result = await client.infer(model, make_inputs(i))
                return [s.decode() for s in result.as_numpy("sources")[0]]
            return await asyncio.gather(*(one(i) for i in range(count)))
    return asyncio.run(run())


def test_served_dense_recall_equals_in_process_brute_force(server, embedder, report_figure):
    if not SQUAD.exists():
        pytest.skip("shared SQuAD data not present")
    questions = squad_questions(SQUAD)
    index = load_index(server.index_path)
    ids = [p.id for p in index.passages]
    vectors = embedder.embed_queries([q.text for q in questions])
    top, _ = ExactSearch(np.asarray(index.vectors), index.metric).search(vectors, 5)
    local = [[ids[i] for i in row] for row in top]

    def inputs(i):  # the retriever alone, without question text: dense search
        vector = aiogrpc.InferInput("EMBEDDING", [1, vectors.shape[1]], "FP32")
        vector.set_data_from_numpy(vectors[i:i + 1])
        return [vector, _int_input("top_k", 5)]

    remote = ask_all(server.grpc_url, "retriever", inputs, len(questions))
    gold = [q.gold_id for q in questions]
    figures = {f"R@{k}": (recall_at(local, gold, k), recall_at(remote, gold, k)) for k in (1, 5)}
    report_figure(f"SQuAD dense recall ({len(questions)} questions, {len(ids)} passages), in-process vs served: "
                  + ", ".join(f"{k} {a:.4f} vs {b:.4f}" for k, (a, b) in figures.items()))
    for k, (in_process, served_value) in figures.items():
        assert in_process == served_value, (k, in_process, served_value)
    assert figures["R@5"][0] > 0.8


@pytest.fixture(scope="module")
def squad_server(tmp_path_factory):
    if not SQUAD.exists():
        pytest.skip("shared SQuAD data not present")
    work = tmp_path_factory.mktemp("squad-server")
    http, grpc, metrics = free_ports(3)
    settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, corpus=[str(SQUAD)],
                              index=work / "index", build_index=True)
    with TritonServer(settings, run_dir=work / "run") as running:
        yield running
    print(running.log_tail(20))


def test_served_hybrid_meets_its_targets_on_held_out_questions(squad_server, report_figure):
    questions = squad_questions(SQUAD)
    _, held = split_halves(len(questions))
    held_q = [questions[i] for i in held]
    gold = [q.gold_id for q in held_q]
    hybrid = ask_all(squad_server.grpc_url, "rag_retrieve",
                     lambda i: [_bytes_input("question", held_q[i].text), _int_input("top_k", 5)], len(held_q))
    recall = {k: recall_at(hybrid, gold, k) for k in (1, 5)}
    report_figure(f"SQuAD served hybrid, held-out half ({len(held_q)} questions, 646 passages): "
                  f"R@1 {recall[1]:.3f}, R@5 {recall[5]:.3f} (targets .84 / .96)")
    assert recall[1] >= 0.84 and recall[5] >= 0.96, recall


def test_per_request_fusion_reaches_the_retriever(squad_server, embedder):
    """fusion "bm25" per request gives exactly the in-process BM25 ranking of the served index."""
    from tritonrag.index.store import load_lexical
    from tritonrag.retrieval.retriever import RetrieverSettings
    from tritonrag.retrieval.search.topk import top_k_rows

    questions = squad_questions(SQUAD)[:48]
    index = load_index(squad_server.index_path)
    settings = RetrieverSettings()  # config.pbtxt's defaults are the dataclass defaults
    lexical = load_lexical(squad_server.index_path, index.passages, settings.tokenizer)
    scores = lexical.score_matrix([q.text for q in questions], settings.hybrid.k1, settings.hybrid.b)
    expected = [[index.passages[i].id for i in row] for row in top_k_rows(scores, 5)[0]]
    vectors = embedder.embed_queries([q.text for q in questions])

    def inputs(i):
        vector = aiogrpc.InferInput("EMBEDDING", [1, vectors.shape[1]], "FP32")
        vector.set_data_from_numpy(vectors[i:i + 1])
        return [vector, _int_input("top_k", 5), _bytes_input("question", questions[i].text),
                _bytes_input("fusion", "bm25")]

    assert ask_all(squad_server.grpc_url, "retriever", inputs, len(questions)) == expected
