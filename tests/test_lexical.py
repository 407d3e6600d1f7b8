import math

import numpy as np
import pytest

from tritonrag.index.bm25 import BM25Index, Tokenizer, TokenizerConfig

DOCS = ["The cat sat on the mat.", "Dogs are running in the park", "A dog ran; the cats watched",
        "Normans founded the Duchy of Normandy", "Nothing here"]


def test_tokenizer_stems_and_drops_stop_words():
    plain = TokenizerConfig(stem=False, stop_words=False, bigrams=False)
    assert Tokenizer(plain)("The Dogs, running!") == ["the", "dogs", "running"]
    assert Tokenizer(TokenizerConfig(bigrams=False))("The Dogs, running!") == ["dog", "run"]
    assert Tokenizer()("The Dogs running!") == ["dog", "run", "dog_run"]
    # pairs skip stop words but never cross punctuation
    assert Tokenizer()("Duchy of Normandy, founded") == ["duchi", "normandi", "found", "duchi_normandi"]
    assert Tokenizer(TokenizerConfig(bigrams=False))("founded founding") == ["found", "found"]


def bm25_by_hand(docs_tokens, query_tokens, k1, b):
    n = len(docs_tokens)
    avgdl = sum(map(len, docs_tokens)) / n
    out = []
    for doc in docs_tokens:
        s = 0.0
        for t in query_tokens:
            df = sum(t in d for d in docs_tokens)
            if df == 0:
                continue
            tf = doc.count(t)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        out.append(s)
    return out


@pytest.mark.parametrize("k1,b", [(1.2, 0.75), (0.6, 0.3), (2.0, 1.0)])
def test_scores_follow_okapi_bm25(k1, b):
    config = TokenizerConfig()
    index = BM25Index.build(DOCS, config)
    tok = Tokenizer(config)
    query = "which dogs ran in the park of the cats"
    expected = bm25_by_hand([tok(d) for d in DOCS], tok(query), k1, b)
    np.testing.assert_allclose(index.scores(query, k1, b), expected, rtol=1e-5)
    assert index.scores("zebra", k1, b).tolist() == [0.0] * len(DOCS)


def test_add_equals_building_everything_and_save_load_round_trips(tmp_path):
    grown = BM25Index.build(DOCS[:2])
    grown.add(DOCS[2:])
    whole = BM25Index.build(DOCS)
    grown.save(tmp_path)
    loaded = BM25Index.load(tmp_path)
    for q in ("dog park", "Normandy founded", "the"):
        np.testing.assert_allclose(grown.scores(q), whole.scores(q), rtol=1e-6)
        np.testing.assert_allclose(loaded.scores(q), whole.scores(q), rtol=1e-6)
    assert loaded.tokenizer_config == TokenizerConfig() and loaded.count == len(DOCS)


def test_without_snowballstemmer_bm25_falls_back_to_unstemmed_words(monkeypatch, tmp_path):
    from tritonrag.index.bm25 import usable
    from tritonrag.index.corpus import Passage
    from tritonrag.index.store import load_lexical

    monkeypatch.setitem(__import__("sys").modules, "snowballstemmer", None)  # import -> ImportError
    assert usable(TokenizerConfig()) == TokenizerConfig(stem=False)
    lexical = load_lexical(None, [Passage("a", "", "running dogs")], TokenizerConfig())
    assert lexical.tokenizer_config.stem is False and lexical.scores("running")[0] > 0
