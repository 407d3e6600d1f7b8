"""Exact vector search speed: tritonrag's GPU search vs torch and CuPy, out-of-core, long vectors.

GPU (``--device cuda``): for each N, metric and batch, the median latency of
`ExactSearch.search` (queries already on the GPU, results back on the host) and the
effective bandwidth (corpus bytes / time) as a fraction of the peak HBM bandwidth measured
in the same run by a device-to-device copy; beside it torch (matmul + torch.topk; cdist for
L1) and CuPy (matmul + argpartition). Out of core: the corpus in pinned host memory through
a small GPU budget, against the host->GPU copy bandwidth of the same run. Long vectors:
`long_distance` in GPU memory (fraction of peak HBM) and streamed from the host (fraction of
host->GPU), with the speedup over NumPy on the host CPU. ``--torch-path N`` checks and times
`TorchSearch` (GPU instances without CuPy).

CPU (``--device cpu``): the same search at small N against NumPy brute force (full argsort).

    python perf/retrieval_bench.py --device cuda --sizes 1000000 10000000 --ooc-rows 10000000 \
        --long 1000000 100000000 1000000000 --out perf/results
    python perf/retrieval_bench.py --device cpu --sizes 10000 50000 --out perf/results
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tritonrag.retrieval.longvec import LONG_METRICS, long_distance  # noqa: E402
from tritonrag.retrieval.search import routing as search_path  # noqa: E402
from tritonrag.retrieval.search.exact import METRICS, ExactSearch  # noqa: E402
from tritonrag.retrieval.search.topk import MAX_INDEX  # noqa: E402


def log(*parts) -> None:
    print(*parts, flush=True)


# -- timing helpers ---------------------------------------------------------------------------
def gpu_time(fn, repeat: int, warmup: int = 1, warm_s: float = 0.1, host_result: bool = True) -> float:
    """Median wall time in ms of fn(). With `host_result`, fn returns host results (so its GPU
    work is done when it returns) and the device sync after each call, for a quiet start of
    the next, is not timed (it added the same few us to every implementation: `host_calls`
    measures it); otherwise the sync is timed too.

    Calls fn for `warm_s` seconds first (at least `warmup` times), so that a measurement
    starts on a busy GPU, not one idle (clocks down) through seconds of NumPy references."""
    import cupy as cp

    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < warm_s:
        fn()
        done += 1
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if not host_result:
            cp.cuda.Device().synchronize()
        times.append((time.perf_counter() - start) * 1e3)
        cp.cuda.Device().synchronize()
    return statistics.median(times)


def cpu_time(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_hbm(cp, nbytes: int = 4 << 30) -> float:
    """Device copy bandwidth in GB/s (read + write bytes / time), best of 10."""
    src = cp.empty(nbytes // 2, cp.float16)
    dst = cp.empty_like(src)
    best = 0.0
    for _ in range(10):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        dst[...] = src
        stop.record()
        stop.synchronize()
        best = max(best, 2 * nbytes / (cp.cuda.get_elapsed_time(start, stop) / 1e3) / 1e9)
    del src, dst
    return best


def host_to_device(cp, nbytes: int = 2 << 30) -> float:
    """Pinned host -> GPU copy bandwidth in GB/s, best of 5."""
    from tritonrag.retrieval.search.cupy_search import pinned_empty

    host = pinned_empty((nbytes,), np.uint8)
    dev = cp.empty(nbytes, cp.uint8)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        dev.set(host)
        cp.cuda.Device().synchronize()
        best = max(best, nbytes / (time.perf_counter() - start) / 1e9)
    del host, dev
    return best


def random_corpus(cp, n: int, d: int, seed: int = 0):
    """[n, d] fp16 on the GPU, generated in slices (no fp32 copy of the whole)."""
    rng = cp.random.default_rng(seed)
    out = cp.empty((n, d), cp.float16)
    step = 1 << 20
    for start in range(0, n, step):
        out[start:start + step] = rng.standard_normal((min(step, n - start), d), dtype=cp.float32)
    return out


# -- correctness on the GPU ----------------------------------------------------------------------
def gpu_check(cp) -> list[dict]:
    """GPU vs the NumPy path on the same data; streamed vs resident; torch queries via DLPack."""
    import torch

    rows = []
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((20011, 1024)).astype(np.float32)
    queries = rng.standard_normal((7, 1024)).astype(np.float32)
    for metric in METRICS:
        cpu = ExactSearch(corpus, metric)
        for k in (1, 10, 100, 1000):
            ref_i, ref_s = cpu.search(queries, k)
            for dtype in ("float32", "float16", "bfloat16"):
                gpu = ExactSearch(corpus, metric, "cuda:0", dtype=dtype)
                got_i, got_s = gpu.search(cp.asarray(queries), k)
                overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(got_i, ref_i)])
                rows.append(dict(metric=metric, k=k, dtype=dtype, overlap=float(overlap),
                                 same_order=bool((got_i == ref_i).all()),
                                 max_score_err=float(np.max(np.abs(got_s - ref_s) / (1 + np.abs(ref_s))))))
            # 60 MB: 41 MB of fp16 corpus + 31 MB of score workspace do not fit, so ~7000-row chunks
            # stream (100 MB stopped streaming once score slices were bounded by budget/8)
            streamed = ExactSearch(corpus, metric, "cuda:0", dtype="float16", gpu_memory_budget=60 << 20)
            resident = ExactSearch(corpus, metric, "cuda:0", dtype="float16")
            q_torch = torch.from_numpy(queries).cuda()
            a = streamed.search(q_torch, k)
            b = resident.search(cp.asarray(queries), k)
            rows.append(dict(metric=metric, k=k, dtype="float16", streamed=streamed.streamed,
                             streamed_equals_resident=bool((a[0] == b[0]).all() and np.allclose(a[1], b[1])),
                             # chunk shapes change cuBLAS's summation order: near-ties may swap
                             streamed_overlap=float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a[0], b[0])])),
                             streamed_max_score_diff=float(np.max(np.abs(a[1] - b[1])))))
            log(rows[-2], rows[-1])
    # hybrid fusion over a GPU dense search (vectors_at gathers from the GPU copy) vs the CPU
    from tritonrag.index.bm25 import BM25Index, TokenizerConfig
    from tritonrag.retrieval.hybrid import HybridConfig, HybridSearch

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    texts = [" ".join(rng.choice(words, size=5)) + f" doc{i}" for i in range(3000)]
    lexical = BM25Index.build(texts, TokenizerConfig(stem=False))  # the GPU host has no snowballstemmer
    vecs = rng.standard_normal((3000, 64)).astype(np.float32)
    q = vecs[:5] + 0.1
    asked = [f"doc{i} alpha" for i in range(5)]
    for metric in METRICS:
        for fusion, cands in (("zscore", 10_000), ("zscore", 100), ("rrf", 100)):
            config = HybridConfig(fusion=fusion, candidates=cands)
            got = HybridSearch(ExactSearch(vecs, metric, "cuda:0", dtype="float32"), lexical).search(q, asked, 10, config)
            want = HybridSearch(ExactSearch(vecs, metric), lexical).search(q, asked, 10, config)
            rows.append(dict(metric=metric, hybrid=fusion, candidates=cands, hybrid_gpu_equals_cpu=bool(
                (got[0] == want[0]).all()), max_score_diff=float(np.max(np.abs(got[1] - want[1])))))
            log(rows[-1])
    # ties: duplicated rows must come back lowest index first
    dup = np.repeat(rng.standard_normal((50, 64)).astype(np.float32), 4, axis=0)
    for metric in METRICS:
        got, _ = ExactSearch(dup, metric, "cuda:0", dtype="float32").search(dup[:3] + 0, 8)
        want, _ = ExactSearch(dup, metric).search(dup[:3] + 0, 8)
        rows.append(dict(metric=metric, ties_equal_cpu=bool((got == want).all()), got=got[0].tolist()))
        log(rows[-1])
    return rows


def event_ms(cp, fn, repeat: int = 10) -> float:
    """Median GPU time in ms of fn() between two events (no host sync inside)."""
    fn()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def gpu_profile(cp, n, dim, batches, k, peak) -> list[dict]:
    """Where the time of one ip search goes: cuBLAS product, top-k kernel, the rest."""
    import math

    import torch

    from tritonrag.retrieval.search import cuda_c_kernels as cuda_kernels
    from tritonrag.retrieval.search.cupy_search import CUBLAS_COMPUTE_32F, CUDA_R_16F, CUDA_R_32F, GpuSearch

    rows = []
    corpus = random_corpus(cp, n, dim)
    search = GpuSearch(corpus, "ip", 0, "float16")
    for batch in batches:
        q = cp.random.default_rng(batch).standard_normal((batch, dim), dtype=cp.float32)
        qh = q.astype(cp.float16)
        scores = cp.empty((batch, n), cp.float32)
        row = dict(kind="profile", n=n, d=dim, batch=batch, k=k)
        row["gemm_fp32_out_ms"] = event_ms(cp, lambda: search._gemm(corpus, qh, scores, n))
        row["cupy_matmul_fp16_out_ms"] = event_ms(cp, lambda: qh @ corpus.T)
        xt, qt = torch.from_dlpack(corpus), torch.from_dlpack(qh)
        row["torch_mm_fp16_out_ms"] = event_ms(cp, lambda: qt @ xt.T)
        try:
            row["torch_mm_fp32_out_ms"] = event_ms(cp, lambda: torch.mm(qt, xt.T, out_dtype=torch.float32))
        except Exception as exc:  # noqa: BLE001 — only newer torch has out_dtype
            row["torch_mm_fp32_out_ms"] = f"{type(exc).__name__}: {exc}"[:120]
        s16 = qt @ xt.T
        row["torch_topk_fp16_ms"] = event_ms(cp, lambda: torch.topk(s16, k, dim=1))
        sf = torch.from_dlpack(scores)
        row["torch_topk_fp32_ms"] = event_ms(cp, lambda: torch.topk(sf, k, dim=1))
        for factor in (1, 4, 8, 16):
            slots, threads = k, 256
            nseg = max(1, math.ceil(factor * search.sms / batch))
            seg_len = math.ceil(n / nseg)
            cands = cp.zeros((batch, nseg * k), cp.uint64)
            kern = cuda_kernels.topk_kernel(slots, threads)
            row[f"topk_kernel_x{factor}_ms"] = event_ms(cp, lambda: kern(
                (nseg, batch), (threads,), (scores, scores, scores, np.float32(1), np.int32(0), np.int64(n),
                                            np.int64(n), np.int64(seg_len), np.uint32(0), np.int32(k), cands,
                                            np.int64(cands.shape[1]), np.int64(0))))
        for score_mb in (8, 32, 128, 1024):
            search.score_bytes = score_mb << 20
            row[f"search_score{score_mb}MB_ms"] = gpu_time(lambda: search.search(q, k), 10)
        search.score_bytes = 32 << 20
        tiny = GpuSearch(corpus[:1000], "ip", 0, "float16")
        row["search_1000_rows_ms"] = gpu_time(lambda: tiny.search(q, k), 20)
        # where the per-call overhead goes (host wall time, synced): queries in, one launch, keys out
        row["overhead_queries_ms"] = gpu_time(lambda: tiny._queries(q).astype(cp.float16), 20, host_result=False)
        small = cp.zeros((batch, k), cp.uint64)
        row["overhead_keys_to_host_ms"] = gpu_time(lambda: small.get(), 20)
        row["overhead_empty_launch_ms"] = gpu_time(lambda: small.fill(0), 20, host_result=False)
        row["gemm_fp32_out_peak_fraction"] = corpus.nbytes / row["gemm_fp32_out_ms"] / 1e6 / peak
        rows.append(row)
        log(row)
        del scores, s16, sf
    del search, corpus
    cp.get_default_memory_pool().free_all_blocks()
    return rows


def floor_check(cp, n: int = 300_007, dim: int = 1024, device: str = "cuda") -> list[dict]:
    """The sampled floors change no key: `topk_keys` with floors (sample every 2nd, 4th, 32nd
    tile) against without, fp16 300,007 x 1024 with duplicated rows, in random order and sorted
    so that query 0's best rows come last (weak floors: more passes, the same keys); ip /
    cosine / l2, batch 8 / 32 / 40, k 1 / 10 / 64; and a FusedSearcher's graphs (floors as the
    policy decides, FLOOR_MIN_ROWS lowered to this size) against the eager keys without floors."""
    import torch

    from tritonrag.retrieval.search.fused import launch as fused_topk
    from tritonrag.retrieval.search.fused.graphs import FusedSearcher

    rows = []
    gen = torch.Generator(device=device).manual_seed(3)
    base = torch.randn((n, dim), device=device, generator=gen)
    base[n * 2 // 3:n * 2 // 3 + n // 600] = base[:n // 600]
    queries = torch.randn((40, dim), device=device, generator=gen)
    queries[1] = base[7]
    for order in ("random", "sorted"):
        corpus = base if order == "random" else base[torch.argsort(base @ queries[0])]
        for metric in ("ip", "cosine", "l2"):
            x = torch.nn.functional.normalize(corpus, dim=1) if metric == "cosine" else corpus
            q = torch.nn.functional.normalize(queries, dim=1) if metric == "cosine" else queries
            xh = x.half()
            norms = (xh.float() ** 2).sum(dim=1) if metric == "l2" else None
            for batch in (8, 32, 40):
                for k in (1, 10, 64):
                    want = fused_topk.topk_keys(torch, xh, q[:batch], k, metric, norms, floor=False)
                    same = {step: bool(torch.equal(want, fused_topk.topk_keys(torch, xh, q[:batch], k, metric, norms,
                                                                                floor=True, floor_step=step)))
                            for step in (2, 4, 32)}
                    row = dict(kind="floor_check", order=order, metric=metric, batch=batch, k=k,
                               same=all(same.values()), same_by_step=same)
                    if k == 10 and batch in (32, 40):
                        searcher = FusedSearcher(torch, xh, metric, norms)
                        got_rows, _ = searcher.search(queries[:batch], k, True)  # raw queries: it normalises cosine
                        got_rows, _ = searcher.search(queries[:batch], k, True)  # the replay, floors on
                        want_rows = (MAX_INDEX - (want & MAX_INDEX)).cpu().numpy()
                        row["graph_same"] = bool((got_rows == want_rows).all())
                    rows.append(row)
    bad = [r for r in rows if not r["same"] or not r.get("graph_same", True)]
    log(f"floor_check: {len(rows)} cases, {len(bad)} differ:", bad[:5])
    del base
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def fused_check(cp) -> list[dict]:
    """The fused Triton kernels against the NumPy path, and against the cuBLAS path.

    20011 x 1024 (a partial last tile); fp16 storage at batch 8 and 40 (two query blocks),
    k 10 and 64; fp32 and bf16 storage at batch 8, k 10 (L1 at batch 8 over fp16/bf16: the
    word kernel). Duplicated rows check that ties go to the
    lower index. Every case runs twice, the second time after the others: the fused search
    replays one CUDA graph per (batch, k) from a shared memory pool (`replay_same`); and fp16
    batch 8, k 10 searches other queries last (`overlap_numpy_other_queries`: the graph reads
    each call's queries from the address it is given). (A partial
    d block: earlier runs and the interpreter's unit tests.)
    """
    rows = []
    rng = np.random.default_rng(2)
    dim = 1024
    corpus = rng.standard_normal((20011, dim)).astype(np.float32)
    corpus[15000:15300] = corpus[:300]
    queries = rng.standard_normal((40, dim)).astype(np.float32)
    queries[:3] = corpus[[5, 15005, 17]]
    cases = [("float16", batch, k) for batch in (8, 40) for k in (10, 64)] + [("float32", 8, 10), ("bfloat16", 8, 10)]
    for metric in METRICS:
        cpu = ExactSearch(corpus, metric)
        refs = {batch: cpu.search(queries[:batch], 64) for batch in (8, 40)}
        for dtype in ("float16", "float32", "bfloat16"):
            fused = ExactSearch(corpus, metric, "cuda:0", dtype=dtype, kernel="fused")
            plain = ExactSearch(corpus, metric, "cuda:0", dtype=dtype, kernel="cublas")
            first = {}
            for _, batch, k in [c for c in cases if c[0] == dtype] * 2:  # twice: graphs replayed after others
                ref_i, ref_s = refs[batch][0][:, :k], refs[batch][1][:, :k]
                got_i, got_s = fused.search(cp.asarray(queries[:batch]), k)
                if (batch, k) in first:
                    rows[first[(batch, k)]]["replay_same"] = bool((got_i == rows[first[(batch, k)]].pop("_i")).all())
                    continue
                old_i, _ = plain.search(cp.asarray(queries[:batch]), k)
                rows.append(dict(
                    kind="fused_check", metric=metric, dim=dim, dtype=dtype, batch=batch, k=k,
                    overlap_numpy=float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got_i, ref_i)])),
                    same_order_numpy=bool((got_i == ref_i).all()),
                    overlap_cublas=float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got_i, old_i)])),
                    max_score_err=float(np.max(np.abs(got_s - ref_s) / (1 + np.abs(ref_s)))),
                    tie_lower_first=bool(got_i[1, 0] == 5),
                    sorted=bool((np.diff(got_s, axis=1) <= 0).all() if metric in ("ip", "cosine")
                                else (np.diff(got_s, axis=1) >= 0).all()), _i=got_i))
                first[(batch, k)] = len(rows) - 1
            if dtype == "float16":  # other queries through the graph of (8, 10): it reads each call's own
                other = queries[8:16]
                got_i, _ = fused.search(cp.asarray(other), 10)
                want_i, _ = cpu.search(other, 10)
                rows[first[(8, 10)]]["overlap_numpy_other_queries"] = float(
                    np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, want_i)]))
            for i in first.values():
                log(rows[i])
    bad = [r for r in rows if r["overlap_numpy"] < 0.99 or not r["sorted"] or not r["tie_lower_first"]
           or not r["replay_same"] or r.get("overlap_numpy_other_queries", 1.0) < 0.99]
    log(f"fused_check: {len(rows)} cases, {len(bad)} with overlap < .99, unsorted, ties out of order or a"
        " graph replay that differs:", bad[:5])
    return rows


# Tile shapes per query block, (block_n, block_d, warps, stages[, fp16 block; 0: fp32 sums]).
# Candidates: the fastest of the first H100 sweep (2026-11-24, `_s11` tune) and neighbours
# whose offline sm_90 build (ptxas of this triton) neither spills nor exceeds shared memory.
# An offline build needs the JIT's divisibility hints (ASTSource attrs, tt.divisibility 16 on
# the pointers and row strides), else its loads are neither vectorised nor pipelined and its
# register counts are not the GPU's (perf/results/2026-11-25_..._retrieval_s15-kernels.json).
DOT_TILES = {
    16: [(64, 128, 4, 3), (128, 128, 4, 3), (64, 256, 4, 2), (64, 128, 4, 4), (128, 128, 8, 3), (256, 64, 8, 3)],
    32: [(256, 128, 8, 3), (256, 64, 8, 3), (128, 64, 8, 4), (256, 64, 8, 2), (128, 128, 8, 3), (256, 32, 8, 4)],
}
L1_TILES = {
    32: [(64, 8, 4, 3, 8), (64, 8, 4, 4, 8), (128, 8, 8, 3, 8), (32, 8, 4, 3, 8), (64, 4, 4, 3, 4)],
    8: [(128, 16, 4, 3, 0), (256, 16, 8, 3, 0), (128, 32, 4, 3, 0), (128, 64, 8, 3, 0), (256, 32, 8, 3, 0), (128, 16, 4, 3, 16)],
    1: [(128, 64, 4, 3, 0), (256, 32, 8, 3, 0)],
}


def fused_tune(cp, n, dim, batches, k, peak) -> list[dict]:
    """Kernel time (events) of each tile shape of the fused kernels at n rows, per batch."""
    import torch

    from tritonrag.retrieval.search.fused import launch as fused_topk
    from tritonrag.retrieval.search.topk import decode_keys

    rows = []
    corpus = random_corpus(cp, n, dim)
    xt = torch.from_dlpack(corpus)
    norms = None
    for batch in batches:
        q = torch.randn((batch, dim), device="cuda", dtype=torch.float32)
        l1_tiles = L1_TILES.get(fused_topk.query_block(batch, "l1"), [])
        for metric, tiles in (("ip", DOT_TILES[fused_topk.query_block(batch, "ip")]), ("l1", l1_tiles)):
            for tile in tiles:
                shape, half = (tile[:4], tile[4] if len(tile) > 4 else None)
                row = dict(kind="fused_tune", n=n, d=dim, batch=batch, k=k, metric=metric, tile=list(tile))
                try:
                    start = time.perf_counter()
                    fused_topk.topk_keys(torch, xt, q, k, metric, norms, tiles=shape, half_l1=half)
                    torch.cuda.synchronize()
                    row["first_call_s"] = time.perf_counter() - start
                    row["ms"] = ms = event_ms(cp, lambda: fused_topk.topk_keys(torch, xt, q, k, metric, norms,
                                                                               tiles=shape, half_l1=half))
                    row["peak_fraction"] = corpus.nbytes / ms / 1e6 / peak
                except Exception as exc:  # noqa: BLE001 — record (e.g. out of shared memory) and go on
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(row)
                log(row)
        # the L1 kernels' exactness at this size: fp16 block sums vs fp32 (same top-k set?)
        ref = fused_topk.topk_keys(torch, xt, q, k, "l1", half_l1=0)
        for tile in l1_tiles:
            if tile[4]:
                got = fused_topk.topk_keys(torch, xt, q, k, "l1", tiles=tile[:4], half_l1=tile[4])
                (ref_i, ref_s, _), (got_i, got_s, _) = decode_keys(ref.cpu().numpy()), decode_keys(got.cpu().numpy())
                same = np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_i, got_i)])
                rows.append(dict(kind="fused_tune_l1_half_overlap", batch=batch, tile=list(tile), overlap=float(same),
                                 max_abs_diff=float(np.max(np.abs(got_s - ref_s))),
                                 kth_gap_median=float(np.median(ref_s[:, -2] - ref_s[:, -1]))))
                log(rows[-1])
    del corpus, xt
    cp.get_default_memory_pool().free_all_blocks()
    return rows


def fused_profile(cp, n, dim, batches, k, peak) -> list[dict]:
    """Where a fused ip search's time goes (adopted tiles): the kernel with k and with 1
    pass per tile (the passes' cost), the merge of the tiles' candidates (`merge_runs` by
    runs per program, and torch.topk as before), the whole `topk_keys` call (events; and its host time alone;
    without the sampled floors and with them at several sample steps), and
    the whole search from GPU queries to host results (wall): launched call by call
    (`topk_keys_wall_ms`), replayed from a CUDA graph (`graph_wall_ms`), and through ExactSearch
    (`search_wall_ms`, the graph plus the CuPy -> torch handover and the decoding)."""
    import torch

    from tritonrag.retrieval.search.fused import triton_lang_kernels as fused_kernels, launch as fused_topk
    from tritonrag.retrieval.search.fused.graphs import FusedSearcher

    rows = []
    corpus = random_corpus(cp, n, dim)
    xt = torch.from_dlpack(corpus)
    for batch in batches:
        q = torch.randn((batch, dim), device="cuda", dtype=torch.float32)
        block_b = fused_topk.query_block(batch, "ip")
        block_n, block_d, warps, stages = fused_topk.tiles_for("ip", block_b)[:4]
        tiles = -(-n // block_n)
        qt = torch.zeros((dim, block_b), dtype=torch.float16, device="cuda")
        qt[:, :batch] = q.half().T
        row = dict(kind="fused_profile", n=n, d=dim, batch=batch, k=k, tile=[block_n, block_d, warps, stages])
        for passes in (k, 1):
            cands = torch.empty((batch, tiles * passes), dtype=torch.int64, device="cuda")
            launch = lambda: fused_kernels.dot_topk[(tiles,)](  # noqa: E731
                xt, qt, cands, cands, n, batch, xt.stride(0), qt.stride(0), cands.stride(0), 1, 1, cands, 0, 0,
                DIM=dim, K=passes,
                BLOCK_N=block_n, BLOCK_B=block_b, BLOCK_D=block_d, NUM_STAGES=stages, HAS_NORMS=False, IEEE=False,
                num_warps=warps)
            row[f"kernel_k{passes}_ms"] = event_ms(cp, launch)
        cands = torch.randint(-2**62, 2**62, (batch, tiles * k), dtype=torch.int64, device="cuda")
        cands = torch.sort(cands.view(batch, tiles, k), dim=2, descending=True).values.view(batch, -1)  # runs
        row["merge_torch_topk_ms"] = event_ms(cp, lambda: torch.topk(cands, k, dim=1))
        runs = fused_topk.MERGE_RUNS
        for size in (1024, 4096):
            fused_topk.MERGE_RUNS = size
            row[f"merge_runs_{size}_ms"] = event_ms(cp, lambda: fused_topk.merge_runs(torch, cands, k))
        fused_topk.MERGE_RUNS = runs
        policy = search_path.floors("ip", n, batch)  # the floors as a search would take them
        row["topk_keys_ms"] = event_ms(cp, lambda: fused_topk.topk_keys(torch, xt, q, k, "ip", floor=policy))
        # the sampled floors off and on (every `step`-th tile sampled), events, whatever the policy
        row["topk_keys_nofloor_ms"] = event_ms(cp, lambda: fused_topk.topk_keys(torch, xt, q, k, "ip", floor=False))
        for step in (16, 32, 64):
            row[f"topk_keys_floor{step}_ms"] = event_ms(
                cp, lambda: fused_topk.topk_keys(torch, xt, q, k, "ip", floor=True, floor_step=step))
        start = time.perf_counter()
        for _ in range(20):  # the host's side of a call: launches only (the GPU catches up after)
            fused_topk.topk_keys(torch, xt, q, k, "ip", floor=policy)
        row["topk_keys_host_us"] = (time.perf_counter() - start) / 20 * 1e6
        torch.cuda.synchronize()
        row["topk_keys_wall_ms"] = gpu_time(lambda: fused_topk.topk_keys(torch, xt, q, k, "ip", floor=policy).cpu(), 20)
        searcher = FusedSearcher(torch, xt, "ip")
        row["graph_wall_ms"] = gpu_time(lambda: searcher.search(q, k, policy), 20)  # the same work, one graph
        search = ExactSearch(corpus, "ip", "cuda:0", dtype="float16", kernel="fused")
        qc = cp.from_dlpack(q)
        row["search_wall_ms"] = gpu_time(lambda: search.search(qc, k), 20)
        row["kernel_k_peak_fraction"] = corpus.nbytes / row[f"kernel_k{k}_ms"] / 1e6 / peak
        row["search_peak_fraction"] = corpus.nbytes / row["search_wall_ms"] / 1e6 / peak
        rows.append(row)
        log(row)
    del corpus, xt
    cp.get_default_memory_pool().free_all_blocks()
    return rows


def adopt_best_tiles(rows: list[dict]) -> dict:
    """Set `fused_topk.TILES` to the fastest shape per (kind, query block) of a `fused_tune`
    run (an fp16-block L1 shape only where its top-k sets matched fp32's on >= 99 %)."""
    from tritonrag.retrieval.search.fused import launch as fused_topk

    overlap = {(r["batch"], tuple(r["tile"])): r["overlap"] for r in rows if r["kind"] == "fused_tune_l1_half_overlap"}
    totals: dict = {}  # (kind, query block) -> tile -> [ms of each batch of that block]
    for r in rows:
        if r["kind"] != "fused_tune" or "ms" not in r:
            continue
        tile = tuple(r["tile"])
        if r["metric"] == "l1" and tile[4] and overlap.get((r["batch"], tile), 0) < 0.99:
            continue
        key = ("l1" if r["metric"] == "l1" else "dot", fused_topk.query_block(r["batch"], r["metric"]))
        totals.setdefault(key, {}).setdefault(tile, []).append(r["ms"])
    best: dict = {}
    for key, by_tile in totals.items():  # the least total time over the block's batches
        most = max(len(v) for v in by_tile.values())
        tile, times = min(((t, v) for t, v in by_tile.items() if len(v) == most), key=lambda tv: sum(tv[1]))
        best[key] = (sum(times), tile)
    for key, (_, tile) in best.items():
        fused_topk.TILES[key] = tile
    chosen = {f"{kind}/{block}": list(tile) for (kind, block), (_, tile) in best.items()}
    log("fused tiles adopted:", chosen)
    return chosen


# -- GPU sweeps -------------------------------------------------------------------------------
_NORMS: dict = {}


def torch_baseline(cp, corpus, metric, q, k):
    import torch

    x = torch.from_dlpack(corpus)
    qt = torch.from_dlpack(q).to(torch.float16)
    if metric == "l1":
        d = torch.cdist(qt.float(), x.float(), p=1) if x.shape[0] * x.shape[1] <= (1 << 28) else None
        if d is None:
            raise MemoryError("cdist on fp32 copies would not fit")
        return torch.topk(-d, k, dim=1)
    s = qt @ x.T
    if metric == "l2":  # norms computed once, outside the timing
        key = ("torch", id(corpus))
        if key not in _NORMS:
            _NORMS[key] = torch.cat([(c.float() ** 2).sum(1) for c in x.split(1 << 20)])
        s = 2 * s.float() - _NORMS[key]
    vals, idx = torch.topk(s, k, dim=1)
    return idx.cpu(), vals.cpu()


def cupy_baseline(cp, corpus, metric, q, k):
    s = q.astype(cp.float16) @ corpus.T
    if metric == "l2":
        key = ("cupy", id(corpus))
        if key not in _NORMS:
            _NORMS[key] = cp.concatenate([(c.astype(cp.float32) ** 2).sum(1) for c in
                                          (corpus[i:i + (1 << 20)] for i in range(0, corpus.shape[0], 1 << 20))])
        s = 2 * s.astype(cp.float32) - _NORMS[key]
    part = cp.argpartition(-s, k, axis=1)[:, :k]
    vals = cp.take_along_axis(s, part, axis=1)
    order = cp.argsort(-vals, axis=1)
    return cp.take_along_axis(part, order, axis=1).get(), cp.take_along_axis(vals, order, axis=1).get()


@contextlib.contextmanager
def floors_off(search, off: bool):
    """The fused searches of `search` without the sampled floors while inside (their CUDA graphs
    are captured again on entry and on exit, so each side replays its own)."""
    if not off:
        yield
        return

    def recapture():
        fused = getattr(search.gpu, "_fused", None)
        if fused is not None:
            fused._captured.clear()

    saved = search_path.FLOOR_MIN_ROWS
    search_path.FLOOR_MIN_ROWS = 1 << 62
    recapture()
    try:
        yield
    finally:
        search_path.FLOOR_MIN_ROWS = saved
        recapture()


def gpu_sweep(cp, sizes, batches, metrics, dim, k, peak, repeat, baselines) -> list[dict]:
    from tritonrag.retrieval.search.fused import launch as fused_topk

    rows = []
    for n in sizes:
        base = random_corpus(cp, n, dim)
        nbytes = base.nbytes
        for metric in metrics:
            search = ExactSearch(base, metric, "cuda:0", dtype="float16")
            corpus = search.gpu.corpus
            for batch in batches:
                q = cp.random.default_rng(batch).standard_normal((batch, dim), dtype=cp.float32)
                reps = repeat if n <= 2_000_000 else max(3, repeat // 3)
                # the same index object, each search kernel in turn: cuBLAS + CUDA top-k, fused Triton,
                # and fused without the sampled floors where the policy takes them (an A/B in one run)
                floors = search_path.floors(metric, n, batch)
                impls = [("tritonrag", "cublas"), ("fused", "fused")] + ([("fused_nofloor", "fused")] if floors else [])
                for impl, kernel in impls:
                    search.gpu.kernel = kernel
                    try:
                        with floors_off(search, impl == "fused_nofloor"):
                            ms = gpu_time(lambda: search.search(q, k), reps)
                    except Exception as exc:  # noqa: BLE001 — record and go on
                        rows.append(dict(kind="in_memory", n=n, d=dim, batch=batch, k=k, metric=metric, impl=impl,
                                         error=f"{type(exc).__name__}: {exc}"[:300]))
                        log(rows[-1])
                        continue
                    row = dict(kind="in_memory", n=n, d=dim, batch=batch, k=k, metric=metric, impl=impl,
                               ms=ms, GBps=nbytes / ms / 1e6, peak_fraction=nbytes / ms / 1e6 / peak)
                    rows.append(row)
                    log(row)
                search.gpu.kernel = "auto"
                if not baselines:
                    continue
                for impl, fn in (("torch", torch_baseline), ("cupy", cupy_baseline)):
                    if impl == "cupy" and metric == "l1":
                        continue
                    try:
                        ms = gpu_time(lambda: fn(cp, corpus, metric, q, k), max(2, reps // 2))
                    except Exception as exc:  # noqa: BLE001 — record and go on
                        rows.append(dict(kind="in_memory", n=n, d=dim, batch=batch, k=k, metric=metric, impl=impl,
                                         error=f"{type(exc).__name__}: {exc}"[:200]))
                        log(rows[-1])
                        cp.get_default_memory_pool().free_all_blocks()
                        continue
                    rows.append(dict(kind="in_memory", n=n, d=dim, batch=batch, k=k, metric=metric, impl=impl,
                                     ms=ms, GBps=nbytes / ms / 1e6, peak_fraction=nbytes / ms / 1e6 / peak))
                    log(rows[-1])
            del search, corpus
            _NORMS.clear()
            cp.get_default_memory_pool().free_all_blocks()
        del base
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def torch_path(cp, n, batches, metrics, dim, k, peak, repeat) -> list[dict]:
    """`TorchSearch` (the path of CUDA instances without CuPy): exactness vs NumPy, then speed."""
    from tritonrag.retrieval.search.torch_search import TorchSearch

    rows = []
    rng = np.random.default_rng(5)
    corpus = rng.integers(-3, 4, size=(20011, 256)).astype(np.float32)  # exact in fp16: equal results
    queries = rng.integers(-3, 4, size=(7, 256)).astype(np.float32)
    for metric in metrics:
        for k_check in (10, 1000):
            want = ExactSearch(corpus, metric).search(queries, k_check)
            got = TorchSearch(corpus, metric, "cuda:0", "float16").search(queries, k_check)
            got_s = TorchSearch(corpus, metric, "cuda:0", "float16", budget=8 << 20, score_bytes=1 << 20)
            streamed = got_s.search(queries, k_check)
            rows.append(dict(kind="torch_check", metric=metric, k=k_check, streamed=got_s.streamed,
                             equal_numpy=bool((got[0] == want[0]).all()), streamed_equal=bool((streamed[0] == got[0]).all()),
                             max_score_diff=float(np.max(np.abs(got[1] - want[1])))))
            log(rows[-1])
    base = random_corpus(cp, n, dim)
    for metric in metrics:
        search = TorchSearch(base, metric, "cuda:0", "float16")
        for batch in batches:
            q = cp.random.default_rng(batch).standard_normal((batch, dim), dtype=cp.float32)
            ms = gpu_time(lambda: search.search(q, k), repeat)
            rows.append(dict(kind="in_memory", n=n, d=dim, batch=batch, k=k, metric=metric, impl="tritonrag_torch",
                             ms=ms, GBps=base.nbytes / ms / 1e6, peak_fraction=base.nbytes / ms / 1e6 / peak))
            log(rows[-1])
        del search
    del base
    cp.get_default_memory_pool().free_all_blocks()
    return rows


def ooc_sweep(cp, n, batches, metrics, dim, k, budget, h2d, repeat) -> list[dict]:
    from tritonrag.retrieval.search.cupy_search import pinned_empty

    rows = []
    host = pinned_empty((n, dim), np.float16)
    step = 1 << 20
    rng = cp.random.default_rng(3)
    for start in range(0, n, step):
        rng.standard_normal((min(step, n - start), dim), dtype=cp.float32).astype(cp.float16).get(
            out=host[start:start + step])
    for metric in metrics:
        start = time.perf_counter()
        search = ExactSearch(host, metric, "cuda:0", dtype="float16", gpu_memory_budget=budget)
        load_s = time.perf_counter() - start
        for batch in batches:
            q = cp.random.default_rng(batch).standard_normal((batch, dim), dtype=cp.float32)
            ms = gpu_time(lambda: search.search(q, k), repeat)
            row = dict(kind="out_of_core", n=n, d=dim, batch=batch, k=k, metric=metric, budget_bytes=budget,
                       streamed=search.streamed, chunk_rows=search.gpu.chunk_rows if search.streamed else None,
                       load_s=load_s, ms=ms, GBps=host.nbytes / ms / 1e6, h2d_fraction=host.nbytes / ms / 1e6 / h2d)
            rows.append(row)
            log(row)
        del search
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()
    return rows


def numpy_long(a, b, metric):
    if metric == "dot":
        return float(np.dot(a, b))
    if metric == "l2":
        t = a - b
        return float(np.dot(t, t))
    if metric == "l1":
        return float(np.abs(a - b).sum())
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def host_calls(cp) -> dict:
    """Host time (us) of small calls a search or a distance could make on every call."""
    import torch

    q = cp.random.default_rng(0).standard_normal((32, 1024), dtype=cp.float32)
    qt = torch.from_dlpack(q)
    out = {}
    for name, fn in (("device_attributes_us", lambda: cp.cuda.Device().attributes["MultiProcessorCount"]),
                     ("mem_get_info_us", lambda: cp.cuda.runtime.memGetInfo()),
                     ("device_synchronize_us", lambda: cp.cuda.Device().synchronize()),
                     ("cupy_row_sums_get_us", lambda: (q * q).sum(axis=1).get()),
                     ("cupy_row_norms_us", lambda: cp.linalg.norm(q, axis=1, keepdims=True)),
                     ("torch_row_sums_cpu_us", lambda: (qt * qt).sum(dim=1).cpu()),
                     ("torch_normalize_us", lambda: torch.nn.functional.normalize(qt, dim=1))):
        fn()
        cp.cuda.Device().synchronize()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        cp.cuda.Device().synchronize()
        out[name] = (time.perf_counter() - start) / 20 * 1e6
    log(out)
    return out


def long_sweep(cp, sizes, peak, h2d, budget, repeat) -> list[dict]:
    from tritonrag.retrieval.search.cupy_search import pinned_empty

    rows = []
    for n in sizes:
        rng = cp.random.default_rng(n % 1000)
        a = rng.standard_normal(n, dtype=cp.float32)
        b = rng.standard_normal(n, dtype=cp.float32)
        ha, hb = pinned_empty((n,), np.float32), pinned_empty((n,), np.float32)
        a.get(out=ha)
        b.get(out=hb)
        nbytes = 2 * n * 4
        for metric in LONG_METRICS:
            value = long_distance(a, b, metric, "cuda:0")
            ms = gpu_time(lambda: long_distance(a, b, metric, "cuda:0"), repeat)
            np_reps = 3 if n <= 100_000_000 else 1
            start = time.perf_counter()
            for _ in range(np_reps):
                ref = numpy_long(ha, hb, metric)
            np_ms = (time.perf_counter() - start) / np_reps * 1e3
            ooc_value = long_distance(ha, hb, metric, "cuda:0", budget=budget)
            ooc_ms = gpu_time(lambda: long_distance(ha, hb, metric, "cuda:0", budget=budget), max(2, repeat // 3))
            row = dict(kind="long_vector", n=n, metric=metric, ms=ms, GBps=nbytes / ms / 1e6,
                       peak_fraction=nbytes / ms / 1e6 / peak, numpy_ms=np_ms, speedup_vs_numpy=np_ms / ms,
                       ooc_ms=ooc_ms, ooc_GBps=nbytes / ooc_ms / 1e6, ooc_h2d_fraction=nbytes / ooc_ms / 1e6 / h2d,
                       ooc_budget_bytes=budget, rel_err_vs_numpy=abs(value - ref) / max(abs(ref), 1e-30),
                       ooc_equals_in_memory=bool(abs(ooc_value - value) <= 1e-9 * max(1.0, abs(value))))
            rows.append(row)
            log(row)
        del a, b, ha, hb
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()
    return rows


# -- CPU sweep --------------------------------------------------------------------------------
def numpy_brute_force(corpus, metric, q, k):
    if metric == "l1":
        s = -np.abs(q[:, None, :] - corpus[None]).sum(-1)
    else:
        s = q @ corpus.T
        if metric == "l2":
            s = -((q * q).sum(1, keepdims=True) - 2 * s + (corpus * corpus).sum(1))
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def cpu_sweep(sizes, batches, metrics, dim, k, repeat) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        corpus = rng.standard_normal((n, dim)).astype(np.float32)
        for metric in metrics:
            search = ExactSearch(corpus, metric)
            base = corpus if metric != "cosine" else corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
            for batch in batches:
                if metric == "l1" and n * batch > 50_000 * 8:
                    continue  # NumPy's [B, N, d] temporary: minutes on 2 cores
                q = rng.standard_normal((batch, dim)).astype(np.float32)
                ours = cpu_time(lambda: search.search(q, k), repeat)
                ref = cpu_time(lambda: numpy_brute_force(base, metric, q, k), repeat)
                same = (search.search(q, k)[0] == numpy_brute_force(base, metric, q, k)[0]).mean()
                row = dict(kind="cpu", n=n, d=dim, batch=batch, k=k, metric=metric, ms=ours, numpy_ms=ref,
                           speedup=ref / ours, GBps=corpus.nbytes / ours / 1e6, same_indices_fraction=float(same))
                rows.append(row)
                log(row)
    return rows


# -- report -----------------------------------------------------------------------------------
def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mem = [r for r in rows if r.get("kind") == "in_memory" and "ms" in r]
    ooc = [r for r in rows if r.get("kind") == "out_of_core"]
    lng = [r for r in rows if r.get("kind") == "long_vector"]
    cpu = [r for r in rows if r.get("kind") == "cpu"]
    panels = [p for p in (mem, ooc, lng, cpu) if p]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        kind = panel[0]["kind"]
        if kind == "in_memory":
            labels = sorted({(r["n"], r["metric"], r["batch"]) for r in panel})
            impls = [i for i in ("fused", "tritonrag", "tritonrag_torch", "torch", "cupy")
                     if any(r["impl"] == i for r in panel)]
            width = 0.8 / len(impls)
            for j, impl in enumerate(impls):
                vals = [next((r["peak_fraction"] for r in panel if (r["n"], r["metric"], r["batch"]) == lab
                              and r["impl"] == impl), 0) for lab in labels]
                ax.bar(np.arange(len(labels)) + j * width, vals, width, label=impl)
            ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, [f"{n/1e6:g}M {m} b{b}" for n, m, b in labels],
                          rotation=90, fontsize=7)
            ax.axhline(0.85, color="k", ls="--", lw=0.8)
            ax.set_ylabel("fraction of peak HBM")
            ax.legend()
        elif kind == "out_of_core":
            ax.bar([f"{r['metric']} b{r['batch']}" for r in panel], [r["h2d_fraction"] for r in panel])
            ax.axhline(0.8, color="k", ls="--", lw=0.8)
            ax.set_ylabel("fraction of host->GPU")
        elif kind == "long_vector":
            labels = [f"{r['n']:.0e} {r['metric']}" for r in panel]
            x = np.arange(len(labels))
            ax.bar(x - 0.2, [r["peak_fraction"] for r in panel], 0.4, label="in GPU memory / peak HBM")
            ax.bar(x + 0.2, [r["ooc_h2d_fraction"] for r in panel], 0.4, label="streamed / host->GPU")
            ax.set_xticks(x, labels, rotation=90, fontsize=7)
            ax.set_ylabel("bandwidth fraction")
            ax.legend()
        else:
            ax.bar([f"{r['n']//1000}k {r['metric']} b{r['batch']}" for r in panel], [r["speedup"] for r in panel])
            ax.set_ylabel("speedup over NumPy brute force")
            ax.tick_params(axis="x", rotation=90, labelsize=7)
        ax.set_title(f"{title}: {kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    from sweep import device_name, slug

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cpu")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--check", action="store_true", help="GPU: compare with the NumPy path first")
    parser.add_argument("--profile", type=int, default=0, help="GPU: break one ip search of N rows down")
    parser.add_argument("--ooc-rows", type=int, default=0, help="GPU: out-of-core corpus rows (0: skip)")
    parser.add_argument("--ooc-budget-gb", type=float, default=4.0)
    parser.add_argument("--long", type=int, nargs="*", default=[], help="GPU: long-vector lengths")
    parser.add_argument("--long-budget-gb", type=float, default=1.0)
    parser.add_argument("--torch-path", type=int, default=0, help="GPU: check and time TorchSearch at N rows")
    parser.add_argument("--fused-check", action="store_true", help="GPU: the fused kernels vs NumPy")
    parser.add_argument("--floor-check", action="store_true", help="GPU: fused keys with sampled floors vs without")
    parser.add_argument("--fused-tune", type=int, default=0, help="GPU: time the fused kernels' tile shapes at N rows")
    parser.add_argument("--fused-profile", type=int, default=0,
                        help="GPU: where a fused search's time goes at N rows (also after --fused-tune)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    device = device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d')}_{slug(device)}_retrieval{('_' + args.tag) if args.tag else ''}"

    def save() -> None:  # after every section, so a run cut short still leaves its numbers
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")

    result = dict(command=" ".join(["python", "perf/retrieval_bench.py", *(argv or sys.argv[1:])]),
                  device=device, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), rows=[])
    if args.device == "cuda":
        import cupy as cp

        result["peak_hbm_GBps"] = peak = peak_hbm(cp)
        result["h2d_GBps"] = h2d = host_to_device(cp)
        log(f"device {device}: peak HBM copy {peak:.0f} GB/s, host->GPU {h2d:.1f} GB/s")
        result["host_calls"] = host_calls(cp)
        if args.floor_check:
            result["floor_check"] = floor_check(cp)
            save()
        if args.fused_tune:
            result["fused_tune"] = fused_tune(cp, args.fused_tune, args.dim, args.batches, args.k, peak)
            result["fused_tiles"] = adopt_best_tiles(result["fused_tune"])
            save()
        if args.fused_tune or args.fused_profile:
            try:
                result["fused_profile"] = fused_profile(cp, args.fused_profile or args.fused_tune, args.dim,
                                                        args.batches, args.k, peak)
            except Exception as exc:  # noqa: BLE001 — a breakdown only
                result["fused_profile_error"] = f"{type(exc).__name__}: {exc}"[:500]
                log("fused_profile failed:", exc)
            save()
        if args.check:
            result["check"] = gpu_check(cp)
            save()
        if args.profile:
            result["profile"] = gpu_profile(cp, args.profile, args.dim, args.batches, args.k, peak)
            save()
        sizes = args.sizes if args.sizes is not None else [1_000_000]
        result["rows"] += gpu_sweep(cp, sizes, args.batches, args.metrics, args.dim, args.k, peak, args.repeat,
                                    not args.no_baselines)
        save()
        if args.fused_check:  # after the sweep: its compiles (CuPy's too) take a while on a fresh host
            try:
                result["fused_check"] = fused_check(cp)
            except Exception as exc:  # noqa: BLE001 — the sweep's numbers are saved already
                import traceback

                result["fused_check_error"] = traceback.format_exc()[-2000:]
                log("fused_check failed:", exc)
            save()
        if args.torch_path:
            result["rows"] += torch_path(cp, args.torch_path, args.batches, args.metrics, args.dim, args.k, peak,
                                         args.repeat)
            save()
        if args.ooc_rows:
            result["rows"] += ooc_sweep(cp, args.ooc_rows, args.batches, args.metrics, args.dim, args.k,
                                        int(args.ooc_budget_gb * (1 << 30)), h2d, max(2, args.repeat // 3))
            save()
        if args.long:
            result["rows"] += long_sweep(cp, args.long, peak, h2d, int(args.long_budget_gb * (1 << 30)),
                                         args.repeat)
    else:
        sizes = args.sizes if args.sizes is not None else [10_000, 50_000]
        result["rows"] += cpu_sweep(sizes, args.batches, args.metrics, args.dim, args.k, max(1, args.repeat // 3))
    save()
    plot(result["rows"], args.out / f"{stem}.png", f"{device} {result['date'][:10]}")
    log(f"wrote {args.out / stem}.json/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
