import numpy as np
import pytest

from tritonrag.search import ExactSearch


def brute_force(queries, corpus, metric, k):
    if metric == "ip":
        scores = queries @ corpus.T
    elif metric == "cosine":
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ \
            (corpus / np.linalg.norm(corpus, axis=1, keepdims=True)).T
    else:
        scores = -((queries[:, None, :] - corpus[None, :, :]) ** 2).sum(-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_matches_brute_force(metric, k):
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    indices, scores = ExactSearch(corpus, metric).search(queries, k)
    ref_indices, ref_scores = brute_force(queries, corpus, metric, k)
    np.testing.assert_array_equal(indices, ref_indices)
    expected = -ref_scores if metric == "l2" else ref_scores  # l2 reports distances
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_ties_go_to_the_lower_index_whatever_the_batch():
    corpus = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    search = ExactSearch(corpus, "ip")
    alone, _ = search.search(np.array([[1, 0]], dtype=np.float32), 3)
    batched, _ = search.search(np.array([[0, 1], [1, 0]], dtype=np.float32), 3)
    assert alone.tolist() == [[0, 2, 3]] == batched[1:].tolist()


def test_k_larger_than_corpus_returns_everything_sorted():
    corpus = np.array([[0.1], [0.3], [0.2]], dtype=np.float32)
    indices, scores = ExactSearch(corpus, "ip").search(np.array([[1.0]], dtype=np.float32), 10)
    assert indices.tolist() == [[1, 2, 0]]


def test_bad_shapes_and_metrics_are_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        ExactSearch(np.zeros((2, 2), np.float32), "hamming")
    with pytest.raises(ValueError, match=r"queries must be \[n, 2\]"):
        ExactSearch(np.zeros((2, 2), np.float32)).search(np.zeros((1, 3), np.float32), 1)


def test_a_gpu_instance_without_cupy_still_searches_on_the_cpu(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)  # import cupy -> ImportError
    search = ExactSearch(np.eye(3, dtype=np.float32), "ip", device="cuda:0")
    assert search.device == "cpu" and search.xp is np
    assert search.search(np.array([[0, 1, 0]], dtype=np.float32), 1)[0].tolist() == [[1]]
