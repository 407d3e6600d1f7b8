import numpy as np
import pytest

from tritonrag.retrieval.search.exact import ExactSearch


def brute_force(queries, corpus, metric, k):
    if metric == "ip":
        scores = queries @ corpus.T
    elif metric == "l1":
        scores = -np.abs(queries[:, None, :] - corpus[None, :, :]).sum(-1)
    elif metric == "cosine":
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ \
            (corpus / np.linalg.norm(corpus, axis=1, keepdims=True)).T
    else:
        scores = -((queries[:, None, :] - corpus[None, :, :]) ** 2).sum(-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2", "l1"])
@pytest.mark.parametrize("k", [1, 5, 50, 300])
def test_matches_brute_force(metric, k):
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    indices, scores = ExactSearch(corpus, metric).search(queries, k)
    ref_indices, ref_scores = brute_force(queries, corpus, metric, k)
    np.testing.assert_array_equal(indices, ref_indices)
    expected = -ref_scores if metric in ("l2", "l1") else ref_scores  # distances for l2 and l1
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


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2", "l1"])
def test_ties_at_the_k_boundary_keep_the_lowest_indices(metric):
    """1200 copies of 3 vectors: for k up to 1024 the tied block is cut at the lowest indices."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(3, 8)).astype(np.float32)
    corpus = np.tile(base, (400, 1))  # row i is base[i % 3]
    query = base[1:2] + np.float32(0.01)
    for k in (1, 7, 400, 401, 1024):
        indices, scores = ExactSearch(corpus, metric).search(query, k)
        ref, _ = brute_force(query, corpus, metric, k)
        assert indices.tolist() == ref.tolist()
        best = int(indices[0, 0]) % 3
        assert indices[0, :min(k, 400)].tolist() == list(range(best, 1200, 3))[:min(k, 400)]


def test_keys_order_like_score_then_lower_index():
    from tritonrag.retrieval.search.topk import decode_keys, encode_keys

    scores = np.array([-2.5, -0.0, 0.0, 1e-30, 3.0, 3.0, np.float32(-1e30), 7.25], np.float32)
    index = np.array([5, 1, 0, 9, 4, 2, 3, 8])
    keys = encode_keys(scores, index)
    order = sorted(range(len(keys)), key=lambda i: int(keys[i]), reverse=True)
    expected = sorted(range(len(keys)), key=lambda i: (-float(scores[i]), index[i]))
    # -0.0 and 0.0 compare equal as floats but the keys put +0.0 first; both orders are deterministic
    assert [index[i] for i in order if scores[i] != 0] == [index[i] for i in expected if scores[i] != 0]
    got_index, got_scores, valid = decode_keys(keys)
    assert got_index.tolist() == index.tolist() and valid.all()
    np.testing.assert_array_equal(got_scores, scores)
    assert not decode_keys(np.zeros(1, np.uint64))[2][0]


def test_gpu_arrays_are_accepted_on_the_cpu_path():
    torch = pytest.importorskip("torch")
    corpus = np.eye(4, dtype=np.float32)
    indices, _ = ExactSearch(corpus, "ip").search(torch.tensor([[0.0, 0.0, 1.0, 0.0]]), 1)
    assert indices.tolist() == [[2]]


def test_unknown_storage_dtype_is_refused():
    with pytest.raises(ValueError, match="storage dtype"):
        ExactSearch(np.zeros((2, 2), np.float32), "ip", dtype="int8")


def test_metric_converts_between_scores_and_rank_values():
    """`Metric` is the one conversion: rank values ("larger is better") <-> reported scores."""
    from tritonrag.retrieval.search.metric import METRICS, Metric

    assert METRICS == ("ip", "cosine", "l2", "l1") and Metric.of("l2") == "l2"
    assert [Metric.of(m).distance for m in METRICS] == [False, False, True, True]
    with pytest.raises(ValueError, match="unknown metric"):
        Metric.of("hamming")
    rng = np.random.default_rng(5)
    corpus, q = rng.standard_normal((50, 8)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    for name in METRICS:
        metric, search = Metric.of(name), ExactSearch(corpus, name)
        q_norms = (q * q).sum(axis=1, keepdims=True) if metric.needs_norms else None
        ranked = search.rank_values(q)
        scores = metric.to_scores(ranked, q_norms)
        assert np.allclose(metric.rank_values(scores, q_norms), ranked, atol=1e-4)
        indices, got = search.search(q, 5)
        assert np.allclose(got, np.take_along_axis(scores, indices, axis=1), atol=1e-5)
