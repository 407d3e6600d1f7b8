"""Decode-engine benchmark: step time against the memory roofline, and serving rates.

In one process, on one device:
  1. peak memory bandwidth, from a device-to-device copy;
  2. decode ms/step at each batch size (CUDA-graph replay, cache filled to
     prompt + output/2 positions) next to the roofline: (weight bytes + KV bytes
     read) / peak bandwidth; for each engine variant (`--variants`);
  3. closed-loop serving through the continuous batcher at each concurrency
     (every client sends its next request when the last one ends; prompts of
     random ids, outputs forced to their length): requests/s, output tokens/s,
     TTFT and time per output token (p50/p99);
  4. with `--rates`: open-loop Poisson arrivals at each rate (prompts of +-10 % the
     length, as a served workload's), for each `--prefill-wait-ms`: achieved requests/s,
     TTFT and latency (p50/p99), prefill calls;
  5. transformers' `model.generate` (same weights, eager, dynamic cache) at the
     baseline batch sizes.
This measures the engine in-process (no Triton, no tokenizer): the generator's
ceiling. Writes `perf/results/<date>_<device>_generation_<tag>.{json,png}`.

  python perf/generation_bench.py                                   # H100 shape (dummy Qwen2.5-1.5B, bf16)
  python perf/generation_bench.py --cpu-quick                       # builtin SmolLM2 on the CPU, ~1 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"


def device_tag(device) -> str:
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        match = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name)
        return match.group(1) if match else re.sub(r"\W+", "-", name)
    try:
        name = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        name = platform.processor() or "cpu"
    import os

    return re.sub(r"\W+", "-", name).strip("-") + f"-x{os.cpu_count()}-cores"


def percentile(values, q):
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def peak_bandwidth(device, gib: float = 2.0) -> float | None:
    """Bytes/s of a device copy (read + write counted); None on the CPU."""
    import torch

    if device.type != "cuda":
        return None
    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    reps = 20
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / reps
    del src, dst
    return 2 * n / seconds


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(engine, batches, prompt: int, output: int, steps: int, device) -> list[dict]:
    """ms per decode step at each batch size, cache rows filled to prompt + output/2."""
    import torch

    rows = []
    kv_len = prompt + output // 2
    for batch in batches:
        tokens = torch.randint(0, 1000, (batch,)).tolist()
        positions = [kv_len] * batch
        for _ in range(3):
            engine.decode(tokens, positions)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            _, greedy = engine.decode(tokens, positions)
            greedy.tolist()          # the scheduler reads the tokens back every step
        sync(device)
        ms = (time.perf_counter() - start) / steps * 1000
        rows.append({"batch": batch, "ms_per_step": round(ms, 3),
                     "bytes_per_step": engine.step_bytes(batch, batch * (kv_len + 1))})
    return rows


def _timing(records: list, lock, on_finished):
    """A sequence's token callback that stamps its first token and, when it ends, appends
    (submitted, first token, end, tokens) to `records` and calls `on_finished()`, under `lock`."""
    def on_token(seq, token, finished):
        now = time.perf_counter()
        if seq.t_first is None:
            seq.t_first = now
        if finished:
            with lock:
                records.append((seq.t_submit, seq.t_first, now, len(seq.tokens)))
                on_finished()
    return on_token


def serve(batcher, concurrency: int, requests: int, prompt: int, output: int, vocab: int, seed: int) -> dict:
    """Closed loop: `concurrency` clients, `requests` in all; per-request timings."""
    import random

    from tritonrag.generation.engine import Sequence

    rng = random.Random(seed)
    # drawn before the clock starts: a client drawing 256 random ids inside the engine thread's
    # callback took ~1.7 ms per 32 prompts of the engine's time, which a server never spends
    prompts = [[rng.randrange(vocab) for _ in range(prompt)] for _ in range(requests)]
    done = threading.Event()
    lock = threading.Lock()
    records, sent = [], [0]

    def launch():
        seq = Sequence(prompts[sent[0] - 1], output, on_token=on_token)
        seq.t_submit, seq.t_first = time.perf_counter(), None
        batcher.submit(seq)

    def finished():   # the next client request, or the end
        if sent[0] < requests:
            sent[0] += 1
            launch()
        elif len(records) == requests:
            done.set()

    on_token = _timing(records, lock, finished)

    start = time.perf_counter()
    with lock:
        for _ in range(min(concurrency, requests)):
            sent[0] += 1
            launch()
    done.wait()
    elapsed = time.perf_counter() - start
    steps_before = batcher.steps
    ttft = [(f - s) * 1000 for s, f, e, n in records]
    tpot = [(e - f) * 1000 / max(n - 1, 1) for s, f, e, n in records]
    latency = [(e - s) * 1000 for s, f, e, n in records]
    tokens = sum(n for *_, n in records)
    return {"concurrency": concurrency, "requests": len(records), "seconds": round(elapsed, 3),
            "requests_per_s": round(len(records) / elapsed, 2), "output_tokens_per_s": round(tokens / elapsed, 1),
            "ttft_ms_p50": round(percentile(ttft, 50), 2), "ttft_ms_p99": round(percentile(ttft, 99), 2),
            "tpot_ms_p50": round(percentile(tpot, 50), 3), "tpot_ms_p99": round(percentile(tpot, 99), 3),
            "latency_ms_p50": round(percentile(latency, 50), 1), "latency_ms_p99": round(percentile(latency, 99), 1),
            "decode_steps_total": steps_before}


def serve_open(batcher, rate: float, requests: int, prompt: int, output: int, vocab: int, seed: int) -> dict:
    """Open loop: `requests` submitted at Poisson arrivals of `rate` per second (prompt lengths
    within +-10 % of `prompt`), whatever the engine's progress; per-request timings."""
    import random

    from tritonrag.generation.engine import Sequence

    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(int(prompt * 0.9), int(prompt * 1.1)))]
               for _ in range(requests)]
    gaps = [rng.expovariate(rate) for _ in range(requests)]
    records, lock, done = [], threading.Lock(), threading.Event()
    on_token = _timing(records, lock, lambda: len(records) == requests and done.set())

    steps_before, prefills_before = batcher.steps, batcher.prefills
    began = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    start = due = time.perf_counter()
    for p, gap in zip(prompts, gaps):
        due += gap
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        seq = Sequence(p, output, on_token=on_token)
        seq.t_submit, seq.t_first = time.perf_counter(), None
        batcher.submit(seq)
    sent_s = time.perf_counter() - start
    done.wait()
    elapsed = time.perf_counter() - start
    ttft = [(f - s) * 1000 for s, f, e, n in records]
    latency = [(e - s) * 1000 for s, f, e, n in records]
    # the rate answers left while arrivals ran, after the first 2 s (the batch filling up): the
    # steady state's throughput, which `requests_per_s` understates by the drain after the last send
    window = (start + 2.0, start + sent_s)
    steady = sum(window[0] <= e < window[1] for s, f, e, n in records) / max(sent_s - 2.0, 1e-9)
    return {"rate_asked": rate, "requests": len(records), "sent_in_s": round(sent_s, 3), "seconds": round(elapsed, 3),
            "offered_per_s": round(len(records) / sent_s, 2), "answered_per_s_while_sending": round(steady, 2),
            "requests_per_s": round(len(records) / elapsed, 2),
            "ttft_ms_p50": round(percentile(ttft, 50), 2), "ttft_ms_p99": round(percentile(ttft, 99), 2),
            "latency_ms_p50": round(percentile(latency, 50), 1), "latency_ms_p99": round(percentile(latency, 99), 1),
            "decode_steps": batcher.steps - steps_before, "prefill_calls": batcher.prefills - prefills_before,
            "began_utc": began, "ended_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")}


def prefill_novel(engine, prompt: int, vocab: int, device, calls: int = 12, seed: int = 7) -> dict:
    """ms per prefill call whose shape (prompts, width) the engine has not run before, as served
    prefills are: 1-16 prompts of +-10 % `prompt` tokens, each call timed alone."""
    import random

    rng = random.Random(seed)
    shapes, times = set(), []
    while len(shapes) < calls:
        shapes.add((rng.randint(1, 16), rng.randint(int(prompt * 0.9), int(prompt * 1.1))))
    for n, width in sorted(shapes):
        prompts = [[rng.randrange(vocab) for _ in range(width)] for _ in range(n)]
        sync(device)
        start = time.perf_counter()
        engine.prefill(list(range(n)), prompts)
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return {"calls": calls, "ms_p50": round(percentile(times, 50), 2), "ms_mean": round(sum(times) / len(times), 2),
            "ms_max": round(max(times), 2)}


def prefill_times(engine, prompt: int, counts, vocab: int, device) -> list[dict]:
    """ms per prefill call of `n` prompts of `prompt` tokens, for each n (inputs to the end)."""
    import random

    rng = random.Random(5)
    rows = []
    for n in counts:
        prompts = [[rng.randrange(vocab) for _ in range(prompt)] for _ in range(n)]
        engine.prefill(list(range(n)), prompts)
        sync(device)
        start = time.perf_counter()
        for _ in range(3):
            engine.prefill(list(range(n)), prompts)
        sync(device)
        rows.append({"prompts": n, "tokens": n * prompt, "ms": round((time.perf_counter() - start) / 3 * 1000, 2)})
    return rows


def hf_generate(model, batch: int, prompt: int, output: int, device) -> dict:
    import torch

    ids = torch.randint(0, 1000, (batch, prompt), device=device)
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)   # warm-up
        sync(device)
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        sync(device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=output, min_new_tokens=output, **kwargs)
        sync(device)
        total = time.perf_counter() - start
    assert out.shape[1] == prompt + output
    return {"batch": batch, "seconds": round(total, 3), "requests_per_s": round(batch / total, 2),
            "output_tokens_per_s": round(batch * output / total, 1),
            "ms_per_step": round((total - prefill) / (output - 1) * 1000, 3), "ttft_ms": round(prefill * 1000, 2)}


def agreement(model, engine, device, prompt: int) -> dict:
    """The engine's logits against transformers' forward on the same weights (prefill and 4 decode steps)."""
    import torch

    ids = torch.randint(0, 1000, (2, prompt), device=device)
    with torch.inference_mode():
        reference = model(ids).logits[:, -1].float()
        ours = engine.prefill([0, 1], ids.tolist()).float()
        diffs, same = [], []
        tokens = reference.argmax(-1)
        seq = ids
        for step in range(4):
            diffs.append(float((ours - reference).abs().max() / reference.abs().max()))
            same.append(float((ours.argmax(-1) == reference.argmax(-1)).float().mean()))
            seq = torch.cat([seq, tokens[:, None]], dim=1)
            reference = model(seq).logits[:, -1].float()
            logits, _ = engine.decode(tokens.tolist(), [prompt + step] * 2)
            ours = logits.float()
            tokens = reference.argmax(-1)
    return {"max_rel_logit_diff": round(max(diffs), 5), "argmax_agreement": min(same)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant, rows in result["decode_step"].items():
        left.plot([r["batch"] for r in rows], [r["ms_per_step"] for r in rows], "o-", label=f"engine ({variant})")
        if rows and rows[0].get("roofline_ms") is not None:
            roof = rows
    if result.get("peak_bandwidth_GBps"):
        left.plot([r["batch"] for r in roof], [r["roofline_ms"] for r in roof], "k--", label="memory roofline")
    if result["hf_generate"]:
        left.plot([r["batch"] for r in result["hf_generate"]], [r["ms_per_step"] for r in result["hf_generate"]],
                  "s:", label="HF generate (eager, dynamic cache)")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("batch")
    left.set_ylabel("ms per decode step")
    left.legend()
    left.set_title("decode step")
    for key in [k for k in result if k.startswith("serving") and isinstance(result[k], list)]:
        serving = result[key]
        variant = key.partition("_")[2] or result.get("variants", ["sdpa"])[0]
        right.plot([r["concurrency"] for r in serving], [r["requests_per_s"] for r in serving], "o-",
                   label=f"engine ({variant}), continuous batching")
    if result["hf_generate"]:
        right.plot([r["batch"] for r in result["hf_generate"]], [r["requests_per_s"] for r in result["hf_generate"]],
                   "s:", label="HF generate (static batch)")
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrency")
    right.set_ylabel("requests/s")
    right.legend()
    right.set_title(f"prompt {result['prompt']} / output {result['output']}")
    fig.suptitle(f"{result['model']} on {result['device']} ({result['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dummy:qwen2.5-1.5b-instruct")
    parser.add_argument("--device", default=None, help="cuda if available, else cpu")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--output", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="decode steps timed per batch size")
    parser.add_argument("--variants", nargs="+", default=["auto", "sdpa"],
                        help="decode-step variants: attention auto|triton|sdpa (auto: triton on CUDA), "
                             "+compile for torch.compile before capture, "
                             "+skinny / +auto for the decode step's GEMMs (Triton; the faster per bucket; default cuBLAS)")
    parser.add_argument("--hf-batches", type=int, nargs="*", default=[32, 128])
    parser.add_argument("--rates", type=float, nargs="*", default=[], help="open-loop Poisson arrival rates (req/s)")
    parser.add_argument("--open-requests", type=int, default=2000, help="requests per open-loop rate")
    parser.add_argument("--prefill-wait-ms", type=float, nargs="+", default=[0.0],
                        help="the batcher's prefill_wait_ms for each open-loop run")
    parser.add_argument("--prefill-graphs", type=int, default=4,
                        help="prefills of up to this many prompts replay a captured graph (0: all eager)")
    parser.add_argument("--ab-prefill-graphs", action="store_true",
                        help="also run each open-loop rate with eager prefills (no prefill graphs)")
    parser.add_argument("--ab-prefill-default", action="store_true",
                        help="also time prefills and the first open-loop run with torch's default attention backends")
    parser.add_argument("--slots", type=int, default=0,
                        help="KV-cache slots (0: the largest concurrency or HF batch; open loop: at least 256)")
    parser.add_argument("--cpu-quick", action="store_true", help="builtin SmolLM2 on the CPU, small sizes")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--deadline-s", type=float, default=240, help="time budget for the later variants")
    parser.add_argument("--plot", type=Path, help="only draw the PNG of a results JSON written earlier")
    args = parser.parse_args(argv)
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png"))
        return {}
    if args.cpu_quick:
        args.model, args.device, args.prompt, args.output = "builtin:SmolLM2-135M-Instruct", "cpu", 64, 8
        args.concurrency, args.requests_per_client, args.steps = [1, 4], 2, 5
        args.variants, args.hf_batches = ["sdpa"], [4]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from tritonrag.generation.engine import ContinuousBatcher, DecodeEngine
    from tritonrag.models import sources as model_sources

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    model = model_sources.load_model(args.model, device, dtype, causal=True)
    load_s = time.perf_counter() - start
    bandwidth = peak_bandwidth(device)
    slots = args.slots or max(args.concurrency + args.hf_batches + ([256] if args.rates else []))
    # open-loop prompts run to +10 % of --prompt
    max_len = (int(args.prompt * 1.1) if args.rates else args.prompt) + args.output
    batches = sorted(set(args.concurrency))
    result = {"command": " ".join([sys.executable] + sys.argv), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device_tag(device),
              "torch": torch.__version__, "model": args.model, "dtype": str(dtype).replace("torch.", ""),
              "prompt": args.prompt, "output": args.output, "model_build_s": round(load_s, 2),
              "peak_bandwidth_GBps": round(bandwidth / 1e9, 1) if bandwidth else None,
              "variants": args.variants, "decode_step": {}, "graph_capture_s": {}, "serving": [],
              "hf_generate": []}
    vocab = min(model.config.vocab_size, 32000)
    t0 = time.perf_counter()
    # the first variant is served and compared with transformers; later ones (torch.compile:
    # slow to build) only if the run is still inside its --deadline-s
    for n, variant in enumerate(args.variants):
        if n and time.perf_counter() - t0 > args.deadline_s / 2:
            result.setdefault("errors", {})[variant] = "skipped: past half the deadline"
            continue
        engine = measure_variant(result, args, model, variant, slots, max_len, batches, bandwidth, device)
        if engine is None:
            continue
        batcher = None
        if n == 0 or time.perf_counter() - t0 < args.deadline_s * 0.8:
            key = "serving" if n == 0 else f"serving_{variant}"
            for concurrency in args.concurrency:
                batcher = ContinuousBatcher(engine, max_batch=concurrency)
                batcher.start()
                serve(batcher, concurrency, concurrency, args.prompt, args.output, vocab, seed=1)   # warm-up
                row = serve(batcher, concurrency, concurrency * args.requests_per_client, args.prompt,
                            args.output, vocab, seed=2)
                batcher.stop()
                result.setdefault(key, []).append(row)
                save(result, args, device, partial=True)
                print(variant, json.dumps(row), flush=True)
        if n == 0:
            def open_loop(engine, rate: float, wait: float, warm: bool = False, **labels) -> None:
                """One open-loop run on a fresh batcher, recorded with how its prefills ran."""
                batcher = ContinuousBatcher(engine, prefill_wait_ms=wait)
                batcher.start()
                if warm:
                    serve_open(batcher, rate, min(200, args.open_requests), args.prompt, args.output, vocab, seed=3)
                row = serve_open(batcher, rate, args.open_requests, args.prompt, args.output, vocab, seed=4)
                batcher.stop()
                graphs = bool(engine._prefill_graphs and engine.prefill_graph_prompts)
                row.update(prefill_wait_ms=wait, prefill="graphs" if graphs else "eager", **labels)
                result.setdefault("open_loop", []).append(row)
                save(result, args, device, partial=True)
                print(variant, "open", json.dumps(row), flush=True)

            for wait in args.prefill_wait_ms:
                for rate in args.rates:
                    open_loop(engine, rate, wait, warm=True)
            if args.ab_prefill_graphs and args.rates and engine._prefill_graphs:
                chosen, engine.prefill_graph_prompts = engine.prefill_graph_prompts, 0
                for rate in args.rates:
                    open_loop(engine, rate, args.prefill_wait_ms[0])
                engine.prefill_graph_prompts = chosen
            if args.ab_prefill_default and args.rates and engine.prefill_backends:
                chosen, engine.prefill_backends = engine.prefill_backends, None
                graphs, engine.prefill_graph_prompts = engine.prefill_graph_prompts, 0   # graphs hold their backend
                open_loop(engine, args.rates[0], args.prefill_wait_ms[0], prefill_attention="torch default")
                engine.prefill_backends, engine.prefill_graph_prompts = chosen, graphs
        del engine, batcher
        if n == 0:
            torch.cuda.empty_cache() if device.type == "cuda" else None
            for batch in args.hf_batches:
                row = hf_generate(model, batch, args.prompt, args.output, device)
                result["hf_generate"].append(row)
                save(result, args, device, partial=True)
                print("hf", json.dumps(row), flush=True)
    save(result, args, device, partial=False)
    return result


def measure_variant(result, args, model, variant, slots, max_len, batches, bandwidth, device):
    """Build an engine variant, check it against transformers, time its decode step."""
    from tritonrag.generation.engine import DecodeEngine

    start = time.perf_counter()
    try:
        gemm = "triton" if "+skinny" in variant else "auto" if "+auto" in variant else "cublas"
        engine = DecodeEngine.from_hf(model, slots=slots, max_len=max_len, attention=variant.split("+")[0],
                                      compile="+compile" in variant, gemm=gemm,
                                      prefill_graph_prompts=args.prefill_graphs)
    except Exception as exc:  # noqa: BLE001 — record it, measure the other variants
        result.setdefault("errors", {})[variant] = f"{type(exc).__name__}: {exc}"[:2000]
        print(variant, "failed:", result["errors"][variant], flush=True)
        return None
    result.setdefault("engine_build_s", {})[variant] = round(time.perf_counter() - start, 2)
    result.setdefault("attention", {})[variant] = engine.attention
    result["graph_capture_s"][variant] = round(engine.warmup_s, 2)
    result.setdefault("gemm", {})[variant] = {"choice": engine.gemm, "auto_timings": engine.gemm_timings}
    result.setdefault("agreement_with_hf", {})[variant] = agreement(model, engine, device, min(64, max_len - 5))
    print(variant, result["agreement_with_hf"][variant], "capture s", engine.warmup_s, flush=True)
    rows = step_times(engine, batches, args.prompt, args.output, args.steps, device)
    for row in rows:
        row["roofline_ms"] = round(row["bytes_per_step"] / bandwidth * 1000, 3) if bandwidth else None
    result["decode_step"][variant] = rows
    if args.rates:
        vocab = min(model.config.vocab_size, 32000)
        result.setdefault("prefill_ms", {})[variant] = prefill_times(engine, args.prompt, (1, 2, 4, 16), vocab, device)
        result.setdefault("prefill_capture_s", {})[variant] = round(engine.prefill_capture_s, 2)
        if engine.prefill_graph_prompts and engine._prefill_graphs:    # the same calls eagerly
            chosen, engine.prefill_graph_prompts = engine.prefill_graph_prompts, 0
            result.setdefault("prefill_ms_eager", {})[variant] = prefill_times(engine, args.prompt, (1, 2, 4), vocab,
                                                                               device)
            engine.prefill_graph_prompts = chosen
        print(variant, "prefill", json.dumps(result["prefill_ms"][variant]),
              json.dumps(result.get("prefill_ms_eager", {}).get(variant)), flush=True)
        novel = {"engine": prefill_novel(engine, args.prompt, vocab, device, seed=7)}
        if args.ab_prefill_default and engine.prefill_backends:
            chosen, engine.prefill_backends = engine.prefill_backends, None
            novel["torch default"] = prefill_novel(engine, args.prompt, vocab, device, seed=8)
            engine.prefill_backends = chosen
        result.setdefault("prefill_novel_shapes", {})[variant] = novel
        print(variant, "prefill novel", json.dumps(novel), flush=True)
    save(result, args, device, partial=True)
    print(variant, json.dumps(rows), flush=True)
    return engine


def save(result: dict, args, device, partial: bool) -> None:
    """Write the JSON (after each phase, so a cut-off run keeps what it measured) and, at the end, the plot."""
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}_{device_tag(device)}_generation" + (f"_{args.tag}" if args.tag else "")
    result["complete"] = not partial
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    if not partial:
        try:
            plot(result, args.out / f"{stem}.png")
        except ImportError:  # a GPU host without matplotlib: `--plot JSON` draws it later
            print("matplotlib missing: no plot")
        print(f"wrote {args.out / stem}.json/.png")


if __name__ == "__main__":
    main()
