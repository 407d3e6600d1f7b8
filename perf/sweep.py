"""Concurrency and request-rate sweeps with perf_analyzer, over the pipeline and each stage alone.

    python perf/sweep.py --start-server --models rag_ensemble embedder retriever generator \\
        --protocols grpc http --concurrency 1 4 16 32 --tag cpu
    python perf/sweep.py --url 127.0.0.1 --models rag_ensemble --request-rate 0.5 1 2 \\
        --distribution constant poisson bursty

Per point: requests/s, p50/p90/p99, success rate, and each stage's queue and compute
time and mean batch from Triton's statistics API (snapshots before and after the
point). Each model gets input data for its own inputs: questions (the shared SQuAD
questions when present, synthetic-facts questions otherwise), query vectors made by
the server's embedder (retriever), passages retrieved by the server (generator).
Constant and Poisson arrivals go through perf_analyzer (--request-distribution);
bursty arrivals through perf/loadgen.py. Every point is bounded in requests, trials and
seconds, and goes only to the given host (default loopback).

Writes perf/results/<date>_<device>_sweep[_tag].{csv,json} (rows, exact commands,
device, date, config) and _curve.png (throughput vs latency), _breakdown.png (per-stage
queue and compute).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import math
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

import stats  # noqa: E402
from inputs import load_questions  # noqa: E402
from tritonrag.common.atomic_files import atomic_write_text  # noqa: E402
from tritonrag.server.launcher import free_ports  # noqa: E402,F401 (perf/ablate.py takes it from here)

RESULTS = Path(__file__).resolve().parent / "results"
PIPELINES = ("rag_ensemble", "rag_bls", "rag_retrieve")


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


def perf_command(binary: str, model: str, url: str, protocol: str, concurrency: int | None, input_data: Path,
                 csv_path: Path, request_count: int, max_trials: int, rate: float | None = None,
                 distribution: str = "constant", max_threads: int = 16, streaming: bool = False,
                 asynchronous: bool = False) -> list[str]:
    """One bounded perf_analyzer run at one concurrency, or at one request rate (`asynchronous`:
    perf_analyzer's --async, each thread keeping any number of requests in flight)."""
    command = [binary, "-m", model, "-u", url, "-i", protocol, "--input-data", str(input_data)]
    if rate is not None:
        command += ["--request-rate-range", f"{rate:g}:{rate:g}", "--request-distribution", distribution,
                    "--max-threads", str(max_threads)] + (["--async"] if asynchronous else [])
    else:
        command += ["--concurrency-range", f"{concurrency}:{concurrency}"]
    if streaming:
        command += ["--streaming"]
    return command + [
        "--measurement-mode", "count_windows", "--measurement-request-count", str(request_count),
        # Every run is bounded: with this tolerance the first `max_trials` windows
        # count as stable, so a slow CPU server never makes perf_analyzer give up (999 %
        # was not enough: the retriever's windows of ~2 ms with a 500 ms outlier failed).
        "--max-trials", str(max_trials), "--stability-percentage", "1000000",
        "-f", str(csv_path)]


def parse_perf_csv(text: str) -> list[dict]:
    """Rows of perf_analyzer's -f CSV: throughput in infer/s, latencies and server times in ms."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        level = row.get("Concurrency") or row.get("Request Rate")
        if not level:
            continue
        out = {"throughput": float(row["Inferences/Second"]),
               **{f"p{p}_ms": float(row[f"p{p} latency"]) / 1000.0 for p in (50, 90, 95, 99)},
               "server_queue_ms": float(row["Server Queue"]) / 1000.0,
               "server_compute_ms": sum(float(row[f"Server Compute {part}"]) for part in ("Input", "Infer", "Output"))
               / 1000.0}
        if row.get("Concurrency"):
            out["concurrency"] = int(float(row["Concurrency"]))
        else:
            out["request_rate"] = float(row["Request Rate"])
        rows.append(out)
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
    lines = [f"{'model':>12} {'proto':>5} {'load':>12} {'req/s':>8} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
             f"{'ok %':>6}"]
    for r in rows:
        lines.append(f"{r.get('model', ''):>12} {r.get('protocol', ''):>5} {load_label(r):>12} "
                     f"{r.get('throughput', float('nan')):>8.2f} {r.get('p50_ms', float('nan')):>9.1f} "
                     f"{r.get('p90_ms', float('nan')):>9.1f} {r.get('p99_ms', float('nan')):>9.1f} "
                     f"{100 * r.get('success_rate', float('nan')):>6.1f}")
    return "\n".join(lines)


def load_label(row: dict) -> str:
    if "concurrency" in row:
        return f"c={row['concurrency']}"
    return f"{row.get('distribution', '')[:4]}@{row.get('request_rate', 0):g}/s"


# ----------------------------------------------------------------------------- input data

def model_inputs(url: str, protocol: str, model: str) -> tuple[list[str], bool]:
    """(input names, decoupled?) of a served model, from its config."""
    client = _client(url, protocol)
    try:
        config = client.get_model_config(model, as_json=True) if protocol == "grpc" else client.get_model_config(model)
    finally:
        client.close()
    config = config.get("config", config)
    decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
    return [i["name"] for i in config.get("input", [])], decoupled


def _client(url: str, protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module.InferenceServerClient(url)


def _module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def server_values(url: str, protocol: str, questions: list[str], top_k: int, need: set[str]) -> dict[str, list]:
    """Per question, what the server's own stages make of it: EMBEDDING (embedder), passages (rag_retrieve)."""
    import numpy as np

    module, client = _module(protocol), _client(url, protocol)
    values: dict[str, list] = {name: [] for name in need}
    try:
        for question in questions:
            q = module.InferInput("question", [1, 1], "BYTES")
            q.set_data_from_numpy(np.array([[question.encode("utf-8")]], dtype=np.object_))
            if "EMBEDDING" in need:
                result = client.infer("embedder", [q], outputs=[module.InferRequestedOutput("EMBEDDING")])
                values["EMBEDDING"].append(result.as_numpy("EMBEDDING")[0].astype(float).tolist())
            if "passages" in need:
                k = module.InferInput("top_k", [1, 1], "INT32")
                k.set_data_from_numpy(np.array([[top_k]], dtype=np.int32))
                result = client.infer("rag_retrieve", [q, k], outputs=[module.InferRequestedOutput("passages")])
                values["passages"].append([p.decode("utf-8") for p in result.as_numpy("passages")[0]])
    finally:
        client.close()
    return values


def input_data(names: list[str], questions: list[str], top_k: int, max_tokens: int,
               values: dict[str, list]) -> dict:
    """perf_analyzer's --input-data JSON for a model with these inputs (shapes without the batch dim)."""
    entries = []
    for i, question in enumerate(questions):
        entry = {}
        for name in names:
            if name == "question":
                entry[name] = {"content": [question], "shape": [1]}
            elif name == "top_k":
                entry[name] = {"content": [top_k], "shape": [1]}
            elif name == "max_tokens":
                entry[name] = {"content": [max_tokens], "shape": [1]}
            elif name in values:
                content = values[name][i]
                entry[name] = {"content": content, "shape": [len(content)]}
            # other optional inputs are left out
        entries.append(entry)
    return {"data": entries}


# ----------------------------------------------------------------------------- running points

def run_point(binary: str, env: dict, model: str, url: str, protocol: str, data_path: Path, tmp: Path,
              concurrency: int | None, rate: float | None, distribution: str, args, streaming: bool) -> dict:
    """One perf_analyzer run with statistics snapshots around it; never raises for a failed run."""
    level = concurrency if rate is None else rate
    csv_path = tmp / f"{model}_{protocol}_{distribution}_{level}.csv"
    count = args.request_count or (max(16, 2 * concurrency) if rate is None else max(16, int(rate * 10)))
    # perf_analyzer's rate mode sends synchronous calls, one per thread: a rate needs
    # rate x latency threads, or it silently caps (on the H100, 64 threads held
    # rag_ensemble at 73 requests/s for asked rates of 120 and 180 at ~0.9 s latency)
    threads = args.max_threads if rate is None else max(args.max_threads, math.ceil(rate * args.rate_latency_s))
    command = perf_command(binary, model, url, protocol, concurrency, data_path, csv_path, count, args.max_trials,
                           rate, distribution, threads, streaming, asynchronous=args.rate_async)
    row = {"model": model, "protocol": protocol, "distribution": "closed" if rate is None else distribution,
           "command": " ".join(command)}
    before = stats.snapshot(url, protocol)
    started = time.perf_counter()
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
        failed = result.returncode != 0 or not csv_path.exists()
        row["perf_analyzer_output"] = result.stdout[-3000:] + result.stderr[-1500:]
    except subprocess.TimeoutExpired:
        failed, row["perf_analyzer_output"] = True, f"timed out after {args.timeout} s"
    row["wall_s"] = time.perf_counter() - started
    if not failed:
        parsed = parse_perf_csv(csv_path.read_text())
        if parsed:
            row.update(parsed[-1])
        else:
            failed = True
    row["error"] = failed
    if concurrency is not None:
        row.setdefault("concurrency", concurrency)
    else:
        row.setdefault("request_rate", rate)
    return _with_stats(row, model, url, protocol, before)


def _with_stats(row: dict, model: str, url: str, protocol: str, before: dict) -> dict:
    stages = stats.breakdown(before, stats.snapshot(url, protocol))
    row["stages"] = stages
    top = stages.get(model, {})
    total = top.get("success", 0) + top.get("fail", 0)
    row["success_rate"] = top.get("success", 0) / total if total else 0.0
    if model in PIPELINES:
        row["overhead"] = stats.pipeline_overhead(model, stages, row.get("p50_ms"))
    return row


def run_bursty(model: str, url: str, protocol: str, questions: list[str], rate: float, args) -> dict:
    """Bursts of `--burst` requests at once (Poisson bursts, mean `rate`), through perf/loadgen.py."""
    from loadgen import arrival_times, open_loop, percentile

    count = args.request_count or max(16, int(rate * 10))
    times = arrival_times(rate, count / rate, "bursty", burst=args.burst, seed=1)
    before = stats.snapshot(url, protocol)
    started = time.perf_counter()
    # over HTTP, tritonclient would send timeout_s to the server as a request parameter
    timeout_s = args.timeout if protocol == "grpc" else None
    outcomes = asyncio.run(open_loop(url, questions, times, timeout_s=timeout_s, protocol=protocol,
                                     model=model, top_k=args.top_k, max_tokens=args.max_tokens))
    wall = time.perf_counter() - started
    ok = [o.latency_s * 1000 for o in outcomes if o.kind == "ok"]
    row = {"model": model, "protocol": protocol, "distribution": "bursty", "request_rate": rate,
           "burst": args.burst, "requests": len(outcomes), "wall_s": wall, "error": not ok,
           "command": f"perf/loadgen.py open_loop bursty rate={rate:g} burst={args.burst} requests={len(times)}",
           "throughput": len(ok) / wall, **{f"p{p}_ms": percentile(ok, p) for p in (50, 90, 95, 99)}}
    row = _with_stats(row, model, url, protocol, before)
    row["success_rate"] = len(ok) / len(outcomes) if outcomes else 0.0  # the client's count covers rejections
    return row


# ----------------------------------------------------------------------------- plots

def plot_curve(rows: list[dict], path: Path, title: str) -> None:
    """Throughput against p50 (solid) and p99 (dashed) latency, one line per model/protocol/arrival."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if not r.get("error"):
            groups.setdefault((r["model"], r["protocol"], r["distribution"]), []).append(r)
    models = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5.5 * max(1, len(models)), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for (m, protocol, dist), points in sorted(groups.items()):
            if m != model:
                continue
            points = sorted(points, key=lambda r: r["throughput"])
            x = [p["throughput"] for p in points]
            line, = ax.plot(x, [p["p50_ms"] for p in points], "o-", label=f"{protocol} {dist} p50")
            ax.plot(x, [p["p99_ms"] for p in points], "x--", color=line.get_color(), label=f"{protocol} {dist} p99")
            for p in points:
                ax.annotate(load_label(p), (p["throughput"], p["p50_ms"]), fontsize=6, alpha=0.7)
        ax.set_title(model)
        ax.set_xlabel("requests/s")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_breakdown(rows: list[dict], path: Path, title: str) -> bool:
    """Stacked per-stage queue and compute time (statistics API) for each pipeline point."""
    points = [r for r in rows if r["model"] in PIPELINES and r.get("stages") and not r.get("error")]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(points) + 2), 4.5))
    stage_names = sorted({m for r in points for m in r["stages"] if m != r["model"]})
    colours = plt.get_cmap("tab10")
    labels = [f"{r['model']}\n{r['protocol']} {load_label(r)}" for r in points]
    bottom = [0.0] * len(points)
    for n, stage in enumerate(stage_names):
        for part, hatch in (("queue_ms", "//"), ("compute_ms", "")):
            heights = [r["stages"].get(stage, {}).get(part, 0.0) for r in points]
            ax.bar(range(len(points)), heights, bottom=bottom, color=colours(n), hatch=hatch, edgecolor="white",
                   label=f"{stage} {part[:-3]}")
            bottom = [b + h for b, h in zip(bottom, heights)]
    ax.plot(range(len(points)), [r.get("p50_ms", float("nan")) for r in points], "k_", markersize=18,
            label="client p50")
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels(labels, fontsize=6)
    ax.set_ylabel("ms per request (mean)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- main

def parse_pairs(items: list[str], cast) -> dict:
    pairs = {}
    for item in items:
        model, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"expected MODEL=VALUE, got {item!r}")
        pairs[model] = cast(value)
    return pairs


def sweep(args, host: str, http_port: int, grpc_port: int) -> list[dict]:
    binary, env = find_perf_analyzer(), perf_analyzer_env()
    questions = load_questions(args.questions, args.count)
    rows: list[dict] = []
    print(format_table([]), flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for protocol in args.protocols:
            url = f"{host}:{grpc_port if protocol == 'grpc' else http_port}"
            for model in args.models:
                names, decoupled = model_inputs(url, protocol, model)
                if decoupled and protocol == "http":
                    print(f"{model} is decoupled: skipped over HTTP (one response per request)", file=sys.stderr)
                    continue
                need = {n for n in names if n in ("EMBEDDING", "passages")}
                values = server_values(url, protocol, questions, args.top_k, need) if need else {}
                data_path = tmp / f"{model}_{protocol}.json"
                atomic_write_text(data_path, json.dumps(input_data(names, questions, args.top_k, args.max_tokens,
                                                                   values), ensure_ascii=False))
                points = [(c, None, "closed") for c in args.concurrency]
                points += [(None, r, d) for d in args.distribution for r in args.request_rate]
                for concurrency, rate, distribution in points:
                    if distribution == "bursty":
                        if "max_tokens" not in names or set(names) - {"question", "top_k", "max_tokens", "fusion", "temperature", "top_p"}:
                            continue  # loadgen asks the pipeline's questions for answers only
                        row = run_bursty(model, url, protocol, questions, rate, args)
                    else:
                        row = run_point(binary, env, model, url, protocol, data_path, tmp, concurrency, rate,
                                        distribution, args, decoupled)
                    rows.append(row)
                    print(format_table([row]).splitlines()[-1] + ("  (perf_analyzer failed)" if row["error"] else ""),
                          flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rag_ensemble"])
    parser.add_argument("--protocols", nargs="+", default=["grpc"], choices=["grpc", "http"])
    parser.add_argument("--concurrency", type=int, nargs="*", default=None,
                        help="closed-loop levels (default 1 2 4 8 16 32 unless --request-rate is given)")
    parser.add_argument("--request-rate", type=float, nargs="*", default=[], help="requests/s levels")
    parser.add_argument("--distribution", nargs="+", default=["constant"], choices=["constant", "poisson", "bursty"])
    parser.add_argument("--burst", type=int, default=8, help="requests per burst (bursty arrivals)")
    parser.add_argument("--url", default="127.0.0.1", help="host of a running server (loopback by default)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--start-server", action="store_true",
                        help="start a server on free loopback ports for the sweep, and stop it after")
    parser.add_argument("--embedder", help="model spec for the started server (tritonrag serve --embedder)")
    parser.add_argument("--generator", help="model spec for the started server (tritonrag serve --generator)")
    parser.add_argument("--corpus", action="append", help="corpus for the started server (default pydoc)")
    parser.add_argument("--max-queue", action="append", default=[], metavar="MODEL=N",
                        help="queue limits of the started server (default generator=512: a deep sweep "
                             "must not hit the CPU default of 8)")
    parser.add_argument("--questions", default="auto", choices=["auto", "squad", "synthetic"])
    parser.add_argument("--count", type=int, default=64, help="distinct questions in the input data")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--request-count", type=int, default=0,
                        help="requests per window (default max(16, 2 x concurrency) or 10 s of arrivals)")
    parser.add_argument("--max-trials", type=int, default=3)
    parser.add_argument("--max-threads", type=int, default=64, help="perf_analyzer's threads in rate mode (at least)")
    parser.add_argument("--rate-latency-s", type=float, default=2.0,
                        help="latency to provision threads for in rate mode: threads >= rate x this")
    parser.add_argument("--async", dest="rate_async", action="store_true",
                        help="rate mode: asynchronous calls (perf_analyzer --async), so that no send waits for "
                             "a thread whose last request is still in flight")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per point")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="extra words for the result file names")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = [] if args.request_rate else [1, 2, 4, 8, 16, 32]
    if not args.concurrency and not args.request_rate:
        parser.error("give --concurrency and/or --request-rate levels")

    server_info: dict = {"url": args.url}
    if args.start_server:
        from tritonrag.server.launcher import ServerSettings, TritonServer

        http, grpc, metrics = free_ports(3)
        settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics,
                                  max_queue={"generator": 512, **parse_pairs(args.max_queue, int)})
        for name in ("embedder", "generator", "corpus"):
            if getattr(args, name):
                setattr(settings, name, getattr(args, name))
        server_info = {"started": True, "embedder": settings.embedder, "generator": settings.generator,
                       "corpus": settings.corpus, "max_queue": settings.max_queue}
        with TritonServer(settings) as server:
            rows = sweep(args, "127.0.0.1", http, grpc)
            server_info["log_tail"] = server.log_tail(5)
    else:
        rows = sweep(args, args.url, args.http_port, args.grpc_port)

    print("\n" + format_table(rows))
    device = device_name()
    stem = "_".join(filter(None, [time.strftime("%Y-%m-%d"), slug(device), "sweep", slug(args.tag)]))
    command = "python perf/sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device, "command": command,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "server": server_info, "load_average": os.getloadavg(), "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / f"{stem}.json", json.dumps(meta, indent=1) + "\n")
    fields = ["model", "protocol", "distribution", "concurrency", "request_rate", "throughput", "p50_ms", "p90_ms",
              "p99_ms", "success_rate", "server_queue_ms", "server_compute_ms", "error", "wall_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields + ["stages"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        flat = dict(row, stages=" ".join(f"{m}:q={s['queue_ms']:.1f}/c={s['compute_ms']:.1f}/b={s['mean_batch'] or 0:.1f}"
                                         for m, s in row.get("stages", {}).items()))
        writer.writerow(flat)
    atomic_write_text(args.results / f"{stem}.csv", buffer.getvalue())
    print(f"wrote {args.results / stem}.{{csv,json}}")
    if not args.no_plots:
        title = f"{device} — {meta['date']} — top_k {args.top_k}, {args.max_tokens} new tokens"
        plot_curve(rows, args.results / f"{stem}_curve.png", title)
        if plot_breakdown(rows, args.results / f"{stem}_breakdown.png", title):
            print(f"wrote {stem}_curve.png and {stem}_breakdown.png")
    return 0 if rows and not all(r["error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
