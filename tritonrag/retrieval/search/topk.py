"""Exact, deterministic top-k: best score first, ties to the lower passage index.

Two forms share one order. On the host, a threshold (the k-th best value, from
``partition``) keeps every candidate tied at the boundary, and a lexsort orders them,
so the result never depends on how the rows were chunked or batched. On the GPU the
same order is encoded in one 64-bit key per candidate (orderable score bits high,
``2**32-1-index`` low): the larger key is the better candidate, so partial top-k
lists from blocks, chunks or streams merge by plain key comparison.
"""

from __future__ import annotations

import numpy as np

MAX_INDEX = 0xFFFFFFFF  # a key's low word holds MAX_INDEX - index: at most 2**32 - 1 passages
# The one key format has two views of the same 64 bits: uint64 (CUDA C kernels, CuPy) and int64
# (torch and the Triton-language kernels, which have no unsigned 64-bit sort). The int64 view is
# the uint64 key with its top bit flipped, so both order candidates alike.
SIGN_FLIP = 1 << 63


def top_k_rows(scores, k: int, index_base: int = 0, xp=np) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of `scores` ([B, N], larger is better) as host arrays (indices, scores).

    Works with NumPy or CuPy (`xp`); indices are offset by `index_base`.
    """
    n = scores.shape[1]
    k = min(k, n)
    if k <= 0:
        return np.zeros((scores.shape[0], 0), np.int64), np.zeros((scores.shape[0], 0), np.float32)
    if k < n:
        kth = xp.partition(scores, n - k, axis=1)[:, n - k:n - k + 1]
        rows, cols = xp.nonzero(scores >= kth)  # row-major: grouped by row, index ascending
    else:
        rows, cols = xp.nonzero(xp.ones(scores.shape, dtype=bool))
    values = scores[rows, cols]
    if xp is not np:
        rows, cols, values = rows.get(), cols.get(), values.get()
    return _order_candidates(scores.shape[0], rows, cols.astype(np.int64) + index_base, values, k)


def _order_candidates(batch: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sort candidates by (score desc, index asc) and keep k (rows may hold ties beyond k)."""
    order = np.lexsort((cols, -values.astype(np.float64), rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(batch))
    take = (starts[:, None] + np.arange(k)[None, :])
    take = np.minimum(take, len(rows) - 1)
    return cols[take], values[take].astype(np.float32)


def encode_keys(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """64-bit keys whose order is (score desc, index asc); the host twin of the CUDA make_key."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    ordered = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    low = np.uint64(MAX_INDEX) - indices.astype(np.uint64)
    return (ordered.astype(np.uint64) << np.uint64(32)) | low


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, scores, valid) from keys, uint64 or their int64 view (`torch_keys`); uint64 key 0
    marks an empty slot (fewer candidates than k)."""
    keys = np.asarray(keys)
    if keys.dtype == np.int64:
        keys = keys.view(np.uint64) ^ np.uint64(SIGN_FLIP)
    keys = np.asarray(keys, dtype=np.uint64)
    high = (keys >> np.uint64(32)).astype(np.uint32)
    bits = np.where(high & np.uint32(0x80000000), high ^ np.uint32(0x80000000), ~high)
    indices = (np.uint64(MAX_INDEX) - (keys & np.uint64(MAX_INDEX))).astype(np.int64)
    return indices, bits.astype(np.uint32).view(np.float32), keys != 0


def torch_keys(torch, values, index_base: int):
    """int64 view of the keys of a [B, n] fp32 tensor on its device: order (value desc, index asc),
    all keys distinct; `decode_keys` reads them on the host."""
    bits = values.contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed int32 in float order (-0 < +0)
    low = MAX_INDEX - (index_base + torch.arange(values.shape[1], device=values.device, dtype=torch.int64))
    return (ordered.to(torch.int64) << 32) | low
