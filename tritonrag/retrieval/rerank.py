"""What the `reranker` model serves: the retriever's candidates put in a better order.

The first stage (dense + BM25 fusion) ranks whole passages; a passage that answers the
question often does so in one sentence among others about the same topic. The reranker
scores each candidate by its best sentence, the largest cosine between the question's
vector and the vectors of the passage's sentences ("maxsim", same embedder as the
question), and orders the candidates by

    z(first-stage score) + weight * z(maxsim)

with z-scores taken within one request's candidates, so neither scale dominates by its
units. The top_k best go on, each with that combined score. Ties keep the first stage's
order. With them goes one "evidence" sentence, what an extractive answer quotes: the first
passage's sentence closest to the question, unless another kept passage has one closer by more
than `evidence_margin` (sentences of fewer than 4 words, such as list numbers, are not
quoted; the title line is left out). `method` "none" passes the first stage's top_k through
unchanged (the switch), with no evidence.

Sentence vectors of the index's passages are embedded once (`preload`, at load) and kept
in a file beside the other caches, so a restart reads them instead; a passage that is not
preloaded (an index too large to preload, or a caller's own passages) is embedded on first
sight, all new passages of a batch in one embedder call, and kept in a bounded LRU cache
keyed by the passage text. docs/decisions/0104-sentence-maxsim-reranker.md says why this
lever and these settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from tritonrag.common.atomic_files import atomic_write_bytes
from tritonrag.common.params import model_param
from tritonrag.common.request_checks import RequestError

METHODS = ("maxsim", "none")
SPLIT_VERSION = 1   # bump when split_sentences changes: older preload files are then not read
# a sentence ends at . ! or ? followed by space and what starts a sentence
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class RerankSettings:
    """The `reranker` model's config.pbtxt parameters."""
    method: str = "maxsim"
    weight: float = 0.75               # maxsim's weight against the first-stage score (z-scores)
    max_sentences: int = 32            # sentences of one passage scored (the first ones)
    cache_passages: int = 10000        # passages outside the preloaded index whose sentence vectors are kept
    preload_max_passages: int = 100000  # indexes up to this size get every sentence vector at load (0: never)
    evidence_margin: float = 0.1       # cosine by which a lower passage's sentence must beat the first's to be quoted

    @classmethod
    def from_config(cls, config: Mapping) -> "RerankSettings":
        d = cls()
        settings = cls(**{name: model_param(config, name, getattr(d, name)) for name in d.__dataclass_fields__})
        if settings.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {settings.method!r}")
        if not (np.isfinite(settings.weight) and settings.weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {settings.weight}")
        if not np.isfinite(settings.evidence_margin):
            raise ValueError(f"evidence_margin must be a finite number, got {settings.evidence_margin}")
        if settings.max_sentences < 1 or settings.cache_passages < 0:
            raise ValueError("max_sentences must be >= 1 and cache_passages >= 0")
        return settings


@dataclass(frozen=True)
class Candidates:
    """One row: the question's vector, the first stage's candidates (best first), and how many to keep."""
    vector: np.ndarray          # [d], L2-normalised (the embedder's output)
    scores: np.ndarray          # [n] first-stage scores, best first
    passages: Sequence[str]     # [n] passage texts as the retriever hands them ("title\\ntext")
    k: int


class Ranked(NamedTuple):
    """One row's result: indices into its candidates (best first, cut to k), their scores, and
    the sentence an extractive answer quotes ("" when the method scores no sentences)."""
    order: np.ndarray
    scores: np.ndarray
    evidence: str


def split_sentences(passage: str, limit: int) -> list[str]:
    """A passage's sentences, each prefixed with its title line (the passage's first line when it
    has more than one), so that a sentence keeps the topic its passage states once."""
    title, sep, body = passage.partition("\n")
    if not sep:
        title, body = "", passage
    parts = [s.strip() for s in SENTENCE_END.split(body) if s.strip()][:limit]
    if not parts:
        return [passage]
    return [f"{title}\n{s}" if title else s for s in parts]


def zscores(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


class SentenceReranker:
    """`embed(texts) -> [len(texts), d]` L2-normalised float32 vectors of passage sentences."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], settings: RerankSettings = RerankSettings()):
        self.embed, self.settings = embed, settings
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._preloaded: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def preload(self, passages: Sequence[str], cache_file: Path | None = None) -> tuple[float, bool]:
        """Sentence vectors of every passage, read from `cache_file` when it holds them for these
        passages, else embedded and written there (atomically). Returns (seconds, read from the file)."""
        start = time.perf_counter()
        digest = _digest(passages, self.settings.max_sentences)
        loaded = _read_preload(cache_file, digest, len(passages)) if cache_file is not None else None
        if loaded is None:
            split = [split_sentences(p, self.settings.max_sentences) for p in passages]
            vectors = self._embed_by_length([s for sentences in split for s in sentences])
            counts = np.array([len(s) for s in split], dtype=np.int64)
            if cache_file is not None:
                buffer = io.BytesIO()
                np.savez(buffer, vectors=vectors, counts=counts, digest=np.array(digest))
                atomic_write_bytes(cache_file, buffer.getvalue())
        else:
            vectors, counts = loaded
        ends = np.cumsum(counts)
        self._preloaded = {p: vectors[end - n:end] for p, n, end in zip(passages, counts, ends)}
        return time.perf_counter() - start, loaded is not None

    def _embed_by_length(self, texts: list[str]) -> np.ndarray:
        """Vectors of `texts` in their order, embedded shortest first (batches pad less)."""
        if not texts:
            return np.zeros((0, 0), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        embedded = np.asarray(self.embed([texts[i] for i in order]), dtype=np.float32)
        out = np.empty_like(embedded)
        out[order] = embedded
        return out

    def rerank(self, rows: Sequence[Candidates]) -> list[Ranked]:
        """Per row: indices into the row's candidates, best first, cut to its k, the scores the
        order was taken by, and the evidence sentence."""
        for row in rows:
            if len(row.scores) != len(row.passages):
                raise RequestError(f"{len(row.scores)} candidate scores for {len(row.passages)} passages")
            if not np.all(np.isfinite(row.scores)):
                raise RequestError("candidate scores must be finite")
        if self.settings.method == "none":
            return [Ranked(np.arange(min(row.k, len(row.scores))), np.asarray(row.scores[:row.k], np.float32),
                           "") for row in rows]
        vectors = self._sentence_vectors({p for row in rows for p in row.passages})
        results = []
        for row in rows:
            n = len(row.scores)
            if n == 0:
                results.append(Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), ""))
                continue
            query = np.asarray(row.vector, dtype=np.float32).reshape(-1)
            if any(vectors[p].shape[1] != query.shape[0] for p in row.passages):
                raise RequestError(f"the question vector has {query.shape[0]} values, the reranker's "
                                   f"embedder {vectors[row.passages[0]].shape[1]}")
            similarity = [vectors[p] @ query for p in row.passages]
            best = np.array([float(s.max()) for s in similarity])
            combined = zscores(row.scores) + self.settings.weight * zscores(best)
            order = np.argsort(-combined, kind="stable")[:row.k]
            results.append(Ranked(order, combined[order].astype(np.float32),
                                  self._evidence([row.passages[i] for i in order], [similarity[i] for i in order])))
        return results

    def _evidence(self, passages: Sequence[str], similarity: Sequence[np.ndarray]) -> str:
        """The sentence to quote among the kept passages' (best first), without its title line."""
        best = []
        for passage, sims in zip(passages, similarity):
            # split_sentences puts the passage's title line (if any) before every sentence
            title = passage.partition("\n")[0] + "\n" if "\n" in passage else ""
            bodies = [s[len(title):] for s in split_sentences(passage, self.settings.max_sentences)]
            quotable = [i for i, b in enumerate(bodies) if len(b.split()) >= 4] or list(range(len(bodies)))
            i = max(quotable, key=lambda j: (sims[j], -j))
            best.append((float(sims[i]), bodies[i]))
        if not best:
            return ""
        closer = max(best[1:], key=lambda b: b[0], default=None)
        if closer is not None and closer[0] > best[0][0] + self.settings.evidence_margin:
            return closer[1]
        return best[0][1]

    def _sentence_vectors(self, passages: set[str]) -> dict[str, np.ndarray]:
        """Every passage's sentence vectors ([sentences, d]); new ones in one embed call."""
        found = {p: self._preloaded[p] for p in passages if p in self._preloaded}
        with self._lock:
            for p in passages:
                if p in self._cache and p not in found:
                    found[p] = self._cache[p]
                    self._cache.move_to_end(p)
        missing = sorted(passages - found.keys())
        if missing:
            split = [split_sentences(p, self.settings.max_sentences) for p in missing]
            flat = [s for sentences in split for s in sentences]
            embedded = self._embed_by_length(flat)
            start = 0
            for passage, sentences in zip(missing, split):
                found[passage] = embedded[start:start + len(sentences)]
                start += len(sentences)
            with self._lock:
                for passage in missing:
                    self._cache[passage] = found[passage]
                while len(self._cache) > self.settings.cache_passages:
                    self._cache.popitem(last=False)
        return found


def preload_file(folder: Path, index_manifest: Mapping, embedder: str, settings: RerankSettings,
                 max_length: int) -> Path:
    """Where the preloaded sentence vectors of an index live: named by what they depend on."""
    key = json.dumps([index_manifest.get("checksums"), index_manifest.get("count"), embedder, max_length,
                      settings.max_sentences, SPLIT_VERSION], sort_keys=True)
    return Path(folder) / f"sentences-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _digest(passages: Sequence[str], max_sentences: int) -> str:
    h = hashlib.sha256(f"{SPLIT_VERSION}:{max_sentences}:{len(passages)}".encode())
    for p in passages:
        h.update(hashlib.sha256(p.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()


def _read_preload(path: Path, digest: str, count: int):
    """(vectors, counts) from a preload file made for these passages, None if absent or not theirs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["digest"]) != digest or len(data["counts"]) != count:
                return None
            vectors, counts = data["vectors"], data["counts"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):   # absent or damaged: embedded again
        return None
    if counts.sum() != len(vectors):
        return None
    return vectors.astype(np.float32, copy=False), counts
