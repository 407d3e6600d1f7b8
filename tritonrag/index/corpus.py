"""Reading corpora into passages: CPython's docs, JSONL, plain text and SQuAD JSON.

Passages are kept short (about 120 words by default) because the small CPU
generator pays for every prompt token, and short passages also retrieve more
precisely.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

DEFAULT_MAX_WORDS = 120
BUILTIN_CORPORA = ("pydoc",)


@dataclass(frozen=True)
class Passage:
    """One retrievable unit; `id` is what the service returns as a source."""

    id: str
    title: str
    text: str

    def embedding_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class Question:
    """A question with the passage that answers it (for quality measurements)."""

    text: str
    gold_id: str
    answers: tuple[str, ...] = ()


def chunk_text(text: str, max_words: int = DEFAULT_MAX_WORDS) -> list[str]:
    """Split text on blank lines and pack paragraphs into chunks of <= max_words."""
    chunks: list[str] = []
    current: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = paragraph.split()
        while words:
            room = max_words - len(current)
            if room <= 0 or (current and len(words) > room and len(words) <= max_words):
                chunks.append(" ".join(current))
                current = []
                continue
            current.extend(words[:room])
            words = words[room:]
    if current:
        chunks.append(" ".join(current))
    return chunks


def _passages(key: str, title: str, text: str, max_words: int) -> Iterator[Passage]:
    for n, chunk in enumerate(chunk_text(text, max_words)):
        yield Passage(f"{key}#{n}", title, chunk)


def pydoc_passages(max_words: int = DEFAULT_MAX_WORDS) -> list[Passage]:
    """CPython's language reference topics, as shipped in `pydoc_data.topics`."""
    from pydoc_data.topics import topics

    passages: list[Passage] = []
    for key in sorted(topics):
        body = topics[key]
        heading, _, rest = body.partition("\n")
        title = heading.strip() or key
        rest = re.sub(r"^\*+\s*$", "", rest, count=1, flags=re.MULTILINE)
        passages.extend(_passages(key, title, rest, max_words))
    return passages


def read_jsonl(path: Path, max_words: int = DEFAULT_MAX_WORDS) -> list[Passage]:
    """Lines of {"text": ..., optional "id", "title"}; long texts are chunked."""
    passages: list[Passage] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with 'text' ({exc})") from exc
            title = str(record.get("title", ""))
            base = str(record.get("id") or f"{path.stem}:{line_no}")
            chunks = chunk_text(text, max_words)
            if len(chunks) == 1:
                passages.append(Passage(base, title, chunks[0]))
            else:
                passages.extend(Passage(f"{base}#{n}", title, c) for n, c in enumerate(chunks))
    return passages


def read_text(path: Path, max_words: int = DEFAULT_MAX_WORDS) -> list[Passage]:
    """A plain-text file, chunked on paragraph boundaries."""
    return list(_passages(path.stem, path.stem, path.read_text(encoding="utf-8"), max_words))


def _squad_articles(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: not SQuAD JSON (expected a top-level 'data' list)")
    return data["data"]


def squad_paragraph_id(title: str, index: int) -> str:
    return f"squad:{title}#{index}"


def read_squad(path: Path) -> list[Passage]:
    """Each SQuAD paragraph is one passage (it is the gold unit of its questions)."""
    return [Passage(squad_paragraph_id(a["title"], i), a["title"].replace("_", " "), p["context"])
            for a in _squad_articles(path) for i, p in enumerate(a["paragraphs"])]


def squad_questions(path: Path, answerable_only: bool = True) -> list[Question]:
    """SQuAD questions with their paragraph as the gold passage."""
    questions = []
    for article in _squad_articles(path):
        for i, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                if answerable_only and qa.get("is_impossible"):
                    continue
                answers = tuple(a["text"] for a in qa.get("answers", []))
                questions.append(Question(qa["question"], squad_paragraph_id(article["title"], i), answers))
    return questions


def load_corpus(source: str, max_words: int = DEFAULT_MAX_WORDS) -> list[Passage]:
    """Passages from a builtin corpus name or a file (format from its content)."""
    if source == "pydoc":
        return pydoc_passages(max_words)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {source!r}: not a file and not one of {BUILTIN_CORPORA}")
    if path.suffix == ".jsonl":
        return read_jsonl(path, max_words)
    if path.suffix == ".json":
        return read_squad(path)
    return read_text(path, max_words)


def load_corpora(sources: Iterable[str], max_words: int = DEFAULT_MAX_WORDS) -> list[Passage]:
    """Several corpora in one list; ids must stay unique across them."""
    passages: list[Passage] = []
    seen: set[str] = set()
    for source in sources:
        for passage in load_corpus(source, max_words):
            if passage.id in seen:
                raise ValueError(f"duplicate passage id {passage.id!r} (from {source})")
            seen.add(passage.id)
            passages.append(passage)
    return passages
