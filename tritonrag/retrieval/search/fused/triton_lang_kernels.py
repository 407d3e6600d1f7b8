"""Triton-language kernels of `tritonrag.retrieval.search.fused.launch` (imported only where triton exists).

Each program: one tile of BLOCK_N corpus rows x one block of BLOCK_B queries; scores in
registers (fp32), then K passes of "max over the tile's rows, mask the winner" write the
tile's best K per query as 64-bit keys, `tritonrag.retrieval.search.topk.torch_keys`: signed int32
in float order high, MAX_INDEX - row low (the lowest row of equal scores is taken first).
`merge_runs` then keeps the best K of each chunk of those runs of K keys, applied until one
chunk is left per query, and `decode_keys` turns the last keys into rows and the metric's scores.
"""

import triton
import triton.language as tl

MAX_INDEX = tl.constexpr(0xFFFFFFFF)  # mirror of `tritonrag.retrieval.search.topk.MAX_INDEX` (asserted equal by a test)
EMPTY_KEY = tl.constexpr(-9223372036854775808)


@triton.jit
def _widen(x, ASM: tl.constexpr):
    """fp16/bf16 -> fp32 as an opaque inline-asm cvt where ASM: with a plain cast, LLVM sank the
    conversion into every use, so an x broadcast to B queries was converted B times (sm_90 SASS of
    the L1 loop at batch 8: 128 HADD2.F32 beside 256 FADD; with the cvt, 16)."""
    if ASM and x.dtype == tl.float16:
        return tl.inline_asm_elementwise("cvt.f32.f16 $0, $1;", "=r,h", [x], dtype=tl.float32, is_pure=True, pack=1)
    elif ASM and x.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise("cvt.f32.bf16 $0, $1;", "=r,h", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return x.to(tl.float32)


@triton.jit
def _program_block(q_blocks):
    """(tile, query block) of a 1-D grid with the query block fastest: the programs sharing a tile
    run side by side, so all but the first read it from L2 rather than HBM."""
    pid = tl.program_id(0)
    return pid // q_blocks, pid % q_blocks


@triton.jit
def _key_value(key):
    """The fp32 score in a key's high word (the inverse of the ordering in `_emit_topk`)."""
    ordered = (key >> 32).to(tl.int32)
    return (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _floor_scores(floor_ptr, floor_stride, floor_at, qs, q_ok):
    """Each query's floor: the score of key `floor_at` (the k-th best of the sampled tiles) of
    its row of `floor_ptr`; -inf where that key is empty (fewer than k sampled rows), +inf for
    the padding queries of a block (they then count no rows)."""
    key = tl.load(floor_ptr + qs.to(tl.int64) * floor_stride + floor_at, mask=q_ok, other=EMPTY_KEY)
    floor = tl.where(key == EMPTY_KEY, float("-inf"), _key_value(key))
    return tl.where(q_ok, floor, float("inf"))


@triton.jit
def _emit_topk(score, rows, n_rows, qs, n_queries, out_ptr, out_stride, tile, K: tl.constexpr,
               floor, HAS_FLOOR: tl.constexpr):
    """The tile's best K per query as keys, best first. Passes work on the fp32 scores and
    int32 rows (32-bit max/min instead of pairs of 64-bit compares and selects); the max's
    lowest row wins ties. A score of -inf marks a spent or missing row (finite inputs never
    score -inf) and its slot gets EMPTY_KEY.

    With HAS_FLOOR, `floor` [BLOCK_B] is each query's k-th best score over a sample of whole
    tiles, scored by this same program shape (so a row's score is the same bits in both). A row
    below its floor has k better rows already and cannot make the top k: the tile makes only
    as many passes as its most populous query has rows at or above the floor (usually 0 or 1
    of K), and fills the other slots with EMPTY_KEY."""
    neg_inf = float("-inf")
    score = tl.where((rows < n_rows)[:, None], score, neg_inf)
    q_ok = qs < n_queries
    base = out_ptr + qs.to(tl.int64) * out_stride + tile * K
    if HAS_FLOOR:
        above = tl.sum((score >= floor[None, :]).to(tl.int32), axis=0)
        passes = tl.minimum(tl.max(above, axis=0), K)
    else:
        passes = K
    for i in tl.static_range(K):
        if i < passes:
            best = tl.max(score, axis=0)
            row = tl.min(tl.where(score == best[None, :], rows[:, None], 2147483647), axis=0)
            bits = best.to(tl.int32, bitcast=True)
            ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
            key = (ordered.to(tl.int64) << 32) | (MAX_INDEX - row.to(tl.int64))
            key = tl.where(best == neg_inf, EMPTY_KEY, key)
            tl.store(base + i, key, mask=q_ok)
            score = tl.where(rows[:, None] == row[None, :], neg_inf, score)
        else:
            tl.store(base + i, tl.full(qs.shape, EMPTY_KEY, tl.int64), mask=q_ok)


# n_queries and out_stride change with every batch size and k: specialising on them (value 1,
# divisible by 16) compiled a new kernel, seconds each, for most (batch, k) pairs
@triton.jit(do_not_specialize=["n_queries", "out_stride", "q_blocks", "floor_stride", "floor_at"])
def dot_topk(x_ptr, qt_ptr, norms_ptr, out_ptr, n_rows, n_queries, stride_x, stride_qt, out_stride, q_blocks,
             tile_step, floor_ptr, floor_stride, floor_at,
             DIM: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
             BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr, HAS_NORMS: tl.constexpr, IEEE: tl.constexpr,
             HAS_FLOOR: tl.constexpr = False, INTERPRETED: tl.constexpr = False):
    """ip / cosine / squared L2 (2 q.x - |x|^2): x [N, DIM], qt [DIM, B padded] in x's dtype.

    Equal rows must score the same bits in every tile and at every place in a tile (ties go to
    the lower row). A GPU's MMA computes every element of a tile the same way; triton's CPU
    interpreter evaluates `tl.dot` with BLAS, whose order of summation depends on an element's
    place in the tile on some CPUs. INTERPRETED therefore accumulates in fp64 and rounds once
    (the reasoning of `tritonrag.retrieval.search.exact.ExactSearch`), which makes the order not matter.

    Program tile t scores corpus tile t * tile_step (1: every tile; more: the sample of
    `fused_topk.topk_keys`' floors) and writes its keys at slot t. HAS_FLOOR: floors from the keys
    at `floor_ptr` (see `_emit_topk`)."""
    tile, qb = _program_block(q_blocks)
    rows = (tile * tile_step) * BLOCK_N + tl.arange(0, BLOCK_N)
    qs = qb * BLOCK_B + tl.arange(0, BLOCK_B)
    ds = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    x_ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_x + ds[None, :]
    q_ptrs = qt_ptr + ds[:, None] * stride_qt + qs[None, :]
    if INTERPRETED:
        acc = tl.zeros((BLOCK_N, BLOCK_B), tl.float64)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_B), tl.float32)
    for d0 in tl.range(0, DIM, BLOCK_D, num_stages=NUM_STAGES):
        if DIM % BLOCK_D == 0:  # no d mask: the loads vectorize
            x = tl.load(x_ptrs + d0, mask=row_ok[:, None], other=0.0)
            q = tl.load(q_ptrs + d0 * stride_qt)
        else:
            d_ok = (d0 + ds) < DIM
            x = tl.load(x_ptrs + d0, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            q = tl.load(q_ptrs + d0 * stride_qt, mask=d_ok[:, None], other=0.0)
        if INTERPRETED:
            acc = tl.dot(x.to(tl.float64), q.to(tl.float64), acc, out_dtype=tl.float64)
        elif IEEE:  # fp32 storage: no TF32 rounding
            acc = tl.dot(x, q, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, q, acc)
    acc = acc.to(tl.float32)
    if HAS_NORMS:
        norms = tl.load(norms_ptr + rows, mask=row_ok, other=0.0)
        acc = 2.0 * acc - norms[:, None]
    floor = _floor_scores(floor_ptr, floor_stride, floor_at, qs, qs < n_queries) if HAS_FLOOR else None
    _emit_topk(acc, rows, n_rows, qs, n_queries, out_ptr, out_stride, tile, K, floor, HAS_FLOOR)


@triton.jit(do_not_specialize=["n_queries", "out_stride", "q_blocks"])
def l1_topk(x_ptr, q_ptr, out_ptr, n_rows, n_queries, stride_x, stride_q, out_stride, q_blocks,
            DIM: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
            BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr, HALF: tl.constexpr, ASM: tl.constexpr):
    """-sum|x - q|: HALF sums fp16 differences over BLOCK_D dims, in fp32 across blocks.

    The difference tile is [BLOCK_D, BLOCK_N, BLOCK_B] with d first: Triton then keeps a
    thread's d values in its registers and sums them without shuffles (d last, the sum took
    384 SHFL per loop step on sm_90; d first, none: SASS of ptxas from this triton wheel).
    ASM widens x with `_widen` (not available to the interpreter).
    """
    tile, qb = _program_block(q_blocks)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    qs = qb * BLOCK_B + tl.arange(0, BLOCK_B)
    ds = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    q_ok = qs < n_queries
    x_ptrs = x_ptr + rows.to(tl.int64)[None, :] * stride_x + ds[:, None]   # [BLOCK_D, BLOCK_N]
    q_ptrs = q_ptr + qs[None, :] * stride_q + ds[:, None]                  # [BLOCK_D, BLOCK_B]
    acc = tl.zeros((BLOCK_N, BLOCK_B), tl.float32)
    for d0 in tl.range(0, DIM, BLOCK_D, num_stages=NUM_STAGES):
        if DIM % BLOCK_D == 0:
            x = tl.load(x_ptrs + d0, mask=row_ok[None, :], other=0.0)
            q = tl.load(q_ptrs + d0, mask=q_ok[None, :], other=0.0)
        else:
            d_ok = (d0 + ds) < DIM
            x = tl.load(x_ptrs + d0, mask=d_ok[:, None] & row_ok[None, :], other=0.0)
            q = tl.load(q_ptrs + d0, mask=d_ok[:, None] & q_ok[None, :], other=0.0)
        if HALF:  # packed fp16 (HADD2): about twice the fp32 rate
            diff = tl.abs(x.to(tl.float16)[:, :, None] - q.to(tl.float16)[:, None, :])
            acc += tl.sum(diff, axis=0).to(tl.float32)
        else:
            diff = tl.abs(_widen(x, ASM)[:, :, None] - q.to(tl.float32)[:, None, :])
            acc += tl.sum(diff, axis=0)
    _emit_topk(-acc, rows, n_rows, qs, n_queries, out_ptr, out_stride, tile, K, None, False)


@triton.jit
def _half_words(w, j: tl.constexpr, BF16: tl.constexpr):
    """The j-th 16-bit value of int64 words w (fp16 or bf16 bits) as fp32, by integer ops: as
    fast as an inline-asm unpack, and the interpreter runs it."""
    bits = (w >> (16 * j)) & 0xFFFF
    if BF16:
        return (bits << 16).to(tl.int32).to(tl.float32, bitcast=True)
    else:
        return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit(do_not_specialize=["n_queries", "out_stride", "q_blocks"])
def l1_words_topk(x_ptr, q_ptr, out_ptr, n_rows, n_queries, stride_x, stride_q, out_stride, q_blocks,
                  DIM: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr, BF16: tl.constexpr):
    """-sum|x - q| in fp32 for a 16-bit corpus read as int64 words of 4 values (DIM % BLOCK_D == 0,
    rows 8-byte aligned), on [BLOCK_B, words, BLOCK_N] tiles: queries first, so that a thread
    holds every query of its corpus values and widens each value once. `l1_topk` at batch 8 ran
    476 instructions per 256 FADD in its loop, with x as 2-byte scalar loads widened once per
    query. Here the loads are 8-byte cp.async and the loop has 1.3-1.5 instructions per FADD."""
    tile, qb = _program_block(q_blocks)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    qs = qb * BLOCK_B + tl.arange(0, BLOCK_B)
    ws = tl.arange(0, BLOCK_D // 4)
    row_ok = rows < n_rows
    q_ok = qs < n_queries
    words = x_ptr.to(tl.pointer_type(tl.int64))
    x_ptrs = words + rows.to(tl.int64)[None, :] * (stride_x // 4) + ws[:, None]   # [words, BLOCK_N]
    q_ptrs = q_ptr + qs[:, None] * stride_q + 4 * ws[None, :]                      # [BLOCK_B, words]
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    for d0 in tl.range(0, DIM, BLOCK_D, num_stages=NUM_STAGES):
        w = tl.load(x_ptrs + d0 // 4, mask=row_ok[None, :], other=0)
        q0 = tl.load(q_ptrs + d0, mask=q_ok[:, None], other=0.0)
        q1 = tl.load(q_ptrs + d0 + 1, mask=q_ok[:, None], other=0.0)
        q2 = tl.load(q_ptrs + d0 + 2, mask=q_ok[:, None], other=0.0)
        q3 = tl.load(q_ptrs + d0 + 3, mask=q_ok[:, None], other=0.0)
        diff = (tl.abs(_half_words(w, 0, BF16)[None, :, :] - q0[:, :, None])
                + tl.abs(_half_words(w, 1, BF16)[None, :, :] - q1[:, :, None]))
        diff += (tl.abs(_half_words(w, 2, BF16)[None, :, :] - q2[:, :, None])
                 + tl.abs(_half_words(w, 3, BF16)[None, :, :] - q3[:, :, None]))
        acc += tl.sum(diff, axis=1)
    _emit_topk(-tl.trans(acc), rows, n_rows, qs, n_queries, out_ptr, out_stride, tile, K, None, False)


@triton.jit(do_not_specialize=["n_runs", "in_stride", "out_stride"])
def merge_runs(in_ptr, out_ptr, n_runs, in_stride, out_stride, K: tl.constexpr, RUNS: tl.constexpr):
    """Grid (queries, chunks): the best K keys (best first) of runs [c*RUNS, (c+1)*RUNS) of a
    query's keys, which come in runs of K sorted best first (a tile's emit, a merge's output),
    to out[q, c*K ...]. K steps over the runs' heads, each taking the best head and moving that
    run on (keys name their rows, so they are unique but EMPTY_KEY), where a step over all
    RUNS * K keys would do K times the work."""
    q = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    runs = chunk * RUNS + tl.arange(0, RUNS)
    ok = runs < n_runs
    row = in_ptr + q * in_stride + runs.to(tl.int64) * K
    pos = tl.zeros((RUNS,), tl.int32)
    heads = tl.load(row, mask=ok, other=EMPTY_KEY)
    base = out_ptr + q * out_stride + chunk * K
    for i in tl.static_range(K):
        best = tl.max(heads, axis=0)
        tl.store(base + i, best)
        if i + 1 < K:
            win = heads == best  # one run (keys name rows), or all spent runs once best is EMPTY_KEY
            pos += win.to(tl.int32)
            nxt = tl.load(row + pos, mask=win & ok & (pos < K), other=EMPTY_KEY)
            heads = tl.where(win, nxt, heads)


@triton.jit(do_not_specialize=["k", "keys_stride"])
def decode_keys(keys_ptr, q_norms_ptr, rows_ptr, scores_ptr, k, keys_stride, MODE: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """Grid (queries,): a query's k keys -> corpus rows (int64) and reported scores (fp32), the
    same fp32 operations as the host's `topk.decode_keys` + `Metric.to_scores`. MODE (`Metric.mode`) 0: the value
    itself (ip, cosine); 1: squared L2, max(|q|^2 - (2 q.x - |x|^2), 0); 2: L1, -value."""
    q = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_K)
    ok = i < k
    key = tl.load(keys_ptr + q * keys_stride + i, mask=ok, other=0)
    value = _key_value(key)
    if MODE == 1:
        value = tl.maximum(tl.load(q_norms_ptr + q) - value, 0.0)
    elif MODE == 2:
        value = -value
    tl.store(rows_ptr + q * k + i, MAX_INDEX - (key & MAX_INDEX), mask=ok)
    tl.store(scores_ptr + q * k + i, value, mask=ok)
