"""Retrieval and answer quality, latency and throughput, all measured through the running server.

One command for issue 20's figures. It starts `tritonserver` on loopback (the project's launcher,
default models on CPU) over the shared SQuAD dev part as corpus, or measures a server already
running (--url), and reports:

- retrieval R@1/5/10 of every fusion the retriever offers (dense, bm25, zscore, rrf: the
  `fusion` input of `retriever`) and of `rag_retrieve` with its defaults, on the report half of
  the answerable questions (`tritonrag.retrieval.quality.split_halves`: settings are tuned on the
  other half, never on this one);
- answers of the pipeline (`rag_ensemble` by default, its default top_k and max_tokens) on a
  seeded random sample of report-half answerable questions: share containing a gold answer,
  token F1 (official SQuAD normalisation), share of empty or bare non-answers, share that
  abstains; and on a seeded sample of the unanswerable questions, how often it abstains;
- latency at concurrency 1 and requests/s at concurrency 32 with perf_analyzer.

Writes perf/results/<date>_<device>_answer_quality[_tag].json (figures, answers, command,
device, date, seeds).

    .venv/bin/python perf/answer_quality.py --answers 300 --unanswerable 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from tritonrag.common.atomic_files import atomic_write_text  # noqa: E402
from tritonrag.index.corpus import squad_questions  # noqa: E402
from tritonrag.retrieval.hybrid import FUSIONS  # noqa: E402
from tritonrag.retrieval.quality import (abstention_scores, answer_scores, recall_at,  # noqa: E402
                                         split_halves)

SQUAD = ROOT.parent / "shared" / "data" / "squad-v2.0-dev-part.json"
RESULTS = ROOT / "perf" / "results"
KS = (1, 5, 10)
IN_FLIGHT = 64        # retrieval requests in flight
ANSWERS_IN_FLIGHT = 8  # generation requests in flight while scoring answers
MAX_TRIALS = 3         # perf_analyzer windows per point (it needs more than one to report)
# The generator's queue admits few waiting requests (overload protection); a closed loop of 32 would
# measure rejections, so the server started here lets them queue, as perf/sweep.py does.
MAX_QUEUE = {"generator": 512}


def _bytes(name: str, text: str):
    import tritonclient.grpc.aio as aiogrpc

    tensor = aiogrpc.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    return tensor


def _int(name: str, value: int):
    import tritonclient.grpc.aio as aiogrpc

    tensor = aiogrpc.InferInput(name, [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return tensor


def ask_all(url: str, model: str, make_inputs, count: int, read, in_flight: int = IN_FLIGHT) -> list:
    """Send `count` requests with at most `in_flight` at once; `read(result)` of each, in order."""
    import tritonclient.grpc.aio as aiogrpc

    async def run():
        limit = asyncio.Semaphore(in_flight)
        async with aiogrpc.InferenceServerClient(url) as client:
            async def one(i):
                async with limit:
                    return read(await client.infer(model, make_inputs(i)))
            return await asyncio.gather(*(one(i) for i in range(count)))
    return asyncio.run(run())


def _sources(result) -> list[str]:
    return [s.decode() for s in result.as_numpy("sources")[0]]


def measure_retrieval(url: str, questions: list, top_k: int = max(KS)) -> dict:
    """R@k per retriever fusion (question embedded by the served embedder) and of rag_retrieve."""
    import tritonclient.grpc.aio as aiogrpc

    texts = [q.text for q in questions]
    gold = [q.gold_id for q in questions]
    vectors = np.stack(ask_all(url, "embedder", lambda i: [_bytes("question", texts[i])], len(texts),
                               lambda r: r.as_numpy("EMBEDDING")[0]))

    def retriever_inputs(fusion):
        def make(i):
            vector = aiogrpc.InferInput("EMBEDDING", [1, vectors.shape[1]], "FP32")
            vector.set_data_from_numpy(vectors[i:i + 1].astype(np.float32))
            return [vector, _int("top_k", top_k), _bytes("question", texts[i]), _bytes("fusion", fusion)]
        return make

    out = {}
    for fusion in FUSIONS:
        started = time.perf_counter()
        ranked = ask_all(url, "retriever", retriever_inputs(fusion), len(texts), _sources)
        out[fusion] = {**{f"R@{k}": recall_at(ranked, gold, k) for k in KS},
                       "seconds": round(time.perf_counter() - started, 2)}
    started = time.perf_counter()
    ranked = ask_all(url, "rag_retrieve", lambda i: [_bytes("question", texts[i]), _int("top_k", top_k)],
                     len(texts), _sources)
    out["rag_retrieve"] = {**{f"R@{k}": recall_at(ranked, gold, k) for k in KS},
                           "seconds": round(time.perf_counter() - started, 2)}
    return out


def ask_pipeline(url: str, model: str, questions: list) -> list[dict]:
    """The pipeline's answer and sources for each question, with its defaults (question only)."""
    def read(result):
        return {"answer": result.as_numpy("answer").reshape(-1)[0].decode(), "sources": _sources(result),
                "passages": [p.decode("utf-8", "replace") for p in result.as_numpy("passages").reshape(-1)],
                "finish_reason": result.as_numpy("finish_reason").reshape(-1)[0].decode()}

    return ask_all(url, model, lambda i: [_bytes("question", questions[i].text)], len(questions), read,
                   ANSWERS_IN_FLIGHT)


def measure_answers(url: str, model: str, answerable: list, unanswerable: list) -> dict:
    started = time.perf_counter()
    replies = ask_pipeline(url, model, answerable + unanswerable)
    seconds = time.perf_counter() - started
    ans, una = replies[:len(answerable)], replies[len(answerable):]
    scores = answer_scores([r["answer"] for r in ans], [q.answers for q in answerable])
    scores["quoted_from_passages"] = sum(quoted(r["answer"], r["passages"]) for r in ans) / max(1, len(ans))
    scores["cut_at_max_tokens"] = sum(r["finish_reason"] == "length" for r in ans) / max(1, len(ans))
    scores["gold_passage_first"] = sum(r["sources"][:1] == [q.gold_id] for r, q in zip(ans, answerable)) / max(
        1, len(ans))
    first = [(r, q) for r, q in zip(ans, answerable) if r["sources"][:1] == [q.gold_id]]
    scores["when_gold_first"] = answer_scores([r["answer"] for r, _ in first], [q.answers for _, q in first])
    return {"model": model, "answerable": scores, "unanswerable": abstention_scores([r["answer"] for r in una]),
            "seconds": round(seconds, 1),
            "examples": [{"question": q.text, "gold": list(q.answers), "answer": r["answer"],
                          "gold_passage_first": r["sources"][:1] == [q.gold_id]} for r, q in zip(ans, answerable)]
            + [{"question": q.text, "gold": [], "answer": r["answer"]} for r, q in zip(una, unanswerable)]}


def quoted(answer: str, passages: list[str]) -> bool:
    """Whether the answer appears word for word in one of the passages (compared in NFKC with
    whitespace runs as one space, as the prompt normalises untrusted text)."""
    def norm(text: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", text).split())

    answer = norm(answer)
    return bool(answer) and any(answer in norm(p) for p in passages)


def measure_speed(url: str, model: str, questions: list[str], requests_c1: int, requests_c32: int) -> dict:
    """perf_analyzer at concurrency 1 (latency) and 32 (requests/s), bounded in requests."""
    from inputs import write_inputs
    from sweep import find_perf_analyzer, parse_perf_csv, perf_analyzer_env, perf_command

    binary, env, out = find_perf_analyzer(), perf_analyzer_env(), {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_inputs(Path(tmp) / "inputs.json", questions)
        for concurrency, count in ((1, requests_c1), (32, requests_c32)):
            csv_path = Path(tmp) / f"c{concurrency}.csv"
            command = perf_command(binary, model, url, "grpc", concurrency, data, csv_path, count, MAX_TRIALS)
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            rows = parse_perf_csv(csv_path.read_text()) if csv_path.exists() else []
            out[f"c{concurrency}"] = {"command": " ".join(command), "requests": count,
                                      **(rows[-1] if rows else {"error": (result.stdout + result.stderr)[-2000:]})}
    return out


def measure(url: str, squad: Path = SQUAD, *, retrieval_questions: int | None = None, answers: int = 100,
            unanswerable: int = 50, seed: int = 0, model: str = "rag_ensemble", speed: bool = True,
            requests_c1: int = 10, requests_c32: int = 64) -> dict:
    """Every figure of the report, through the server at `url` (gRPC host:port)."""
    questions = squad_questions(squad)
    _, report = split_halves(len(questions))
    rng = np.random.default_rng(seed)
    retrieval_part = report if retrieval_questions is None else np.sort(
        rng.choice(report, min(retrieval_questions, len(report)), replace=False))
    answer_part = rng.choice(report, min(answers, len(report)), replace=False)
    impossible = [q for q in squad_questions(squad, answerable_only=False) if not q.answers]
    impossible_part = rng.choice(len(impossible), min(unanswerable, len(impossible)), replace=False)
    figures = {"split": {"seed": 0, "report_half": len(report), "tune_half": len(questions) - len(report)},
               "sample_seed": seed,
               "retrieval": {"questions": len(retrieval_part),
                             **measure_retrieval(url, [questions[i] for i in retrieval_part])},
               "answers": measure_answers(url, model, [questions[i] for i in answer_part],
                                          [impossible[i] for i in impossible_part])}
    if speed:
        figures["speed"] = {"model": model, **measure_speed(url, model, [questions[i].text for i in report[:200]],
                                                           requests_c1, requests_c32)}
    return figures


def main(argv: list[str] | None = None) -> int:
    from sweep import device_name, slug

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--squad", type=Path, default=SQUAD)
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one on loopback)")
    parser.add_argument("--model", default="rag_ensemble", help="pipeline to ask for answers and speed")
    parser.add_argument("--retrieval-questions", type=int, help="seeded subset of the report half (default all)")
    parser.add_argument("--answers", type=int, default=300, help="answerable questions sampled for answers")
    parser.add_argument("--unanswerable", type=int, default=100, help="unanswerable questions sampled")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question samples")
    parser.add_argument("--no-speed", action="store_true", help="skip perf_analyzer")
    parser.add_argument("--requests-c1", type=int, default=10, help="requests per perf_analyzer window")
    parser.add_argument("--requests-c32", type=int, default=64, help="requests per perf_analyzer window")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.time()
    kwargs = dict(retrieval_questions=args.retrieval_questions, answers=args.answers,
                  unanswerable=args.unanswerable, seed=args.seed, model=args.model, speed=not args.no_speed,
                  requests_c1=args.requests_c1, requests_c32=args.requests_c32)
    if args.url:
        figures = measure(args.url, args.squad, **kwargs)
    else:
        from tritonrag.server.launcher import ServerSettings, TritonServer, free_ports

        http, grpc, metrics = free_ports(3)
        settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, corpus=[str(args.squad)],
                                  max_queue=MAX_QUEUE)
        with tempfile.TemporaryDirectory() as run_dir, TritonServer(settings, run_dir=Path(run_dir)) as server:
            figures = measure(server.grpc_url, args.squad, **kwargs)
    device = device_name()
    report = {"command": "python perf/answer_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": device, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "data": args.squad.name, "server_max_queue": None if args.url else MAX_QUEUE, **figures, "seconds": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (f"{time.strftime('%Y-%m-%d')}_{slug(device)}_answer_quality"
                       + (f"_{slug(args.tag)}" if args.tag else "") + ".json")
    atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "answers"}, indent=1))
    print(json.dumps({k: v for k, v in report["answers"].items() if k != "examples"}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
