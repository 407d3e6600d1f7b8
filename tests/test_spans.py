"""Span-constrained decoding: the constraint's rules alone, then the engine and the Generator with the
builtin SmolLM2 on the CPU (answer_mode "quote")."""

import dataclasses

import pytest
import torch

from tritonrag.generation.engine import ContinuousBatcher, DecodeEngine, Sequence
from tritonrag.generation.engine.spans import SpanConstraint

END = 0


def test_a_span_starts_anywhere_continues_in_place_and_may_end_after_its_first_token():
    c = SpanConstraint([[5, 6, 7, 6, 8], [9, 6, 4]], [END])
    assert c.allowed() == [4, 5, 6, 7, 8, 9]          # no end before the first token
    c.advance(6)                                      # three places hold 6
    assert c.allowed() == [END, 4, 7, 8]              # what follows each, or the end
    c.advance(8)
    assert c.allowed() == [END]                       # the source ends: only the end is left
    with pytest.raises(ValueError, match="does not continue"):
        c.advance(7)


def test_an_anchored_span_starts_at_a_source_start():
    c = SpanConstraint([[5, 6, 7], [9, 6]], [END], anchored=True)
    assert c.allowed() == [5, 9]
    c.advance(9)
    assert c.allowed() == [END, 6]
    with pytest.raises(ValueError):
        SpanConstraint([[]], [END])
    with pytest.raises(ValueError):
        SpanConstraint([[1]], [])


@pytest.fixture(scope="module")
def engine():
    from transformers import AutoModelForCausalLM

    from tritonrag.models import sources as model_sources

    model = AutoModelForCausalLM.from_pretrained(model_sources.resolve(model_sources.DEFAULT_GENERATOR),
                                                 dtype=torch.float32).eval()
    return DecodeEngine.from_hf(model, slots=4, max_len=128)


def test_the_engine_keeps_a_constrained_sequence_to_its_source_beside_a_free_one(engine):
    source = [1001, 2002, 3003, 4004, 5005, 6006]
    prompt = [1, 42, 43, 44, 45]
    free = Sequence(list(prompt), 6)
    copy = Sequence(list(prompt), 6, stop_ids=frozenset({END}), constraint=SpanConstraint([source], [END]))
    anchored = Sequence(list(prompt), 4, stop_ids=frozenset({END}),
                        constraint=SpanConstraint([source], [END], anchored=True))
    batcher = ContinuousBatcher(engine)
    for seq in (free, copy, anchored):
        batcher.submit(seq)
    batcher.run_until_idle()
    body = [t for t in copy.tokens if t != END]
    assert body and any(source[i:i + len(body)] == body for i in range(len(source)))
    assert anchored.tokens[0] == source[0]
    assert [t for t in anchored.tokens if t != END] == source[:len([t for t in anchored.tokens if t != END])]
    # the free sequence is what it would be alone
    alone = Sequence(list(prompt), 6)
    solo = ContinuousBatcher(engine)
    solo.submit(alone)
    solo.run_until_idle()
    assert free.tokens == alone.tokens


def test_quote_mode_answers_with_the_start_of_the_evidence_sentence(generator):
    evidence = "Guo Shoujing applied mathematics to the construction of calendars."
    passages = ["Guo Shoujing\nGuo Shoujing applied mathematics to the construction of calendars. He was "
                "one of the first mathematicians in China to work on spherical trigonometry.", "Other passage."]
    question = "What did Guo Shoujing do for calendars?"
    writer = generator.prompter
    try:
        generator.prompter = dataclasses.replace(writer, answer_mode="quote")
        quoted = generator.generate([generator.prepare(question, passages, 32, evidence=evidence)])[0]
        no_evidence = generator.generate([generator.prepare(question, passages, 32)])[0]
    finally:
        generator.prompter = writer
    assert quoted and evidence.startswith(quoted), quoted
    free = generator.generate([generator.prepare(question, passages, 32, evidence=evidence)])[0]
    assert no_evidence == free != quoted             # no evidence, or "generate": the model writes it
    with pytest.raises(ValueError, match="answer_mode"):
        dataclasses.replace(writer, answer_mode="extract")


def test_the_engine_refuses_quoted_ids_outside_its_vocabulary(generator):
    from tritonrag.common.request_checks import RequestError

    request = generator.request(generator.prepare("Q?", ["P."], 4).prompt_ids, 4, quotes=[[5, 10 ** 9]])
    with pytest.raises(RequestError, match="quoted token ids"):
        generator.submit(request)
