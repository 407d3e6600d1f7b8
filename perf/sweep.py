"""Concurrency sweep with perf_analyzer: throughput, p50 and p99 per concurrency.

    python perf/sweep.py --url 127.0.0.1:8001 --concurrency 1 32 --max-tokens 32

Each step runs perf_analyzer bounded in requests and trials; the table is printed and
the raw rows, the exact commands, the device and the date are written to
perf/results/<date>_<device>_<model>_<protocol>_sweep.{csv,json}.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inputs import load_questions, write_inputs  # noqa: E402
from tritonrag.storage import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def find_perf_analyzer() -> str:
    """$PERF_ANALYZER, then PATH, then beside this interpreter (tritonclient's wheel puts it there)."""
    for candidate in (os.environ.get("PERF_ANALYZER"), shutil.which("perf_analyzer"),
                      str(Path(sys.executable).parent / "perf_analyzer")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("perf_analyzer not found: pip install 'tritonclient[all]==2.50.0' or set PERF_ANALYZER")


def perf_analyzer_env() -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even for CPU runs; find pip's copy if there is one."""
    env = dict(os.environ)
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        lib = Path(root) / "cuda_runtime" / "lib"
        if (lib / "libcudart.so.12").exists():
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def perf_command(binary: str, model: str, url: str, protocol: str, concurrency: int, input_data: Path,
                 csv_path: Path, request_count: int, max_trials: int) -> list[str]:
    return [binary, "-m", model, "-u", url, "-i", protocol, "--input-data", str(input_data),
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-mode", "count_windows", "--measurement-request-count", str(request_count),
            # Every run is bounded: with this tolerance the first `max_trials` windows
            # count as stable, so a slow CPU server never makes perf_analyzer give up.
            "--max-trials", str(max_trials), "--stability-percentage", "999",
            "-f", str(csv_path)]


def parse_perf_csv(text: str) -> list[dict]:
    """Rows of perf_analyzer's -f CSV: throughput in infer/s, latencies and server times in ms."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        if not row.get("Concurrency"):
            continue
        rows.append({
            "concurrency": int(float(row["Concurrency"])),
            "throughput": float(row["Inferences/Second"]),
            **{f"p{p}_ms": float(row[f"p{p} latency"]) / 1000.0 for p in (50, 90, 95, 99)},
            "server_queue_ms": float(row["Server Queue"]) / 1000.0,
            "server_compute_ms": sum(float(row[f"Server Compute {part}"]) for part in ("Input", "Infer", "Output"))
            / 1000.0,
        })
    return rows


def device_name() -> str:
    """The GPU's name if nvidia-smi sees one, else the CPU model and core count."""
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    model = platform.processor() or "cpu"
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = match.group(1).strip() if match else model
    except OSError:
        pass
    return f"{model} x{os.cpu_count()} cores"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'concurrency':>11} {'req/s':>8} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}"]
    lines += [f"{r['concurrency']:>11} {r['throughput']:>8.2f} {r['p50_ms']:>9.1f} {r['p90_ms']:>9.1f} "
              f"{r['p99_ms']:>9.1f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rag_ensemble")
    parser.add_argument("--url", default=None, help="default 127.0.0.1:8001 (grpc) or :8000 (http)")
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--questions", default="auto", choices=["auto", "squad", "synthetic"])
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--request-count", type=int, default=0,
                        help="requests per measurement window (default: max(16, 2 x concurrency))")
    parser.add_argument("--max-trials", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per perf_analyzer run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="extra words for the result file name")
    args = parser.parse_args(argv)
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    binary, env = find_perf_analyzer(), perf_analyzer_env()
    rows, commands, reports = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_inputs(Path(tmp) / "inputs.json", load_questions(args.questions, 200),
                              args.top_k, args.max_tokens)
        for concurrency in args.concurrency:
            csv_path = Path(tmp) / f"c{concurrency}.csv"
            command = perf_command(binary, args.model, url, args.protocol, concurrency, inputs, csv_path,
                                   args.request_count or max(16, 2 * concurrency), args.max_trials)
            commands.append(" ".join(command))
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
            if result.returncode != 0 or not csv_path.exists():
                print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"perf_analyzer failed at concurrency {concurrency}")
            rows.extend(parse_perf_csv(csv_path.read_text()))
            reports.append(result.stdout[-4000:])  # perf_analyzer's own per-model breakdown
            print(format_table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else format_table(rows), flush=True)
    print("\n" + format_table(rows))
    device = device_name()
    stem = "_".join(filter(None, [time.strftime("%Y-%m-%d"), slug(device), args.model, args.protocol,
                                  slug(args.tag), "sweep"]))
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device, "model": args.model, "url": url,
            "protocol": args.protocol, "questions": args.questions, "top_k": args.top_k,
            "max_tokens": args.max_tokens, "commands": commands, "rows": rows,
            "perf_analyzer_output": reports}
    atomic_write_text(args.results / f"{stem}.json", json.dumps(meta, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.results / f"{stem}.csv", buffer.getvalue())
    print(f"wrote {args.results / stem}.{{csv,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
