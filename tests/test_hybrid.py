import numpy as np
import pytest

from tritonrag.index.bm25 import BM25Index
from tritonrag.retrieval.hybrid import HybridConfig, HybridSearch
from tritonrag.retrieval.search.exact import ExactSearch

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def corpus(n=200, seed=0):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=6)) + f" doc{i}" for i in range(n)]
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    return texts, vectors


def zscore(x):
    return (x - x.mean()) / x.std()


def test_zscore_mix_over_all_passages_matches_the_formula():
    texts, vectors = corpus()
    lexical = BM25Index.build(texts)
    hybrid = HybridSearch(ExactSearch(vectors, "ip"), lexical)
    q = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    questions = ["alpha beta doc7", "gamma", "kappa mu doc150"]
    config = HybridConfig(fusion="zscore", weight=0.3)
    got, scores = hybrid.search(q, questions, 5, config)
    for row in range(3):
        fused = 0.3 * zscore(lexical.scores(questions[row], config.k1, config.b).astype(np.float64)) + \
            0.7 * zscore((vectors @ q[row]).astype(np.float64))
        expected = np.lexsort((np.arange(len(fused)), -fused))[:5]
        assert got[row].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[row], fused[expected], rtol=1e-5)


def test_rrf_and_single_lists():
    texts, vectors = corpus()
    lexical = BM25Index.build(texts)
    dense = ExactSearch(vectors, "l2")
    hybrid = HybridSearch(dense, lexical)
    q = vectors[10:11] + 0.01
    assert hybrid.search(q, ["x"], 3, HybridConfig(fusion="dense"))[0].tolist() == dense.search(q, 3)[0].tolist()
    assert hybrid.search(q, ["doc42"], 1, HybridConfig(fusion="bm25"))[0].tolist() == [[42]]
    # passage 10 is first densely; "doc10" makes it first lexically too: RRF puts it on top
    top, score = hybrid.search(q, ["doc10"], 3, HybridConfig(fusion="rrf", weight=0.5, rrf_c=60))
    assert top[0, 0] == 10 and score[0, 0] == pytest.approx(0.5 / 61 + 0.5 / 61)


@pytest.mark.parametrize("fusion", ["zscore", "rrf"])
def test_candidate_lists_agree_with_full_rows_on_the_top(fusion):
    """With candidates < N the fusion sees the union of both top lists; the winners stay."""
    texts, vectors = corpus(400)
    hybrid = HybridSearch(ExactSearch(vectors, "cosine"), BM25Index.build(texts))
    q = vectors[[5, 77, 300]] + 0.05
    questions = ["doc5 alpha", "doc77", "theta doc300"]
    full, _ = hybrid.search(q, questions, 1, HybridConfig(fusion=fusion, candidates=10_000))
    cut, _ = hybrid.search(q, questions, 1, HybridConfig(fusion=fusion, candidates=50))
    assert full[:, 0].tolist() == cut[:, 0].tolist() == [5, 77, 300]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown fusion"):
        HybridConfig(fusion="max")
    with pytest.raises(ValueError, match="weight"):
        HybridConfig(weight=1.5)
    texts, vectors = corpus(5)
    with pytest.raises(ValueError, match="BM25 index has 4 documents"):
        HybridSearch(ExactSearch(vectors, "ip"), BM25Index.build(texts[:4]))
