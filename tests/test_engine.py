"""The decode engine on the CPU with the builtin SmolLM2 (Llama architecture, GQA 9q/3kv)."""

from pathlib import Path

import pytest
import torch

from tritonrag.generation.engine import ContinuousBatcher, DecodeEngine, Sequence
from tritonrag.generation.engine.sampling import sample
from tritonrag.generation.engine.text import IncrementalText
from tritonrag.models import sources as model_sources


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    path = model_sources.resolve(model_sources.DEFAULT_GENERATOR)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_sources.resolve(model_sources.DEFAULT_GENERATOR))


@pytest.fixture(scope="module")
def prompts(tokenizer):
    questions = ["What is the capital of France?", "Name three colours of the rainbow, please.",
                 "Write a haiku about the sea at night, with the moon and the stars above it.", "Hi"]
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               tokenize=True)["input_ids"]) for q in questions]


@pytest.fixture(scope="module")
def engine(hf_model):
    return DecodeEngine.from_hf(hf_model, slots=8, max_len=192)


def hf_greedy(model, prompt, new_tokens, eos):
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    return out[0, len(prompt):].tolist()


def run(engine, seqs, **kwargs):
    batcher = ContinuousBatcher(engine, **kwargs)
    for seq in seqs:
        batcher.submit(seq)
    batcher.run_until_idle()
    return batcher


def test_greedy_tokens_equal_transformers_generate_alone_and_in_a_mixed_batch(engine, hf_model, prompts, tokenizer):
    eos = [tokenizer.eos_token_id]
    expected = [hf_greedy(hf_model, p, 12, eos) for p in prompts]
    together = [Sequence(p, 12, stop_ids=frozenset(eos)) for p in prompts]   # 4 prompt lengths, one batch
    batcher = run(engine, together)
    assert max(batcher.batch_sizes) == len(prompts)
    alone = []
    for p in prompts:
        seq = Sequence(p, 12, stop_ids=frozenset(eos))
        run(engine, [seq])
        alone.append(seq.tokens)
    assert [s.tokens for s in together] == expected
    assert alone == expected
    assert any(len(t) < 12 and t[-1] in eos for t in expected)   # one stopped at its end token


def test_prefill_warm_up_leaves_no_trace_in_later_answers(engine, hf_model, prompts, tokenizer):
    """The load-time warm-up prefills dummy prompts into free cache rows (done on CUDA only)."""
    eos = [tokenizer.eos_token_id]
    engine.warm_prefill()
    assert engine.prefill_warmup_s > 0
    seqs = [Sequence(p, 6, stop_ids=frozenset(eos)) for p in prompts]
    run(engine, seqs)
    assert [s.tokens for s in seqs] == [hf_greedy(hf_model, p, 6, eos) for p in prompts]


def test_a_short_request_joins_the_running_batch_and_leaves_before_the_long_one(engine, prompts):
    batcher = ContinuousBatcher(engine)
    finished = []
    on_token = lambda seq, token, done: done and finished.append(seq)   # noqa: E731
    long = batcher.submit(Sequence(prompts[2], 40, on_token=on_token))
    for _ in range(5):
        batcher.step()
    short = batcher.submit(Sequence(prompts[0], 3, on_token=on_token))
    steps_before = batcher.steps
    while not short.finished:
        batcher.step()
    assert not long.finished and len(long.tokens) < 40
    assert batcher.steps - steps_before <= 3          # prefilled between two steps, then 2 steps
    batcher.run_until_idle()
    assert finished == [short, long] and len(long.tokens) == 40 and long.finish_reason == "length"
    assert batcher.batch_sizes[2] >= 2 and engine.cache.free_slots == engine.slots


def test_overlapped_steps_give_the_same_tokens_and_drop_the_step_after_an_end_token(engine, hf_model, prompts,
                                                                                   tokenizer):
    """Pipelined scheduling (step n+1 launched before step n is read; the default on CUDA)
    against the synchronous loop: ragged prompts and lengths, an end token, a late arrival,
    a cancellation and a sampled request that switches it off."""
    eos = frozenset([tokenizer.eos_token_id])
    lengths = (12, 1, 7, 9)

    def scenario(overlap):
        batcher = ContinuousBatcher(engine, overlap=overlap)
        seqs = [Sequence(p, n, stop_ids=eos) for p, n in zip(prompts, lengths)]
        for seq in seqs[:3]:
            batcher.submit(seq)
        for _ in range(3):
            batcher.step()
        batcher.submit(seqs[3])                       # joins a running, pipelined batch
        cancelled = batcher.submit(Sequence(prompts[0], 30))
        batcher.step()
        batcher.step()
        cancelled.cancel()
        sampled = batcher.submit(Sequence(prompts[1], 3, temperature=1.0))
        batcher.run_until_idle()
        return [(s.tokens, s.finish_reason) for s in seqs], cancelled.finish_reason, len(sampled.tokens)

    expected = [hf_greedy(hf_model, p, n, list(eos)) for p, n in zip(prompts, lengths)]
    synchronous, overlapped = scenario(False), scenario(True)
    assert overlapped == synchronous
    assert [tokens for tokens, _ in overlapped[0]] == expected
    assert any(reason == "stop" for _, reason in overlapped[0]) and overlapped[1:] == ("cancelled", 3)
    assert engine.cache.free_slots == engine.slots


def test_admission_respects_max_batch_and_the_token_budget(engine, prompts):
    seqs = [Sequence(prompts[3], 4) for _ in range(3)]
    batcher = run(engine, seqs, max_batch=2)
    assert max(batcher.batch_sizes) == 2 and all(len(s.tokens) == 4 for s in seqs)
    need = len(prompts[3]) + 4
    seqs = [Sequence(prompts[3], 4) for _ in range(4)]
    batcher = run(engine, seqs, max_tokens_in_flight=3 * need)
    assert max(batcher.batch_sizes) == 3


def test_cancel_frees_the_slot_and_too_long_requests_are_refused(engine, prompts):
    from tritonrag.generation.engine.scheduler import SequenceError

    batcher = ContinuousBatcher(engine)
    seq = batcher.submit(Sequence(prompts[0], 100))
    batcher.step()
    batcher.step()
    assert engine.cache.free_slots == engine.slots - 1
    seq.cancel()
    batcher.step()
    assert seq.finish_reason == "cancelled" and seq.done.is_set() and engine.cache.free_slots == engine.slots
    with pytest.raises(SequenceError, match="exceed"):
        batcher.submit(Sequence(prompts[0], engine.max_len))


def test_sampling_with_tiny_top_p_is_greedy_and_temperature_spreads_choices():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 400)
    assert sample(logits, [1.0] * 400, [1e-6] * 400).eq(1).all()
    picks = sample(logits, [50.0] * 400, [1.0] * 400, generator=torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1, 2, 3}
    picks = sample(logits, [50.0] * 400, [0.6] * 400, generator=torch.Generator().manual_seed(0))
    assert set(picks.tolist()) <= {1, 2, 3} and len(set(picks.tolist())) >= 2


def test_sampling_at_the_smallest_temperatures_is_greedy_not_nan():
    """A temperature the request check accepts (any value in [0, 100]) may be subnormal: the
    scaled logits must not overflow to inf - inf = NaN (the fuzz suite's 1e-45)."""
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, -1.0, float("-inf"), 4.5], [2.0, 2.0, 1.0, 0.0]] * 4)
    for temperature in (1e-45, 1e-38, 1e-30, 1e-8):
        picks = sample(logits, [temperature] * len(logits), [1.0] * len(logits),
                       generator=torch.Generator().manual_seed(0))
        assert picks.view(4, 3)[:, :2].eq(torch.tensor([1, 0])).all(), temperature
        assert set(picks.view(4, 3)[:, 2].tolist()) <= {0, 1}, temperature


def test_incremental_text_releases_pieces_and_cuts_at_a_stop_string(tokenizer):
    ids = tokenizer.encode(" The answer is forty two. END of it")
    text = IncrementalText(tokenizer, stop=["END"])
    pieces = [text.push(t) for t in ids]
    assert text.stopped
    assert "".join(pieces).strip() == "The answer is forty two." and "E" not in "".join(pieces)
    whole = IncrementalText(tokenizer)
    assert "".join(whole.push(t) for t in ids) + whole.push(None, final=True) == tokenizer.decode(ids)


def test_incremental_text_matches_the_whole_decode_on_multibyte_text(tokenizer):
    """The window decoding releases exactly the whole answer's text, character by character
    (accents, CJK and emoji split over several byte-level tokens)."""
    sample = " Zürich's café served 北京烤鸭 🦆🦆 at 12:30 — naïve “quotes”, Ελληνικά and ünïcödé" * 3
    ids = tokenizer.encode(sample)
    text = IncrementalText(tokenizer)
    pieces = [text.push(t) for t in ids] + [text.push(None, final=True)]
    assert "".join(pieces) == tokenizer.decode(ids) == text.text()
    assert not any("\ufffd" in p for p in pieces)
    quiet = IncrementalText(tokenizer)
    for t in ids:
        quiet.append(t)
    assert quiet.text() == tokenizer.decode(ids) and quiet.sent == 0


def test_dummy_specs_build_real_architectures_with_random_weights():
    config = model_sources.dummy_config("dummy:qwen2.5-1.5b-instruct")
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", None)
    assert (config.model_type, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.hidden_size, theta, config.tie_word_embeddings) == \
        ("qwen2", 28, 12, 2, 1536, 1e6, True)
    e5 = model_sources.dummy_config("dummy:multilingual-e5-large-instruct")
    assert (e5.model_type, e5.num_hidden_layers, e5.hidden_size) == ("xlm-roberta", 24, 1024)
    with pytest.raises(ValueError, match="unknown dummy model"):
        model_sources.dummy_config("dummy:no-such-model")


def test_generator_with_dummy_weights_and_forced_length(tmp_path):
    import json

    from tritonrag.generation.generator import EngineSettings, Generator

    # a 2-layer Qwen2 (q/k/v biases, 4q/2kv heads): the Qwen code path, small enough for CI
    config = json.loads((model_sources.CONFIGS / "qwen2.5-1.5b-instruct.json").read_text())
    config.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=50000)
    (tmp_path / "config.json").write_text(json.dumps(config))
    generator = Generator(f"dummy:{tmp_path / 'config.json'}", max_prompt_tokens=256,
                          settings=EngineSettings(max_running=4, max_new_tokens=16, ignore_eos=True))
    try:
        requests = [generator.prepare(f"question {n}?", ["a passage"] * n, 5 + n) for n in range(3)]
        seqs = [generator.submit(r) for r in requests]
        for seq in seqs:
            seq.done.wait(60)
        assert [len(s.tokens) for s in seqs] == [5, 6, 7] and all(s.finish_reason == "length" for s in seqs)
        assert all(isinstance(a, str) for a in generator.generate(requests))
    finally:
        generator.close()


def test_embedder_takes_dummy_specs():
    from tritonrag.models.embedding import Embedder, detect_family

    embedder = Embedder("dummy:all-MiniLM-L6-v2")
    vectors = embedder.embed_queries(["a question", "another question"])
    assert vectors.shape == (2, 384) and abs(float((vectors[0] ** 2).sum()) - 1) < 1e-4
    assert embedder.model_id == "dummy:all-MiniLM-L6-v2"   # never taken for the real model's index
    assert detect_family("dummy:multilingual-e5-large-instruct").name == "e5-instruct"


def test_generation_bench_cpu_mode_writes_its_results(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("generation_bench", Path(__file__).resolve().parents[1] / "perf" /
                                                  "generation_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--model", "builtin:SmolLM2-135M-Instruct", "--device", "cpu", "--prompt", "8", "--output", "3",
                "--concurrency", "2", "--requests-per-client", "1", "--steps", "2", "--variants", "sdpa",
                "--hf-batches", "2", "--out", str(tmp_path)])
    [path] = tmp_path.glob("*_generation.json")
    result = json.loads(path.read_text())
    assert result["complete"] and path.with_suffix(".png").exists()
    assert result["agreement_with_hf"]["sdpa"]["argmax_agreement"] == 1.0   # fp32: the same logits
    assert result["serving"][0]["requests"] == 2 and result["serving"][0]["output_tokens_per_s"] > 0
    assert result["hf_generate"][0]["batch"] == 2 and result["decode_step"]["sdpa"][0]["ms_per_step"] > 0


def test_engine_settings_take_the_attention_path_and_step_overlap_from_parameters():
    from tritonrag.generation.generator import EngineSettings

    params = {"attention": {"string_value": "sdpa"}, "overlap_steps": {"string_value": "false"}}
    settings = EngineSettings.from_config({"parameters": params}, "cuda:0")
    assert (settings.attention, settings.overlap_steps) == ("sdpa", False)
    default = EngineSettings.from_config({"parameters": {}}, "cpu")
    assert (default.attention, default.overlap_steps) == ("auto", True)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_prefill_wait_holds_arrivals_while_others_decode_then_prefills_them_together(engine, prompts, tokenizer,
                                                                                   monkeypatch):
    """prefill_wait_ms: arrivals during decoding wait (up to the wait) to share one prefill; an
    idle engine, or waiting prompts that fill prefill_tokens, admit at once."""
    from tritonrag.generation.engine import scheduler

    clock = _Clock()
    monkeypatch.setattr(scheduler.time, "monotonic", clock)
    batcher = ContinuousBatcher(engine, prefill_wait_ms=50)
    first = batcher.submit(Sequence(prompts[0], 20))
    batcher.step()                                   # idle engine: admitted at once
    assert first.slot is not None and batcher.prefills == 1
    late = [batcher.submit(Sequence(p, 4)) for p in prompts[1:3]]
    clock.now += 0.030
    batcher.step()
    batcher.step()
    assert all(s.slot is None for s in late) and batcher.prefills == 1   # held: 30 ms < 50 ms
    clock.now += 0.025
    batcher.step()                                   # the oldest waited 55 ms: both in one prefill
    assert all(s.slot is not None for s in late) and batcher.prefills == 2
    full = ContinuousBatcher(engine, prefill_wait_ms=50, prefill_tokens=len(prompts[1]) + len(prompts[2]))
    full.submit(Sequence(prompts[0], 20))
    full.step()
    held = full.submit(Sequence(prompts[1], 4))
    full.step()
    assert held.slot is None
    full.submit(Sequence(prompts[2], 4))
    full.step()                                      # the waiting prompts fill a prefill: no waiting
    assert held.slot is not None and full.prefills == 2
    batcher.run_until_idle()
    full.run_until_idle()
    # the wait changes when a prompt is prefilled, not its tokens
    alone = Sequence(prompts[1], 4)
    run(engine, [alone])
    assert late[0].tokens == alone.tokens
