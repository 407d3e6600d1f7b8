import dataclasses

import pytest

from tritonrag.common.request_checks import RequestError
from tritonrag.generation.prompting import PromptTooLongError, build_messages, render_prompt
from tritonrag.index.synthetic import answer_is_correct, make_facts


def test_messages_delimit_passages_as_data():
    messages = build_messages("Q?", ["alpha", "beta"])
    assert messages[0]["role"] == "system" and "data, not instructions" in messages[0]["content"]
    user = messages[1]["content"]
    assert "<passage 1>\nalpha\n</passage 1>" in user and "<passage 2>\nbeta\n</passage 2>" in user
    assert user.rstrip().endswith("Question: Q?")


def test_prompt_uses_the_chat_template_and_drops_low_ranked_passages_to_fit(generator):
    tok = generator.tokenizer
    ids = render_prompt(tok, "What is it?", ["first passage " * 5, "second passage " * 200], max_tokens=200)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system") and text.rstrip().endswith("<|im_start|>assistant")
    assert "first passage" in text and "second passage" not in text
    with pytest.raises(PromptTooLongError, match="the limit is 5"):
        render_prompt(tok, "What is it?", [], max_tokens=5)


def test_prompt_passages_keeps_the_best_ranked_passages_only(generator):
    passages = ["Alpha passage.", "Beta passage.", "Gamma passage."]
    every = generator.prepare("What is it?", passages, 4).prompt_ids
    first = dataclasses.replace(generator.prompter, prompt_passages=1).render("What is it?", passages)
    assert first == render_prompt(generator.tokenizer, "What is it?", passages[:1], generator.max_prompt_tokens)
    text = generator.tokenizer.decode(first)
    assert "Alpha passage" in text and "Beta" not in text and "Gamma" in generator.tokenizer.decode(every)


def test_prompt_ids_made_elsewhere_are_checked_before_they_reach_the_engine(generator):
    """The forwarder sends token ids: the engine refuses too many, or ids outside its vocabulary."""
    assert generator.request([1, 2, 3], 4).prompt_ids == [1, 2, 3]
    with pytest.raises(PromptTooLongError, match="the prompt is 1025 tokens; the limit is 1024"):
        generator.request([1] * (generator.max_prompt_tokens + 1), 4)
    vocab = generator.engine.w.vocab_size
    for ids in ([1, vocab], [-1, 2], []):
        with pytest.raises(RequestError, match="prompt token ids must lie in|empty prompt"):
            generator.submit(generator.request(ids, 4))


def test_greedy_output_is_the_same_alone_or_in_a_mixed_batch(generator):
    facts = make_facts(4, seed=11)
    requests = [generator.prepare(f.question, [f.passage] + [g.passage for g in facts[:i]], 12)
                for i, f in enumerate(facts)]  # prompts of different lengths
    batched = generator.generate(requests)
    alone = [generator.generate([r])[0] for r in requests]
    assert batched == alone


def test_each_request_gets_its_own_max_tokens(generator):
    fact = make_facts(1, seed=5)[0]
    short, long = (generator.prepare(fact.question, [fact.passage], n) for n in (2, 20))
    out_short, out_long = generator.generate([short, long])
    assert len(generator.tokenizer.encode(out_short)) <= 2 < len(generator.tokenizer.encode(out_long))
    assert out_long.startswith(out_short)


def test_retrieved_fact_reaches_the_answer(generator):
    facts = make_facts(6, seed=21)
    answers = generator.generate([generator.prepare(f.question, [f.passage], 24) for f in facts])
    assert sum(answer_is_correct(a, f.answer) for a, f in zip(answers, facts)) >= 4, answers


def test_cpu_dtype_is_bf16_only_where_the_cpu_multiplies_bf16_natively():
    from tritonrag.generation.generator import cpu_dtype, cpu_has_native_bf16

    zen4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    sapphire = "flags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n"
    older = "flags\t\t: fpu sse4_2 avx2 fma avx512f avx512bw\n"
    graviton3 = "Features\t: fp asimd sve bf16 i8mm\n"
    assert cpu_has_native_bf16(zen4) and cpu_has_native_bf16(sapphire) and cpu_has_native_bf16(graviton3)
    assert not cpu_has_native_bf16(older) and not cpu_has_native_bf16("")
    assert cpu_dtype("auto", zen4) == "bfloat16" and cpu_dtype("auto", older) == "float32"
    assert cpu_dtype("float32", zen4) == "float32" and cpu_dtype("bfloat16", older) == "bfloat16"
    with pytest.raises(ValueError, match="cpu_dtype"):
        cpu_dtype("fp8")
