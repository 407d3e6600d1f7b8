"""Recall@1/5/10 of dense, BM25 and hybrid retrieval on the shared SQuAD questions.

The corpus is the SQuAD file's 646 paragraphs; a question's gold passage is its paragraph.
Questions are split in two seeded random halves (`tritonrag.retrieval.quality.split_halves`): the
BM25 and fusion settings (tokenizer stemming / stop words / bigrams, k1, b, fusion and weight) are
chosen on the first half by R@1 (then R@5) and reported on the held-out half. The chosen
settings are the retriever's defaults in tritonrag/model_repository/retriever/config.pbtxt.

    .venv/bin/python perf/retrieval_quality.py            # ~2 min on 2 cores (embeddings cached)
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from tritonrag.index.bm25 import BM25Index, TokenizerConfig  # noqa: E402
from tritonrag.index.corpus import read_squad, squad_questions  # noqa: E402
from tritonrag.retrieval.hybrid import HybridConfig, HybridSearch  # noqa: E402
from tritonrag.retrieval.quality import recall_at, split_halves  # noqa: E402
from tritonrag.retrieval.search.exact import ExactSearch  # noqa: E402
from tritonrag.retrieval.search.topk import top_k_rows  # noqa: E402

SQUAD = ROOT.parent / "shared" / "data" / "squad-v2.0-dev-part.json"
EMBEDDER = "builtin:all-MiniLM-L6-v2"
KS = (1, 5, 10)


def embeddings(texts: list[str], kind: str, cache: Path) -> np.ndarray:
    """Embed with the builtin MiniLM, cached by content hash (the model is fixed)."""
    digest = hashlib.sha256(("\x00".join(texts) + kind + EMBEDDER).encode()).hexdigest()[:16]
    path = cache / f"squad_{kind}_{digest}.npy"
    if path.exists():
        return np.load(path)
    from tritonrag.models.embedding import Embedder

    embedder = Embedder(EMBEDDER)
    vectors = embedder.embed_queries(texts) if kind == "queries" else embedder.embed_passages(texts)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.rename(path)
    return vectors


def recalls(top: np.ndarray, gold: np.ndarray) -> dict:
    return {f"R@{k}": float(np.mean([g in row[:k] for row, g in zip(top, gold)])) for k in KS}


def zscore_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    std = x.std(axis=1, keepdims=True)
    return (x - x.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def rank_rows(x: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.broadcast_to(np.arange(x.shape[1]), x.shape), -x), axis=1)
    ranks = np.empty_like(order, dtype=np.float64)
    np.put_along_axis(ranks, order, np.arange(1, x.shape[1] + 1, dtype=np.float64)[None].repeat(len(x), 0), axis=1)
    return ranks


def fused(dense: np.ndarray, bm25: np.ndarray, fusion: str, weight: float, c: float = 60.0) -> np.ndarray:
    if fusion == "zscore":
        return weight * zscore_rows(bm25) + (1 - weight) * zscore_rows(dense)
    return weight / (c + rank_rows(bm25)) + (1 - weight) / (c + rank_rows(dense))


def top10(values: np.ndarray) -> np.ndarray:
    return top_k_rows(values.astype(np.float32), 10)[0]


def main(argv=None) -> int:
    from sweep import device_name, slug

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--squad", type=Path, default=SQUAD)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "tritonrag" / "quality")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    started = time.time()

    passages = read_squad(args.squad)
    questions = squad_questions(args.squad)
    ids = {p.id: i for i, p in enumerate(passages)}
    gold = np.array([ids[q.gold_id] for q in questions])
    texts = [q.text for q in questions]
    pvec = embeddings([p.embedding_text() for p in passages], "passages", args.cache)
    qvec = embeddings(texts, "queries", args.cache)
    tune, held = split_halves(len(questions))
    print(f"{len(passages)} passages, {len(questions)} questions: tune {len(tune)}, held out {len(held)}", flush=True)

    dense = ExactSearch(pvec, "ip").rank_values(qvec)
    results: dict = {"dense": {"tune": recalls(top10(dense[tune]), gold[tune]),
                               "held_out": recalls(top10(dense[held]), gold[held])}}
    grid = []
    indexes = {}
    for stem, stop, bigrams in itertools.product((False, True), (False, True), (False, True)):
        tok = TokenizerConfig(stem=stem, stop_words=stop, bigrams=bigrams)
        indexes[tok] = BM25Index.build([p.embedding_text() for p in passages], tok)
        for k1, b in itertools.product((0.3, 0.45, 0.6, 0.9, 1.2), (0.5, 0.75, 0.9, 1.0)):
            bm25 = indexes[tok].score_matrix(texts, k1, b)
            entry = {"tokenizer": tok.tag(), "stem": stem, "stop_words": stop, "bigrams": bigrams, "k1": k1, "b": b,
                     "bm25_tune": recalls(top10(bm25[tune]), gold[tune])}
            for fusion, weight in [("zscore", w) for w in np.arange(0.3, 0.81, 0.05)] + [("rrf", 0.5)]:
                r = recalls(top10(fused(dense[tune], bm25[tune], fusion, weight)), gold[tune])
                grid.append({**entry, "fusion": fusion, "weight": round(float(weight), 2), "hybrid_tune": r})
        print(f"  {tok.tag()}: done ({time.time() - started:.0f} s)", flush=True)

    def key(e):
        return (e["hybrid_tune"]["R@1"], e["hybrid_tune"]["R@5"])

    best = max(grid, key=key)
    best_bm25 = max(grid, key=lambda e: (e["bm25_tune"]["R@1"], e["bm25_tune"]["R@5"]))
    plain = next(e for e in grid if not (e["stem"] or e["stop_words"] or e["bigrams"]) and e["k1"] == 1.2
                 and e["b"] == 0.75)
    even = next(e for e in grid if e is not None and e["tokenizer"] == plain["tokenizer"] and e["k1"] == 1.2
                and e["b"] == 0.75 and e["fusion"] == "zscore" and e["weight"] == 0.5)

    def held_out(entry, fusion=None, weight=None) -> dict:
        tok = TokenizerConfig(stem=entry["stem"], stop_words=entry["stop_words"], bigrams=entry["bigrams"])
        bm25 = indexes[tok].score_matrix([texts[i] for i in held], entry["k1"], entry["b"])
        if fusion is None:
            return recalls(top10(bm25), gold[held])
        return recalls(top10(fused(dense[held], bm25, fusion, weight)), gold[held])

    results["bm25_plain_k1.2_b0.75"] = {"tune": plain["bm25_tune"], "held_out": held_out(plain)}
    results["bm25_tuned"] = {"settings": {k: best_bm25[k] for k in ("tokenizer", "k1", "b")},
                             "tune": best_bm25["bm25_tune"], "held_out": held_out(best_bm25)}
    results["hybrid_plain_zscore_0.5"] = {"tune": even["hybrid_tune"], "held_out": held_out(plain, "zscore", 0.5)}
    results["hybrid_plain_rrf60"] = {"held_out": held_out(plain, "rrf", 0.5)}
    results["hybrid_tuned"] = {"settings": {k: best[k] for k in ("tokenizer", "stem", "stop_words", "bigrams", "k1",
                                                                  "b", "fusion", "weight")},
                               "tune": best["hybrid_tune"], "held_out": held_out(best, best["fusion"], best["weight"])}
    results["hybrid_tuned_rrf60"] = {"held_out": held_out(best, "rrf", 0.5)}

    # The served code path (HybridSearch, per-row fusion) must give the same held-out figures.
    tok = TokenizerConfig(stem=best["stem"], stop_words=best["stop_words"], bigrams=best["bigrams"])
    config = HybridConfig(fusion=best["fusion"], weight=best["weight"], k1=best["k1"], b=best["b"])
    hybrid = HybridSearch(ExactSearch(pvec, "ip"), indexes[tok])
    top = np.concatenate([hybrid.search(qvec[held[i:i + 32]], [texts[j] for j in held[i:i + 32]], 10, config)[0]
                          for i in range(0, len(held), 32)])
    results["hybrid_tuned_via_HybridSearch"] = {"held_out": recalls(top, gold[held])}
    assert results["hybrid_tuned_via_HybridSearch"]["held_out"] == results["hybrid_tuned"]["held_out"], results

    device = device_name()
    report = {"command": "python perf/retrieval_quality.py " + " ".join(argv or sys.argv[1:]),
              "device": device, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "data": str(args.squad.name), "passages": len(passages), "questions": len(questions),
              "split": {"seed": 0, "tune": len(tune), "held_out": len(held)}, "embedder": EMBEDDER,
              "results": results, "grid": grid, "seconds": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d')}_{slug(device)}_retrieval_quality"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    for name, r in results.items():
        print(f"{name:32s} " + "  ".join(f"{part} " + " ".join(f"{k} {v:.3f}" for k, v in r[part].items())
                                         for part in ("tune", "held_out") if part in r)
              + (f"  {r['settings']}" if "settings" in r else ""))
    plot(results, args.out / f"{stem}.png", f"SQuAD 646 paragraphs, held-out half ({len(held)} questions)")
    print(f"wrote {args.out / stem}.json/.png")
    return 0


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if "held_out" in results[n]]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for j, k in enumerate(KS):
        ax.bar(np.arange(len(names)) + j * 0.27, [results[n]["held_out"][f"R@{k}"] for n in names], 0.27,
               label=f"R@{k}")
    ax.axhline(0.84, color="k", ls="--", lw=0.8)
    ax.axhline(0.96, color="gray", ls="--", lw=0.8)
    ax.set_xticks(np.arange(len(names)) + 0.27, names, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
