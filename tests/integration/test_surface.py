"""The public surface made even (issue 18): every per-request option reaches its stage through
rag_retrieve, rag_ensemble, rag_bls, `RagClient` and `ask`; answers carry their sources' texts
and a finish reason; a request without its required input is told so."""

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tritonrag_client import RagClient, RagError
from tritonrag_client.cli import main as ask_main

from .test_streaming import Stream, stream_inputs

pytestmark = pytest.mark.integration

# dense and BM25 rank different passages first for it on the test corpus
QUESTION = "What does the with statement do?"
# the model ends its answer to this one well within 48 tokens, alone or with one passage
SHORT = "Reply with the single word OK."


def _tensor(name, value):
    array = np.array([[value]], dtype=np.object_ if isinstance(value, bytes) else
                     np.float32 if isinstance(value, float) else np.int32)
    datatype = {np.object_: "BYTES", np.float32: "FP32", np.int32: "INT32"}[array.dtype.type]
    tensor = grpcclient.InferInput(name, [1, 1], datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _infer(client, model, outputs=None, **values):
    inputs = [_tensor(name, value) for name, value in values.items()]
    requested = None if outputs is None else [grpcclient.InferRequestedOutput(o) for o in outputs]
    return client.infer(model, inputs, outputs=requested, client_timeout=300)


def _retriever_ids(client, fusion, top_k=3):
    """The ranking for QUESTION with `fusion`, stage by stage: the retriever's candidates (fed the
    embedder's vector), put in order and cut to top_k by the reranker."""
    vector = _infer(client, "embedder", question=QUESTION.encode()).as_numpy("EMBEDDING")

    def embedding():
        tensor = grpcclient.InferInput("EMBEDDING", list(vector.shape), "FP32")
        tensor.set_data_from_numpy(vector)
        return tensor

    names = ("candidate_sources", "candidate_scores", "candidate_passages")
    found = client.infer("retriever", [embedding(), _tensor("question", QUESTION.encode()),
                                       _tensor("top_k", top_k), _tensor("fusion", fusion.encode())],
                         outputs=[grpcclient.InferRequestedOutput(n) for n in names])
    candidates = []
    for name in names:
        array = found.as_numpy(name)
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "BYTES")
        tensor.set_data_from_numpy(array)
        candidates.append(tensor)
    result = client.infer("reranker", [embedding(), *candidates, _tensor("top_k", top_k)])
    return [s.decode() for s in result.as_numpy("sources").reshape(-1)]


def test_fusion_reaches_the_retriever_through_every_pipeline_client_and_cli(server, grpc_client, capsys):
    dense, bm25 = _retriever_ids(grpc_client, "dense"), _retriever_ids(grpc_client, "bm25")
    assert dense != bm25   # else this question could not tell the fusions apart
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with RagClient(url, protocol=protocol) as ensemble, \
                RagClient(url, protocol=protocol, model="rag_bls") as bls:
            for fusion, expected in (("dense", dense), ("bm25", bm25)):
                assert [s.id for s in ensemble.search(QUESTION, fusion=fusion)] == expected   # rag_retrieve
                assert [s.id for s in ensemble.ask(QUESTION, max_tokens=1, fusion=fusion).sources] == expected
                assert [s.id for s in bls.ask(QUESTION, max_tokens=1, fusion=fusion).sources] == expected
            for client in (ensemble, bls):
                with pytest.raises(RagError, match=r"fusion must be one of \['dense', 'bm25', 'zscore', 'rrf'\]"):
                    client.ask(QUESTION, max_tokens=1, fusion="best")
    assert ask_main(["--url", server.grpc_url, "--json", "--fusion", "bm25", "--max-tokens", "1", QUESTION]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)["sources"]] == bm25
    assert ask_main(["--url", server.grpc_url, "--json", "--search", "--fusion", "dense", QUESTION]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)["sources"]] == dense


def test_sources_come_with_their_texts(server, grpc_client, capsys):
    with RagClient(server.grpc_url) as client:
        hits = client.search(QUESTION, top_k=2)
        texts = {h.id: h.text for h in hits}
        assert all(texts.values())
        for model in ("rag_ensemble", "rag_bls"):
            client.model = model
            answer = client.ask(QUESTION, top_k=2, max_tokens=2)
            assert {s.id: s.text for s in answer.sources} == texts, model
    assert ask_main(["--url", server.grpc_url, "--json", "--top-k", "2", "--max-tokens", "2", QUESTION]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {s["id"]: s["text"] for s in printed["sources"]} == texts
    # asking an ensemble for the answer alone still runs every step it needs
    alone = _infer(grpc_client, "rag_ensemble", ["answer"], question=QUESTION.encode(), max_tokens=2)
    assert alone.as_numpy("answer")[0, 0]


def test_every_answer_says_whether_max_tokens_cut_it(server, grpc_client, capsys):
    for model, extra in (("generator", {}), ("rag_ensemble", {"top_k": 1}), ("rag_bls", {"top_k": 1})):
        cut = _infer(grpc_client, model, ["answer", "finish_reason"], question=QUESTION.encode(), max_tokens=2,
                     **extra)
        assert cut.as_numpy("finish_reason").tolist() == [[b"length"]], model
        whole = _infer(grpc_client, model, ["answer", "finish_reason"], question=SHORT.encode(), max_tokens=48,
                       **extra)
        assert whole.as_numpy("finish_reason").tolist() == [[b"stop"]], (model, whole.as_numpy("answer"))
    with RagClient(server.grpc_url, model="rag_bls") as client:
        assert client.ask(QUESTION, max_tokens=2).finish_reason == "length"
        assert client.ask(SHORT, top_k=1, max_tokens=48).finish_reason == "stop"
    assert ask_main(["--url", server.grpc_url, "--max-tokens", "2", QUESTION]) == 0
    assert "[cut at the max_tokens limit" in capsys.readouterr().out
    assert ask_main(["--url", server.grpc_url, "--json", "--max-tokens", "2", QUESTION]) == 0
    assert json.loads(capsys.readouterr().out)["finish_reason"] == "length"

    # generator_stream: the last streamed piece carries it, the others do not
    stream = Stream(server.grpc_url)
    got = {}
    try:
        for rid, question, max_tokens in (("cut", QUESTION, 6), ("whole", SHORT, 48)):
            stream.send(rid, stream_inputs(question, max_tokens=max_tokens))
            reasons = []
            while True:
                _, result, error = stream.results.get(timeout=120)
                assert error is None, error
                reason = result.as_numpy("finish_reason")
                reasons.append(None if reason is None else reason.reshape(-1)[0].decode())
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
            got[rid] = reasons
    finally:
        stream.close()
    for rid, reason in (("cut", "length"), ("whole", "stop")):
        assert len(got[rid]) >= 2 and got[rid][-1] == reason and set(got[rid][:-1]) == {None}, got


def test_sampling_options_reach_the_generator_through_the_pipelines(server):
    for model in ("rag_ensemble", "rag_bls"):
        with RagClient(server.grpc_url, model=model) as client:
            greedy = client.ask(QUESTION, top_k=1, max_tokens=6)
            # top_p that keeps only the most likely token samples the greedy answer
            assert client.ask(QUESTION, top_k=1, max_tokens=6, temperature=1.0, top_p=1e-6).answer == greedy.answer
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for model in ("rag_ensemble", "rag_bls", "generator"):   # the generator's own check, through each
            with pytest.raises(InferenceServerException, match=r"temperature must be in \[0, 100\], got 101") as bad:
                _infer(client, model, question=QUESTION.encode(), temperature=101.0)
            assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
            with pytest.raises(InferenceServerException, match=r"top_p must be in \(0, 1\], got 0.0"):
                _infer(client, model, question=QUESTION.encode(), top_p=0.0)


@pytest.mark.parametrize("model, values, message", [
    ("rag_bls", {"top_k": 2}, "question is required"),
    ("generator", {"max_tokens": 2}, "question is required"),
    ("generator_stream", {"max_tokens": 2}, "question is required"),
    ("retriever", {"top_k": 2}, "EMBEDDING is required"),
    ("reranker", {"top_k": 2, "candidate_sources": b"s", "candidate_scores": 1.0, "candidate_passages": b"p"},
     "EMBEDDING is required"),
])
def test_a_request_without_its_required_input_is_told_so(server, model, values, message):
    if model == "generator_stream":   # decoupled: gRPC streaming only
        stream = Stream(server.grpc_url)
        try:
            only_max_tokens = grpcclient.InferInput("max_tokens", [1], "INT32")   # unbatched model: shape [1]
            only_max_tokens.set_data_from_numpy(np.array([values["max_tokens"]], dtype=np.int32))
            stream.send("q", [only_max_tokens])
            _, _, _, error = stream.collect("q")[-1]
        finally:
            stream.close()
        assert error is not None and str(error.message()).endswith(message), error
        return
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as refused:
            _infer(client, model, **values)
    assert refused.value.message() == message and refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_the_reranker_refuses_bad_candidates_per_request_and_reorders_good_ones(server, grpc_client):
    vector = _infer(grpc_client, "embedder", question=QUESTION.encode()).as_numpy("EMBEDDING")

    def request(scores, sources=(b"a", b"b"), passages=(b"T\nOne.", b"T\nTwo."), dims=None, top_k=1):
        arrays = {"EMBEDDING": (vector if dims is None else np.ones((1, dims), np.float32), "FP32"),
                  "candidate_sources": (np.array([list(sources)], np.object_), "BYTES"),
                  "candidate_scores": (np.array([list(scores)], np.float32), "FP32"),
                  "candidate_passages": (np.array([list(passages)], np.object_), "BYTES"),
                  "top_k": (np.array([[top_k]], np.int32), "INT32")}
        inputs = []
        for name, (array, datatype) in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    bad = {"candidate_sources, candidate_scores and candidate_passages must have one shape": request([1.0]),
           "candidate scores must be finite": request([1.0, float("nan")]),
           "EMBEDDING must be": request([1.0, 0.5], dims=7),
           "top_k must be between 1": request([1.0, 0.5], top_k=0)}
    for message, inputs in bad.items():
        with pytest.raises(InferenceServerException, match=message) as refused:
            grpc_client.infer("reranker", inputs)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    # invalid UTF-8 in a passage is read with replacement characters, not refused
    result = grpc_client.infer("reranker", request([2.0, 1.0], passages=(b"T\n\xff\xfe.", b"T\nTwo."), top_k=2))
    assert sorted(s.decode() for s in result.as_numpy("sources")[0]) == ["a", "b"]
    assert result.as_numpy("passages")[0, 0] in (b"T\n\xff\xfe.", b"T\nTwo.")   # passed on as they came
    assert grpc_client.is_server_ready()
