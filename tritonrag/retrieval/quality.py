"""Retrieval and answer quality helpers shared by perf/retrieval_quality.py, perf/answer_quality.py
and the integration tests."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

SPLIT_SEED = 0


def split_halves(count: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(tune, held_out) question positions: a seeded random half each, both sorted."""
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[:count // 2]), np.sort(order[count // 2:])


def recall_at(ranked: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> float:
    """Share of questions whose gold passage is among the first k returned."""
    return sum(g in list(r)[:k] for r, g in zip(ranked, gold)) / max(1, len(gold))


# ----------------------------------------------------------------------------- answers
# Answer scoring follows the official SQuAD v2 evaluation script: lower case, drop
# punctuation and the articles a/an/the, collapse white space; F1 over the tokens left.

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
# A lead-in that announces an answer ("The answer to this question is:"); an answer made of
# lead-ins alone, however often repeated, is a bare non-answer.
_LEAD_IN = re.compile(r"(the\s+)?(correct\s+)?answer(\s+to\s+(this|the)\s+question)?(\s+is)?\s*(:|$)", re.I)
# Phrases by which an answer says the passages do not hold what was asked.
_ABSTAIN = re.compile(r"(do(es)? not (say|mention|contain|provide|state|specify|include)|"
                      r"(is|are) not (mentioned|provided|stated|given|specified)|no information|"
                      r"cannot (find|answer|be (found|determined|answered))|can't (find|answer)|"
                      r"not enough information|(i )?do(n't| not) know|unanswerable|no answer)", re.I)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's token F1 of one prediction against one gold answer (both normalised)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_gold(prediction: str, golds: Sequence[str]) -> bool:
    """Whether the normalised prediction contains a normalised gold answer as whole tokens."""
    pred = f" {normalize_answer(prediction)} "
    return any(norm and f" {norm} " in pred for norm in (normalize_answer(g) for g in golds))


def is_bare_non_answer(prediction: str) -> bool:
    """Empty, or only lead-ins ("The answer is:") with nothing after them."""
    return not normalize_answer(_LEAD_IN.sub(" ", prediction))


def abstains(prediction: str) -> bool:
    """Whether the answer says the passages do not hold the answer."""
    return bool(_ABSTAIN.search(prediction))


def answer_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict:
    """Shares over answerable questions: gold contained, mean best token F1, bare, abstained."""
    n = max(1, len(predictions))
    return {"questions": len(predictions),
            "contains_gold": sum(contains_gold(p, g) for p, g in zip(predictions, golds)) / n,
            "f1": sum(max((token_f1(p, a) for a in g), default=0.0) for p, g in zip(predictions, golds)) / n,
            "empty_or_bare": sum(map(is_bare_non_answer, predictions)) / n,
            "abstained": sum(map(abstains, predictions)) / n}


def abstention_scores(predictions: Sequence[str]) -> dict:
    """Shares over unanswerable questions: said it cannot find the answer, bare non-answers."""
    n = max(1, len(predictions))
    return {"questions": len(predictions), "abstained": sum(map(abstains, predictions)) / n,
            "empty_or_bare": sum(map(is_bare_non_answer, predictions)) / n}
