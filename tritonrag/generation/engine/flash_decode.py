"""Split-KV ("flash-decoding") attention for one decode step, in the Triton language.

Why: SDPA over a length bucket reads every cached position up to the bucket's end (an
additive mask hides the rest) and gives each (row, KV head) pair one thread block, so at
batch 32 with 2 KV heads only 64 blocks stream the cache on a 132-SM GPU. Here each
(row, KV head) pair is cut into `splits` chunks of the sequence axis; each program reads
its chunk of that head's keys and values once, only up to the row's own length (read from
a device tensor, so the launch is CUDA-graph capturable: no host sync, no shape that
depends on the lengths), for all `group` query heads that share the KV head at once
(one `tl.dot` of `[group, D] x [D, BLOCK_N]`). A second small kernel merges the chunks'
partial results with their log-sum-exp.

Works on CUDA tensors, and on CPU tensors with `TRITON_INTERPRET=1` (tests).
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)
_tuning = True        # off after a failed autotuning

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install may have no triton: the engine then uses SDPA
    triton = None

BLOCK_N = 64          # keys per inner iteration


def available() -> bool:
    return triton is not None


def interpreted() -> bool:
    """Kernels run by Triton's interpreter (CPU tensors): set before triton was imported."""
    import os

    return triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    @triton.jit
    def _split_kernel(qkv_ptr, kv_ptr, pos_ptr, cos_ptr, sin_ptr, part_ptr, lse_ptr, out_ptr, scale, split_len,
                      n_rows, s_xb, s_xh, s_cb, s_ch, s_cl, s_rl, s_pb, s_ph, s_ps, s_pg, s_lb, s_lh, s_ls,
                      s_ob, s_oh, s_og,
                      HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                      D: tl.constexpr, BLOCK: tl.constexpr, ROPE: tl.constexpr, STORE: tl.constexpr,
                      DIRECT: tl.constexpr, PRECISION: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        pos = tl.load(pos_ptr + b).to(tl.int32)       # this step's position: keys 0 .. pos
        start = s * split_len
        end = tl.minimum(start + split_len, pos + 1)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, D)
        swap_d = (offs_d + D // 2) % D                  # rotate_half's partner of each element
        offs_n = tl.arange(0, BLOCK)
        g_ok = offs_g < GROUP
        q_rows = qkv_ptr + b * s_xb + (h * GROUP + offs_g)[:, None] * s_xh
        q = tl.load(q_rows + offs_d[None, :], mask=g_ok[:, None], other=0.0).to(tl.float32)
        k_new = tl.load(qkv_ptr + b * s_xb + (HEADS + h) * s_xh + offs_d).to(tl.float32)
        if ROPE:   # rotary embedding of q and the new k at `pos` (sin signed: x*cos + swap(x)*sin)
            cos = tl.load(cos_ptr + pos * s_rl + offs_d).to(tl.float32)
            sin = tl.load(sin_ptr + pos * s_rl + offs_d).to(tl.float32)
            q_swap = tl.load(q_rows + swap_d[None, :], mask=g_ok[:, None], other=0.0).to(tl.float32)
            q = q * cos[None, :] + q_swap * sin[None, :]
            k_swap = tl.load(qkv_ptr + b * s_xb + (HEADS + h) * s_xh + swap_d).to(tl.float32)
            k_new = k_new * cos + k_swap * sin
        q = q.to(kv_ptr.dtype.element_ty)
        k_new = k_new.to(kv_ptr.dtype.element_ty)
        v_new = tl.load(qkv_ptr + b * s_xb + (HEADS + KV_HEADS + h) * s_xh + offs_d)
        k_base = kv_ptr + b * s_cb + h * s_ch
        v_base = kv_ptr + b * s_cb + (h + KV_HEADS) * s_ch
        owner = (pos >= start) & (pos < start + split_len)
        if STORE:  # the chunk that holds `pos` writes this token's K and V for the later steps
            tl.store(k_base + pos * s_cl + offs_d, k_new, mask=owner & (offs_d < D))
            tl.store(v_base + pos * s_cl + offs_d, v_new.to(kv_ptr.dtype.element_ty), mask=owner & (offs_d < D))
        m = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l = tl.full([BLOCK_G], 0.0, tl.float32)
        acc = tl.full([BLOCK_G, D], 0.0, tl.float32)
        # cached keys before `pos` (read, never the slot being written) ...
        cached_end = tl.minimum(end, pos)
        for n0 in range(start, cached_end, BLOCK):
            n = n0 + offs_n
            ok = n < cached_end
            k = tl.load(k_base + n[:, None] * s_cl + offs_d[None, :], mask=ok[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            scores = tl.where(ok[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, 1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_base + n[:, None] * s_cl + offs_d[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        # ... then the new token itself, from registers
        if owner:
            score = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * scale
            m_new = tl.maximum(m, score)
            p1 = tl.exp(score - m_new)
            alpha = tl.exp(m - m_new)
            l = l * alpha + p1
            acc = acc * alpha[:, None] + p1[:, None] * v_new.to(tl.float32)[None, :]
            m = m_new
        # an empty chunk (past the row's length) leaves lse = -inf: weight 0 in the merge
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        if DIRECT:  # one chunk: this is the result
            tl.store(out_ptr + b * s_ob + h * s_oh + offs_g[:, None] * s_og + offs_d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])
        else:
            lse = m + tl.log(tl.where(l > 0, l, 1.0))
            tl.store(part_ptr + b * s_pb + h * s_ph + s * s_ps + offs_g[:, None] * s_pg + offs_d[None, :], out,
                     mask=g_ok[:, None])
            tl.store(lse_ptr + b * s_lb + h * s_lh + s * s_ls + offs_g, lse, mask=g_ok)

    # keys per iteration and warps, chosen per (batch, chunk) bucket at the engine's warm-up,
    # before the CUDA graphs are captured (~0.1 s per bucket with the short timing below)
    _TUNED = triton.autotune(
        configs=[triton.Config({"BLOCK": 64}, num_warps=4, num_stages=2),
                 triton.Config({"BLOCK": 64}, num_warps=4, num_stages=3),
                 triton.Config({"BLOCK": 128}, num_warps=4, num_stages=2),
                 triton.Config({"BLOCK": 128}, num_warps=8, num_stages=2),
                 triton.Config({"BLOCK": 32}, num_warps=2, num_stages=3)],
        key=["split_len", "n_rows", "HEADS", "KV_HEADS", "D"],
        do_bench=lambda fn, quantiles: triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles),
    )(_split_kernel)

    @triton.jit
    def _merge_kernel(part_ptr, lse_ptr, out_ptr, splits,
                      s_pb, s_ph, s_ps, s_pg, s_lb, s_lh, s_ls, s_ob, s_oh, s_og,
                      GROUP: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr):
        b = tl.program_id(0)
        hg = tl.program_id(1)
        h = hg // GROUP
        g = hg % GROUP
        offs_s = tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, D)
        s_ok = offs_s < splits
        lse = tl.load(lse_ptr + b * s_lb + h * s_lh + offs_s * s_ls + g, mask=s_ok, other=float("-inf"))
        top = tl.max(lse, 0)
        w = tl.where(s_ok & (lse > float("-inf")), tl.exp(lse - top), 0.0)
        parts = tl.load(part_ptr + b * s_pb + h * s_ph + offs_s[:, None] * s_ps + g * s_pg + offs_d[None, :],
                        mask=s_ok[:, None], other=0.0)
        out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
        tl.store(out_ptr + b * s_ob + h * s_oh + g * s_og + offs_d, out.to(out_ptr.dtype.element_ty))


def plan_splits(rows: int, kv_heads: int, length: int, sms: int, waves: float = 2.0) -> int:
    """Chunk length along the keys: enough programs to fill the GPU `waves` times, chunks of
    at least BLOCK_N keys. Depends on the bucket only, so a captured graph keeps it."""
    want = max(1, math.ceil(waves * sms / max(rows * kv_heads, 1)))
    splits = max(1, min(want, math.ceil(length / BLOCK_N)))
    return math.ceil(math.ceil(length / splits) / BLOCK_N) * BLOCK_N


def decode_attention(qkv, cache, positions, scale: float, split_len: int, heads: int,
                     cos=None, sin=None, store: bool = True, tune: bool = True):
    """Attention of one new token per row over its cached keys `0 .. positions[row]`.

    qkv: `[B, heads + 2 * kv_heads, D]`, this step's projections (q heads, then k, then v);
    with `cos`/`sin` (`[max_len, D]`, sin signed as `rotate_half(x) * sin == swap(x) * sin`)
    the rotary embedding of q and k is applied here. cache: one layer's
    `[slots >= B, 2 * kv_heads, bucket, D]` (keys, then values); with `store` this token's K
    and V are written at `positions[row]` by the program that owns that chunk, and its own
    score is taken from registers, so no program reads a slot being written.
    positions: int tensor `[B]` on the device; split_len: keys per chunk (`plan_splits`).
    With `tune` the kernel's block size and warps are autotuned per (split_len, B) on first use
    (which must not be inside a CUDA-graph capture: the engine warms each bucket up first).
    The `group = heads / kv_heads` query heads sharing a KV head are one `tl.dot`'s rows.
    Returns `[B, kv_heads, group, D]` in the cache's dtype.
    """
    import torch

    rows, _, dim = qkv.shape
    kv_heads = cache.shape[1] // 2
    group = heads // kv_heads
    splits = math.ceil(cache.shape[2] / split_len)
    if qkv.stride(-1) != 1 or cache.stride(-1) != 1:
        raise ValueError("qkv and the cache need a contiguous last axis")
    out = torch.empty((rows, kv_heads, group, dim), dtype=cache.dtype, device=qkv.device)
    direct = splits == 1
    shape = (rows, kv_heads, splits, group) if not direct else (1, 1, 1, 1)
    part = torch.empty(shape + (dim,), dtype=torch.float32, device=qkv.device)
    lse = torch.empty(shape, dtype=torch.float32, device=qkv.device)
    rope = cos is not None
    if not rope:
        cos = sin = qkv   # unused
    block_g = max(16, triton.next_power_of_2(group))
    args = (qkv, cache, positions, cos, sin, part, lse, out, scale, split_len, rows,
            qkv.stride(0), qkv.stride(1), cache.stride(0), cache.stride(1), cache.stride(2), cos.stride(0),
            part.stride(0), part.stride(1), part.stride(2), part.stride(3), lse.stride(0), lse.stride(1),
            lse.stride(2), out.stride(0), out.stride(1), out.stride(2))
    # fp32 caches (CPU-shaped tests on a GPU) multiply in full fp32, not TF32; bf16/fp16 use the default
    consts = dict(HEADS=heads, KV_HEADS=kv_heads, GROUP=group, BLOCK_G=block_g, D=dim, ROPE=rope, STORE=store,
                  DIRECT=direct, PRECISION="ieee" if cache.dtype == torch.float32 else "tf32")
    global _tuning
    if tune and _tuning and not interpreted():
        try:
            _TUNED[(rows, kv_heads, splits)](*args, **consts)
            return _merge(part, lse, out, splits, group, dim, direct)
        except Exception:  # noqa: BLE001 — (at warm-up) keep the fixed configuration instead
            log.exception("autotuning the split-KV kernel failed; using BLOCK=%d, 4 warps", BLOCK_N)
            _tuning = False
    _split_kernel[(rows, kv_heads, splits)](*args, **consts, BLOCK=BLOCK_N, num_warps=4, num_stages=2)
    return _merge(part, lse, out, splits, group, dim, direct)


def _merge(part, lse, out, splits: int, group: int, dim: int, direct: bool):
    rows, kv_heads = out.shape[:2]
    if not direct:
        _merge_kernel[(rows, kv_heads * group)](
            part, lse, out, splits,
            part.stride(0), part.stride(1), part.stride(2), part.stride(3), lse.stride(0), lse.stride(1),
            lse.stride(2), out.stride(0), out.stride(1), out.stride(2),
            GROUP=group, D=dim, BLOCK_S=max(2, triton.next_power_of_2(splits)), num_warps=2)
    return out
