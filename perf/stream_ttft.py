"""Time to first token of streamed answers, under whatever load the server carries.

perf_analyzer reports a streamed request's whole latency, not when its first piece came. This
sends `generator_stream` requests (stream true, the passages of an index's first rows) at
open-loop Poisson arrivals on one gRPC stream and records, per request, the time to its first
response and to its final one. Run it beside a load (e.g. perf/sweep.py driving rag_ensemble at
200 requests/s) to read TTFT at that rate; the probe's own rate should be small beside it.

    python perf/stream_ttft.py --url 127.0.0.1:8001 --index /tmp/idx --rate 10 --duration 30
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tritonrag.common.atomic_files import atomic_write_text  # noqa: E402


def _inputs(question: str, passages: list[str], max_tokens: int):
    import tritonclient.grpc as grpcclient

    arrays = {"question": np.array([question.encode()], dtype=np.object_),
              "passages": np.array([p.encode() for p in passages], dtype=np.object_),
              "max_tokens": np.array([max_tokens], np.int32), "stream": np.array([True])}
    types = {"question": "BYTES", "passages": "BYTES", "max_tokens": "INT32", "stream": "BOOL"}
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), types[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def measure(url: str, passages: list[str], rate: float, duration_s: float, max_tokens: int, seed: int = 0) -> dict:
    import tritonclient.grpc as grpcclient

    rng = random.Random(seed)
    times, t = [], rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    sent, first, final, errors = {}, {}, {}, []
    lock, done = threading.Lock(), threading.Event()

    def on_response(result, error):
        now = time.perf_counter()
        with lock:
            if error is not None:
                errors.append(str(error))
                return
            response = result.get_response()
            first.setdefault(response.id, now)
            if response.parameters["triton_final_response"].bool_param:
                final[response.id] = now
            if len(final) + len(errors) >= len(times):
                done.set()

    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=on_response)
    start = time.perf_counter()
    for i, at in enumerate(times):
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        rid = str(i)
        sent[rid] = time.perf_counter()
        client.async_stream_infer("generator_stream", _inputs(f"What does passage {i} say about the topic?",
                                                              passages, max_tokens),
                                  request_id=rid, enable_empty_final_response=True)
    done.wait(timeout=duration_s + 120)
    client.stop_stream()
    ttft = sorted((first[r] - sent[r]) * 1000 for r in final)
    whole = sorted((final[r] - sent[r]) * 1000 for r in final)

    def pct(values, q):
        return round(float(np.percentile(values, q)), 1) if values else None

    return {"sent": len(times), "answered": len(final), "errors": len(errors), "error_examples": errors[:3],
            "rate_asked": rate, "ttft_ms_p50": pct(ttft, 50), "ttft_ms_p90": pct(ttft, 90), "ttft_ms_p99": pct(ttft, 99),
            "latency_ms_p50": pct(whole, 50), "latency_ms_p99": pct(whole, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC host:port")
    parser.add_argument("--index", type=Path, required=True, help="index folder: its first rows are the passages")
    parser.add_argument("--passages", type=int, default=3)
    parser.add_argument("--rate", type=float, default=10.0, help="streamed requests/s (Poisson)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--label", default="", help="what load ran beside it (written with the figures)")
    parser.add_argument("--out", type=Path, help="write the figures (JSON) here")
    args = parser.parse_args(argv)
    with open(args.index / "passages.jsonl", encoding="utf-8") as f:
        passages = [json.loads(line)["text"] for _, line in zip(range(args.passages), f)]
    figures = {"command": "python perf/stream_ttft.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "label": args.label,
               **measure(args.url, passages, args.rate, args.duration, args.max_tokens)}
    print(json.dumps(figures))
    if args.out:
        atomic_write_text(args.out, json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
