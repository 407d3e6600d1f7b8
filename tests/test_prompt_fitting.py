"""Fitting passages into the prompt is linear: one rendering, each passage tokenised at most once."""

import pytest

from tritonrag.models import sources as model_sources
from tritonrag.generation.prompting import PromptTooLongError, build_messages, render_prompt


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_sources.tokenizer_source(model_sources.DEFAULT_GENERATOR, causal=True))


class CountingTokenizer:
    """The real tokenizer, recording every text it is handed (rendered or tokenised)."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.renderings = 0
        self.texts: list[str] = []

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def apply_chat_template(self, messages, **kwargs):
        self.renderings += 1
        self.texts.extend(m["content"] for m in messages)
        return self._tok.apply_chat_template(messages, **kwargs)

    def __call__(self, text, **kwargs):
        self.texts.extend([text] if isinstance(text, str) else text)
        return self._tok(text, **kwargs)

    def encode(self, text, **kwargs):
        self.texts.append(text)
        return self._tok.encode(text, **kwargs)


def passages(count: int, size: int) -> list[str]:
    return [(f"P{i:04d}X " + "lorem ipsum dolor sit amet " * size)[:size] for i in range(count)]


def test_many_large_passages_are_rendered_once_and_each_tokenised_at_most_once(tokenizer):
    many = passages(60, 2000)
    counting = CountingTokenizer(tokenizer)
    ids = render_prompt(counting, "What is lorem ipsum?", many, max_tokens=1024)
    assert len(ids) <= 1024
    assert counting.renderings == 1
    handed = "".join(counting.texts)
    # each passage reaches the tokenizer at most once (those after the first that does not fit: never)
    assert max(handed.count(f"P{i:04d}X") for i in range(len(many))) == 1
    assert len(handed) < 2 * 1024 * 8      # about the prompt's own size, not the 120 KB handed in


def test_the_fitted_prompt_is_the_whole_rendering_of_the_largest_prefix_that_fits(tokenizer):
    question, given = "What is lorem ipsum?", passages(12, 700)
    for limit in (450, 700, 1024):
        ids = render_prompt(tokenizer, question, given, max_tokens=limit)
        kept = sum(f"P{i:04d}X" in tokenizer.decode(ids) for i in range(len(given)))
        assert 0 < kept < len(given) and len(ids) <= limit

        def whole(n):
            return tokenizer.apply_chat_template(build_messages(question, given[:n]), add_generation_prompt=True,
                                                 tokenize=False)

        assert tokenizer.decode(ids) == whole(kept)     # the same text as one rendering, to the character
        assert ids == tokenizer(whole(kept), add_special_tokens=False)["input_ids"]   # and the same ids
        one_more = tokenizer(whole(kept + 1), add_special_tokens=False)["input_ids"]
        assert len(one_more) > limit                   # and the next passage would not have fitted


def test_with_no_passage_that_fits_the_prompt_is_the_question_alone(tokenizer):
    question = "What is lorem ipsum?"
    ids = render_prompt(tokenizer, question, passages(3, 4000), max_tokens=200)
    whole = tokenizer.apply_chat_template(build_messages(question, []), add_generation_prompt=True, tokenize=False)
    assert ids == tokenizer(whole, add_special_tokens=False)["input_ids"]


def test_a_question_too_long_alone_is_refused(tokenizer):
    with pytest.raises(PromptTooLongError, match="the limit is 5"):
        render_prompt(tokenizer, "What is it?", passages(3, 100), max_tokens=5)


def test_many_rows_at_once_give_each_row_its_own_prompt_or_error(tokenizer):
    """render_prompts (the forwarder's batches): the ids each row gets alone, a too-long row
    failing alone, in a few tokenizer calls for the whole batch."""
    from tritonrag.generation.prompting import render_prompts

    rows = [("What is lorem ipsum?", passages(3, 300)),
            ("Why? " * 200, passages(2, 50)),                     # the question alone does not fit
            ("No passages here?", []),
            ("Which fits?", passages(6, 400)),                     # only some passages fit
            ("Short", passages(1, 20))]
    counting = CountingTokenizer(tokenizer)
    calls = []
    original = counting.__class__.__call__
    counting.__class__.__call__ = lambda self, text, **kw: (calls.append(text), original(self, text, **kw))[1]
    try:
        together = render_prompts(counting, rows, max_tokens=300)
    finally:
        counting.__class__.__call__ = original
    for (question, given), result in zip(rows, together):
        try:
            alone = render_prompt(tokenizer, question, given, max_tokens=300)
        except PromptTooLongError as exc:
            assert isinstance(result, PromptTooLongError) and str(result) == str(exc)
        else:
            assert result == alone
    assert isinstance(together[1], PromptTooLongError) and len(together[3]) <= 300
    assert len(calls) <= 2 + max(len(p) for _, p in rows)    # heads and tails, one call per rank, the bare rows
