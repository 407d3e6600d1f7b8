"""The decode step's skinny products `y[M, N] = x[M, K] @ W[N, K]^T (+ bias)` as a Triton kernel.

Why: at decode time M is the batch (1..256) and every weight byte is read once per step, so
the matmuls are memory-bound, and cuBLAS stays well below the bandwidth of a device copy
on them. The kernel here is "swap AB": each program computes `y^T` tile
`[BLOCK_N, BLOCK_M] = W[BLOCK_N, K] @ x^T[K, BLOCK_M]`, so the weight's rows fill the MMA's
M side (64/128) and the small batch is its N side (16..256, no padding to 64). Weight tiles
stream through `num_stages` shared-memory buffers. Projections with too few row blocks to
fill the GPU (o, qkv, down: N = 1536..2048) are split along K: each split writes an fp32
partial and a second small kernel sums the splits in a fixed order (deterministic: the same
row gives the same bits alone or in any batch; no float atomics), adding the bias there.
`gate_up_silu` computes the gate and up tiles of the same rows in one program and writes
silu(gate) * up, so the [M, 2 I] product is never stored.

It is faster than cuBLAS only at small M and for some projections, so the engine uses it
only where its warm-up timed it faster (gemm="auto"; docs/decisions/0054-decode-engine-kernels.md).

Works on CUDA tensors, and on CPU tensors with `TRITON_INTERPRET=1` (tests). CUDA-graph
capturable: no host syncs, the configuration is chosen on the host from the shapes alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .flash_decode import triton

if triton is not None:
    import triton.language as tl


@dataclass(frozen=True)
class GemmConfig:
    """One launch configuration; `splits` is the number of K slices (1: no partials)."""
    block_n: int = 128
    block_k: int = 128
    block_m: int = 64
    splits: int = 1
    warps: int = 4
    stages: int = 4
    rows: int = 0        # weight rows per program when fewer than block_n (0: block_n), so that the
    # programs come out at ~a whole number of waves over the SMs (as cuBLAS's 144-row tiles do)

    def rows_per_program(self) -> int:
        return self.rows or self.block_n

    def smem_bytes(self, elem: int = 2) -> int:
        return self.stages * (self.block_n + self.block_m) * self.block_k * elem


if triton is not None:
    @triton.jit
    def _skinny_kernel(x_ptr, w_ptr, b_ptr, y_ptr, part_ptr, M, N, K, k_split, rows, s_xm, s_wn, s_ym, s_ps, s_pm,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                       EVEN_K: tl.constexpr, PARTIAL: tl.constexpr, PART_ROWS: tl.constexpr,
                       PRECISION: tl.constexpr):
        pid_m = tl.program_id(0)      # fastest: the M tiles of one weight block run side by side (L2 reuse)
        pid_n = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_n = pid_n * rows + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = tl.arange(0, BLOCK_K)
        if PART_ROWS:   # `rows` < BLOCK_N weight rows: the others masked (no memory traffic)
            n_ok = (tl.arange(0, BLOCK_N) < rows) & (offs_n < N)
            rows_n = tl.where(n_ok, offs_n, 0)
        else:           # rows past N wrap onto valid ones (loads need no mask); their results are not stored
            n_ok = offs_n < N
            rows_n = offs_n % N
        rows_m = offs_m % M
        k_start = pid_s * k_split
        k_end = tl.minimum(k_start + k_split, K)
        w_ptrs = w_ptr + rows_n[:, None] * s_wn + (k_start + offs_k)[None, :]
        x_ptrs = x_ptr + rows_m[None, :] * s_xm + (k_start + offs_k)[:, None]      # x^T tile [BLOCK_K, BLOCK_M]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            if EVEN_K:
                if PART_ROWS:
                    w = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
                else:
                    w = tl.load(w_ptrs)
                x = tl.load(x_ptrs)
            else:
                k_ok = (k0 + offs_k) < k_end
                w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                x = tl.load(x_ptrs, mask=k_ok[:, None], other=0.0)
            acc = tl.dot(w, x, acc, input_precision=PRECISION)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        keep = n_ok[:, None] & (offs_m < M)[None, :]
        if PARTIAL:
            tl.store(part_ptr + pid_s * s_ps + offs_m[None, :] * s_pm + offs_n[:, None], acc, mask=keep)
        else:
            if HAS_BIAS:
                acc += tl.load(b_ptr + rows_n).to(tl.float32)[:, None]
            tl.store(y_ptr + offs_m[None, :] * s_ym + offs_n[:, None], acc.to(y_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _reduce_kernel(part_ptr, b_ptr, y_ptr, N, splits, s_ps, s_pm, s_ym, HAS_BIAS: tl.constexpr,
                       BLOCK: tl.constexpr):
        m = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in range(0, splits):      # a fixed order: deterministic
            acc += tl.load(part_ptr + s * s_ps + m * s_pm + offs, mask=ok, other=0.0)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * s_ym + offs, acc.to(y_ptr.dtype.element_ty), mask=ok)


if triton is not None:
    @triton.jit
    def _gate_up_silu_kernel(x_ptr, w_ptr, y_ptr, M, N, K, rows, s_xm, s_wn, s_ym, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                             PART_ROWS: tl.constexpr, PRECISION: tl.constexpr):
        """silu(x @ Wg^T) * (x @ Wu^T) with W = [Wg; Wu] `[2N, K]`: both halves' tiles in one program."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_n = pid_n * rows + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = tl.arange(0, BLOCK_K)
        if PART_ROWS:
            n_ok = (tl.arange(0, BLOCK_N) < rows) & (offs_n < N)
            rows_n = tl.where(n_ok, offs_n, 0)
        else:
            n_ok = offs_n < N
            rows_n = offs_n % N
        rows_m = offs_m % M
        g_ptrs = w_ptr + rows_n[:, None] * s_wn + offs_k[None, :]
        u_ptrs = g_ptrs + N * s_wn
        x_ptrs = x_ptr + rows_m[None, :] * s_xm + offs_k[:, None]
        acc_g = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                if PART_ROWS:
                    g = tl.load(g_ptrs, mask=n_ok[:, None], other=0.0)
                    u = tl.load(u_ptrs, mask=n_ok[:, None], other=0.0)
                else:
                    g = tl.load(g_ptrs)
                    u = tl.load(u_ptrs)
                x = tl.load(x_ptrs)
            else:
                k_ok = (k0 + offs_k) < K
                g = tl.load(g_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                u = tl.load(u_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                x = tl.load(x_ptrs, mask=k_ok[:, None], other=0.0)
            acc_g = tl.dot(g, x, acc_g, input_precision=PRECISION)
            acc_u = tl.dot(u, x, acc_u, input_precision=PRECISION)
            g_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        # rounded to the output dtype first, as the unfused path's gate_up output is
        gate = acc_g.to(y_ptr.dtype.element_ty).to(tl.float32)
        up = acc_u.to(y_ptr.dtype.element_ty).to(tl.float32)
        act = gate / (1.0 + tl.exp(-gate)) * up
        keep = n_ok[:, None] & (offs_m < M)[None, :]
        tl.store(y_ptr + offs_m[None, :] * s_ym + offs_n[:, None], act.to(y_ptr.dtype.element_ty), mask=keep)


def gate_up_silu(x, weight, config: GemmConfig | None = None, sms: int = 132):
    """`silu(gate) * up` of `F.linear(x, weight)` split in halves, in one kernel: the gate/up
    product's output is never written (and the separate silu * up kernel never runs).
    weight `[2 * I, K]` (gate rows, then up rows); returns `[M, I]`. `config.block_n` counts
    rows per half; splits are not used."""
    import torch

    m, k = x.shape
    n = weight.shape[0] // 2
    if weight.shape[0] != 2 * n or weight.shape[1] != k or x.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError(f"gate_up_silu needs x [M, K] and weight [2 I, K] with a contiguous last axis, "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    config = config or fused_configs(m, n, k, sms)[0]
    block_m = min(config.block_m, max(16, triton.next_power_of_2(m)))
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    rows = _rows(config)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, rows))
    _gate_up_silu_kernel[grid](x, weight, y, m, n, k, rows, x.stride(0), weight.stride(0), y.stride(0),
                               BLOCK_M=block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                               EVEN_K=k % config.block_k == 0, PART_ROWS=rows < config.block_n,
                               PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
                               num_warps=config.warps, num_stages=config.stages)
    return y


def fused_candidates(m: int, n: int, k: int, sms: int = 132, smem: int = 220 * 1024) -> list[GemmConfig]:
    """Configurations for `gate_up_silu` (two weight tiles per program), the shape heuristic's first."""
    block_m = max(16, min(128, 1 << max(0, m - 1).bit_length()))
    out = []
    for block_n in (64, 32, 128):
        for block_k in (64, 128):
            per_stage = (2 * block_n + block_m) * block_k * 2
            stages = min(5, smem // per_stage)
            if stages < 3:
                continue
            warps = 8 if 2 * block_n * block_m >= 128 * 128 else 4
            out.append(GemmConfig(block_n, block_k, block_m, 1, warps, stages))
    return out + [b for c in out for waves in (1, 2) if (b := balanced(c, m, n, k, sms, waves)) is not None]


def _rows(config: GemmConfig) -> int:
    rows = config.rows_per_program()
    if not 0 < rows <= config.block_n:
        raise ValueError(f"rows per program must be in 1..block_n, got {config}")
    return rows


def balanced(config: GemmConfig, m: int, n: int, k: int, sms: int, waves: int = 1) -> GemmConfig | None:
    """`config` with fewer weight rows per program (a multiple of 8, at least half of block_n) so that
    the programs fill `waves` whole waves over the SMs instead of spilling a few into one more
    (17920 rows in 128-row tiles are 140 programs on 132 SMs: the last 8 take a second turn),
    or None when no such row count exists."""
    m_tiles = math.ceil(m / max(16, min(config.block_m, 1 << max(0, m - 1).bit_length())))
    splits = math.ceil(k / k_split_of(k, config))
    per_tile = m_tiles * splits
    programs = waves * sms
    rows = 8 * math.ceil(n / (programs // per_tile) / 8) if programs >= per_tile else 0
    if not rows or rows >= config.block_n or rows * 2 < config.block_n:
        return None
    return GemmConfig(config.block_n, config.block_k, config.block_m, config.splits, config.warps, config.stages, rows)


def k_split_of(k: int, config: GemmConfig) -> int:
    """K elements per split: a whole number of BLOCK_K blocks."""
    return math.ceil(math.ceil(k / config.splits) / config.block_k) * config.block_k


def skinny_linear(x, weight, bias=None, config: GemmConfig | None = None, sms: int = 132):
    """`F.linear(x, weight, bias)` for a small batch: x `[M, K]`, weight `[N, K]` (row-major,
    as the engine stores it), bias `[N]` or None. fp32 accumulation, output in x's dtype.
    Without `config` the shape heuristic `default_config` picks one."""
    import torch

    m, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k or x.stride(-1) != 1 or weight.stride(-1) != 1:
        raise ValueError(f"skinny_linear needs x [M, K] and weight [N, K] with a contiguous last axis, "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    config = config or default_config(m, n, k, sms)
    block_m = min(config.block_m, max(16, triton.next_power_of_2(m)))
    k_split = k_split_of(k, config)
    splits = math.ceil(k / k_split)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    partial = splits > 1
    part = torch.empty((splits, m, n) if partial else (1, 1, 1), dtype=torch.float32, device=x.device)
    has_bias = bias is not None
    rows = _rows(config)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, rows), splits)
    _skinny_kernel[grid](x, weight, bias if has_bias else weight, y, part, m, n, k, k_split, rows,
                         x.stride(0), weight.stride(0), y.stride(0), part.stride(0), part.stride(1),
                         BLOCK_M=block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                         HAS_BIAS=has_bias and not partial, EVEN_K=k_split % config.block_k == 0 and
                         k % config.block_k == 0, PARTIAL=partial, PART_ROWS=rows < config.block_n,
                         PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
                         num_warps=config.warps, num_stages=config.stages)
    if partial:
        block = 1024
        _reduce_kernel[(m, triton.cdiv(n, block))](part, bias if has_bias else part, y, n, splits, part.stride(0),
                                                   part.stride(1), y.stride(0), HAS_BIAS=has_bias, BLOCK=block,
                                                   num_warps=4)
    return y


def default_config(m: int, n: int, k: int, sms: int = 132) -> GemmConfig:
    """A shape heuristic (the fallback when no measured entry fits): 128-row weight tiles,
    K blocks of 128, split-K until about two programs per SM."""
    block_m = max(16, min(128, 1 << max(0, m - 1).bit_length()))
    block_n = 128 if n >= 128 * sms else 64
    tiles = math.ceil(n / block_n) * math.ceil(m / block_m)
    splits = 1
    while tiles * splits < 2 * sms and k // (2 * splits) >= 256:
        splits *= 2
    stages = 4 if block_m <= 64 else 3
    return GemmConfig(block_n=block_n, block_k=128, block_m=block_m, splits=splits,
                      warps=8 if block_m * block_n >= 128 * 128 else 4, stages=stages)


def candidates(m: int, n: int, k: int, sms: int = 132, smem: int = 220 * 1024) -> list[GemmConfig]:
    """The configurations a sweep times for one (M, N, K): weight tiles of 64/128 (256 from M = 64)
    rows, K blocks of 64..256, as many stages as shared memory holds (2 fewer too), splits giving
    ~1, 2 or 4 waves, and each one's `balanced` variants."""
    block_ms = sorted({max(16, min(128, 1 << max(0, m - 1).bit_length())), max(16, min(256, 1 << max(0, m - 1)
                                                                                    .bit_length()))})
    out = []
    for block_m in block_ms:
        # 256-row weight tiles halve the re-reads of x from L2 at large M (8 warps for the accumulator)
        for block_n in (64, 128, 256) if block_m >= 64 else (64, 128):
            for block_k in (64, 128, 256):
                if k % block_k:
                    continue
                tiles = math.ceil(n / block_n) * math.ceil(m / block_m)
                split_set = {1}
                for waves in (1, 2, 4):
                    s = 1
                    while tiles * s < waves * sms and k // (2 * s) >= block_k:
                        s *= 2
                    split_set.add(s)
                per_stage = (block_n + block_m) * block_k * 2
                most = min(6, smem // per_stage)
                if most < 2:
                    continue
                stage_set = {most, max(2, most - 1), max(2, most - 2)} if block_n == 256 else {most, max(2, most - 2)}
                for stages in sorted(stage_set):
                    for splits in sorted(split_set):
                        warps = 8 if block_m * block_n >= 128 * 128 else 4
                        if block_n == 256 and (stages < 3 or splits > 1 or block_m > 128):
                            continue        # the wide tiles only with a real pipeline, no split
                        out.append(GemmConfig(block_n, block_k, block_m, splits, warps, stages))
    out += [b for c in out for waves in (1, 2) if (b := balanced(c, m, n, k, sms, waves)) is not None]
    # deepest pipelines first: a sweep cut short by its time budget has tried the likeliest
    return sorted(dict.fromkeys(out), key=lambda c: (-c.stages * c.block_n * c.block_k, c.splits, c.rows))


# The fastest configuration per weight shape (N, K) and batch bucket M of the sweep
# `perf/decode_profile.py --sections skinny` (Qwen2.5-1.5B's projections, evidence in
# docs/decisions/0054-decode-engine-kernels.md); other shapes fall back to `default_config`.
# Fields: block_n, block_k, block_m, splits, warps, stages. Only the small batches beat cuBLAS
# (the engine's gemm="auto" measures which, per bucket, at warm-up).
_C = GemmConfig
MEASURED: dict[tuple[int, int], dict[int, GemmConfig]] = {
    (17920, 1536): {  # gate_up
        32: _C(128, 64, 32, 1, 4, 4), 64: _C(128, 64, 64, 1, 4, 4), 128: _C(64, 64, 128, 1, 4, 4),
        256: _C(128, 64, 128, 1, 8, 6)},
    (1536, 8960): {  # down
        32: _C(64, 64, 32, 8, 4, 6), 64: _C(64, 64, 64, 8, 4, 6), 128: _C(64, 64, 128, 8, 4, 4),
        256: _C(64, 64, 128, 4, 4, 4)},
    (151936, 1536): {  # lm_head
        32: _C(128, 128, 32, 1, 4, 3), 64: _C(128, 128, 64, 1, 4, 4), 128: _C(128, 64, 128, 1, 8, 6),
        256: _C(128, 64, 256, 1, 8, 4)},
    (2048, 1536): {  # qkv
        32: _C(64, 128, 32, 1, 4, 6), 64: _C(64, 128, 64, 1, 4, 4), 128: _C(64, 64, 128, 1, 4, 6),
        256: _C(64, 64, 128, 1, 4, 6)},
    (1536, 1536): {  # o
        32: _C(64, 128, 32, 1, 4, 6), 64: _C(64, 128, 64, 1, 4, 6), 128: _C(64, 64, 128, 1, 4, 6),
        256: _C(64, 64, 128, 1, 4, 6)},
}


# `gate_up_silu`'s best per (I, K) and M in the same sweep
FUSED_MEASURED: dict[tuple[int, int], dict[int, GemmConfig]] = {
    (8960, 1536): {32: _C(64, 64, 32, 1, 4, 5, 40), 64: _C(128, 64, 64, 1, 8, 5, 72), 128: _C(128, 64, 128, 1, 8, 4),
                   256: _C(64, 64, 128, 1, 8, 5)},
}


def _lookup(table, m: int):
    fits = [bucket for bucket in sorted(table) if bucket >= m]
    return table[fits[0] if fits else max(table)]


def config_for(m: int, n: int, k: int, sms: int = 132) -> GemmConfig:
    """The measured configuration of the smallest listed bucket >= m (else the largest), or the heuristic."""
    table = MEASURED.get((n, k))
    return _lookup(table, m) if table else default_config(m, n, k, sms)


def fused_configs(m: int, n: int, k: int, sms: int = 132) -> list[GemmConfig]:
    """`gate_up_silu` configurations for I = n, the measured one (if any) first."""
    table = FUSED_MEASURED.get((n, k))
    first = [_lookup(table, m)] if table else []
    return list(dict.fromkeys(first + fused_candidates(m, n, k, sms)))


def graph_time_us(fn, reps: int = 10) -> float:
    """Mean time of `fn` (a batch of GPU work) captured once in a CUDA graph and replayed: the
    way the decode step runs, with no launch overhead from Python in the figure."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    del graph
    return start.elapsed_time(end) / reps * 1000
