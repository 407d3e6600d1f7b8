"""The skinny decode-step GEMM against F.linear, in Triton's interpreter on the CPU (or on CUDA)."""

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


@needs_kernel
@pytest.mark.parametrize("m", [3, 16])
@pytest.mark.parametrize("k", [64, 200])                 # whole K blocks; a ragged last block
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("splits", [1, 3])               # one pass; split-K with the reduce kernel
@pytest.mark.parametrize("rows", [0, 40])                # whole 64-row tiles; 40 rows each (3 programs)
def test_skinny_linear_equals_f_linear(m, k, bias, splits, rows):
    from tritonrag.generation.engine.skinny_gemm import GemmConfig, skinny_linear

    torch.manual_seed(m * 1000 + k + 7 * splits + bias)
    x = torch.randn(m, k, device=DEVICE)
    weight = torch.randn(96, k, device=DEVICE)              # N = 96: one whole 64-row block, one ragged
    b = torch.randn(96, device=DEVICE) if bias else None
    config = GemmConfig(block_n=64, block_k=64, block_m=16, splits=splits, warps=4, stages=2, rows=rows)
    torch.testing.assert_close(skinny_linear(x, weight, b, config), torch.nn.functional.linear(x, weight, b),
                               atol=1e-4, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("m, k, rows", [(3, 64, 0), (16, 200, 40)])
def test_gate_up_silu_equals_silu_of_gate_times_up(m, k, rows):
    from tritonrag.generation.engine.skinny_gemm import GemmConfig, gate_up_silu

    torch.manual_seed(m + k)
    x, weight = torch.randn(m, k, device=DEVICE), torch.randn(2 * 96, k, device=DEVICE)
    gate, up = torch.nn.functional.linear(x, weight).chunk(2, dim=-1)
    config = GemmConfig(block_n=64, block_k=64, block_m=16, warps=4, stages=2, rows=rows)
    torch.testing.assert_close(gate_up_silu(x, weight, config), torch.nn.functional.silu(gate) * up,
                               atol=1e-4, rtol=1e-4)


@needs_kernel
def test_skinny_linear_rows_of_a_batch_equal_the_rows_alone():
    """Split-K partials are summed in a fixed order: a row's bits do not depend on its batch."""
    from tritonrag.generation.engine.skinny_gemm import GemmConfig, skinny_linear

    torch.manual_seed(5)
    x, weight = torch.randn(5, 256, device=DEVICE), torch.randn(64, 256, device=DEVICE)
    config = GemmConfig(block_n=64, block_k=64, block_m=16, splits=4, warps=4, stages=2)
    batch = skinny_linear(x, weight, None, config)
    assert torch.equal(skinny_linear(x[2:3], weight, None, config), batch[2:3])
    assert torch.equal(skinny_linear(x, weight, None, config), batch)


@needs_kernel
def test_shape_errors_are_clear():
    from tritonrag.generation.engine.skinny_gemm import skinny_linear

    with pytest.raises(ValueError, match="contiguous last axis"):
        skinny_linear(torch.randn(4, 32, device=DEVICE), torch.randn(32, 16, device=DEVICE).t())
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        skinny_linear(torch.randn(4, 32, device=DEVICE), torch.randn(16, 31, device=DEVICE))


@needs_kernel   # imports triton: in the child
def test_configs_fit_shared_memory_and_split_only_what_fills_too_few_programs():
    import math

    from tritonrag.generation.engine.skinny_gemm import (FUSED_MEASURED, GemmConfig, balanced, candidates, config_for,
                                              default_config, fused_configs, k_split_of)

    for m, n, k in ((32, 2048, 1536), (256, 1536, 8960), (128, 151936, 1536)):
        configs = candidates(m, n, k, sms=132)
        assert configs and all(c.smem_bytes() <= 220 * 1024 and k % c.block_k == 0 for c in configs)
    assert default_config(128, 151936, 1536).splits == 1          # 1187 row blocks fill 132 SMs
    assert default_config(128, 1536, 8960).splits > 1              # 24 row blocks: split K
    assert default_config(3, 96, 64).block_m == 16
    assert k_split_of(200, GemmConfig(block_k=64, splits=3)) == 128  # whole blocks: 2 splits of 128 and 72
    assert config_for(7, 123, 45) == default_config(7, 123, 45)     # no measured entry: the heuristic
    # 17920 rows: 140 programs of 128 would leave 8 for a second wave; 136-row programs make 132
    wide = balanced(GemmConfig(block_n=256, block_k=64, block_m=128, warps=8), 128, 17920, 1536, sms=132)
    assert wide.rows == 136 and math.ceil(17920 / wide.rows) == 132
    assert balanced(GemmConfig(block_n=128), 128, 151936, 1536, sms=132) is None   # no fewer rows fit
    assert fused_configs(20, 8960, 1536)[0] == FUSED_MEASURED[(8960, 1536)][32]     # the measured one first


@needs_kernel
def test_engine_with_the_skinny_gemm_gives_the_same_greedy_tokens():
    """The Triton decode step with gemm="triton" (every projection, lm_head included, gate/up
    fused with silu * up) against gemm="cublas": SmolLM2's first 2 layers, fp32, two ragged prompts."""
    from transformers import AutoModelForCausalLM

    from tritonrag.generation.engine import ContinuousBatcher, DecodeEngine, Sequence
    from tritonrag.models import sources as model_sources

    try:
        path = model_sources.resolve(model_sources.DEFAULT_GENERATOR)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().to(DEVICE)
    model.model.layers = model.model.layers[:2]      # the interpreter runs every program in Python
    model.config.num_hidden_layers = 2
    prompts = [[1, 504, 3458, 282, 4649, 30], [1, 17, 2830, 314, 260, 3117, 282, 5066, 314, 1675, 28, 2451, 30, 12]]
    results = {}
    for gemm in ("cublas", "triton"):
        engine = DecodeEngine.from_hf(model, slots=2, max_len=32, attention="triton", gemm=gemm, cuda_graphs=False)
        seqs = [Sequence(p, 3) for p in prompts]
        batcher = ContinuousBatcher(engine)
        for seq in seqs:
            batcher.submit(seq)
        batcher.run_until_idle()
        results[gemm] = [s.tokens for s in seqs]
        results[gemm + " logits"], _ = engine.decode([seqs[0].tokens[-1], seqs[1].tokens[-1]],
                                                     [len(prompts[0]) + 2, len(prompts[1]) + 2])
    assert results["triton"] == results["cublas"] and all(len(t) == 3 for t in results["triton"])
    torch.testing.assert_close(results["triton logits"], results["cublas logits"], atol=2e-3, rtol=1e-3)


@needs_kernel
def test_engine_refuses_an_unknown_or_impossible_gemm_choice():
    from tritonrag.generation.engine.decoding import DecodeEngine

    with pytest.raises(ValueError, match="gemm must be"):
        DecodeEngine(None, None, None, 1, 8, "cpu", torch.float32, gemm="magma")
    with pytest.raises(ValueError, match="attention='triton'"):
        DecodeEngine(None, None, None, 1, 8, "cpu", torch.float32, attention="sdpa", gemm="triton")
