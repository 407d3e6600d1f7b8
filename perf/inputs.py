"""perf_analyzer `--input-data` files for the RAG models, from real questions.

Questions come from the shared SQuAD file when it is there, else from the
synthetic-facts generator (so a machine without the shared data still runs).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tritonrag.common.atomic_files import atomic_write_text  # noqa: E402

SQUAD = ROOT.parent / "shared" / "data" / "squad-v2.0-dev-part.json"


def load_questions(source: str = "auto", count: int = 200, seed: int = 0) -> list[str]:
    """`count` questions from "squad", "synthetic" or "auto" (squad when present)."""
    if source == "auto":
        source = "squad" if SQUAD.exists() else "synthetic"
    if source == "squad":
        from tritonrag.index.corpus import squad_questions

        questions = [q.text for q in squad_questions(SQUAD)]
    elif source == "synthetic":
        from tritonrag.index.synthetic import make_facts

        questions = [f.question for f in make_facts(max(count, 1), seed)]
    else:
        raise ValueError(f"unknown question source {source!r}")
    random.Random(seed).shuffle(questions)
    return questions[:count]


def perf_analyzer_data(questions: list[str], top_k: int | None = None, max_tokens: int | None = None) -> dict:
    """One entry per question; shapes exclude the batch dimension, as perf_analyzer expects."""
    entries = []
    for question in questions:
        entry = {"question": {"content": [question], "shape": [1]}}
        if top_k is not None:
            entry["top_k"] = {"content": [top_k], "shape": [1]}
        if max_tokens is not None:
            entry["max_tokens"] = {"content": [max_tokens], "shape": [1]}
        entries.append(entry)
    return {"data": entries}


def write_inputs(path: Path, questions: list[str], top_k: int | None = None, max_tokens: int | None = None) -> Path:
    atomic_write_text(path, json.dumps(perf_analyzer_data(questions, top_k, max_tokens), ensure_ascii=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", default="auto", choices=["auto", "squad", "synthetic"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--max-tokens", type=int)
    args = parser.parse_args(argv)
    questions = load_questions(args.source, args.count, args.seed)
    write_inputs(args.out, questions, args.top_k, args.max_tokens)
    print(f"wrote {len(questions)} questions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
