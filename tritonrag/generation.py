"""Batched greedy generation with a causal LM from transformers.

One `generate` call serves a whole dynamic batch: prompts are left-padded, the
batch runs to the largest `max_tokens` asked for, and each answer is cut at its
own request's limit, so mixed limits in one batch are each honoured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import model_sources
from .prompting import SYSTEM_PROMPT, render_prompt


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int


class Generator:
    def __init__(self, model: str, device: str = "cpu", max_prompt_tokens: int = 1024,
                 system_prompt: str = SYSTEM_PROMPT):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = model_sources.model_name(model)
        self.device = torch.device(device)
        path = model_sources.resolve(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
        self.model = self.model.to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.max_prompt_tokens = max_prompt_tokens
        self.system_prompt = system_prompt

    def prepare(self, question: str, passages: Sequence[str], max_tokens: int) -> GenerationRequest:
        """Tokenise one request's prompt (raises PromptTooLongError if it cannot fit)."""
        ids = render_prompt(self.tokenizer, question, passages, self.max_prompt_tokens, self.system_prompt)
        return GenerationRequest(ids, max_tokens)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy answers, one per request, in order."""
        import torch

        if not requests:
            return []
        prompts = [r.prompt_ids for r in requests]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                max_new_tokens=max(r.max_tokens for r in requests), do_sample=False,
                pad_token_id=self.pad_id, eos_token_id=self.eos_ids)
        new_tokens = output[:, width:].tolist()
        return [self._decode(tokens[:r.max_tokens]) for tokens, r in zip(new_tokens, requests)]

    def _decode(self, tokens: list[int]) -> str:
        for n, token in enumerate(tokens):
            if token in self.eos_ids:
                tokens = tokens[:n]
                break
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _eos_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids from the generation config, plus the tokenizer's EOS."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
