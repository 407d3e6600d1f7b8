"""Prefill and the decode step of a Llama/Qwen2-family decoder over a static KV cache.

One code path for CPU and CUDA. On CUDA the decode step is captured as a CUDA graph
per (batch bucket, cache-length bucket) at load time, so a step is one graph launch
instead of hundreds of kernel launches from Python; on the CPU it runs eagerly over
exactly the rows and positions in use. With `prefill_graph_prompts` > 0, small prefills (up to
that many prompts) are captured too, per prompt count and width bucket (PREFILL_WIDTH_STEP tokens
apart): under arrivals most prefills are that small, and eagerly their launches, not the GPU,
set their time.
Inside a graph the step's cost beyond the matmuls is the number of small kernels, so the step
is written with few of them (rotary embedding of q, k and v in three, one K/V store, residual
adds fused into the output matmuls); `compile=True` also lets torch.compile fuse the rest
before capture.

Attention is grouped-query-aware without copying: a decode step's query heads are
viewed as `[B, kv_heads, group, head_dim]`, i.e. the `group` query heads that share a
KV head become that head's `group` query rows, so attention reads each cached KV head
once, in place (no repeat_kv expansion, a large share of HF's GPU time at large batches).
`attention="triton"` (the default on CUDA when triton is importable) runs the split-KV
kernel of `flash_decode`: each row's keys are read only up to its own length, in chunks
spread over the whole GPU, with no additive mask over the length bucket. `"sdpa"` is the
CPU's (and CUDA's without triton).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Sequence

from .kv_cache import KVCache
from .weights import DecoderWeights, check_supported, from_hf

log = logging.getLogger(__name__)


# the step between the prefill graphs' widths: padding costs at most this many tokens a prompt
PREFILL_WIDTH_STEP = 64


def _buckets(limit: int, start: int) -> list[int]:
    """Powers of two from `start` below `limit`, then `limit` itself."""
    out, size = [], start
    while size < limit:
        out.append(size)
        size *= 2
    return out + [limit]


def _prefill_backends() -> list:
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


def _tileable(head_dim: int) -> bool:
    """Whether the Triton kernels can take a head as one block: a power of two of at least 16
    (tl.arange and tl.dot)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def _prefill_views(inputs, n: int, width: int):
    """The tokens `[n, width]`, cache rows `[n]` and last positions `[n]` of a staged prefill."""
    return inputs[:n * width].view(n, width), inputs[n * width:n * width + n], inputs[n * width + n:]


class DecodeEngine:
    """Weights + KV cache + the forward passes; the scheduler drives it.

    `slots` is the most sequences decoded at once, `max_len` the most positions one
    sequence may occupy (prompt + new tokens).
    """

    def __init__(self, weights: DecoderWeights, rope_cos, rope_sin, slots: int, max_len: int,
                 device, dtype, cuda_graphs: bool = True, attention: str = "auto",
                 min_length_bucket: int = 256, compile: bool = False, gemm: str = "cublas",
                 prefill_graph_prompts: int = 0, prefill_graph_width: int | None = None):
        import torch

        from . import flash_decode

        self.w = weights
        self.device = torch.device(device)
        self.dtype = dtype
        self.slots = slots
        self.max_len = max_len
        if attention == "auto":
            attention = ("triton" if torch.device(device).type == "cuda" and flash_decode.available()
                         and _tileable(weights.head_dim) else "sdpa")
        if attention == "triton" and not _tileable(weights.head_dim):
            raise ValueError(f"attention='triton' needs a power-of-two head_dim of at least 16, "
                             f"not {weights.head_dim}; use attention='sdpa'")
        if attention == "triton" and not (flash_decode.available() and (
                torch.device(device).type == "cuda" or flash_decode.interpreted())):
            raise ValueError("attention='triton' needs a CUDA device (or TRITON_INTERPRET=1) and the triton package")
        if attention not in ("triton", "sdpa"):
            raise ValueError(f"attention must be auto, triton or sdpa, not {attention!r}")
        self.attention = attention
        if gemm not in ("auto", "cublas", "triton"):
            raise ValueError(f"gemm must be auto, cublas or triton, not {gemm!r}")
        if gemm == "triton" and attention != "triton":
            raise ValueError("gemm='triton' is the Triton decode step's (attention='triton')")
        if gemm == "auto" and (attention != "triton" or self.device.type != "cuda"):
            gemm = "cublas"     # nothing to measure: the CPU, the SDPA path
        self.gemm = gemm
        # per batch bucket, per projection: a skinny_gemm configuration, or None for F.linear
        self._gemm_plan: dict[int, dict[str, object]] = {}
        self.gemm_timings: list[dict] = []      # what gemm="auto" measured at warm-up
        self.cos = rope_cos.to(self.device, dtype)     # [max_len, head_dim]
        self.sin = rope_sin.to(self.device, dtype)
        # per-head tables over the fused q|k|v heads, v heads left as they are (cos 1, sin 0),
        # sin signed so that rotate_half(x) * sin == swap_halves(x) * signed_sin
        half = weights.head_dim // 2
        signed = torch.cat((-self.sin[:, :half], self.sin[:, half:]), dim=-1)
        self.sin_signed = signed.contiguous()
        heads_qk, heads_v = weights.n_heads + weights.n_kv_heads, weights.n_kv_heads
        self.cos_heads = torch.cat((self.cos[:, None].expand(-1, heads_qk, -1),
                                    torch.ones_like(self.cos)[:, None].expand(-1, heads_v, -1)), dim=1)
        self.sin_heads = torch.cat((signed[:, None].expand(-1, heads_qk, -1),
                                    torch.zeros_like(self.sin)[:, None].expand(-1, heads_v, -1)), dim=1)
        self.cache = KVCache(weights.n_layers, slots, weights.n_kv_heads, max_len, weights.head_dim,
                             dtype, self.device)
        self.group = weights.n_heads // weights.n_kv_heads
        self.scale = weights.head_dim ** -0.5
        self._key_index = torch.arange(max_len, device=self.device)
        self._last = torch.zeros(slots, dtype=torch.long, device=self.device)   # the last async step's ids
        self.batch_buckets = _buckets(slots, 1)
        self.length_buckets = _buckets(max_len, min(min_length_bucket, max_len))
        self._graphs: dict[tuple[int, int], tuple] = {}
        # prefills of 1..prefill_graph_prompts prompts up to prefill_graph_width tokens replay a
        # captured graph (CUDA, Triton path; 0: none); larger ones run eagerly, where the GPU's
        # time covers the host's launches
        self.prefill_graph_prompts = prefill_graph_prompts
        self.prefill_graph_width = min(prefill_graph_width or max_len, max_len)
        self.prefill_widths = [w for w in range(PREFILL_WIDTH_STEP, self.prefill_graph_width, PREFILL_WIDTH_STEP)] \
            + [self.prefill_graph_width]
        self._prefill_graphs: dict[tuple[int, int], tuple] = {}
        self.prefill_replays = 0        # prefill calls served by a captured graph
        self.prefill_capture_s = 0.0
        self._staging, self._staged = None, None    # prefill's pinned input buffer and its copy's event (CUDA)
        # prefill attention on CUDA: FlashAttention (math where it cannot run), never cuDNN, which
        # builds an execution plan for each new (prompts, width) shape on the host, and served
        # prefills bring new shapes all the time (docs/decisions/0108-prefill-under-arrivals.md)
        self.prefill_backends = _prefill_backends() if self.device.type == "cuda" else None
        self.warmup_s = 0.0
        self.prefill_warmup_s = 0.0
        self._sms = torch.cuda.get_device_properties(self.device).multi_processor_count \
            if self.device.type == "cuda" else 1
        if compile and self.device.type == "cuda":
            # the per-layer pieces, not the whole 28-layer step (that takes minutes to compile);
            # all layers share one compiled graph, the cache store and attention
            # stay outside so the compiler never copies a cache it would have to functionalise
            self._qkv_part = torch.compile(self._qkv_part, dynamic=True)
            self._mlp_part = torch.compile(self._mlp_part, dynamic=True)
        self._step = self._decode_forward
        if cuda_graphs and self.device.type == "cuda":
            self.capture_graphs()
            if self.attention == "triton" and prefill_graph_prompts > 0:
                try:
                    self.capture_prefill_graphs()
                except Exception:  # noqa: BLE001 — an optimisation: serve with eager prefills rather than fail to load
                    log.exception("prefill CUDA graphs could not be captured; prefills run eagerly")
                    self._prefill_graphs.clear()
        if self.device.type == "cuda":
            self.warm_prefill()

    @classmethod
    def from_hf(cls, model, slots: int, max_len: int, **kwargs) -> "DecodeEngine":
        """An engine over a transformers model's weights (its device and dtype); a config feature
        the engine does not compute is refused here (ValueError), see `check_supported`."""
        import torch

        check_supported(model, max_len)

        param = next(model.parameters())
        with torch.no_grad():
            positions = torch.arange(max_len, device=param.device)[None]
            probe = torch.zeros(1, dtype=torch.float32, device=param.device)
            cos, sin = model.model.rotary_emb(probe, positions)
        return cls(from_hf(model), cos[0], sin[0], slots, max_len, param.device, param.dtype, **kwargs)

    # -- building blocks -------------------------------------------------------------

    def _norm(self, x, weight):
        import torch.nn.functional as F

        # transformers' RMSNorm takes the statistics in fp32 too; the fused op rounds once
        # instead of twice in bf16 (the logits agree with transformers', see the benchmark)
        return F.rms_norm(x, (x.shape[-1],), weight, self.w.eps)

    # -- prefill ------------------------------------------------------------------

    def warm_prefill(self) -> None:
        """Prefill a few dummy prompts at load, into free cache rows, so that the first requests do
        not pay for the Triton kernels' compilation (one per divisibility-by-16 case of the prompt
        width and token count) or the lazy loading of the GEMM kernels of large row counts, which
        would otherwise make the first requests after a start wait seconds."""
        import torch

        start = time.perf_counter()
        width, many = min(256, self.max_len), min(self.slots, 32)
        for n, length in ((1, 16), (1, 17), (min(self.slots, 16), 17), (many, width)):
            self.prefill(list(range(n)), [[0] * min(length, self.max_len)] * n)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.prefill_warmup_s = time.perf_counter() - start
        log.info("prefill warmed up in %.1f s", self.prefill_warmup_s)

    def _prefill_staging(self, numel: int):
        """The host buffer a prefill's inputs are copied from. On CUDA it is pinned and kept (a
        pinned allocation per call cost the engine thread more than the rest of the call's setup),
        and the copy is non-blocking: it queues behind a decode step still running instead of
        making the host wait for it (the scheduler launches a prefill before reading the step in
        flight); the next prefill waits for that copy before writing the buffer again."""
        import torch

        if self.device.type != "cuda":
            return torch.empty(numel, dtype=torch.long)
        if self._staged is not None:
            self._staged.synchronize()           # the last copy has left the buffer
        if self._staging is None or self._staging.numel() < numel:
            self._staging = torch.empty(max(numel, 1 << 16), dtype=torch.long).pin_memory()
            self._staged = torch.cuda.Event()
        return self._staging[:numel]

    def prefill(self, rows: Sequence[int], prompts: Sequence[Sequence[int]]):
        """Run prompts (one per cache row) through the model, fill their cache rows,
        return the logits of each prompt's last position `[n, vocab]`."""
        n, width = len(prompts), max(len(p) for p in prompts)
        if self._prefill_graphs and n <= self.prefill_graph_prompts and width <= self.prefill_graph_width:
            return self._prefill_replay(rows, prompts)
        inputs = self._stage_prefill(rows, prompts, width).to(self.device, non_blocking=True)
        if self._staged is not None:
            self._staged.record()                 # the staging buffer is free again once this copy ran
        return self._prefill_forward(*_prefill_views(inputs, n, width), n, width)

    def _prefill_replay(self, rows: Sequence[int], prompts: Sequence[Sequence[int]]):
        """`prefill` by replaying the graph captured for this many prompts at the next width
        bucket: the prompts are right-padded to the bucket (pads write K/V past each prompt's end
        in its own row, where decode steps overwrite them before reading)."""
        n, width = len(prompts), max(len(p) for p in prompts)
        width = next(w for w in self.prefill_widths if w >= width)
        graph, inputs, logits = self._prefill_graphs[(n, width)]
        inputs.copy_(self._stage_prefill(rows, prompts, width), non_blocking=True)
        if self._staged is not None:
            self._staged.record()
        graph.replay()
        self.prefill_replays += 1
        return logits.clone()       # the graph's output buffer is overwritten by its next replay

    def _stage_prefill(self, rows: Sequence[int], prompts: Sequence[Sequence[int]], width: int):
        """A prefill's inputs in one host buffer, for one copy (`_prefill_views` splits it): the
        prompts right-padded to `width` (causal attention never sees the pads), their cache rows,
        their last positions."""
        n = len(prompts)
        host = self._prefill_staging(n * width + 2 * n)
        values = host.numpy()
        values[:] = 0
        tokens = values[:n * width].reshape(n, width)
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = p
        values[n * width:n * width + n] = rows
        values[n * width + n:] = [len(p) - 1 for p in prompts]
        return host

    def capture_prefill_graphs(self) -> None:
        """Capture the prefill of 1..prefill_graph_prompts prompts for every width bucket: an eager
        prefill of a few prompts costs the host ~the same launch time whatever it holds, several
        times its GPU time (docs/decisions/0110-prefill-graphs.md). Uses the decode graphs' memory
        pool: prefills and steps never run at once."""
        import torch

        start = time.perf_counter()
        pool = self._pool
        stream = torch.cuda.Stream(self.device)
        with torch.inference_mode():
            for width in reversed(self.prefill_widths):
                for n in range(min(self.prefill_graph_prompts, self.slots), 0, -1):
                    inputs = torch.zeros(n * width + 2 * n, dtype=torch.long, device=self.device)
                    inputs[n * width:n * width + n] = torch.arange(n)     # cache rows 0..n-1: all free at load
                    args = (*_prefill_views(inputs, n, width), n, width)
                    stream.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(stream):
                        self._prefill_forward(*args)     # warm-up: Triton kernels compiled, workspaces allocated
                    torch.cuda.current_stream(self.device).wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        logits = self._prefill_forward(*args)
                    self._prefill_graphs[(n, width)] = (graph, inputs, logits)
        torch.cuda.synchronize(self.device)
        self.prefill_capture_s = time.perf_counter() - start
        log.info("captured %d prefill CUDA graphs (1-%d prompts x %d widths up to %d) in %.1f s",
                 len(self._prefill_graphs), self.prefill_graph_prompts, len(self.prefill_widths),
                 self.prefill_graph_width, self.prefill_capture_s)

    def _prefill_forward(self, tokens, row_index, last, n: int, width: int):
        """The prefill's forward pass over device tensors: `tokens` `[n, width]` (right-padded),
        each prompt's cache row and last position `[n]`; its logits `[n, vocab]`."""
        import torch
        import torch.nn.functional as F

        w = self.w
        heads, kv_heads, dim = w.n_heads, w.n_kv_heads, w.head_dim
        fused = self.attention == "triton"     # the decode step's Triton norm and silu*up kernels
        if not fused:   # the decode step's per-layer parts over all n * width tokens as rows
            cos = self.cos_heads[:width].repeat(n, 1, 1)
            sin = self.sin_heads[:width].repeat(n, 1, 1)
        if fused:
            from .triton_lang_ops import add_rms_norm, rope_store, silu_mul
        backends = contextlib.nullcontext()
        if self.prefill_backends:
            from torch.nn.attention import sdpa_kernel
            backends = sdpa_kernel(self.prefill_backends)
        with torch.inference_mode(), backends:
            x = F.embedding(tokens, w.embed).view(n * width, -1)
            y = None
            final = len(w.layers) - 1
            for index, layer in enumerate(w.layers):
                if fused:   # rope in place and the K/V store in one kernel
                    qkv = F.linear(add_rms_norm(x, y, layer.input_norm, w.eps), layer.qkv, layer.qkv_bias)
                    rope_store(qkv.view(n * width, -1, dim), self.cache.kv[index], row_index, width, self.cos,
                               self.sin_signed, heads)
                    qkv = qkv.view(n, width, heads + 2 * kv_heads, dim).transpose(1, 2)
                    q, kv = qkv[:, :heads], qkv[:, heads:]
                else:
                    qkv = self._qkv_part(x, layer.input_norm, layer.qkv, layer.qkv_bias, cos, sin)
                    qkv = qkv.view(n, width, heads + 2 * kv_heads, dim).transpose(1, 2)
                    q, kv = qkv[:, :heads], qkv[:, heads:]
                    self.cache.kv[index][row_index, :, :width] = kv
                att = F.scaled_dot_product_attention(q, kv[:, :kv_heads], kv[:, kv_heads:], is_causal=True,
                                                     scale=self.scale, enable_gqa=True)
                att = att.transpose(1, 2).reshape(n * width, -1)
                if index == final:
                    # only each prompt's last position reaches the logits: the last layer's output
                    # projection and MLP over n rows instead of n * width
                    picked = torch.arange(n, device=self.device) * width + last
                    att, x = att[picked], x[picked]
                if fused:
                    h = add_rms_norm(x, F.linear(att, layer.o), layer.post_norm, w.eps)
                    y = F.linear(silu_mul(F.linear(h, layer.gate_up)), layer.down)
                else:
                    x = self._mlp_part(x, att, layer.o, layer.post_norm, layer.gate_up, layer.down)
            if fused:
                return F.linear(add_rms_norm(x, y, w.final_norm, w.eps), w.lm_head)
            return F.linear(self._norm(x, w.final_norm), w.lm_head)

    # -- decode step --------------------------------------------------------------

    def _decode_forward(self, tokens, positions, rows: int, length: int):
        """One new token for each of the first `rows` cache rows; keys up to `length`."""
        import torch
        import torch.nn.functional as F

        if self.attention == "triton":
            return self._decode_forward_triton(tokens, positions, rows, length)
        w = self.w
        heads, kv_heads, dim = w.n_heads, w.n_kv_heads, w.head_dim
        ar = torch.arange(rows, device=self.device)
        cos, sin = self.cos_heads[positions], self.sin_heads[positions]          # [B, Hq + 2 Hkv, D]
        # additive mask, built once per step rather than converted from a boolean one in every layer
        visible = self._key_index[:length][None] <= positions[:, None]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(~visible, float("-inf"))[:, None, None]         # [B, 1, 1, L]
        x = F.embedding(tokens, w.embed)
        for index, layer in enumerate(w.layers):
            qkv = self._qkv_part(x, layer.input_norm, layer.qkv, layer.qkv_bias, cos, sin)
            cache = self.cache.kv[index]
            cache[ar, :, positions] = qkv[:, heads:]                # this token's K and V, one store
            q = qkv[:, :heads].view(rows, kv_heads, self.group, dim)   # query heads sharing a KV head
            keys, values = cache[:rows, :kv_heads, :length], cache[:rows, kv_heads:, :length]
            att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)
            x = self._mlp_part(x, att.reshape(rows, -1), layer.o, layer.post_norm, layer.gate_up, layer.down)
        logits = F.linear(self._norm(x, w.final_norm), w.lm_head)
        return logits, logits.argmax(-1)

    def _decode_forward_triton(self, tokens, positions, rows: int, length: int):
        """The decode step in 9 kernels per layer (4 matmuls, split-K reduce aside): residual add +
        RMSNorm fused, rotary embedding + K/V store + split-KV attention in one kernel (plus the
        chunks' merge), silu * up fused."""
        import torch.nn.functional as F

        from .flash_decode import decode_attention, plan_splits
        from .triton_lang_ops import add_rms_norm

        w = self.w
        split_len = plan_splits(rows, w.n_kv_heads, length, self._sms)
        linear = self._linears(rows)
        x = F.embedding(tokens, w.embed)            # the residual stream, updated in place
        y = None
        for index, layer in enumerate(w.layers):
            h = add_rms_norm(x, y, layer.input_norm, w.eps)
            qkv = linear["qkv"](h, layer.qkv, layer.qkv_bias).view(rows, -1, w.head_dim)
            att = decode_attention(qkv, self.cache.kv[index][:rows, :, :length], positions, self.scale, split_len,
                                   w.n_heads, self.cos, self.sin_signed)
            h = add_rms_norm(x, linear["o"](att.view(rows, -1), layer.o), layer.post_norm, w.eps)
            y = linear["down"](linear["gate_up"](h, layer.gate_up), layer.down)   # gate_up: silu(gate) * up
        logits = linear["lm_head"](add_rms_norm(x, y, w.final_norm, w.eps), w.lm_head)
        return logits, logits.argmax(-1)

    _PROJECTIONS = ("qkv", "o", "gate_up", "down", "lm_head")

    def _weights_of(self, name: str) -> tuple[list, list]:
        """Every layer's weight (and bias) of one projection; the single lm_head."""
        if name == "lm_head":
            return [self.w.lm_head], [None]
        return ([getattr(layer, name) for layer in self.w.layers],
                [layer.qkv_bias if name == "qkv" else None for layer in self.w.layers])

    def _linears(self, rows: int) -> dict:
        """The decode step's product per projection for this batch: F.linear (cuBLAS) or the
        skinny Triton GEMM with the configuration chosen for the batch bucket; "gate_up" gives
        silu(gate) * up (the fused kernel, or the product then `silu_mul`)."""
        import functools

        import torch.nn.functional as F

        from .skinny_gemm import gate_up_silu, skinny_linear
        from .triton_lang_ops import silu_mul

        def unfused(product):
            return lambda x, w: silu_mul(product(x, w))

        if self.gemm == "cublas":
            return dict(dict.fromkeys(self._PROJECTIONS, F.linear), gate_up=unfused(F.linear))
        bucket = next((b for b in self.batch_buckets if b >= rows), self.batch_buckets[-1])
        if bucket not in self._gemm_plan:
            self._plan_gemm(bucket)
        out = {}
        for name, choice in self._gemm_plan[bucket].items():
            if choice is None:
                out[name] = unfused(F.linear) if name == "gate_up" else F.linear
            elif isinstance(choice, tuple):      # ("fused", config): gate_up + silu * up in one kernel
                out[name] = functools.partial(gate_up_silu, config=choice[1])
            else:
                product = functools.partial(skinny_linear, config=choice)
                out[name] = unfused(product) if name == "gate_up" else product
        return out

    def _plan_gemm(self, bucket: int) -> None:
        """Choose each projection's product for a batch bucket (before any graph capture: this
        compiles kernels and, for gemm="auto", times the options in CUDA graphs over all layers'
        weights, so the L2 cannot serve them as it would one layer's).

        "auto" times the options rather than trusting a fixed table: the table's configurations
        are one GPU's best, and another GPU, or a cuBLAS update, may rank them differently; it
        costs tens of seconds of warm-up, compiles included (docs/decisions/0054-decode-engine-kernels.md)."""
        import torch
        import torch.nn.functional as F

        from .skinny_gemm import balanced, config_for, fused_configs, gate_up_silu, graph_time_us, skinny_linear
        from .triton_lang_ops import silu_mul

        plan = {}
        for name in self._PROJECTIONS:
            weights, biases = self._weights_of(name)
            n, k = weights[0].shape
            x = torch.randn(bucket, k, device=self.device, dtype=self.dtype)
            if name == "gate_up":
                options = {None: lambda w, b: silu_mul(F.linear(x, w))}
                for config in fused_configs(bucket, n // 2, k, self._sms)[:None if self.gemm == "auto" else 1]:
                    options[("fused", config)] = lambda w, b, c=config: gate_up_silu(x, w, c)
            else:   # the table's configuration, then (auto) its variants sized to whole waves over the SMs
                config = config_for(bucket, n, k, self._sms)
                configs = [config] + [b for waves in (1, 2) if (b := balanced(config, bucket, n, k, self._sms, waves))]
                options = {None: lambda w, b: F.linear(x, w, b)}
                for config in configs[:None if self.gemm == "auto" else 1]:
                    options[config] = lambda w, b, c=config: skinny_linear(x, w, b, c)
            if self.gemm != "auto":
                plan[name] = list(options)[1]
                continue
            pairs = list(zip(weights, biases))
            timings = {}
            for choice, fn in options.items():
                try:
                    timings[choice] = graph_time_us(lambda: [fn(w, b) for w, b in pairs]) / len(pairs)
                except Exception:  # noqa: BLE001 — (another GPU: too little shared memory, say) not this one
                    log.exception("decode GEMM option %s for %s at batch %d failed", choice, name, bucket)
            best = min(timings, key=timings.get)
            # a Triton option must win by 2 %: below that the timings' noise decides
            plan[name] = best if best is not None and timings[best] < timings[None] * 0.98 else None
            self.gemm_timings.append({"bucket": bucket, "proj": name, "cublas_us": round(timings[None], 2),
                                      "triton_us": {str(c): round(t, 2) for c, t in timings.items() if c is not None},
                                      "choice": str(plan[name])})
        self._gemm_plan[bucket] = plan

    def _qkv_part(self, x, norm, qkv_weight, qkv_bias, cos, sin):
        """Norm, fused q/k/v projection and rotary embedding (v heads pass unchanged)."""
        import torch
        import torch.nn.functional as F

        return self._rope(F.linear(self._norm(x, norm), qkv_weight, qkv_bias), cos, sin)

    def _rope(self, qkv, cos, sin):
        """Rotary embedding of the q and k heads of `qkv` `[rows, (Hq + 2 Hkv) * D]` (v: cos 1, sin 0)."""
        import torch

        w = self.w
        qkv = qkv.view(qkv.shape[0], w.n_heads + 2 * w.n_kv_heads, 2, w.head_dim // 2)
        return torch.addcmul(qkv.flatten(2) * cos, qkv.flip(2).flatten(2), sin)

    def _mlp_part(self, x, att, o, norm, gate_up, down):
        """Output projection and the MLP, each residual add inside its matmul."""
        import torch
        import torch.nn.functional as F

        x = torch.addmm(x, att, o.t())
        gate, up = F.linear(self._norm(x, norm), gate_up).chunk(2, dim=-1)
        return torch.addmm(x, F.silu(gate) * up, down.t())

    def bucket(self, rows: int, length: int) -> tuple[int, int]:
        return (next(b for b in self.batch_buckets if b >= rows), next(b for b in self.length_buckets if b >= length))

    def decode(self, tokens: Sequence[int], positions: Sequence[int]):
        """Feed one token per cache row 0..len-1 at its position; (logits, greedy ids) per row.

        Rows not in use carry any token at position 0: their slot is free, so
        what they write is overwritten by the next prefill.
        """
        import torch

        rows, length = len(tokens), max(positions) + 1
        if self._graphs:
            graph, logits, greedy = self._replay(tokens, positions, None)
            return logits[:rows], greedy[:rows]
        with torch.inference_mode():
            t = torch.tensor(tokens, device=self.device)
            p = torch.tensor(positions, device=self.device)
            return self._step(t, p, rows, length)

    def decode_async(self, tokens: Sequence[int], positions: Sequence[int], carry: Sequence[bool]) -> "PendingIds":
        """Enqueue a greedy decode step and return at once; `.tolist()` of the result waits for it.

        A row with `carry[row]` takes as its token the id the previous `decode_async` step chose
        for that row, still on the device, so the host can launch step n+1 before it has read
        step n's ids (the scheduler reads them while the GPU runs the next step).
        """
        import torch

        rows, length = len(tokens), max(positions) + 1
        if self._graphs:
            graph, logits, greedy = self._replay(tokens, positions, carry)
            self._last[:greedy.shape[0]].copy_(greedy)
            host = self._out_host[self._flip]       # two buffers: step n's ids stay until read
            self._flip ^= 1
            host[:rows].copy_(greedy[:rows], non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return PendingIds(host, rows, done)
        with torch.inference_mode():
            t = torch.tensor(tokens, device=self.device)
            t = torch.where(torch.tensor(carry, device=self.device), self._last[:rows], t)
            _, greedy = self._step(t, torch.tensor(positions, device=self.device), rows, length)
            self._last[:rows] = greedy
            return PendingIds(greedy.cpu(), rows, None)

    def _replay(self, tokens, positions, carry):
        """Copy a step's inputs (one pinned buffer, one copy) and replay its bucket's graph."""
        import torch

        rows = len(tokens)
        rows_b, length_b = self.bucket(rows, max(positions) + 1)
        graph, logits, greedy = self._graphs[(rows_b, length_b)]
        self._copied.synchronize()          # the previous step's copy has left the buffer
        host = self._host_np
        host[:, rows:] = 0                  # rows past `rows`: token 0 at position 0 (free slots)
        host[0, :rows] = tokens
        host[1, :rows] = positions
        host[2, :rows] = carry if carry is not None else 0
        self._inputs.copy_(self._host, non_blocking=True)
        self._copied.record()
        if carry is not None and any(carry):
            tokens_b = self._tokens[:rows_b]
            torch.where(self._inputs[2, :rows_b].bool(), self._last[:rows_b], tokens_b, out=tokens_b)
        graph.replay()
        return graph, logits, greedy

    def capture_graphs(self) -> None:
        """Capture the decode step for every (batch, length) bucket; logs the time it took."""
        import torch

        start = time.perf_counter()
        self._inputs = torch.zeros((3, self.slots), dtype=torch.long, device=self.device)
        self._tokens, self._positions = self._inputs[0], self._inputs[1]
        self._host = torch.zeros((3, self.slots), dtype=torch.long).pin_memory()
        self._out_host = [torch.zeros(self.slots, dtype=torch.long).pin_memory() for _ in range(2)]
        self._flip = 0
        self._host_np = self._host.numpy()
        self._copied = torch.cuda.Event()
        self._copied.record()
        pool = self._pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        with torch.inference_mode():
            if self.attention == "triton" and self.gemm != "cublas":
                for rows in self.batch_buckets:     # kernels compiled and timed outside any capture
                    self._plan_gemm(rows)
            for length in reversed(self.length_buckets):
                for rows in reversed(self.batch_buckets):
                    args = (self._tokens[:rows], self._positions[:rows], rows, length)
                    stream.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(stream):
                        self._step(*args)      # warm-up: kernels chosen (compiled), workspaces allocated
                    torch.cuda.current_stream(self.device).wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        logits, greedy = self._step(*args)
                    self._graphs[(rows, length)] = (graph, logits, greedy)
        torch.cuda.synchronize(self.device)
        self.warmup_s = time.perf_counter() - start
        log.info("captured %d decode CUDA graphs (batch %s x length %s) in %.1f s", len(self._graphs),
                 self.batch_buckets, self.length_buckets, self.warmup_s)

    # -- figures for the roofline ----------------------------------------------------

    def step_bytes(self, rows: int, kv_positions: int) -> int:
        """Bytes one decode step must read at least: the weights plus `kv_positions` cached positions."""
        return self.w.nbytes() + kv_positions * self.cache.nbytes_per_token()


class PendingIds:
    """The greedy ids of a decode step that may still be running; `tolist()` waits for it only."""

    def __init__(self, host, rows: int, done):
        self._host, self._rows, self._done = host, rows, done

    def tolist(self) -> list[int]:
        if self._done is not None:
            self._done.synchronize()
        return self._host[:self._rows].tolist()
