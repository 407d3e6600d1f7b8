"""rag_bls's pipeline logic in-process: defaults filled, bad values refused, stages fed in order."""

import numpy as np
import pytest

from tritonrag.common.request_checks import Limits, RequestError
from tritonrag.serving.bls import (
    OUTPUTS,
    STAGES,
    StageError,
    group_requests,
    request_values,
    run_pipeline,
    split_rows,
)

LIMITS = Limits(default_top_k=3, max_top_k=100, default_max_tokens=32, max_max_tokens=512)


def question(*texts):
    return np.array([[t.encode()] for t in texts], dtype=np.object_)


def test_missing_optional_inputs_get_the_defaults():
    values = request_values(question("a?", "b?"), None, None, LIMITS)
    assert values["top_k"].tolist() == [[3], [3]] and values["top_k"].dtype == np.int32
    assert values["max_tokens"].tolist() == [[32], [32]]


def test_given_values_are_kept_and_checked():
    values = request_values(question("a?"), np.array([[5]], np.int32), np.array([[7]], np.int32), LIMITS)
    assert values["top_k"].tolist() == [[5]] and values["max_tokens"].tolist() == [[7]]
    with pytest.raises(RequestError, match="top_k must be between 1 and 100"):
        request_values(question("a?"), np.array([[0]], np.int32), None, LIMITS)
    with pytest.raises(RequestError, match="max_tokens must have one value per row"):
        request_values(question("a?", "b?"), None, np.array([[7]], np.int32), LIMITS)


def test_bad_questions_are_refused_before_any_stage():
    with pytest.raises(RequestError, match="question is empty"):
        request_values(question("ok?", " "), None, None, LIMITS)
    with pytest.raises(RequestError, match="the limit is 4096"):
        request_values(question("x" * 5000), None, None, LIMITS)


def test_a_missing_question_is_a_clear_error():
    with pytest.raises(RequestError, match="^question is required$"):
        request_values(None, np.array([[5]], np.int32), None, LIMITS)


def test_fusion_and_sampling_are_filled_checked_and_sent_to_their_stage():
    values = request_values(question("a?", "b?"), None, None, LIMITS)
    # no fusion: sent empty, for the retriever's configured one; greedy sampling
    assert values["fusion"].tolist() == [[b""], [b""]] and values["fusion"].dtype == object
    assert values["temperature"].tolist() == [[0.0], [0.0]] and values["temperature"].dtype == np.float32
    assert values["top_p"].tolist() == [[1.0], [1.0]]
    given = request_values(question("a?"), None, None, LIMITS, fusion=np.array([[b" BM25 "]], dtype=object),
                           temperature=np.array([[0.5]], np.float32), top_p=np.array([[0.25]], np.float32))
    assert given["fusion"].tolist() == [[b"bm25"]]
    assert given["temperature"].tolist() == [[0.5]] and given["top_p"].tolist() == [[0.25]]
    with pytest.raises(RequestError, match=r"fusion must be one of \['dense', 'bm25', 'zscore', 'rrf'\], got 'best'"):
        request_values(question("a?"), None, None, LIMITS, fusion=np.array([[b"best"]], dtype=object))
    with pytest.raises(RequestError, match=r"temperature must be in \[0, 100\], got -1.0"):
        request_values(question("a?"), None, None, LIMITS, temperature=np.array([[-1]], np.float32))
    with pytest.raises(RequestError, match=r"top_p must be in \(0, 1\], got 0.0"):
        request_values(question("a?"), None, None, LIMITS, top_p=np.array([[0]], np.float32))
    with pytest.raises(RequestError, match="temperature must be in"):
        request_values(question("a?"), None, None, LIMITS, temperature=np.array([[np.nan]], np.float32))
    # the retriever gets the fusion, the generator the sampling, and the answer comes with its finish reason
    stages = {s.role: s for s in STAGES}
    assert "fusion" in stages["retriever"].inputs
    assert {"temperature", "top_p"} <= set(stages["generator"].inputs)
    assert "finish_reason" in stages["generator"].outputs
    assert {"passages", "finish_reason"} <= set(OUTPUTS)


def test_the_pipeline_feeds_each_stage_what_it_declares():
    seen = []

    def call(model, inputs, outputs):
        seen.append((model, sorted(inputs)))
        if model == "fail-generator":
            raise StageError(model, "boom")
        return {name: np.array([[model]], dtype=np.object_) for name in outputs}

    start = request_values(question("a?"), None, None, LIMITS)
    values = run_pipeline(start, {"generator": "gen-x"}, call)
    assert seen == [("embedder", ["question"]), ("retriever", ["EMBEDDING", "fusion", "question", "top_k"]),
                    ("reranker", ["EMBEDDING", "candidate_passages", "candidate_scores", "candidate_sources", "top_k"]),
                    ("gen-x", ["evidence", "max_tokens", "passages", "question", "temperature", "top_p"])]
    # the generator and the client get the reranker's passages and sources, not the retriever's candidates
    assert values["answer"].tolist() == [["gen-x"]] and values["sources"].tolist() == [["reranker"]]
    assert values["passages"].tolist() == [["reranker"]] and values["evidence"].tolist() == [["reranker"]]
    assert [s.role for s in STAGES] == ["embedder", "retriever", "reranker", "generator"]
    with pytest.raises(StageError, match="fail-generator: boom"):
        run_pipeline(start, {"generator": "fail-generator"}, call)


def test_requests_merge_into_one_call_per_top_k_and_split_back():
    requests = [request_values(question("a?"), None, None, LIMITS),
                request_values(question("b?", "c?"), np.array([[5], [5]], np.int32), None, LIMITS),
                request_values(question("d?"), np.array([[3]], np.int32), np.array([[4]], np.int32), LIMITS)]
    groups = group_requests(requests)
    assert [members for members, _ in groups] == [[0, 2], [1]]
    merged = groups[0][1]
    assert merged["question"].reshape(-1).tolist() == [b"a?", b"d?"] and merged["max_tokens"].tolist() == [[32], [4]]
    parts = split_rows({"answer": np.array([["A"], ["B"], ["C"]])}, ["answer"], [2, 1])
    assert [p["answer"].tolist() for p in parts] == [[["A"], ["B"]], [["C"]]]
    with pytest.raises(RequestError, match="same for every row"):
        request_values(question("a?", "b?"), np.array([[2], [3]], np.int32), None, LIMITS)


LONG = "word " * 800  # under max_question_bytes, over the generator's max_prompt_tokens


def refusing_stages(calls):
    """Stage calls as BLS makes them; the generator refuses a merged call holding a long question,
    as Triton 2.51 reports it to a BLS caller: code INTERNAL."""
    def call(model, inputs, outputs):
        rows = len(next(iter(inputs.values())))
        calls.append((model, rows))
        if model == "generator" and any(q[0].decode() == LONG for q in inputs["question"]):
            raise StageError(model, "the question alone is 1801 tokens; the limit is 1024", "INTERNAL")
        k = int(inputs["top_k"].reshape(-1)[0]) if "top_k" in inputs else 0
        return {name: value for name, value in {"EMBEDDING": np.zeros((rows, 4), np.float32),
                "sources": np.array([[b"s"] * k] * rows, dtype=np.object_),
                "scores": np.zeros((rows, k), np.float32),
                "passages": np.array([[b"p"] * k] * rows, dtype=np.object_),
                "evidence": np.array([[b"e"] * k] * rows, dtype=np.object_),
                "candidate_sources": np.array([[b"s"] * (k + 7)] * rows, dtype=np.object_),
                "candidate_scores": np.zeros((rows, k + 7), np.float32),
                "candidate_passages": np.array([[b"p"] * (k + 7)] * rows, dtype=np.object_),
                "answer": np.array([[b"a"]] * rows, dtype=np.object_),
                "finish_reason": np.array([[b"stop"]] * rows, dtype=np.object_)}.items() if name in outputs}
    return call


def test_a_stage_refusal_fails_only_its_own_request():
    from tritonrag.serving.bls import run_requests, stage_error_code

    requests = [request_values(question(q), None, np.array([[1]], np.int32), LIMITS)
                for q in ("short?", LONG, "also short?")]
    calls = []
    results = run_requests(requests, {}, refusing_stages(calls))
    assert results[0]["answer"].tolist() == [[b"a"]] and results[2]["answer"].tolist() == [[b"a"]]
    assert results[0]["sources"].shape == (1, 3)
    assert isinstance(results[1], StageError)
    # the merged call first, then each request alone
    assert [c for c in calls if c[0] == "generator"] == [("generator", 3), ("generator", 1), ("generator", 1),
                                                         ("generator", 1)]
    # BLS says INTERNAL; the client gets INVALID_ARG for a refusal, INTERNAL for a failure
    assert stage_error_code(str(results[1]), results[1].code) == "INVALID_ARG"
    assert stage_error_code("generator: internal error: RuntimeError: boom", "INTERNAL") == "INTERNAL"
    assert stage_error_code("embedder: Stub process 'embedder_0_0' is not healthy.", "INTERNAL") == "INTERNAL"
    assert stage_error_code("generator: Exceeds maximum queue size: 8 requests", "INTERNAL") == "UNAVAILABLE"
    assert stage_error_code("anything", "UNAVAILABLE") == "UNAVAILABLE"


def test_requests_that_merge_cleanly_are_one_call():
    from tritonrag.serving.bls import run_requests

    requests = [request_values(question(q), None, None, LIMITS) for q in ("a?", "b?")]
    calls = []
    results = run_requests(requests, {}, refusing_stages(calls))
    assert [r["answer"].shape for r in results] == [(1, 1), (1, 1)]
    assert calls == [("embedder", 2), ("retriever", 2), ("reranker", 2), ("generator", 2)]
