"""BM25 over the index's passages: tokenizer, inverted index, persistence, appends.

Lexical analysis decides much of BM25's quality on natural questions: plain lower-case
word tokens miss "founded"/"founding" and let "the"/"what" add noise, so the tokenizer
can stem (Snowball English, the pure-Python `snowballstemmer` package), drop stop
words, and add word pairs (bigrams of the remaining tokens within one clause: no pair
across punctuation), which reward a passage for a question's phrases ("Duchy of
Normandy" -> "duchi_normandi"); perf/README.md has what each choice did to recall. The index stores raw counts only (postings with term frequencies, document
lengths); k1 and b are applied at query time, so they are configuration, and appending
documents only appends postings (no re-tokenizing of the old ones).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tritonrag.common.atomic_files import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

BM25_META = "bm25.json"
BM25_ARRAYS = "bm25.npz"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Bigrams never span these: "... an \"if\" statement), Python will ..." must not pair statement_python.
_CLAUSE = re.compile(r"[.,;:!?()\[\]{}<>|=\n]+")

# A common English stop list (articles, pronouns, auxiliaries, question words, prepositions).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves s t don
""".split())


@dataclass(frozen=True)
class TokenizerConfig:
    stem: bool = True
    stop_words: bool = True
    bigrams: bool = True

    def tag(self) -> str:
        return (f"words{'+stem' if self.stem else ''}{'+stop' if self.stop_words else ''}"
                f"{'+bigrams' if self.bigrams else ''}")


def usable(config: TokenizerConfig) -> TokenizerConfig:
    """`config`, without stemming when `snowballstemmer` is not installed (a warning says so).

    A host without the package (e.g. a GPU box with a fixed environment) still serves hybrid
    retrieval, with somewhat lower recall, instead of failing to load the retriever.
    """
    if not config.stem:
        return config
    try:
        import snowballstemmer  # noqa: F401
    except ImportError:
        log.warning("snowballstemmer is not installed: BM25 runs without stemming (pip install snowballstemmer)")
        return replace(config, stem=False)
    return config


class Tokenizer:
    """Lower-case word tokens, optionally without stop words, Snowball-stemmed, plus bigrams."""

    def __init__(self, config: TokenizerConfig = TokenizerConfig()):
        self.config = config
        self._stem = None
        self._cache: dict[str, str] = {}
        if config.stem:
            import snowballstemmer

            self._stem = snowballstemmer.stemmer("english")

    def __call__(self, text: str) -> list[str]:
        if not self.config.bigrams:
            return self._words(text)
        tokens: list[str] = []
        pairs: list[str] = []
        for clause in _CLAUSE.split(text):
            words = self._words(clause)
            tokens += words
            pairs += [f"{a}_{b}" for a, b in zip(words, words[1:])]
        return tokens + pairs

    def _words(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        if self.config.stop_words:
            words = [w for w in words if w not in STOP_WORDS]
        if self._stem is not None:
            out = []
            for w in words:  # stemming is the slow part: cache per distinct word
                stem = self._cache.get(w)
                if stem is None:
                    stem = self._cache[w] = self._stem.stemWord(w)
                out.append(stem)
            words = out
        return words


class BM25Index:
    """Inverted index of term -> (document, term frequency), scored by Okapi BM25."""

    def __init__(self, tokenizer: TokenizerConfig = TokenizerConfig()):
        self.tokenizer_config = tokenizer
        self.tokenize = Tokenizer(tokenizer)
        self.vocabulary: dict[str, int] = {}
        self.doc_lengths = np.zeros(0, np.int32)
        self._postings: list[tuple[np.ndarray, np.ndarray]] = []  # per term: doc ids, tfs
        self._pending: list[list[tuple[int, int]]] = []

    @property
    def count(self) -> int:
        return len(self.doc_lengths)

    @classmethod
    def build(cls, texts: Iterable[str], tokenizer: TokenizerConfig = TokenizerConfig()) -> "BM25Index":
        index = cls(tokenizer)
        index.add(texts)
        return index

    def add(self, texts: Iterable[str]) -> None:
        """Append documents (ids continue after the current ones)."""
        new_terms: dict[int, tuple[list[int], list[int]]] = {}
        lengths = []
        doc = self.count
        for text in texts:
            tokens = self.tokenize(text)
            lengths.append(len(tokens))
            counts: dict[str, int] = {}
            for t in tokens:
                counts[t] = counts.get(t, 0) + 1
            for term, tf in counts.items():
                tid = self.vocabulary.setdefault(term, len(self.vocabulary))
                docs, tfs = new_terms.setdefault(tid, ([], []))
                docs.append(doc)
                tfs.append(tf)
            doc += 1
        while len(self._postings) < len(self.vocabulary):
            self._postings.append((np.zeros(0, np.int64), np.zeros(0, np.int32)))
        for tid, (docs, tfs) in new_terms.items():
            old_docs, old_tfs = self._postings[tid]
            self._postings[tid] = (np.concatenate([old_docs, np.asarray(docs, np.int64)]),
                                   np.concatenate([old_tfs, np.asarray(tfs, np.int32)]))
        self.doc_lengths = np.concatenate([self.doc_lengths, np.asarray(lengths, np.int32)])

    def scores(self, query: str, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
        """BM25 score of every document for `query` ([N] float32; 0 where no term matches)."""
        out = np.zeros(self.count, np.float32)
        if self.count == 0:
            return out
        avgdl = max(float(self.doc_lengths.mean()), 1e-9)
        norm = k1 * (1 - b + b * self.doc_lengths / avgdl)
        for term in self.tokenize(query):
            tid = self.vocabulary.get(term)
            if tid is None:
                continue
            docs, tfs = self._postings[tid]
            df = len(docs)
            idf = np.log(1 + (self.count - df + 0.5) / (df + 0.5))
            out[docs] += (idf * tfs * (k1 + 1) / (tfs + norm[docs])).astype(np.float32)
        return out

    def score_matrix(self, queries: Sequence[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
        return np.stack([self.scores(q, k1, b) for q in queries]) if queries else \
            np.zeros((0, self.count), np.float32)

    # -- persistence ---------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write bm25.npz (CSR postings, lengths) and bm25.json (vocabulary, tokenizer), atomically each."""
        import io

        folder = Path(folder)
        sizes = np.array([len(d) for d, _ in self._postings], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        docs = np.concatenate([d for d, _ in self._postings]) if self._postings else np.zeros(0, np.int64)
        tfs = np.concatenate([t for _, t in self._postings]) if self._postings else np.zeros(0, np.int32)
        buffer = io.BytesIO()
        np.savez(buffer, offsets=offsets, docs=docs, tfs=tfs, doc_lengths=self.doc_lengths)
        atomic_write_bytes(folder / BM25_ARRAYS, buffer.getvalue())
        terms = sorted(self.vocabulary, key=self.vocabulary.get)
        meta = {"tokenizer": asdict(self.tokenizer_config), "count": self.count, "terms": terms}
        atomic_write_text(folder / BM25_META, json.dumps(meta, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path) -> "BM25Index":
        folder = Path(folder)
        meta = json.loads((folder / BM25_META).read_text(encoding="utf-8"))
        index = cls(TokenizerConfig(**meta["tokenizer"]))
        with np.load(folder / BM25_ARRAYS) as arrays:
            offsets, docs, tfs = arrays["offsets"], arrays["docs"], arrays["tfs"]
            index.doc_lengths = arrays["doc_lengths"].astype(np.int32)
        index.vocabulary = {t: i for i, t in enumerate(meta["terms"])}
        index._postings = [(docs[offsets[i]:offsets[i + 1]], tfs[offsets[i]:offsets[i + 1]])
                           for i in range(len(meta["terms"]))]
        if index.count != meta["count"]:
            raise ValueError(f"{folder / BM25_ARRAYS}: {index.count} documents, {BM25_META} says {meta['count']}")
        return index
