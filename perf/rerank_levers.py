"""Second-stage levers for R@1, in process, on the TUNING half of the SQuAD questions only.

The first stage is the served default: the retriever's hybrid (config.pbtxt defaults, which are
`RetrieverSettings()`), its top 10. Levers rescore its first `--candidates` and are fused with
the hybrid's own score (z-scores within the candidates, `weight` x lever + hybrid):

- maxsim: max over a passage's sentences of cos(question, sentence) with the served MiniLM
  (sentences are embedded once, at index time; per question it is a few dot products);
- ql: query likelihood under the served SmolLM2, mean log P(question | passage prompt), all
  candidates of a question in one batched bfloat16 forward pass (UPR's score).

Fusion weights are chosen on a seeded subsample of the tuning half (--sample), then the best is
confirmed on the whole tuning half (--confirm). The report half is never read. CPU cost per
question is measured with --threads torch threads. Writes perf/results/<date>_<device>_rerank_levers.json.

    .venv/bin/python perf/rerank_levers.py --sample 600 --ql-sample 150 --threads 1
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from retrieval_quality import SQUAD, embeddings  # noqa: E402
from tritonrag.common.atomic_files import atomic_write_text  # noqa: E402
from tritonrag.index.bm25 import BM25Index  # noqa: E402
from tritonrag.index.corpus import read_squad, squad_questions  # noqa: E402
from tritonrag.retrieval.hybrid import HybridSearch  # noqa: E402
from tritonrag.retrieval.quality import split_halves  # noqa: E402
from tritonrag.retrieval.retriever import RetrieverSettings  # noqa: E402
from tritonrag.retrieval.search.exact import ExactSearch  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, float("inf"))  # inf: the lever alone
QL_INSTRUCTION = "Please write a question based on this passage."
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def zrows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    std = x.std(axis=1, keepdims=True)
    return (x - x.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def recall(order: np.ndarray, gold: np.ndarray) -> dict:
    return {f"R@{k}": float(np.mean([g in row[:k] for row, g in zip(order, gold)])) for k in (1, 5)}


def fuse(top: np.ndarray, first: np.ndarray, lever: np.ndarray, weight: float) -> np.ndarray:
    """Reorder each row's first n candidates (n = lever's width) by hybrid z + weight x lever z."""
    n = lever.shape[1]
    score = zrows(lever) if weight == float("inf") else zrows(first[:, :n]) + weight * zrows(lever)
    order = np.argsort(-score, axis=1, kind="stable")
    return np.concatenate([np.take_along_axis(top[:, :n], order, 1), top[:, n:]], axis=1)


def sweep_weights(top, first, lever, gold) -> list[dict]:
    return [{"weight": w if np.isfinite(w) else "alone", **recall(fuse(top, first, lever, w), gold)}
            for w in WEIGHTS]


def best_of(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["R@1"], r["R@5"]))


class QueryLikelihood:
    """mean log P(question | passage prompt) under a causal LM, one forward pass per question."""

    def __init__(self, spec: str, threads: int):
        import torch
        from transformers import AutoTokenizer

        from tritonrag.models import sources

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = sources.load_model(spec, "cpu", torch.bfloat16, causal=True)
        self.tok = AutoTokenizer.from_pretrained(sources.tokenizer_source(spec, causal=True))

    def scores(self, question: str, passages: list) -> np.ndarray:
        torch = self.torch
        target = self.tok(" " + question.strip(), add_special_tokens=False)["input_ids"]
        rows = [self.tok(f"Passage: {p.title}. {p.text}\n{QL_INSTRUCTION}\nQuestion:",
                         add_special_tokens=False)["input_ids"] + target for p in passages]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):  # right padding: positions of real tokens do not move
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for i, row in enumerate(rows):
            start = len(row) - len(target)
            positions = torch.arange(start - 1, len(row) - 1)
            out.append(logp[i, positions, torch.tensor(target)].mean().item())
        return np.array(out)


def main(argv=None) -> int:
    from sweep import device_name, slug

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--squad", type=Path, default=SQUAD)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "tritonrag" / "quality")
    parser.add_argument("--sample", type=int, default=600, help="tuning-half questions for maxsim weights")
    parser.add_argument("--ql-sample", type=int, default=150, help="tuning-half questions scored by the LM")
    parser.add_argument("--candidates", type=int, nargs="+", default=[3, 5], help="how many of the top 10 to rescore")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    started = time.time()
    settings = RetrieverSettings()

    passages = read_squad(args.squad)
    questions = squad_questions(args.squad)
    ids = {p.id: i for i, p in enumerate(passages)}
    tune, _ = split_halves(len(questions))   # the report half is never touched here
    tq = [questions[i] for i in tune]
    gold = np.array([ids[q.gold_id] for q in tq])
    texts = [q.text for q in tq]
    pvec = embeddings([p.embedding_text() for p in passages], "passages", args.cache)
    qvec = embeddings([q.text for q in questions], "queries", args.cache)[tune]

    t0 = time.perf_counter()
    lexical = BM25Index.build([p.embedding_text() for p in passages], settings.tokenizer)
    hybrid = HybridSearch(ExactSearch(pvec, "ip"), lexical)
    parts = [hybrid.search(qvec[i:i + 32], texts[i:i + 32], 10, settings.hybrid) for i in range(0, len(tq), 32)]
    top, first = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    hybrid_s = (time.perf_counter() - t0) / len(tq)
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(len(tq), min(args.sample, len(tq)), replace=False))
    ql_sample = np.sort(rng.choice(sample, min(args.ql_sample, len(sample)), replace=False))
    results = {"hybrid_default": {"tune_all": recall(top, gold), "sample": recall(top[sample], gold[sample]),
                                  "ql_sample": recall(top[ql_sample], gold[ql_sample]),
                                  "cpu_s_per_question": round(hybrid_s, 5)}}
    print("hybrid", results["hybrid_default"], flush=True)

    # maxsim: sentence embeddings (index time), then dot products per question
    owner, sentences = [], []
    for i, p in enumerate(passages):
        for s in SENTENCE_END.split(p.text):
            if s.strip():
                owner.append(i)
                sentences.append(f"{p.title}\n{s.strip()}")
    t0 = time.perf_counter()
    svec = embeddings(sentences, "sentences", args.cache)
    index_s = time.perf_counter() - t0
    owner = np.array(owner)
    t0 = time.perf_counter()
    maxsim = np.full(top.shape, -np.inf)
    sims = qvec @ svec.T
    for r in range(len(tq)):
        for c in range(top.shape[1]):
            maxsim[r, c] = sims[r, owner == top[r, c]].max()
    maxsim_s = (time.perf_counter() - t0) / len(tq)
    results["maxsim"] = {"sentences": len(sentences), "index_embed_s": round(index_s, 1),
                         "cpu_s_per_question": round(maxsim_s, 5)}
    for n in args.candidates + [10]:
        rows = sweep_weights(top[sample], first[sample], maxsim[sample, :n], gold[sample])
        best = best_of(rows)
        confirm = recall(fuse(top, first, maxsim[:, :n], float("inf") if best["weight"] == "alone"
                              else best["weight"]), gold)
        results["maxsim"][f"top{n}"] = {"sample": rows, "best_weight": best["weight"], "tune_all": confirm}
        print(f"maxsim top{n}: best {best} -> whole tuning half {confirm}", flush=True)

    # query likelihood under the generator
    from tritonrag.models.sources import DEFAULT_GENERATOR

    ql = QueryLikelihood(DEFAULT_GENERATOR, args.threads)
    n_max = max(args.candidates)
    scores = np.zeros((len(ql_sample), n_max))
    ql_times = []
    for j, r in enumerate(ql_sample):
        t0 = time.perf_counter()
        scores[j] = ql.scores(tq[r].text, [passages[c] for c in top[r, :n_max]])
        ql_times.append(time.perf_counter() - t0)
        if j % 25 == 0:
            print(f"  ql {j}/{len(ql_sample)} {np.mean(ql_times):.2f} s/question", flush=True)
    results["ql"] = {"questions": len(ql_sample), "threads": args.threads, "dtype": "bfloat16",
                     "cpu_s_per_question_at_top": {str(n_max): round(float(np.mean(ql_times)), 3)}}
    for n in args.candidates:
        rows = sweep_weights(top[ql_sample], first[ql_sample], scores[:, :n], gold[ql_sample])
        results["ql"][f"top{n}"] = {"ql_sample": rows, "best": best_of(rows)}
        # ql and maxsim together, equal weights over the best single weights' grid
        both = [{"ql_weight": wq, "maxsim_weight": wm,
                 **recall(fuse(top[ql_sample], first[ql_sample],
                               wq * zrows(scores[:, :n]) + wm * zrows(maxsim[ql_sample, :n]), 1.0), gold[ql_sample])}
                for wq in (0.5, 1.0, 1.5, 2.0) for wm in (0.0, 0.5, 1.0, 1.5)]
        results["ql"][f"top{n}_with_maxsim"] = {"ql_sample": both, "best": best_of(both)}
        print(f"ql top{n}: best {best_of(rows)}; with maxsim {best_of(both)}", flush=True)
    np.savez(args.cache / "rerank_levers_scores.npz", ql=scores, ql_sample=ql_sample, maxsim=maxsim, top=top)

    device = device_name()
    report = {"command": "python perf/rerank_levers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": device, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "data": args.squad.name, "split": {"seed": 0, "tune": len(tune)}, "sample_seed": args.seed,
              "results": results, "seconds": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d')}_{slug(device)}_rerank_levers.json"
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
