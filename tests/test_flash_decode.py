"""The split-KV decode attention kernel against SDPA, in Triton's interpreter on the CPU."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# the kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter, which must be
# switched on before triton is first imported: the CPU cases run in a child pytest
DEVICE = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"
needs_kernel = pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason="run by the child process below")


@pytest.mark.skipif(INTERPRETED or DEVICE == "cuda", reason="this is the parent")
def test_kernel_cases_pass_in_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" in done.stdout   # the parent test itself is skipped there


@pytest.fixture(scope="module")
def kernel():
    from tritonrag.engine import flash_decode

    return flash_decode


def reference(q, cache, lengths, scale):
    """SDPA with a boolean mask over the whole cache: what the engine did before."""
    rows, kv_heads = q.shape[:2]
    keys, values = cache[:rows, :kv_heads], cache[:rows, kv_heads:]
    visible = torch.arange(cache.shape[2], device=cache.device)[None] < lengths[:, None]
    return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None],
                                                            scale=scale)


@needs_kernel
@pytest.mark.parametrize("group, dim, split_len", [(6, 128, 64), (3, 64, 128), (1, 64, 192)])
def test_split_kv_attention_equals_masked_sdpa_for_ragged_lengths(kernel, group, dim, split_len):
    torch.manual_seed(0)
    rows, kv_heads, length = 5, 2, 256
    cache = torch.randn(rows + 2, 2 * kv_heads, length + 64, dim, device=DEVICE)[:, :, :length]   # a bucket view of a longer cache
    cache[:, :, 100:] *= 3.0                                                       # chunks with different maxima
    q = torch.randn(rows, kv_heads, group, dim, device=DEVICE)
    # one position, a chunk boundary, inside a chunk, a whole bucket, rows whose later chunks are empty
    lengths = torch.tensor([1, 64, 100, 256, 129], device=DEVICE)
    scale = dim ** -0.5
    out = kernel.decode_attention(q, cache, lengths, scale, split_len)
    torch.testing.assert_close(out, reference(q, cache, lengths, scale), atol=2e-5, rtol=1e-4)


@needs_kernel
def test_keys_past_a_rows_length_are_never_read(kernel):
    """NaN beyond each row's length (never written) must not reach the result."""
    torch.manual_seed(1)
    q = torch.randn(2, 1, 4, 64, device=DEVICE)
    cache = torch.randn(2, 2, 128, 64, device=DEVICE)
    lengths = torch.tensor([3, 70], device=DEVICE)
    clean = kernel.decode_attention(q, cache.clone(), lengths, 0.125, 64)
    for row, n in enumerate(lengths.tolist()):
        cache[row, :, n:] = float("nan")
    assert torch.equal(kernel.decode_attention(q, cache, lengths, 0.125, 64), clean)


@needs_kernel
def test_plan_splits_fills_the_gpu_and_keeps_whole_blocks(kernel):
    assert kernel.plan_splits(rows=32, kv_heads=2, length=512, sms=132) == 128       # 5 wanted: 4 chunks of 128
    assert kernel.plan_splits(rows=256, kv_heads=2, length=512, sms=132) == 512      # enough rows: one chunk
    assert kernel.plan_splits(rows=1, kv_heads=2, length=100, sms=132) == 64
    assert kernel.plan_splits(rows=128, kv_heads=2, length=384, sms=132) == 192
