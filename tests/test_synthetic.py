from tritonrag.index.synthetic import answer_is_correct, make_facts, read_fact_questions, write_facts


def test_facts_are_reproducible_and_about_distinct_entities():
    a, b = make_facts(60, seed=3), make_facts(60, seed=3)
    assert a == b
    assert make_facts(60, seed=4) != a
    questions = [f.question for f in a]
    assert len(set(questions)) == len(questions)
    for fact in a:
        assert fact.answer in fact.passage and fact.answer not in fact.question


def test_answer_check():
    assert answer_is_correct("The capital is Zorblat.", "Zorblat")
    assert answer_is_correct("the capital is zorblat", "Zorblat")
    assert not answer_is_correct("I do not know.", "Zorblat")


def test_written_corpus_round_trips(tmp_path):
    facts = make_facts(5)
    write_facts(facts, tmp_path / "facts.jsonl", tmp_path / "questions.jsonl")
    from tritonrag.index.corpus import read_jsonl

    assert [p.text for p in read_jsonl(tmp_path / "facts.jsonl")] == [f.passage for f in facts]
    assert [(q.question, q.answer, q.id) for q in read_fact_questions(tmp_path / "questions.jsonl")] == \
        [(f.question, f.answer, f.id) for f in facts]
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
