"""The client's request building and response parsing, in-process (the server side is in integration/)."""

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tritonrag_client.cli import build_parser, format_answer, format_hits, to_json
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


def test_answer_and_hits_are_decoded():
    result = FakeResult(answer=np.array([[b"It wraps a block."]], dtype=object),
                        sources=np.array([[b"with#0", b"with#1"]], dtype=object),
                        scores=np.array([[0.9, 0.5]], dtype=np.float32),
                        passages=np.array([["caf\u00e9".encode(), b"\xff bad"]], dtype=object))
    answer = parse_answer(result)
    assert answer.answer == "It wraps a block."
    assert [(s.id, round(s.score, 3)) for s in answer.sources] == [("with#0", 0.9), ("with#1", 0.5)]
    hits = parse_search(result)
    assert [h.text for h in hits] == ["café", "\ufffd bad"]


def test_default_urls_and_bad_protocol():
    assert default_url("grpc") == "127.0.0.1:8001" and default_url("http") == "127.0.0.1:8000"
    with pytest.raises(ValueError):
        default_url("ftp")


def test_cli_arguments_and_output():
    args = build_parser().parse_args(["--protocol", "http", "--top-k", "5", "--json", "What?"])
    assert (args.question, args.protocol, args.top_k, args.json, args.search) == ("What?", "http", 5, True, False)
    answer = Answer("Paris.", [Source("geo#1", 0.75)])
    assert format_answer(answer) == "Paris.\n\nSources:\n  geo#1  (0.750)"
    assert json.loads(to_json(answer)) == {"answer": "Paris.",
                                           "sources": [{"id": "geo#1", "score": 0.75, "text": None}]}
    assert format_hits([Source("a#0", 0.5, "word " * 50)]).startswith("a#0  (0.500)\n    word word")
