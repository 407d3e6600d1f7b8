"""CUDA sources for the GPU search (CuPy RawModule), compiled once per variant and cached.

* ``topk_partial``: one block per (query row, segment); each thread keeps a sorted top-k of
  64-bit keys (see `tritonrag.retrieval.search.topk`) in registers over a strided slice, 8 loads in flight,
  then k rounds of a block-wide max pick the block's top-k; the same kernel merges those
  lists (keys in, one segment per row). No score row is ever sorted: the list stays in
  registers and a block-shared threshold lets threads skip keys below the block's k-th best
  (docs/decisions/0051-cuda-partial-topk.md).
* ``l1_scores``: -sum|q - x| for a tile of corpus rows x queries, register-tiled like a
  GEMM over shared-memory slices of d; corpus in fp16/bf16/fp32, fp32 accumulation,
  no [N, d] temporary.
* ``long_reduce``: per-block partial sums for distances of two long vectors (double
  accumulators, warp shuffles), summed on the host: a two-level deterministic reduction.
"""

from __future__ import annotations

import functools

from .topk import MAX_INDEX

_COMMON = r"""
#include <cuda_fp16.h>
typedef unsigned long long u64;

__device__ __forceinline__ u64 make_key(float s, unsigned int idx) {
    unsigned int u = __float_as_uint(s);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((u64)u << 32) | (u64)(MAX_INDEX - idx);
}

__device__ __forceinline__ float load_as_float(const STORAGE_T* p, long long i) { return CONVERT(p[i]); }
"""

_TOPK = r"""
// KB: per-thread slots: exactly k up to 32 (register list), else a power of two >= k. Each thread scans a strided slice of its
// segment with UNROLL loads in flight and keeps a sorted top-KB in registers (compile-time
// indices only, so no local memory for KB <= 32). The common path is one 32-bit compare of
// the score's orderable bits against the thread's k-th best; a thread's indices grow, so an
// equal score can never displace (ties stay with the lower index). Then k rounds of a
// block-wide max pick the block's top-k; the same kernel merges those lists (mode 2: keys in).
__device__ __forceinline__ unsigned int ordered_bits(float s) {
    unsigned int u = __float_as_uint(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// Insert x into the sorted list best[0..k) (x > the k-th best); returns the new k-th best.
__device__ __forceinline__ u64 insert_key(u64 (&best)[KB], u64 x, int k) {
#if KB <= 32
#pragma unroll
    for (int j = 0; j < KB; ++j) { u64 b = best[j]; bool gt = x > b; best[j] = gt ? x : b; x = gt ? b : x; }
    return best[KB - 1];  // KB == k here (a select of best[k-1] put the list in local memory)
#else
    int j = k - 1;
    while (j > 0 && best[j - 1] < x) { best[j] = best[j - 1]; --j; }
    best[j] = x;
    return best[k - 1];
#endif
}
// After an insert: the thread's k-th best, once its list is full, is a lower bound of the
// block's k-th best, so the block keeps the max of those in shared memory and every thread
// filters by it (without it a thread of ~120 scores took the insert path for ~30% of them).
#define INSERT(key_) { floor_key = insert_key(best, (key_), k);                              \
    if (floor_key != 0ull) { atomicMax(&block_floor, floor_key); if (floor_key > thr_key) thr_key = floor_key; } \
    thr_hi = (unsigned int)(thr_key >> 32); }
#define REFRESH() { u64 t_ = *(volatile u64*)&block_floor; if (t_ > thr_key) { thr_key = t_; thr_hi = (unsigned int)(t_ >> 32); } }
extern "C" __global__ void __launch_bounds__(NT) topk_partial(
        const float* __restrict__ scores, const u64* __restrict__ keys_in,
        const float* __restrict__ norms, float alpha, int mode,
        long long n, long long row_stride, long long seg_len, unsigned int index_base,
        int k, u64* __restrict__ out, long long out_row_stride, long long out_offset)
{
    __shared__ u64 warp_best[2][NT / 32];
    __shared__ u64 block_floor;
    if (threadIdx.x == 0) block_floor = 0ull;
    __syncthreads();
    const int row = blockIdx.y;
    const long long seg = blockIdx.x;
    const long long start = seg * seg_len;
    long long end = start + seg_len; if (end > n) end = n;
    u64 best[KB];
#pragma unroll
    for (int j = 0; j < KB; ++j) best[j] = 0ull;
    u64 floor_key = 0ull;   // this thread's k-th best (0 until it holds k keys)
    u64 thr_key = 0ull;     // max(floor_key, block_floor as last read): keys at or below it are out
    unsigned int thr_hi = 0u;
    long long i = start + threadIdx.x;
    if (mode == 2) {
        const u64* krow = keys_in + row * row_stride;
        for (; i < end; i += NT) { REFRESH() u64 key = krow[i]; if (key > thr_key) INSERT(key) }
    } else {
        const float* srow = scores + row * row_stride;
        for (; i + (long long)(UNROLL - 1) * NT < end; i += (long long)UNROLL * NT) {
            float s[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) s[u] = __ldcs(srow + i + u * NT);  // read once: streaming
            if (mode == 1) {
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) s[u] = alpha * s[u] - norms[i + u * NT];
            }
            REFRESH()
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                unsigned int h = ordered_bits(s[u]);
                if (h >= thr_hi) {
                    u64 key = ((u64)h << 32) | (u64)(MAX_INDEX - (index_base + (unsigned int)(i + u * NT)));
                    if (key > thr_key) INSERT(key)
                }
            }
        }
        for (; i < end; i += NT) {
            float s = srow[i];
            if (mode == 1) s = alpha * s - norms[i];
            unsigned int h = ordered_bits(s);
            if (h >= thr_hi) {
                u64 key = ((u64)h << 32) | (u64)(MAX_INDEX - (index_base + (unsigned int)i));
                if (key > thr_key) INSERT(key)
            }
        }
    }
    u64* dst = out + row * out_row_stride + out_offset + seg * k;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#if KB > 32
    int head = 0;
#endif
    u64 mine = best[0];
    for (int r = 0; r < k; ++r) {
        u64 m = mine;
        for (int off = 16; off > 0; off >>= 1) {
            u64 other = __shfl_xor_sync(0xffffffffu, m, off);
            m = other > m ? other : m;
        }
        if (lane == 0) warp_best[r & 1][warp] = m;
        __syncthreads();
        u64 top = warp_best[r & 1][0];
#pragma unroll
        for (int w = 1; w < NT / 32; ++w) { u64 v = warp_best[r & 1][w]; top = v > top ? v : top; }
        if (mine == top) {  // keys are unique (index bits), so one thread wins; 0 = empty slots
            if (top != 0ull || threadIdx.x == 0) dst[r] = top;
#if KB <= 32
#pragma unroll
            for (int j = 0; j + 1 < KB; ++j) best[j] = best[j + 1];  // pop the head, registers only
            best[KB - 1] = 0ull;
            mine = best[0];
#else
            ++head;
            mine = head < k ? best[head] : 0ull;
#endif
        }
    }
}
"""

_L1 = r"""
// Tile: TR = NRT*RPT corpus rows x TQ queries per block of NT threads; slices of DK dims.
#define NQG (TQ / QPT)
#define NRT (NT / NQG)
#define TR (NRT * RPT)
extern "C" __global__ void __launch_bounds__(NT) l1_scores(
        const STORAGE_T* __restrict__ x, const float* __restrict__ q, int nq, long long n, int d,
        float* __restrict__ out, long long out_stride)
{
    __shared__ float sx[TR][DK + 1];
    __shared__ float sq[TQ][DK + 1];
    const int tx = threadIdx.x % NRT, ty = threadIdx.x / NRT;
    const long long row0 = (long long)blockIdx.x * TR;
    const int q0 = blockIdx.y * TQ;
    float acc[RPT][QPT];
#pragma unroll
    for (int r = 0; r < RPT; ++r)
#pragma unroll
        for (int j = 0; j < QPT; ++j) acc[r][j] = 0.f;
    for (int k0 = 0; k0 < d; k0 += DK) {
        for (int e = threadIdx.x; e < TR * DK; e += NT) {
            int r = e / DK, c = e % DK;
            long long gr = row0 + r;
            sx[r][c] = (gr < n && k0 + c < d) ? load_as_float(x, gr * d + k0 + c) : 0.f;
        }
        for (int e = threadIdx.x; e < TQ * DK; e += NT) {
            int j = e / DK, c = e % DK;
            sq[j][c] = (q0 + j < nq && k0 + c < d) ? q[(long long)(q0 + j) * d + k0 + c] : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int c = 0; c < DK; ++c) {
            float xv[RPT], qv[QPT];
#pragma unroll
            for (int r = 0; r < RPT; ++r) xv[r] = sx[tx + r * NRT][c];
#pragma unroll
            for (int j = 0; j < QPT; ++j) qv[j] = sq[ty * QPT + j][c];
#pragma unroll
            for (int r = 0; r < RPT; ++r)
#pragma unroll
                for (int j = 0; j < QPT; ++j) acc[r][j] += fabsf(xv[r] - qv[j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < QPT; ++j) {
        int qi = q0 + ty * QPT + j;
        if (qi >= nq) continue;
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
            long long gr = row0 + tx + r * NRT;
            if (gr < n) out[qi * out_stride + gr] = -acc[r][j];
        }
    }
}
"""

_LONG = r"""
// Sum three doubles over a block of 256 threads (warp shuffles, then the 8 warps in order) into out[0..3).
__device__ __forceinline__ void block_sum3(double s0, double s1, double s2, double* out) {
    for (int off = 16; off > 0; off >>= 1) {
        s0 += __shfl_down_sync(0xffffffffu, s0, off);
        s1 += __shfl_down_sync(0xffffffffu, s1, off);
        s2 += __shfl_down_sync(0xffffffffu, s2, off);
    }
    __shared__ double red[3][8];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { red[0][warp] = s0; red[1][warp] = s1; red[2][warp] = s2; }
    __syncthreads();
    if (threadIdx.x < 3) {
        double t = 0.0;
        for (int w = 0; w < 8; ++w) t += red[threadIdx.x][w];
        out[threadIdx.x] = t;
    }
    __syncthreads();  // red is reused by a second call
}

// metric: 0 dot, 1 squared L2, 2 L1, 3 cosine (dot, |a|^2, |b|^2). Partials [blocks, 3].
// With `result` set, the last block to finish (a ticket from `counter`, which it resets to 0)
// also sums the partials in block order (deterministic) into result[0..3): a pinned host
// buffer, so the caller only waits for the stream instead of launching a sum and a copy.
extern "C" __global__ void __launch_bounds__(256) long_reduce(
        const STORAGE_T* __restrict__ a, const STORAGE_T* __restrict__ b, long long n, int metric,
        double* __restrict__ partial, unsigned int* __restrict__ counter, double* __restrict__ result)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
#if VEC
    // 16-byte loads (the caller checked alignment): UNROLL words of each vector in flight per
    // thread, a float partial per word, double sums; the elements past the last word below.
    constexpr int EPW = 16 / sizeof(STORAGE_T);
    const long long words = n / EPW;
    const uint4* __restrict__ a4 = reinterpret_cast<const uint4*>(a);
    const uint4* __restrict__ b4 = reinterpret_cast<const uint4*>(b);
    for (long long w = i; w < words; w += UNROLL * stride) {
        uint4 wa[UNROLL], wb[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            long long at = w + u * stride;
            if (at < words) { wa[u] = a4[at]; wb[u] = b4[at]; } else { wa[u] = make_uint4(0, 0, 0, 0); wb[u] = wa[u]; }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const STORAGE_T* xs = reinterpret_cast<const STORAGE_T*>(&wa[u]);
            const STORAGE_T* ys = reinterpret_cast<const STORAGE_T*>(&wb[u]);
            float p0 = 0.f, p1 = 0.f, p2 = 0.f;
#pragma unroll
            for (int e = 0; e < EPW; ++e) {
                float x = CONVERT(xs[e]), y = CONVERT(ys[e]);
                if (metric == 0) p0 += x * y;
                else if (metric == 1) { float t = x - y; p0 += t * t; }
                else if (metric == 2) p0 += fabsf(x - y);
                else { p0 += x * y; p1 += x * x; p2 += y * y; }
            }
            s0 += p0; s1 += p1; s2 += p2;
        }
    }
    i = words * EPW + i;  // the tail: fewer than EPW elements, scalar below
#endif
    // UNROLL independent loads in flight per thread; float partials per step, double sums.
    for (; i + (UNROLL - 1) * stride < n; i += UNROLL * stride) {
        float x[UNROLL], y[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) { x[u] = load_as_float(a, i + u * stride); y[u] = load_as_float(b, i + u * stride); }
        float p0 = 0.f, p1 = 0.f, p2 = 0.f;
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (metric == 0) p0 += x[u] * y[u];
            else if (metric == 1) { float t = x[u] - y[u]; p0 += t * t; }
            else if (metric == 2) p0 += fabsf(x[u] - y[u]);
            else { p0 += x[u] * y[u]; p1 += x[u] * x[u]; p2 += y[u] * y[u]; }
        }
        s0 += p0; s1 += p1; s2 += p2;
    }
    for (; i < n; i += stride) {
        float x = load_as_float(a, i), y = load_as_float(b, i);
        if (metric == 0) s0 += (double)(x * y);
        else if (metric == 1) { float t = x - y; s0 += (double)(t * t); }
        else if (metric == 2) s0 += (double)fabsf(x - y);
        else { s0 += (double)(x * y); s1 += (double)(x * x); s2 += (double)(y * y); }
    }
    block_sum3(s0, s1, s2, partial + blockIdx.x * 3);
    if (result == nullptr) return;
    __shared__ bool last;
    __threadfence();  // this block's partials are visible before its ticket is taken
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    // the partials, each thread a fixed stride of blocks, then the same fixed tree: deterministic
    const volatile double* p = partial;
    s0 = s1 = s2 = 0.0;
    for (unsigned int blk = threadIdx.x; blk < gridDim.x; blk += blockDim.x) {
        s0 += p[blk * 3]; s1 += p[blk * 3 + 1]; s2 += p[blk * 3 + 2];
    }
    block_sum3(s0, s1, s2, result);
    if (threadIdx.x == 0) *counter = 0u;
}
"""

_STORAGE = {
    "float16": ("__half", "__half2float"),
    "bfloat16": ("unsigned short", "bf16_to_float"),
    "float32": ("float", ""),
}
_BF16 = r"""
__device__ __forceinline__ float bf16_to_float(unsigned short v) { return __uint_as_float(((unsigned int)v) << 16); }
"""


def _source(body: str, storage: str) -> str:
    ctype, convert = _STORAGE[storage]
    head = f"#define STORAGE_T {ctype}\n#define CONVERT(v) {convert}(v)\n#define MAX_INDEX {MAX_INDEX:#x}u\n"
    return head + _COMMON.replace("__device__ __forceinline__ float load_as_float", _BF16 + "\n__device__ __forceinline__ float load_as_float") + body


@functools.lru_cache(maxsize=None)
def _module(body_name: str, storage: str, defines: tuple[tuple[str, int], ...]):
    import cupy

    body = {"topk": _TOPK, "l1": _L1, "long": _LONG}[body_name]
    options = ("-std=c++17",) + tuple(f"-D{name}={value}" for name, value in defines)
    return cupy.RawModule(code=_source(body, storage), options=options)


TOPK_UNROLL = 8  # score loads in flight per thread: one at a time leaves the kernel latency-bound


def topk_kernel(slots: int, threads: int):
    defines = (("KB", slots), ("NT", threads), ("UNROLL", TOPK_UNROLL))
    return _module("topk", "float32", defines).get_function("topk_partial")


def l1_kernel(storage: str, tq: int, qpt: int, rpt: int, dk: int, threads: int = 256):
    defines = (("TQ", tq), ("QPT", qpt), ("RPT", rpt), ("DK", dk), ("NT", threads))
    return _module("l1", storage, defines).get_function("l1_scores")


@functools.lru_cache(maxsize=None)
def long_kernel(storage: str, unroll: int = 4, vec: bool = True):
    """vec: 16-byte loads (both vectors 16-byte aligned); else one element a load, 8 in flight."""
    return _module("long", storage, (("UNROLL", unroll if vec else 8), ("VEC", int(vec)))).get_function("long_reduce")
