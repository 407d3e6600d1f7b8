"""A tiny perf_analyzer sweep against the real server, so the benchmark harness cannot rot.

perf_analyzer (from tritonclient[all]) needs libb64 (apt: libb64-0d; .ci/run installs it)
and libcudart.so.12 (pip: nvidia-cuda-runtime-cu12, in the `perf` extra); a failure here
means `perf/sweep.py` no longer works, so it fails rather than skips.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))

import sweep  # noqa: E402

pytestmark = pytest.mark.integration


def _run(server, tmp_path, *args):
    host, _, http = server.http_url.rpartition(":")
    argv = ["--url", host, "--http-port", http, "--grpc-port", server.grpc_url.rpartition(":")[2],
            "--request-count", "8", "--count", "16", "--results", str(tmp_path), "--tag", "ci", *args]
    assert sweep.main(argv) == 0
    [result] = tmp_path.glob("*_sweep_ci.json")
    return json.loads(result.read_text())


def test_concurrency_sweep_over_stages_and_pipeline(server, tmp_path, report_figure):
    result = _run(server, tmp_path, "--models", "embedder", "retriever", "rag_retrieve",
                  "--protocols", "grpc", "http", "--concurrency", "1", "2")
    rows = result["rows"]
    assert len(rows) == 3 * 2 * 2 and not [r for r in rows if r["error"]], [r["perf_analyzer_output"] for r in rows]
    for row in rows:
        assert row["success_rate"] == 1.0 and row["throughput"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert row["stages"][row["model"]]["success"] >= 8
        assert "--concurrency-range" in row["command"] and row["protocol"] in row["command"]
    pipeline = [r for r in rows if r["model"] == "rag_retrieve"]
    for row in pipeline:  # the statistics API splits the pipeline into its stages
        assert {"embedder", "retriever"} <= set(row["stages"])
        assert row["overhead"]["stages_compute_ms"] > 0
    report_figure("tiny sweep, rag_retrieve grpc c=2: " + ", ".join(
        f"{m} q={s['queue_ms']:.1f} c={s['compute_ms']:.1f} ms" for m, s in pipeline[1]["stages"].items()))
    assert result["device"] and result["date"] and result["command"].startswith("python perf/sweep.py")
    stem = next(tmp_path.glob("*_sweep_ci.json")).name[:-len(".json")]
    for suffix in (".csv", "_curve.png", "_breakdown.png"):
        assert (tmp_path / f"{stem}{suffix}").stat().st_size > 0


def test_rate_sweep_poisson_and_bursty(server, tmp_path):
    result = _run(server, tmp_path, "--models", "rag_retrieve", "rag_ensemble", "--request-rate", "0.5",
                  "--distribution", "poisson", "bursty", "--burst", "2", "--max-tokens", "2")
    rows = {(r["model"], r["distribution"]): r for r in result["rows"]}
    # bursty goes through loadgen, which asks for answers: rag_retrieve (search only) is left out
    assert set(rows) == {("rag_retrieve", "poisson"), ("rag_ensemble", "poisson"), ("rag_ensemble", "bursty")}
    for row in rows.values():
        assert not row["error"] and row["success_rate"] == 1.0 and row["request_rate"] == 0.5
    assert "--request-distribution poisson" in rows["rag_retrieve", "poisson"]["command"]
