"""SQuAD answer scoring used by perf/answer_quality.py: normalisation, F1, containment, non-answers."""

import pytest

from tritonrag.retrieval.quality import (abstains, abstention_scores, answer_scores, contains_gold,
                                         is_bare_non_answer, normalize_answer, token_f1)


def test_normalisation_is_squads():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a pear") == "apple pear"


def test_token_f1():
    assert token_f1("the Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert token_f1("Paris", "London") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_containment_is_on_whole_tokens():
    assert contains_gold("It was built in 1889, in Paris.", ["1889"])
    assert not contains_gold("It was built in 18890.", ["1889"])
    assert not contains_gold("anything", [""])


@pytest.mark.parametrize("text,bare", [
    ("", True), ("  ", True), ("The answer to this question is:", True),
    ("The answer is:\n\nThe answer is:\n\nThe answer", True),
    ("The answer to this question is:\n\nIslamism", False), ("Paris", False), ("He knew the answer", False)])
def test_bare_non_answers(text, bare):
    assert is_bare_non_answer(text) is bare


def test_abstention_and_shares():
    assert abstains("The passages do not say who won.") and abstains("I cannot find the answer.")
    assert not abstains("Hoesung Lee chairs the IPCC.")
    scores = answer_scores(["Hoesung Lee", "The answer is:", "The passages do not mention it"],
                           [["Hoesung Lee"], ["1889"], ["Paris"]])
    assert scores["contains_gold"] == pytest.approx(1 / 3) and scores["f1"] == pytest.approx(1 / 3)
    assert scores["empty_or_bare"] == pytest.approx(1 / 3) and scores["abstained"] == pytest.approx(1 / 3)
    assert abstention_scores(["No information is given.", "Paris"])["abstained"] == 0.5
