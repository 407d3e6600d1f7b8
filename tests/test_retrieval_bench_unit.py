"""perf/retrieval_bench.py's CPU sweep runs and agrees with NumPy brute force (tiny sizes)."""

import json
import sys
from pathlib import Path

PERF = Path(__file__).resolve().parents[1] / "perf"


def test_cpu_sweep_writes_results_that_match_brute_force(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PERF))
    import retrieval_bench

    assert retrieval_bench.main(["--device", "cpu", "--sizes", "700", "--dim", "16", "--batches", "1", "3",
                                 "--repeat", "1", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*_retrieval.json")
    rows = json.loads(result.read_text())["rows"]
    assert {r["metric"] for r in rows} == {"ip", "cosine", "l2", "l1"} and len(rows) == 8
    assert all(r["same_indices_fraction"] == 1.0 for r in rows)
    assert (tmp_path / result.name.replace(".json", ".png")).stat().st_size > 0
    sys.modules.pop("retrieval_bench", None)
