"""Top-k fused with the scoring: Triton-language kernels that read the corpus once.

The cuBLAS path writes a [B, rows] fp32 score block and reads it back for the top-k, a
round trip through memory as large as the product's own traffic at large batches. Here
each program scores one tile of corpus rows against a block of queries (`tl.dot`, fp32 accumulation; for L1 an abs-diff accumulation) and keeps only the
tile's best k per query: k passes of "max, lowest row of the max, mask it" over the scores
in registers, written as the 64-bit keys of `tritonrag.retrieval.search.topk` (int64 view), so the
lowest index wins ties and a key names its row.
The tiles' [B, tiles * k] candidates are sorted runs of k; `merge_runs` passes keep the best
k of every MERGE_RUNS runs (k steps over the runs' heads), again until one chunk is left (at
k = 10 two launches up to 100M rows), and `decode_keys` turns the last keys into rows and the
metric's scores on the device. For large batches a sample of tiles is scored first, and its
k-th best score per query (a floor) spares the full pass most of its passes (FLOOR_STEP).
The merge is a kernel of its own rather than `torch.topk` over the candidates, which cost a
large share of the search. Scores never go to memory. Evidence for the choices here:
docs/decisions/0050-fused-topk-kernels.md.

Inputs are torch tensors on one device (a CuPy corpus is shared through DLPack, no copy).
Imported under `TRITON_INTERPRET=1`, the same kernels run on CPU tensors (the unit tests).
Tile shapes per (metric, batch block) come from a sweep by `perf/retrieval_bench.py
--fused-tune`, see `TILES`.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

from ..metric import Metric
from ..topk import MAX_INDEX  # noqa: F401  (the key format of the kernels' keys)

MAX_FUSED_K = 64            # larger k: the cuBLAS/torch paths (k passes per tile grow with k)
MAX_QUERY_BLOCK = 32        # queries per program; more queries: more query blocks per tile
# Sorted runs (one a tile) per merge program. A program's k steps each reduce over its runs'
# heads, so fewer runs a program is more programs and shorter steps; 1024 keeps a 1M-row
# search to one merge launch after the tiles.
MERGE_RUNS = 1024
# Passes per tile are a compile-time constant: k is rounded up to one of these, so a server
# compiles a few kernels (~1-3 s each on first use), not one per top_k; the merge keeps k.
K_STEPS = (1, 3, 5, 10, 16, 20, 32, 48, 64)

# Floors (ip/cosine/l2): first score every FLOOR_STEP-th tile of the corpus with the same
# kernel and merge their keys; each query's k-th best there is at most its k-th best overall,
# so in the full pass a tile makes only as many of its k passes as it has rows at or above a
# query's floor (`fused_kernels._emit_topk`). At a full query block the k passes, not the
# corpus read, bound the kernel, so skipping them pays for the sample; at smaller blocks the
# passes are cheap and the sample is not worth it (`search_path.floor_wanted`). The sampling
# step hardly matters between 16 and 64 tiles.
FLOOR_STEP = 32

# (metric kind, query block) -> (block_n, block_d, num_warps, num_stages[, fp16 block]).
# "dot" covers ip/cosine/l2 (l2, which also reads the norms, has its own shape at 32). For l1
# the fifth value > 0 sums |x - q| in fp16 over that many dims and in fp32 across them (0: fp32
# throughout); its [block_d, block_n, queries] difference tile lives in registers. The shapes
# are the `retrieval_bench.py --fused-tune` choices where it ran; 2, 4, 16: neighbours by
# register count. fp16 L1 sums are used only at 32, where they change no top-k set: at smaller
# blocks they change some, so fp32 sums stay there.
TILES = {
    ("dot", 16): (128, 128, 4, 3),
    ("dot", 32): (256, 128, 8, 3),
    ("l2", 32): (256, 64, 8, 3),
    ("l1", 1): (128, 64, 4, 3, 0),
    ("l1", 2): (256, 16, 4, 3, 0),
    ("l1", 4): (256, 16, 4, 3, 0),
    ("l1", 8): (128, 16, 4, 3, 0),  # fp32 corpora and d off L1_WORD_TILES
    ("l1", 16): (128, 16, 8, 3, 0),
    ("l1", 32): (64, 8, 4, 3, 8),
}


def available(device_type: str) -> bool:
    """True where the kernels can run as compiled code: triton importable and a CUDA device."""
    if device_type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class Kernels(NamedTuple):
    dot: object
    l1: object
    interpreted: bool
    merge_runs: object
    l1_words: object
    decode_keys: object


@functools.lru_cache(maxsize=None)
def _kernels() -> Kernels:
    """The Triton kernels, compiled on demand; their module imports triton (optional on CPU).

    Imported with TRITON_INTERPRET=1 (the unit tests), the kernels run on CPU tensors."""
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    from . import triton_lang_kernels as fused_kernels

    return Kernels(fused_kernels.dot_topk, fused_kernels.l1_topk, interpreted, fused_kernels.merge_runs,
                   fused_kernels.l1_words_topk, fused_kernels.decode_keys)


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


# L1 at these query blocks over an fp16/bf16 corpus: `fused_kernels.l1_words_topk`, (block_n,
# block_d, warps, stages): reading 4 values a load pays at 8 and 16 queries a program. At 32
# `l1_topk` with fp16 block sums is the faster kernel, and at 4 and below plain `l1_topk`.
L1_WORD_TILES = {8: (128, 32, 2, 3), 16: (128, 16, 2, 3)}


def _words_fit(torch, corpus, block_b: int) -> bool:
    """Whether `l1_words_topk` can read the corpus as 8-byte words of 4 values."""
    if block_b not in L1_WORD_TILES or corpus.dtype not in (torch.float16, torch.bfloat16):
        return False
    block_d = L1_WORD_TILES[block_b][1]
    return (corpus.shape[1] % block_d == 0 and corpus.stride(1) == 1 and corpus.stride(0) % 4 == 0
            and corpus.data_ptr() % 8 == 0)


def query_block(batch: int, metric: str) -> int:
    """Queries per program: tl.dot needs >= 16 columns; L1 uses the batch's power of two."""
    b = min(MAX_QUERY_BLOCK, _pow2(batch))
    return max(16, b) if Metric.of(metric).uses_dot else b


def tiles_for(metric: str, block_b: int) -> tuple:
    """The metric's own shape where it has one (l2 at 32), else its kind's: "l1" or "dot"."""
    if (metric, block_b) in TILES:
        return TILES[(metric, block_b)]
    return TILES[("dot" if Metric.of(metric).uses_dot else "l1", block_b)]


def topk_keys(torch, corpus, queries, k: int, metric: str, norms=None, tiles=None, half_l1: int | None = None,
              floor: bool = False, floor_step: int | None = None):
    """[B, k] int64 keys (best first) of the top-k corpus rows for each query.

    corpus: [N, d] torch tensor (fp16/bf16/fp32; cosine rows already normalised); queries:
    [B, d] fp32 on the same device (normalised for cosine); norms: [N] fp32 |x|^2 for l2.
    floor / floor_step: the sampled floors of ip/cosine/l2 searches on or off (decided by
    `search_path.route`), and every how many tiles one is sampled (None: FLOOR_STEP).
    """
    kernels = _kernels()
    interpreted = kernels.interpreted
    metric = Metric.of(metric)
    n, dim = corpus.shape
    batch = queries.shape[0]
    k = min(int(k), n)
    if not 0 < k <= MAX_FUSED_K:
        raise ValueError(f"fused top-k takes 1 <= k <= {MAX_FUSED_K}, got {k}")
    passes = next(s for s in K_STEPS if s >= k)
    block_b = query_block(batch, metric)
    words = not metric.uses_dot and tiles is None and half_l1 is None and _words_fit(torch, corpus, block_b)
    tiles = L1_WORD_TILES[block_b] if words else (tiles or tiles_for(metric, block_b))
    block_n, block_d, warps, stages = tiles[:4]
    block_n = max(block_n, _pow2(passes))
    block_d = min(block_d, _pow2(dim))
    n_tiles = -(-n // block_n)
    q_blocks = -(-batch // block_b)
    cands = torch.empty((batch, n_tiles * passes), dtype=torch.int64, device=corpus.device)
    grid = (n_tiles * q_blocks,)
    extra = {} if interpreted else {"num_warps": warps}
    if words:
        q = queries.to(torch.float32).contiguous()
        kernels.l1_words[grid](corpus, q, cands, n, batch, corpus.stride(0), q.stride(0), cands.stride(0), q_blocks,
                               DIM=dim, K=passes, BLOCK_N=block_n, BLOCK_B=block_b, BLOCK_D=block_d, NUM_STAGES=stages,
                               BF16=corpus.dtype == torch.bfloat16, **extra)
    elif not metric.uses_dot:
        half = half_l1 if half_l1 is not None else (tiles[4] if len(tiles) > 4 else 0)
        half = half if corpus.dtype == torch.float16 else 0  # fp16 sums only over an fp16 corpus
        q = queries.to(torch.float16 if half else torch.float32).contiguous()
        bd = min(block_d, half) if half else block_d
        kernels.l1[grid](corpus, q, cands, n, batch, corpus.stride(0), q.stride(0), cands.stride(0), q_blocks,
                        DIM=dim, K=passes, BLOCK_N=block_n, BLOCK_B=block_b, BLOCK_D=bd, NUM_STAGES=stages,
                        HALF=bool(half), ASM=not interpreted, **extra)
    else:
        # queries in the corpus type (as the cuBLAS path), transposed and zero-padded to the block
        qt = torch.empty((dim, q_blocks * block_b), dtype=corpus.dtype, device=corpus.device)
        qt[:, :batch].copy_(queries.T)  # one kernel (cast + transpose) where the batch fills the blocks
        if batch < qt.shape[1]:
            qt[:, batch:].zero_()
        dummy = norms if norms is not None else cands

        def dot(out, program_tiles: int, tile_step: int, floors):
            kernels.dot[(program_tiles * q_blocks,)](
                corpus, qt, dummy, out, n, batch, corpus.stride(0), qt.stride(0), out.stride(0), q_blocks,
                tile_step, floors if floors is not None else out, floors.stride(0) if floors is not None else 0, k - 1,
                DIM=dim, K=passes, BLOCK_N=block_n, BLOCK_B=block_b, BLOCK_D=block_d, NUM_STAGES=stages,
                HAS_NORMS=norms is not None, IEEE=corpus.dtype == torch.float32, HAS_FLOOR=floors is not None,
                INTERPRETED=interpreted, **extra)

        if floor:
            # the k-th best of every step-th tile bounds each query's k-th best from below
            step = floor_step if floor_step is not None else FLOOR_STEP
            sample_tiles = -(-n_tiles // step)
            sample = torch.empty((batch, sample_tiles * passes), dtype=torch.int64, device=corpus.device)
            dot(sample, sample_tiles, step, None)
            dot(cands, n_tiles, 1, merge_runs(torch, sample, passes) if sample_tiles > 1 else sample)
        else:
            dot(cands, n_tiles, 1, None)
    if cands.shape[1] == k:
        return cands
    return merge_runs(torch, cands, passes)[:, :k]


def merge_runs(torch, keys, k: int):
    """[B, k] best-first of each row of int64 keys [B, runs * k] made of runs of k sorted best
    first (a tile's emit is one). Each `merge_runs` launch keeps the best k of every MERGE_RUNS
    runs, and its output is runs again, so launches repeat until one chunk is left."""
    merge = _kernels().merge_runs
    while True:
        n_runs = keys.shape[1] // k
        chunks = -(-n_runs // MERGE_RUNS)
        out = torch.empty((keys.shape[0], chunks * k), dtype=torch.int64, device=keys.device)
        merge[(keys.shape[0], chunks)](keys, out, n_runs, keys.stride(0), out.stride(0), K=k, RUNS=MERGE_RUNS)
        if chunks == 1:
            return out
        keys = out


def decode_keys(torch, keys, metric: str, q_norms=None):
    """(rows int64 [B, k], scores fp32 [B, k]) of `topk_keys`' keys on their device: what the
    host's `topk.decode_keys` and `Metric.to_scores` give (l2 needs
    |q|^2 [B, 1] fp32), as one launch, so a CUDA graph can end in host-ready results."""
    batch, k = keys.shape
    rows = torch.empty((batch, k), dtype=torch.int64, device=keys.device)
    scores = torch.empty((batch, k), dtype=torch.float32, device=keys.device)
    norms = q_norms.reshape(-1).contiguous() if q_norms is not None else scores
    _kernels().decode_keys[(batch,)](keys, norms, rows, scores, k, keys.stride(0), MODE=Metric.of(metric).mode,
                                     BLOCK_K=_pow2(k))
    return rows, scores
