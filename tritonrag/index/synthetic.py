"""Invented facts about invented entities, as load-test and end-to-end data.

No model can know these facts, so when a generated answer contains one, retrieval
really fed generation. Names are built from syllables with a seeded generator, so
a corpus is reproducible from (count, seed).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tritonrag.common.atomic_files import atomic_write_text


_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "tr", "st", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "x", "nd", "rk"]

# (passage template, question template, answer slot); {e} is the entity, {v} the value
_TEMPLATES = [
    ("{e} is a small inland country. The capital city of {e} is {v}.",
     "What is the capital city of {e}?", "place"),
    ("The painter {e} is famous for one picture, called {v}.",
     "What is the famous picture of the painter {e} called?", "word"),
    ("{e} is a mountain village known for its wool. The village of {e} was founded in the year {v}.",
     "In what year was the village of {e} founded?", "year"),
    ("The composer {e} was born in the harbour town of {v}.",
     "In which town was the composer {e} born?", "place"),
    ("The {e} is a rare bird whose favourite food is the {v} berry.",
     "What is the favourite food of the {e} bird?", "word"),
    ("The river {e} flows through three valleys. The river {e} is {v} kilometres long.",
     "How many kilometres long is the river {e}?", "number"),
]


@dataclass(frozen=True)
class Fact:
    id: str
    passage: str
    question: str
    answer: str


def _name(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
    return word.capitalize()


def _value(rng: random.Random, slot: str) -> str:
    if slot == "year":
        return str(rng.randint(1100, 1899))
    if slot == "number":
        return str(rng.randint(120, 4800))
    return _name(rng, 2)


def make_facts(count: int, seed: int = 0) -> list[Fact]:
    """`count` facts, each about a distinct invented entity."""
    rng = random.Random(seed)
    used: set[str] = set()
    facts = []
    for n in range(count):
        passage_t, question_t, slot = _TEMPLATES[n % len(_TEMPLATES)]
        entity = _name(rng, 3)
        while entity in used:  # entities must be unique for a question to have one answer
            entity = _name(rng, 3)
        used.add(entity)
        value = _value(rng, slot)
        facts.append(Fact(f"synthetic:{n}", passage_t.format(e=entity, v=value),
                          question_t.format(e=entity), value))
    return facts


def answer_is_correct(answer: str, fact_answer: str) -> bool:
    """The invented value appears in the generated answer."""
    return fact_answer.lower() in answer.lower()


def write_facts(facts: list[Fact], corpus_path: Path, questions_path: Path | None = None) -> None:
    """A JSONL corpus (id, text) and, optionally, a JSONL of questions with answers."""
    atomic_write_text(corpus_path, "".join(json.dumps({"id": f.id, "text": f.passage}) + "\n" for f in facts))
    if questions_path is not None:
        atomic_write_text(questions_path, "".join(
            json.dumps({"question": f.question, "answer": f.answer, "gold_id": f.id}) + "\n" for f in facts))


def read_fact_questions(path: Path) -> list[Fact]:
    facts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            facts.append(Fact(r["gold_id"], "", r["question"], r["answer"]))
    return facts



