"""End to end through a real tritonserver: gRPC and HTTP, retrieval feeding generation, batching."""

import asyncio
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tritonrag.index.synthetic import answer_is_correct
from tritonrag_client import AsyncRagClient, RagClient, RagError

from .conftest import model_counts

pytestmark = pytest.mark.integration

WITH_QUESTION = "What does the with statement do in Python?"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ask_lists_the_passage_that_answers(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with RagClient(url, protocol=protocol) as client:
        answer = client.ask(WITH_QUESTION, top_k=3, max_tokens=24)
    assert answer.answer.strip()
    assert len(answer.sources) == 3
    assert any(s.id.startswith("with#") for s in answer.sources), answer.sources
    scores = [s.score for s in answer.sources]
    assert scores == sorted(scores, reverse=True)


def test_grpc_and_http_agree(server):
    with RagClient(server.grpc_url, protocol="grpc") as g, RagClient(server.http_url, protocol="http") as h:
        a, b = g.ask(WITH_QUESTION, max_tokens=8), h.ask(WITH_QUESTION, max_tokens=8)
    assert [s.id for s in a.sources] == [s.id for s in b.sources]
    assert a.answer == b.answer


def test_synthetic_facts_are_answered_from_retrieval(server, facts, report_figure):
    """Nobody's model knows these facts: a right answer means retrieval fed generation."""
    subset = facts[:12]

    async def ask_all():
        async with AsyncRagClient(server.grpc_url) as client:
            return await asyncio.gather(*(client.ask(f.question, max_tokens=24) for f in subset))

    answers = asyncio.run(ask_all())
    retrieved = sum(any(s.id == f.id for s in a.sources) for f, a in zip(subset, answers))
    correct = sum(answer_is_correct(a.answer, f.answer) for f, a in zip(subset, answers))
    report_figure(f"synthetic facts: retrieved {retrieved}/{len(subset)}, answered {correct}/{len(subset)}")
    assert retrieved == len(subset)
    assert correct > 0.6 * len(subset), [a.answer for a in answers]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_client_timeout_bounds_the_wait(server, protocol):
    """timeout_s is the client's own limit over both protocols (over HTTP it once went to the
    server as a microsecond request parameter, which the server ignored)."""
    url = server.grpc_url if protocol == "grpc" else server.http_url

    async def ask(timeout_s, max_tokens):
        async with AsyncRagClient(url, protocol=protocol, timeout_s=timeout_s) as client:
            return await client.ask(WITH_QUESTION, top_k=1, max_tokens=max_tokens)

    started = time.monotonic()
    with pytest.raises(RagError):
        asyncio.run(ask(0.05, 64))
    assert time.monotonic() - started < 5
    assert asyncio.run(ask(300, 4)).answer


def test_32_concurrent_requests_form_batches(server, grpc_client, report_figure):
    before = {m: model_counts(grpc_client, m) for m in ("embedder", "retriever", "generator")}

    async def burst():
        async with AsyncRagClient(server.grpc_url) as client:
            return await asyncio.gather(*(client.ask(f"{WITH_QUESTION} ({n})", top_k=1, max_tokens=4)
                                          for n in range(32)))

    answers = asyncio.run(burst())
    assert len(answers) == 32 and all(a.sources for a in answers)
    for model, (inferences0, executions0) in before.items():
        inferences, executions = model_counts(grpc_client, model)
        report_figure(f"32 concurrent: {model} ran {inferences - inferences0} inferences in "
                      f"{executions - executions0} executions")
        assert inferences - inferences0 == 32
        if model == "generator":  # the slow stage always queues a batch behind the first request
            assert executions - executions0 < inferences - inferences0


def test_mixed_top_k_and_max_tokens_in_one_batch_are_each_honoured(server, grpc_client, generator_tokenizer):
    settings = [(k, m) for k in (1, 2, 5) for m in (1, 3, 12)]
    before = model_counts(grpc_client, "generator")

    async def mixed():
        async with AsyncRagClient(server.grpc_url) as client:
            return await asyncio.gather(*(client.ask(WITH_QUESTION, top_k=k, max_tokens=m) for k, m in settings))

    answers = asyncio.run(mixed())
    inferences, executions = (a - b for a, b in zip(model_counts(grpc_client, "generator"), before))
    assert inferences == len(settings) and executions < inferences  # they did share batches
    by_setting = {setting: answer for setting, answer in zip(settings, answers)}
    for (k, m), answer in by_setting.items():
        assert len(answer.sources) == k
        # re-encoding decoded text may split a token differently, hence the slack of 2
        assert len(generator_tokenizer.encode(answer.answer)) <= m + 2, (m, answer.answer)
    for k in (1, 2, 5):  # same prompt, greedy: a shorter limit cuts the same answer earlier
        one, three, twelve = (by_setting[k, m].answer for m in (1, 3, 12))
        assert twelve.startswith(three) and three.startswith(one), (one, three, twelve)
        assert len(one) < len(three) < len(twelve), (one, three, twelve)


@pytest.fixture(scope="session")
def generator_tokenizer():
    from transformers import AutoTokenizer

    from tritonrag.models.sources import DEFAULT_GENERATOR, resolve

    return AutoTokenizer.from_pretrained(resolve(DEFAULT_GENERATOR))


def test_statistics_and_metrics_endpoints_answer(server, grpc_client):
    import urllib.request

    assert grpc_client.is_server_ready()
    for model in ("embedder", "retriever", "generator", "rag_ensemble", "rag_retrieve"):
        assert grpc_client.is_model_ready(model)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.settings.metrics_port}/metrics", timeout=5).read()
    assert b"nv_inference_request_success" in metrics


def test_a_request_can_carry_several_questions(server, grpc_client):
    questions = np.array([[WITH_QUESTION.encode()], [b"What is a lambda expression?"]], dtype=np.object_)
    inp = grpcclient.InferInput("question", [2, 1], "BYTES")
    inp.set_data_from_numpy(questions)
    result = grpc_client.infer("rag_retrieve", [inp])
    assert result.as_numpy("sources").shape == (2, 3)
    assert result.as_numpy("sources")[0, 0].decode().startswith("with#")
    assert result.as_numpy("sources")[1, 0].decode().startswith("lambda#")
