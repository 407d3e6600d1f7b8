"""Ablations in one command: which settings matter, measured in one run under the same load.

    python perf/ablate.py                                   # CPU default, concurrency 32
    python perf/ablate.py --variants batching-on batching-off baseline --requests 64
    python perf/ablate.py --generator dummy:... --embedder ... --concurrency 64 --requests 512

Variants (each a rendered model repository and a real tritonserver on free loopback
ports, started, loaded, stopped in turn; `bls` reuses the default server):

  batching-on      the repository as shipped (dynamic batching, max_batch_size 32)
  batching-off     max_batch_size 1 on every model, and the decode engine runs one
                   sequence at a time (generator_stream max_running 1)
  delay-0ms/1ms/5ms  max_queue_delay of every stage's dynamic batcher
  instances-2      two instances of each stage
  bls              rag_bls (BLS wiring) instead of rag_ensemble, same server as batching-on
  baseline         perf/baselines/fastapi_rag.py: FastAPI + transformers pipelines, one at a time

The load is the same for all: a closed loop of `--concurrency` clients over HTTP
(perf/loadgen.py), the same questions (shared SQuAD when present), top_k and
max_tokens always sent, `--requests` requests after `--warmup` unmeasured ones, capped
by `--max-seconds` per variant. Ratios (batching on / off, on / baseline, bls /
ensemble) come from this one run. Writes perf/results/<date>_<device>_ablation[_tag]
.{json,csv,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))
sys.path.insert(0, str(ROOT))

import stats  # noqa: E402
from inputs import load_questions  # noqa: E402
from loadgen import closed_loop_with, percentile  # noqa: E402
from sweep import device_name, free_ports, slug  # noqa: E402

from tritonrag.common.atomic_files import atomic_write_text  # noqa: E402
from tritonrag.server.repository import SOURCE_REPOSITORY  # noqa: E402

STAGES = ("embedder", "retriever", "generator")
VARIANTS = ("batching-on", "batching-off", "delay-0ms", "delay-1ms", "delay-5ms", "instances-2", "bls", "baseline")


def batched_models(source: Path = SOURCE_REPOSITORY) -> list[str]:
    """Every model of the repository that batches (max_batch_size > 0): all must drop to 1 together,
    since an ensemble may not batch more than its steps."""
    models = []
    for config in sorted(source.glob("*/config.pbtxt")):
        text = config.read_text(encoding="utf-8")
        if "max_batch_size" in text and "max_batch_size: 0" not in text:
            models.append(config.parent.name)
    return models


def scheduling_for(variant: str, source: Path = SOURCE_REPOSITORY) -> dict[str, dict[str, int]]:
    """The rendered repository's scheduling settings for a Triton variant."""
    if variant in ("batching-on", "bls"):
        return {}
    if variant == "batching-off":
        return {model: {"max_batch_size": 1} for model in batched_models(source)}
    if variant.startswith("delay-") and variant.endswith("ms"):
        delay_us = int(float(variant[len("delay-"):-2]) * 1000)
        return {stage: {"max_queue_delay_us": delay_us} for stage in STAGES}
    if variant.startswith("instances-"):
        return {stage: {"instances": int(variant.split("-")[1])} for stage in STAGES}
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def _with_parameters(settings_kwargs: dict, extra: dict[str, dict[str, str]]) -> dict:
    merged = {model: dict(values) for model, values in settings_kwargs.get("extra_parameters", {}).items()}
    for model, values in extra.items():
        merged.setdefault(model, {}).update(values)
    return {**settings_kwargs, "extra_parameters": merged}


@dataclasses.dataclass
class Load:
    concurrency: int = 32
    requests: int = 64
    warmup: int = 2
    max_seconds: float = 600.0
    top_k: int = 3
    max_tokens: int = 32


def measure(sender, questions: list[str], load: Load) -> dict:
    """Warm up one at a time, then the closed loop; the numbers of the measured part.

    `sender` is (send, close): send(question) answers one question, close() ends the session.
    """
    send, close = sender

    async def run():
        try:
            await closed_loop_with(send, questions[-load.warmup:] or questions, 1, requests=load.warmup)
            started = time.perf_counter()
            outcomes = await closed_loop_with(send, questions, load.concurrency, duration_s=load.max_seconds,
                                              requests=load.requests)
            return outcomes, time.perf_counter() - started
        finally:
            await close()

    outcomes, wall = asyncio.run(run())
    ok = [o.latency_s for o in outcomes if o.kind == "ok"]
    return {"requests": len(outcomes), "ok": len(ok), "failed": len(outcomes) - len(ok), "wall_s": wall,
            "req_per_s": len(ok) / wall if wall else 0.0,
            "p50_s": percentile(ok, 50), "p90_s": percentile(ok, 90), "p99_s": percentile(ok, 99),
            "errors": sorted({o.message for o in outcomes if o.kind != "ok"})[:3]}


def parameters_for(variant: str) -> dict[str, dict[str, str]]:
    """config.pbtxt parameters a variant changes: batching off must reach the decode engine,
    whose continuous batch sits behind the `generator` forwarder's dynamic batcher."""
    if variant == "batching-off":
        return {"generator_stream": {"max_running": "1"}}
    return {}


def run_triton(variants: list[str], settings_kwargs: dict, questions: list[str], load: Load,
               protocol: str = "http") -> dict[str, dict]:
    """The Triton variants, grouped by rendered repository (bls shares batching-on's server)."""
    from tritonrag.server.launcher import ServerSettings, TritonServer

    results: dict[str, dict] = {}
    servers: dict[str, list[str]] = {}
    for variant in variants:
        key = "batching-on" if variant == "bls" else variant
        servers.setdefault(key, []).append(variant)
    for key, members in servers.items():
        http, grpc, metrics = free_ports(3)
        # Queues deep and patient enough that no variant rejects: the comparison is of
        # throughput (batching off keeps 32 requests waiting for ~1.5 s each on a CPU).
        max_queue = {"generator": max(512, 4 * load.concurrency), "rag_bls": max(256, 4 * load.concurrency)}
        patience = {model: load.max_seconds for model in (*STAGES, "rag_bls")}
        settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, supervise=False,
                                  max_queue=max_queue, queue_timeout_s=patience, scheduling=scheduling_for(key),
                                  **_with_parameters(settings_kwargs, parameters_for(key)))
        started = time.perf_counter()
        with TritonServer(settings) as server:
            ready_s = time.perf_counter() - started
            for variant in members:
                model = "rag_bls" if variant == "bls" else "rag_ensemble"
                url = server.http_url if protocol == "http" else server.grpc_url
                before = stats.snapshot(url, protocol)
                result = measure(_triton_send(url, model, load, protocol), questions, load)
                result["stages"] = stats.breakdown(before, stats.snapshot(url, protocol))
                result.update(model=model, protocol=protocol, scheduling=settings.scheduling, server_ready_s=ready_s)
                results[variant] = result
                print(f"{variant:>14}: {_line(result)}", flush=True)
    return results


def _triton_send(url: str, model: str, load: Load, protocol: str = "http"):
    """(send, close) over Triton's HTTP (or gRPC) endpoint; the client opens inside the loop that uses it.

    tritonclient's aio HTTP client is made here rather than through AsyncRagClient: its
    connection timeout (default 60 s) bounds a whole request, shorter than a CPU batch of 32.
    gRPC is for hosts whose tritonclient has no HTTP support (it needs gevent: the GPU host's).
    """
    if protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module

    from tritonrag_client.protocol import ASK_OUTPUTS, build_inputs, parse_answer, requested_outputs

    holder: dict = {}

    async def send(question: str):
        if "client" not in holder:
            holder["client"] = module.InferenceServerClient(url) if protocol == "grpc" else \
                module.InferenceServerClient(url, conn_limit=max(100, 2 * load.concurrency),
                                             conn_timeout=load.max_seconds)
        timeout = {"client_timeout": load.max_seconds} if protocol == "grpc" else {}
        result = await holder["client"].infer(model, build_inputs(module, question, load.top_k, load.max_tokens),
                                              outputs=requested_outputs(module, ASK_OUTPUTS), **timeout)
        parse_answer(result)

    async def close():
        if "client" in holder:
            await holder.pop("client").close()

    return send, close


def _http_send(url: str, load: Load):
    """(send, close) for the baseline's JSON endpoint, over aiohttp like tritonclient's HTTP client."""
    import aiohttp

    holder: dict[str, aiohttp.ClientSession] = {}

    async def send(question: str):
        if "session" not in holder:
            holder["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=load.max_seconds),
                                                      connector=aiohttp.TCPConnector(limit=0))
        async with holder["session"].post(f"http://{url}/ask", json={
                "question": question, "top_k": load.top_k, "max_tokens": load.max_tokens}) as reply:
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {(await reply.text())[:200]}")
            await reply.json()

    async def close():
        if "session" in holder:
            await holder.pop("session").close()

    return send, close


def run_baseline(index: Path, embedder: str, generator: str, questions: list[str], load: Load) -> dict:
    """Start the FastAPI baseline on a free loopback port, measure it, stop it."""
    import torch

    (port,) = free_ports(1)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # where Triton's KIND_AUTO would put them
    command = [sys.executable, str(ROOT / "perf" / "baselines" / "fastapi_rag.py"), "--index", str(index),
               "--embedder", embedder, "--generator", generator, "--port", str(port), "--device", device]
    started = time.perf_counter()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the baseline exited: {log.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the baseline did not start in 600 s")
                time.sleep(0.5)
        result = measure(_http_send(f"127.0.0.1:{port}", load), questions, load)
        result.update(command=" ".join(command), server_ready_s=time.perf_counter() - started)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    print(f"{'baseline':>14}: {_line(result)}", flush=True)
    return result


def _line(r: dict) -> str:
    return (f"{r['req_per_s']:.3f} req/s, p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s, "
            f"{r['ok']}/{r['requests']} ok in {r['wall_s']:.0f} s")


def ratios(results: dict[str, dict]) -> dict[str, float]:
    def ratio(a: str, b: str):
        if a in results and b in results and results[b]["req_per_s"]:
            return results[a]["req_per_s"] / results[b]["req_per_s"]
        return None

    return {k: v for k, v in {
        "batching_on_over_off": ratio("batching-on", "batching-off"),
        "triton_over_baseline": ratio("batching-on", "baseline"),
        "bls_over_ensemble": ratio("bls", "batching-on"),
        "instances_2_over_1": ratio("instances-2", "batching-on"),
    }.items() if v is not None}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    values = [result["variants"][n]["req_per_s"] for n in names]
    p50 = [result["variants"][n]["p50_s"] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = ["tab:gray" if n == "baseline" else "tab:blue" for n in names]
    left.bar(names, values, color=colours)
    for i, v in enumerate(values):
        left.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8)
    left.set_ylabel("answered requests/s")
    left.tick_params(axis="x", rotation=30, labelsize=8)
    right.bar(names, p50, color=colours)
    right.set_ylabel("p50 latency (s)")
    right.tick_params(axis="x", rotation=30, labelsize=8)
    load = result["load"]
    text = ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items())
    fig.suptitle(f"{result['device']} — {result['date']} — concurrency {load['concurrency']}, "
                 f"{load['requests']} requests, top_k {load['top_k']}, {load['max_tokens']} new tokens\n{text}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    for field in dataclasses.fields(Load):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--embedder", help="model spec (tritonrag serve --embedder)")
    parser.add_argument("--generator", help="model spec (tritonrag serve --generator)")
    parser.add_argument("--corpus", action="append")
    parser.add_argument("--questions", default="auto", choices=["auto", "squad", "synthetic"])
    parser.add_argument("--results", type=Path, default=ROOT / "perf" / "results")
    parser.add_argument("--tag", default="")
    parser.add_argument("--protocol", default="http", choices=["http", "grpc"],
                        help="client protocol for the Triton variants (the baseline is HTTP/JSON)")
    args = parser.parse_args(argv)
    load = Load(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Load)})
    questions = load_questions(args.questions, max(200, load.requests + load.warmup))

    from tritonrag.models import sources as model_sources
    from tritonrag.server.launcher import ensure_index

    kwargs = {k: getattr(args, k) for k in ("embedder", "generator", "corpus") if getattr(args, k)}
    embedder = kwargs.get("embedder", model_sources.DEFAULT_EMBEDDER)
    generator = kwargs.get("generator", model_sources.DEFAULT_GENERATOR)
    index = ensure_index(kwargs.get("corpus", ["pydoc"]), embedder)
    kwargs["index"] = index
    load_before = os.getloadavg()
    results = run_triton([v for v in args.variants if v != "baseline"], kwargs, questions, load, args.protocol)
    if "baseline" in args.variants:
        results["baseline"] = run_baseline(index, embedder, generator, questions, load)
    ordered = {v: results[v] for v in args.variants if v in results}
    date = time.strftime("%Y-%m-%d")
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device_name(),
              "command": "python perf/ablate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "load": dataclasses.asdict(load), "embedder": embedder, "generator": generator,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "ratios": ratios(ordered), "variants": ordered}
    stem = "_".join(filter(None, [date, slug(result["device"]), "ablation", slug(args.tag)]))
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "req_per_s", "p50_s", "p90_s", "p99_s", "ok", "requests", "wall_s",
                     "generator_mean_batch"])
    for name, r in ordered.items():
        batch = r.get("stages", {}).get("generator", {}).get("mean_batch")
        writer.writerow([name, f"{r['req_per_s']:.4f}", f"{r['p50_s']:.3f}", f"{r['p90_s']:.3f}",
                         f"{r['p99_s']:.3f}", r["ok"], r["requests"], f"{r['wall_s']:.1f}",
                         "" if batch is None else f"{batch:.2f}"])
    atomic_write_text(args.results / f"{stem}.csv", buffer.getvalue())
    plot(result, args.results / f"{stem}.png")
    print(json.dumps(result["ratios"], indent=1))
    print(f"wrote {args.results / stem}.{{json,csv,png}}")
    return 0 if all(r["ok"] for r in ordered.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
