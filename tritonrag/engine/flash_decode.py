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

import math

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU install may have no triton: the engine then uses SDPA
    triton = None

BLOCK_N = 64          # keys per inner iteration


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _split_kernel(q_ptr, kv_ptr, len_ptr, part_ptr, lse_ptr, scale, split_len,
                      s_qb, s_qh, s_qg, s_cb, s_ch, s_cl, s_pb, s_ph, s_ps, s_pg, s_lb, s_lh, s_ls,
                      KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                      D: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        length = tl.load(len_ptr + b).to(tl.int32)
        start = s * split_len
        end = tl.minimum(start + split_len, length)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, D)
        offs_n = tl.arange(0, BLOCK)
        g_ok = offs_g < GROUP
        q = tl.load(q_ptr + b * s_qb + h * s_qh + offs_g[:, None] * s_qg + offs_d[None, :],
                    mask=g_ok[:, None], other=0.0)
        k_base = kv_ptr + b * s_cb + h * s_ch
        v_base = kv_ptr + b * s_cb + (h + KV_HEADS) * s_ch
        m = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        for n0 in range(start, end, BLOCK):
            n = n0 + offs_n
            ok = n < end
            k = tl.load(k_base + n[:, None] * s_cl + offs_d[None, :], mask=ok[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k)) * scale
            scores = tl.where(ok[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, 1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_base + n[:, None] * s_cl + offs_d[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        # an empty chunk (past the row's length) leaves lse = -inf: weight 0 in the merge
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        lse = m + tl.log(tl.where(l > 0, l, 1.0))
        tl.store(part_ptr + b * s_pb + h * s_ph + s * s_ps + offs_g[:, None] * s_pg + offs_d[None, :], out,
                 mask=g_ok[:, None])
        tl.store(lse_ptr + b * s_lb + h * s_lh + s * s_ls + offs_g, lse, mask=g_ok)

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


def decode_attention(q, cache, lengths, scale: float, split_len: int, out=None):
    """Attention of one new query per row over its cached keys `0 .. lengths[row]-1`.

    q: `[B, kv_heads, group, D]` (the query heads that share a KV head as its rows);
    cache: one layer's `[slots >= B, 2 * kv_heads, max_len, D]` (keys, then values);
    lengths: int tensor `[B]` on the device (position + 1); split_len: keys per chunk
    (`plan_splits`). Returns `[B, kv_heads, group, D]` in q's dtype.
    """
    import torch

    rows, kv_heads, group, dim = q.shape
    max_len = cache.shape[2]
    splits = math.ceil(max_len / split_len)
    if q.stride(-1) != 1 or cache.stride(-1) != 1:
        raise ValueError("q and the cache need a contiguous last axis")
    part = torch.empty((rows, kv_heads, splits, group, dim), dtype=torch.float32, device=q.device)
    lse = torch.empty((rows, kv_heads, splits, group), dtype=torch.float32, device=q.device)
    if out is None:
        out = torch.empty_like(q)
    block_g = max(16, triton.next_power_of_2(group))
    _split_kernel[(rows, kv_heads, splits)](
        q, cache, lengths, part, lse, scale, split_len,
        q.stride(0), q.stride(1), q.stride(2), cache.stride(0), cache.stride(1), cache.stride(2),
        part.stride(0), part.stride(1), part.stride(2), part.stride(3), lse.stride(0), lse.stride(1), lse.stride(2),
        KV_HEADS=kv_heads, GROUP=group, BLOCK_G=block_g, D=dim, BLOCK=BLOCK_N, num_warps=4, num_stages=2)
    _merge_kernel[(rows, kv_heads * group)](
        part, lse, out, splits,
        part.stride(0), part.stride(1), part.stride(2), part.stride(3), lse.stride(0), lse.stride(1), lse.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        GROUP=group, D=dim, BLOCK_S=max(2, triton.next_power_of_2(splits)), num_warps=2)
    return out
