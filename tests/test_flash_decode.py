"""The split-KV decode attention kernel against SDPA, in Triton's interpreter on the CPU."""

import importlib.util

import pytest
import torch

# not imported here: the parent leaves triton unimported (see triton_interpreter.py)
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from triton_interpreter import DEVICE, needs_kernel, parent_only, run_module_interpreted  # noqa: E402


@parent_only
def test_kernel_cases_pass_in_triton_interpreter():
    run_module_interpreted(__file__)


@pytest.fixture(scope="module")
def kernel():
    from tritonrag.generation.engine import flash_decode

    return flash_decode


def rope_tables(max_len, dim):
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    half = dim // 2
    return cos.to(DEVICE), sin.to(DEVICE), torch.cat((-sin[:, :half], sin[:, half:]), -1).to(DEVICE)


def reference(qkv, cache, positions, scale, heads, cos, sin):
    """transformers' way: rotate q and k, store k and v, SDPA with a mask over the bucket."""
    rows = qkv.shape[0]
    kv_heads = cache.shape[1] // 2
    dim = qkv.shape[-1]

    def rope(x, pos):
        rotated = torch.cat((-x[..., dim // 2:], x[..., :dim // 2]), -1)
        return x * cos[pos][:, None] + rotated * sin[pos][:, None]

    q = rope(qkv[:, :heads], positions)
    k = rope(qkv[:, heads:heads + kv_heads], positions)
    cache = cache.clone()
    ar = torch.arange(rows, device=cache.device)
    cache[ar, :kv_heads, positions] = k
    cache[ar, kv_heads:, positions] = qkv[:, heads + kv_heads:]
    visible = torch.arange(cache.shape[2], device=cache.device)[None] <= positions[:, None]
    q = q.view(rows, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, cache[:rows, :kv_heads], cache[:rows, kv_heads:], attn_mask=visible[:, None, None], scale=scale)
    return out, cache


@needs_kernel
@pytest.mark.parametrize("heads, kv_heads, dim, split_len", [(12, 2, 128, 64), (9, 3, 64, 128), (2, 2, 64, 256)])
def test_split_kv_attention_equals_rope_store_and_masked_sdpa(kernel, heads, kv_heads, dim, split_len):
    torch.manual_seed(0)
    rows, bucket = 5, 256
    cache = torch.randn(rows + 2, 2 * kv_heads, bucket + 64, dim, device=DEVICE)[:, :, :bucket]  # a bucket's view
    cache[:, :, 100:] *= 3.0                                                        # chunks with different maxima
    qkv = torch.randn(rows, heads + 2 * kv_heads, dim, device=DEVICE)
    # first position, a chunk's first / last key, inside a chunk, the bucket's last key
    positions = torch.tensor([0, 64, 99, 255, 128], device=DEVICE)
    cos, sin, signed = rope_tables(bucket + 64, dim)
    scale = dim ** -0.5
    expected, expected_cache = reference(qkv, cache, positions, scale, heads, cos, sin)
    out = kernel.decode_attention(qkv, cache, positions, scale, split_len, heads, cos, signed)
    tol = dict(atol=2e-5, rtol=1e-4) if DEVICE == "cpu" else dict(atol=1e-4, rtol=1e-4)   # TF32 would be ~1e-3
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(cache, expected_cache[:, :, :bucket], atol=1e-5, rtol=1e-5)


@needs_kernel
def test_keys_past_a_rows_position_are_never_read(kernel):
    """NaN beyond each row's position (never written yet) must not reach the result."""
    torch.manual_seed(1)
    qkv = torch.randn(2, 6, 64, device=DEVICE)
    cache = torch.randn(2, 2, 128, 64, device=DEVICE)
    positions = torch.tensor([3, 70], device=DEVICE)
    clean = kernel.decode_attention(qkv, cache.clone(), positions, 0.125, 64, heads=4)
    for row, n in enumerate(positions.tolist()):
        cache[row, :, n:] = float("nan")
    assert torch.equal(kernel.decode_attention(qkv, cache, positions, 0.125, 64, heads=4), clean)


@needs_kernel
def test_add_rms_norm_and_silu_mul_equal_torch():
    from tritonrag.generation.engine import triton_lang_ops as triton_ops

    torch.manual_seed(2)
    x, y, weight = (torch.randn(3, 96, device=DEVICE), torch.randn(3, 96, device=DEVICE),
                    torch.rand(96, device=DEVICE) + 0.5)
    expected_x = x + y
    expected = torch.nn.functional.rms_norm(expected_x, (96,), weight, 1e-6)
    stream = x.clone()
    torch.testing.assert_close(triton_ops.add_rms_norm(stream, y, weight, 1e-6), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stream, expected_x)                     # the residual stream, updated in place
    torch.testing.assert_close(triton_ops.add_rms_norm(x, None, weight, 1e-6),
                               torch.nn.functional.rms_norm(x, (96,), weight, 1e-6), atol=1e-5, rtol=1e-5)
    gate_up = torch.randn(4, 2 * 1500, device=DEVICE)                    # two column blocks, the second ragged
    gate, up = gate_up.chunk(2, -1)
    torch.testing.assert_close(triton_ops.silu_mul(gate_up), torch.nn.functional.silu(gate) * up)


@needs_kernel
def test_plan_splits_fills_the_gpu_and_keeps_whole_blocks(kernel):
    assert kernel.plan_splits(rows=32, kv_heads=2, length=512, sms=132) == 128       # 5 wanted: 4 chunks of 128
    assert kernel.plan_splits(rows=256, kv_heads=2, length=512, sms=132) == 512      # enough rows: one chunk
    assert kernel.plan_splits(rows=1, kv_heads=2, length=100, sms=132) == 64
    assert kernel.plan_splits(rows=128, kv_heads=2, length=384, sms=132) == 192


@needs_kernel
@pytest.mark.parametrize("block_tokens", [16, 4])   # one program with 6 masked tokens; 3 programs, the last ragged
def test_prefill_rope_store_rotates_q_and_k_in_place_and_fills_the_cache_rows(block_tokens):
    from tritonrag.generation.engine import triton_lang_ops as triton_ops

    torch.manual_seed(3)
    n, width, heads, kv_heads, dim = 2, 5, 4, 2, 64
    qkv = torch.randn(n * width, heads + 2 * kv_heads, dim, device=DEVICE)
    cache = torch.zeros(4, 2 * kv_heads, 16, dim, device=DEVICE)
    slots = torch.tensor([3, 1], device=DEVICE)
    cos, sin, signed = rope_tables(16, dim)
    pos = torch.arange(width, device=DEVICE).repeat(n)
    rotated = torch.cat((-qkv[..., dim // 2:], qkv[..., :dim // 2]), -1)
    expected = qkv * cos[pos][:, None] + rotated * sin[pos][:, None]
    expected[:, heads + kv_heads:] = qkv[:, heads + kv_heads:]                      # v heads unchanged
    triton_ops.rope_store(qkv, cache, slots, width, cos, signed, heads, block_tokens=block_tokens)
    torch.testing.assert_close(qkv, expected, atol=1e-5, rtol=1e-5)
    kv = expected[:, heads:].view(n, width, 2 * kv_heads, dim).transpose(1, 2)
    torch.testing.assert_close(cache[3, :, :width], kv[0])
    torch.testing.assert_close(cache[1, :, :width], kv[1])
    assert not cache[[0, 2]].any() and not cache[:, :, width:].any()


@needs_kernel
def test_engine_triton_path_gives_the_sdpa_paths_greedy_tokens():
    """The whole fused prefill and decode step (SmolLM2's first 6 layers, GQA 9/3, fp32) against
    the CPU's path."""
    from transformers import AutoModelForCausalLM

    from tritonrag.generation.engine import ContinuousBatcher, DecodeEngine, Sequence
    from tritonrag.models import sources as model_sources

    try:
        path = model_sources.resolve(model_sources.DEFAULT_GENERATOR)
    except FileNotFoundError as exc:   # a GPU host without the model packages
        pytest.skip(str(exc))
    model = AutoModelForCausalLM.from_pretrained(path,
                                                 dtype=torch.float32).eval().to(DEVICE)
    model.model.layers = model.model.layers[:6]      # the interpreter runs every program in Python
    model.config.num_hidden_layers = 6
    prompts = [[1, 504, 3458, 282, 4649, 30], [1, 17, 2830, 314, 260, 3117, 282, 5066, 314, 1675, 28, 2451, 30, 12]]
    results = {}
    for attention in ("sdpa", "triton"):
        engine = DecodeEngine.from_hf(model, slots=4, max_len=96, attention=attention, cuda_graphs=False)
        seqs = [Sequence(p, 5) for p in prompts]
        batcher = ContinuousBatcher(engine)
        for seq in seqs:
            batcher.submit(seq)
        batcher.run_until_idle()
        results[attention] = [s.tokens for s in seqs]
        logits, _ = engine.decode([seqs[0].tokens[-1], seqs[1].tokens[-1]],
                                  [len(prompts[0]) + 4, len(prompts[1]) + 4])
        results[attention + " logits"] = logits
    assert results["triton"] == results["sdpa"]
    torch.testing.assert_close(results["triton logits"], results["sdpa logits"], atol=2e-3, rtol=1e-3)
