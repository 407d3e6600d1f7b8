"""A large synthetic index for capacity runs: N random unit vectors of dimension d, passages of
realistic length, written in the served index format.

Capacity benchmarks with dummy-weight models (no Hub access) still need a corpus of the
production size (e.g. 1M x 1024 for an e5-large-shaped embedder), and embedding a million
passages with random weights would only cost time. The vectors are random unit vectors (so
the top-k is arbitrary but the search does the full work); each passage is `words` words
drawn from CPython's own documentation vocabulary (4096 distinct texts, reused), so prompts have the usual length. BM25
statistics cover only each passage's first `lexical_words` words (building them over a
million full passages costs minutes of pure Python and the capacity runs search dense):
serve such an index with `fusion` dense.

    python perf/synthetic_index.py --out /tmp/idx --count 1000000 --dim 1024 \
        --embedder dummy:multilingual-e5-large-instruct
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tritonrag.index.bm25 import BM25Index, TokenizerConfig  # noqa: E402
from tritonrag.index.corpus import Passage, pydoc_passages  # noqa: E402
from tritonrag.index.store import _write_index  # noqa: E402
from tritonrag.models.sources import model_name  # noqa: E402


def vocabulary() -> np.ndarray:
    words = {w for p in pydoc_passages() for w in re.findall(r"[A-Za-z]{3,12}", p.text)}
    return np.array(sorted(words))


def unit_vectors(rng: np.random.Generator, count: int, dim: int, chunk: int = 1 << 16):
    """Yield [<=chunk, dim] float32 blocks of random unit vectors (never the whole matrix at once)."""
    for start in range(0, count, chunk):
        block = rng.standard_normal((min(chunk, count - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield block


def write_synthetic_index(out: Path, count: int, dim: int, embedder: str, words: int = 60,
                          lexical_words: int = 8, metric: str = "ip", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    # 4096 distinct texts, reused: joining a million rows of words alone took ~100 s on 2 cores
    texts = [" ".join(vocab[row]) for row in rng.integers(0, len(vocab), size=(min(count, 4096), words))]
    passages = [Passage(f"syn{i}", f"synthetic {i}", texts[i % len(texts)]) for i in range(count)]
    lexical = BM25Index.build((" ".join(p.text.split()[:lexical_words]) for p in passages),
                              TokenizerConfig(stem=False))
    return _write_index(out, unit_vectors(rng, count, dim), passages, model_name(embedder), metric, lexical)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--embedder", required=True, help="the embedder spec the server will query with")
    parser.add_argument("--words", type=int, default=60, help="words per passage")
    parser.add_argument("--metric", default="ip")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = write_synthetic_index(args.out, args.count, args.dim, args.embedder, args.words, metric=args.metric)
    print(f"wrote {manifest['count']} x {manifest['dimension']} to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
