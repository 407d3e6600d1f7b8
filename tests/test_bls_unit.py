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
                    ("gen-x", ["max_tokens", "passages", "question", "temperature", "top_p"])]
    assert values["answer"].tolist() == [["gen-x"]] and values["sources"].tolist() == [["retriever"]]
    assert [s.role for s in STAGES] == ["embedder", "retriever", "generator"]
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
