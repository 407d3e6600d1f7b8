"""The client's request building and response parsing, in-process (the server side is in integration/)."""

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tritonrag_client import AsyncRagClient, InvalidRequestError, RagClient, RagError
from tritonrag_client.cli import build_parser, format_answer, format_hits, main, to_json
from tritonrag_client.protocol import Answer, Source, build_inputs, default_url, parse_answer, parse_search


class FakeResult:
    """Stands in for tritonclient's InferResult: only `as_numpy` is used."""

    def __init__(self, **arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)


@pytest.mark.parametrize("module", [grpcclient, httpclient])
def test_inputs_have_the_served_names_types_and_shapes(module):
    only_question = build_inputs(module, "Qué?")
    assert [(i.name(), i.datatype(), i.shape()) for i in only_question] == [("question", "BYTES", [1, 1])]
    full = build_inputs(module, "Q", top_k=4, max_tokens=9)
    assert [(i.name(), i.datatype(), i.shape()) for i in full] == [
        ("question", "BYTES", [1, 1]), ("top_k", "INT32", [1, 1]), ("max_tokens", "INT32", [1, 1])]
    options = build_inputs(module, "Q", fusion="bm25", temperature=0.5, top_p=0.9)
    assert [(i.name(), i.datatype(), i.shape()) for i in options] == [
        ("question", "BYTES", [1, 1]), ("fusion", "BYTES", [1, 1]), ("temperature", "FP32", [1, 1]),
        ("top_p", "FP32", [1, 1])]


def test_answer_and_hits_are_decoded():
    result = FakeResult(answer=np.array([[b"It wraps a block."]], dtype=object),
                        sources=np.array([[b"with#0", b"with#1"]], dtype=object),
                        scores=np.array([[0.9, 0.5]], dtype=np.float32),
                        passages=np.array([["caf\u00e9".encode(), b"\xff bad"]], dtype=object))
    answer = parse_answer(result)
    assert answer.answer == "It wraps a block."
    assert [(s.id, round(s.score, 3)) for s in answer.sources] == [("with#0", 0.9), ("with#1", 0.5)]
    # the answer's sources carry the passages' texts (rag_ensemble and rag_bls return them)
    assert [s.text for s in answer.sources] == ["café", "\ufffd bad"] and answer.finish_reason is None
    cut = parse_answer(FakeResult(answer=np.array([[b"It wraps"]], dtype=object),
                                  sources=np.array([[b"with#0"]], dtype=object),
                                  scores=np.array([[0.9]], dtype=np.float32),
                                  passages=np.array([[b"The with statement"]], dtype=object),
                                  finish_reason=np.array([[b"length"]], dtype=object)))
    assert cut.finish_reason == "length" and cut.sources[0].text == "The with statement"
    hits = parse_search(result)
    assert [h.text for h in hits] == ["café", "\ufffd bad"]


def test_default_urls_and_bad_protocol():
    assert default_url("grpc") == "127.0.0.1:8001" and default_url("http") == "127.0.0.1:8000"
    with pytest.raises(ValueError):
        default_url("ftp")


def test_cli_arguments_and_output():
    args = build_parser().parse_args(["--protocol", "http", "--top-k", "5", "--json", "What?"])
    assert (args.question, args.protocol, args.top_k, args.json, args.search) == ("What?", "http", 5, True, False)
    answer = Answer("Paris.", [Source("geo#1", 0.75, "Paris is the capital.")], "stop")
    assert format_answer(answer) == "Paris.\n\nSources:\n  geo#1  (0.750)"
    assert json.loads(to_json(answer)) == {"answer": "Paris.", "finish_reason": "stop",
                                           "sources": [{"id": "geo#1", "score": 0.75,
                                                        "text": "Paris is the capital."}]}
    cut = Answer("The capital of France is", [Source("geo#1", 0.75)], "length")
    assert format_answer(cut).startswith("The capital of France is\n[cut at the max_tokens limit")
    args = build_parser().parse_args(["--fusion", "bm25", "--temperature", "0.5", "--top-p", "0.9", "Q"])
    assert (args.fusion, args.temperature, args.top_p) == ("bm25", 0.5, 0.9)
    assert format_hits([Source("a#0", 0.5, "word " * 50)]).startswith("a#0  (0.500)\n    word word")


# Nothing listens here: every request below must be refused before it is sent.
NOWHERE = "127.0.0.1:9"


@pytest.mark.parametrize("argv, message", [
    ([b"caf\xe9 ?".decode("utf-8", "surrogateescape")], "error: question is not valid UTF-8 (byte 3)"),
    (["--top-k", "4294967296", "Q"], "error: top_k must be between 1 and 2147483647, got 4294967296"),
    (["--top-k", "0", "Q"], "error: top_k must be between 1 and 2147483647, got 0"),
    (["--max-tokens", "-5", "Q"], "error: max_tokens must be between 1 and 2147483647, got -5"),
    (["--temperature", "-1", "Q"], "error: temperature must be in [0, 100], got -1.0"),
    (["--top-p", "2", "Q"], "error: top_p must be in (0, 1], got 2.0"),
    (["--search", "--top-k", "4294967296", "Q"], "error: top_k must be between 1 and 2147483647"),
    (["   "], "error: question is empty"),
])
def test_ask_refuses_bad_input_with_the_servers_message(capsys, argv, message):
    assert main(["--url", NOWHERE, *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_clients_raise_invalid_request_errors(protocol):
    import asyncio

    with RagClient(NOWHERE, protocol=protocol) as client:
        with pytest.raises(InvalidRequestError, match=r"question is not valid UTF-8 \(byte 0\)") as bad:
            client.ask(b"\xff?")
        assert isinstance(bad.value, RagError) and isinstance(bad.value, ValueError)
        with pytest.raises(InvalidRequestError, match="top_k must be between 1 and 2147483647, got 4294967296"):
            client.search("Q", top_k=2**32)
        with pytest.raises(InvalidRequestError, match="^question is required$"):   # as the models say it
            client.ask(None)
        with pytest.raises(InvalidRequestError, match="question must be text"):
            client.search(42)

    async def refused():
        async with AsyncRagClient(NOWHERE, protocol=protocol) as client:
            return await client.ask_many(["\udcff", "Q"], top_k=2**32)

    assert [str(e) for e in asyncio.run(refused())] == ["question is not valid UTF-8 (byte 0)",
                                                        "top_k must be between 1 and 2147483647, got 4294967296"]
