"""The reranker's logic without a server: sentence splitting, maxsim order, the switch, the cache."""

import numpy as np
import pytest

from tritonrag.common.request_checks import RequestError
from tritonrag.retrieval.rerank import Candidates, RerankSettings, SentenceReranker, split_sentences


def bag_embed(vocabulary):
    """A bag-of-words embedder: a sentence's vector counts the vocabulary's words in it (normalised)."""
    calls = []

    def embed(texts):
        calls.append(list(texts))
        out = np.zeros((len(texts), len(vocabulary)), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace("\n", " ").split():
                if word in vocabulary:
                    out[i, vocabulary.index(word)] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)

    return embed, calls


VOCAB = ["paris", "france", "capital", "river", "seine", "wine", "cheese"]


def query(*words):
    v = np.array([w in words for w in VOCAB], np.float32)
    return v / np.linalg.norm(v)


def test_split_sentences_keeps_the_title_on_every_sentence():
    assert split_sentences("France\nParis is the capital. The Seine runs through it.", 8) == [
        "France\nParis is the capital.", "France\nThe Seine runs through it."]
    assert split_sentences("One line. Two lines.", 8) == ["One line.", "Two lines."]
    assert split_sentences("T\nA. B. C. D.", 2) == ["T\nA.", "T\nB."]


def test_a_passage_with_the_answering_sentence_moves_up():
    embed, _ = bag_embed(VOCAB)
    passages = ["France\nWine and cheese are made here. Many kinds.",      # first stage's best
                "France\nCheese again. Paris is the capital of France.",   # one sentence answers
                "Rivers\nThe Seine is a river."]
    rows = [Candidates(query("paris", "capital"), np.array([3.0, 2.9, 1.0], np.float32), passages, 2)]
    (order, scores, _), = SentenceReranker(embed, RerankSettings(weight=1.0)).rerank(rows)
    assert order.tolist() == [1, 0]
    assert scores[0] > scores[1] and scores.dtype == np.float32
    # weight 0: the first stage's order, ties none
    (order, _, _), = SentenceReranker(embed, RerankSettings(weight=0.0)).rerank(rows)
    assert order.tolist() == [0, 1]


def test_the_evidence_is_the_first_passages_closest_sentence_unless_another_is_clearly_closer():
    embed, _ = bag_embed(VOCAB)
    passages = ["France\nWine and cheese are made here. Paris is the capital of France.",
                "Rivers\nThe Seine is a river. It has wine on its banks."]
    rows = [Candidates(query("paris", "capital"), np.array([1.0, 2.0], np.float32), passages, 2)]
    (order, _, evidence), = SentenceReranker(embed, RerankSettings(weight=1.0)).rerank(rows)
    assert order.tolist() == [0, 1] and evidence == "Paris is the capital of France."   # no title line
    # the first passage answers less well than the second by more than the margin: the second's is quoted
    passages = ["Cheese\nCheese and wine are good here.", "France\nParis is the capital city of France."]
    rows = [Candidates(query("paris", "capital"), np.array([9.0, 1.0], np.float32), passages, 2)]
    assert SentenceReranker(embed).rerank(rows)[0].order.tolist() == [0, 1]
    assert SentenceReranker(embed).rerank(rows)[0].evidence == "Paris is the capital city of France."
    wide = RerankSettings(evidence_margin=1.0)
    assert SentenceReranker(embed, wide).rerank(rows)[0].evidence == "Cheese and wine are good here."
    # fragments of fewer than 4 words (list numbers) are not quoted; no title line: the sentence as it stands
    rows = [Candidates(query("seine"), np.array([1.0], np.float32), ["Seine. The Seine flows here."], 1)]
    assert SentenceReranker(embed).rerank(rows)[0].evidence == "The Seine flows here."


def test_method_none_passes_the_first_stage_through_without_embedding():
    rows = [Candidates(query("paris"), np.array([5.0, 4.0, 3.0], np.float32), ["a", "b", "c"], 2)]
    (order, scores, evidence), = SentenceReranker(None, RerankSettings(method="none")).rerank(rows)
    assert order.tolist() == [0, 1] and scores.tolist() == [5.0, 4.0] and evidence == ""


def test_equal_candidates_keep_the_first_stage_order():
    embed, _ = bag_embed(VOCAB)
    same = "France\nParis is the capital."
    rows = [Candidates(query("paris"), np.array([1.0, 1.0, 1.0], np.float32), [same, same, same], 3)]
    (order, _, _), = SentenceReranker(embed).rerank(rows)
    assert order.tolist() == [0, 1, 2]


def test_sentences_are_embedded_once_per_passage_in_one_call_per_batch_and_the_cache_is_bounded():
    embed, calls = bag_embed(VOCAB)
    reranker = SentenceReranker(embed, RerankSettings(cache_passages=3))
    a, b, c, d = "T\nParis. Wine.", "T\nSeine river.", "T\nCheese.", "T\nCapital of France."
    row = lambda *ps: Candidates(query("paris"), np.arange(len(ps), 0, -1).astype(np.float32), list(ps), 1)
    reranker.rerank([row(a, b), row(b, c)])
    assert len(calls) == 1 and sorted(calls[0]) == sorted(["T\nParis.", "T\nWine.", "T\nSeine river.", "T\nCheese."])
    reranker.rerank([row(a, c)])
    assert len(calls) == 1                      # all cached
    reranker.rerank([row(d)])                   # evicts the least recently used (b)
    assert calls[-1] == ["T\nCapital of France."]
    reranker.rerank([row(b)])
    assert calls[-1] == ["T\nSeine river."]


def test_bad_candidates_are_refused_per_request():
    embed, _ = bag_embed(VOCAB)
    reranker = SentenceReranker(embed)
    with pytest.raises(RequestError, match="2 candidate scores for 1 passages"):
        reranker.rerank([Candidates(query("paris"), np.array([1.0, 2.0], np.float32), ["T\nA."], 1)])
    with pytest.raises(RequestError, match="finite"):
        reranker.rerank([Candidates(query("paris"), np.array([np.nan], np.float32), ["T\nA."], 1)])
    with pytest.raises(RequestError, match="question vector has 3 values"):
        reranker.rerank([Candidates(np.ones(3, np.float32), np.array([1.0], np.float32), ["T\nA."], 1)])


def test_settings_from_config_refuse_unknown_methods_and_negative_weights():
    assert RerankSettings.from_config({"parameters": {}}) == RerankSettings()
    with pytest.raises(ValueError, match="method"):
        RerankSettings.from_config({"parameters": {"method": {"string_value": "cross"}}})
    with pytest.raises(ValueError, match="weight"):
        RerankSettings.from_config({"parameters": {"weight": {"string_value": "-1"}}})


def test_preload_embeds_the_index_once_and_a_restart_reads_the_file(tmp_path):
    from tritonrag.retrieval.rerank import preload_file

    passages = ["France\nParis is the capital. Wine.", "Rivers\nThe Seine is a river.", "T\nCheese."]
    path = preload_file(tmp_path, {"checksums": {"a": "1"}, "count": 3}, "m", RerankSettings(), 256)
    assert path != preload_file(tmp_path, {"checksums": {"a": "2"}, "count": 3}, "m", RerankSettings(), 256)
    embed, calls = bag_embed(VOCAB)
    first = SentenceReranker(embed)
    assert first.preload(passages, path)[1] is False and len(calls) == 1 and path.exists()
    row = Candidates(query("paris"), np.array([2.0, 1.0, 0.5], np.float32), passages, 2)
    expected = first.rerank([row])
    assert len(calls) == 1                                   # every candidate was preloaded

    again_embed, again = bag_embed(VOCAB)
    second = SentenceReranker(again_embed)
    assert second.preload(passages, path)[1] is True and again == []   # read, not embedded
    got = second.rerank([row])
    assert all(np.array_equal(a, b) for x, y in zip(expected, got) for a, b in zip(x, y))
    # other passages under the same name, or a damaged file: embedded again, never misread
    assert second.preload(passages[:2] + ["T\nWine."], path)[1] is False and len(again) == 1
    path.write_bytes(path.read_bytes()[:50])
    assert second.preload(passages[:2] + ["T\nWine."], path)[1] is False and len(again) == 2
