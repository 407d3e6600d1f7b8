"""The decode step's small per-layer ops as single Triton kernels (CUDA, or CPU tensors
under `TRITON_INTERPRET=1`).

Why: inside a CUDA graph a decode step's cost beyond the matmuls is its count of small
kernels: eager torch spends 2 norms + 2 residual copies (`addmm`'s beta input) + silu + mul
per layer. Here a residual add and the following RMSNorm are one kernel (the residual stream
updated in place), and silu(gate) * up is one. For prefill, the rotary embedding and the K/V
cache store are one kernel instead of 4 (docs/decisions/0054-decode-engine-kernels.md).
"""

from __future__ import annotations

from .flash_decode import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, y_ptr, w_ptr, out_ptr, n, eps, s_x, s_y, s_o,
                             ADD: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        ok = offs < n
        x = tl.load(x_ptr + row * s_x + offs, mask=ok, other=0.0)
        if ADD:   # the residual add, rounded to the stream's dtype as transformers' is
            x = (x.to(tl.float32) + tl.load(y_ptr + row * s_y + offs, mask=ok, other=0.0).to(tl.float32))
            x = x.to(x_ptr.dtype.element_ty)
            tl.store(x_ptr + row * s_x + offs, x, mask=ok)
        xf = x.to(tl.float32)
        rms = tl.rsqrt(tl.sum(xf * xf, 0) / n + eps)
        w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * s_o + offs, (xf * rms * w).to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, n, s_g, s_o, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        gate = tl.load(gu_ptr + row * s_g + offs, mask=ok, other=0.0).to(tl.float32)
        up = tl.load(gu_ptr + row * s_g + n + offs, mask=ok, other=0.0).to(tl.float32)
        act = gate / (1.0 + tl.exp(-gate))
        tl.store(out_ptr + row * s_o + offs, (act * up).to(out_ptr.dtype.element_ty), mask=ok)


if triton is not None:
    @triton.jit
    def _rope_store_kernel(qkv_ptr, kv_ptr, slot_ptr, cos_ptr, sin_ptr, tokens, width, s_xt, s_xh, s_cb, s_ch, s_cl,
                           s_rl, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr,
                           BLOCK_T: tl.constexpr):
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        head = tl.program_id(1)
        ok = (t < tokens)[:, None]
        pos = (t % width)[:, None]
        offs = tl.arange(0, D)[None, :]
        rows = qkv_ptr + t[:, None] * s_xt + head * s_xh
        x = tl.load(rows + offs, mask=ok)
        if head < HEADS + KV_HEADS:     # q and k heads: rotate in place
            swapped = tl.load(rows + (offs + D // 2) % D, mask=ok).to(tl.float32)
            cos = tl.load(cos_ptr + pos * s_rl + offs, mask=ok).to(tl.float32)
            sin = tl.load(sin_ptr + pos * s_rl + offs, mask=ok).to(tl.float32)
            x = (x.to(tl.float32) * cos + swapped * sin).to(qkv_ptr.dtype.element_ty)
            tl.debug_barrier()          # every lane has read its partner before any writes
            tl.store(rows + offs, x, mask=ok)
        if head >= HEADS:               # k and v heads: into the cache row of this prompt
            slot = tl.load(slot_ptr + t // width, mask=t < tokens)[:, None]
            tl.store(kv_ptr + slot * s_cb + (head - HEADS) * s_ch + pos * s_cl + offs,
                     x.to(kv_ptr.dtype.element_ty), mask=ok)


def rope_store(qkv, cache, slots, width: int, cos, sin, heads: int, block_tokens: int = 16):
    """Prefill: rotate the q and k heads of `qkv` `[n * width, heads + 2 * kv_heads, D]` in place
    (token t at position t % width) and write k and v into `cache` `[slots, 2 * kv_heads, max_len, D]`
    at row `slots[t // width]`. `sin` is signed as in `flash_decode.decode_attention`.
    A program takes `block_tokens` tokens of one head: one token per program (one warp each)
    would leave most of each warp idle."""
    tokens, all_heads, dim = qkv.shape
    kv_heads = (all_heads - heads) // 2
    _rope_store_kernel[(triton.cdiv(tokens, block_tokens), all_heads)](
        qkv, cache, slots, cos, sin, tokens, width, qkv.stride(0), qkv.stride(1), cache.stride(0), cache.stride(1),
        cache.stride(2), cos.stride(0), HEADS=heads, KV_HEADS=kv_heads, D=dim, BLOCK_T=block_tokens, num_warps=4)


def add_rms_norm(x, y, weight, eps: float):
    """`x += y` in place (when y is not None), then RMSNorm(x) * weight as a new tensor.
    x, y: `[rows, hidden]` with a contiguous last axis."""
    import torch

    rows, n = x.shape
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(rows,)](x, y if y is not None else x, weight, out, n, eps, x.stride(0),
                                  (y if y is not None else x).stride(0), out.stride(0),
                                  ADD=y is not None, BLOCK=triton.next_power_of_2(n), num_warps=4)
    return out


def silu_mul(gate_up):
    """silu(gate) * up for `gate_up = [gate | up]` of shape `[rows, 2 * inter]`."""
    import torch

    rows, width = gate_up.shape
    n = width // 2
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(n, block))](gate_up, out, n, gate_up.stride(0), out.stride(0),
                                                    BLOCK=block, num_warps=4)
    return out
