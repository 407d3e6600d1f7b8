import json

import pytest

from tritonrag.index.corpus import (chunk_text, load_corpora, load_corpus, pydoc_passages, read_jsonl, read_squad,
                              squad_questions)


def test_chunks_respect_the_word_budget_and_keep_every_word():
    text = "\n\n".join(" ".join(f"w{p}_{i}" for i in range(n)) for p, n in enumerate([5, 30, 7, 90, 3]))
    chunks = chunk_text(text, max_words=40)
    assert all(len(c.split()) <= 40 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    # a paragraph that fits in a fresh chunk is not split; a longer one fills chunks
    assert [len(c.split()) for c in chunks] == [35, 40, 40, 20]


def test_pydoc_corpus_is_real_text_with_unique_ids():
    passages = pydoc_passages()
    assert len(passages) > 300
    assert len({p.id for p in passages}) == len(passages)
    with_passages = [p for p in passages if p.id.startswith("with#")]
    assert with_passages and "context manager" in with_passages[0].text


def test_jsonl_and_text_readers(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "title": "A", "text": "alpha beta"}) + "\n\n"
                     + json.dumps({"text": "gamma"}) + "\n")
    passages = read_jsonl(jsonl)
    assert [(p.id, p.title, p.text) for p in passages] == [("a", "A", "alpha beta"), ("docs:3", "", "gamma")]
    text = tmp_path / "notes.txt"
    text.write_text("first paragraph\n\nsecond paragraph\n")
    assert [p.text for p in load_corpus(str(text))] == ["first paragraph second paragraph"]


def test_bad_jsonl_line_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"no_text": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(bad)


def test_duplicate_ids_across_corpora_are_refused(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"id": "x", "text": "one"}) + "\n")
    with pytest.raises(ValueError, match="duplicate passage id 'x'"):
        load_corpora([str(a), str(a)])


def test_squad_paragraphs_are_gold_passages(squad_path):
    passages = read_squad(squad_path)
    questions = squad_questions(squad_path)
    ids = {p.id for p in passages}
    assert len(passages) == 646 and len(questions) == 2910
    assert all(q.gold_id in ids for q in questions)


def test_unknown_corpus_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_corpus("/no/such/corpus.jsonl")
