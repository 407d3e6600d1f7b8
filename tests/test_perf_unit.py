"""perf/ harness logic in-process: input files, perf_analyzer command and CSV parsing."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

import inputs  # noqa: E402
import stats  # noqa: E402
import sweep  # noqa: E402

# A row as perf_analyzer 2.50 writes it with -f (microseconds).
PERF_CSV = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
            "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
            "2,82.2411,5,3606,1000,54,19628,943,3,15171,68703,102926,116094\n")


def test_input_data_has_bytes_questions_and_optional_ints(tmp_path):
    path = inputs.write_inputs(tmp_path / "in.json", ["What?", "Où?"], top_k=2)
    data = json.loads(path.read_text())["data"]
    assert data[1] == {"question": {"content": ["Où?"], "shape": [1]}, "top_k": {"content": [2], "shape": [1]}}
    assert "max_tokens" not in data[0]


def test_synthetic_questions_need_no_shared_data():
    questions = inputs.load_questions("synthetic", count=5, seed=1)
    assert len(questions) == 5 and all(q.endswith("?") for q in questions)


def test_csv_is_parsed_into_milliseconds():
    [row] = sweep.parse_perf_csv(PERF_CSV)
    assert row["concurrency"] == 2 and row["throughput"] == 82.2411
    assert (row["p50_ms"], row["p99_ms"]) == (15.171, 116.094)
    assert row["server_queue_ms"] == 1.0 and abs(row["server_compute_ms"] - 20.625) < 1e-9
    assert "p99 ms" in sweep.format_table([row]).splitlines()[0]


def test_command_is_bounded_and_targets_the_given_server(tmp_path):
    command = sweep.perf_command("pa", "rag_ensemble", "127.0.0.1:8001", "grpc", 32, tmp_path / "in.json",
                                 tmp_path / "out.csv", 64, 3)
    joined = " ".join(command)
    assert "-u 127.0.0.1:8001" in joined and "--concurrency-range 32:32" in joined
    assert "--measurement-request-count 64" in joined and "--max-trials 3" in joined


# ----------------------------------------------------------------------------- issue 4: sweep, stats, ablation


# The statistics API as gRPC's as_json gives it: uint64 values as strings.
def _stats(models: dict[str, tuple[int, int, int, int, int]]) -> dict:
    """{model: (success, fail, queue_ns, compute_infer_ns, executions)}"""
    return {"model_stats": [{
        "name": name, "inference_count": str(s), "execution_count": str(e),
        "inference_stats": {"success": {"count": str(s), "ns": str(q + c + 1000 * s)}, "fail": {"count": str(f)},
                            "queue": {"count": str(s), "ns": str(q)},
                            "compute_infer": {"count": str(s), "ns": str(c)}}}
        for name, (s, f, q, c, e) in models.items()]}


def test_breakdown_gives_per_request_means_between_snapshots():
    before = stats.parse_statistics(_stats({"embedder": (10, 0, 10_000_000, 50_000_000, 10),
                                            "idle": (5, 0, 0, 0, 5)}))
    after = stats.parse_statistics(_stats({"embedder": (30, 2, 30_000_000, 250_000_000, 15),
                                           "idle": (5, 0, 0, 0, 5)}))
    result = stats.breakdown(before, after)
    assert list(result) == ["embedder"]  # models that served nothing in between are left out
    e = result["embedder"]
    assert (e["success"], e["fail"], e["executions"]) == (20, 2, 5)
    assert e["queue_ms"] == 1.0 and e["compute_ms"] == 10.0 and e["mean_batch"] == 4.0


def test_pipeline_overhead_subtracts_the_stages():
    stages = {"rag_ensemble": {"request_ms": 120.0},
              "embedder": {"queue_ms": 2.0, "compute_ms": 10.0}, "generator": {"queue_ms": 5.0, "compute_ms": 100.0}}
    out = stats.pipeline_overhead("rag_ensemble", stages, p50_ms=125.0)
    assert out["stages_compute_ms"] == 110.0 and out["server_ms"] == 3.0
    assert out["p50_over_compute_ms"] == 15.0 and out["p50_over_compute_and_queue_ms"] == 8.0
    assert stats.pipeline_overhead("rag_bls", stages) == {}


def test_rate_csv_rows_and_rate_command():
    text = PERF_CSV.replace("Concurrency", "Request Rate").replace("\n2,", "\n1.5,")
    [row] = sweep.parse_perf_csv(text)
    assert row["request_rate"] == 1.5 and "concurrency" not in row
    command = " ".join(sweep.perf_command("pa", "generator", "h:1", "http", None, Path("in.json"), Path("o.csv"),
                                          20, 3, rate=1.5, distribution="poisson"))
    assert "--request-rate-range 1.5:1.5 --request-distribution poisson" in command
    assert "--concurrency-range" not in command and "--measurement-request-count 20" in command


def test_input_data_fits_each_stage():
    values = {"EMBEDDING": [[0.5, 0.25]], "passages": [["p one", "p two", "p three"]]}
    retriever = sweep.input_data(["EMBEDDING", "top_k"], ["q?"], 3, 32, values)["data"][0]
    assert retriever == {"EMBEDDING": {"content": [0.5, 0.25], "shape": [2]}, "top_k": {"content": [3], "shape": [1]}}
    generator = sweep.input_data(["question", "passages", "max_tokens"], ["q?"], 3, 32, values)["data"][0]
    assert generator["passages"] == {"content": ["p one", "p two", "p three"], "shape": [3]}
    assert generator["question"]["content"] == ["q?"] and generator["max_tokens"]["content"] == [32]


def test_ablation_variants_render_the_right_scheduling():
    import ablate

    off = ablate.scheduling_for("batching-off")
    assert {"embedder", "retriever", "generator", "rag_ensemble", "rag_retrieve", "rag_bls"} <= set(off)
    assert all(v == {"max_batch_size": 1} for v in off.values())
    # batching off reaches the engine behind the forwarder, and merges with the caller's parameters
    assert ablate.parameters_for("batching-off") == {"generator_stream": {"max_running": "1"}}
    assert ablate.parameters_for("delay-1ms") == {}
    merged = ablate._with_parameters({"extra_parameters": {"generator_stream": {"ignore_eos": "true"}}, "x": 1},
                                     ablate.parameters_for("batching-off"))
    assert merged == {"extra_parameters": {"generator_stream": {"ignore_eos": "true", "max_running": "1"}}, "x": 1}
    assert ablate.scheduling_for("delay-5ms")["generator"] == {"max_queue_delay_us": 5000}
    assert ablate.scheduling_for("instances-2")["embedder"] == {"instances": 2}
    assert ablate.scheduling_for("bls") == {} == ablate.scheduling_for("batching-on")
    with pytest.raises(ValueError):
        ablate.scheduling_for("turbo")
    results = {"batching-on": {"req_per_s": 2.0}, "batching-off": {"req_per_s": 0.5}, "baseline": {"req_per_s": 1.0}}
    assert ablate.ratios(results) == {"batching_on_over_off": 4.0, "triton_over_baseline": 2.0}
