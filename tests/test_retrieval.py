import numpy as np
import pytest

from tritonrag.common.request_checks import RequestError
from tritonrag.index.corpus import Passage
from tritonrag.index.store import build_index, load_index
from tritonrag.retrieval.retriever import Retriever, RetrieverSettings, Row

from test_index import hash_embed  # noqa: E402  (tests/ is on sys.path)

PASSAGES = [Passage(f"p{i}", "", f"passage {i} about {w}") for i, w in
            enumerate(["cats", "dogs", "the Normans", "rivers", "Python generators", "mountains"])]


@pytest.fixture
def retriever(tmp_path):
    build_index(tmp_path / "idx", PASSAGES, hash_embed, embedder="toy", progress=False)
    index = load_index(tmp_path / "idx")
    config = {"parameters": {"fusion": {"string_value": "zscore"}, "fusion_weight": {"string_value": "0.9"},
                             "bm25_k1": {"string_value": "1.5"}, "storage_dtype": {"string_value": ""}}}
    settings = RetrieverSettings.from_config(config)
    assert settings.hybrid.weight == 0.9 and settings.hybrid.k1 == 1.5 and settings.storage_dtype == "float16"
    return Retriever(index, settings, "cpu", tmp_path / "idx")


def test_rows_without_text_are_dense_and_explicit_fusions_need_text(retriever):
    assert retriever.row_fusion(None, None) == "dense"
    assert retriever.row_fusion("who were the Normans", None) == "zscore"
    assert retriever.row_fusion("who", "rrf") == "rrf"
    # empty: the configured one (rag_bls sends every row a fusion, empty when the client gave none)
    assert retriever.row_fusion("who were the Normans", "") == "zscore" and retriever.row_fusion(None, "") == "dense"
    with pytest.raises(RequestError, match="needs the question text"):
        retriever.row_fusion(None, "bm25")
    with pytest.raises(RequestError, match="fusion must be one of"):
        retriever.row_fusion("who", "max")


def test_a_mixed_batch_gets_each_row_its_own_fusion_and_k(retriever):
    vectors = hash_embed([p.embedding_text() for p in PASSAGES])
    rows = [Row(vectors[0], 2, None, "dense"),
            Row(vectors[0], 3, "Normans", "bm25"),
            Row(vectors[1], 1, "Python generators", "zscore")]
    results = retriever.search(rows)
    assert [len(i) for i, _ in results] == [2, 3, 1]
    assert results[0][0][0] == 0                     # its own vector, dense
    assert results[1][0][0] == 2                     # the lexical match
    assert results[2][0].tolist() == [4]             # weight 0.9 on BM25 wins over the dense match


def test_rows_as_torch_tensors_search_like_numpy_rows(retriever):
    """A GPU embedder's rows arrive as torch tensors (DLPack); here on torch's CPU device."""
    torch = pytest.importorskip("torch")
    vectors = hash_embed([p.embedding_text() for p in PASSAGES])
    as_numpy = [Row(vectors[i], 3, t, f) for i, t, f in ((0, None, "dense"), (1, "Python generators", "zscore"),
                                                          (2, None, "dense"))]
    as_torch = [Row(torch.from_numpy(r.vector), r.k, r.text, r.fusion) for r in as_numpy]
    for (a_i, a_s), (b_i, b_s) in zip(retriever.search(as_numpy), retriever.search(as_torch)):
        assert np.array_equal(a_i, b_i) and np.allclose(a_s, b_s)


def test_bad_storage_dtype_is_refused():
    with pytest.raises(ValueError, match="storage_dtype"):
        RetrieverSettings.from_config({"parameters": {"storage_dtype": {"string_value": "int4"}}})


def test_search_kernel_setting():
    assert RetrieverSettings.from_config({"parameters": {}}).search_kernel == "auto"
    fused = RetrieverSettings.from_config({"parameters": {"search_kernel": {"string_value": "fused"}}})
    assert fused.search_kernel == "fused"
    with pytest.raises(ValueError, match="search_kernel"):
        RetrieverSettings.from_config({"parameters": {"search_kernel": {"string_value": "fastest"}}})


def test_config_pbtxt_defaults_are_the_settings_defaults():
    """The integration test and the docs rely on config.pbtxt and RetrieverSettings() agreeing."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "tritonrag" / "model_repository" / "retriever"
            / "config.pbtxt").read_text()
    params = dict(re.findall(r'key: "(\w+)", value: \{ string_value: "([^"]*)" \}', text))
    parsed = RetrieverSettings.from_config({"parameters": {k: {"string_value": v} for k, v in params.items()}})
    assert parsed == RetrieverSettings()


def test_warm_up_searches_each_k_and_batch_and_changes_nothing(retriever, monkeypatch):
    """On a GPU it runs the kernels' first compiles at load; here it must only search (k above
    the corpus size is cut to it) and leave later results as they were."""
    vectors = hash_embed([p.embedding_text() for p in PASSAGES])
    before = retriever.dense.search(vectors[:2], 3)
    calls = []
    search = retriever.dense.search
    monkeypatch.setattr(retriever.dense, "search", lambda q, k: calls.append((q.shape, k)) or search(q, k))
    # the reranker's 10 candidates and the fixture's zscore fusion's 1000 dense candidates too
    assert retriever.warm_up(3) >= 0
    assert calls == [((1, vectors.shape[1]), 3), ((32, vectors.shape[1]), 3),
                     ((1, vectors.shape[1]), len(PASSAGES)), ((32, vectors.shape[1]), len(PASSAGES))]
    after = retriever.dense.search(vectors[:2], 3)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
