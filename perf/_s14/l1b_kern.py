import triton, triton.language as tl, sys, subprocess
from tritonrag.fused_kernels import _program_block, _emit_topk, _widen
C = "constexpr"

@triton.jit
def _unpack4(w):
    return tl.inline_asm_elementwise(
        "{ .reg .b16 a, b, c, d; mov.b64 {a, b, c, d}, $4; cvt.f32.f16 $0, a; cvt.f32.f16 $1, b; cvt.f32.f16 $2, c; cvt.f32.f16 $3, d; }",
        "=r,=r,=r,=r,l", [w], dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1)

@triton.jit
def _unpack4_bits(w):
    a = (w & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    b = ((w >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    c = ((w >> 32) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    d = ((w >> 48) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return a, b, c, d


@triton.jit
def l1b(x_ptr, q_ptr, out_ptr, n_rows, n_queries, stride_x, stride_q, out_stride, q_blocks,
        DIM: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
        BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr, PACK: tl.constexpr, ASM: tl.constexpr = True):
    tile, qb = _program_block(q_blocks)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    qs = qb * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < n_rows
    q_ok = qs < n_queries
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    if PACK:
        W: tl.constexpr = BLOCK_D // 4
        ws = tl.arange(0, W)
        xw = x_ptr.to(tl.pointer_type(tl.int64))
        x_ptrs = xw + rows.to(tl.int64)[None, :] * (stride_x // 4) + ws[:, None]      # [W, N]
        q_ptrs = q_ptr + qs[:, None] * stride_q + 4 * ws[None, :]                    # [B, W]
        for d0 in tl.range(0, DIM, BLOCK_D, num_stages=NUM_STAGES):
            w = tl.load(x_ptrs + d0 // 4, mask=row_ok[None, :], other=0)
            if PACK == 2:
                x0, x1, x2, x3 = _unpack4_bits(w)
            else:
                x0, x1, x2, x3 = _unpack4(w)
            q0 = tl.load(q_ptrs + d0, mask=q_ok[:, None], other=0.0)
            q1 = tl.load(q_ptrs + d0 + 1, mask=q_ok[:, None], other=0.0)
            q2 = tl.load(q_ptrs + d0 + 2, mask=q_ok[:, None], other=0.0)
            q3 = tl.load(q_ptrs + d0 + 3, mask=q_ok[:, None], other=0.0)
            diff = tl.abs(x0[None, :, :] - q0[:, :, None]) + tl.abs(x1[None, :, :] - q1[:, :, None])
            diff += tl.abs(x2[None, :, :] - q2[:, :, None]) + tl.abs(x3[None, :, :] - q3[:, :, None])
            acc += tl.sum(diff, axis=1)
    else:
        ds = tl.arange(0, BLOCK_D)
        x_ptrs = x_ptr + rows.to(tl.int64)[None, :] * stride_x + ds[:, None]   # [D, N]
        q_ptrs = q_ptr + qs[:, None] * stride_q + ds[None, :]                  # [B, D]
        for d0 in tl.range(0, DIM, BLOCK_D, num_stages=NUM_STAGES):
            x = tl.load(x_ptrs + d0, mask=row_ok[None, :], other=0.0)
            q = tl.load(q_ptrs + d0, mask=q_ok[:, None], other=0.0)
            acc += tl.sum(tl.abs(_widen(x, ASM)[None, :, :] - q[:, :, None]), axis=1)
    _emit_topk(-tl.trans(acc), rows, n_rows, qs, n_queries, out_ptr, out_stride, tile, K)

