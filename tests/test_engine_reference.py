"""The decode engine's logits against transformers' on the same random weights (no downloads).

Teacher forcing: each sequence's first tokens are prefilled, the rest fed one decode step at a
time; the logits of every step are compared with one transformers forward over the whole
sequence. Tiny Llama, Qwen2 (q/k/v biases, tied embeddings) and Mistral configs, all with
grouped-query attention, alone and batched (sequences of different lengths in one batch). fp32 on
the CPU here; the same comparison in bf16 on a GPU's CUDA-graph path is marked `gpu`
(`pytest -m gpu`). Config features the engine does not compute are refused at load.
"""

import pytest
import torch

from tritonrag.generation.engine import DecodeEngine
from tritonrag.generation.engine.decoding import _prefill_views

VOCAB, MAX_LEN = 256, 64
# (prefill length, total length) per sequence: prefills of different lengths, decode steps after
SHAPES = [(5, 17), (12, 20), (1, 9), (20, 31)]


def tiny_config(kind: str, **extra):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5)
    if kind == "llama":
        return LlamaConfig(**{**common, **extra})
    if kind == "llama3-rope":
        rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        return LlamaConfig(**{**common, "rope_parameters": rope, **extra})
    if kind == "qwen2":   # q/k/v biases always; tied input and output embeddings
        return Qwen2Config(**{**common, "tie_word_embeddings": True, **extra})
    if kind == "mistral":  # its default 4096-position window is never reached in MAX_LEN positions
        return MistralConfig(**{**common, "head_dim": 24, **extra})
    raise ValueError(kind)


def random_model(config, dtype=torch.float32, seed=0):
    """A transformers causal LM with every parameter random (biases and norms too, which
    transformers initialises to 0 and 1), scaled so that logits spread over a few units."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model.to(dtype)


def sequences(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (total,), generator=g).tolist() for _, total in SHAPES]


def reference_logits(model, seqs):
    """transformers' logits at every position of each sequence, one forward per sequence."""
    with torch.inference_mode():
        return [model(torch.tensor([s], device=model.device)).logits[0].float() for s in seqs]


def engine_logits(engine, seqs, rows):
    """Teacher-forced engine logits of `seqs` decoded together in cache rows 0..n-1: the logits
    after each prefill, then after each decode step, per sequence (positions prefill-1 .. total-2)."""
    prefills = [SHAPES[i][0] for i in rows]
    out = [[] for _ in seqs]
    with torch.inference_mode():
        first = engine.prefill(list(range(len(seqs))), [s[:p] for s, p in zip(seqs, prefills)])
        for i, logits in enumerate(first):
            out[i].append(logits.float())
        position = list(prefills)
        while any(pos < len(s) - 1 for pos, s in zip(position, seqs)):
            # every row steps (rows 0..n-1 all take part); a finished sequence's row repeats its
            # last step, whose result is not kept
            tokens = [s[min(pos, len(s) - 1)] for pos, s in zip(position, seqs)]
            steps = [min(pos, len(s) - 1) for pos, s in zip(position, seqs)]
            logits, _ = engine.decode(tokens, steps)
            for i, (pos, s) in enumerate(zip(position, seqs)):
                if pos < len(s) - 1:
                    out[i].append(logits[i].float())
                    position[i] += 1
    return [torch.stack(rows_) for rows_ in out]


def errors(engine, model, seqs, rows):
    """Per sequence: the largest |engine - transformers| over the compared positions, and that
    error relative to the largest |logit| (and whether the greedy tokens agree everywhere)."""
    got = engine_logits(engine, [seqs[i] for i in rows], rows)
    ref = reference_logits(model, [seqs[i] for i in rows])
    out = []
    for i, g, r in zip(rows, got, ref):
        want = r[SHAPES[i][0] - 1:len(seqs[i]) - 1]
        assert g.shape == want.shape
        out.append(((g - want).abs().max().item(), (g - want).abs().max().item() / want.abs().max().item(),
                    bool((g.argmax(-1) == want.argmax(-1)).all())))
    return out


KINDS = ["llama", "llama3-rope", "qwen2", "mistral"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attention", ["sdpa"])
def test_fp32_logits_equal_transformers_alone_and_batched(kind, attention):
    model = random_model(tiny_config(kind))
    seqs = sequences()
    engine = DecodeEngine.from_hf(model, slots=len(SHAPES), max_len=MAX_LEN, attention=attention)
    if kind == "qwen2":   # what this config is here to cover
        assert engine.w.layers[0].qkv_bias is not None and engine.w.lm_head.data_ptr() == engine.w.embed.data_ptr()
        assert engine.w.n_heads == 2 * engine.w.n_kv_heads
    batched = errors(engine, model, seqs, list(range(len(seqs))))
    alone = [errors(engine, model, seqs, [i])[0] for i in range(len(seqs))]
    for absolute, relative, same_greedy in batched + alone:
        assert relative < 1e-5 and same_greedy, (absolute, relative)


class _EagerReplay:
    """Stands in for a captured prefill graph on the CPU: `replay()` runs the eager forward over
    the same input buffer and writes the same output buffer, as the graph does on a GPU (where
    `test_captured_prefill_equals_the_eager_prefill` checks the real graphs)."""

    def __init__(self, engine, inputs, logits, n, width):
        self.engine, self.inputs, self.logits, self.n, self.width = engine, inputs, logits, n, width

    def replay(self):
        views = _prefill_views(self.inputs, self.n, self.width)
        self.logits.copy_(self.engine._prefill_forward(*views, self.n, self.width))


def test_bucketed_prefill_layout_equals_the_plain_prefill():
    """The graph path's host layout (prompts right-padded to the width bucket, then the cache rows
    and last positions) gives the plain prefill's logits and cache rows (fp32, CPU)."""
    model = random_model(tiny_config("llama"))
    engine = DecodeEngine.from_hf(model, slots=8, max_len=200, prefill_graph_prompts=4)
    for width in engine.prefill_widths:
        for n in range(1, engine.prefill_graph_prompts + 1):
            inputs = torch.zeros(n * width + 2 * n, dtype=torch.long)
            logits = torch.zeros(n, VOCAB)
            engine._prefill_graphs[(n, width)] = (_EagerReplay(engine, inputs, logits, n, width), inputs, logits)
    g = torch.Generator().manual_seed(3)
    calls = [[torch.randint(0, VOCAB, (length,), generator=g).tolist() for length in lengths]
             for lengths in ([7], [64, 3], [65, 120, 1], [130, 5, 190, 64], [2, 199])]
    for prompts in calls:
        rows = list(range(4, 4 + len(prompts)))[::-1]
        engine.cache.kv.zero_()
        bucketed = engine.prefill(rows, prompts)
        bucketed_cache = engine.cache.kv.clone()
        graphs, engine._prefill_graphs = engine._prefill_graphs, {}
        engine.cache.kv.zero_()
        plain = engine.prefill(rows, prompts)
        engine._prefill_graphs = graphs
        assert torch.allclose(bucketed, plain, rtol=1e-4, atol=1e-4), prompts
        for row, prompt in zip(rows, prompts):
            assert torch.allclose(bucketed_cache[:, row, :, :len(prompt)], engine.cache.kv[:, row, :, :len(prompt)],
                                  rtol=1e-4, atol=1e-4)
        assert not bucketed_cache[:, :4].any()
    assert engine.prefill_replays == len(calls)


# -- refused at load -------------------------------------------------------------------------------

REFUSED = {
    "mistral-sliding-window": ("mistral", {"sliding_window": 16}, "sliding-window"),
    "qwen2-sliding-window": ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 0},
                             "sliding-window"),
    "llama-attention-bias": ("llama", {"attention_bias": True}, "o_proj.bias"),
    "llama-mlp-bias": ("llama", {"mlp_bias": True}, "gate_proj.bias, up_proj.bias, down_proj.bias"),
    "rope-dynamic": ("llama", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}},
                     "rope type 'dynamic'"),
    "rope-longrope": ("llama", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0,
                                                    "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                                                    "original_max_position_embeddings": 32}},
                      "rope type 'longrope'"),
    "gelu-activation": ("llama", {"hidden_act": "gelu"}, "activation 'gelu'"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_config_features_are_refused_at_load(name):
    kind, extra, message = REFUSED[name]
    model = random_model(tiny_config(kind, **extra))
    with pytest.raises(ValueError, match=message):
        DecodeEngine.from_hf(model, slots=2, max_len=MAX_LEN)


def test_the_triton_attention_refuses_a_head_it_cannot_tile():
    """Its kernels take a head as one power-of-two block: a 24-wide head is refused at load
    (on a GPU, `attention="auto"` then takes SDPA) instead of failing to compile mid-request."""
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        DecodeEngine.from_hf(random_model(tiny_config("mistral")), slots=2, max_len=MAX_LEN, attention="triton")


def test_a_window_no_sequence_can_reach_is_accepted():
    model = random_model(tiny_config("mistral", sliding_window=MAX_LEN))
    DecodeEngine.from_hf(model, slots=2, max_len=MAX_LEN)


# -- bf16 on a GPU's CUDA-graph path -----------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_cuda_graph_logits_agree_with_transformers(kind):
    """The engine in bf16 with CUDA graphs (and the Triton attention where available) against
    transformers in fp32 on the same bf16-rounded weights: its error may be at most twice that of
    transformers' own bf16 forward (the rounding every bf16 path pays) plus 1 % of the logits' range."""
    seqs = sequences()
    fp32 = random_model(tiny_config(kind)).to(torch.bfloat16).float().to("cuda")   # bf16-exact weights
    bf16 = random_model(tiny_config(kind)).to("cuda", torch.bfloat16)
    engine = DecodeEngine.from_hf(bf16, slots=len(SHAPES), max_len=MAX_LEN, cuda_graphs=True, prefill_graph_prompts=4)
    assert engine._graphs
    rows = list(range(len(seqs)))
    reference = reference_logits(fp32, seqs)
    baseline = reference_logits(bf16, seqs)
    report = []
    for batch in [rows] + [[i] for i in rows]:
        got = engine_logits(engine, [seqs[i] for i in batch], batch)
        for i, g in zip(batch, got):
            lo, hi = SHAPES[i][0] - 1, len(seqs[i]) - 1
            want, hf16 = reference[i][lo:hi], baseline[i][lo:hi]
            err, hf_err = (g - want).abs().max().item(), (hf16 - want).abs().max().item()
            report.append((kind, len(batch), i, round(err, 4), round(hf_err, 4)))
            assert err <= 2 * hf_err + 0.01 * want.abs().max().item(), report[-1]
    print("kind, batch, sequence, engine error, transformers bf16 error:", *report, sep="\n")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_captured_prefill_equals_the_eager_prefill(kind):
    """Prefills of 1-4 prompts replay a graph captured at the next width bucket (prompts padded):
    the logits and the prompts' cache rows equal the eager prefill's within bf16 rounding, and no
    other cache row changes. Replays run back to back, so a replay that read stale inputs or left
    its output to be overwritten would show here."""
    model = random_model(tiny_config(kind)).to("cuda", torch.bfloat16)
    engine = DecodeEngine.from_hf(model, slots=8, max_len=200, cuda_graphs=True, prefill_graph_prompts=4)
    assert engine._prefill_graphs and engine.prefill_widths[:3] == [64, 128, 192]
    g = torch.Generator().manual_seed(3)
    calls = [[torch.randint(0, VOCAB, (int(length),), generator=g).tolist() for length in lengths]
             for lengths in ([7], [64, 3], [65, 120, 1], [130, 5, 190, 64], [2, 199])]
    engine.cache.kv.zero_()                       # the load-time warm-up prefilled rows 0-7
    replayed = [engine.prefill(list(range(4, 4 + len(c))), c) for c in calls]    # rows 4..7, back to back
    assert engine.prefill_replays == len(calls)
    captured_cache = engine.cache.kv.clone()
    engine.prefill_graph_prompts = 0                                              # the eager path
    engine.cache.kv.zero_()
    for prompts, got in zip(calls, replayed):
        want = engine.prefill(list(range(4, 4 + len(prompts))), prompts)
        assert got.shape == want.shape
        assert (got.float() - want.float()).abs().max().item() <= 0.02 * want.float().abs().max().item(), prompts
    assert engine.prefill_replays == len(calls)
    written = {}                                  # cache row -> the length of the last prompt written there
    for prompts in calls:
        written.update({4 + i: len(p) for i, p in enumerate(prompts)})
    for row, length in written.items():
        got, want = captured_cache[:, row, :, :length].float(), engine.cache.kv[:, row, :, :length].float()
        assert (got - want).abs().max().item() <= 0.02 * want.abs().max().item(), row
    assert not captured_cache[:, :4].any()        # no replay wrote outside its prompts' rows
