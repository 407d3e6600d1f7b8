"""perf/answer_quality.py end to end at a small size, so the quality measurement cannot rot.

It starts its own server over the SQuAD file (as the full command does) and asks a few dozen
questions. The asserts check that every figure is computed and sane, not the issue's targets.
"""

import json
import sys
from pathlib import Path

import pytest

from .conftest import SQUAD

pytestmark = pytest.mark.integration


def test_answer_quality_command_writes_sane_figures(tmp_path):
    if not SQUAD.exists():
        pytest.skip("shared SQuAD data not present")
    perf = Path(__file__).resolve().parents[2] / "perf"
    sys.path.insert(0, str(perf))
    import answer_quality

    argv = ["--retrieval-questions", "48", "--answers", "24", "--unanswerable", "6", "--requests-c1", "4",
            "--requests-c32", "32", "--tag", "ci", "--out", str(tmp_path)]
    assert answer_quality.main(argv) == 0
    [path] = tmp_path.glob("*_answer_quality_ci.json")
    report = json.loads(path.read_text())
    assert report["command"].startswith("python perf/answer_quality.py") and report["device"] and report["date"]

    retrieval = report["retrieval"]
    assert retrieval["questions"] == 48
    for mode in ("dense", "bm25", "zscore", "rrf", "rag_retrieve"):
        r = retrieval[mode]
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1.0, (mode, r)
    # the pipeline's default fusion is the retriever's zscore, and its reranker only reorders the
    # retriever's 10 candidates: the same passages in the top 10
    assert retrieval["rag_retrieve"]["R@10"] == retrieval["zscore"]["R@10"]
    assert retrieval["zscore"]["R@5"] >= 0.8 and retrieval["dense"]["R@10"] >= 0.7, retrieval

    answers = report["answers"]
    assert answers["answerable"]["questions"] == 24 and answers["unanswerable"]["questions"] == 6
    for part in ("answerable", "unanswerable"):
        for key, value in answers[part].items():
            if key not in ("questions", "when_gold_first"):
                assert 0.0 <= value <= 1.0, (part, key, value)
    assert len(answers["examples"]) == 30 and all(isinstance(e["answer"], str) for e in answers["examples"])
    # the default answers quote the reranker's evidence sentence: word for word from a returned
    # passage, never empty; and they hold the gold answer often (.60 on 300 questions of the
    # report half; the floor leaves room for a 24-question sample)
    answerable = answers["answerable"]
    assert answerable["quoted_from_passages"] == 1.0 and answerable["empty_or_bare"] == 0.0, answerable
    assert answerable["contains_gold"] >= 0.35, answerable

    speed = report["speed"]
    assert "error" not in speed["c1"] and "error" not in speed["c32"], speed
    assert speed["c1"]["p50_ms"] > 0 and speed["c32"]["throughput"] > 0
