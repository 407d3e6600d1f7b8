"""A static key/value cache: one preallocated row of `max_len` positions per batch slot.

Layout `[layers, slots, 2 * kv_heads, max_len, head_dim]`, keys in the first half of
the head axis and values in the second, so a decode step writes a token's K and V
with one indexed store. The step for a batch bucket of B rows reads
`cache[layer, :B]` in place (a view, no gather, no copy), and
attention reads the KV heads as they are stored (no repeat_kv expansion). Slots are
handed out lowest-first so that the running batch stays packed at the front and the
smallest bucket covers it.
"""

from __future__ import annotations

import heapq


class KVCache:
    def __init__(self, n_layers: int, slots: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype, device):
        import torch

        # zeros, not empty: masked-out positions still enter attention's products
        self.kv = torch.zeros((n_layers, slots, 2 * n_kv_heads, max_len, head_dim), dtype=dtype, device=device)
        self.k = self.kv[:, :, :n_kv_heads]
        self.v = self.kv[:, :, n_kv_heads:]
        self.slots = slots
        self.max_len = max_len
        self._free = list(range(slots))
        heapq.heapify(self._free)

    def nbytes_per_token(self) -> int:
        """K and V bytes of one position over all layers."""
        n_layers, _, heads, _, dim = self.kv.shape
        return n_layers * heads * dim * self.kv.element_size()

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def used_rows(self, active: set[int]) -> int:
        """Rows a decode step must cover: up to the highest slot in use."""
        return max(active) + 1 if active else 0
