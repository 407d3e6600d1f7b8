"""perf/ harness logic in-process: input files, perf_analyzer command and CSV parsing."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

import inputs  # noqa: E402
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
